# Wildcard shapes (built from the study, so no other path matches) and the helpers every rule file uses.

from study.extras import EXTRAS, extras_of
from study.selections import carries_baseline, declared as declared_selections, is_list_form as selection_list_form
from study.selections import records as selection_records, stop_reason


def one_of(names):
    """A regex matching exactly these names (longest first, so no name matches a prefix of another)."""
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))


wildcard_constraints:
    model=one_of(STUDY["models"]),
    arm=one_of(STUDY["arms"]),
    # a label, or labels joined by "+" (a selected value and a sweep together)
    variant=f"{re.escape(PLAN.unswept)}|(?:{one_of(PLAN.variants)})(?:\\+(?:{one_of(PLAN.variants)}))*"
    if PLAN.variants else re.escape(PLAN.unswept),
    seed=r"[0-9]+",
    phase=one_of(PLAN.phases),


def R(path):
    """A path under the study's results directory (results/NAME/, or results/NAME-tiny/ for the twin)."""
    return f"{RESULTS}/{path}"


def L(path):
    """A path under the study's log directory."""
    return f"{LOGS}/{path}"


RUN_DIR = R("runs/{model}/{arm}/{variant}/seed{seed}")


def requested_targets():
    """The targets on the command line (Snakemake hands the workflow its DAG settings only later)."""
    if workflow.dag_settings is not None:
        return list(workflow.dag_settings.targets)
    try:
        from snakemake.cli import get_argument_parser

        return list(get_argument_parser().parse_known_args(sys.argv[1:])[0].targets or [])
    except (Exception, SystemExit):  # not started from the command line: nothing to check
        return []


def check_targets():
    """A target that is no phase of the study, no other target and no path: name the study's phases."""
    known = {r.name for r in workflow.rules}
    for target in requested_targets():
        if os.sep not in target and "." not in target and target not in known:
            raise WorkflowError(
                f"{target!r} is not a phase of study {STUDY_NAME} (its phases: {', '.join(PLAN.phases)}; "
                f"targets: those and all). Another study: snakemake TARGET --config study=NAME "
                f"(config/studies/).")


def selection(phase):
    """The arm/value a phase takes from an earlier one (the select checkpoint; with several named selections
    each one's); stops when a selection's gate failed or it picked nothing. A baseline the earlier phase's
    sanity gate flagged and this phase carries on is said here, before the phase's runs are submitted."""
    cfg = PLAN.phase(phase)
    sources = ", ".join(dict.fromkeys(d["from"] for d in declared_selections(cfg)))
    sel = read_selection(checkpoints.select.get(phase=phase).output.json)
    stop = stop_reason(sel, bool(cfg.get("force", False)))
    if stop and stop[0] == "gate":
        raise WorkflowError(
            f"{phase} stops here: the {sources} gate did not pass ({stop[1]}). "
            f"See {', '.join(f'{RESULTS}/{s}/gates.md' for s in sources.split(', '))}. To run {phase} anyway, "
            f"set phases.{phase}.force: true.")
    if stop:
        raise WorkflowError(f"{phase} stops here: nothing of {sources} could be selected ({stop[1]}).")
    if workflow.is_main_process and phase not in SELECTIONS_ANNOUNCED:
        # Snakemake's "N of M steps" total grows here (a checkpoint adds the phase's jobs): say why.
        SELECTIONS_ANNOUNCED.add(phase)
        n = len(PLAN.phase_runs(phase, sel))
        picks = ", ".join((f"{name}: " if name else "") + f"{r['arm']} {r['variant']}"
                          for name, r in selection_records(sel))
        logger.info(f"{phase}: takes {sources}'s selection ({picks}); its {n} runs join the "
                    f"jobs, so Snakemake's step total grows (`muon-ablations status` counts them from the start)")
        for name, r in selection_records(sel):
            for flag in r.get("baseline_flags") or []:
                logger.warning(f"{phase}: WARNING: carries on the baseline that the phase it selects from "
                               f"flagged ({flag}): its comparisons with that baseline may be against a broken or "
                               f"untuned one")
    return sel


