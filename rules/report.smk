# The written result: a section per phase, then RESULTS/ABLATION_RESULTS.md through the phase asked for.


localrules:
    section,
    report,


rule section:
    input:
        unpack(section_inputs),
    output:
        md=R("{phase}/section.md"),
        # the tables as HTML pages: `snakemake --report` shows HTML inline (a CSV only as a download)
        runs_html=report(R("{phase}/runs.html"), category="{phase}", subcategory="tables",
                         caption="../report/runs.rst"),
        significance_html=report(R("{phase}/significance.html"), category="{phase}", subcategory="tables",
                                 caption="../report/significance.rst"),
        gates_html=report(R("{phase}/gates.html"), category="{phase}", subcategory="tables",
                          caption="../report/gates.rst"),
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
        # the HTML landing page of `snakemake --report` (report/workflow.rst includes it)
        design_csv=R("design.csv"),
        # the planned cost per phase, set beside what the runs measured (analysis/costs.py)
        design_json=R("design.json"),
        gates=lambda w: expand("{results}/{p}/gates.json", results=RESULTS, p=PLAN.phases_through(w.phase)),
        runs=lambda w: expand("{results}/{p}/runs.csv", results=RESULTS, p=PLAN.phases_through(w.phase)),
        selections=lambda w: [f"{RESULTS}/{p}/selection.json" for p in PLAN.phases_through(w.phase)
                              if PLAN.needs_selection(p)],
    output:
        md=R("reports/{phase}.md"),
        html=R("reports/{phase}.html"),
    log:
        L("{phase}/report.log"),
    params:
        title=STUDY["study"]["title"],
        summary=STUDY["study"]["summary"],
        tiny=TINY,
        usd_per_gpu_hour=STUDY["cost"]["usd_per_gpu_hour"],
        phases=lambda w: PLAN.phases_through(w.phase),
        latest=R("ABLATION_RESULTS.md"),
        questions=lambda w: {p: PLAN.phase(p)["question"] for p in PLAN.phases_through(w.phase)},
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/report.py"


# `snakemake phase1 --report report.html`: the first page is the study's question, each phase's verdict and
# gate table, its runs and the design check (RESULTS/reports/PHASE.html, written by the report rule).
config["report_landing"] = R(f"reports/{report_landing_phase()}.html")


report: "../report/workflow.rst"
