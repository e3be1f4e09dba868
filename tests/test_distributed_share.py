"""Several ranks on one GPU (TRAINER_RANKS_SHARE_GPU=1): where each local rank goes, the backend, the
GPU-hours counted once per GPU; and the error without the opt-in."""

from __future__ import annotations

import pytest
import torch

from trainer import distributed as d


@pytest.mark.parametrize("local_rank,local_world,n,expect", [
    (0, 1, 1, (0, 1)), (1, 2, 2, (1, 1)), (1, 2, 8, (1, 1)),   # one GPU per rank: unchanged
    (0, 2, 1, (0, 2)), (1, 2, 1, (0, 2)),                      # two ranks on one GPU
    (2, 4, 2, (0, 2)), (3, 4, 2, (1, 2)), (2, 3, 2, (0, 2)),   # round robin; at most ceil(world / n) per GPU
])
def test_placement(local_rank, local_world, n, expect):
    assert d.placement(local_rank, local_world, n, share=True) == expect


@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_ranks_than_gpus_needs_the_opt_in_on_every_rank(local_rank):
    # rank 0 too: it would otherwise start NCCL beside a rank that cannot
    with pytest.raises(d.DeviceError, match="2 processes on this node but only 1 CUDA device.*TRAINER_RANKS_SHARE_GPU=1"):
        d.placement(local_rank, 2, 1, share=False)
    assert d.placement(local_rank, 2, 2, share=False) == (local_rank, 1)


def test_share_env_values(monkeypatch):
    monkeypatch.delenv(d.SHARE_ENV, raising=False)
    assert d.share_requested() is False
    monkeypatch.setenv(d.SHARE_ENV, "1")
    assert d.share_requested() is True
    monkeypatch.setenv(d.SHARE_ENV, "0")
    assert d.share_requested() is False
    monkeypatch.setenv(d.SHARE_ENV, "yes")
    with pytest.raises(d.DeviceError, match=r"TRAINER_RANKS_SHARE_GPU='yes' is not allowed \(1"):
        d.share_requested()


def test_devices_held_defaults_to_one_per_rank():
    cpu = torch.device("cpu")
    assert d.DistInfo(rank=0, world_size=4, local_rank=0, device=cpu, backend="gloo").devices_held == 4
    assert d.DistInfo(rank=0, world_size=2, local_rank=0, device=cpu, backend="gloo", devices=1).devices_held == 1


@pytest.mark.gpu
@pytest.mark.skipif(not d.cuda_usable(), reason="needs CUDA")
def test_two_ranks_share_one_gpu(tmp_path):
    """A compressed data-parallel run (DeMo, 2 processes) on GPU 0 alone: gloo, ranks stay identical,
    bytes recorded, GPU-hours = wall time x 1 GPU."""
    from tests.test_trainer_helpers import build_corpus, metrics, run_train, tiny_spec

    corpus = build_corpus(tmp_path / "stdlib")
    opt = {"arm": "demo-muon-post", "class": "DeMo",
           "muon": {"lr": 0.02, "orthogonalize": "post", "topk": 0.05},
           "adamw": {"lr": 0.003, "betas": [0.9, 0.95]}}
    spec = tiny_spec(corpus, optimizer=opt, training={"steps": 10, "micro_batch": 4, "warmup_steps": 0,
                                                      "grad_clip": 0.0},
                     eval={"every": 5, "at_steps": [5, 10]})
    refused, _, _ = run_train(spec, tmp_path, "refused", nproc=2, CUDA_VISIBLE_DEVICES="0")
    assert refused.returncode != 0 and "TRAINER_RANKS_SHARE_GPU=1" in refused.stderr
    r, out, _ = run_train(spec, tmp_path, "shared", nproc=2, CUDA_VISIBLE_DEVICES="0", TRAINER_RANKS_SHARE_GPU="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(gloo)" in r.stderr and "parameters identical on all 2 ranks" in r.stderr
    m = metrics(out)
    assert m["status"] == "ok" and m["world_size"] == 2 and m["backend"] == "gloo" and m["device"] == "cuda"
    assert m["gpu_hours"] == pytest.approx(m["wall_time_s"] / 3600.0)
    assert 0 < m["diagnostics"]["bytes_sent_per_step"] < m["diagnostics"]["allreduce_bytes_per_step"]
