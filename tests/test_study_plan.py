"""The study plan: runs per phase, run identity, specs and fingerprints (no Snakemake, no torch)."""

from __future__ import annotations

import copy

import pytest
import yaml

from study import Plan, PlanError, Run, fmt_alpha, launcher
from study.spec import build_spec, fingerprint
from tests.workflow_helpers import REPO


def load(*names):
    from snakemake.utils import update_config

    cfg = {}
    for name in names:
        update_config(cfg, yaml.safe_load((REPO / "config" / name).read_text()))
    return cfg


@pytest.fixture
def full():
    return load("config.yaml")


@pytest.fixture
def tiny():
    return load("config.yaml", "tiny.yaml")


def test_fmt_alpha_is_lossless_and_readable():
    assert [fmt_alpha(a) for a in (1.0e-4, 1.0e-3, 5.0e-3, 1.0e-2, 5.0e-2, 0.0)] == [
        "0.0001", "0.001", "0.005", "0.01", "0.05", "0"]
    assert float(fmt_alpha(2.5e-3)) == 2.5e-3


def test_phase1_is_the_seeds_eight_runs(full):
    runs = Plan(full).phase_runs("phase1")
    assert len(runs) == 8
    assert {(r.run.arm, r.run.alpha) for r in runs} == {
        ("muon", 0.0), ("orthonoise", 1.0e-3), ("isotropic", 1.0e-3), ("orthonoise-anneal", 1.0e-2)}
    assert {r.role for r in runs if r.run.arm == "muon"} == {"baseline"}
    assert all(r.run.model == "gpt-350m" for r in runs)


def test_phase2_trains_each_distinct_run_once(full):
    runs = Plan(full).phase_runs("phase2")
    keys = [r.run.key for r in runs]
    assert len(keys) == len(set(keys))
    # 30 listed arm runs, the constant-schedule arm being the sweep's orthonoise at 1e-2 (28
    # distinct), plus the baseline and the isotropic control, 2 seeds each.
    assert len(runs) == 28 + 2 + 2
    shared = set(keys) & {r.run.key for r in Plan(full).phase_runs("phase1")}
    assert len(shared) == 8  # every phase-1 run is reused by phase 2


def test_phase3_needs_the_selection_and_builds_the_scratch_pair(full):
    plan = Plan(full)
    with pytest.raises(PlanError, match="needs the arm selected"):
        plan.phase_runs("phase3")
    runs = plan.phase_runs("phase3", {"arm": "orthonoise-anneal", "alpha": 5.0e-3})
    roles = sorted((r.role, r.run.model, r.run.arm) for r in runs)
    assert roles.count(("arm", "gpt-1b", "orthonoise-anneal")) == 3
    assert roles.count(("baseline", "gpt-1b", "muon")) == 3
    assert roles.count(("arm", "gpt-1b", "nolah")) == 3
    assert ("scratch_baseline", "gpt-1b-scratch", "muon") in roles
    assert ("scratch_arm", "gpt-1b-scratch", "orthonoise-anneal") in roles
    assert len(runs) == 11


def test_spec_carries_the_arm_settings_and_derived_end_alpha(tiny):
    plan = Plan(tiny)
    spec = plan.spec(Run("tiny", "orthonoise-anneal", 1.0e-2, 42))
    muon = spec["optimizer"]["muon"]
    assert spec["optimizer"]["class"] == "MuonOrthoNoise"
    assert muon["alpha"] == 1.0e-2 and muon["alpha_end"] == 1.0e-3  # not 0.0010000000000000002
    assert muon["schedule"] == "exponential" and "alpha_end_ratio" not in muon
    assert spec["training"]["global_batch"] == 16
    assert spec["eval"]["at_steps"] == [50, 100, 150, 200]
    base = plan.spec(Run("tiny", "muon", 0.0, 42))
    assert "alpha" not in base["optimizer"]["muon"]


