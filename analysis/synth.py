"""Synthetic run records (metrics.json + history.csv as the trainer writes them, docs/DESIGN.md) for tests
and benchmarks/analysis_scale.py. Nothing here is used by the workflow itself."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HISTORY_COLS = ["step", "train_loss", "val_loss", "lr_scale", "grad_norm", "update_rms", "eff_rank_mean",
                "eff_rank_min", "noise_fraction", "eps", "tokens_per_s"]


def _c(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return repr(float(x)) if isinstance(x, float) else str(x)


def write_run(root: str | Path, *, model: str, arm: str, alpha: float | None, seed: int, final_loss: float,
              status: str = "ok", diverged_step: int | None = None, steps: int = 500, n_rows: int = 20,
              init_loss: float = 10.8, eff_rank: float = 20.0, eval_steps: Sequence[int] = (50, 100, 250, 500),
              target_losses: Sequence[float] = (4.0, 3.5), gpu_hours: float = 0.0, wall_time_s: float = 600.0,
              world_size: int = 1, tau: float | None = None, noise: float = 0.0,
              rng: np.random.Generator | None = None, role: str = "arm", phase: str = "phase1",
              variant: str | None = None, noise_fraction: float = 0.01, gpu_share: float | None = None,
              device: str | None = None) -> dict:
    """Write one run directory; returns the run record the workflow passes as params.runs (plus paths).

    `gpu_hours` > 0 makes it a CUDA run (device "cuda"; `gpu_share` as the trainer records it, None: not
    measured); else a CPU run, as the trainer records one.
    The val curve decays like exp(-step / tau) from init_loss to exactly final_loss at `steps`; a diverged run's losses blow up after
    diverged_step and its final/best losses are NaN (recorded as null)."""
    rng = rng or np.random.default_rng(seed)
    tau = tau or steps / 6.0
    a_str = format(float(alpha), "g") if alpha is not None else "0"
    variant = variant or f"alpha{a_str}"
    run_dir = Path(root) / "runs" / model / arm / variant / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    steps_list = sorted(set(np.linspace(0, steps, n_rows).round().astype(int).tolist()) | set(eval_steps)
                        | ({diverged_step} if status == "diverged" and diverged_step is not None else set()))
    last = diverged_step if (status == "diverged" and diverged_step is not None) else steps

    def loss(s: float) -> float:
        e_end = math.exp(-steps / tau)  # normalised so that loss(steps) == final_loss exactly
        v = final_loss + (init_loss - final_loss) * (math.exp(-s / tau) - e_end) / (1 - e_end)
        if status == "diverged" and diverged_step is not None and s >= diverged_step:
            return float("nan")
        return v + (noise * rng.standard_normal() if noise else 0.0)

    rows = []
    val_at, best = {}, math.inf
    for s in steps_list:
        if s > last:
            break
        vl = loss(s)
        if math.isfinite(vl):
            best = min(best, vl)
        if s in eval_steps and math.isfinite(vl):
            val_at[str(s)] = vl
        er = eff_rank * (1 - 0.3 * math.exp(-s / tau)) if math.isfinite(vl) else float("nan")
        rows.append([s, vl + 0.05, vl, 1.0, 1.0, 0.2, er, er * 0.5, 0.01, 1e-3, 1000.0])
    with open(run_dir / "history.csv", "w", encoding="utf-8") as fh:
        fh.write(",".join(HISTORY_COLS) + "\n")
        for r in rows:
            fh.write(",".join(_c(x) for x in r) + "\n")
    fin = None if status == "diverged" else float(final_loss)
    metrics = {
        "status": status,
        "diverged_step": diverged_step if status == "diverged" else None,
        "final_val_loss": fin,
        "best_val_loss": None if status == "diverged" else float(best),
        "val_loss_at": val_at,
        "steps_to_loss": {format(t, "g"): next((s for s in steps_list if s <= last and loss(s) <= t), None)
                          for t in target_losses} if status == "ok" else {},
        "steps_completed": last,
        "tokens_per_s": 1000.0,
        "wall_time_s": wall_time_s,
        "gpu_hours": gpu_hours,
        "gpu_share": gpu_share,
        "gpu_share_source": ("NVML compute processes on the device (synthetic)" if gpu_share is not None else
                             "not measured: synthetic" if gpu_hours else "cpu: no GPU"),
        "world_size": world_size,
        "device": device or ("cuda" if gpu_hours else "cpu"),
        "diagnostics": {"eff_rank_mean": eff_rank if status == "ok" else None, "eff_rank_min": eff_rank / 2,
                        "noise_fraction_mean": noise_fraction, "eps_mean": 1e-3, "update_rms_mean": 0.2,
                        "grad_norm_mean": 1.0},
        "wandb": {"mode": "offline", "id": f"w{zlib.crc32(f'{model}/{arm}/{a_str}/{seed}'.encode()):08x}",
                  "dir": "results/wandb"},
        "spec": {"run_id": f"{model}/{arm}/alpha{a_str}/seed{seed}", "seed": seed, "alpha": alpha},
        "fingerprint": "0123456789abcdef",
        "package_version": "0.1.0",
        "git_commit": "deadbeef",
        "versions": {"torch": "2.9", "python": "3.11"},
    }
    with open(run_dir / "metrics.json", "w", encoding="utf-8") as fh:
        json.dump(metrics, fh)
    return {"phase": phase, "role": role, "model": model, "arm": arm, "variant": variant,
            "param": "muon.alpha" if alpha is not None else "", "value": alpha, "alpha": alpha, "seed": seed,
            "run_dir": str(run_dir), "metrics": str(run_dir / "metrics.json"),
            "history": str(run_dir / "history.csv")}


def synth_study(root: str | Path, n_runs: int, seeds: Sequence[int] = (42, 123), n_rows: int = 20,
                diverge_every: int = 97, phase: str = "phase2", model: str = "tiny") -> list[dict]:
    """A phase-2-like study of about n_runs runs: a baseline, orthonoise / orthonoise-anneal / isotropic and
    further arm families over 5 alphas, len(seeds) seeds each; every `diverge_every`-th run diverges."""
    rng = np.random.default_rng(0)
    alphas = [1e-4, 1e-3, 5e-3, 1e-2, 5e-2]
    fams = ["orthonoise", "isotropic", "orthonoise-anneal"]
    groups = [("muon", None, "baseline")]
    i = 0
    while (len(groups)) * len(seeds) < n_runs:
        fam = fams[i] if i < len(fams) else f"arm{i:03d}"
        for a in alphas:
            if len(groups) * len(seeds) >= n_runs:
                break
            groups.append((fam, a, "arm"))
        i += 1
    out = []
    k = 0
    for arm, alpha, role in groups:
        base = 3.0 if arm == "muon" else 3.0 + 0.02 * rng.standard_normal() + (0.01 if arm == "isotropic" else 0)
        er = 20.0 if arm == "muon" else 24.0
        for s in seeds:
            k += 1
            div = diverge_every and k % diverge_every == 0 and role != "baseline"
            out.append(write_run(root, model=model, arm=arm, alpha=alpha, seed=s,
                                 final_loss=base + 0.005 * rng.standard_normal(), status="diverged" if div else "ok",
                                 diverged_step=200 if div else None, n_rows=n_rows,
                                 eff_rank=er + rng.standard_normal(), rng=rng, role=role, phase=phase))
    return out
