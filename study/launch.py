"""The command that starts one training run: torchrun on one node, srun + torchrun across nodes."""

from __future__ import annotations

import os
import shlex
import shutil
import sys

# The c10d rendezvous store's port on a job's first host: one per job (20000 + job id mod 10000, below Linux's
# ephemeral ports). A fixed port (29500) let two jobs whose first host is the same node share one store:
# torchrun falls back to a client of whatever store holds the port, so the second job's ranks met in the
# first job's store and failed when that job ended (found on the two-node CI cluster, docs/slurm.md).
RENDEZVOUS_PORT_BASE, RENDEZVOUS_PORTS = 20000, 10000


def torchrun_executable() -> str:
    """The torchrun beside the running Python (a venv need not be on PATH), else PATH's."""
    beside = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return beside if os.access(beside, os.X_OK) else (shutil.which("torchrun") or "torchrun")


# torchrun handles SIGTERM/SIGINT/SIGHUP/SIGQUIT only, and dies on SIGUSR1; told to, it forwards
# SIGUSR1 (Slurm's time-limit and preemption warning) to its workers, which checkpoint and exit.
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def launcher(gpus_per_node: int, nodes: int = 1, torchrun: str | None = None,
             under_slurm: bool = False, cpus_per_node: int | None = None) -> str:
    """The prefix of the train command (the script and its flags follow).

    One node: `torchrun --standalone`, one process per GPU (on a CPU-only machine the processes share
    the CPU through gloo). Inside a Slurm job the command runs under `srun`, so that torchrun is the
    job step's top process: Slurm sends the step's signals (`scancel --signal=USR1`, `--signal=USR1@T`)
    to that process alone, and torchrun passes them on. Several nodes: srun starts one torchrun per
    node, and all of them meet through the c10d rendezvous on the first host of the job's node list, at a
    port of the job's own (RENDEZVOUS_PORT_BASE); the job id names the rendezvous.

    The job step's shell does not see the allocation: Snakemake's jobstep executor (0.6.1) strips every
    SLURM_* variable but the job id from the rule's environment, so `$SLURM_JOB_NODELIST` and
    `$SLURM_CPUS_PER_TASK` are empty there (found on the two-node CI cluster, docs/slurm.md). Hence srun gets
    `--cpus-per-task` from the rule (`cpus_per_node`: explicit, as the step's default CPUs differ between
    Slurm releases), and the first host
    is looked up inside the step, on each node, where Slurm sets the node list again.
    """
    # Quoted: the checkout (and so the venv's torchrun) may live under a path with spaces or shell syntax.
    torchrun = shlex.quote(torchrun or torchrun_executable())
    if gpus_per_node < 1 or nodes < 1:
        raise ValueError(f"gpus_per_node and nodes must be >= 1, got {gpus_per_node} and {nodes}")
    cpus = f"--cpus-per-task {int(cpus_per_node)} " if cpus_per_node else ""
    if nodes == 1:
        command = (f"{torchrun} --standalone --nproc-per-node {gpus_per_node} "
                   f"--signals-to-handle {FORWARDED_SIGNALS}")
        return f"srun --nodes 1 --ntasks 1 {cpus}{command}" if under_slurm else command
    # Several nodes exist only inside a Slurm allocation: this command is for one (--profile slurm).
    # `sh -c 'exec "$0" ... "$@"' TORCHRUN SCRIPT ARGS...`: the rendezvous host is found on the node, and
    # exec leaves torchrun the step's top process (it gets Slurm's signals); the rule appends SCRIPT ARGS.
    head = '"$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"'
    port = f"$(({RENDEZVOUS_PORT_BASE} + SLURM_JOB_ID % {RENDEZVOUS_PORTS}))"
    inner = (f'exec "$0" --nnodes {nodes} --nproc-per-node {gpus_per_node} '
             f'--rdzv-backend c10d --rdzv-endpoint {head}:{port} --rdzv-id "$SLURM_JOB_ID" '
             f'--signals-to-handle {FORWARDED_SIGNALS} "$@"')
    return (f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 {cpus}--kill-on-bad-exit=1 "
            f"sh -c {shlex.quote(inner)} {torchrun}")


def slurm_node_args(gpus_per_node: int, gpu_model: str | None = None) -> str:
    """The sbatch arguments of a job on several nodes: one task (one torchrun) per node and, when the job asks
    for GPUs, exactly `gpus_per_node` on every node. Typed like the plugin's `--gpus=<model>:<total>`: Slurm
    refuses a typed `--gpus` beside an untyped `--gpus-per-node` ("Invalid GRES specification (with and
    without type identification)", measured on the two-node CI cluster); no GPUs asked for (a profile's
    `gpu: 0` for the train rule), no `--gpus-per-node`."""
    args = "--ntasks-per-node=1"
    if gpus_per_node and int(gpus_per_node) > 0:
        args = f"--gpus-per-node={gpu_model + ':' if gpu_model else ''}{int(gpus_per_node)} " + args
    return args


GUARD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "trainer", "launch_guard.py")


def guarded(command: str, python: str | None = None) -> str:
    """`command` (a launcher's prefix) under the launch guard (trainer/launch_guard.py), the job's top process:
    it passes signals on, and exits 0 exactly when the run's records are complete, since torchrun exits 1 on a
    SIGTERM even after its workers wrote them (issue 28.1). A prefix of any launcher (srun, sh -c ...)."""
    return f"{shlex.quote(python or sys.executable)} {shlex.quote(GUARD)} -- {command}"
