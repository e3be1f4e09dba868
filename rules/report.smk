# The written result: a section per phase, then RESULTS/ABLATION_RESULTS.md through the phase asked for.


localrules:
    section,
    report,


rule section:
    input:
        unpack(section_inputs),
    output:
        md=R("{phase}/section.md"),
    log:
        L("{phase}/section.log"),
    params:
        phase="{phase}",
        question=lambda w: PLAN.phase(w.phase)["question"],
        arms=lambda w: PLAN.arm_settings(phase_runs(w.phase)),
        usd_per_gpu_hour=STUDY["cost"]["usd_per_gpu_hour"],
        baseline=lambda w: PLAN.baseline_arm(w.phase),
        tiny=TINY,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/section.py"


rule report:
    # Phases are cumulative: the report through phase N holds phases 1..N. The same job refreshes
    # RESULTS/ABLATION_RESULTS.md, the latest report, which is a copy and not a tracked output.
    input:
        sections=lambda w: expand("{results}/{p}/section.md", results=RESULTS, p=PLAN.phases_through(w.phase)),
        design_md=R("design.md"),
    output:
        md=R("reports/{phase}.md"),
    log:
        L("{phase}/report.log"),
    params:
        title=STUDY["study"]["title"],
        summary=STUDY["study"]["summary"],
        tiny=TINY,
        phases=lambda w: PLAN.phases_through(w.phase),
        latest=R("ABLATION_RESULTS.md"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/report.py"
