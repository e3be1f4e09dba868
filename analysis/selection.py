"""Selection: the arm a later phase takes from an earlier one (`select:` of a study), and its honesty.

Candidates: the earlier phase's main-family comparisons (scratch comparisons never select), restricted to
`candidate_arms` when given. Rules:
- "significant_best": among comparisons with verdict "better" (two-sided, Holm over the phase), the one
  with the largest improvement (most negative diff_pct); if none, the lowest mean final loss among
  candidates with no diverged seed is reported but flagged (`rule` "lowest_mean_fallback", and
  gate_passed can then not be true);
- "lowest_mean": the lowest mean final loss among candidates with no diverged seed and at least one usable
  seed (e.g. picking a learning rate, where "significantly better than the baseline" is not the point).
Ties break on (model, arm, variant) order so the choice is deterministic.

The selection counts (gate_passed true) when the from-phase's named `gate` PASSed, or, with gate None,
when the from-phase's overall verdict passed (and, for significant_best, a significant arm exists).
`force` runs the later phase anyway (forced: true), which the report says.

Winner's curse: the selected arm was picked as the best of k noisy estimates on the same data, so its
estimate is optimistic. `winners_curse` reports k, the estimate, and the expected optimism if every
candidate had the same true effect and independent noise around one shared baseline:
se / sqrt(2) x E[max of k standard normals] (se: the standard error of the candidate's relative
difference, from the comparison's CI; the sqrt 2 removes the baseline's share, equal variances assumed),
and the estimate less that optimism. Only
runs on seeds not used in the selection confirm it (`selection_seeds` lists the seeds used).
"""
from __future__ import annotations

import math

import pandas as pd
from scipy import stats as sps

from .io import fmt_p, is_num
from .power import expected_max_normal

RULES = ("significant_best", "lowest_mean")


def _cand(r: dict) -> dict:
    keys = ["model", "arm", "variant", "param", "value", "alpha", "verdict", "n_arm", "n_base", "mean_arm",
            "mean_base", "diff_pct", "ci_low", "ci_high", "p", "p_holm", "n_diverged_arm"]
    return {k: r.get(k) for k in keys}


def _candidates(significance: pd.DataFrame, arms: list[str] | None) -> list[dict]:
    if significance is None or len(significance) == 0:
        return []
    sig = significance
    if "family" in sig:
        sig = sig[sig["family"].fillna("main") == "main"]
    if arms is not None:
        sig = sig[sig["arm"].isin(list(arms))]
    if "variant" not in sig:
        sig = sig.assign(variant="default")
    return sig.sort_values(["model", "arm", "variant"], kind="mergesort").to_dict("records")


def best_arm(significance: pd.DataFrame, arms: list[str] | None = None,
             rule: str = "significant_best") -> tuple[dict | None, str, list[dict]]:
    """(chosen row or None, rule applied, candidates sorted best first)."""
    if rule not in RULES:
        raise ValueError(f"selection rule {rule!r} is not one of {RULES}")
    recs = _candidates(significance, arms)
    if rule == "significant_best":
        better = [r for r in recs if r.get("verdict") == "better" and is_num(r.get("diff_pct"))]
        if better:
            better.sort(key=lambda r: float(r["diff_pct"]))
            return better[0], "significant_best", [_cand(r) for r in better]
    ok = [r for r in recs if is_num(r.get("mean_arm")) and int(r.get("n_diverged_arm") or 0) == 0]
    ok.sort(key=lambda r: float(r["mean_arm"]))
    applied = "lowest_mean" if rule == "lowest_mean" else "lowest_mean_fallback"
    if ok:
        return ok[0], applied, [_cand(r) for r in ok]
    return None, "none", []


