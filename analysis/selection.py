"""The phase-2 -> phase-3 selection rule (also "the best arm" of the early_loss_not_worse gate).

Rule, over the main-family comparisons (scratch comparisons never select):
1. among comparisons with verdict "better", the one with the largest improvement (most negative diff_pct);
2. if none, the lowest mean final loss among arms with no diverged seed (and at least one usable seed),
   flagged: rule "lowest_mean_loss", and gate_passed can then not be true.
Ties break on (model, arm, alpha) order so the choice is deterministic. Optionally the candidates are
restricted to a list of arm names (e.g. to keep the isotropic control from being "selected").
"""
from __future__ import annotations

import pandas as pd

from .io import is_num

def _cand(r: dict) -> dict:
    keys = ["model", "arm", "alpha", "verdict", "n_arm", "n_base", "mean_arm", "mean_base", "diff_pct", "p",
            "p_holm", "n_diverged_arm"]
    return {k: r.get(k) for k in keys}

def best_arm(significance: pd.DataFrame, arms: list[str] | None = None) -> tuple[dict | None, str, list[dict]]:
    """Returns (chosen row as dict or None, rule name, candidate list sorted best first).
    `arms`: restrict the candidates to these arm names (None: every non-baseline arm)."""
    if significance is None or len(significance) == 0:
        return None, "none", []
    sig = significance
    if "family" in sig:
        sig = sig[sig["family"].fillna("main") == "main"]
    if arms is not None:
        sig = sig[sig["arm"].isin(list(arms))]
    sig = sig.sort_values(["model", "arm", "alpha"], kind="mergesort")
    recs = sig.to_dict("records")
    better = [r for r in recs if r.get("verdict") == "better" and is_num(r.get("diff_pct"))]
    if better:
        better.sort(key=lambda r: float(r["diff_pct"]))  # stable: ties keep (model, arm, alpha) order
        return better[0], "better", [_cand(r) for r in better]
    ok = [r for r in recs if is_num(r.get("mean_arm")) and int(r.get("n_diverged_arm") or 0) == 0]
    ok.sort(key=lambda r: float(r["mean_arm"]))
    if ok:
        return ok[0], "lowest_mean_loss", [_cand(r) for r in ok]
    return None, "none", []

def select_arm(significance: pd.DataFrame, gates: dict | None, force: bool = False,
               arms: list[str] | None = None) -> dict:
    gates_passed = (gates or {}).get("passed")
    chosen, rule, cands = best_arm(significance, arms)
    if chosen is None:
        gate_passed = False if gates_passed is True else gates_passed
        reason = "no arm has a usable mean final loss without a diverged seed: nothing to select"
    elif rule == "better":
        gate_passed = gates_passed
        reason = (f"{chosen['arm']} alpha={chosen['alpha']:g} at {chosen['model']} has the largest significant "
                  f"improvement: {chosen['diff_pct']:+.2f}% vs baseline (Holm p={chosen['p_holm']:.3g})"
                  if is_num(chosen.get("alpha")) else
                  f"{chosen['arm']} at {chosen['model']} has the largest significant improvement: "
                  f"{chosen['diff_pct']:+.2f}% vs baseline (Holm p={chosen['p_holm']:.3g})")
        if gates_passed is not True:
            reason += f"; but the phase-2 gates did not pass (passed={gates_passed})"
    else:
        gate_passed = False if gates_passed is True else gates_passed
        reason = (f"NOT PASSED: no arm was significantly better than the baseline; {chosen['arm']}"
                  f"{' alpha=' + format(float(chosen['alpha']), 'g') if is_num(chosen.get('alpha')) else ''}"
                  f" has the lowest mean final loss ({chosen['mean_arm']:.4f}) among arms with no diverged seed")
    if force and gate_passed is not True:
        reason += "; phase 3 FORCED by the configuration"
    alpha = chosen.get("alpha") if chosen else None
    return {
        "gate_passed": gate_passed,
        "gates_passed": gates_passed,
        "forced": bool(force),
        "arm": None if chosen is None else str(chosen["arm"]),
        "alpha": float(alpha) if is_num(alpha) else None,
        "model": None if chosen is None else str(chosen["model"]),
        "rule": rule,
        "reason": reason,
        "candidates": cands,
    }
