"""The workflow through the local Slurm cluster: the tiny phase as Slurm jobs, the same numbers as the
local executor, a preempted train job that resumes, and the sbatch arguments of a multi-node run.

Needs `scripts/slurm_local.sh up` (scripts/test.sh does it); skips with the reason otherwise.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time

import pytest

from tests.slurm_helpers import PARTITION, PROFILE, cluster_problem
from tests.workflow_helpers import SHORT_TINY, TWIN, copy_workflow, start_early, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PROFILE_ARGS = ["--profile", str(PROFILE)]
TINY = ["--config", "tiny=true", "--configfile", "short.yaml"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)


def workflow(tmp_path_factory, name, config=SHORT_TINY):
    wf = copy_workflow(tmp_path_factory.mktemp(name))
    write_config(wf / "short.yaml", config)
    return wf


def records(wf, key):
    run = wf / TWIN / "runs" / key
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv") as fh:
        # tokens/s is a measurement of the machine, not of the run
        history = [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in csv.DictReader(fh)]
    return metrics, history


@pytest.fixture(scope="module")
def slurm_phase1(tmp_path_factory, request):
    """Phase 1 through Slurm. The session's local run of the same phase (short_twin_phase1, which
    test_slurm_runs_equal_local_runs compares it with) is started meanwhile if nothing started it yet."""
    wf = workflow(tmp_path_factory, "slurm_phase1")
    with open(wf / "snakemake.out", "w") as log:  # a file, not a pipe: nobody reads it meanwhile
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "phase1", *TINY, *PROFILE_ARGS], cwd=wf,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        start_early(request, "short_twin_phase1_started", needed_by="short_twin_phase1")
        proc.wait(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, (wf / "snakemake.out").read_text()[-5000:]
    return wf


def test_tiny_phase_runs_as_slurm_jobs(slurm_phase1):
    wf = slurm_phase1
    assert (wf / TWIN / "ABLATION_RESULTS.md").exists()
    # every train job went through sbatch and left its Slurm log; the corpus and the analysis ran locally
    slurm_logs = wf / ".snakemake" / "slurm_logs"
    assert len(list((slurm_logs / "rule_train").rglob("*.log"))) == 8
    assert not (slurm_logs / "rule_stdlib_corpus").exists()
    assert not (slurm_logs / "rule_aggregate").exists()
    # Slurm gave each job the fake GPU (CUDA_VISIBLE_DEVICES set), and the trainer fell back to the CPU
    for metrics in (wf / TWIN / "runs").rglob("metrics.json"):
        assert json.loads(metrics.read_text())["device"] == "cpu"


def test_slurm_runs_equal_local_runs(slurm_phase1, short_twin_phase1):
    local = short_twin_phase1  # the same phase, config and runs through the local executor (tests/conftest.py)
    keys = ["tiny/muon/alpha0/seed42", "tiny/orthonoise/alpha0.001/seed123"]
    for key in keys:
        slurm_metrics, slurm_history = records(slurm_phase1, key)
        local_metrics, local_history = records(local, key)
        assert slurm_metrics["final_val_loss"] == local_metrics["final_val_loss"], key
        assert slurm_metrics["val_loss_at"] == local_metrics["val_loss_at"], key
        assert slurm_history == local_history, key


def running_job() -> str | None:
    out = subprocess.run(["squeue", "-h", "-p", PARTITION, "-t", "RUNNING", "-o", "%i %k"],
                         capture_output=True, text=True).stdout.split()
    return out[0] if out else None


def test_preempted_job_resumes_and_matches_an_uninterrupted_run(tmp_path_factory):
    config = {**SHORT_TINY, "models": {"tiny": {"steps": 500, "eval_at_steps": [100, 500]}},
              "training_defaults": {**SHORT_TINY["training_defaults"], "checkpoint_every": 25}}
    key = "tiny/orthonoise/alpha0.001/seed42"
    target = f"{TWIN}/runs/{key}/metrics.json"
    wf = workflow(tmp_path_factory, "preempt", config)
    # the uninterrupted twin, locally, trains meanwhile (its records do not depend on what runs beside it)
    twin = workflow(tmp_path_factory, "preempt_twin", config)
    with open(twin / "snakemake.out", "w") as twin_log:  # a file, not a pipe: nobody reads it meanwhile
        twin_proc = subprocess.Popen([sys.executable, "-m", "snakemake", target, *TINY, "--cores", "1"], cwd=twin,
                                     stdout=twin_log, stderr=subprocess.STDOUT, text=True)
    checkpoint = wf / TWIN / "checkpoints" / key / "latest.pt"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", target, *TINY, *PROFILE_ARGS],
                            cwd=wf, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, job = time.time() + 240, None
        while time.time() < deadline and not (checkpoint.exists() and (job := running_job())):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        assert job, "the train job never ran long enough to checkpoint"
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        out, _ = proc.communicate(timeout=600)
        twin_proc.wait(timeout=600)
    finally:
        for p in (proc, twin_proc):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == 0, out[-4000:]
    log = (wf / "logs" / "orthonoise-tiny" / "train" / f"{key}.log").read_text()
    assert "resuming from" in log, log[-3000:]
    # resubmitted by the submitting Snakemake as a new Slurm job, not retried inside the old one
    train_jobs = list((wf / ".snakemake" / "slurm_logs" / "rule_train").rglob("*.log"))
    assert len(train_jobs) == 2, out[-3000:]
    assert "Trying to restart job" in out, out[-3000:]
    assert twin_proc.returncode == 0, (twin / "snakemake.out").read_text()[-3000:]
    resumed_metrics, resumed_history = records(wf, key)
    twin_metrics, twin_history = records(twin, key)
    assert resumed_metrics["final_val_loss"] == twin_metrics["final_val_loss"]
    assert resumed_metrics["val_loss_at"] == twin_metrics["val_loss_at"]
    assert resumed_history == twin_history


def test_multi_node_run_asks_slurm_for_gpus_per_node(tmp_path_factory):
    """The sbatch call of a two-node run (tests/test_slurm_nodes.py runs one on the two-node cluster). On this
    one-node cluster Slurm accepts the job and leaves it pending (a partition of one node never starts it):
    the call is read from Snakemake's verbose log as soon as it is made, then the job is cancelled."""
    import re
    import signal

    config = {**SHORT_TINY, "models": {"tiny": {"global_batch": 64, "micro_batch": 16,
                                                "resources": {"gpus": 2, "nodes": 2}}}}
    wf = workflow(tmp_path_factory, "multinode", config)
    target = f"{TWIN}/runs/tiny/muon/alpha0/seed42/metrics.json"
    log = wf / "snakemake.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", target, *TINY, *PROFILE_ARGS, "--verbose",
                                 "--retries", "0"], cwd=wf, stdout=out, stderr=subprocess.STDOUT, text=True)
    call = None
    try:
        for _ in range(600):  # the dry planning and the data stage come first: minutes on a busy machine
            call = next((line for line in log.read_text().splitlines() if "sbatch" in line and "--nodes=2" in line),
                        None)
            if call or proc.poll() is not None:
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Snakemake cancels the jobs it submitted
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        name = re.search(r"--job-name[ =]'?([\w-]+)", call or "")
        if name:
            subprocess.run(["scancel", "--name", name[1]], capture_output=True, timeout=30)
    assert call, log.read_text()[-3000:]
    assert "--gpus=fake:4" in call
    assert "--gpus-per-node=fake:2 --ntasks-per-node=1" in call  # typed as --gpus (Slurm refuses a mix)
    assert "--ntasks-per-gpu" not in call
    assert "--signal=USR1@120" in call
