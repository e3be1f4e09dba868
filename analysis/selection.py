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


def _p_words(p) -> str:
    t = fmt_p(p)
    return t if t.startswith("<") else f"= {t}"


def _curse(significance, arms, applied: str, chosen: dict) -> dict:
    """The winner's curse from all candidates (bootstrap_selection), with the report's note; the analytic
    figure (winners_curse: the winner's own se) only where the bootstrap cannot run."""
    n_cand = len(_candidates(significance, arms))
    rule = "significant_best" if applied == "significant_best" else "lowest_mean"
    bs = bootstrap_selection(significance, arms, rule, chosen)
    if bs is None:
        return winners_curse(chosen, n_cand)
    est = chosen.get("diff_pct")
    opt = bs["optimism_pct"]
    out = {"k": bs["k"], "estimate_pct": est, "expected_optimism_pct": opt,
           "adjusted_estimate_pct": float(est) + opt if is_num(est) else None, "pick_rate": bs["pick_rate"],
           "flat_p": bs["flat_p"], "flat": bs["flat"], "shrink": bs["shrink"], "method": "parametric bootstrap"}
    lbl = f"{chosen['arm']} {chosen.get('variant') or ''}".strip()
    out["note"] = (f"picked as the best of {bs['k']} configurations on the same data: its estimate "
                   + (f"({float(est):+.2f}%) " if is_num(est) else "")
                   + (f"is optimistic by about {opt:.2f} points" if opt >= 0.005 else
                      f"shows no measurable optimism ({opt:+.2f} points)")
                   + f" (parametric bootstrap of the selection over all {bs['k']} candidates; adjusted "
                   + (f"{float(est) + opt:+.2f}%" if is_num(est) else "n/a") + f"); a re-run on new seeds would "
                   f"pick {lbl} again {bs['pick_rate']:.0%} of the time"
                   + (f"; the sweep is flat within noise (all candidates equal: p = {bs['flat_p']:.2f}), so the "
                      "pick is a choice among equals" if bs["flat"] else
                      (f"; the candidates differ (p {_p_words(bs['flat_p'])})" if is_num(bs["flat_p"]) else ""))
                   + "; only runs on new seeds confirm it")
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
               seeds_used: list | None = None, carries_baseline: bool = True, name: str | None = None) -> dict:
    """The selection record (selection.json). `carries_baseline`: the later phase compares with the very
    baseline of the earlier phase (study.selections.carries_baseline); a baseline the earlier phase's
    baseline_sane gate flagged then goes on with a WARNING (baseline_flags), otherwise with a note that this
    phase's baseline is another configuration. `name`: the selection's name (several named selections)."""
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
    # a baseline the earlier phase flagged (baseline_sane FAIL) is carried on: say so wherever the pick goes
    flags = [f"{g.get('name')}: {g.get('detail')}" for g in (gates or {}).get("gates", [])
             if g.get("kind") == "baseline_sane" and g.get("verdict") == "FAIL"]
    if flags and carries_baseline:
        reason += ("; WARNING: the earlier phase flagged its baseline (" + "; ".join(flags) + "): a later phase "
                   "that carries it on compares with a baseline that may be broken or untuned")
    elif flags:
        reason += ("; the earlier phase flagged its baseline (" + "; ".join(flags) + "); the later phase's "
                   "baseline is another configuration (re-tuned or another arm), so the flag does not carry on")

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
        "winners_curse": None if chosen is None else _curse(significance, arms, applied, chosen),
        "baseline_flags": flags if carries_baseline else [],
        **({"name": name} if name else {}),
        "selection_seeds": sorted({int(s) for s in (seeds_used or [])}),
    }