def test_fingerprint_ignores_operational_settings_only(tiny):
    run = Run("tiny", "orthonoise", 1.0e-3, 42)
    spec = build_spec(tiny, run)
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
    (tmp_path / "optim").mkdir()
    (tmp_path / "trainer").mkdir()
    versions = (REPO / "optim" / "versions.py").read_text()
    (tmp_path / "trainer" / "version.py").write_text((REPO / "trainer" / "version.py").read_text())
    (tmp_path / "optim" / "versions.py").write_text(versions)
    iso, muon = Run("tiny", "isotropic", 1.0e-3, 42), Run("tiny", "muon", 0.0, 42)
    before = Plan(tiny, code_root=tmp_path)
    fp_iso, fp_muon = before.fingerprint(iso), before.fingerprint(muon)
    (tmp_path / "optim" / "versions.py").write_text(
        versions.replace('"MuonIsotropic": 1', '"MuonIsotropic": 2'))
    after = Plan(tiny, code_root=tmp_path)
    assert after.fingerprint(iso) != fp_iso
    assert after.fingerprint(muon) == fp_muon


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["phases"]["phase1"].update(model="gpt-9b"), "phases.phase1.model: 'gpt-9b'"),
    (lambda c: c["phases"]["phase1"]["runs"].append({"arm": "nope", "alphas": [1.0e-3]}),
     "phases.phase1.runs[3].arm: 'nope'"),
    (lambda c: c["arms"]["muon"].update(muon={"schedule": "constant"}),
     "arms.muon.muon.schedule: not a setting of class Muon"),
    (lambda c: c["phases"]["phase1"]["runs"].append({"arm": "orthonoise", "alphas": [0.0]}),
     "needs alpha > 0"),
    (lambda c: c["models"]["gpt-350m"].update(global_batch=60), "global_batch 60"),
    (lambda c: c["phases"]["phase2"]["gates"]["effective_rank_higher"]["arms"].append("ghost"),
     "effective_rank_higher.arms: 'ghost'"),
    (lambda c: c["phases"]["phase1"]["gates"].update(scratch_faster={}), "scratch_faster"),
    (lambda c: c["phases"]["phase3"]["scratch"].update(model="gpt-1b"), "phases.phase3.scratch.model: 'gpt-1b'"),
])
def test_incoherent_configs_name_the_key(full, mutate, message):
    mutate(full)
    with pytest.raises(PlanError) as err:
        Plan(full)
    assert message in str(err.value)


def test_launcher_single_and_multi_node():
    fwd = "--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    assert launcher(4, 1, "torchrun") == f"torchrun --standalone --nproc-per-node 4 {fwd}"
    assert launcher(4, 1, "torchrun", under_slurm=True) == (
        f"srun --nodes 1 --ntasks 1 torchrun --standalone --nproc-per-node 4 {fwd}")
    multi = launcher(8, 2, "torchrun", under_slurm=True)
    assert launcher(8, 2, "torchrun") == multi
    assert multi.startswith("srun --nodes 2 --ntasks 2 --ntasks-per-node 1 ")
    assert multi.endswith(fwd)
    assert "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d" in multi
    assert '--rdzv-endpoint "$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)":29500' in multi
    assert '--rdzv-id "$SLURM_JOB_ID"' in multi
    with pytest.raises(ValueError):
        launcher(0, 1)


def test_config_keys_are_the_optimizers_arguments():
    """The schema and the plan accept exactly the keyword arguments of the optim/ classes (alpha and
    alpha_end come from the phase; alpha_end_ratio is the config's relative form of alpha_end)."""
    import inspect

    import optim
    from study.plan import ALLOWED_KEYS

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    schema_keys = set(schema["$defs"]["muon_settings"]["properties"])
    config_only = {"alpha_end_ratio"}
    set_per_run = {"alpha", "alpha_end", "seed", "eps", "params", "self"}
    def arguments(cls):  # the keyword arguments along the class chain (subclasses pass **kwargs up)
        return {name for k in cls.__mro__ if "__init__" in vars(k) and issubclass(k, optim.Muon)
                for name, p in inspect.signature(k.__init__).parameters.items()
                if p.kind is not p.VAR_KEYWORD}

    for cls, allowed in ALLOWED_KEYS.items():
        accepted = arguments(getattr(optim, cls)) - set_per_run
        assert allowed - config_only == accepted, (cls, allowed ^ accepted)
        assert allowed <= schema_keys, (cls, allowed - schema_keys)
    assert schema_keys == set().union(*ALLOWED_KEYS.values())
