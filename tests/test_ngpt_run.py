"""Real training runs of ngpt-tiny on the CPU through workflow/scripts/train.py (trainer.cli): Muon and
AdamW with projection every step and every 3 steps, the geodesic update with the gated residual, and a
cautious-decay spec without weight decay refused with exit code 2."""

from __future__ import annotations

import math

import pytest

from tests.test_trainer_helpers import build_corpus, history, metrics, run_train, tiny_spec

pytestmark = pytest.mark.slow

MUON = {"arm": "muon", "class": "Muon", "muon": {"lr": 0.02, "momentum": 0.95, "rank_every": 0},
        "adamw": {"lr": 0.01, "betas": [0.9, 0.95]}}
ADAMW = {"arm": "adamw", "class": "AdamW", "muon": {}, "adamw": {"lr": 0.01, "betas": [0.9, 0.95]}}
GEODESIC = {**MUON, "arm": "muon-geodesic", "muon": {**MUON["muon"], "update": "geodesic_scaled"}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


def ngpt_spec(corpus, optimizer, every, options=None):
    model = {"name": "ngpt-tiny", "arch": "ngpt-tiny"}
    if options:
        model["options"] = options
    return tiny_spec(corpus, model=model, optimizer=optimizer,
                     training={"steps": 12, "global_batch": 8, "micro_batch": 8, "seq_len": 32, "warmup_steps": 0,
                               "cooldown_frac": 0.0, "projection_every": every},
                     eval={"every": 6, "batches": 2, "at_steps": [6, 12], "target_losses": []})


def check_run(out, every):
    m = metrics(out)
    assert m["status"] == "ok" and m["steps_completed"] == 12, m
    h = history(out)
    v0 = float(h[0]["val_loss"])
    assert m["final_val_loss"] < v0 - 0.05  # it learns
    devs = {int(r["step"]): r["weight_norm_dev"] for r in h[1:]}
    assert {s for s, v in devs.items() if v} == {s for s in devs if s % every == 0}  # only before projections
    vals = [float(v) for v in devs.values() if v]
    assert all(math.isfinite(v) and v >= 0 for v in vals)
    assert m["diagnostics"]["weight_norm_dev_mean"] == pytest.approx(sum(vals) / len(vals))
    assert m["spec"]["training"]["projection_every"] == every
    return m, vals


def test_ngpt_tiny_trains_with_muon_and_adamw_and_lazy_projection(corpus, tmp_path):
    means = {}
    for name, opt in (("muon", MUON), ("adamw", ADAMW)):
        for every in (1, 3):
            r, out, _ = run_train(ngpt_spec(corpus, opt, every), tmp_path, f"{name}{every}")
            assert r.returncode == 0, r.stderr[-3000:]
            m, vals = check_run(out, every)
            means[name, every] = sum(vals) / len(vals)
            assert m["spec"]["model"]["options"] == {"residual": "reference"}
        assert "tensors to AdamW" in r.stderr or "to AdamW" in r.stderr
    # weights drift further from the sphere when projected less often
    assert means["muon", 3] > means["muon", 1] and means["adamw", 3] > means["adamw", 1]


def test_ngpt_tiny_geodesic_gated_and_a_refused_cautious_decay(corpus, tmp_path):
    r, out, _ = run_train(ngpt_spec(corpus, GEODESIC, 1, {"residual": "gated", "gate_alpha": 0.15}), tmp_path, "geo")
    assert r.returncode == 0, r.stderr[-3000:]
    m, vals = check_run(out, 1)
    assert m["spec"]["model"]["options"] == {"residual": "gated", "gate_alpha": 0.15}
    bad = {**MUON, "muon": {**MUON["muon"], "cautious_wd": True, "weight_decay": 0.0}}
    r, out, _ = run_train(ngpt_spec(corpus, bad, 1), tmp_path, "cwd0")
    assert r.returncode == 2 and "cautious_wd=True with weight_decay=0 would do nothing" in r.stderr, r.stderr[-2000:]
    assert not (out / "metrics.json").exists()


def test_ngpt_kill_and_resume_equals_uninterrupted(corpus, tmp_path):
    """NorMuon with the geodesic update and projection every 3 steps: a run stopped by SIGTERM at some step
    and resumed ends bitwise equal to one that never stopped (the projection cadence follows the step)."""
    import signal
    import subprocess

    import torch

    from tests.test_trainer_helpers import env, train_cmd, write_spec
    from tests.test_trainer_run import _wait_for
    from trainer.checkpoint import PREEMPTED_EXIT_CODE
    from trainer.distributed import cuda_usable

    if cuda_usable():
        pytest.skip("bitwise equality of the resumed run is checked on the CPU (CUDA kernels are not bitwise repeatable)")
    opt = {**MUON, "arm": "normuon-geodesic", "class": "NorMuon", "muon": {**MUON["muon"], "update": "geodesic"}}
    spec = ngpt_spec(corpus, opt, 3)
    spec["training"]["steps"] = 40
    spec["eval"] = {"every": 20, "batches": 2, "at_steps": [20, 40], "target_losses": []}
    spec["checkpoint"] = {"every": 4, "keep": True}
    base, out_b, ck_b = run_train(spec, tmp_path, "base")
    assert base.returncode == 0, base.stderr[-3000:]
    sp = write_spec(spec, tmp_path / "k.json")
    out, ck = tmp_path / "k" / "out", tmp_path / "k" / "ckpt"
    p = subprocess.Popen(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_for(ck / "latest.pt", p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    r2 = subprocess.run(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r2.returncode == 0 and "resuming from" in r2.stderr, r2.stderr[-3000:]
    assert history(out) == history(out_b)
    a, b = torch.load(ck / "latest.pt", weights_only=False), torch.load(ck_b / "latest.pt", weights_only=False)
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
