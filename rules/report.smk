# The written result: a section per phase, then results/ABLATION_RESULTS.md through the phase asked for.


localrules:
    section,
    report,


rule section:
    input:
        unpack(section_inputs),
    output:
        md="results/{phase}/section.md",
    log:
        "logs/{phase}/section.log",
    params:
        phase="{phase}",
        question=lambda w: PLAN.phase(w.phase)["question"],
        arms=lambda w: PLAN.arm_settings(phase_runs(w.phase)),
        usd_per_gpu_hour=config["cost"]["usd_per_gpu_hour"],
        baseline=lambda w: PLAN.phase(w.phase)["baseline"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/section.py"


rule report:
    # Phases are cumulative: the report through phase N holds phases 1..N. The same job refreshes
    # results/ABLATION_RESULTS.md, the latest report, which is a copy and not a tracked output.
    input:
        sections=lambda w: expand("results/{p}/section.md", p=phases_through(w.phase)),
    output:
        md="results/reports/{phase}.md",
    log:
        "logs/{phase}/report.log",
    params:
        title=config["study"]["title"],
        phases=lambda w: phases_through(w.phase),
        latest="results/ABLATION_RESULTS.md",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/report.py"
