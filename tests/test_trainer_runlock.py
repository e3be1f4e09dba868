"""One writer per run (a second trainer is refused, naming the holder), workers die with torchrun, and
SIGINT saves a checkpoint like SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_trainer_helpers import (build_corpus, comparable, env, history, metrics, tiny_spec, train_cmd,
                                        write_spec)
from trainer import checkpoint as ckpt
from trainer.distributed import cuda_usable
from trainer.runlock import LOCK_NAME, RunLock, RunLockError


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    d = tmp_path / "ckpt"
    with RunLock(d):
        text = (d / LOCK_NAME).read_text()
        assert text.startswith(f"PID {os.getpid()} on host {socket.gethostname()} since ")
        with pytest.raises(RunLockError, match=f"being written by another trainer: PID {os.getpid()} on host "
                                               f"{socket.gethostname()}"):
            RunLock(d).acquire()  # another open file description: flock refuses it even in one process
    assert not d.exists()  # released: lock file and the empty directory gone
    with RunLock(d):  # and it can be taken again
        pass


# --------------------------------------------------------------------------- real trainer processes

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


def _long_spec(corpus):
    return tiny_spec(corpus, training={"steps": 100_000, "warmup_steps": 0, "cooldown_frac": 0.0},
                     eval={"every": 0, "at_steps": [], "target_losses": []}, checkpoint={"every": 3, "keep": False})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() - t0 < timeout
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_second_trainer_of_a_run_is_refused_and_sigint_checkpoints(corpus, tmp_path):
    sp = write_spec(_long_spec(corpus), tmp_path / "s.json")
    out, ck = tmp_path / "out", tmp_path / "ckpt"
    a = subprocess.Popen(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ck / "latest.pt", a)
        out_b = tmp_path / "out_b"  # even into another output directory: the checkpoint dir is the run's
        b = subprocess.run(train_cmd(sp, out_b, ck), env=env(), cwd=tmp_path, capture_output=True, text=True,
                           timeout=180)
        assert b.returncode == 2, b.stderr
        assert f"being written by another trainer: PID {a.pid} on host {socket.gethostname()}" in b.stderr
        assert not out_b.exists() and a.poll() is None
        # Ctrl-C: the step in hand finishes, a checkpoint is saved, exit 75 like SIGTERM
        a.send_signal(signal.SIGINT)
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == ckpt.PREEMPTED_EXIT_CODE, err
    assert "preemption signal SIGINT" in err and "Traceback" not in err
    step = ckpt.read(ck / "latest.pt")["step"]
    assert step >= 3 and not (ck / LOCK_NAME).exists()
    # the lock is free again: a run of fewer steps (another resume key) takes it and finishes
    spec2 = tiny_spec(corpus, training={"steps": 3}, eval={"every": 0, "at_steps": [3]})
    r = subprocess.run(train_cmd(write_spec(spec2, tmp_path / "s2.json"), out, ck), env=env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert metrics(out)["steps_completed"] == 3 and not ck.exists()


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkill_of_torchrun_ends_its_worker_and_the_rerun_resumes(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"steps": 60}, eval={"every": 30, "at_steps": [30, 60]},
                     checkpoint={"every": 3, "keep": False})
    sp = write_spec(spec, tmp_path / "s.json")
    out, ck = tmp_path / "out", tmp_path / "ckpt"
    tr = subprocess.Popen(train_cmd(sp, out, ck, nproc=1), env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    workers = []
    try:
        _wait_for(ck / "latest.pt", tr)
        workers = _children(tr.pid)
        assert len(workers) == 1
        os.kill(tr.pid, signal.SIGKILL)
        tr.wait(timeout=30)
        t0 = time.time()
        while _alive(workers[0]) and time.time() - t0 < 20:
            time.sleep(0.1)
        assert not _alive(workers[0]), "the worker outlived torchrun"
    finally:
        for pid in workers:  # never leave an orphan training behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if tr.poll() is None:
            tr.kill()
    assert not (out / "metrics.json").exists()
    step = ckpt.read(ck / "latest.pt")["step"]
    # the rerun (lock free again) resumes to the numbers of an uninterrupted run
    r = subprocess.run(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert f"resuming from {ck / 'latest.pt'} at step {step}" in r.stderr
    ref_out = tmp_path / "ref"
    r0 = subprocess.run(train_cmd(sp, ref_out, tmp_path / "ref_ck"), env=env(), cwd=tmp_path, capture_output=True,
                        text=True, timeout=180)
    assert r0.returncode == 0, r0.stderr
    if not cuda_usable():
        assert comparable(metrics(out)) == comparable(metrics(ref_out))
        assert history(out) == history(ref_out)


def test_a_spec_json_deleted_while_the_run_trains_is_written_again(corpus, tmp_path):
    """Issue 28.4: a second Snakemake asked for the same run deletes its outputs before its own trainer is
    refused by the run lock, spec.json (written at the start) among them; the first run must still end with
    all three records."""
    spec = tiny_spec(corpus, training={"steps": 24}, eval={"every": 0, "at_steps": [24]},
                     checkpoint={"every": 2, "keep": False})
    sp = write_spec(spec, tmp_path / "run.json")
    out, ck = tmp_path / "run" / "out", tmp_path / "run" / "ckpt"
    p = subprocess.Popen(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (ck / "latest.pt").exists():  # training has begun, spec.json is written
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.01)
        (out / "spec.json").unlink()
        _, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert json.loads((out / "spec.json").read_text()) == metrics(out)["spec"]
