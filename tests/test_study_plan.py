"""The study plan: studies as data, runs per phase, run identity, specs and fingerprints (no torch)."""

from __future__ import annotations

import copy
import math
import subprocess

import pytest

from study import Plan, PlanError, Run, StudyFileError, fmt_value, launcher, load_study, variant_label
from study.spec import build_spec, fingerprint
from tests.workflow_helpers import REPO, bump_version, put


def study(name="orthonoise", tiny=False, **overrides):
    cfg, _, _ = load_study({"study": name, "tiny": tiny, **overrides}, REPO)
    return cfg


def copy_code(dst):
    """The declarations a plan reads (optim/, trainer/, analysis/, config/), copied to dst to be edited."""
    import shutil

    for part in ("optim", "trainer", "analysis", "config"):
        shutil.copytree(REPO / part, dst / part, ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture
def full():
    return study()


@pytest.fixture
def tiny():
    return study(tiny=True)


def test_values_are_written_exactly_and_read_back_exactly():
    assert [fmt_value(a) for a in (1.0e-4, 1.0e-3, 5.0e-3, 1.0e-2, 5.0e-2, 0.0, 3, 2.5e-5)] == [
        "0.0001", "0.001", "0.005", "0.01", "0.05", "0", "3", "2.5e-05"]
    for v in (1.2345678e-3, 1.0000001e-3, 0.1 + 0.2):
        assert float(fmt_value(v)) == v
    # the values the first layout (6 significant digits) wrote as one path are two runs now
    assert variant_label("muon.alpha", 1.0000001e-3) != variant_label("muon.alpha", 1.0e-3)
    assert variant_label("muon.lr", 0.003) == "lr0.003"
    assert variant_label("training.projection_every", 3) == "projection_every3"


def test_phase1_is_the_seeds_eight_runs(full):
    runs = Plan(full).phase_runs("phase1")
    assert len(runs) == 8
    assert {(r.run.arm, r.run.variant) for r in runs} == {
        ("muon", "alpha0"), ("orthonoise", "alpha0.001"), ("isotropic", "alpha0.001"),
        ("orthonoise-anneal", "alpha0.01")}
    assert {r.role for r in runs if r.run.arm == "muon"} == {"baseline"}
    assert all(r.run.model == "granite-350m" for r in runs)
    assert runs[0].run_dir == "results/orthonoise/runs/granite-350m/muon/alpha0/seed42"


def test_phase2_trains_each_distinct_run_once(full):
    plan = Plan(full)
    runs = plan.phase_runs("phase2")
    keys = [r.run.key for r in runs]
    assert len(keys) == len(set(keys))
    # the baseline, 5+5 alphas, 4 schedule/trigger arms at 1e-2 and the two isotropic controls, 2 seeds each
    assert len(runs) == 2 * (1 + 10 + 4 + 2)
    assert set(keys) >= {r.run.key for r in plan.phase_runs("phase1")}  # every phase-1 run is reused


def test_phase3_takes_the_selected_arm_on_fresh_seeds(full):
    plan = Plan(full)
    with pytest.raises(PlanError, match="needs the arm selected"):
        plan.phase_runs("phase3")
    sel = {"arm": "orthonoise-anneal", "variant": "alpha0.005", "param": "muon.alpha"}
    runs = plan.phase_runs("phase3", sel)
    roles = sorted((r.role, r.run.model, r.run.arm, r.run.variant) for r in runs)
    assert roles.count(("arm", "granite-1b", "orthonoise-anneal", "alpha0.005")) == 3
    assert roles.count(("baseline", "granite-1b", "muon", "alpha0")) == 3
    assert roles.count(("arm", "granite-1b", "nolah", "alpha0")) == 3
    assert ("scratch_arm", "gpt-1b-scratch", "orthonoise-anneal", "alpha0.005") in roles
    assert len(runs) == 13  # 3 fresh seeds x (baseline, selected, nolah) + the scratch pair on 2 seeds
    assert not {r.run.seed for r in runs if r.run.model == "granite-1b"} & set(full["phases"]["phase2"]["seeds"])


def test_every_possible_selection_is_a_known_run(full):
    plan = Plan(full)
    sels = plan.possible_selections("phase3")
    assert len(sels) == 14  # the orthonoise family's (arm, alpha) pairs of phase 2
    assert {s["param"] for s in sels} == {"muon.alpha"}
    # phases 1-2; each candidate on 3 seeds + 2 scratch seeds; nolah, the baseline, the scratch baseline
    assert len(plan.all_runs()) == 34 + 14 * (3 + 2) + 3 + 3 + 2


def test_the_move_keeps_every_fingerprint(full, tiny, tmp_path):
    """Fingerprints computed by the first layout (config/config.yaml, 7110009) for these runs: the move to
    config/studies/ changed none of them. (Issue 15 then bumped the four classes' behaviour versions to 2,
    which re-runs them on purpose; the check uses the versions of that commit.)"""
    import re

    copy_code(tmp_path)
    registry = tmp_path / "optim" / "registry.py"
    registry.write_text(re.sub(r'("(?:Muon|MuonOrthoNoise|MuonIsotropic|MuonNOLAH)": Optimizer\("[\w.]+", version=)\d+', r'\g<1>1',
                               registry.read_text()))
    first_layout = {
        ("gpt-350m", "muon", "alpha0", 42): "bcd7cc91d934835e",
        ("gpt-350m", "orthonoise", "alpha0.001", 123): "91976eb07a630ce9",
        ("gpt-350m", "orthonoise-anneal", "alpha0.05", 42): "6cb108b8c72b8cba",
        ("tiny", "orthonoise-exp", "alpha0.01", 42): "84fb5c41fcec2fa5",
        ("tiny", "muon", "alpha0", 123): "0bb50dbb0f83c13a",
    }
    # the first layout's real study: GPT-350M on the stdlib corpus (issue 22 moved it to Granite on FineWeb-Edu,
    # which changes its fingerprints on purpose; the twin's stay)
    first = copy.deepcopy(full)
    first["data"] = {"kind": "stdlib"}
    first["models"]["gpt-350m"] = {**first["models"].pop("granite-350m"), "arch": "gpt-350m"}
    first["optimizer_defaults"]["adamw_patterns"] = ["embed", "wte", "lm_head", "norm", "bias", "gain"]
    for phase in ("phase1", "phase2"):
        first["phases"][phase]["model"] = "gpt-350m"
    for (model, arm, variant, seed), fp in first_layout.items():
        cfg = tiny if model == "tiny" else first
        plan = Plan(cfg, code_root=tmp_path)
        assert plan.fingerprint(plan.make_run(model, arm, variant, seed)) == fp, (model, arm, variant)


def test_spec_carries_the_arm_settings_and_the_swept_value(tiny):
    plan = Plan(tiny)
    spec = plan.spec(plan.make_run("tiny", "orthonoise-anneal", "alpha0.01", 42))
    muon = spec["optimizer"]["muon"]
    assert spec["optimizer"]["class"] == "MuonOrthoNoise"
    assert muon["alpha"] == 1.0e-2 and muon["alpha_end"] == 1.0e-3  # not 0.0010000000000000002
    assert spec["alpha"] == 1.0e-2
    assert muon["schedule"] == "exponential" and "alpha_end_ratio" not in muon
    assert spec["training"]["global_batch"] == 16
    assert spec["eval"]["at_steps"] == [50, 100, 150, 200]
    base = plan.spec(plan.make_run("tiny", "muon", "alpha0", 42))
    assert "alpha" not in base["optimizer"]["muon"] and base["alpha"] == 0.0


def test_any_setting_can_be_swept(tiny):
    cfg = copy.deepcopy(tiny)
    cfg["phases"]["phase1"]["runs"].append({"arm": "muon", "sweep": {"param": "muon.lr", "values": [0.003, 0.01]}})
    cfg["phases"]["phase1"]["runs"].append({"arm": "muon", "sweep": {"param": "training.warmup_steps",
                                                                        "values": [0, 20]}})
    plan = Plan(cfg)
    runs = {r.run.variant: r.run for r in plan.phase_runs("phase1") if r.run.arm == "muon"}
    assert set(runs) == {"alpha0", "lr0.003", "lr0.01", "warmup_steps0", "warmup_steps20"}
    assert plan.spec(runs["lr0.003"])["optimizer"]["muon"]["lr"] == 0.003
    assert plan.spec(runs["warmup_steps20"])["training"]["warmup_steps"] == 20
    assert plan.run_from_wildcards({"model": "tiny", "arm": "muon", "variant": "lr0.01", "seed": "7"}).value == 0.01


def test_fingerprint_ignores_operational_settings_only(tiny):
    spec = build_spec(tiny, Plan(tiny).make_run("tiny", "orthonoise", "alpha0.001", 42))
    changed = copy.deepcopy(spec)
    changed["wandb"]["mode"] = "disabled"
    changed["checkpoint"]["every"] = 7
    changed["runtime"]["compile"] = "off"
    assert fingerprint(changed) == spec["fingerprint"]
    for path, value in [(("optimizer", "muon", "lr"), 0.03), (("seed",), 7),
                        (("training", "steps"), 201), (("eval", "batches"), 9)]:
        other = copy.deepcopy(spec)
        node = other
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert fingerprint(other) != spec["fingerprint"], path


def test_fingerprint_follows_the_optimizer_behaviour_version(tiny, tmp_path):
    copy_code(tmp_path)
    before = Plan(tiny, code_root=tmp_path)
    iso, muon = before.make_run("tiny", "isotropic", "alpha0.001", 42), before.make_run("tiny", "muon", "alpha0", 42)
    fp_iso, fp_muon = before.fingerprint(iso), before.fingerprint(muon)
    bump_version(tmp_path, "MuonIsotropic")
    after = Plan(tiny, code_root=tmp_path)
    assert after.fingerprint(iso) != fp_iso
    assert after.fingerprint(muon) == fp_muon


def test_a_feature_version_re_runs_only_the_runs_that_use_the_feature(tmp_path):
    """Polar Express's epsilon changed (issue 20): the nGPT runs that orthogonalize with it go stale, the
    Newton-Schulz runs of the same class keep their fingerprints."""
    cfg = study("ngpt", tiny=True)
    copy_code(tmp_path)
    before = Plan(cfg, code_root=tmp_path)
    polar, plain = before.make_run("ngpt-tiny", "muon-polar", "lr0.01", 1), before.make_run("ngpt-tiny", "muon", "lr0.01", 42)
    fp_polar, fp_plain = before.fingerprint(polar), before.fingerprint(plain)
    bump_version(tmp_path, "polar_express")
    after = Plan(cfg, code_root=tmp_path)
    assert after.fingerprint(polar) != fp_polar
    assert after.fingerprint(plain) == fp_plain


@pytest.mark.parametrize("name", ["orthonoise", "ngpt", "distro"])
def test_each_study_and_its_twin_make_a_plan(name):
    if not (REPO / "config" / "studies" / f"{name}.yaml").exists():
        pytest.skip(f"study {name} not written yet")
    for tiny in (False, True):
        plan = Plan(study(name, tiny))
        assert plan.phases and plan.all_runs()


# -- bad input, one class of error each: every message names the key, the value and what is allowed ---
def _append_run(phase, entry):
    return lambda c: c["phases"][phase]["runs"].append(entry)


BAD = [
    (put("phases", "phase1", "model", "gpt-9b"), "phases.phase1.model: 'gpt-9b' is not in models"),
    (_append_run("phase1", {"arm": "nope"}), "phases.phase1.runs[3].arm: 'nope' is not in arms"),
    (put("arms", "muon", "muon", {"schedule": "constant"}), "arms.muon.muon.schedule: not a setting of arm muon"),
    (_append_run("phase1", {"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": [0.0]}}),
     "needs alpha > 0"),
    (put("models", "granite-350m", "global_batch", 60), "global_batch 60"),
    (put("phases", "phase2", "gates", "effective_rank_higher", "arms", ["orthonoise", "ghost"]),
     "phases.phase2.gates.effective_rank_higher.arms: 'ghost' is not an arm of phases.phase2"),
    (put("phases", "phase1", "gates", "scratch", {"kind": "reaches_target_sooner"}), "needs a scratch pair"),
    (put("phases", "phase3", "scratch", "model", "granite-1b"), "phases.phase3.scratch.model: 'granite-1b' is the phase's"),
    # non-finite numbers anywhere
    (put("optimizer_defaults", "muon", "lr", math.nan), "optimizer_defaults.muon.lr: nan is not allowed"),
    (put("optimizer_defaults", "muon", "momentum", math.inf), "optimizer_defaults.muon.momentum: inf"),
    (put("training_defaults", "cooldown_frac", math.nan), "training_defaults.cooldown_frac: nan"),
    (put("cost", "usd_per_gpu_hour", math.inf), "cost.usd_per_gpu_hour: inf is not allowed"),
    (put("phases", "phase2", "gates", "beats_baseline", "min_improvement", math.nan),
     "phases.phase2.gates.beats_baseline.min_improvement: nan"),
    (_append_run("phase1", {"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": [math.inf]}}),
     "phases.phase1.runs[3].sweep.values[0]: inf"),
    (put("phases", "phase1", "seeds", [42, math.nan]), "phases.phase1.seeds[1]: nan"),
    # types and ranges
    (put("models", "granite-350m", "steps", 500.0), "models.granite-350m.steps: 500.0 is not of type 'integer'"),
    (put("optimizer_defaults", "muon", "lr", -0.02), "optimizer_defaults.muon.lr: -0.02 is not allowed (a finite number >"),
    (put("optimizer_defaults", "muon", "lr", "1e-3"), "optimizer_defaults.muon.lr: '1e-3' is not allowed (it is a string, not a number"),
    (put("arms", "orthonoise", "muon", "schedule", "cosine"), "arms.orthonoise.muon.schedule: 'cosine' is not allowed"),
    (put("arms", "orthonoise", "class", "Adam"), "arms.orthonoise.class: 'Adam' is not an optimizer class"),
    (put("wandb", "mode", "sometimes"), "wandb.mode: 'sometimes' is not allowed"),
    (put("models", "granite-350m", "arch", "gpt-7b"), "models.granite-350m.arch: 'gpt-7b' is not allowed"),
    (put("models", "granite-350m", "arch", "hf:/no/such/model"), "models.granite-350m.arch: 'hf:/no/such/model': no such directory"),
    (put("models", "gpt-1b-scratch", "revision", "main"), "models.gpt-1b-scratch.revision: 'main': only for hf:<Hub id>"),
    (put("data", {"kind": "hub", "repo": "not a repo", "train_shards": 2}), "data.repo: 'not a repo' is not allowed"),
    (put("data", {"kind": "hub", "repo": "a/b", "train_shards": 2, "tokenizer": "bpe:300"}),
     "data.tokenizer: not allowed with train_shards"),
    (put("data", {"kind": "hub", "repo": "a/b", "files": ["x.parquet"]}), "data.tokenizer: required with data.files"),
    (put("data", {"kind": "hub", "repo": "a/b", "files": ["x.parquet"], "tokenizer": "model", "val_fraction": 2.0}),
     "val_fraction"),
    (put("data", {"kind": "bin", "train": "/no/such/*.bin", "val": "/no/such/val*.bin"}),
     "data.train: '/no/such/*.bin' matches no file"),
    (put("surprise", 1), "unknown key(s) 'surprise'"),
    (put("phases", "phase1", "seeds", [1, 1]), "phases.phase1.seeds: [1, 1] has non-unique elements"),
    # phases, sweeps, selections, gates
    (put("phases", "phase1", "runs", []), "phases.phase1.runs: [] should be non-empty"),
    (_append_run("phase1", {"arm": "muon", "sweep": {"param": "muon.lrr", "values": [0.1]}}),
     "phases.phase1.runs[3].sweep.param: 'muon.lrr' is not a setting of arm muon"),
    (_append_run("phase1", {"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": [1.0e-3, 1.0e-3]}}),
     "phases.phase1.runs[3].sweep.values: 0.001 listed twice"),
    (_append_run("phase1", {"arm": "muon", "sweep": {"param": "muon.lr", "values": [0.1]}}) ,
     None),  # a valid sweep (control)
    (lambda c: [_append_run("phase1", {"arm": "muon", "sweep": {"param": p, "values": [0.1]}})(c)
                for p in ("muon.lr", "adamw.lr")], "both make the path label 'lr0.1'"),
    (put("phases", "phase1", "gates", "vibes", {"kind": "vibes_good"}),
     "phases.phase1.gates.vibes.kind: 'vibes_good' is not a gate kind"),
    (put("phases", "phase1", "gates", "loss_within_baseline", "margin", "5%"),
     "phases.phase1.gates.loss_within_baseline.margin: '5%' is not allowed"),
    (put("phases", "phase1", "gates", "loss_within_baseline", "margn", 0.05),
     "phases.phase1.gates.loss_within_baseline.margn: not a setting of gate kind within_baseline"),
    (put("phases", "phase2", "gates", "early_loss_not_worse", "step", 900),
     "phases.phase2.gates.early_loss_not_worse.step: step 900 is not evaluated by granite-350m"),
    (put("phases", "phase2", "gates", "isotropic_worse", "worse", "isotrpic"),
     "phases.phase2.gates.isotropic_worse.worse: 'isotrpic' is not an arm of phases.phase2"),
    (put("phases", "phase2", "gates", "beats_baseline", "model", "granite-1b"),
     "phases.phase2.gates.beats_baseline.model: 'granite-1b' is not a model of phases.phase2"),
    (put("training_defaults", "eval_at_steps", [50, 900]), "eval_at_steps [900] are beyond its 500 steps"),
    (put("phases", "phase3", "select", "from", "phase7"), "phases.phase3.select.from: 'phase7' is not a phase before phase3"),
    (put("phases", "phase3", "select", "gate", "beats"), "phases.phase3.select.gate: 'beats' is not a gate of phase2"),
    (put("phases", "phase1", "force", True), "phases.phase1.force: only meaningful with select"),
    (_append_run("phase1", {"arm": "selected"}), "phases.phase1.runs[3].arm: 'selected' needs phases.phase1.select"),
    (put("phases", "all", {"question": "q", "model": "granite-350m", "seeds": [1], "baseline": "muon",
                              "runs": [{"arm": "nolah"}], "gates": {}}), "phases.all: 'all' is a rule or directory of the workflow"),
    (put("arms", "muon", "muon", {"lr": 0.0}), "arms.muon.muon.lr: 0.0 is not allowed (a finite number > 0)"),
]


