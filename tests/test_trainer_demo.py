"""The compressed data-parallel optimizer (optim.DeMo) in the real trainer: 2 processes under torchrun
(gloo, CPU), the per-rank residuals checkpointed, a preempted-and-resumed run equal to an uninterrupted
one, bytes recorded, and the capture option's files."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.test_trainer_helpers import build_corpus, env, history, metrics, run_train, tiny_spec, train_cmd, write_spec
from trainer.distributed import cuda_usable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(cuda_usable(), reason="bitwise resume is a CPU property")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


def demo_spec(corpus: Path, **sections) -> dict:
    opt = {"arm": "demo-muon-post", "class": "DeMo",
           "muon": {"lr": 0.02, "orthogonalize": "post", "topk": 0.05, "ns_precision": "fp32"},
           "adamw": {"lr": 0.003, "betas": [0.9, 0.95]}}
    return tiny_spec(corpus, optimizer=opt, **sections)


def test_compressed_run_resumed_equals_uninterrupted(corpus, tmp_path):
    spec = demo_spec(corpus, training={"steps": 40, "micro_batch": 2, "warmup_steps": 0},
                     eval={"every": 20, "at_steps": [20, 40]}, checkpoint={"every": 5, "keep": True},
                     capture={"steps": [2, 40], "what": ["grad", "momentum"]})
    base, out_b, ck_b = run_train(spec, tmp_path, "base", nproc=2)
    assert base.returncode == 0, base.stderr
    assert "parameters identical on all 2 ranks" in base.stderr
    h = history(out_b)
    sent, dense = int(h[1]["bytes_sent_per_step"]), int(h[1]["allreduce_bytes_per_step"])
    assert 0 < sent < dense / 3  # top-k 5% of the matrices, dense embeddings/head/norms
    m = metrics(out_b)
    assert m["diagnostics"]["bytes_sent_per_step"] == sent and m["diagnostics"]["allreduce_bytes_per_step"] == dense
    # captures: tensors only, hidden matrices only
    cap = torch.load(out_b / "captures" / "step2.pt", weights_only=True)
    assert sorted(cap) == sorted(f"{w}/{n}" for w in ("grad", "momentum") for n in _hidden(cap))
    assert all(v.dtype == torch.float32 and v.ndim == 2 for v in cap.values())
    assert (out_b / "captures" / "step40.pt").exists() and len(list((out_b / "captures").iterdir())) == 2

    sp = write_spec(spec, tmp_path / "k.json")
    out, ck = tmp_path / "k" / "out", tmp_path / "k" / "ckpt"
    p = subprocess.Popen(train_cmd(sp, out, ck, nproc=2), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (ck / "latest.pt").exists():
        assert p.poll() is None, "the run ended before its first checkpoint"
        assert time.time() - t0 < 120
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "preemption signal" in err, err
    saved = torch.load(ck / "latest.pt", weights_only=True)["step"]
    assert 5 <= saved < 40 and (ck / f"rank1.step{saved}.pt").exists()
    before = torch.load(ck / "previous.pt", weights_only=True)["step"]
    # the rank files of latest.pt's and previous.pt's steps are kept (a fallback needs its ranks' state too)
    assert {f.name for f in ck.glob("*.pt")} == {"latest.pt", "previous.pt", f"rank1.step{saved}.pt",
                                                 f"rank1.step{before}.pt"}

    r2 = subprocess.run(train_cmd(sp, out, ck, nproc=2), env=env(), cwd=tmp_path, capture_output=True, text=True,
                        timeout=180)
    assert r2.returncode == 0, r2.stderr
    assert f"at step {saved}" in r2.stderr and "resuming from" in r2.stderr
    drop = ("tokens_per_s",)
    assert history(out, drop) == history(out_b, drop)
    a, b = torch.load(ck / "latest.pt", weights_only=True), torch.load(ck_b / "latest.pt", weights_only=True)
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for rank_a, rank_b in ((a["optimizer"], b["optimizer"]),
                           (torch.load(ck / "rank1.step40.pt", weights_only=False)["optimizer"],
                            torch.load(ck_b / "rank1.step40.pt", weights_only=False)["optimizer"])):
        for sa, sb in zip(rank_a["muon"]["state"].values(), rank_b["muon"]["state"].values()):
            assert torch.equal(sa["delta"], sb["delta"])
    # the residuals are the ranks' own (they differ), so a resume that gave rank 1 rank 0's would differ
    d0 = next(iter(b["optimizer"]["muon"]["state"].values()))["delta"]
    d1 = next(iter(torch.load(ck_b / "rank1.step40.pt", weights_only=False)["optimizer"]["muon"]["state"].values()))
    assert not torch.equal(d0, d1["delta"])


def _hidden(cap: dict) -> list[str]:
    return sorted({k.split("/", 1)[1] for k in cap})


def test_resume_with_other_world_size_starts_fresh_and_grad_clip_is_refused(corpus, tmp_path):
    spec = demo_spec(corpus, training={"steps": 6, "micro_batch": 2}, eval={"every": 6, "at_steps": [6]},
                     checkpoint={"every": 0, "keep": True})
    r1, out1, ck = run_train(spec, tmp_path, "two", nproc=2)
    assert r1.returncode == 0, r1.stderr
    sp = write_spec(spec, tmp_path / "one.json")
    r = subprocess.run(train_cmd(sp, tmp_path / "one", ck), env=env(), cwd=tmp_path, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr  # one process: the resume key matches, the world size does not
    assert "resuming from" not in r.stderr and "rank-local optimizer state" in r.stderr and "starting fresh" in r.stderr
    bad = demo_spec(corpus, training={"steps": 6, "grad_clip": 1.0}, eval={"every": 6, "at_steps": [6]})
    r, _, _ = run_train(bad, tmp_path, "clip")
    assert r.returncode == 2 and "training.grad_clip = 1.0" in r.stderr and "'DeMo'" in r.stderr


def _tamper_residual(p: Path) -> None:
    """The same step and resume key, another residual: a rank file of another attempt at this step."""
    s = torch.load(p, weights_only=True)
    for st in s["optimizer"]["muon"]["state"].values():
        st["delta"].mul_(0.5)
    torch.save(s, p)


def test_a_bad_rank_file_falls_back_to_the_previous_pair_and_says_so(corpus, tmp_path):
    """Issues 18.6 and 28.10: latest.pt records the sha256 of each rank file it goes with; a rank file that is
    not that one (another attempt's file of the same step), or is missing, is never resumed: the run falls
    back to previous.pt and its rank files, and checkpoint_fallbacks says so. The rerun from there ends as the
    uninterrupted run did."""
    spec = demo_spec(corpus, training={"steps": 8, "micro_batch": 2, "warmup_steps": 0},
                     eval={"every": 0, "at_steps": [8]}, checkpoint={"every": 4, "keep": True})
    r1, out, ck = run_train(spec, tmp_path, "run", nproc=2)
    assert r1.returncode == 0, r1.stderr
    ref = history(out)
    for n, fault in enumerate((_tamper_residual, Path.unlink), start=1):
        fault(ck / "rank1.step8.pt")
        r2, out2, _ = run_train(spec, tmp_path, "run", nproc=2)
        assert r2.returncode == 0, r2.stderr
        assert "falling back to previous.pt" in r2.stderr and "rank1.step8.pt" in r2.stderr
        assert f"resuming from {ck / 'previous.pt'} at step 4" in r2.stderr
        evs = metrics(out2)["checkpoint_fallbacks"]
        assert len(evs) == n and evs[-1]["fallback"] == "previous.pt" and evs[-1]["resumed_at_step"] == 4
        assert "rank1.step8.pt" in evs[-1]["error"]
        assert history(out2) == ref
    assert set(torch.load(ck / "latest.pt", weights_only=True)["rank_files"]) == {"1"}
