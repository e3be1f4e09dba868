"""The command that starts one training run: torchrun on one node, srun + torchrun across nodes."""

from __future__ import annotations

import os
import shutil
import sys

RENDEZVOUS_PORT = 29500


def torchrun_executable() -> str:
    """The torchrun beside the running Python (a venv need not be on PATH), else PATH's."""
    beside = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return beside if os.access(beside, os.X_OK) else (shutil.which("torchrun") or "torchrun")


def launcher(gpus_per_node: int, nodes: int = 1, torchrun: str | None = None) -> str:
    """The prefix of the train command (the script and its flags follow).

    One node: `torchrun --standalone`, one process per GPU (on a CPU-only machine the processes share
    the CPU through gloo). Several nodes: Slurm's srun starts one torchrun per node, and all of them
    meet through the c10d rendezvous on the first host of the job's node list; the job id names the
    rendezvous so that two jobs on the same hosts never meet.
    """
    torchrun = torchrun or torchrun_executable()
    if gpus_per_node < 1 or nodes < 1:
        raise ValueError(f"gpus_per_node and nodes must be >= 1, got {gpus_per_node} and {nodes}")
    if nodes == 1:
        return f"{torchrun} --standalone --nproc-per-node {gpus_per_node}"
    head = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
    return (
        f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 --kill-on-bad-exit=1 "
        f"{torchrun} --nnodes {nodes} --nproc-per-node {gpus_per_node} "
        f"--rdzv-backend c10d --rdzv-endpoint {head}:{RENDEZVOUS_PORT} --rdzv-id \"$SLURM_JOB_ID\""
    )
