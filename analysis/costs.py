"""costs: a phase's GPU-hours as planned (Slurm time limits x GPUs: the design check's upper bound) beside what
its runs measured, counted by share, and the projection from the measured cost per run.

- **By share**: a run's GPU-h = `gpu_hours` (GPUs held x wall) x `gpu_share` (the fraction of those GPUs it had,
  trainer/gpu_share.py); a record without a measured share counts its whole GPUs.
- **Measured**: the runs of the phase with a record (`k of n`), their GPU-h by share and unshared.
- **Projected**: per model, the mean GPU-h by share of the measured GPU runs x the runs planned (the phase's own
  runs of that model, else the study's measured runs of that model, else the time limit: the source says
  which). The "at 80% power" figures scale the design's at-80% GPU-h by the same ratio projected / planned.
- CPU runs (the twins) measure 0 GPU-h: nothing is projected from them.

No rule takes runs as inputs for this before they exist: the report (downstream of the runs) shows the table,
and the dry run's design-check lines read the runs.csv files already on disk (rules/common.smk).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def _num(x: Any) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return math.nan
    return f


def _is_scratch(c: Mapping) -> bool:
    return str(c.get("role", "")).startswith("scratch")


def planned(ph: Mapping) -> dict:
    """What a design entry (analysis/design.py's phase) plans: runs per model (main configurations at the
    phase's seeds, scratch ones at theirs), GPU-h per run (the time limit x GPUs; None: unknown) and in all."""
    n = len(ph.get("seeds") or [])
    n_scr = len(ph.get("scratch_seeds") or []) or n
    by_model: dict[str, int] = {}
    for c in ph.get("configs") or []:
        by_model[str(c["model"])] = by_model.get(str(c["model"]), 0) + (n_scr if _is_scratch(c) else n)
    per = ph.get("gpu_hours_per_run")
    per_model = {m: (_num(per.get(m)) if isinstance(per, Mapping) else _num(per)) for m in by_model}
    gh = sum(k * per_model[m] for m, k in by_model.items()) if by_model else math.nan
    runs = int(ph["n_runs"]) if ph.get("n_runs") is not None else sum(by_model.values())
    return {"runs": runs, "runs_by_model": by_model,
            "gpu_hours_per_run": {m: (h if math.isfinite(h) else None) for m, h in per_model.items()},
            "gpu_hours": gh if math.isfinite(gh) else None}


def by_share(runs) -> tuple[Any, Any, Any]:
    """(GPU-h by share, GPU-h as held, share) per row of a runs table (pandas); a row without a measured
    share counts as held. Works on runs.csv files written before the share existed."""
    import pandas as pd

    held = pd.to_numeric(runs["gpu_hours"], errors="coerce") if "gpu_hours" in runs else \
        pd.Series(math.nan, index=runs.index)
    share = pd.to_numeric(runs["gpu_share"], errors="coerce") if "gpu_share" in runs else \
        pd.Series(math.nan, index=runs.index)
    return held * share.where(share.notna(), 1.0), held, share


def measured(runs) -> dict:
    """Per model of a runs table: {n (runs with a GPU-h record), n_gpu (of them on a GPU: GPU-h > 0),
    gpu_hours (by share), gpu_hours_unshared, n_shared (runs whose share was < 1)}."""
    out: dict[str, dict] = {}
    if runs is None or len(runs) == 0:
        return out
    bs, held, share = by_share(runs)
    for m in sorted(set(runs["model"].astype(str))):
        sel = (runs["model"].astype(str) == m) & held.notna()
        gpu = sel & (held > 0)
        out[m] = {"n": int(sel.sum()), "n_gpu": int(gpu.sum()), "gpu_hours": float(bs[gpu].sum()),
                  "gpu_hours_unshared": float(held[gpu].sum()), "n_shared": int((gpu & (share < 1 - 1e-9)).sum())}
    return out


def _merge(parts: Sequence[Mapping]) -> dict:
    out: dict[str, dict] = {}
    for p in parts:
        for m, v in p.items():
            o = out.setdefault(m, {"n": 0, "n_gpu": 0, "gpu_hours": 0.0, "gpu_hours_unshared": 0.0, "n_shared": 0})
            for k in o:
                o[k] += v[k]
    return out


def project(plan: Mapping, own: Mapping, study: Mapping | None = None) -> dict:
    """The phase's GPU-h projected from measured cost per run: per planned model, the mean by share over its
    measured GPU runs in this phase (`own`), else over the study's (`study`), else its time limit.
    {gpu_hours (None when nothing measured applies), ratio (projected / planned), source}."""
    total, planned_total, used, fell_back = 0.0, 0.0, [], []
    any_measured = False
    for m, k in sorted((plan.get("runs_by_model") or {}).items()):
        lim = _num((plan.get("gpu_hours_per_run") or {}).get(m))
        planned_total += k * lim if math.isfinite(lim) else math.nan
        for where, src in (("this phase", own), ("the study", study or {})):
            v = src.get(m)
            if v and v["n_gpu"]:
                total += k * v["gpu_hours"] / v["n_gpu"]
                used.append(f"{m}: mean of {v['n_gpu']} measured run(s) of {where}")
                any_measured = True
                break
        else:
            total += k * lim if math.isfinite(lim) else math.nan
            fell_back.append(m)
    if not any_measured or not math.isfinite(total):
        return {"gpu_hours": None, "ratio": None, "source": "no GPU run measured yet"}
    src = "; ".join(used) + (f"; {', '.join(fell_back)} at the time limit" if fell_back else "")
    ratio = total / planned_total if math.isfinite(planned_total) and planned_total > 0 else None
    return {"gpu_hours": total, "ratio": ratio, "source": src}


def cost_rows(plans: Mapping[str, Mapping], runs_by_phase: Mapping[str, Any], usd_per_gpu_hour: float = 0.0
              ) -> list[dict]:
    """One row per phase of `plans` ({phase: planned(...)}) that the report holds (`runs_by_phase`: its
    runs table, pandas)."""
    own = {ph: measured(t) for ph, t in runs_by_phase.items()}
    study = _merge(list(own.values()))
    rows = []
    for ph, t in runs_by_phase.items():
        plan = plans.get(ph) or {}
        mine = own[ph]
        n_rec = sum(v["n"] for v in mine.values())
        gh = sum(v["gpu_hours"] for v in mine.values())
        un = sum(v["gpu_hours_unshared"] for v in mine.values())
        n_gpu = sum(v["n_gpu"] for v in mine.values())
        pr = project(plan, mine, study)
        usd = float(usd_per_gpu_hour or 0)
        rows.append({"phase": ph, "runs_planned": plan.get("runs"), "gpu_hours_planned": plan.get("gpu_hours"),
                     "runs_measured": n_rec, "runs_gpu": n_gpu, "gpu_hours_measured": gh,
                     "gpu_hours_unshared": un, "n_shared": sum(v["n_shared"] for v in mine.values()),
                     "gpu_hours_per_run": gh / n_gpu if n_gpu else None,
                     "gpu_hours_projected": pr["gpu_hours"], "ratio": pr["ratio"], "projection_source": pr["source"],
                     "usd_planned": plan["gpu_hours"] * usd if plan.get("gpu_hours") is not None else None,
                     "usd_projected": pr["gpu_hours"] * usd if pr["gpu_hours"] is not None else None})
    return rows


def _f(x, spec: str) -> str:
    f = _num(x)
    return format(f, spec) if math.isfinite(f) else "n/a"


def cost_markdown(rows: Sequence[Mapping], design_rows: Sequence[Mapping] = (), usd_per_gpu_hour: float = 0.0,
                  tiny: bool = False) -> str:
    """The report's cost table (planned | measured (k of n) | projected) and the gates' "at 80% power"
    figures projected the same way."""
    from .io import md_escape, md_table

    if not rows:
        return ""
    head = ["### Cost: planned and measured", "",
            "Per phase: the GPU-hours the design check planned (Slurm time limits x GPUs, an upper bound), what the "
            "phase's runs measured (GPU-h by share: wall x GPUs x the fraction of the GPU each run had; unshared: "
            "wall x GPUs held), and the projection from the measured mean per run x the runs planned (per model; "
            "the source says whose runs). A run that several phases list is counted in each.", ""]
    if tiny:
        head += ["**CPU twin:** the planned figures are the twin's Slurm time limits at the real study's price "
                 "per GPU-hour; the twin's runs ran on CPU and measured no GPU-hours, so nothing is projected "
                 "from them.", ""]
    usd = float(usd_per_gpu_hour or 0)
    body = []
    for r in rows:
        meas = (f"{_f(r['gpu_hours_measured'], '.3f')}" + (f" ({_f(r['gpu_hours_unshared'], '.3f')} unshared, "
                                                            f"{r['n_shared']} run(s) shared a GPU)"
                                                            if r["n_shared"] else "")
                if r["runs_gpu"] else ("0 (CPU)" if r["runs_measured"] else "n/a"))
        body.append([r["phase"], r["runs_planned"] if r["runs_planned"] is not None else "n/a",
                     _f(r["gpu_hours_planned"], ".1f"), f"{r['runs_measured']} of {r['runs_planned']}"
                     if r["runs_planned"] is not None else str(r["runs_measured"]), meas,
                     _f(r["gpu_hours_per_run"], ".4f"), _f(r["gpu_hours_projected"], ".3f"),
                     _f(r["usd_planned"], ".0f") + " / " + _f(r["usd_projected"], ".2f"),
                     md_escape(r["projection_source"])])
    t = md_table(["phase", "runs planned", "GPU-h planned (time limits)", "runs measured",
                  "GPU-h measured (by share)", "GPU-h per run (measured)", "GPU-h projected (per run x runs)",
                  f"USD planned / projected (@ {usd:g}/GPU-h)", "projected from"], body)
    out = "\n".join(head) + "\n" + t
    ratio = {r["phase"]: r["ratio"] for r in rows}
    at = []
    for d in design_rows:
        if d.get("phase") not in ratio or not d.get("seeds_for_target"):
            continue
        ght = _num(d.get("gpu_hours_at_target"))
        rt = ratio[d["phase"]]
        at.append([d["phase"], md_escape(d["gate"]), d["seeds_for_target"], d.get("runs_at_target") or "",
                   _f(ght, ".1f"), _f(ght * rt, ".2f") if rt is not None else "n/a",
                   _f(ght * rt * usd, ".2f") if rt is not None else "n/a"])
    if at:
        out += ("\nAt 80% power per hypothesis (the design check's seeds), planned at the time limits and "
                "projected at the phase's measured / planned ratio:\n\n"
                + md_table(["phase", "gate", "seeds for 80%", "runs", "GPU-h planned", "GPU-h projected",
                            "USD projected"], at))
    return out


def project_design_rows(rows: Sequence[dict], phases: Mapping[str, Mapping], tables: Sequence[Any]) -> list[dict]:
    """The design rows with `gpu_hours_projected`, `gpu_hours_at_target_projected` and `projection_source`
    from the measured runs in `tables` (the runs.csv files on disk: the dry run's design check reads them
    without making them inputs). Rows stay as they are when no GPU run is measured."""
    own = {}
    for t in tables:
        if t is not None and len(t) and "phase" in t:
            for ph in set(t["phase"].astype(str)):
                own[ph] = _merge([own.get(ph, {}), measured(t[t["phase"].astype(str) == ph])])
    study = _merge(list(own.values()))
    if not any(v["n_gpu"] for v in study.values()):
        return list(rows)
    out = []
    for r in rows:
        pr = project(planned(phases.get(r["phase"]) or {}), own.get(r["phase"], {}), study)
        r = dict(r)
        if pr["ratio"] is not None:
            r["gpu_hours_projected"] = _num(r.get("gpu_hours")) * pr["ratio"]
            r["gpu_hours_at_target_projected"] = _num(r.get("gpu_hours_at_target")) * pr["ratio"]
            r["projection_source"] = pr["source"]
        out.append(r)
    return out


def projection_lines(phases: Mapping[str, Mapping], order: Sequence[str], runs_by_phase: Mapping[str, Any],
                     usd_per_gpu_hour: float = 0.0) -> list[str]:
    """The dry run's cost lines: for each phase of `order` with no runs table yet, its planned GPU-h (time
    limits) and the projection from the GPU runs measured so far (`runs_by_phase`: the runs.csv files on
    disk). None when no GPU run is measured (a fresh study, a CPU twin): the design check's plan stands."""
    own = {ph: measured(t) for ph, t in runs_by_phase.items() if t is not None}
    study = _merge(list(own.values()))
    if not any(v["n_gpu"] for v in study.values()):
        return []
    usd = float(usd_per_gpu_hour or 0)
    out = []
    for ph in order:
        if ph in own or ph not in phases:
            continue
        plan = planned(phases[ph])
        pr = project(plan, {}, study)
        if pr["gpu_hours"] is None:
            continue
        out.append(f"{ph}: {plan['runs']} runs, {_f(plan['gpu_hours'], '.1f')} GPU-h at the time limits "
                   f"(USD {_f(_num(plan['gpu_hours']) * usd, '.0f')}); {pr['gpu_hours']:.2f} GPU-h projected "
                   f"(USD {pr['gpu_hours'] * usd:.2f}) from {pr['source']}")
    return out
