"""An external trainer through the real workflow: a twin phase trained by tests/external_trainer/quadratic.py
under torchrun, what an edit of its script re-runs, and a preempted run that Snakemake retries and that
resumes from the command's own checkpoint.

The study is tests/external_trainer/study.yaml without its built-in `gpt` phase (tests/test_workflow_run.py
runs the built-in trainer; here the built-in runs' fingerprints are checked by tests/test_external_trainer.py).
Its arm `heavy` names a second trainer, `quad_b` (the same script under another name), so that an edit of
one trainer's script shows which runs re-run: exactly that trainer's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import REPO, copy_workflow, job_counts, snakemake, write_config

pytestmark = pytest.mark.slow

TWIN = "results/quadratic-tiny"
SGD = {f"quad/sgd/default/seed{s}" for s in (1, 2)}
HEAVY = {f"quad/heavy/default/seed{s}" for s in (1, 2)}
PREEMPTED = "quad/heavy/default/seed1"
ARGS = ["--config", "study=study.yaml", "tiny=true"]


def stale_runs(output: str) -> set[str]:
    return set(re.findall(TWIN + r"/runs/(\S+?)/metrics\.json", "\n".join(
        line for line in output.splitlines() if line.strip().startswith("output:"))))


def mtimes(wf):
    return {p.relative_to(wf / TWIN / "runs").parent.as_posix(): p.stat().st_mtime_ns
            for p in (wf / TWIN / "runs").rglob("metrics.json")}


def _ancestor_named(pid: int, name: str) -> int:
    """The nearest ancestor of pid whose argv holds a program called `name` (the test's own processes)."""
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(os.path.basename(a.decode()) == name for a in argv[:2]):
            return pid
    raise AssertionError(f"no {name} above the trainer")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The twin phase, one of whose runs is preempted: at its step 10 the test sends SIGUSR1 to its torchrun
    (what Slurm signals), the command checkpoints and exits 75, and Snakemake's retry resumes it."""
    wf = copy_workflow(tmp_path_factory.mktemp("extwf"))
    here = wf / "tests" / "external_trainer"
    here.mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "external_trainer" / "quadratic.py", here / "quadratic.py")
    shutil.copy2(here / "quadratic.py", here / "quadratic_b.py")
    study = yaml.safe_load((REPO / "tests" / "external_trainer" / "study.yaml").read_text())
    del study["phases"]["gpt"]
    b = json.loads(json.dumps(study["trainers"]["quad"]))
    b["command"][1] = b["files"][0] = "tests/external_trainer/quadratic_b.py"
    study["trainers"]["quad_b"] = b
    study["arms"]["heavy"]["trainer"] = "quad_b"  # the arm's choice wins over its model's
    write_config(wf / "study.yaml", study)
    held = wf / "held.pid"
    env = {**os.environ, "EXT_TEST_HOLD_RUN": PREEMPTED, "EXT_TEST_HOLD_FILE": str(held)}
    cmd = [sys.executable, "-m", "snakemake", "phase1", *ARGS, "--cores", "2", "--retries", "1"]
    proc = subprocess.Popen(cmd, cwd=wf, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900  # a guard against a hang, not a measurement
        while not held.exists():
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the run never reached its hold step"
            time.sleep(0.05)
        # Slurm signals the job step's top process, torchrun, which passes SIGUSR1 on to its worker
        os.kill(_ancestor_named(int(held.read_text()), "torchrun"), signal.SIGUSR1)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    return wf


def test_the_phase_is_trained_by_the_external_command_and_judged_as_usual(done):
    runs = (done / TWIN / "phase1" / "runs.csv").read_text().splitlines()
    assert len(runs) == 5 and all(",ok," in r for r in runs[1:]), runs
    finals = {}
    for key in SGD | HEAVY:
        m = json.loads((done / TWIN / "runs" / key / "metrics.json").read_text())
        assert m["trainer"] == ("external:quad" if "sgd" in key else "external:quad_b")
        assert m["fingerprint"] == m["spec"]["fingerprint"] and m["steps_completed"] == 40
        assert m["world_size"] == 1  # from WORLD_SIZE, which torchrun set
        finals[key] = m["final_val_loss"]
    assert len(set(finals.values())) == 4  # each seed draws its own start and noise
    gates = json.loads((done / TWIN / "phase1" / "gates.json").read_text())
    assert {g["name"]: g["verdict"] for g in gates["gates"]}["no_crashes"] == "PASS"
    assert "loss_within_baseline" in (done / TWIN / "ABLATION_RESULTS.md").read_text()
    assert (done / TWIN / "phase1" / "design.json").exists()
    assert not (done / "results" / "data" / "stdlib").exists()  # no corpus is built for external runs
    log = (done / "logs" / "quadratic-tiny" / "train" / "quad" / "sgd" / "default" / "seed1.log").read_text()
    assert "external trainer quad:" in log and "quadratic.py --spec" in log


def test_editing_the_script_reruns_exactly_its_runs(done):
    script = done / "tests" / "external_trainer" / "quadratic.py"
    script.write_text(script.read_text() + "# a comment changes the content hash\n")
    dry = snakemake(done, "phase1", *ARGS, "-n")
    # (the other trainer's runs are not stale: its fingerprints are stable from one invocation to the next)
    assert stale_runs(dry.stdout) == SGD, dry.stdout[-3000:]
    assert job_counts(dry.stdout)["train"] == 2
    before = mtimes(done)
    real = snakemake(done, *[f"{TWIN}/runs/{k}/metrics.json" for k in sorted(SGD)], *ARGS, "--cores", "2",
                     timeout=900)
    assert real.returncode == 0, real.stderr[-3000:]
    after = mtimes(done)
    assert {k for k in before if after[k] != before[k]} == SGD
    # the phase now needs its tables again, and no training
    counts = job_counts(snakemake(done, "phase1", *ARGS, "-n").stdout)
    assert "train" not in counts and counts["aggregate"] == 1, counts


def test_the_preempted_run_resumed_from_its_checkpoint_with_an_uninterrupted_runs_records(done, tmp_path):
    run = done / TWIN / "runs" / PREEMPTED
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 10
    assert not (done / TWIN / "checkpoints" / PREEMPTED / "state.json").exists()
    # the same spec trained without interruption, by the same script, straight
    ref = tmp_path / "ref"
    ref.mkdir()
    r = subprocess.run([sys.executable, "tests/external_trainer/quadratic_b.py", "--spec", str(run / "spec.json"),
                        "--out-dir", str(ref), "--checkpoint-dir", str(tmp_path / "ck")], cwd=done,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (ref / "history.csv").read_text() == (run / "history.csv").read_text()
    straight = json.loads((ref / "metrics.json").read_text())
    assert straight["resumed_from_step"] is None
    assert {k: resumed[k] for k in straight if k != "resumed_from_step"} == \
        {k: v for k, v in straight.items() if k != "resumed_from_step"}