def bootstrap_core(means, n: int, sd: float, mean_base: float, rule: str, chosen: int, *, k_family: int | None = None,
                   level: float = 0.05, reps: int = 2000, seed: int = 0) -> dict:
    """The selection's honesty from all candidates at once (parametric bootstrap).

    means: the candidates' observed mean final losses; n: seeds per side; sd: the per-run sd as a fraction
    of the loss; chosen: the index the rule picked. The bootstrap world's true means are the observed ones
    shrunk toward their grand mean by the positive-part James-Stein factor (k >= 4; with equal true means
    the observed spread is all noise, and picking the best of equal arms is where the curse is largest),
    the baseline at mean_base; each replicate draws n seed-matched runs per candidate and one shared
    baseline, applies the rule (lowest_mean: the lowest mean; significant_best: the largest improvement
    among paired t-tests, two-sided, Holm over k_family at `level`, else the lowest mean) and records the
    picked candidate's estimate minus its true value. Returns optimism_pct (mean of true - estimate, in
    points of the relative difference: how much better the pick looks than it is), pick_rate (how often a
    re-run picks the same candidate), flat_p (chi-square test that all candidates have the same mean) and
    flat (flat_p > level), shrink."""
    import numpy as np
    from scipy import special
    m = np.asarray(means, float) / float(mean_base)
    k = len(m)
    se = float(sd) / math.sqrt(n)
    q = float(((m - m.mean()) ** 2).sum() / se ** 2) if se > 0 else math.inf
    flat_p = float(sps.chi2.sf(q, k - 1)) if k >= 2 and math.isfinite(q) else math.nan
    shrink = 1.0 if k < 4 or not math.isfinite(q) or q == 0 else max(0.0, 1.0 - (k - 3) / q)
    truth = m.mean() + shrink * (m - m.mean())
    rng = np.random.default_rng(seed)
    b = 1.0 + sd * rng.standard_normal((reps, 1, n))
    a = truth[None, :, None] + sd * rng.standard_normal((reps, k, n))
    est = a.mean(axis=2) / b.mean(axis=2) - 1.0  # reps x k
    if rule == "significant_best" and n >= 2:
        d = a - b
        t = d.mean(axis=2) / (d.std(axis=2, ddof=1) / math.sqrt(n))
        p = 2 * special.stdtr(n - 1, -np.abs(t))
        mm = max(int(k_family or k), k)
        order = np.argsort(p, axis=1)
        ps = np.take_along_axis(p, order, axis=1)
        adj_s = np.minimum(1.0, np.maximum.accumulate(ps * (mm - np.arange(k)), axis=1))
        adj = np.empty_like(adj_s)
        np.put_along_axis(adj, order, adj_s, axis=1)
        better = (adj < level) & (est < 0)
        pick = np.where(better.any(axis=1), np.argmin(np.where(better, est, np.inf), axis=1),
                        np.argmin(a.mean(axis=2), axis=1))
    else:
        pick = np.argmin(a.mean(axis=2), axis=1)
    r = np.arange(reps)
    true_rel = truth[pick] - 1.0
    optimism = float((true_rel - est[r, pick]).mean()) * 100
    return {"optimism_pct": optimism, "pick_rate": float((pick == chosen).mean()), "flat_p": flat_p,
            "flat": bool(flat_p > level) if math.isfinite(flat_p) else None, "shrink": shrink, "reps": reps}


def bootstrap_selection(significance: pd.DataFrame, arms: list[str] | None, rule: str, chosen: dict,
                        reps: int = 2000) -> dict | None:
    """bootstrap_core on a phase's significance table: the candidates as best_arm sees them (main family,
    `arms`, no diverged seed), the pooled per-run sd of the candidates and baseline (as a fraction)."""
    recs = [r for r in _candidates(significance, arms) if is_num(r.get("mean_arm"))
            and int(r.get("n_diverged_arm") or 0) == 0]
    if len(recs) < 2 or not is_num(chosen.get("mean_base")):
        return None
    keys = [(r["model"], r["arm"], r.get("variant")) for r in recs]
    ck = (chosen["model"], chosen["arm"], chosen.get("variant"))
    if ck not in keys:
        return None
    var, dof = 0.0, 0
    for r in recs:
        for s, nn, mu in ((r.get("std_arm"), r.get("n_arm"), r.get("mean_arm")),):
            if is_num(s) and is_num(nn) and int(nn) >= 2 and mu:
                var += (int(nn) - 1) * (float(s) / float(mu)) ** 2
                dof += int(nn) - 1
    r0 = recs[0]
    if is_num(r0.get("std_base")) and int(r0.get("n_base") or 0) >= 2 and r0.get("mean_base"):
        var += (int(r0["n_base"]) - 1) * (float(r0["std_base"]) / float(r0["mean_base"])) ** 2
        dof += int(r0["n_base"]) - 1
    if not dof or var <= 0:
        return None
    n = int(min(int(r.get("n_arm") or 0) for r in recs))
    kf = significance["k_family"].iloc[0] if "k_family" in significance and len(significance) else None
    out = bootstrap_core([float(r["mean_arm"]) for r in recs], max(n, 1), math.sqrt(var / dof),
                         float(chosen["mean_base"]), rule, keys.index(ck),
                         k_family=int(kf) if is_num(kf) else None, reps=reps)
    out.update(k=len(recs), sd_pct=100 * math.sqrt(var / dof))
    return out


def combined_record(named: dict) -> dict:
    """The selection.json of a phase with several named selections (study/selections.py): the records by
    name, and what the workflow's stop check reads across them (gate_passed: all of theirs; reason: each
    one's, named)."""
    recs = {str(k): dict(v) for k, v in named.items()}
    passed = [r.get("gate_passed") for r in recs.values()]
    gate_passed = False if False in passed else (True if passed and all(x is True for x in passed) else None)
    return {"selections": recs, "gate_passed": gate_passed,
            "forced": any(bool(r.get("forced")) for r in recs.values()),
            "reason": "; ".join(f"{k}: {r.get('reason', '')}" for k, r in recs.items())}