def winners_curse(chosen: dict, n_candidates: int, confidence: float = 0.95) -> dict:
    est = chosen.get("diff_pct")
    lo, hi, mb = chosen.get("ci_low"), chosen.get("ci_high"), chosen.get("mean_base")
    out = {"k": int(n_candidates), "estimate_pct": est, "se_pct": None, "expected_optimism_pct": None,
           "adjusted_estimate_pct": None}
    if n_candidates > 1 and is_num(lo) and is_num(hi) and is_num(mb) and float(mb) and is_num(est):
        df = max(float(chosen.get("n_arm") or 2) - 1, 1.0)
        se = (float(hi) - float(lo)) / 2 / sps.t.ppf(0.5 + confidence / 2, df) / float(mb) * 100
        # the candidates share the baseline: only the arm's own half of the difference's variance differs
        # between them, so the optimism is se / sqrt 2 x E[max of k normals] (equal variances assumed)
        opt = se / math.sqrt(2) * expected_max_normal(int(n_candidates))
        out.update(se_pct=se, expected_optimism_pct=opt, adjusted_estimate_pct=float(est) + opt)
    out["note"] = (f"picked as the best of {n_candidates} configurations on the same data: its estimate "
                   f"({float(est):+.2f}%) is optimistic" + (
                       f" by about {out['expected_optimism_pct']:.2f} points if all had the same true effect "
                       f"(adjusted {out['adjusted_estimate_pct']:+.2f}%)" if out["expected_optimism_pct"] is not None
                       else "") + "; only runs on new seeds confirm it") if is_num(est) else ""
    return out


def gate_verdict(gates: dict | None, gate: str | None):
    """The from-phase's verdict the selection depends on: a named gate's PASS, or the overall `passed`."""
    gates = gates or {}
    if gate is None:
        return gates.get("passed"), "the phase's overall verdict"
    for g in gates.get("gates", []):
        if g.get("name") == gate:
            v = g.get("verdict")
            return {"PASS": True, "FAIL": False}.get(v), f"gate {gate} ({v})"
    raise ValueError(f"selection gate {gate!r} is not a gate of the earlier phase "
                     f"(gates: {', '.join(g.get('name', '?') for g in gates.get('gates', [])) or 'none'})")


def select_arm(significance: pd.DataFrame, gates: dict | None, force: bool = False,
               arms: list[str] | None = None, rule: str = "significant_best", gate: str | None = None,
               seeds_used: list | None = None) -> dict:
    verdict, what = gate_verdict(gates, gate)
    chosen, applied, cands = best_arm(significance, arms, rule)
    if chosen is None:
        gate_passed = False if verdict is True else verdict
        reason = "no candidate has a usable mean final loss without a diverged seed: nothing to select"
    else:
        lbl = f"{chosen['arm']} {chosen.get('variant') or ''}".strip() + f" at {chosen['model']}"
        if applied == "significant_best":
            gate_passed = verdict
            reason = (f"{lbl} has the largest significant improvement: {float(chosen['diff_pct']):+.2f}% vs "
                      f"baseline (Holm p={fmt_p(chosen['p_holm'])})")
        elif applied == "lowest_mean":
            gate_passed = verdict
            reason = (f"{lbl} has the lowest mean final loss ({float(chosen['mean_arm']):.4f}) among "
                      f"{len(cands)} candidates with no diverged seed")
        else:
            gate_passed = False if verdict is True else verdict
            reason = (f"NOT PASSED: no candidate was significantly better than the baseline; {lbl} has the "
                      f"lowest mean final loss ({float(chosen['mean_arm']):.4f}) among candidates with no "
                      "diverged seed")
        if verdict is not True:
            reason += f"; but {what} did not pass (passed={verdict})"
    if force and gate_passed is not True:
        reason += "; the next phase is FORCED by the configuration"

    def num(x):
        return float(x) if is_num(x) else None
    return {
        "gate_passed": gate_passed,
        "gates_passed": (gates or {}).get("passed"),
        "gate": gate,
        "forced": bool(force),
        "arm": None if chosen is None else str(chosen["arm"]),
        "variant": None if chosen is None else str(chosen.get("variant") or "default"),
        "param": None if chosen is None else (chosen.get("param") or ""),
        "value": None if chosen is None else num(chosen.get("value")),
        "alpha": None if chosen is None else num(chosen.get("alpha")),
        "model": None if chosen is None else str(chosen["model"]),
        "rule": applied,
        "reason": reason,
        "candidates": cands,
        "winners_curse": None if chosen is None else winners_curse(chosen, len(_candidates(significance, arms))),
        "selection_seeds": sorted({int(s) for s in (seeds_used or [])}),
    }
