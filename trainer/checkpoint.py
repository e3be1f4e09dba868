"""Checkpoints (one file, `latest.pt`, in the run's checkpoint directory) and preemption signals.

A checkpoint holds everything the rest of the run depends on: model and optimizer state, the number
of completed steps (which is also the data position: the batch of step s is a function of (seed, s)),
the history rows and evaluations so far, the timing and diagnostic accumulators, the RNG states
(torch CPU, CUDA, numpy, python) and the wandb run id. It is written atomically (temporary file,
then rename), so a kill during the save leaves the previous checkpoint intact.

A checkpoint is resumed only when its resume key (the result-affecting spec, the study fingerprint
and the code's behaviour versions) equals the current run's; otherwise the run starts fresh and says
why in the log.

SIGTERM and SIGUSR1 (Slurm's preemption and time-limit signals; torchrun forwards SIGTERM to its
workers) only set a flag; the loop finishes the step in hand, saves a checkpoint and exits with
PREEMPTED_EXIT_CODE so that Snakemake/Slurm retry and the next start resumes.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.records import atomic_write

CKPT_NAME = "latest.pt"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again
FORMAT_VERSION = 1


def rng_state(device: torch.device) -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


def path_of(ckpt_dir: str | os.PathLike) -> Path:
    return Path(ckpt_dir) / CKPT_NAME


def save(ckpt_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    p = path_of(ckpt_dir)
    state = {"format_version": FORMAT_VERSION, **state}
    atomic_write(p, lambda f: torch.save(state, f), mode="wb")
    return p


def load(ckpt_dir: str | os.PathLike, map_location="cpu") -> dict | None:
    p = path_of(ckpt_dir)
    if not p.exists():
        return None
    return torch.load(p, map_location=map_location, weights_only=False)


def remove(ckpt_dir: str | os.PathLike) -> None:
    d = Path(ckpt_dir)
    p = path_of(d)
    if p.exists():
        p.unlink()
    prune_ranks(d, keep_step=None)
    for leftover in d.glob(f".tmp-{CKPT_NAME}.*") if d.exists() else []:
        leftover.unlink(missing_ok=True)
    try:
        d.rmdir()
    except OSError:
        pass


class PreemptionFlag:
    """Turns SIGTERM/SIGUSR1 into a flag the loop polls after each step."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def install(self) -> "PreemptionFlag":
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except ValueError:  # not the main thread
                    pass
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old.clear()

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


# --------------------------------------------------------------------------- rank-local optimizer state
# An optimizer whose state differs between ranks (DeMo's per-rank residual delta; has_rank_local_state)
# is checkpointed per rank: every rank other than 0 writes `rank<r>.step<s>.pt` (atomic) before rank 0
# writes latest.pt, which names the step; a resume loads the file of latest.pt's step, so a kill between
# the two writes leaves a consistent pair. Rank 0's own state is in latest.pt.
def rank_path(ckpt_dir: str | os.PathLike, rank: int, step: int) -> Path:
    return Path(ckpt_dir) / f"rank{rank}.step{step}.pt"


def save_rank(ckpt_dir: str | os.PathLike, rank: int, step: int, state: dict[str, Any]) -> Path:
    p = rank_path(ckpt_dir, rank, step)
    atomic_write(p, lambda f: torch.save({"format_version": FORMAT_VERSION, **state}, f), mode="wb")
    return p


def prune_ranks(ckpt_dir: str | os.PathLike, keep_step: int | None) -> None:
    """Remove rank files of every step but keep_step (all of them when None)."""
    d = Path(ckpt_dir)
    if not d.exists():
        return
    for f in list(d.glob("rank*.step*.pt")) + list(d.glob(".tmp-rank*.step*.pt.*")):
        if keep_step is None or not f.name.endswith(f".step{keep_step}.pt"):
            f.unlink(missing_ok=True)


def attach_rank_state(state: dict, ckpt_dir, info, key: str, log) -> dict | None:
    """Put this rank's own optimizer state into `state` (collective: every rank calls it). Returns None
    on every rank, after saying why, when some rank cannot restore its state (missing file, other world
    size): then the run starts fresh rather than resume with a wrong residual."""
    from trainer import distributed as dist_mod

    why = ""
    if state.get("world_size") != info.world_size:
        why = f"it was written by {state.get('world_size')} ranks, this run has {info.world_size}"
    elif not info.is_main:
        p = rank_path(ckpt_dir, info.rank, state["step"])
        try:
            mine = torch.load(p, map_location="cpu", weights_only=False) if p.exists() else None
        except Exception:
            mine = None
        if mine is None or mine.get("resume_key") != key or mine.get("step") != state["step"]:
            why = f"rank {info.rank} has no readable state of step {state['step']} ({p.name})"
        else:
            state = dict(state, optimizer=mine["optimizer"])
    bad = torch.tensor([0.0 if not why else 1.0], device=info.device)
    dist_mod.all_reduce_max_(bad, info)
    if bad.item() > 0:
        log(f"checkpoint {path_of(ckpt_dir)} holds rank-local optimizer state that cannot be restored on every "
            f"rank{(': ' + why) if why else ''}: not resuming; starting fresh")
        return None
    return state
