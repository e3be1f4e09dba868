"""design: the design check, before any GPU-hour. Per phase: which hypotheses its statistical gates test,
the Holm family size, the power of each at the gate's threshold with the phase's seeds, the seeds that
80% power would need, and the GPU-hours and cost of both.

`design(phases, ...)` is a pure function (no pandas; the Snakefile may call it at parse time for a
dry-run warning). A phase is

    {"seeds": [42, 123], "baseline": "muon",
     "configs": [{"model": "gpt-350m", "arm": "orthonoise", "variant": "alpha0.001", "role": "arm"}, ...],
     "gates": {name: {kind: ..., ...settings}},      # resolved again here
     "gpu_hours_per_run": 0.5,                        # or {model: hours}; null: unknown (cost n/a)
     "n_runs": 32,                                    # optional: runs as planned (default configs x seeds,
                                                      # baseline configs included)
     "scratch_seeds": [42]}                           # optional: the scratch pair's seeds (default: seeds)

The hypotheses are counted as analysis.gates forms them: one per judged configuration (an `arms` of null
means every main-family non-baseline configuration; 'selected' is one), arm_better_than_arm one per
'better' configuration, reaches_target_sooner one per scratch arm configuration. The power is that of the
one-sided test at level / K (K: the phase's family, Holm's worst case) with n seeds per side, paired
(every configuration of a phase runs the same seeds), uncorrelated pairs, at a true difference one
threshold from the boundary (analysis.gates). The sd (a fraction of the loss) is `noise[phase]` when
given (the pooled per-seed sd of the final loss in the earlier phases' runs.csv: `noise_from_runs`), else
`prior_sd`; metrics other than the loss and steps use `prior_sd_other`. A hypothesis below the gate's
power_floor is underpowered: the row says so, with the seeds that would fix it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from . import power as pw
from .gate_kinds import GATE_KINDS, SELECTED, resolve

COLUMNS = ["phase", "gate", "kind", "hypotheses", "k_family", "seeds", "sd", "sd_source", "threshold",
           "alpha_per_test", "power", "power_floor", "underpowered", "seeds_for_target", "runs", "gpu_hours",
           "cost_usd", "runs_at_target", "gpu_hours_at_target", "cost_usd_at_target"]


def with_floor(settings, power_floor):
    """The study's default power floor for a statistical gate that sets none."""
    kind = settings.get("kind") if isinstance(settings, Mapping) else None
    if power_floor is not None and kind in GATE_KINDS and GATE_KINDS[kind].statistical \
            and "power_floor" not in settings:
        return {**settings, "power_floor": float(power_floor)}
    return settings


def _main_arms(ph: Mapping) -> list[tuple]:
    base = ph.get("baseline")  # configs without a role: the baseline's arm is the baseline
    return sorted({(c["model"], c["arm"], c.get("variant", "default")) for c in ph.get("configs", [])
                   if c.get("role", "arm" if c["arm"] != base else "baseline") == "arm"})


def _count(st: dict, ph: Mapping) -> int:
    kind = st["kind"]
    arms = _main_arms(ph)

    def named(names):
        if names is None:
            return len(arms)
        return sum(1 if n == SELECTED else sum(1 for a in arms if a[1] == n) for n in names)
    if kind in ("within_baseline", "not_worse_than_baseline", "metric_higher"):
        return named(st.get("arms"))
    if kind == "beats_baseline":
        n = named(st.get("arms"))
        if st.get("model"):
            n = sum(1 for a in arms if a[0] == st["model"] and (st.get("arms") is None or a[1] in st["arms"]))
        return n
    if kind == "arm_better_than_arm":
        return max(named([st["better"]]), 1)
    if kind == "reaches_target_sooner":
        return len({(c["model"], c["arm"], c.get("variant")) for c in ph.get("configs", [])
                    if c.get("role") == "scratch_arm"})
    return 0


