"""verdict_sim: the gates' verdicts by simulation, vectorized (thousands of replicates in a second), for the
operating characteristics of each gate kind: how often a gate PASSes or FAILs when the truth sits at its
boundary (a true effect equal to the threshold), with no effect at all (A/A), or one design distance
beyond the boundary (the power the design check reports).

The kernel repeats what analysis.gates does for one hypothesis whose seeds pair (every study runs the same
seeds on every configuration): the one-sided paired t of a - boundary x b (stats.ratio_test), PASS when
p < level, FAIL when the opposite side's p < level, INSUFFICIENT otherwise (a family of one: Holm is the
identity; larger families only lower both rates). `draws` returns the per-seed values too, so that
tests/test_gates_simulation.py feeds a sample of them through analysis.gates.evaluate_gates itself and
checks the verdicts agree one for one. No pandas here.

Scenarios per kind (`scenario`): the reference sits at 1 (a loss, a metric, or steps as a multiple of
the run's length), the judged side at `truth`, with relative noise `sd` per run:
- "aa": the judged side equals the reference (truth 1; for interaction a rise difference of 0);
- "boundary": truth = the claim's boundary (beats_baseline m: 1 - m; within_baseline m: 1 + m);
- "design": one design distance beyond the boundary, on the claim's side (the design check's power).
reaches_target_sooner is simulated from linear loss curves as its gate reads them (the baseline's seeds
that do not reach the baseline's own mean final loss count at the last step), interaction from four
configurations per seed (arm and reference, at the start setting and at the changed one).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

from .gate_kinds import GATE_KINDS, resolve

KINDS = ("within_baseline", "beats_baseline", "not_worse_than_baseline", "metric_higher", "arm_better_than_arm",
         "any_better_than_arm", "interaction", "reaches_target_sooner")
# settings each kind is simulated with (the studies' typical thresholds)
SETTINGS = {
    "within_baseline": {"margin": 0.05},
    "beats_baseline": {"min_improvement": 0.01},
    "not_worse_than_baseline": {"margin": 0.01},
    "metric_higher": {"arms": ["on"]},
    "arm_better_than_arm": {"better": "on", "worse": "ref", "margin": 0.0},
    "any_better_than_arm": {"arms": ["on"], "worse": "ref"},
    "interaction": {"arm": "on", "ref": "ref", "start": "k1"},
    "reaches_target_sooner": {"min_speedup": 0.1},
}
T_STEPS = 1000  # reaches_target_sooner: the run's length in steps
SLOPE = 1.0e-4  # and the loss curves' slope per step near the target


def settings_of(kind: str, **over) -> dict:
    st, problems = resolve(f"sim.{kind}", {"kind": kind, **SETTINGS[kind], **over})
    if problems:
        raise ValueError("; ".join(problems))
    return st


def truth_of(kind: str, st: dict, scenario: str) -> float:
    """The judged side's true mean relative to the reference's (interaction: the true rise difference)."""
    gk = GATE_KINDS[kind]
    zero = 0.0 if kind == "interaction" else 1.0
    if scenario == "aa":
        return zero
    bnd = gk.boundary(st)
    if scenario == "boundary":
        return bnd
    if scenario == "design":
        return bnd + (gk.distance(st) if gk.direction == "greater" else -gk.distance(st))
    raise ValueError(f"scenario {scenario!r}: use aa, boundary or design")


def draws(kind: str, st: dict, truth: float, n: int, sd: float, reps: int, seed: int = 0) -> dict:
    """Per replicate and seed: the values the gate compares. Keys: "a", "b" (reps x n), and for
    interaction the four configurations "arm_v", "arm_0", "ref_v", "ref_0", for reaches_target_sooner the
    curve intercepts "c_b", "c_a" (loss at step 0 of linear curves)."""
    rng = np.random.default_rng(seed)
    if kind == "interaction":
        lv = 1.0 + 0.02  # the reference's loss rises 2% at the changed setting; the arm's by 2% + truth
        out = {"ref_0": 1 + sd * rng.standard_normal((reps, n)), "ref_v": lv * (1 + sd * rng.standard_normal((reps, n))),
               "arm_0": 1 + sd * rng.standard_normal((reps, n)),
               "arm_v": (lv + truth) * (1 + sd * rng.standard_normal((reps, n)))}
        out["a"] = out["arm_v"] / out["arm_0"] - 1 + float(st["margin"])
        out["b"] = out["ref_v"] / out["ref_0"] - 1
        return out
    if kind == "reaches_target_sooner":
        # loss(step) = c - SLOPE x step; the baseline's final losses' mean is the target; a baseline seed
        # reaches it at T + (c_b - mean c_b) / SLOPE (at T when later); the arm at (c_a - target) / SLOPE
        sd_steps = sd * T_STEPS
        c_b = SLOPE * (T_STEPS + sd_steps * rng.standard_normal((reps, n))) + 2.0 - SLOPE * T_STEPS
        target = c_b.mean(axis=1, keepdims=True) - SLOPE * T_STEPS
        b = np.minimum((c_b - target) / SLOPE, T_STEPS)
        # the arm's mean steps: truth x the baseline's expected (clipped) steps
        eb = expected_clipped(T_STEPS, sd_steps, n)
        a = truth * eb + sd_steps * rng.standard_normal((reps, n))
        c_a = target + SLOPE * a
        a = np.where(a > T_STEPS, np.inf, a)  # never reached within the run: the worst outcome
        return {"a": a, "b": b, "c_b": c_b, "c_a": c_a}
    b = 1 + sd * rng.standard_normal((reps, n))
    a = truth * (1 + sd * rng.standard_normal((reps, n)))
    return {"a": a, "b": b}


def expected_clipped(t: float, sd_steps: float, n: int, reps: int = 200_000) -> float:
    """E[min(S, T)] of a baseline seed's steps, S = T + (c - mean c) / slope over n seeds: S - T is normal
    with sd sd_steps x sqrt((n - 1) / n), so E = T - that sd / sqrt(2 pi)."""
    return t - sd_steps * math.sqrt((n - 1) / n) / math.sqrt(2 * math.pi)


def verdicts(kind: str, st: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The gate's verdict per replicate ("PASS" / "FAIL" / "INSUFFICIENT"), for paired values a, b."""
    gk = GATE_KINDS[kind]
    ratio = 1.0 if kind == "interaction" else gk.boundary(st)
    d = a - ratio * b
    n = d.shape[1]
    sign = -1.0 if gk.direction == "less" else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        var = d.var(axis=1, ddof=1) / n
        diff = d.mean(axis=1)
        t = diff / np.sqrt(var)
    p, p_other = special.stdtr(n - 1, -sign * t), special.stdtr(n - 1, sign * t)
    level = float(st["level"])
    with np.errstate(invalid="ignore"):
        zero = ~(var > (1e-12 * np.maximum(np.abs(diff), np.abs(a).mean(axis=1))) ** 2)
    worst = ~np.isfinite(a).all(axis=1)  # a judged seed with the worst outcome (never reached): ranks
    if worst.any():
        pr, po = rank_p(a[worst], ratio * b[worst], gk.direction)
        p[worst], p_other[worst] = pr, po
        zero[worst] = False
    out = np.where(p < level, "PASS", np.where(p_other < level, "FAIL", "INSUFFICIENT"))
    out[worst & (out == "PASS")] = "INSUFFICIENT"  # a judged arm with a worst outcome cannot PASS
    out[zero | (n < int(st["min_n"]))] = "INSUFFICIENT"
    return out


