"""GPU-hours by share (trainer/gpu_share.py): a run's fraction of the GPU it held, sampled through NVML while it
trains. The arithmetic on CPU; on a GPU, a run beside another process that holds the same GPU counts half of it,
a run alone all of it, two ranks of one run on one GPU (TRAINER_RANKS_SHARE_GPU=1) all of it once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trainer import gpu_share as gs
from trainer.distributed import cuda_usable


def test_share_of_counts_this_runs_processes_among_those_listed():
    assert gs.share_of(1, 1) == 1.0
    assert gs.share_of(1, 2) == 0.5 and gs.share_of(1, 4) == 0.25
    assert gs.share_of(2, 2) == 1.0  # two ranks of one run on one GPU: the run has all of it
    # a listing that misses this run's own processes (a container that hides them) is no measurement
    assert gs.share_of(1, 0) is None and gs.share_of(2, 1) is None and gs.share_of(1, None) is None


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_meter_weights_each_sample_by_the_time_until_the_next():
    clock, listed = Clock(), iter([1, 2, 4, None, 2])
    m = gs.ShareMeter(1, lambda: next(listed), clock=clock, every_s=10.0)
    m.maybe_sample()          # t=100: alone (1.0) until 110
    clock.t = 105.0
    m.maybe_sample()          # not yet due: no sample
    clock.t = 110.0
    m.maybe_sample()          # 0.5 for 20 s
    clock.t = 130.0
    m.maybe_sample()          # 0.25 for 10 s
    clock.t = 140.0
    m.maybe_sample()          # unreadable: 140..150 not measured
    clock.t = 150.0
    m.maybe_sample()          # 0.5 for 10 s
    clock.t = 160.0
    assert m.samples == 4 and m.unmeasured == 1 and m.max_listed == 4
    # (1.0 x 10 + 0.5 x 20 + 0.25 x 10 + 0.5 x 10) / 50 measured seconds
    assert m.fraction() == pytest.approx(27.5 / 50)


def test_meter_that_never_measures_says_why():
    m = gs.ShareMeter(1, lambda: 0, clock=Clock())
    m.sample()
    assert m.fraction() is None and "fewer than this run's 1" in m.why


def test_record_on_cpu_is_no_share():
    import torch

    from trainer.distributed import DistInfo
    from trainer.loop import share_record

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    assert share_record(None, 12.0, info) == {"gpu_share": None, "gpu_share_source": "cpu: no GPU"}


def test_record_counts_the_unmeasured_part_as_whole_gpus():
    import torch

    from trainer.distributed import DistInfo
    from trainer.loop import share_record

    info = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cuda", 0), backend="nccl")
    # 2 GPUs x 100 s; the first 50 s came from a checkpoint written before shares were measured (whole)
    share = {"gpu_s_by_share": 100.0 + 0.5 * 100.0, "gpu_s_unmeasured": 100.0, "samples": 6, "devices_held": 2,
             "max_listed": 2, "why": ""}
    rec = share_record(share, 100.0, info)
    assert rec["gpu_share"] == pytest.approx(0.75) and "50% of the GPU time not measured" in rec["gpu_share_source"]
    none = share_record({**share, "samples": 0, "why": "NVML unavailable (OSError: x)"}, 100.0, info)
    assert none["gpu_share"] is None and none["gpu_share_source"].startswith("not measured: NVML unavailable")


def test_sampling_interval_from_the_environment_is_checked(monkeypatch):
    import torch

    monkeypatch.setenv(gs.EVERY_ENV, "soon")
    with pytest.raises(ValueError, match=r"TRAINER_GPU_SHARE_EVERY_S='soon' is not allowed \(seconds"):
        gs.device_meter(torch.device("cuda", 0), 1)
    assert gs.device_meter(torch.device("cpu"), 1) is None  # CPU: nothing to sample


HOLD = ("import sys, torch; x = torch.ones(1, device='cuda'); torch.cuda.synchronize(); print('ready', flush=True); "
        "sys.stdin.read()")


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_usable(), reason="needs CUDA")
def test_a_run_beside_another_process_on_its_gpu_counts_half(tmp_path):
    from tests.test_trainer_helpers import build_corpus, metrics, run_train, tiny_spec

    corpus = build_corpus(tmp_path / "stdlib")
    spec = tiny_spec(corpus, training={"steps": 150}, eval={"every": 50, "at_steps": [50, 150]},
                     runtime={"device": "cuda", "compile": False, "dtype": "auto"})
    fast = {"CUDA_VISIBLE_DEVICES": "0", gs.EVERY_ENV: "0.2"}
    # processes already holding a context on the device (this pytest process, after earlier CUDA tests in it)
    # share it with the run too: count them (counting may make this process's context; it stays for the run)
    others = gs.NvmlCounter(0).count()
    assert others is not None
    alone, out_alone, _ = run_train(spec, tmp_path, "alone", **fast)
    assert alone.returncode == 0, alone.stderr[-3000:]
    m = metrics(out_alone)
    # within 1e-9: the mean of equal shares over the sampled seconds, then over the wall time (float rounding)
    assert m["gpu_share"] == pytest.approx(1 / (1 + others), abs=1e-9), m["gpu_share_source"]
    assert "NVML compute processes" in m["gpu_share_source"]
    # another process holds a CUDA context on the same GPU for the whole run: every sample lists two
    hold = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    try:
        assert hold.stdout.readline().strip() == "ready"
        beside, out_beside, _ = run_train(spec, tmp_path, "beside", **fast)
    finally:
        hold.stdin.close()
        hold.wait(timeout=60)
    assert beside.returncode == 0, beside.stderr[-3000:]
    b = metrics(out_beside)
    # each sample is 1 of 2 (+ the others): alone 1.0 and beside 0.5 when the device was free
    assert b["gpu_share"] == pytest.approx(1 / (2 + others), abs=1e-9), b["gpu_share_source"]
    assert b["gpu_hours"] == pytest.approx(b["wall_time_s"] / 3600.0)  # held, unshared: as before
    # two ranks of one run on the GPU: both are the run's own, so it had the whole GPU once
    two, out_two, _ = run_train(spec, tmp_path, "two", nproc=2, TRAINER_RANKS_SHARE_GPU="1", **fast)
    assert two.returncode == 0, two.stderr[-3000:]
    t = metrics(out_two)
    assert t["gpu_share"] == pytest.approx(1.0, abs=1e-9), t["gpu_share_source"]
    assert t["gpu_hours"] == pytest.approx(t["wall_time_s"] / 3600.0)