def _threshold(st: dict) -> float:
    k = st["kind"]
    if k in ("within_baseline", "not_worse_than_baseline"):
        return float(st["margin"])
    m = {"beats_baseline": "min_improvement", "arm_better_than_arm": "margin",
         "reaches_target_sooner": "min_speedup"}.get(k)
    if m and float(st[m]) > 0:
        return float(st[m])
    default = {"metric_higher": 0.05, "reaches_target_sooner": 0.1}.get(k, 0.01)
    return float(st.get("design_effect") or default)


def _gpu_hours(ph: Mapping, n_seeds: int) -> tuple[int, float]:
    per = ph.get("gpu_hours_per_run")
    configs = ph.get("configs", [])
    runs = len(configs) * n_seeds
    if per is None:
        return runs, math.nan
    if isinstance(per, Mapping):
        return runs, float(sum(float(per.get(c["model"], math.nan)) for c in configs) * n_seeds)
    return runs, float(per) * runs


def design(phases: Mapping[str, Mapping], *, prior_sd: float = 0.005, prior_sd_other: float = 0.05,
           noise: Mapping[str, tuple] | None = None, usd_per_gpu_hour: float = 0.0,
           power_target: float = 0.8, power_floor: float | None = None) -> list[dict]:
    """One row per (phase, statistical gate); COLUMNS. `power_floor`: the study's default for gates that
    set none."""
    rows = []
    for name, ph in phases.items():
        seeds = list(ph.get("seeds") or [])
        n = len(seeds)
        gates = {}
        for g, settings in (ph.get("gates") or {}).items():
            st, problems = resolve(f"phases.{name}.gates.{g}", with_floor(settings, power_floor))
            if problems:
                raise ValueError("; ".join(problems))
            if "power_floor" in st:
                gates[g] = st
        counts = {g: _count(st, ph) for g, st in gates.items()}
        k = sum(counts.values())
        sd_loss, src = (noise or {}).get(name, (None, None))
        if sd_loss is None or not (sd_loss > 0):
            sd_loss, src = prior_sd, "prior"
        runs, gh = _gpu_hours(ph, n)
        if ph.get("n_runs") is not None:
            runs = int(ph["n_runs"])
        for g, st in gates.items():
            thr = _threshold(st)
            loss_based = st["kind"] not in ("metric_higher", "reaches_target_sooner")
            sd, s_src = (sd_loss, src) if loss_based else (prior_sd_other, "prior (not the loss)")
            a = float(st["level"]) / max(k, 1)
            n_g = len(ph.get("scratch_seeds") or seeds) if st["kind"] == "reaches_target_sooner" else n
            p = pw.power(thr, sd, n_g, a) if n_g >= 2 and counts[g] else math.nan
            need = pw.seeds_needed(thr, sd, a, power_target) if counts[g] else None
            floor = float(st["power_floor"])
            r_t, gh_t = _gpu_hours(ph, need) if need else (None, math.nan)
            rows.append({"phase": name, "gate": g, "kind": st["kind"], "hypotheses": counts[g], "k_family": k,
                         "seeds": n_g, "sd": sd, "sd_source": s_src, "threshold": thr, "alpha_per_test": a,
                         "power": p, "power_floor": floor,
                         "underpowered": bool(counts[g]) and not (p >= floor),
                         "seeds_for_target": need, "runs": runs, "gpu_hours": gh,
                         "cost_usd": gh * usd_per_gpu_hour if math.isfinite(gh) else math.nan,
                         "runs_at_target": r_t, "gpu_hours_at_target": gh_t,
                         "cost_usd_at_target": gh_t * usd_per_gpu_hour if math.isfinite(gh_t) else math.nan})
    return rows


def warnings_for(rows: Sequence[Mapping]) -> list[str]:
    """One line per underpowered (phase, gate): what the dry run prints and the report shows."""
    out = []
    for r in rows:
        if r["underpowered"]:
            fix = (f"{r['seeds_for_target']} seeds per side would give 80%" if r["seeds_for_target"]
                   else "no seed count up to 10000 reaches 80%")
            cost = (f" ({r['runs_at_target']} runs, {r['gpu_hours_at_target']:.1f} GPU-h, "
                    f"USD {r['cost_usd_at_target']:.0f})" if r["seeds_for_target"] and
                    math.isfinite(r["gpu_hours_at_target"]) else "")
            pstr = f"{r['power']:.1%}" if math.isfinite(r["power"]) else "n/a (fewer than 2 seeds)"
            out.append(f"{r['phase']}: gate {r['gate']} ({r['kind']}) is underpowered: power {pstr} at its "
                       f"threshold {r['threshold']:.1%} with {r['seeds']} seeds, {r['hypotheses']} of "
                       f"{r['k_family']} Holm hypotheses, sd {r['sd']:.2%} ({r['sd_source']}); {fix}{cost}")
    return out


