"""Real runs of workflow/scripts/train.py in subprocesses: records, determinism, divergence, kill and
resume, a foreign checkpoint, 2-process gloo DDP, wandb offline, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_trainer_helpers import (build_corpus, comparable, env, history, metrics, run_train, tiny_spec,
                                        train_cmd, write_spec)
from trainer.checkpoint import PREEMPTED_EXIT_CODE
from trainer.data import write_shard
from trainer.distributed import cuda_usable
from trainer.records import HISTORY_COLUMNS

pytestmark = pytest.mark.slow

METRICS_KEYS = {"status", "diverged_step", "final_val_loss", "best_val_loss", "val_loss_at", "steps_to_loss",
                "steps_completed", "tokens_per_s", "wall_time_s", "gpu_hours", "gpu_share", "gpu_share_source",
                "world_size", "device", "backend", "diagnostics",
                "wandb", "spec", "fingerprint", "package_version", "git_commit", "versions", "record_errors",
                "checkpoint_fallbacks"}
DIAG_KEYS = {"eff_rank_mean", "eff_rank_min", "noise_fraction_mean", "eps_mean", "update_rms_mean", "grad_norm_mean"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


def assert_same_run(out: Path, ref: Path) -> None:
    """Bitwise equal on CPU; on CUDA (atomics in backward kernels) val losses within 1e-2 relative."""
    if not cuda_usable():
        assert comparable(metrics(out)) == comparable(metrics(ref))
        assert history(out) == history(ref)
        return
    m, r = metrics(out), metrics(ref)
    assert m["steps_completed"] == r["steps_completed"] and m["val_loss_at"].keys() == r["val_loss_at"].keys()
    for k, v in r["val_loss_at"].items():
        assert m["val_loss_at"][k] == pytest.approx(v, rel=1e-2)


def test_tiny_run_records_and_bitwise_repeatability(corpus, tmp_path):
    spec = tiny_spec(corpus)
    # a Slurm node that advertises a GPU without CUDA: the run falls back to the CPU
    r1, out1, ck1 = run_train(spec, tmp_path, "a", CUDA_VISIBLE_DEVICES="0")
    assert r1.returncode == 0, r1.stderr
    assert sorted(os.listdir(out1)) == ["history.csv", "metrics.json", "spec.json"]
    assert not ck1.exists()  # checkpoints removed after success
    m = metrics(out1)
    assert set(m) == METRICS_KEYS
    assert m["status"] == "ok" and m["diverged_step"] is None and m["steps_completed"] == 30
    if not cuda_usable():
        assert m["device"] == "cpu" and m["gpu_hours"] == 0.0
        assert m["gpu_share"] is None and m["gpu_share_source"] == "cpu: no GPU"
    assert m["world_size"] == 1 and m["backend"] is None  # one process: no group
    assert set(m["val_loss_at"]) == {"5", "10", "20", "30"}
    assert m["final_val_loss"] == m["val_loss_at"]["30"] and m["best_val_loss"] <= m["final_val_loss"]
    assert set(m["steps_to_loss"]) == {"4.5", "3.5"} and m["steps_to_loss"]["4.5"] in (5, 10, 20, 30)
    assert set(m["diagnostics"]) == DIAG_KEYS and m["diagnostics"]["eff_rank_mean"] > 0
    assert m["diagnostics"]["noise_fraction_mean"] == 0.0
    assert m["wandb"] == {"mode": "disabled", "id": None, "dir": None}
    assert m["spec"] == json.loads((out1 / "spec.json").read_text()) and m["fingerprint"] == m["spec"]["fingerprint"]
    assert m["versions"]["torch"] == torch.__version__ and m["tokens_per_s"] > 0 and m["package_version"]
    hist = history(out1, drop=())
    assert list(hist[0]) == HISTORY_COLUMNS
    assert [int(h["step"]) for h in hist] == list(range(0, 31))
    assert {int(h["step"]) for h in hist if h["val_loss"]} == {0, 5, 10, 20, 30}
    # rank_every 5: measured at steps 1, 6, ...; each measurement reported (and acted on) 5 steps later
    assert not hist[1]["eff_rank_mean"] and not hist[2]["eff_rank_mean"] and hist[6]["eff_rank_mean"]
    assert "step/s" in r1.stderr and "tok_s=" in r1.stderr  # the tqdm progress bar
    # the same seed again: bit for bit the same numbers (on CPU; CUDA kernels are not bitwise repeatable)
    r2, out2, _ = run_train(spec, tmp_path, "b")
    assert r2.returncode == 0, r2.stderr
    assert_same_run(out2, out1)


def test_divergence_is_recorded_and_exits_zero(corpus, tmp_path):
    # on token shards (the .bin path), with absurd learning rates
    toks = np.frombuffer((corpus / "train.bin").read_bytes()[1024:1024 + 2 * 200_000], dtype="<u2")
    write_shard(tmp_path / "shard_train_000.bin", toks[:150_000])
    write_shard(tmp_path / "shard_train_001.bin", toks[150_000:190_000])
    write_shard(tmp_path / "shard_val_000.bin", toks[190_000:])
    spec = tiny_spec(corpus, data={"kind": "bin", "train": str(tmp_path / "shard_train_*.bin"),
                                   "val": str(tmp_path / "shard_val_*.bin")},
                     optimizer={"arm": "muon", "class": "Muon", "muon": {"lr": 1.0e4}, "adamw": {"lr": 1.0e3}},
                     training={"warmup_steps": 0}, checkpoint={"every": 2, "keep": False})
    del spec["data"]["path"]
    r, out, ck = run_train(spec, tmp_path, "div")
    assert r.returncode == 0, r.stderr
    m = metrics(out)
    assert m["status"] == "diverged" and 1 <= m["diverged_step"] < 30
    assert m["steps_completed"] == m["diverged_step"] and m["final_val_loss"] is None
    assert all(int(k) < m["diverged_step"] for k in m["val_loss_at"])
    assert "diverged at step" in r.stderr
    assert len(history(out)) == m["diverged_step"] + 1
    assert not ck.exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() - t0 < timeout
        time.sleep(0.005)


def test_kill_and_resume_equals_uninterrupted(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"steps": 120}, eval={"every": 40, "at_steps": [40, 80, 120]},
                     checkpoint={"every": 15, "keep": True})
    base, out_b, ck_b = run_train(spec, tmp_path, "base")
    assert base.returncode == 0, base.stderr

    sp = write_spec(spec, tmp_path / "k.json")
    out, ck = tmp_path / "k" / "out", tmp_path / "k" / "ckpt"
    p = subprocess.Popen(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _wait_for(ck / "latest.pt", p)
    p.send_signal(signal.SIGTERM)
    _, err1 = p.communicate(timeout=120)
    assert p.returncode == PREEMPTED_EXIT_CODE, err1
    assert "preemption signal SIGTERM" in err1
    assert not (out / "metrics.json").exists()
    saved = torch.load(ck / "latest.pt", weights_only=False)
    assert 15 <= saved["step"] < 120

    r2 = subprocess.run(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r2.returncode == 0, r2.stderr
    assert f"resuming from {ck / 'latest.pt'} at step {saved['step']}" in r2.stderr
    assert_same_run(out, out_b)
    a, b = torch.load(ck / "latest.pt", weights_only=False), torch.load(ck_b / "latest.pt", weights_only=False)
    assert a["step"] == b["step"] == 120
    if cuda_usable():
        return
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["muon"]["state"].values(), b["optimizer"]["muon"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


def test_checkpoint_of_another_spec_is_not_resumed(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"steps": 12}, eval={"every": 6, "at_steps": [6, 12]},
                     checkpoint={"every": 0, "keep": True})
    r1, out1, ck = run_train(spec, tmp_path, "one")
    assert r1.returncode == 0, r1.stderr
    assert (ck / "latest.pt").exists()  # kept
    spec2 = dict(spec, seed=2)
    sp = write_spec(spec2, tmp_path / "two.json")
    out2 = tmp_path / "two"
    r2 = subprocess.run(train_cmd(sp, out2, ck), env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r2.returncode == 0, r2.stderr
    assert "not resuming; starting fresh" in r2.stderr and "resuming from" not in r2.stderr
    m = metrics(out2)
    assert m["steps_completed"] == 12 and len(history(out2)) == 13
    assert m["final_val_loss"] != metrics(out1)["final_val_loss"]


def test_two_process_gloo_matches_one_process(corpus, tmp_path):
    # fp32 orthogonalization keeps the two trajectories within float tolerance of each other
    spec = tiny_spec(corpus, training={"steps": 12, "micro_batch": 2},
                     optimizer={"arm": "muon", "class": "Muon", "muon": {"lr": 0.02, "ns_precision": "fp32"}},
                     eval={"every": 6, "at_steps": [6, 12]}, checkpoint={"every": 0, "keep": True})
    one, out1, ck1 = run_train(spec, tmp_path, "one")
    assert one.returncode == 0, one.stderr
    two, out2, ck2 = run_train(spec, tmp_path, "two", nproc=2)
    assert two.returncode == 0, two.stderr + two.stdout
    assert "parameters identical on all 2 ranks" in two.stderr
    assert "1 micro-batch(es) of 2 per rank" in two.stderr or "2 micro-batch(es) of 2 per rank" in two.stderr
    m1, m2 = metrics(out1), metrics(out2)
    assert m2["world_size"] == 2 and m2["status"] == "ok" and m2["backend"] == ("nccl" if cuda_usable() else "gloo")
    assert m2["final_val_loss"] == pytest.approx(m1["final_val_loss"], rel=1e-4)
    for k, v in m1["val_loss_at"].items():
        assert m2["val_loss_at"][k] == pytest.approx(v, rel=1e-4)
    h1, h2 = history(out1), history(out2)
    for a, b in zip(h1[1:], h2[1:]):
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=1e-4)
    p1 = torch.load(ck1 / "latest.pt", weights_only=False)["model"]
    p2 = torch.load(ck2 / "latest.pt", weights_only=False)["model"]
    for k in p1:
        torch.testing.assert_close(p2[k], p1[k], rtol=1e-3, atol=1e-4)


def test_wandb_offline_records_id_and_keeps_secrets_out(corpus, tmp_path):
    pytest.importorskip("wandb")
    secret = "local-0123456789abcdef0123456789abcdef01234567"
    spec = tiny_spec(corpus, training={"steps": 6}, eval={"every": 3, "at_steps": [3, 6]},
                     wandb={"mode": "offline", "project": "muon-ablations-test", "group": "tests",
                            "tags": ["tiny", "muon", "seed1"], "dir": str(tmp_path / "wandb")})
    r, out, _ = run_train(spec, tmp_path, "wb", timeout=240, WANDB_API_KEY=secret, WANDB_MODE="offline")
    assert r.returncode == 0, r.stderr
    w = metrics(out)["wandb"]
    assert w["mode"] == "offline" and w["id"] and len(w["id"]) == 8
    run_dir = (tmp_path / w["dir"]) if not os.path.isabs(w["dir"]) else Path(w["dir"])
    assert run_dir.is_dir() and run_dir.name.startswith("offline-run-") and run_dir.name.endswith(w["id"])
    assert any(run_dir.glob("*.wandb"))
    assert secret not in r.stdout + r.stderr
    for root in (out, tmp_path / "wandb"):
        for f in root.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f


def test_cli_errors_are_clear(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"micro_batch": 3})
    r, out, _ = run_train(spec, tmp_path, "bad")
    assert r.returncode == 2
    assert "training.micro_batch = 3" in r.stderr and "divisor of training.global_batch (8)" in r.stderr
    assert not out.exists()
    # a 2-process run whose micro-batches cannot fill the global batch
    spec = tiny_spec(corpus, training={"global_batch": 6, "micro_batch": 2})
    sp = write_spec(spec, tmp_path / "odd.json")
    r = subprocess.run(train_cmd(sp, tmp_path / "o", tmp_path / "oc", nproc=2), env=env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode != 0 and "micro_batch x world size (2 x 2) must divide" in r.stderr


def test_torchrun_forwards_sigusr1_and_the_restart_resumes(corpus, tmp_path):
    """Slurm's time-limit signal through torchrun (told to forward SIGUSR1), the spec given inline as the
    train rule does; the retried job resumes."""
    spec = tiny_spec(corpus, training={"steps": 80, "micro_batch": 2}, eval={"every": 40, "at_steps": [40, 80]},
                     checkpoint={"every": 10, "keep": False})
    out, ck = tmp_path / "out", tmp_path / "ckpt"
    cmd = [c for c in train_cmd(tmp_path / "unused.json", out, ck, nproc=2)]
    i = cmd.index("--spec")
    cmd[i:i + 2] = ["--spec-json", json.dumps(spec)]
    # torchrun forwards only the signals it is told to (default SIGTERM,SIGINT,SIGHUP,SIGQUIT); SIGUSR1
    # would kill it, leaving the workers orphaned
    e = env(PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    p = subprocess.Popen(cmd, env=e, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(ck / "latest.pt", p)
    p.send_signal(signal.SIGUSR1)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0, err
    assert "preemption signal SIGUSR1" in err and not (out / "metrics.json").exists()
    step = torch.load(ck / "latest.pt", weights_only=False)["step"]
    r = subprocess.run(cmd, env=e, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"at step {step} (world size then 2, now 2)" in r.stderr
    m = metrics(out)
    assert m["status"] == "ok" and m["steps_completed"] == 80 and m["world_size"] == 2
    assert len(history(out)) == 81 and not ck.exists()


def test_missing_wandb_disables_only_when_the_spec_did_not_ask(corpus, tmp_path, monkeypatch):
    """The GPU image has no wandb: a spec that leaves wandb.mode out trains with wandb disabled; a spec
    that asks for offline fails at once with a clear message."""
    from trainer.loop import run
    from trainer.spec import RunSpec
    from trainer.tracking import TrackingError

    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # makes `import wandb` fail
    monkeypatch.chdir(tmp_path)
    spec = tiny_spec(corpus, training={"steps": 3, "warmup_steps": 0}, eval={"every": 3, "at_steps": [3]},
                     wandb={"project": "p"})
    del spec["wandb"]["mode"]
    assert run(RunSpec.from_dict(spec), tmp_path / "o", tmp_path / "c") == 0
    assert metrics(tmp_path / "o")["wandb"] == {"mode": "disabled", "id": None, "dir": None}
    spec["wandb"]["mode"] = "offline"
    with pytest.raises(TrackingError, match="wandb.mode is 'offline' but the wandb package is not installed"):
        run(RunSpec.from_dict(spec), tmp_path / "o2", tmp_path / "c2")
    assert not (tmp_path / "o2").exists()


# The real entry point, with the process-group cleanup (the last thing a run does, after metrics.json)
# held open until the test's signal arrives: the window in which a SIGTERM used to exit -15.
_SIGNAL_AFTER_RECORDS = """
import runpy, sys, time
from trainer import distributed
def held_cleanup(info, _orig=distributed.cleanup):
    print("records complete", flush=True)
    time.sleep(120)
    _orig(info)
distributed.cleanup = held_cleanup
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_signal_after_the_records_are_complete_exits_zero(corpus, tmp_path):
    """Issue 28.1: Snakemake deletes the outputs of a job that exits non-zero, so a SIGTERM after metrics.json
    must not turn a complete run into a failed one."""
    spec = tiny_spec(corpus, training={"steps": 4}, eval={"every": 0, "at_steps": [4]})
    sp = write_spec(spec, tmp_path / "late.json")
    out, ck = tmp_path / "late" / "out", tmp_path / "late" / "ckpt"
    cmd = train_cmd(sp, out, ck)
    p = subprocess.Popen([cmd[0], "-c", _SIGNAL_AFTER_RECORDS, *cmd[1:]], env=env(), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "records complete"
        assert (out / "metrics.json").exists()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert metrics(out)["status"] == "ok" and not ck.exists()