@pytest.mark.parametrize("mutate, message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_study_names_the_key_before_any_job(full, mutate, message):
    mutate(full)
    if message is None:
        Plan(full)
        return
    with pytest.raises(PlanError) as err:
        Plan(full)
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty (or only comments)"),
    ("# only a comment\n", "the file is empty (or only comments)"),
    ("- a\n- b\n", "the top level is a list, not a mapping"),
    ("42\n", "the top level is a int, not a mapping"),
    ("study:\n\tname: x\n", "line 2"),
    ("arms: *undefined\n", "found undefined alias 'undefined'"),
    ("study: {name: a}\nstudy: {name: b}\n", "duplicate key 'study' (first at line 1)"),
    ("study: [unclosed\n", "line 2"),
])
def test_unreadable_study_files_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(StudyFileError) as err:
        load_study({"study": str(path)}, REPO)
    assert str(path) in str(err.value) and message in str(err.value)


def test_unknown_study_and_bad_selection_flags():
    with pytest.raises(StudyFileError, match="'nope' is not a study \\(known: .*orthonoise"):
        load_study({"study": "nope"}, REPO)
    with pytest.raises(StudyFileError, match="config tiny: 'maybe' is not allowed"):
        load_study({"study": "orthonoise", "tiny": "maybe"}, REPO)