def rank_p(a: np.ndarray, b: np.ndarray, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """stats.rank_test for many replicates at once (exact enumeration; small n)."""
    from itertools import combinations

    from scipy.stats import rankdata

    n1 = a.shape[1]
    from . import stats
    ranks = rankdata(np.concatenate([a, b], axis=1), axis=1)
    w = ranks[:, :n1].sum(axis=1)
    if math.comb(n1 + b.shape[1], n1) > stats._EXACT_MAX:  # stats.rank_test's normal approximation
        lo, hi = stats.rank_p_normal(w, ranks, n1, b.shape[1])
        return (lo, hi) if direction == "less" else (hi, lo)
    idx = np.array(list(combinations(range(ranks.shape[1]), n1)))
    lo, hi = np.empty(len(a)), np.empty(len(a))
    step = max(1, 2_000_000 // (len(idx) * n1))
    for i in range(0, len(a), step):
        sums = ranks[i:i + step][:, idx].sum(axis=2)
        ww = w[i:i + step, None]
        lo[i:i + step] = (sums <= ww + 1e-9).mean(axis=1)
        hi[i:i + step] = (sums >= ww - 1e-9).mean(axis=1)
    return (lo, hi) if direction == "less" else (hi, lo)


def rates(kind: str, scenario: str, n: int, sd: float = 0.005, reps: int = 4000, seed: int = 0,
          **over) -> dict:
    """{"PASS": fraction, "FAIL": fraction, "INSUFFICIENT": fraction} for one kind and scenario."""
    st = settings_of(kind, **over)
    dr = draws(kind, st, truth_of(kind, st, scenario), n, sd, reps, seed)
    v = verdicts(kind, st, dr["a"], dr["b"])
    return {x: float((v == x).mean()) for x in ("PASS", "FAIL", "INSUFFICIENT")}


TABLE_NS = (2, 3, 11)  # the studies' seed counts (2: OrthoNoise phases 1-2 and scratch pairs, 3: the rest) and
# the design check's recommendation for OrthoNoise phase 2 (11 seeds)
TABLE_REPS = 4000
TABLE_ROWS = (("within_baseline", {}), ("beats_baseline", {}), ("beats_baseline", {"min_improvement": 0.0}),
              ("not_worse_than_baseline", {}), ("metric_higher", {}), ("arm_better_than_arm", {}),
              ("any_better_than_arm", {}), ("interaction", {}), ("reaches_target_sooner", {}))
SD_OF = {"metric_higher": 0.05, "reaches_target_sooner": 0.05}  # the design's prior for non-loss quantities


def table_markdown() -> str:
    """The operating-characteristics table of docs/analysis.md (tests/test_gates_simulation.py checks that
    the docs hold exactly this): per kind and seed count, PASS and FAIL at the threshold, A/A PASS and
    FAIL, and PASS one design distance beyond the boundary, one Holm family of 1, seed 0."""
    from .io import md_table
    rows = []
    for kind, over in TABLE_ROWS:
        st = settings_of(kind, **over)
        gk = GATE_KINDS[kind]
        thr = {"within_baseline": "margin", "not_worse_than_baseline": "margin", "beats_baseline": "min_improvement",
               "arm_better_than_arm": "margin", "any_better_than_arm": "margin", "interaction": "margin",
               "reaches_target_sooner": "min_speedup"}.get(kind)
        what = f"{thr} {float(st[thr]):g}" if thr else "threshold 0"
        sd = SD_OF.get(kind, 0.005)
        for n in TABLE_NS:
            r = {sc: rates(kind, sc, n, sd=sd, reps=TABLE_REPS, seed=0, **over) for sc in ("boundary", "aa", "design")}
            rows.append([kind, what, f"{sd:.1%}", n, f"{r['boundary']['PASS']:.1%}", f"{r['boundary']['FAIL']:.1%}",
                         f"{r['aa']['PASS']:.1%}", f"{r['aa']['FAIL']:.1%}",
                         f"{r['design']['PASS']:.1%} (at {gk.distance(st):.0%})"])
    return md_table(["kind", "setting", "sd per run", "seeds", "PASS at threshold", "FAIL at threshold",
                     "A/A PASS", "A/A FAIL", "PASS one distance beyond"], rows)


if __name__ == "__main__":  # python -m analysis.verdict_sim: the table for docs/analysis.md
    print(table_markdown())
