"""Weights & Biases, mode from the spec: disabled, offline (no network; `wandb sync DIR` later) or online.

Only rank 0 talks to wandb. The run's config is the resolved spec (which holds no secrets); group and
tags come from the spec; history rows and the final metrics are logged. The wandb run id is chosen
here (or taken from the checkpoint on resume, so a preempted run continues the same wandb run) and
recorded in metrics.json with the mode and the run directory.

wandb not installed: when the spec leaves wandb.mode out, the run goes on with wandb disabled and
says so; when the spec asks for offline or online, that is an error that says how to fix it.
API keys are read by wandb itself from its usual places; this module never reads, logs or records
them, and nothing of the environment is put into the config or the records.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from trainer.spec import WandbSpec


class TrackingError(RuntimeError):
    pass


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def _new_id() -> str:
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class Tracker:
    def __init__(self, wspec: WandbSpec, run_name: str, config: dict, is_main: bool,
                 resume_id: str | None = None, log: Callable[[str], None] = print):
        self.mode = wspec.mode
        self.id: str | None = None
        self.dir: str | None = None
        self.run = None
        self._wandb = None
        if self.mode == "disabled":
            return
        if not wandb_available():
            if wspec.mode_given:
                raise TrackingError(f"wandb.mode is {self.mode!r} but the wandb package is not installed here; "
                                    f"install it (pip install wandb) or set wandb.mode: disabled in the spec")
            log("wandb is not installed and the spec left wandb.mode out: wandb disabled for this run")
            self.mode = "disabled"
            return
        if not is_main:
            return
        import wandb

        self._wandb = wandb
        wdir = Path(wspec.dir)
        wdir.mkdir(parents=True, exist_ok=True)
        run_id = resume_id or _new_id()
        settings = wandb.Settings(console="off", silent=True)
        self.run = wandb.init(project=wspec.project, entity=wspec.entity, group=wspec.group, tags=list(wspec.tags),
                              name=run_name, job_type="train", config=config, dir=str(wdir), mode=self.mode,
                              id=run_id, resume="allow", settings=settings)
        self.id = self.run.id
        run_dir = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>: what `wandb sync` takes
        try:
            self.dir = os.path.relpath(run_dir)
        except ValueError:
            self.dir = str(run_dir)

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            clean = {k: v for k, v in row.items() if v is not None and k != "step"}
            self.run.log(clean, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for k in ("status", "diverged_step", "final_val_loss", "best_val_loss", "steps_completed",
                      "tokens_per_s", "wall_time_s", "gpu_hours"):
                if metrics.get(k) is not None:
                    self.run.summary[k] = metrics[k]
            for k, v in (metrics.get("diagnostics") or {}).items():
                if v is not None:
                    self.run.summary[f"diagnostics/{k}"] = v

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        if self.run is not None:
            if preempted:
                try:
                    self.run.mark_preempting()
                except Exception:
                    pass
            self.run.finish(exit_code=exit_code)
            self.run = None

    def record(self) -> dict:
        return {"mode": self.mode, "id": self.id, "dir": self.dir}
