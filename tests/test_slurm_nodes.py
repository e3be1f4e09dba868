"""Runs across two Slurm nodes for real (scripts/slurm_nodes.sh: two slurmd in network namespaces, each with
its own hostname and address): DisTrO's tiny twin with `resources: {gpus: 2, nodes: 2}` through
`snakemake --profile slurm-ci`, i.e. one torchrun per node, gloo on the CPU, world size 4.

- the two-node records equal the same runs on one node with 4 processes (the local executor), bitwise: the
  4 ranks' reductions (gloo all-reduce of DDP's buckets, DeMo's all-gathers) are the same operations in
  the same order whichever host a rank sits on; only the transport differs (veth instead of loopback);
- a DeMo run across both nodes, preempted with `scancel --signal=USR1` after a checkpoint, is resubmitted
  by Snakemake and resumes with every rank's own state (ranks 2 and 3 wrote theirs on the other host);
- a node that dies mid-run (its slurmd and everything on it SIGKILLed) fails the job; Snakemake resubmits
  it, the new job runs once the node is back, and resumes from the last checkpoint.

One one-node reference of both arms serves every comparison (module fixture). Needs the two-node
cluster up (scripts/test.sh brings it up as root); skips with the reason otherwise.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm_helpers import PARTITION, PROFILE, ROOT
from tests.workflow_helpers import copy_workflow, snakemake, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SCRIPT = ROOT / "scripts" / "slurm_nodes.sh"
NODES_CONF = Path(os.environ.get("SLURM_NODES_DIR", "/var/lib/muon-slurm-nodes")) / "etc" / "slurm.conf"
NODES = ("mnode1", "mnode2")
STUDY = "results/distro-tiny"
MUON, DEMO = "tiny-dp2/muon-ddp/default/seed42", "tiny-dp2/demo/default/seed42"
ARGS = ["--config", "study=distro", "tiny=true", "--configfile", "short.yaml"]


def overlay(gpus: int, nodes: int) -> dict:
    """16 steps, a checkpoint every 4: long enough to signal a job between two checkpoints."""
    return {
        "wandb": {"mode": "disabled"},
        "training_defaults": {"eval_every": 8, "eval_at_steps": [8, 16], "checkpoint_every": 4,
                              "warmup_steps": 2, "eval_batches": 2},
        "models": {"tiny-dp2": {"steps": 16, "global_batch": 16, "micro_batch": 4,
                                "resources": {"gpus": gpus, "nodes": nodes, "cpus_per_gpu": 1,
                                              "mem_mb_per_gpu": 1000, "runtime_min": 10}}},
        "arms": {"muon-ddp": {"capture": {"steps": [16]}}},
    }


def nodes_problem() -> str | None:
    """Why the two-node cluster cannot be used (the skip reason), or None when both nodes are up."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: Slurm is not installed (scripts/slurm_local.sh install)"
    if not NODES_CONF.exists():
        return f"the two-node cluster is not up (scripts/slurm_nodes.sh up): no {NODES_CONF}"
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-p", PARTITION, "-o", "%n %t"], capture_output=True, text=True,
                             timeout=5, env={**os.environ, "SLURM_CONF": str(NODES_CONF)})
    except subprocess.TimeoutExpired:
        return "sinfo got no answer in 5 s: the two-node cluster is not up (scripts/slurm_nodes.sh up)"
    states = dict(line.split() for line in out.stdout.splitlines() if len(line.split()) == 2)
    down = [n for n in NODES if states.get(n, "").rstrip("*~#") not in ("idle", "mix", "alloc")]
    if out.returncode != 0 or down:
        return f"the two-node cluster is not up (scripts/slurm_nodes.sh up): {out.stderr.strip() or states}"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = nodes_problem()
    if problem:
        pytest.skip(problem)
    with pytest.MonkeyPatch.context() as mp:  # Slurm's clients (and Snakemake's) talk to the two-node cluster
        mp.setenv("SLURM_CONF", str(NODES_CONF))
        yield


def workflow(tmp_path_factory, name, config):
    wf = copy_workflow(tmp_path_factory.mktemp(name))
    write_config(wf / "short.yaml", config)
    return wf


def target(key):
    return f"{STUDY}/runs/{key}/metrics.json"


def records(wf, key):
    run = wf / STUDY / "runs" / key
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv") as fh:
        # tokens/s is a measurement of the machine, not of the run
        history = [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in csv.DictReader(fh)]
    return {"final_val_loss": metrics["final_val_loss"], "val_loss_at": metrics["val_loss_at"],
            "status": metrics["status"]}, history


def train_log(wf, key):
    return (wf / "logs" / "distro-tiny" / "train" / f"{key}.log").read_text()


def jobs(states="all"):
    """{job id: (state, comment, node list)} of the two-node cluster (finished jobs stay MinJobAge=300 s)."""
    out = subprocess.run(["squeue", "-h", f"--states={states}", "-o", "%i|%T|%k|%N"], capture_output=True,
                         text=True, check=True).stdout
    return {f[0]: (f[1], f[2], f[3]) for f in (line.split("|") for line in out.splitlines())}


def job_of(key, states="RUNNING"):
    """The id of the job (in these states) that trains run `key` (the plugin's --comment names its wildcards)."""
    tag = "rule_train_wildcards_" + key.replace("/seed", "_").replace("/", "_")
    return next((j for j, (_, comment, _) in jobs(states).items() if comment == tag), None)


