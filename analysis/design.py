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
from .gate_kinds import GATE_KINDS, DesignArms, resolve

COLUMNS = ["phase", "gate", "kind", "hypotheses", "k_family", "seeds", "sd", "sd_source", "threshold",
           "alpha_per_test", "power", "gate_power", "power_floor", "underpowered", "seeds_for_target", "runs", "gpu_hours",
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


def design_arms(ph: Mapping) -> DesignArms:
    """What GateKind.hypotheses reads of a phase: its main and scratch arm configurations and the arms
    'selected' stands for (`selected_arms` of the phase: a list, or {reference: arms} with several named
    selections, 'selected:NAME' each; every variant of them is judged)."""
    scratch = sorted({(c["model"], c["arm"], c.get("variant", "default")) for c in ph.get("configs", [])
                      if c.get("role") == "scratch_arm"})
    sel = ph.get("selected_arms")
    if isinstance(sel, Mapping):  # {reference: arms} of a phase with several (named) selections
        by = tuple((str(r), tuple(a or ())) for r, a in sel.items())
        plain = dict(by).get("selected")
        return DesignArms(main=tuple(_main_arms(ph)), scratch=tuple(scratch), selected=plain or None,
                          selected_by=by)
    return DesignArms(main=tuple(_main_arms(ph)), scratch=tuple(scratch), selected=tuple(sel) if sel else None)


def _count(st: dict, ph: Mapping) -> int:
    """Hypotheses of a resolved statistical gate: its kind's declaration (gate_kinds.GateKind.hypotheses)."""
    return int(GATE_KINDS[st["kind"]].hypotheses(st, design_arms(ph)))


def _threshold(st: dict) -> float:
    """The true difference the power is computed at: its kind's declaration (GateKind.distance), the same
    figure the gates report as their power at the threshold."""
    return float(GATE_KINDS[st["kind"]].distance(st))


def _is_scratch(c: Mapping) -> bool:
    return str(c.get("role", "")).startswith("scratch")


def _gpu_hours(ph: Mapping, n_seeds: int, n_scratch: int | None = None) -> tuple[int, float]:
    """(runs, GPU-hours) with n_seeds per main configuration and n_scratch (default: the phase's scratch
    seeds, else n_seeds) per scratch configuration: every run counted once."""
    per = ph.get("gpu_hours_per_run")
    configs = ph.get("configs", [])
    if n_scratch is None:
        n_scratch = len(ph.get("scratch_seeds") or []) or n_seeds
    seeds = [n_scratch if _is_scratch(c) else n_seeds for c in configs]
    runs = int(sum(seeds))
    if per is None:
        return runs, math.nan
    if isinstance(per, Mapping):
        return runs, float(sum(float(per.get(c["model"], math.nan)) * k for c, k in zip(configs, seeds)))
    return runs, float(per) * runs


SIM_REPS = 4000  # replicates of the design's gate-power simulation (binomial se <= 0.8 points)


def gate_power(hyps: Sequence[Mapping], *, reps: int = SIM_REPS, seed: int = 0) -> dict[str, float]:
    """P(each gate passes | every claim of the phase holds at its design distance), by simulation with the
    gates' own tests: per hypothesis, n seed-matched pairs, the arm at its distance beyond the boundary
    (sd `sd` per run, as a fraction), one one-sided paired t per hypothesis, Holm over the phase's family
    (PASS when Holm p < the gate's level), the kind's mode ("any" / "all") over the gate's hypotheses.
    Hypotheses against the baseline on the same quantity share one baseline draw (their correlation);
    an arm-vs-arm reference is its own draw. hyps: [{gate, mode, n, distance, sd, level, shared}]."""
    from scipy import special
    import numpy as np
    if not hyps:
        return {}
    rng = np.random.default_rng(seed)
    n_max = max(int(h["n"]) for h in hyps)
    base = {}
    p = np.empty((reps, len(hyps)))
    for j, h in enumerate(hyps):
        n, sd = int(h["n"]), float(h["sd"])
        if n < 2 or not sd > 0:
            p[:, j] = 1.0
            continue
        key = h.get("shared")
        if key is not None:
            if key not in base:
                base[key] = rng.standard_normal((reps, n_max))
            zb = base[key][:, :n]
        else:
            zb = rng.standard_normal((reps, n))
        d = float(h["distance"]) + sd * (rng.standard_normal((reps, n)) - zb)  # the claim's side, positive
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
        p[:, j] = special.stdtr(n - 1, -t)
    order = np.argsort(p, axis=1)
    ps = np.take_along_axis(p, order, axis=1)
    k = p.shape[1]
    adj_sorted = np.minimum(1.0, np.maximum.accumulate(ps * (k - np.arange(k)), axis=1))
    adj = np.empty_like(adj_sorted)
    np.put_along_axis(adj, order, adj_sorted, axis=1)
    out = {}
    for g in dict.fromkeys(h["gate"] for h in hyps):
        idx = [j for j, h in enumerate(hyps) if h["gate"] == g]
        ok = adj[:, idx] < np.array([float(hyps[j]["level"]) for j in idx])
        out[g] = float((ok.any(axis=1) if hyps[idx[0]]["mode"] == "any" else ok.all(axis=1)).mean())
    return out


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
        n_scr = len(ph.get("scratch_seeds") or seeds)
        runs, gh = _gpu_hours(ph, n, n_scr)
        if ph.get("n_runs") is not None:
            runs = int(ph["n_runs"])
        per_gate, sim = {}, []
        for g, st in gates.items():
            gk = GATE_KINDS[st["kind"]]
            thr = _threshold(st)
            qty = gk.quantity(st)
            sd, s_src = (sd_loss, src) if qty == "loss" or qty.startswith("val_loss_at_") else \
                (prior_sd_other, "prior (not the loss)")
            if st["kind"] == "interaction":
                sd, s_src = 2 * sd, s_src + " x 2 (a difference of two rises)"
            a = float(st["level"]) / max(k, 1)
            n_g = n_scr if qty == "steps" else n
            per_gate[g] = (thr, sd, s_src, a, n_g)
            shared = None if st["kind"] in ("arm_better_than_arm", "any_better_than_arm", "interaction") else qty
            sim += [{"gate": g, "mode": gk.mode, "n": n_g, "distance": thr, "sd": sd,
                     "level": float(st["level"]), "shared": shared}] * counts[g]
        gp = gate_power([dict(h) for h in sim])
        for g, st in gates.items():
            thr, sd, s_src, a, n_g = per_gate[g]
            p = pw.power(thr, sd, n_g, a) if n_g >= 2 and counts[g] else math.nan
            need = pw.seeds_needed(thr, sd, a, power_target) if counts[g] else None
            floor = float(st["power_floor"])
            if need:
                r_t, gh_t = _gpu_hours(ph, need, need if GATE_KINDS[st["kind"]].quantity(st) == "steps" else n_scr)
            else:
                r_t, gh_t = None, math.nan
            rows.append({"phase": name, "gate": g, "kind": st["kind"], "hypotheses": counts[g], "k_family": k,
                         "seeds": n_g, "sd": sd, "sd_source": s_src, "threshold": thr, "alpha_per_test": a,
                         "power": p, "gate_power": gp.get(g, math.nan), "power_floor": floor,
                         "underpowered": bool(counts[g]) and not (p >= floor),
                         "seeds_for_target": need, "runs": runs, "gpu_hours": gh,
                         "cost_usd": gh * usd_per_gpu_hour if math.isfinite(gh) else math.nan,
                         "runs_at_target": r_t, "gpu_hours_at_target": gh_t,
                         "cost_usd_at_target": gh_t * usd_per_gpu_hour if math.isfinite(gh_t) else math.nan})
    return rows


def _projected(r: Mapping) -> str:
    """The at-80% GPU-h projected from measured runs (analysis/costs.project_design_rows), when there are some."""
    p = r.get("gpu_hours_at_target_projected")
    if not isinstance(p, float) or not math.isfinite(p):
        return ""
    return f" at the time limits; {p:.2f} GPU-h projected from measured runs ({r.get('projection_source')})"


def warnings_for(rows: Sequence[Mapping]) -> list[str]:
    """One line per underpowered (phase, gate): what the dry run prints and the report shows."""
    out = []
    for r in rows:
        if r["underpowered"]:
            fix = (f"{r['seeds_for_target']} seeds per side would give 80%" if r["seeds_for_target"]
                   else "no seed count up to 10000 reaches 80%")
            cost = (f" ({r['runs_at_target']} runs, {r['gpu_hours_at_target']:.1f} GPU-h, "
                    f"USD {r['cost_usd_at_target']:.0f}" + _projected(r) + ")" if r["seeds_for_target"] and
                    math.isfinite(r["gpu_hours_at_target"]) else "")
            pstr = f"{r['power']:.1%}" if math.isfinite(r["power"]) else "n/a (fewer than 2 seeds)"
            gp = r.get("gate_power")
            gstr = f" (P(gate passes) {gp:.1%}, simulated)" if isinstance(gp, float) and math.isfinite(gp) else ""
            out.append(f"{r['phase']}: gate {r['gate']} ({r['kind']}) is underpowered: power {pstr}{gstr} at its "
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


def design_markdown(rows: Sequence[Mapping], title: str = "Design check", tiny: bool = False) -> str:
    from .io import md_table
    head = [f"### {title}", "",
            "Before any run, per statistical gate: **power per hypothesis** (one hypothesis at its threshold: "
            "one-sided, Holm's worst-case level alpha / K over the phase's K hypotheses, paired seeds assumed "
            "uncorrelated; the seeds 80% of it would need, and what they cost) and **P(gate passes)** (the "
            "gate as a whole when every claim of the phase holds at its threshold: simulated with the gates' "
            f"tests and Holm over the phase, {SIM_REPS} replicates; a gate of several hypotheses that all must "
            "pass is less likely to pass than one of them, an any-of gate more). A gate below its floor is "
            "underpowered; the verdict itself never depends on power. Runs and GPU-hours count every run "
            "(scratch pairs at their own seeds); GPU-hours are Slurm time limits x GPUs, an upper bound "
            "(the report's cost table sets what the runs measured beside them, and projects from it).", ""]
    if tiny:
        head += ["**CPU twin:** the runs, GPU-hours and USD below are the twin's planned runs at its Slurm time "
                 "limits and the real study's price per GPU-hour; the twin runs on CPU and costs nothing. The "
                 "power figures are those of the twin's seeds.", ""]
    t = md_table(["phase", "gate", "kind", "hyp. / family", "seeds", "sd", "threshold", "alpha per test",
                  "power per hypothesis", "P(gate passes), simulated", "seeds for 80%", "runs", "GPU-h", "USD", "GPU-h at 80%", "USD at 80%"],
                 [[r["phase"], r["gate"], r["kind"], f"{r['hypotheses']}/{r['k_family']}", r["seeds"],
                   f"{r['sd']:.2%} ({r['sd_source']})", f"{r['threshold']:.1%}", _f(r["alpha_per_test"], ".2g"),
                   _power_cell(r),
                   _f(r.get("gate_power"), ".1%") or "n/a",
                   r["seeds_for_target"] or "", r["runs"], _f(r["gpu_hours"], ".1f"), _f(r["cost_usd"], ".0f"),
                   _f(r["gpu_hours_at_target"], ".1f"), _f(r["cost_usd_at_target"], ".0f")] for r in rows])
    w = warnings_for(rows)
    tail = ["", "**Underpowered:**", ""] + [f"- {x}" for x in w] if w else ["", "Every gate meets its power floor."]
    return "\n".join(head) + "\n" + t + "\n".join(tail) + "\n"


def design_from_files(phases: Mapping[str, Mapping], order: Sequence[str], runs_paths: Sequence[str] = (),
                      **kw) -> tuple[list[dict], list[str]]:
    """(rows, warnings) for the Snakefile's dry run: the runs.csv files that exist among `runs_paths` give
    the noise estimate and the measured cost per run the GPU-hours are projected from (missing files are
    skipped), `kw` goes to `design` (prior_sd, usd_per_gpu_hour, ...)."""
    import os

    from .aggregate import read_runs
    from .costs import project_design_rows

    tables = [read_runs(p) for p in runs_paths if os.path.isfile(p)]
    rows = design({k: phases[k] for k in order if k in phases}, noise=noise_from_runs(tables, list(order)), **kw)
    # the GPU-h the runs on disk measured give the projections (read, never inputs: no job waits for them)
    rows = project_design_rows(rows, phases, tables)
    return rows, warnings_for(rows)
