"""The run spec: validation messages, defaults written out, overrides; the lr schedule and eval plan."""

from __future__ import annotations

import copy
import json

import pytest

from trainer.loop import eval_steps, lr_scale
from trainer.spec import RunSpec, SpecError, apply_overrides, example_spec

DESIGN_EXAMPLE = {
    "run_id": "tiny/orthonoise/alpha0.001/seed42",
    "model": {"name": "tiny", "arch": "tiny"},
    "optimizer": {
        "arm": "orthonoise",
        "class": "MuonOrthoNoise",
        "muon": {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0,
                 "adjust_lr_fn": "original", "orthogonalizer": "newton_schulz", "ns_steps": 5,
                 "alpha": 0.001, "schedule": "constant", "rank_threshold": 0.5, "rank_every": 10,
                 "noise_method": "qr", "persist_noise": False, "noise_warmup_steps": 0},
        "adamw": {"lr": 0.003, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.0},
        "split": {"adamw_patterns": ["embed", "lm_head", "norm", "bias", "gain"]},
    },
    "alpha": 0.001,
    "seed": 42,
    "training": {"steps": 300, "global_batch": 32, "micro_batch": 16, "seq_len": 64,
                 "warmup_steps": 10, "cooldown_frac": 0.3, "grad_clip": 0.0, "divergence_factor": 3.0},
    "eval": {"every": 25, "batches": 8, "at_steps": [50, 100, 150, 250, 300], "target_losses": [2.5, 2.2]},
    "data": {"kind": "stdlib", "path": "results/data/stdlib"},
    "checkpoint": {"every": 50, "keep": False},
    "wandb": {"mode": "offline", "project": "muon-ablations", "group": "orthonoise/phase1",
              "tags": ["tiny", "orthonoise", "alpha0.001", "seed42"], "dir": "results/wandb"},
    "runtime": {"device": "auto", "compile": "auto", "dtype": "auto"},
    "fingerprint": "3f2a9c0d1e2b4a57",
}


def bad(d: dict) -> SpecError:
    with pytest.raises(SpecError) as ei:
        RunSpec.from_dict(d)
    return ei.value


def test_design_example_round_trips():
    s = RunSpec.from_dict(copy.deepcopy(DESIGN_EXAMPLE))
    out = s.to_dict()
    assert out["fingerprint"] == "3f2a9c0d1e2b4a57"
    assert out["optimizer"]["class"] == "MuonOrthoNoise"
    assert out["optimizer"]["muon"] == DESIGN_EXAMPLE["optimizer"]["muon"]
    # the resolved spec parses to the same spec again, and is JSON
    assert RunSpec.from_dict(json.loads(json.dumps(out))).to_dict() == out


def test_defaults_are_written_out():
    d = copy.deepcopy(DESIGN_EXAMPLE)
    for k in ("checkpoint", "wandb", "runtime", "fingerprint"):
        del d[k]
    del d["training"]["warmup_steps"]
    out = RunSpec.from_dict(d).to_dict()
    assert out["checkpoint"] == {"every": 0, "keep": False}
    assert out["wandb"]["mode"] == "offline"
    assert out["runtime"] == {"device": "auto", "compile": "auto", "dtype": "auto", "deterministic": True}
    assert out["training"]["warmup_steps"] == 0
    assert len(out["fingerprint"]) == 16  # computed when the study gave none


def test_every_bad_field_is_named_with_value_and_what_is_allowed():
    d = copy.deepcopy(DESIGN_EXAMPLE)
    d["model"]["arch"] = "gpt-7b"
    d["optimizer"]["class"] = "Adam"
    d["training"]["seq_len"] = 1
    d["training"]["micro_batch"] = 5  # does not divide 32
    d["training"]["cooldown_frac"] = 1.5
    d["eval"]["at_steps"] = [50, 400]  # beyond 300 steps
    d["data"]["kind"] = "parquet"
    d["wandb"]["mode"] = "cloud"
    d["runtime"]["compile"] = "maybe"
    d["trainig"] = {}  # typo of a section
    e = bad(d)
    keys = {k for k, _, _ in e.errors}
    assert {"model.arch", "optimizer.class", "training.seq_len", "training.micro_batch", "training.cooldown_frac",
            "eval.at_steps", "data.kind", "wandb.mode", "runtime.compile", "trainig"} <= keys
    msg = str(e)
    assert "model.arch = 'gpt-7b'" in msg and "gpt-124m" in msg
    assert "optimizer.class = 'Adam'" in msg and "MuonOrthoNoise" in msg
    assert "training.micro_batch = 5" in msg and "divisor of training.global_batch (32)" in msg
    assert "[400] are beyond the run" in msg
    assert "wandb.mode = 'cloud'" in msg and "'offline'" in msg
    assert "trainig" in msg and "unknown key" in msg