def wait_for(predicate, what, proc, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"snakemake ended while waiting for {what}: " + proc.stdout.read()[-4000:]
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start(wf, *targets):
    return subprocess.Popen([sys.executable, "-m", "snakemake", *targets, *ARGS, "--profile", str(PROFILE)],
                            cwd=wf, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=900):
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


@pytest.fixture(scope="module")
def one_node_started(tmp_path_factory):
    """Both arms on one node with 4 processes, through the local executor: the reference. It trains while
    the two-node jobs wait in Snakemake's status polling."""
    wf = workflow(tmp_path_factory, "one_node", overlay(gpus=4, nodes=1))
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", target(MUON), target(DEMO), *ARGS, "--cores", "2"],
                            cwd=wf, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield wf, proc
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def one_node(one_node_started):
    wf, proc = one_node_started
    out = finish(proc)
    assert proc.returncode == 0, out[-5000:]
    return wf


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, one_node_started):
    """Both arms as two-node Slurm jobs side by side; the DeMo job gets USR1 once it has a checkpoint."""
    wf = workflow(tmp_path_factory, "two_nodes", overlay(gpus=2, nodes=2))
    checkpoint = wf / STUDY / "checkpoints" / DEMO / "latest.pt"
    proc = start(wf, target(MUON), target(DEMO))
    try:
        job = wait_for(lambda: checkpoint.exists() and job_of(DEMO), "the DeMo job's first checkpoint", proc)
        ranks_then = sorted(p.name for p in checkpoint.parent.glob("rank*.step*.pt"))
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
    except BaseException:
        proc.kill()
        raise
    out = finish(proc)
    assert proc.returncode == 0, out[-5000:]
    return wf, out, job, ranks_then


def test_two_node_run_equals_one_node_run(two_nodes, one_node):
    wf, out, _, _ = two_nodes
    log = train_log(wf, MUON)
    assert "device cpu x 4 (gloo)" in log and "parameters identical on all 4 ranks" in log, log[-3000:]
    # the job really spanned both nodes (one torchrun on each: srun --ntasks-per-node 1)
    spans = {nodes for state, comment, nodes in jobs().values() if comment.endswith("muon-ddp_default_42")}
    assert spans == {"mnode[1-2]"}, (spans, out[-3000:])
    assert records(wf, MUON) == records(one_node, MUON)


def test_demo_across_nodes_resumes_its_per_rank_state_after_preemption(two_nodes, one_node):
    wf, out, job, ranks_then = two_nodes
    # at the signal, ranks 1-3 had written their own state (2 and 3 on mnode2); rank 0's is in latest.pt
    assert {f.split(".")[0] for f in ranks_then} == {"rank1", "rank2", "rank3"}, ranks_then
    log = train_log(wf, DEMO)
    assert "resuming from" in log and "(world size then 4, now 4)" in log, log[-3000:]
    assert "starting fresh" not in log, log[-3000:]
    # resubmitted by the submitting Snakemake as a new two-node job, not retried inside the old one
    assert "Trying to restart job" in out, out[-3000:]
    logs = list((wf / ".snakemake" / "slurm_logs" / "rule_train").glob("tiny-dp2_demo_default_42/*.log"))
    assert len(logs) == 2 and job in {p.stem for p in logs}, logs
    assert records(wf, DEMO) == records(one_node, DEMO)


def test_node_death_fails_the_job_and_the_retry_resumes(tmp_path_factory, one_node):
    if os.geteuid() != 0:
        pytest.skip("killing and restarting a node needs root")
    wf = workflow(tmp_path_factory, "node_death", overlay(gpus=2, nodes=2))
    checkpoint = wf / STUDY / "checkpoints" / MUON / "latest.pt"
    proc = start(wf, target(MUON))
    try:
        job = wait_for(lambda: checkpoint.exists() and job_of(MUON), "the first checkpoint", proc)
        subprocess.run(["bash", str(SCRIPT), "kill-node", "2"], check=True)
        # the ranks on mnode1 fail, srun gives up on mnode2's, Slurm marks the silent node DOWN (SlurmdTimeout)
        state = wait_for(lambda: (s := jobs().get(job, ("",))[0]) in ("FAILED", "NODE_FAIL") and s,
                         "the job to fail", proc, timeout=240)
        first_attempt = train_log(wf, MUON)
    finally:
        subprocess.run(["bash", str(SCRIPT), "start-node", "2"], check=True)  # the node is back, whatever happened
    out = finish(proc)
    assert proc.returncode == 0, out[-5000:]
    # the survivors failed through torchrun (no hang until the time limit), and only then the job
    assert "ChildFailedError" in first_attempt, first_attempt[-3000:]
    assert state in ("FAILED", "NODE_FAIL") and "Trying to restart job" in out, out[-3000:]
    logs = list((wf / ".snakemake" / "slurm_logs" / "rule_train").glob("tiny-dp2_muon-ddp_default_42/*.log"))
    assert len(logs) == 2 and job in {p.stem for p in logs}, logs
    log = train_log(wf, MUON)
    assert "resuming from" in log and "starting fresh" not in log, log[-3000:]
    # nothing lost or written twice: the records equal the uninterrupted run's, step by step
    assert records(wf, MUON) == records(one_node, MUON)
