"""The train job's top process (trainer/launch_guard.py, issue 28.1): a signal to the job after the run's
records are complete exits 0 although torchrun exits 1; an incomplete run never exits 0."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.launch import GUARD, guarded, launcher, torchrun_executable
from tests.test_trainer_helpers import TRAIN, build_corpus, env, metrics, tiny_spec, write_spec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


# The real entry point with its last step (the process-group cleanup, after metrics.json and after the
# trainer's handlers know the run is done) held until a signal ends it: the window in which torchrun, told
# SIGTERM, exits 1 while its worker exits 0.
_HELD = """
import os, runpy, sys, time
from pathlib import Path
from trainer import distributed
def held_cleanup(info, _orig=distributed.cleanup):
    Path(os.environ["HELD_MARKER"]).write_text(str(os.getpid()))
    time.sleep(600)
    _orig(info)
distributed.cleanup = held_cleanup
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _job(tmp_path: Path, spec: dict, script: list[str]) -> tuple[str, Path, Path, Path]:
    """The train rule's command line for one run on one process (the launch prefix as the rule builds it)."""
    sp = write_spec(spec, tmp_path / "spec.json")
    out, ck, log = tmp_path / "out", tmp_path / "ckpt", tmp_path / "train.log"
    args = " ".join(shlex.quote(a) for a in [*script, str(TRAIN), "--spec-json", f"@{sp}", "--out-dir", str(out),
                                             "--checkpoint-dir", str(ck)])
    return f"exec {guarded(launcher(1, 1, torchrun_executable()))} {args} > {shlex.quote(str(log))} 2>&1", out, ck, log


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, log.read_text()
        assert time.time() - t0 < timeout, log.read_text()
        time.sleep(0.02)


def test_a_sigterm_to_the_job_after_the_records_are_complete_exits_zero(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"steps": 4}, eval={"every": 0, "at_steps": [4]}, fingerprint="f00d")
    held = tmp_path / "held.py"
    held.write_text(_HELD)
    cmd, out, ck, log = _job(tmp_path, spec, [str(held)])
    marker = tmp_path / "held"
    p = subprocess.Popen(["bash", "-c", cmd], env=env(HELD_MARKER=marker), cwd=tmp_path)
    try:
        _wait_for(marker, p, log)
        assert (out / "metrics.json").exists()
        os.kill(p.pid, signal.SIGTERM)  # the job's top process, as Snakemake or Slurm would
        p.wait(timeout=180)
    finally:
        p.kill()
    text = log.read_text()
    assert p.returncode == 0, text
    # torchrun itself failed (without the guard the job failed and Snakemake deleted the run)
    assert "launch guard: torchrun exited 1 (signals received: SIGTERM), but the run's records" in text, text
    assert metrics(out)["status"] == "ok" and metrics(out)["fingerprint"] == "f00d" and not ck.exists()


def test_a_preempted_run_under_the_guard_exits_non_zero(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"steps": 100_000, "warmup_steps": 0, "cooldown_frac": 0.0},
                     eval={"every": 0, "at_steps": [], "target_losses": []}, checkpoint={"every": 3, "keep": False})
    cmd, out, ck, log = _job(tmp_path, spec, [])
    p = subprocess.Popen(["bash", "-c", cmd], env=env(), cwd=tmp_path)
    try:
        _wait_for(ck / "latest.pt", p, log)
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=180)
    finally:
        p.kill()
    text = log.read_text()
    assert p.returncode not in (0, None), text
    assert "preemption signal SIGTERM" in text and (ck / "latest.pt").exists() and not (out / "metrics.json").exists()


# ----------------------------------------------------------------------- the decision, on plain commands

_WRITER = """
import json, os, sys
out, mode = sys.argv[sys.argv.index("--out-dir") + 1], sys.argv[1]
os.makedirs(out, exist_ok=True)
def put(name, text):
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
if mode != "none":
    put("spec.json", json.dumps({"fingerprint": "abc"}))
    put("history.csv", "step,train_loss\\n0,1.0\\n")
    m = {"status": "ok", "fingerprint": "other" if mode == "wrong-fingerprint" else "abc"}
    if mode == "running":
        m["status"] = "running"
    put("metrics.json", json.dumps(m))
sys.exit(int(sys.argv[2]))
"""


def _guard(tmp_path: Path, mode: str, rc: int, extra: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(GUARD), "--", sys.executable, "-c", _WRITER, mode, str(rc), *extra,
           "--out-dir", str(tmp_path / "out")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode, rc, want, says", [
    ("complete", 0, 0, ""),
    ("complete", 1, 0, "exited 1, but the run's records in"),  # torchrun's status after a late signal
    ("none", 0, 1, "exited 0, but the run's records are not complete: "),
    ("none", 75, 75, ""),
    ("running", 0, 1, "status 'running', not one of ok, diverged"),
    ("wrong-fingerprint", 1, 1, ""),
])
def test_the_exit_status_is_that_of_the_records(tmp_path, mode, rc, want, says):
    r = _guard(tmp_path, mode, rc)
    assert r.returncode == want, r.stderr
    assert says in r.stderr


def test_records_left_from_before_the_launch_or_of_another_spec_are_not_complete(tmp_path):
    assert _guard(tmp_path, "complete", 0).returncode == 0
    r = _guard(tmp_path, "none", 0)  # the complete records of an earlier launch, untouched by this one
    assert r.returncode == 1 and "metrics.json: not written by this launch" in r.stderr, r.stderr
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"fingerprint": "new"}))
    r = _guard(tmp_path, "complete", 1, ["--spec-json", f"@{given}"])
    assert r.returncode == 1, r.stderr
    r = _guard(tmp_path, "complete", 0, ["--spec-json", json.dumps({"fingerprint": "new"})])
    assert r.returncode == 1 and "but the command's spec has 'new'" in r.stderr, r.stderr


def test_a_command_without_out_dir_is_refused(tmp_path):
    r = subprocess.run([sys.executable, str(GUARD), "--", "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no --out-dir in the command" in r.stderr