@pytest.mark.parametrize("mutate, key, fragment", [
    (lambda d: d.pop("seed"), "seed", "required"),
    (lambda d: d.__setitem__("seed", -1), "seed", ">= 0"),
    (lambda d: d["training"].__setitem__("seq_len", "64"), "training.seq_len", "an integer"),
    (lambda d: d["training"].__setitem__("global_batch", True), "training.global_batch", "an integer"),
    (lambda d: d["training"].__setitem__("divergence_factor", 1.0), "training.divergence_factor", "> 1.0"),
    (lambda d: d["eval"].__setitem__("target_losses", [2.5, float("nan")]), "eval.target_losses", "finite"),
    (lambda d: d.__setitem__("alpha", 0.01), "alpha", "equal to optimizer.muon.alpha"),
    (lambda d: d["data"].update(kind="bin"), "data.train", "required"),
    (lambda d: d["data"].__setitem__("train", "x*.bin"), "data.train", "only for data.kind 'bin'"),
    (lambda d: d["model"].__setitem__("unknown", 1), "model.unknown", "unknown key"),
    (lambda d: d["optimizer"]["split"].__setitem__("adamw_patterns", "embed"), "optimizer.split.adamw_patterns",
     "list of strings"),
    (lambda d: d["checkpoint"].__setitem__("keep", "yes"), "checkpoint.keep", "true or false"),
    (lambda d: d.__setitem__("model", "tiny"), "model", "an object"),
])
def test_single_bad_field(mutate, key, fragment):
    d = copy.deepcopy(DESIGN_EXAMPLE)
    mutate(d)
    e = bad(d)
    assert e.key == key, str(e)
    assert fragment in e.allowed, str(e)


def test_hf_arch_and_overrides():
    d = copy.deepcopy(DESIGN_EXAMPLE)
    d["model"] = {"name": "granite", "arch": "hf:/models/granite-350m"}
    s = RunSpec.from_dict(d)
    assert s.model.is_hf and s.model.hf_path == "/models/granite-350m"
    d2 = apply_overrides(DESIGN_EXAMPLE, ["training.steps=20", "eval.at_steps=[10,20]", "wandb.mode=disabled",
                                          "runtime.compile=false", "model.name=tiny2"])
    s2 = RunSpec.from_dict(d2)
    assert (s2.training.steps, s2.eval.at_steps, s2.wandb.mode, s2.runtime.compile, s2.model.name) == \
        (20, [10, 20], "disabled", False, "tiny2")
    with pytest.raises(SpecError):
        apply_overrides(DESIGN_EXAMPLE, ["training.steps"])


def test_example_spec_is_valid():
    RunSpec.from_dict(example_spec())


def test_resume_key_ignores_operational_sections_only():
    a = RunSpec.from_dict(copy.deepcopy(DESIGN_EXAMPLE))
    d = copy.deepcopy(DESIGN_EXAMPLE)
    d["wandb"]["mode"] = "disabled"
    d["checkpoint"]["every"] = 7
    d["runtime"]["compile"] = False
    b = RunSpec.from_dict(d)
    v = {"optimizer": 1, "trainer": 1}
    assert a.resume_key(v) == b.resume_key(v)
    d["seed"] = 43
    assert RunSpec.from_dict(d).resume_key(v) != a.resume_key(v)
    assert a.resume_key(v) != a.resume_key({"optimizer": 2, "trainer": 1})


def test_lr_schedule_warmup_constant_cooldown():
    steps, warm, cd = 100, 10, 0.2
    s = [lr_scale(i, steps, warm, cd) for i in range(steps)]
    assert s[0] == pytest.approx(0.1) and s[9] == 1.0
    assert all(v == 1.0 for v in s[10:80])
    assert s[80] == 1.0 and s[99] == pytest.approx(1 / 20)
    assert all(a > b for a, b in zip(s[80:], s[81:]))
    assert min(s) > 0
    assert [lr_scale(i, 5, 0, 0.0) for i in range(5)] == [1.0] * 5


def test_eval_plan_has_every_at_steps_and_last():
    s = RunSpec.from_dict(copy.deepcopy(DESIGN_EXAMPLE))
    e = eval_steps(s)
    assert {25, 50, 150, 250, 275, 300} <= set(e) and 0 not in e and max(e) == 300
    d = copy.deepcopy(DESIGN_EXAMPLE)
    d["eval"]["every"] = 0
    d["training"]["steps"] = 301
    assert eval_steps(RunSpec.from_dict(d)) == [50, 100, 150, 250, 300, 301]
