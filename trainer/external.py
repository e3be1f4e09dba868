"""Run a study's own training command for one run, and check what it wrote (docs/external_trainer.md).

The train rule starts workflow/scripts/train.py under torchrun (or srun + torchrun) as for the built-in
trainer; a spec with an `external` section lands here in each torchrun worker, which writes the spec to
`OUT_DIR/spec.json`, starts the command with the worker's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT as torchrun set them) and waits for it. Preemption signals (SIGTERM, SIGINT,
SIGUSR1, SIGHUP) are passed on to the command, which checkpoints and exits 75. When the command is done,
rank 0 checks its records against the contract: an invalid `metrics.json` is moved aside (it must not look
like a finished run) and the error names the file and the key.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.records import write_json

PREEMPTED_EXIT_CODE = 75
CONTRACT_EXIT_CODE = 65  # EX_DATAERR: the command finished but its records break the contract
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
STATUSES = ("ok", "diverged")


def command_argv(external: dict, spec_path: Path, out_dir: Path, checkpoint_dir: Path, spec: dict) -> list[str]:
    values = {"python": sys.executable, "spec": str(spec_path), "out_dir": str(out_dir),
              "checkpoint_dir": str(checkpoint_dir), "seed": str(spec["seed"]), "run_id": spec["run_id"],
              "steps": str(spec["training"]["steps"])}
    return [arg.format_map(values) for arg in external["command"]]


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def contract_problems(out_dir: str | Path, spec: dict) -> list[str]:
    """One line per way the records in out_dir break the contract (each names its file)."""
    out = Path(out_dir)
    mp, hp = out / "metrics.json", out / "history.csv"
    problems = []
    if not mp.is_file():
        return [f"{mp}: missing (the command must write metrics.json last, when the run is done)"]
    try:
        m = json.loads(mp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return [f"{mp}: not valid JSON ({e})"]
    if not isinstance(m, dict):
        return [f"{mp}: must hold a JSON object, not a {type(m).__name__}"]
    status = m.get("status")
    steps = spec["training"]["steps"]
    if status not in STATUSES:
        problems.append(f"{mp}: status {status!r} is not allowed (one of {', '.join(STATUSES)})")
    if status == "ok":
        if not _number(m.get("final_val_loss")):
            problems.append(f"{mp}: final_val_loss {m.get('final_val_loss')!r} is not allowed for status ok "
                            "(a finite number: the final metric the gates compare)")
        if m.get("steps_completed") != steps:
            problems.append(f"{mp}: steps_completed {m.get('steps_completed')!r} is not the spec's "
                            f"training.steps ({steps}) for status ok")
        at = m.get("val_loss_at")
        if not isinstance(at, dict):
            problems.append(f"{mp}: val_loss_at {at!r} is not allowed (an object step -> loss, keys as strings)")
        else:
            missing = [s for s in spec["eval"]["at_steps"] if not _number(at.get(str(s)))]
            if missing:
                problems.append(f"{mp}: val_loss_at lacks a number for the spec's eval.at_steps {missing} "
                                "(the gates compare them)")
    if status == "diverged" and not (isinstance(m.get("diverged_step"), int) and not isinstance(m.get("diverged_step"), bool)):
        problems.append(f"{mp}: diverged_step {m.get('diverged_step')!r} is not allowed for status diverged "
                        "(the step, an integer)")
    for key in ("best_val_loss", "wall_time_s", "gpu_hours", "tokens_per_s"):
        if m.get(key) is not None and not _number(m[key]):
            problems.append(f"{mp}: {key} {m[key]!r} is not allowed (a finite number, or absent)")
    if not hp.is_file():
        problems.append(f"{hp}: missing (a CSV with a header: step, val_loss and any other columns)")
    else:
        with open(hp, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), None) or []
        lacking = [c for c in ("step", "val_loss") if c not in [h.strip() for h in header]]
        if lacking:
            problems.append(f"{hp}: header {header} lacks {', '.join(lacking)}")
    return problems


def _complete(out_dir: Path, spec: dict, wall_s: float) -> None:
    """Add what the analysis reads and the command need not know: the spec, the fingerprint, the trainer."""
    mp = out_dir / "metrics.json"
    m = json.loads(mp.read_text(encoding="utf-8"))
    m.setdefault("steps_completed", m.get("diverged_step") if m.get("status") == "diverged" else None)
    m.setdefault("wall_time_s", wall_s)
    m.setdefault("world_size", int(os.environ.get("WORLD_SIZE", "1")))
    m["trainer"] = f"external:{spec['external']['trainer']}"
    m["fingerprint"] = spec["fingerprint"]
    m["spec"] = spec
    write_json(mp, m)


def _set_aside(out_dir: Path, suffix: str) -> Path | None:
    mp = out_dir / "metrics.json"
    if mp.exists():
        aside = out_dir / f"metrics.json.{suffix}"
        os.replace(mp, aside)
        return aside
    return None


def _die_with_wrapper() -> None:
    """In the command's process (after fork): die when the wrapper dies (torchrun killed it, or Slurm)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def run_external(spec: dict, out_dir: str | Path, checkpoint_dir: str | Path) -> int:
    """Start the spec's external command, pass signals on, check its records. Returns the exit code."""
    out, ckpt = Path(out_dir), Path(checkpoint_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    name = spec["external"]["trainer"]
    spec_path = out / "spec.json"
    write_json(spec_path, spec)  # every rank writes the same bytes atomically: each can read it at once
    argv = command_argv(spec["external"], spec_path, out, ckpt, spec)
    env = {**os.environ, "ABLATION_SPEC": str(spec_path), "ABLATION_OUT_DIR": str(out),
           "ABLATION_CHECKPOINT_DIR": str(ckpt), "ABLATION_SEED": str(spec["seed"]),
           "ABLATION_RUN_ID": spec["run_id"]}
    if rank == 0:
        print(f"external trainer {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.time()
    try:
        child = subprocess.Popen(argv, env=env, preexec_fn=_die_with_wrapper)
    except OSError as e:
        print(f"error: trainers.{name}.command: cannot start {argv[0]!r} ({e})", file=sys.stderr)
        return 2
    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:  # pragma: no cover (PEP 475 retries wait itself)
                continue
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if rc != 0:
        aside = _set_aside(out, "incomplete") if rank == 0 else None
        what = "preempted (checkpoint written; a rerun resumes)" if rc == PREEMPTED_EXIT_CODE else \
            f"failed with exit code {rc}"
        print(f"external trainer {name}: {what}" + (f"; its metrics.json moved to {aside}" if aside else ""),
              file=sys.stderr, flush=True)
        if rc < 0:  # killed by a signal: the shell's convention
            return 128 - rc
        return rc
    if rank != 0:
        return 0
    problems = contract_problems(out, spec)
    if problems:
        aside = _set_aside(out, "invalid")
        print(f"error: external trainer {name} exited 0 but its records break the contract "
              f"(docs/external_trainer.md):\n  - " + "\n  - ".join(problems)
              + (f"\n  (metrics.json moved to {aside})" if aside else ""), file=sys.stderr, flush=True)
        return CONTRACT_EXIT_CODE
    _complete(out, spec, time.time() - t0)
    return 0
