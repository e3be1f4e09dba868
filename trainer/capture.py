"""Capture of hidden-matrix gradients and momenta at chosen steps (the DisTrO measurement stage).

Spec section `capture: {steps: [N, ...], what: ["grad", "momentum"]}`. At update N (1-based) rank 0
writes `<run_dir>/captures/step<N>.pt` atomically: a flat dict of CPU float32 tensors only (readable
with torch.load(weights_only=True)), keys `grad/<parameter name>` and `momentum/<parameter name>`
for every parameter of the Muon-family part of the split (the hidden matrices; AdamW's are left out).

- grad: the gradient of update N after the trainer's all-reduce (the global-batch gradient) and
  before clipping; in a run whose optimizer exchanges its own gradients (DeMo) it is rank 0's local
  gradient, scaled by 1/world as the trainer scales every rank's loss.
- momentum: the optimizer's momentum after update N: Muon's `momentum_buffer` (the EMA), DeMo's
  `delta` (the residual after error feedback); absent for a parameter that has none.

A resumed run rewrites no capture of a step before its start; a capture is overwritten only by the
same step of a rerun.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.records import atomic_write

CAPTURE_WHAT = ("grad", "momentum")
MOMENTUM_KEYS = ("momentum_buffer", "delta")


def capture_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "captures" / f"step{step}.pt"


class Capture:
    def __init__(self, steps, what, run_dir: str | Path, is_main: bool, model, opt):
        self.steps = set(int(s) for s in steps)
        self.what = tuple(what)
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        names = set(getattr(opt, "assignment", {}).get("muon", []))
        self.named = [(n, p) for n, p in model.named_parameters() if n in names]
        self.opt = opt
        self._pending: dict[str, torch.Tensor] = {}

    def after_grads(self, step: int) -> None:
        if step not in self.steps or not self.is_main:
            return
        self._pending = {}
        if "grad" in self.what:
            for n, p in self.named:
                if p.grad is not None:
                    self._pending[f"grad/{n}"] = p.grad.detach().float().cpu().clone()

    def after_step(self, step: int) -> None:
        if step not in self.steps or not self.is_main:
            return
        out = self._pending
        self._pending = {}
        if "momentum" in self.what:
            for n, p in self.named:
                st = self.opt.state.get(p, {}) if hasattr(self.opt, "state") else {}
                for k in MOMENTUM_KEYS:
                    if k in st:
                        out[f"momentum/{n}"] = st[k].detach().float().cpu().clone()
                        break
        atomic_write(capture_path(self.run_dir, step), lambda f: torch.save(out, f), mode="wb")
