# Wildcard shapes and the helpers every rule file uses.

wildcard_constraints:
    model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    optimizer=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    alpha=r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?",
    seed=r"[0-9]+",
    phase=r"phase[1-3]",


RUN_DIR = "results/runs/{model}/{optimizer}/alpha{alpha}/seed{seed}"


def selection(phase):
    """Phase 3's arm, chosen from phase 2 by the select_arm checkpoint; stops when the gate failed."""
    sel = read_selection(checkpoints.select_arm.get(phase=phase).output.json)
    forced = PLAN.phase(phase).get("force", False)
    if sel.get("gate_passed") is not True and not forced:
        raise WorkflowError(
            f"{phase} stops here: the {PLAN.phase(phase)['select_from']} gate did not pass "
            f"({sel.get('reason', 'no reason recorded')}). See results/{PLAN.phase(phase)['select_from']}/gates.md. "
            f"To run {phase} anyway, set phases.{phase}.force: true."
        )
    if sel.get("arm") is None:
        raise WorkflowError(f"{phase} stops here: no arm of {PLAN.phase(phase)['select_from']} could be "
                            f"selected ({sel.get('reason', 'no reason recorded')}).")
    return sel


def selection_candidates(phase):
    gate = PLAN.phase(PLAN.phase(phase)["select_from"])["gates"].get("beats_baseline") or {}
    return gate.get("arms")


def phase_runs(phase):
    return PLAN.phase_runs(phase, selection(phase) if PLAN.needs_selection(phase) else None)


def early_steps(phase):
    """The upper end of the early-training zoom: the gate's step, or a fifth of the run."""
    gate = PLAN.phase(phase)["gates"].get("early_loss_not_worse")
    steps = config["models"][PLAN.phase(phase)["model"]]["steps"]
    return max(gate["step"] if gate else 0, steps // 5)


class UntrackedArgument:
    """The full run spec, handed to the trainer but not to Snakemake's params trigger.

    Snakemake records params it can represent (str, numbers, containers) and re-runs a job when they
    change; objects of other types are skipped. The spec carries operational settings too (wandb
    mode, checkpoint cadence) that must not re-run finished runs, so it travels as this object, and
    staleness is decided by the `fingerprint` param alone (see study/spec.py and the README).
    """

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def train_data(wildcards):
    data = config["data"]
    if data["kind"] == "stdlib":
        return rules.stdlib_corpus.output
    # User shards: required to exist before submission, but their mtime never re-runs a study.
    return [ancient(f) for pattern in (data["train"], data["val"]) for f in sorted(glob(pattern))]


def run_resources(wildcards):
    return PLAN.resources(PLAN.run_from_wildcards(wildcards))


def in_slurm_job():
    """True where the job's shell runs inside a Slurm allocation (params are evaluated there too)."""
    return "SLURM_JOB_ID" in os.environ


def gpu_request(wildcards):
    """GPUs of the whole job (Slurm's --gpus); per node when nodes > 1, see slurm_extra."""
    res = run_resources(wildcards)
    return res["gpus"] * res["nodes"]


def slurm_extra(res):
    extra = "--signal=USR1@120"
    if res["nodes"] > 1:
        # Exactly gpus per node on every node, one task (one torchrun) per node.
        extra += f" --gpus-per-node={res['gpus']} --ntasks-per-node=1"
    return extra


def section_inputs(wildcards):
    phase = wildcards.phase
    files = {
        "runs": f"results/{phase}/runs.csv",
        "significance": f"results/{phase}/significance.csv",
        "gates": f"results/{phase}/gates.json",
        "plots": expand("results/{phase}/plots/{name}.png", phase=phase,
                        name=["val_loss", "early", "final_vs_alpha", "eff_rank"]),
    }
    if PLAN.needs_selection(phase):
        files["selection"] = f"results/{phase}/selection.json"
    return files


def phases_through(phase):
    return PLAN.phases[: PLAN.phases.index(phase) + 1]


def script_env(wildcards, threads):
    """Environment for the shell rules: the repo on PYTHONPATH, one BLAS thread pool per job's CPUs."""
    return UntrackedArgument(
        f"OMP_NUM_THREADS={threads} PYTHONPATH={workflow.basedir}${{PYTHONPATH:+:$PYTHONPATH}}"
    )
