# Per phase: the runs' records -> one table -> significance -> gates -> plots.
# Cheap, so they run on the submitting machine, never on the cluster.


localrules:
    aggregate,
    significance,
    gates,
    plots,
    select_arm,


rule aggregate:
    input:
        metrics=lambda w: [pr.run.metrics for pr in phase_runs(w.phase)],
        histories=lambda w: [pr.run.history for pr in phase_runs(w.phase)],
    output:
        runs="results/{phase}/runs.csv",
        curves="results/{phase}/curves.csv",
    log:
        "logs/{phase}/aggregate.log",
    params:
        runs=lambda w: [pr.as_record() for pr in phase_runs(w.phase)],
        phase="{phase}",
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/aggregate.py"


rule significance:
    input:
        runs="results/{phase}/runs.csv",
    output:
        table="results/{phase}/significance.csv",
    log:
        "logs/{phase}/significance.log",
    params:
        baseline=lambda w: PLAN.phase(w.phase)["baseline"],
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
        runs="results/{phase}/runs.csv",
        significance="results/{phase}/significance.csv",
        curves="results/{phase}/curves.csv",
    output:
        json="results/{phase}/gates.json",
        md="results/{phase}/gates.md",
    log:
        "logs/{phase}/gates.log",
    params:
        phase="{phase}",
        gates=lambda w: PLAN.phase(w.phase)["gates"],
        baseline=lambda w: PLAN.phase(w.phase)["baseline"],
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/gates.py"


rule plots:
    input:
        runs="results/{phase}/runs.csv",
        curves="results/{phase}/curves.csv",
    output:
        val_loss=report("results/{phase}/plots/val_loss.png", category="{phase}", caption="../report/val_loss.rst"),
        early=report("results/{phase}/plots/early.png", category="{phase}", caption="../report/early.rst"),
        alpha=report("results/{phase}/plots/final_vs_alpha.png", category="{phase}", caption="../report/alpha.rst"),
        eff_rank=report("results/{phase}/plots/eff_rank.png", category="{phase}", caption="../report/eff_rank.rst"),
    log:
        "logs/{phase}/plots.log",
    params:
        phase="{phase}",
        baseline=lambda w: PLAN.phase(w.phase)["baseline"],
        early_steps=lambda w: early_steps(w.phase),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/plots.py"


checkpoint select_arm:
    # Phase 3's arm comes from phase 2's results, so phase 3's runs are known only after this runs.
    input:
        significance=lambda w: f"results/{PLAN.phase(w.phase)['select_from']}/significance.csv",
        gates=lambda w: f"results/{PLAN.phase(w.phase)['select_from']}/gates.json",
    output:
        json="results/{phase}/selection.json",
    log:
        "logs/{phase}/select_arm.log",
    params:
        force=lambda w: PLAN.phase(w.phase).get("force", False),
        # the arms that may be selected: those the earlier phase's "beats the baseline" gate judged
        candidate_arms=lambda w: selection_candidates(w.phase),
    conda:
        "../envs/analysis.yaml"
    script:
        "../workflow/scripts/select_arm.py"