def noise_from_runs(tables: Sequence[Any], phase_order: Sequence[str], metric: str = "final_val_loss") -> dict:
    """{phase: (sd, source)} from earlier phases' runs tables (pandas DataFrames): the pooled relative
    within-configuration sd of the final loss over every main-family configuration, ok runs, of the
    phases before it."""
    import pandas as pd

    from .stats import pooled_rel_sd, with_family
    frames = [with_family(t) for t in tables if t is not None and len(t)]
    allr = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    out = {}
    for i, ph in enumerate(phase_order):
        earlier = list(phase_order[:i])
        if not len(allr) or not earlier:
            continue
        r = allr[allr["phase"].isin(earlier) & (allr["family"] == "main") & (allr["status"] == "ok")]
        if len(r) == 0:
            continue
        sd, dof = pooled_rel_sd(r, metric, ["phase", "model", "arm", "variant"])
        if dof >= 2:
            out[ph] = (sd, f"{', '.join(earlier)} runs ({dof} df)")
    return out


def _f(x, spec):
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _power_cell(r: Mapping) -> str:
    """The power column: bold with '(under floor)' when underpowered; 'n/a' where no power exists (one seed)."""
    p = _f(r["power"], ".1%") or "n/a"
    return f"**{p}** (under floor)" if r["underpowered"] else p


def design_markdown(rows: Sequence[Mapping], title: str = "Design check") -> str:
    from .io import md_table
    head = [f"### {title}", "",
            "Power of each statistical gate at its threshold (one-sided, Holm's worst-case level over the "
            "phase's hypotheses, paired seeds assumed uncorrelated), before any run; the seeds 80% power "
            "would need, and what they cost.", ""]
    t = md_table(["phase", "gate", "kind", "hyp. / family", "seeds", "sd", "threshold", "alpha per test",
                  "power", "seeds for 80%", "runs", "GPU-h", "USD", "GPU-h at 80%", "USD at 80%"],
                 [[r["phase"], r["gate"], r["kind"], f"{r['hypotheses']}/{r['k_family']}", r["seeds"],
                   f"{r['sd']:.2%} ({r['sd_source']})", f"{r['threshold']:.1%}", _f(r["alpha_per_test"], ".2g"),
                   _power_cell(r),
                   r["seeds_for_target"] or "", r["runs"], _f(r["gpu_hours"], ".1f"), _f(r["cost_usd"], ".0f"),
                   _f(r["gpu_hours_at_target"], ".1f"), _f(r["cost_usd_at_target"], ".0f")] for r in rows])
    w = warnings_for(rows)
    tail = ["", "**Underpowered:**", ""] + [f"- {x}" for x in w] if w else ["", "Every gate meets its power floor."]
    return "\n".join(head) + "\n" + t + "\n".join(tail) + "\n"


def design_from_files(phases: Mapping[str, Mapping], order: Sequence[str], runs_paths: Sequence[str] = (),
                      **kw) -> tuple[list[dict], list[str]]:
    """(rows, warnings) for the Snakefile's dry run: the runs.csv files that exist among `runs_paths` give
    the noise estimate (missing files are skipped), `kw` goes to `design` (prior_sd, usd_per_gpu_hour, ...)."""
    import os

    from .aggregate import read_runs
    tables = [read_runs(p) for p in runs_paths if os.path.isfile(p)]
    rows = design({k: phases[k] for k in order if k in phases}, noise=noise_from_runs(tables, list(order)), **kw)
    return rows, warnings_for(rows)
