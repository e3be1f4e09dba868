"""The command that starts one training run: torchrun on one node, srun + torchrun across nodes."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

RENDEZVOUS_PORT = 29500


def torchrun_executable() -> str:
    """The torchrun beside the running Python (a venv need not be on PATH), else PATH's."""
    beside = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return beside if os.access(beside, os.X_OK) else (shutil.which("torchrun") or "torchrun")


# torchrun handles SIGTERM/SIGINT/SIGHUP/SIGQUIT only, and dies on SIGUSR1; told to, it forwards
# SIGUSR1 (Slurm's time-limit and preemption warning) to its workers, which checkpoint and exit.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launcher(gpus_per_node: int, nodes: int = 1, torchrun: str | None = None,
             under_slurm: bool = False) -> str:
    """The prefix of the train command (the script and its flags follow).

    One node: `torchrun --standalone`, one process per GPU (on a CPU-only machine the processes share
    the CPU through gloo). Inside a Slurm job the command runs under `srun`, so that torchrun is the
    job step's top process: Slurm sends the step's signals (`scancel --signal=USR1`, `--signal=USR1@T`)
    to that process alone, and torchrun passes them on. Several nodes: srun starts one torchrun per
    node, and all of them meet through the c10d rendezvous on the first host of the job's node list;
    the job id names the rendezvous, so that two jobs on the same hosts never meet.
    """
    # Quoted: the checkout (and so the venv's torchrun) may live under a path with spaces or shell syntax.
    torchrun = shlex.quote(torchrun or torchrun_executable())
    if gpus_per_node < 1 or nodes < 1:
        raise ValueError(f"gpus_per_node and nodes must be >= 1, got {gpus_per_node} and {nodes}")
    if nodes == 1:
        command = (f"{torchrun} --standalone --nproc-per-node {gpus_per_node} "
                   f"--signals-to-handle {FORWARDED_SIGNALS}")
        return f"srun --nodes 1 --ntasks 1 {command}" if under_slurm else command
    # Several nodes exist only inside a Slurm allocation: this command is for one (--profile slurm).
    head = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
    return (
        f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
        f"{torchrun} --nnodes {nodes} --nproc-per-node {gpus_per_node} "
        f"--rdzv-backend c10d --rdzv-endpoint {head}:{RENDEZVOUS_PORT} --rdzv-id \"$SLURM_JOB_ID\" "
        f"--signals-to-handle {FORWARDED_SIGNALS}"
    )


GUARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainer", "launch_guard.py")


def guarded(command: str, python: str | None = None) -> str:
    """`command` (a launcher's prefix) under the launch guard (trainer/launch_guard.py), the job's top process:
    it passes signals on, and exits 0 exactly when the run's records are complete, since torchrun exits 1 on a
    SIGTERM even after its workers wrote them (issue 28.1). A prefix of any launcher (srun, sh -c ...)."""
    return f"{shlex.quote(python or sys.executable)} {shlex.quote(GUARD)} -- {command}"