def test_overrides_merge_over_the_study_and_its_twin():
    cfg, tiny, _ = load_study({"study": "orthonoise", "tiny": True, "models": {"tiny": {"steps": 60}}}, REPO)
    assert tiny and cfg["models"]["tiny"]["steps"] == 60 and cfg["models"]["tiny"]["seq_len"] == 64
    assert "tiny" not in cfg  # the twin section is consumed


def test_launcher_single_and_multi_node(tmp_path):
    fwd = "--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    assert launcher(4, 1, "torchrun") == f"torchrun --standalone --nproc-per-node 4 {fwd}"
    assert launcher(4, 1, "torchrun", under_slurm=True) == (
        f"srun --nodes 1 --ntasks 1 torchrun --standalone --nproc-per-node 4 {fwd}")
    # the rule passes its CPUs: the jobstep strips SLURM_CPUS_PER_TASK, and a step's default CPUs vary by release
    assert launcher(4, 1, "torchrun", under_slurm=True, cpus_per_node=32).startswith(
        "srun --nodes 1 --ntasks 1 --cpus-per-task 32 torchrun --standalone")
    multi = launcher(8, 2, "/x y/torchrun", under_slurm=True, cpus_per_node=64)
    assert launcher(8, 2, "/x y/torchrun", cpus_per_node=64) == multi
    assert multi.startswith("srun --nodes 2 --ntasks 2 --ntasks-per-node 1 --cpus-per-task 64 --kill-on-bad-exit=1 sh -c ")
    assert multi.endswith(" '/x y/torchrun'")
    # What each node runs: the step's shell finds the first host itself (the jobstep strips SLURM_JOB_NODELIST
    # from the rule's shell; Slurm sets it again in the step) and execs torchrun with the rule's arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] && printf "gpu07\\ngpu08\\n"\n')
    (bin_dir / "args").write_text("#!/bin/sh\nprintf '%s|' \"$@\"\n")  # stands in for torchrun
    for tool in ("scontrol", "args"):
        (bin_dir / tool).chmod(0o755)
    step = multi.split(" sh -c ", 1)[1].rsplit(" ", 2)[0]  # the quoted script, without the torchrun argument
    # the rendezvous port is the job's own (20000 + id mod 10000): two jobs on one first host never share a store
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "14242"}
    out = subprocess.run(f"sh -c {step} args train.py --spec-json '@a b.json'", shell=True, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == ("--nnodes|2|--nproc-per-node|8|--rdzv-backend|c10d|--rdzv-endpoint|gpu07:24242|--rdzv-id|14242|"
                   f"{fwd.replace(' ', '|')}|train.py|--spec-json|@a b.json|")
    assert launcher(1, 1, "/x y/$(touch z)/torchrun").startswith("'/x y/$(touch z)/torchrun' --standalone")
    with pytest.raises(ValueError):
        launcher(0, 1)


def test_slurm_node_args_are_typed_like_the_plugins_gpus():
    from study.launch import slurm_node_args

    # Slurm refuses `--gpus=h100:16 --gpus-per-node=8` (typed beside untyped); no GPUs asked for, none per node
    assert slurm_node_args(8, "h100") == "--gpus-per-node=h100:8 --ntasks-per-node=1"
    assert slurm_node_args(8, None) == "--gpus-per-node=8 --ntasks-per-node=1"
    assert slurm_node_args(0, "h100") == "--ntasks-per-node=1"


def test_optimizer_arguments_match_the_classes():
    """optim/registry.py (read by the config checks without torch) lists exactly each class's keyword
    arguments, and a value every class accepts for each default."""
    import inspect

    import optim
    from optim.registry import OPTIMIZER_ARGUMENTS

    def arguments(cls):  # the keyword arguments along the class chain (subclasses pass **kwargs up)
        return {name for k in cls.__mro__ if "__init__" in vars(k) and k.__module__.startswith("optim.")
                for name, p in inspect.signature(k.__init__).parameters.items()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self", "params", "seed"}

    assert set(OPTIMIZER_ARGUMENTS) == set(optim.OPTIMIZERS)
    for name, declared in OPTIMIZER_ARGUMENTS.items():
        if name == "AdamW":  # its settings are optimizer.adamw (ADAMW_ARGUMENTS); it takes no muon ones
            assert declared == {}
            continue
        assert set(declared) == arguments(optim.OPTIMIZERS[name]), name


def test_a_selected_value_and_a_sweep_make_compound_runs(tiny):
    """The nGPT plan's shape: a later phase runs an arm at the lr chosen earlier AND sweeps another setting."""
    cfg = copy.deepcopy(tiny)
    cfg["phases"]["phase2"]["runs"].append({"arm": "muon", "sweep": {"param": "muon.lr", "values": [0.01, 0.03]}})
    cfg["phases"]["phase3"].update(
        baseline={"arm": "muon", "value": "selected"},
        select={"from": "phase2", "arms": ["muon"], "rule": "lowest_mean"},
        runs=[{"arm": "muon", "value": "selected", "sweep": {"param": "training.warmup_steps", "values": [0, 20]}}],
        gates={"no_crashes": {"kind": "no_crashes"}})
    del cfg["phases"]["phase3"]["scratch"]
    plan = Plan(cfg)
    assert plan.possible_selections("phase3") == [
        {"arm": "muon", "variant": "lr0.01", "param": "muon.lr"}, {"arm": "muon", "variant": "lr0.03", "param": "muon.lr"}]
    runs = plan.phase_runs("phase3", {"arm": "muon", "variant": "lr0.03", "param": "muon.lr"})
    assert {(r.role, r.run.variant) for r in runs} == {
        ("baseline", "lr0.03"), ("arm", "lr0.03+warmup_steps0"), ("arm", "lr0.03+warmup_steps20")}
    run = next(r.run for r in runs if r.run.variant.endswith("warmup_steps20"))
    spec = plan.spec(run)
    assert spec["optimizer"]["muon"]["lr"] == 0.03 and spec["training"]["warmup_steps"] == 20
    assert (run.param, run.value) == ("training.warmup_steps", 20)
    assert run in plan.all_runs()
    # an arm that cannot take the selected setting is refused before any job
    cfg["phases"]["phase3"]["runs"].append({"arm": "nolah", "value": "selected"})
    Plan(cfg)  # nolah is a Muon class: it takes muon.lr
    cfg["arms"]["adam"] = {"class": "AdamW"}
    cfg["phases"]["phase3"]["runs"].append({"arm": "adam", "value": "selected"})
    with pytest.raises(PlanError, match=r"phases.phase3.runs\[2\].value: the value selected from phase2 sets muon.lr"):
        Plan(cfg)


def test_a_hub_models_commit_is_in_its_fingerprint_and_the_twin_is_kept_apart_in_wandb(tiny):
    """Issue 22: the commit fetched for an hf:<Hub id> model is part of the run (another commit, another
    fingerprint); the twin's W&B runs go to their own folder, grouped and tagged apart, without touching a
    fingerprint (wandb is operational)."""
    cfg = copy.deepcopy(tiny)
    cfg["models"]["tiny"] = {k: v for k, v in cfg["models"]["tiny"].items() if k != "vocab_size"}
    cfg["models"]["tiny"]["arch"] = "hf:ibm-granite/granite-4.0-h-350m-base"
    run = Plan(tiny).make_run("tiny", "muon", "alpha0", 42)
    a, b = (build_spec(cfg, run, model_revision=c * 40) for c in "ab")
    assert a["model"]["revision"] == "a" * 40 and a["fingerprint"] != b["fingerprint"]
    real = Plan(tiny, results="results/orthonoise").spec(run)
    twin = Plan(tiny, results="results/orthonoise-tiny", twin=True).spec(run)
    assert twin["fingerprint"] == real["fingerprint"]
    assert (real["wandb"]["dir"], twin["wandb"]["dir"]) == ("results/orthonoise/wandb", "results/orthonoise-tiny/wandb")
    assert "twin" in twin["wandb"]["tags"] and "twin" not in real["wandb"]["tags"]
    assert twin["wandb"]["group"] == "orthonoise-tiny/tiny"


def test_one_lr_grid_for_adamw_lr_and_muon_lr_in_two_arms_is_two_sets_of_directories(tiny):
    """Issue 21: path labels belong to an arm. The same grid swept as adamw.lr in the AdamW arm and as muon.lr
    in the Muon arm makes runs in different arm folders (nothing shares a directory): accepted, each run
    trains its own setting; the same two sweeps in one arm would share directories: refused."""
    cfg = copy.deepcopy(tiny)
    cfg["arms"]["adam"] = {"class": "AdamW"}
    cfg["phases"]["phase1"]["gates"].pop("effective_rank_logged")  # AdamW logs no effective rank (refused)
    grid = [1.0e-3, 1.0e-2]
    cfg["phases"]["phase1"]["runs"] += [{"arm": "adam", "sweep": {"param": "adamw.lr", "values": grid}},
                                        {"arm": "muon", "sweep": {"param": "muon.lr", "values": grid}}]
    plan = Plan(cfg)
    keys = {pr.run.key: pr.run for pr in plan.phase_runs("phase1")}
    adam, muon = keys["tiny/adam/lr0.01/seed42"], keys["tiny/muon/lr0.01/seed42"]
    assert plan.optimizer(adam)["adamw"]["lr"] == 0.01 and plan.optimizer(adam)["class"] == "AdamW"
    assert plan.optimizer(muon)["muon"]["lr"] == 0.01 and plan.optimizer(muon)["adamw"]["lr"] != 0.01
    assert plan.run_dir(adam) != plan.run_dir(muon)
    same_arm = copy.deepcopy(tiny)
    same_arm["phases"]["phase1"]["runs"] += [{"arm": "muon", "sweep": {"param": p, "values": grid}}
                                             for p in ("adamw.lr", "muon.lr")]
    with pytest.raises(PlanError, match=r"both make the path label 'lr0.001' for arm muon: their runs would share"):
        Plan(same_arm)