SELECTIONS_ANNOUNCED = set()


def phase_runs(phase):
    return PLAN.phase_runs(phase, selection(phase) if PLAN.needs_selection(phase) else None)


def early_steps(phase):
    """The upper end of the early-training zoom: the earliest gate step, or a fifth of the run."""
    steps = STUDY["models"][PLAN.phase(phase)["model"]]["steps"]
    gate_steps = [g["step"] for g in PLAN.phase(phase)["gates"].values() if isinstance(g.get("step"), int)]
    return max(max(gate_steps, default=0), steps // 5)


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


def hub_pins():
    """What the runs' specs take from the fetched data and models (pin_hub's file: a checkpoint)."""
    with open(checkpoints.pin_hub.get().output.pins) as f:
        return json.load(f)


def hub_model_revision(model):
    """The commit fetched for an hf:<Hub id> model (None for other models): in its runs' specs."""
    return hub_pins()["models"].get(model) if HUB_ITEMS else None


def hub_data_spec():
    """The run spec's data section of fetched shards or of text prepared from fetched files."""
    return hub_pins()["data"]


def pin_hub_inputs(wildcards):
    from study.hub import data_item, is_shards, model_manifests

    d = STUDY["data"]
    files = {"models": sorted(set(model_manifests(STUDY).values()))}
    if TEXT_DATA_DIR:
        files["data"] = f"{TEXT_DATA_DIR}/manifest.json"
    elif d["kind"] == "hub" and is_shards(d):
        files["data"] = f"{HUB_DIR}/{data_item(d)}/manifest.json"
    return files


def pin_hub_args():
    from study.hub import model_manifests

    args = [f"--model={m}={p}" for m, p in model_manifests(STUDY).items()]
    inputs = pin_hub_inputs(None)
    if "data" in inputs:
        args.append(f"--data={inputs['data']}")
    return " ".join(shlex.quote(a) for a in args)


def train_data(wildcards):
    data = STUDY["data"]
    if data["kind"] == "stdlib" and external_trainer(wildcards):  # it brings its own data: no corpus to build
        return []
    # with anything from the Hub, one checkpoint (pin_hub) after every download and the data stage: the
    # dry run shows them all as jobs, and the specs read the commits and checksums it collects. ancient: a
    # rewritten pins file re-runs nothing by itself; a run re-runs when its fingerprint (commit, checksum) changes
    pins = [ancient(checkpoints.pin_hub.get().output.pins)] if HUB_ITEMS else []
    if data["kind"] == "stdlib":
        return list(rules.stdlib_corpus.output) + pins
    if pins and data["kind"] in ("text", "hub"):
        return pins
    if data["kind"] == "text":  # the data stage's manifest (the spec needs its checksum: a checkpoint)
        return checkpoints.prepare_text.get().output.manifest
    # User shards: required to exist before submission, but their mtime never re-runs a study.
    return pins + [ancient(f) for pattern in (data["train"], data["val"]) for f in sorted(glob(pattern))]


def external_trainer(wildcards):
    """The external trainer of the run (study/external.py), or None for the built-in trainer."""
    return external_trainer_name(STUDY, wildcards.model, wildcards.arm)


def text_data_spec():
    """The run spec's data section of the prepared text corpus (read from its manifest)."""
    from trainer.textprep import spec_data

    return spec_data(checkpoints.prepare_text.get().output.manifest)


def text_stage_data():
    """The text stage's data section: the study's (kind text), or for fetched Hub files their links as inputs
    and `tokenizer: model` as the fetched model's directory (study/hub.py)."""
    from study.hub import text_section

    return text_section(STUDY) if STUDY["data"]["kind"] == "hub" else STUDY["data"]


def text_inputs(wildcards):
    """The files the data stage reads (their mtime re-runs it); the embedded corpus has none."""
    if STUDY["data"]["kind"] == "hub":  # the fetch manifests of the files (and of the tokenizer's model)
        from study.hub import text_stage_manifests

        return text_stage_manifests(STUDY)
    patterns = STUDY["data"]["inputs"]
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return sorted({f for p in patterns if not p.startswith("stdlib") for f in glob(p)})


def text_stage_settings():
    """Every setting of the data stage (tracked: a new tokenizer file, bpe:N, val_fraction, seed, ... re-run it)."""
    from trainer.textprep import prep_config, stage_settings

    return stage_settings(prep_config({k: v for k, v in text_stage_data().items() if k != "name"}, TEXT_DATA_DIR))


def text_prep_args():
    from trainer.textprep import cli_args, prep_config

    args = cli_args(prep_config({k: v for k, v in text_stage_data().items() if k != "name"}, TEXT_DATA_DIR))
    # --workers comes from the rule's threads
    i = args.index("--workers")
    del args[i : i + 2]
    return " ".join(shlex.quote(a) for a in args)


def run_resources(wildcards):
    return PLAN.resources(PLAN.run_from_wildcards(wildcards))


def in_slurm_job():
    """True where the job's shell runs inside a Slurm allocation (params are evaluated there too)."""
    return "SLURM_JOB_ID" in os.environ


def gpu_request(wildcards):
    """GPUs of the whole job (Slurm's --gpus); per node when nodes > 1, see slurm_extra."""
    res = run_resources(wildcards)
    return res["gpus"] * res["nodes"]


def set_resource(rule_name, name):
    """A resource that the profile's set-resources give to the named train/other step, else None. Train jobs
    across nodes read their GPU model so, since Slurm refuses a typed `--gpus=h100:8` beside an untyped
    `--gpus-per-node=4` (docs/slurm.md)."""
    overrides = workflow.resource_settings.overwrite_resources or {}
    res = overrides.get(rule_name) or {}
    value = res.get(name) if hasattr(res, "get") else None
    if hasattr(value, "is_evaluable"):  # a snakemake Resource; from a profile, an unevaluated expression
        value = value.raw if value.is_evaluable() else value.value
    return value


def slurm_extra(res):
    extra = "--signal=USR1@120"
    if res["nodes"] > 1:
        # Exactly gpus per node on every node, one task (one torchrun) per node (study/launch.py).
        gpus = set_resource("train", "gpu")  # a profile's `gpu: 0` for a CPU cluster: no GPUs per node either
        gpus = res["gpus"] if gpus is None or not str(gpus).strip().isdigit() else int(gpus)
        extra = f"{extra} {slurm_node_args(gpus, set_resource('train', 'gpu_model'))}"
    return extra


def run_records(phases):
    """Every run record of these phases (each run's metrics.json, history.csv and spec.json) and each phase's
    tables (runs.csv, curves.csv): the phase targets ask for them, so a deleted or missing one is made again.
    Snakemake rebuilds a missing file only when some job that must run needs it; a file that only an
    up-to-date report read (a history.csv, a runs.csv) would otherwise stay missing for good."""
    runs = {pr.run for p in phases for pr in phase_runs(p)}
    records = {f"{PLAN.run_dir(run)}/{name}" for run in runs for name in ("metrics.json", "history.csv", "spec.json")}
    return sorted(records | {R(f"{p}/{name}") for p in phases for name in ("runs.csv", "curves.csv")})


def script_env(wildcards, threads):
    """Environment for the shell rules: the repo on PYTHONPATH, one BLAS thread pool per job's CPUs.
    Quoted: the checkout's path may hold spaces or shell syntax."""
    return UntrackedArgument(
        f"OMP_NUM_THREADS={int(threads)} PYTHONPATH={shlex.quote(workflow.basedir)}${{PYTHONPATH:+:$PYTHONPATH}}"
    )


def train_env(wildcards, threads):
    """script_env for a train job: its CPUs shared by the processes torchrun starts (one per GPU)."""
    return script_env(wildcards, max(1, int(threads) // run_resources(wildcards)["gpus"]))


def phase_target_inputs(phase):
    def inputs(wildcards):
        # the .html is the report job's landing page for `snakemake --report` (asked for, so it is rebuilt)
        return [f"{RESULTS}/reports/{phase}.md", f"{RESULTS}/reports/{phase}.html"] + run_records(
            PLAN.phases_through(phase))

    return inputs


def selection_input(wildcards):
    return {"selection": f"{RESULTS}/{wildcards.phase}/selection.json"} if PLAN.needs_selection(wildcards.phase) else {}


def section_inputs(wildcards):
    phase = wildcards.phase
    files = {
        "runs": f"{RESULTS}/{phase}/runs.csv",
        "significance": f"{RESULTS}/{phase}/significance.csv",
        "gates": f"{RESULTS}/{phase}/gates.json",
        "plots": expand("{results}/{phase}/plots/{name}.png", results=RESULTS, phase=phase,
                        name=["val_loss", "early", "forest", "eff_rank"])
        + [f"{RESULTS}/{phase}/{e.outputs[k]}" for e in extras_of(PLAN.phase(phase)) for k in e.plots],
        "design": f"{RESULTS}/{phase}/design.json",
        # the phase's own analyses (study/extras.py), appended to its section as written
        "extra": [f"{RESULTS}/{phase}/{e.outputs[e.section]}" for e in extras_of(PLAN.phase(phase))],
    }
    files.update(selection_input(wildcards))
    return files


def design_entry(phase, sel=None):
    """What the design check needs of a phase (analysis/design.py): its seeds, comparisons, gates, cost."""
    cfg = PLAN.phase(phase)
    runs = PLAN.phase_runs(phase, sel) if sel or not PLAN.needs_selection(phase) else phase_runs(phase)
    configs = sorted({(pr.run.model, pr.run.arm, pr.run.variant, pr.role) for pr in runs})
    # GPU-hours of a run: its Slurm time limit x GPUs, an upper bound. What runs measured is set beside it by
    # the report (analysis/costs.py) and the dry run's cost lines (warn_underpowered), never here: the design
    # rule runs before any job and takes no run as input.
    hours = {m: r["resources"]["runtime_min"] / 60 * r["resources"]["gpus"] * r["resources"]["nodes"]
             for m, r in STUDY["models"].items()}
    return {"seeds": list(cfg["seeds"]), "baseline": PLAN.baseline_arm(phase), "gates": cfg["gates"],
            "configs": [dict(zip(("model", "arm", "variant", "role"), c)) for c in configs],
            "gpu_hours_per_run": hours, "n_runs": len(runs),
            "scratch_seeds": cfg.get("scratch", {}).get("seeds"),
            "selected_arms": selected_arms(phase, sel)}


def selected_arms(phase, sel):
    """What the design check counts 'selected' as: the selected arm ([arm]); with named selections
    {'selected:NAME': [arm]} (and 'selected' when there is one)."""
    if not sel:
        return None
    if not any(d["name"] for d in declared_selections(PLAN.phase(phase))):
        return [sel["arm"]] if sel.get("arm") else None
    return {ref: [r["arm"]] for ref, r in PLAN.selection_refs(phase, sel).items() if r.get("arm")}


def later_pick(phase):
    """The later phases' selections from this one ({reference: {arms, rule}}; None when there are none):
    what the gates' 'selected' / 'selected:NAME' mean in a phase that selects nothing itself
    (analysis/gates.py; the pre-run check refuses a reference that is ambiguous or means nothing)."""
    from study.checks import later_selections, pick_of

    if PLAN.needs_selection(phase):
        return None
    picks = {ref: pick_of(decls) for ref, decls in later_selections(STUDY, phase).items()}
    return {ref: p for ref, p in picks.items() if p} or None


def select_inputs(wildcards):
    """The earlier phases' tables each selection of the phase reads, in the order of its `select:`."""
    srcs = [d["from"] for d in declared_selections(PLAN.phase(wildcards.phase))]
    return {key: [f"{RESULTS}/{s}/{name}" for s in srcs]
            for key, name in (("significance", "significance.csv"), ("gates", "gates.json"), ("runs", "runs.csv"))}


def design_study():
    """Every phase, before any run: a selecting phase is costed with its first possible selection (every
    selection gives it the same number of runs)."""
    return {p: design_entry(p, PLAN.possible_selections(p)[0]) for p in PLAN.phases}


def design_inputs(wildcards):
    """The runs.csv of the phases before this one (the noise estimate); a selecting phase waits for its selection."""
    earlier = PLAN.phases_through(wildcards.phase)[:-1]
    files = {"runs": [R(f"{p}/runs.csv") for p in earlier]}
    if PLAN.needs_selection(wildcards.phase):
        files["selection"] = checkpoints.select.get(phase=wildcards.phase).output.json
    return files


def warn_underpowered():
    """The design check's warnings in every invocation's output (a dry run shows them before any GPU-hour)."""
    from analysis.design import design_from_files

    from analysis.aggregate import read_runs
    from analysis.costs import projection_lines

    d = STUDY["design"]
    phases = design_study()
    runs_paths = [R(f"{p}/runs.csv") for p in PLAN.phases]
    _, warnings = design_from_files(phases, PLAN.phases, runs_paths,
                                    prior_sd=d["prior_sd"], power_floor=d.get("power_floor"),
                                    usd_per_gpu_hour=STUDY["cost"]["usd_per_gpu_hour"])
    for w in warnings:
        logger.warning(f"design check ({STUDY_NAME}{'-tiny' if TINY else ''}): {w}")
    # The phases not run yet, projected from the GPU-hours the runs on disk measured: read here, never
    # inputs (the DAG and the design rule's outputs stay as they are).
    tables = {p: read_runs(f) for p, f in zip(PLAN.phases, runs_paths) if os.path.isfile(f)}
    for line in projection_lines(phases, PLAN.phases, tables, STUDY["cost"]["usd_per_gpu_hour"]):
        logger.info(f"design check ({STUDY_NAME}{'-tiny' if TINY else ''}) cost: {line}")


def capture_files(phase):
    """The gradient/momentum captures the phase's capture arms write (beside each run, before its metrics)."""
    files = []
    for pr in phase_runs(phase):
        capture = STUDY["arms"][pr.run.arm].get("capture")
        if capture:
            files += [f"{pr.run_dir}/captures/step{s}.pt" for s in sorted(capture["steps"])]
    return files


def capture_runs(phase):
    """The metrics.json of the runs whose captures a phase measures (written after their captures)."""
    return [PLAN.metrics(pr.run) for pr in phase_runs(phase) if STUDY["arms"][pr.run.arm].get("capture")]


def extra_context(phase, extra):
    """What an extra's inputs and params are computed from (study/extras.py)."""
    from types import SimpleNamespace

    return SimpleNamespace(phase=phase, plan=PLAN, results=RESULTS, settings=PLAN.phase(phase)[extra.key],
                           capture_runs=lambda: capture_runs(phase), capture_files=lambda: capture_files(phase))


def extra_inputs(extra):
    return lambda wildcards: extra.inputs(extra_context(wildcards.phase, extra))


def extra_outputs(extra):
    out = {}
    for name, path in extra.outputs.items():
        out[name] = R(f"{{phase}}/{path}")
        if name in extra.report:
            subcategory, caption = extra.report[name]
            out[name] = report(out[name], category="{phase}", subcategory=subcategory, caption=caption)
    return out


def extra_params(extra):
    return {name: (lambda wildcards, f=f: f(extra_context(wildcards.phase, extra))) for name, f in extra.params.items()}


def spec_file(wildcards):
    """The run's spec as a file beside its log, handed to the trainer as `--spec-json @FILE` (study/spec_file.py):
    written where the job is built or runs, never in a dry run."""
    from study.spec_file import write_spec_file

    path = L(f"train/{PLAN.run_from_wildcards(wildcards).key}.spec.json")
    return path if workflow.dryrun else write_spec_file(path, PLAN.spec(PLAN.run_from_wildcards(wildcards)))


def report_landing_phase():
    """The phase whose landing page `snakemake TARGET --report report.html` opens with: the last phase
    among the targets (the study's last for `all` or no target)."""
    asked = [t for t in requested_targets() if t in PLAN.phases]
    return max(asked, key=PLAN.phases.index) if asked else PLAN.phases[-1]
