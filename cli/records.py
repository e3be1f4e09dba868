"""One run's state from its files: the record (metrics.json), the log, the checkpoint directory.

A run is
  done / diverged  its metrics.json exists (the trainer writes it last); `stale` says whether the recorded
                   spec's fingerprint differs from the one the plan gives it now (Snakemake would re-run it);
  running          no record yet, its lock file exists (the trainer unlinks it when it exits) and its holder
                   is alive (on this host), or (on another host) its log was written to within
                   RUNNING_WINDOW_S (the trainer's progress line comes every 30 s in a log);
  interrupted      no record, not running, a checkpoint to resume from (preempted, killed, out of time);
  failed           no record, not running, no checkpoint, but a log (its tail says why);
  missing          nothing yet.
Reading never takes the run's lock (a probe could refuse a trainer starting at that moment).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from study.plan import Run

RUNNING_WINDOW_S = 600.0
LOG_TAIL_BYTES = 16384
# tqdm's line, as the trainer writes it into the log: "...  34%|###4  | 340/1000 [01:02<02:00, 5.40step/s]"
PROGRESS = re.compile(r"(\d+)/(\d+) \[([0-9:]+)<([0-9:?]+)(?:, *([0-9.]+|\?)(s/step|step/s))?")
LOCK_HOLDER = re.compile(r"PID (\d+) on host (\S+)")


@dataclass
class RunState:
    key: str
    model: str
    arm: str
    variant: str
    seed: int
    phases: list[str]
    status: str  # done | diverged | running | interrupted | failed | missing
    stale: bool | None  # recorded fingerprint != planned (None: no record, or the plan cannot say yet)
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    wall_time_s: float | None = None
    gpu_hours: float | None = None  # GPUs held x wall
    gpu_share: float | None = None  # the fraction of them the run had (trainer/gpu_share.py); None: not measured
    steps_completed: int | None = None
    steps: int | None = None
    fingerprint: str | None = None  # planned
    recorded_fingerprint: str | None = None
    progress: dict | None = None  # {step, total, elapsed, eta, rate} from the log's last progress line
    run_dir: str = ""
    log: str = ""
    checkpoint: dict = field(default_factory=dict)

    @property
    def counted_as(self) -> str:
        """The status column `status` counts: a stale record is to be re-run, not done."""
        return "stale" if self.stale else self.status

    def to_dict(self) -> dict:
        d = asdict(self)
        d["counted_as"] = self.counted_as
        return d


def read_json(path: Path) -> dict | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):  # absent, or being replaced (the trainer writes atomically; NFS may lag)
        return None


def log_tail(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The end of a log, with tqdm's carriage-return redraws turned into lines."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is cut
    return "\n".join(line.rstrip() for line in lines if line.strip())


def _seconds(text: str) -> float | None:
    if not text or "?" in text:
        return None
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part)
    return total


def parse_progress(tail: str) -> dict | None:
    """The last progress line of a log: {step, total, elapsed_s, eta_s, steps_per_s}."""
    for line in reversed(tail.splitlines()):
        m = PROGRESS.search(line)
        if m:
            rate = None
            if m.group(5) and m.group(5) != "?":
                value = float(m.group(5))
                rate = value if m.group(6) == "step/s" else (1.0 / value if value > 0 else None)
            return {"step": int(m.group(1)), "total": int(m.group(2)), "elapsed_s": _seconds(m.group(3)),
                    "eta_s": _seconds(m.group(4)), "steps_per_s": rate}
    return None


def _lock_state(lock: Path) -> dict:
    try:
        text = lock.read_text().strip()
    except OSError:
        return {}
    out = {"lock": text}
    m = LOCK_HOLDER.search(text)
    if m and m.group(2) == socket.gethostname():
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            out["holder_alive"] = True
        except ProcessLookupError:
            out["holder_alive"] = False
        except PermissionError:
            out["holder_alive"] = True
    return out


def checkpoint_state(ckpt_dir: Path) -> dict:
    """What the checkpoint directory holds: the files to resume from, and who holds the run's lock."""
    if not ckpt_dir.is_dir():
        return {}
    out: dict = {"dir": str(ckpt_dir)}
    files = []
    for name in ("latest.pt", "previous.pt"):
        p = ckpt_dir / name
        if p.exists():
            st = p.stat()
            files.append({"file": name, "bytes": st.st_size, "written": time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime))})
    ranks = sorted(p.name for p in ckpt_dir.glob("rank*.step*.pt"))
    if ranks:
        out["rank_files"] = len(ranks)
    if files:
        out["files"] = files
    out.update(_lock_state(ckpt_dir / "run.lock"))
    return out


def run_state(view, run: Run, phases: list[str], planned_fp: str | None, now: float | None = None,
              with_checkpoint: bool = False) -> RunState:
    now = time.time() if now is None else now
    run_dir = view.path(view.plan.run_dir(run))
    log = view.log_of(run)
    steps = view.config["models"][run.model]["steps"]
    state = RunState(run.key, run.model, run.arm, run.variant, run.seed, phases, "missing", None,
                     steps=steps, fingerprint=planned_fp, run_dir=str(run_dir.relative_to(view.root)),
                     log=str(log.relative_to(view.root)))
    metrics = read_json(run_dir / "metrics.json")
    if metrics is not None:
        state.status = "done" if metrics.get("status") == "ok" else str(metrics.get("status", "unknown"))
        for k in ("final_val_loss", "best_val_loss", "wall_time_s", "gpu_hours", "gpu_share", "steps_completed"):
            setattr(state, k, metrics.get(k))
        state.recorded_fingerprint = metrics.get("fingerprint") or (metrics.get("spec") or {}).get("fingerprint")
        state.stale = None if planned_fp is None else state.recorded_fingerprint != planned_fp
        if with_checkpoint:
            state.checkpoint = checkpoint_state(view.path(view.plan.checkpoint_dir(run)))
        return state
    ckpt = checkpoint_state(view.path(view.plan.checkpoint_dir(run)))
    state.checkpoint = ckpt
    try:
        log_mtime = log.stat().st_mtime
    except OSError:
        log_mtime = None
    if log_mtime is None and not ckpt:
        return state  # missing
    tail = log_tail(log) if log_mtime is not None else ""
    state.progress = parse_progress(tail)
    if state.progress:
        state.steps_completed = state.progress["step"]
    # The trainer holds run.lock while it runs and unlinks it when it exits (a killed one leaves it):
    # no lock file, not running; a holder on this host is asked directly; elsewhere the log's age decides.
    alive = ckpt.get("holder_alive")
    recent = log_mtime is not None and now - log_mtime < RUNNING_WINDOW_S
    if "lock" in ckpt and (alive or (alive is None and recent)):
        state.status = "running"
    elif ckpt.get("files"):
        state.status = "interrupted"
    elif log_mtime is not None:
        state.status = "failed"
    return state
