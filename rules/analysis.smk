# Per phase: the runs' records -> one table -> significance -> gates -> plots; and the selection a later
# phase takes from an earlier one. Cheap, so they run on the submitting machine, never on the cluster.


localrules:
    aggregate,
    design_phase,
    design,
    significance,
    gates,
    plots,
    select,
    distro_measure,
    pareto_plot,


rule design:
    # The design check of the whole study before any GPU-hour (`snakemake design`): per phase and gate,
    # the Holm family, the power at the gate's threshold with the configured seeds (noise: the study's
    # prior sd), the seeds for 80% power, and the GPU-hours and cost either way.
    output:
        csv=report(R("design.csv"), category="design check", subcategory="CSV files", caption="../report/design.rst"),
        md=R("design.md"),
        json=R("design.json"),
        html=report(R("design.html"), category="design check", subcategory="tables", caption="../report/design.rst"),
    log:
        L("design.log"),
    params:
        phases=lambda w: design_study(),
        order=PLAN.phases,
        prior_sd=STUDY["design"]["prior_sd"],
        power_floor=STUDY["design"].get("power_floor"),
        usd_per_gpu_hour=STUDY["cost"]["usd_per_gpu_hour"],
        tiny=TINY,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/design.py"


rule design_phase:
    # One phase's design check, its noise measured on the phases before it (the prior when there are none).
    input:
        unpack(design_inputs),
    output:
        csv=R("{phase}/design.csv"),
        md=R("{phase}/design.md"),
        json=R("{phase}/design.json"),
    log:
        L("{phase}/design.log"),
    params:
        phases=lambda w: {w.phase: design_entry(w.phase)},
        order=lambda w: PLAN.phases_through(w.phase),
        prior_sd=STUDY["design"]["prior_sd"],
        power_floor=STUDY["design"].get("power_floor"),
        usd_per_gpu_hour=STUDY["cost"]["usd_per_gpu_hour"],
        tiny=TINY,
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/design.py"


rule aggregate:
    input:
        metrics=lambda w: [PLAN.metrics(pr.run) for pr in phase_runs(w.phase)],
    output:
        runs=report(R("{phase}/runs.csv"), category="{phase}", subcategory="CSV files", caption="../report/runs.rst"),
        curves=R("{phase}/curves.csv"),
    log:
        L("{phase}/aggregate.log"),
    params:
        runs=lambda w: PLAN.records(phase_runs(w.phase)),
        phase="{phase}",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/aggregate.py"


rule significance:
    input:
        runs=R("{phase}/runs.csv"),
        design=R("{phase}/design.json"),
    output:
        table=report(R("{phase}/significance.csv"), category="{phase}", subcategory="CSV files",
                     caption="../report/significance.rst"),
    log:
        L("{phase}/significance.log"),
    params:
        phase="{phase}",
        baseline=lambda w: PLAN.baseline_arm(w.phase),
        confidence=0.95,
        alpha_level=0.05,
        power=0.8,
        metric="final_val_loss",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/significance.py"


rule gates:
    input:
        unpack(selection_input),
        runs=R("{phase}/runs.csv"),
        significance=R("{phase}/significance.csv"),
        curves=R("{phase}/curves.csv"),
        design=R("{phase}/design.json"),
    output:
        json=R("{phase}/gates.json"),
        md=R("{phase}/gates.md"),
        csv=report(R("{phase}/gates.csv"), category="{phase}", subcategory="CSV files", caption="../report/gates.rst"),
    log:
        L("{phase}/gates.log"),
    params:
        phase="{phase}",
        gates=lambda w: PLAN.phase(w.phase)["gates"],
        baseline=lambda w: PLAN.baseline_arm(w.phase),
        power_floor=STUDY["design"].get("power_floor"),
        pick=lambda w: later_pick(w.phase),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/gates.py"


rule plots:
    input:
        runs=R("{phase}/runs.csv"),
        curves=R("{phase}/curves.csv"),
    output:
        val_loss=report(R("{phase}/plots/val_loss.png"), category="{phase}", subcategory="plots", caption="../report/val_loss.rst"),
        early=report(R("{phase}/plots/early.png"), category="{phase}", subcategory="plots", caption="../report/early.rst"),
        forest=report(R("{phase}/plots/forest.png"), category="{phase}", subcategory="plots", caption="../report/forest.rst"),
        eff_rank=report(R("{phase}/plots/eff_rank.png"), category="{phase}", subcategory="plots", caption="../report/eff_rank.rst"),
    log:
        L("{phase}/plots.log"),
    params:
        phase="{phase}",
        baseline=lambda w: PLAN.baseline_arm(w.phase),
        early_steps=lambda w: early_steps(w.phase),
        gates=lambda w: PLAN.phase(w.phase)["gates"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plots.py"


checkpoint select:
    # A selecting phase's runs depend on an earlier phase's results: they are known only after this runs.
    # One file per phase; with several named selections (study/selections.py) it holds each one's record.
    input:
        unpack(select_inputs),
    output:
        json=R("{phase}/selection.json"),
    log:
        L("{phase}/select.log"),
    params:
        force=lambda w: PLAN.phase(w.phase).get("force", False),
        selections=lambda w: [{k: d.get(k) for k in ("name", "from", "arms", "rule", "gate")}
                              for d in declared_selections(PLAN.phase(w.phase))],
        list_form=lambda w: selection_list_form(PLAN.phase(w.phase)),
        carries_baseline=lambda w: [carries_baseline(STUDY, w.phase, d)
                                    for d in declared_selections(PLAN.phase(w.phase))],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/select_arm.py"


# A study's own analysis stages (study/extras.py): one rule per declared extra, made from its entry alone.
for _extra in EXTRAS.values():

    rule:
        name:
            _extra.rule
        input:
            unpack(extra_inputs(_extra)),
        output:
            **extra_outputs(_extra),
        log:
            L(f"{{phase}}/{_extra.log}"),
        params:
            **extra_params(_extra),
        threads: workflow.cores if _extra.all_cores else 1
        conda:
            f"../envs/{_extra.env}.yaml"
        script:
            "../workflow/scripts/extra.py"  # runs the entry's own script (a loop's variable is read when a job runs)
