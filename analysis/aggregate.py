"""aggregate: every run's metrics.json and history.csv into two tables (runs.csv, curves.csv).

Diverged runs are included (status "diverged", losses as recorded, or NaN when absent); nothing is dropped.
The run's identity (phase, role, model, arm, variant, param, value, alpha, seed, run_dir) comes from the
workflow's run list, the measurements from the trainer's files (keys as in docs/DESIGN.md). `variant` is
the path label of the swept value (`alpha0.001`, `lr0.003`, `default`): with (model, arm) it names one
configuration, and every grouping of the analysis uses it. `param` is the swept setting's dotted path
("" when none), `value` its number (NaN when none), `alpha` the OrthoNoise noise alpha (kept for the plots).
A record without `variant` (older run lists) gets `alpha<alpha>` or `default`.

`gpu_hours` is GPUs held x wall hours; `gpu_share` the fraction of them the run had (NaN: not measured, or
CPU); `gpu_hours_by_share` = gpu_hours x gpu_share (gpu_hours where no share was measured): what the report
counts.

Optional measurements (NaN, or 0 for the counts, when the run did not record them): bytes_sent_per_step and
allreduce_bytes_per_step (metrics["diagnostics"], means over steps; runs of world size > 1),
weight_norm_dev_mean and weight_norm_dev_max (metrics["diagnostics"], nGPT runs), n_record_errors and
n_checkpoint_fallbacks (lengths of metrics["record_errors"] / ["checkpoint_fallbacks"]; 0 when absent).
curves.csv carries bytes_sent_per_step and weight_norm_dev from history.csv (NaN where the column is absent).
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("analysis.aggregate")

ID_COLS = ["phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed"]
HEAD_COLS = ID_COLS + ["status", "diverged_step", "steps_completed", "final_val_loss", "best_val_loss"]
TAIL_COLS = ["eff_rank_mean", "noise_fraction_mean", "bytes_sent_per_step", "allreduce_bytes_per_step",
             "weight_norm_dev_mean", "weight_norm_dev_max", "n_record_errors", "n_checkpoint_fallbacks",
             "tokens_per_s", "wall_time_s", "gpu_hours", "gpu_share", "gpu_hours_by_share", "world_size", "wandb_id",
             "fingerprint", "run_dir"]
HISTORY_COLS = ["val_loss", "train_loss", "eff_rank_mean", "bytes_sent_per_step", "weight_norm_dev"]
CURVE_COLS = ["phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "step"] + HISTORY_COLS
ROLES = ("baseline", "arm", "scratch_baseline", "scratch_arm")


def _float(x: Any) -> float:
    """Number or NaN (None, '', unparsable -> NaN; inf stays inf, 'as recorded')."""
    if x is None or x == "":
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _int_or_nan(x: Any) -> float:
    f = _float(x)
    return f if math.isnan(f) else float(int(f))


def _key_sort(k: str) -> tuple:
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)


def _key_name(k: str) -> str:
    """'100' -> '100', '1000000' -> '1000000', '2.50' -> '2.5', '3.0' -> '3' (column suffix), anything else unchanged."""
    try:
        f = float(k)
    except ValueError:
        return str(k)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))  # steps: '5000', never '5e+03'
    return repr(f)  # losses: '2.5', '3.25'


def load_metrics(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"metrics file missing: {p}")
    redo = (f"the trainer writes it whole, last, so something else cut or changed it: delete {p.parent} "
            f"(or just that file) and rerun to train the run again")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: empty (0 bytes), not a run record; {redo}")
    with open(p, encoding="utf-8") as fh:
        try:
            m = json.load(fh)  # Python's json reads NaN/Infinity as floats
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not valid JSON ({e}); {redo}") from None
    if not isinstance(m, dict):
        raise ValueError(f"{p}: metrics.json must hold an object, got {type(m).__name__}")
    return m


def variant_of(meta: Mapping[str, Any]) -> str:
    v = meta.get("variant")
    if v not in (None, ""):
        return str(v)
    a = _float(meta.get("alpha"))
    return f"alpha{format(a, 'g')}" if math.isfinite(a) else "default"


def _count(x: Any) -> int:
    """Length of a recorded list (None / absent -> 0; a non-list value counts as one entry)."""
    if x is None:
        return 0
    return len(x) if isinstance(x, (list, tuple, dict)) else 1


def run_record(meta: Mapping[str, Any], metrics: Mapping[str, Any], phase: str | None = None) -> dict:
    """One runs.csv row (without the dynamic val_loss_at_/steps_to_ columns order)."""
    diag = metrics.get("diagnostics")
    diag = diag if isinstance(diag, dict) else {}
    wandb = metrics.get("wandb") or {}
    role = meta.get("role") or "arm"
    if role not in ROLES:
        raise ValueError(f"run {meta.get('run_dir')}: role {role!r} is not one of {ROLES}")
    rec = {
        "phase": meta.get("phase") or phase,
        "role": role,
        "model": str(meta["model"]),
        "arm": str(meta["arm"]),
        "variant": variant_of(meta),
        "param": str(meta.get("param") or ""),
        "value": _float(meta.get("value")),
        "alpha": _float(meta.get("alpha")),
        "seed": int(meta["seed"]),
        "status": str(metrics.get("status") or "unknown"),
        "diverged_step": _int_or_nan(metrics.get("diverged_step")),
        "steps_completed": _int_or_nan(metrics.get("steps_completed")),
        "final_val_loss": _float(metrics.get("final_val_loss")),
        "best_val_loss": _float(metrics.get("best_val_loss")),
        "eff_rank_mean": _float(diag.get("eff_rank_mean")),
        "noise_fraction_mean": _float(diag.get("noise_fraction_mean")),
        "bytes_sent_per_step": _float(diag.get("bytes_sent_per_step")),
        "allreduce_bytes_per_step": _float(diag.get("allreduce_bytes_per_step")),
        "weight_norm_dev_mean": _float(diag.get("weight_norm_dev_mean")),
        "weight_norm_dev_max": _float(diag.get("weight_norm_dev_max")),
        "n_record_errors": _count(metrics.get("record_errors")),
        "n_checkpoint_fallbacks": _count(metrics.get("checkpoint_fallbacks")),
        "tokens_per_s": _float(metrics.get("tokens_per_s")),
        "wall_time_s": _float(metrics.get("wall_time_s")),
        "gpu_hours": _float(metrics.get("gpu_hours")),
        # the fraction of its GPUs the run had (trainer/gpu_share.py); GPU-h by share counts whole GPUs without it
        "gpu_share": _float(metrics.get("gpu_share")),
        "gpu_hours_by_share": _float(metrics.get("gpu_hours")) * (
            _float(metrics.get("gpu_share")) if math.isfinite(_float(metrics.get("gpu_share"))) else 1.0),
        "world_size": _int_or_nan(metrics.get("world_size")),
        "wandb_id": (wandb.get("id") if isinstance(wandb, dict) else None) or "",
        "fingerprint": metrics.get("fingerprint") or "",
        "run_dir": str(meta.get("run_dir") or ""),
    }
    for k, v in (metrics.get("val_loss_at") or {}).items():
        rec[f"val_loss_at_{_key_name(k)}"] = _float(v)
    for k, v in (metrics.get("steps_to_loss") or {}).items():
        rec[f"steps_to_{_key_name(k)}"] = _float(v)
    return rec


def read_history(path: str | Path) -> dict[str, list[float]]:
    """history.csv -> columns step + HISTORY_COLS (val_loss, train_loss, eff_rank_mean, bytes_sent_per_step,
    weight_norm_dev; NaN where empty or where the file has no such column).

    Uses the csv module (a pandas reader per file costs ~1 ms; this is ~20x cheaper at 1000 runs).
    """
    p = Path(path)
    out: dict[str, list[float]] = {c: [] for c in ["step"] + HISTORY_COLS}
    if not p.is_file():
        raise FileNotFoundError(f"history file missing: {p}")
    with open(p, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            return out
        idx = {name.strip(): i for i, name in enumerate(header)}
        if "step" not in idx:
            raise ValueError(f"{p}: history.csv has no 'step' column (header: {header})")
        cols = [(c, idx.get(c)) for c in HISTORY_COLS]
        si = idx["step"]
        for row in reader:
            if not row or si >= len(row):
                continue
            step = _float(row[si])
            if math.isnan(step):
                continue
            out["step"].append(step)
            for c, i in cols:
                out[c].append(_float(row[i]) if i is not None and i < len(row) else math.nan)
    return out


def _ordered_columns(cols: Sequence[str]) -> list[str]:
    vl = sorted((c for c in cols if c.startswith("val_loss_at_")), key=lambda c: _key_sort(c[12:]))
    st = sorted((c for c in cols if c.startswith("steps_to_")), key=lambda c: _key_sort(c[9:]))
    return HEAD_COLS + vl + st + TAIL_COLS


def aggregate(metrics_paths: Sequence[str], history_paths: Sequence[str], runs: Sequence[Mapping[str, Any]],
              phase: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build (runs, curves) tables. The three lists are parallel (same order)."""
    metrics_paths, history_paths, runs = list(metrics_paths), list(history_paths), list(runs)
    if not (len(metrics_paths) == len(history_paths) == len(runs)):
        raise ValueError(f"aggregate: {len(metrics_paths)} metrics, {len(history_paths)} histories and "
                         f"{len(runs)} run records: the three lists must be parallel")
    records = []
    curves: dict[str, list] = {c: [] for c in CURVE_COLS}
    seen: set[tuple] = set()
    for mp, hp, meta in zip(metrics_paths, history_paths, runs):
        m = load_metrics(mp)
        rec = run_record(meta, m, phase)
        rec["phase"] = phase
        key = (rec["role"], rec["model"], rec["arm"], rec["variant"], rec["seed"])
        if key in seen:
            raise ValueError(f"aggregate: run {key} listed twice")
        seen.add(key)
        if rec["status"] not in ("ok", "diverged"):
            log.warning("run %s has status %r", rec["run_dir"], rec["status"])
        records.append(rec)
        h = read_history(hp)
        n = len(h["step"])
        for c in ("role", "model", "arm", "variant", "param", "value", "alpha", "seed"):
            curves[c].extend([rec[c]] * n)
        curves["phase"].extend([phase] * n)
        for c in ["step"] + HISTORY_COLS:
            curves[c].extend(h[c])
    cols = _ordered_columns(sorted({k for r in records for k in r}))
    runs_df = pd.DataFrame.from_records(records, columns=cols) if records else pd.DataFrame(columns=cols)
    curves_df = pd.DataFrame(curves, columns=CURVE_COLS)
    if len(curves_df):
        curves_df["step"] = curves_df["step"].astype(np.int64)  # every history row kept, NaN as recorded
    log.info("aggregated %d runs (%d diverged), %d curve rows", len(runs_df),
             int((runs_df["status"] == "diverged").sum()) if len(runs_df) else 0, len(curves_df))
    return runs_df, curves_df


def read_runs(path: str | Path) -> pd.DataFrame:
    """runs.csv back into a DataFrame with the right dtypes (strings stay strings)."""
    df = pd.read_csv(path, dtype={"phase": str, "role": str, "model": str, "arm": str, "variant": str,
                                  "param": str, "status": str, "wandb_id": str, "fingerprint": str,
                                  "run_dir": str})
    for c in ("wandb_id", "fingerprint", "run_dir", "param"):
        if c in df:
            df[c] = df[c].fillna("")
    return df


def read_curves(path: str | Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"phase": str, "role": str, "model": str, "arm": str, "variant": str,
                                      "param": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=CURVE_COLS)
    if "param" in df:
        df["param"] = df["param"].fillna("")
    return df
