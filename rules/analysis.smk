# Per phase: the runs' records -> one table -> significance -> gates -> plots; and the selection a later
# phase takes from an earlier one. Cheap, so they run on the submitting machine, never on the cluster.


localrules:
    aggregate,
    significance,
    gates,
    plots,
    select,


rule aggregate:
    input:
        metrics=lambda w: [PLAN.metrics(pr.run) for pr in phase_runs(w.phase)],
    output:
        runs=R("{phase}/runs.csv"),
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
    output:
        table=R("{phase}/significance.csv"),
    log:
        L("{phase}/significance.log"),
    params:
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
    output:
        json=R("{phase}/gates.json"),
        md=R("{phase}/gates.md"),
    log:
        L("{phase}/gates.log"),
    params:
        phase="{phase}",
        gates=lambda w: PLAN.phase(w.phase)["gates"],
        baseline=lambda w: PLAN.baseline_arm(w.phase),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/gates.py"


rule plots:
    input:
        runs=R("{phase}/runs.csv"),
        curves=R("{phase}/curves.csv"),
    output:
        val_loss=report(R("{phase}/plots/val_loss.png"), category="{phase}", caption="../report/val_loss.rst"),
        early=report(R("{phase}/plots/early.png"), category="{phase}", caption="../report/early.rst"),
        alpha=report(R("{phase}/plots/final_vs_alpha.png"), category="{phase}", caption="../report/alpha.rst"),
        eff_rank=report(R("{phase}/plots/eff_rank.png"), category="{phase}", caption="../report/eff_rank.rst"),
    log:
        L("{phase}/plots.log"),
    params:
        phase="{phase}",
        baseline=lambda w: PLAN.baseline_arm(w.phase),
        early_steps=lambda w: early_steps(w.phase),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plots.py"


checkpoint select:
    # A selecting phase's runs depend on an earlier phase's results: they are known only after this runs.
    input:
        significance=lambda w: f"{RESULTS}/{PLAN.phase(w.phase)['select']['from']}/significance.csv",
        gates=lambda w: f"{RESULTS}/{PLAN.phase(w.phase)['select']['from']}/gates.json",
    output:
        json=R("{phase}/selection.json"),
    log:
        L("{phase}/select.log"),
    params:
        force=lambda w: PLAN.phase(w.phase).get("force", False),
        candidate_arms=lambda w: PLAN.phase(w.phase)["select"].get("arms"),
        rule=lambda w: PLAN.phase(w.phase)["select"].get("rule", "significant_best"),
        gate=lambda w: PLAN.phase(w.phase)["select"].get("gate"),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/select_arm.py"
