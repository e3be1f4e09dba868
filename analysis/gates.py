"""gates: each success criterion of the study plan as a named check -> PASS / FAIL / INSUFFICIENT.

`GATES` maps each gate name to its settings and their defaults (the workflow's config schema can use it);
unknown gate names and unknown settings raise ValueError naming them. Every gate reports
{"name", "verdict", "threshold", "observed", "detail", "settings", "values"}; the phase's "passed" is
true when all gates PASS, false when any FAILs, otherwise null (something INSUFFICIENT, or no gates).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from .io import clean, fmt, fmt_alpha, is_num, md_table
from .selection import best_arm
from .stats import baseline_mask, compare, usable_mask, with_family

log = logging.getLogger("analysis.gates")

PASS, FAIL, INSUFFICIENT = "PASS", "FAIL", "INSUFFICIENT"
REQUIRED = object()

GATES: dict[str, dict[str, Any]] = {
    "no_crashes": {},
    "loss_within_baseline": {"max_rel_diff": 0.05, "two_sided": False},
    "effective_rank_logged": {"min_value": 1.0, "max_value": 1.0e6},
    "beats_baseline": {"min_improvement": 0.01, "arms": None},
    "effective_rank_higher": {"arms": REQUIRED, "alpha": 0.05},
    "isotropic_worse": {"orthonoise": "orthonoise", "isotropic": "isotropic", "alpha": 0.05},
    "early_loss_not_worse": {"step": 100, "tolerance": 0.0, "arms": None},
    "advantage_replicates": {"min_improvement": 0.005, "model": None, "arms": None},
    "scratch_faster": {},
}
_IGNORED_KEYS = {"description"}


class Ctx:
    def __init__(self, runs: pd.DataFrame, sig: pd.DataFrame, curves: pd.DataFrame, baseline: str,
                 phase: str, metric: str = "final_val_loss"):
        self.runs = with_family(runs) if len(runs) else runs.assign(family=pd.Series(dtype=str))
        self.sig = sig if sig is not None else pd.DataFrame()
        self.curves = curves if curves is not None else pd.DataFrame()
        self.baseline = baseline
        self.phase = phase
        self.metric = metric
        self.is_base = baseline_mask(self.runs, baseline) if len(self.runs) else pd.Series(dtype=bool)


def _result(name, verdict, threshold, observed, detail, values=None) -> dict:
    return {"name": name, "verdict": verdict, "threshold": threshold, "observed": observed, "detail": detail,
            "values": values if values is not None else {}}


def _run_label(r: Mapping) -> str:
    a = f" alpha={fmt_alpha(r.get('alpha'))}" if is_num(r.get("alpha")) else ""
    return f"{r.get('model')}/{r.get('arm')}{a}/seed{int(r.get('seed'))}"


def _group_label(model, arm, alpha) -> str:
    a = f" alpha={fmt_alpha(alpha)}" if is_num(alpha) else ""
    return f"{model}/{arm}{a}"


# --------------------------------------------------------------------------------------------- gates
def gate_no_crashes(c: Ctx, s: dict) -> dict:
    name = "no_crashes"
    thr = "every run has status ok"
    if len(c.runs) == 0:
        return _result(name, INSUFFICIENT, thr, "no runs", "the phase has no runs")
    bad = c.runs[c.runs["status"] != "ok"]
    obs = f"{len(c.runs) - len(bad)}/{len(c.runs)} ok"
    if len(bad):
        items = []
        for r in bad.to_dict("records"):
            st = r["status"] + (f" at step {int(r['diverged_step'])}" if is_num(r.get("diverged_step")) else "")
            items.append(f"{_run_label(r)} ({st})")
        return _result(name, FAIL, thr, obs, "not ok: " + "; ".join(items), {"not_ok": items})
    return _result(name, PASS, thr, obs, f"all {len(c.runs)} runs finished with status ok")


def _means(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    u = usable_mask(df, metric)
    d = df.assign(_v=pd.to_numeric(df[metric], errors="coerce").where(u), _div=df["status"] == "diverged")
    return d.groupby(["model", "family", "arm", "alpha"], dropna=False, sort=True).agg(
        mean=("_v", "mean"), n=("_v", "count"), n_div=("_div", "sum")).reset_index()


def gate_loss_within_baseline(c: Ctx, s: dict) -> dict:
    name = "loss_within_baseline"
    tol = float(s["max_rel_diff"])
    two = bool(s["two_sided"])
    thr = (f"|mean final loss / baseline - 1| <= {tol:.1%}" if two
           else f"mean final loss <= baseline mean x (1 + {tol:.1%}) for every arm")
    if len(c.runs) == 0:
        return _result(name, INSUFFICIENT, thr, "no runs", "the phase has no runs")
    base = _means(c.runs[c.is_base], c.metric)
    arms = _means(c.runs[~c.is_base], c.metric)
    if len(arms) == 0:
        return _result(name, INSUFFICIENT, thr, "no arms", "the phase has no non-baseline arm")
    bmean = {(r["model"], r["family"]): r["mean"] for r in base.to_dict("records")}
    fails, missing, vals = [], [], {}
    worst = None
    for r in arms.to_dict("records"):
        lbl = _group_label(r["model"], r["arm"], r["alpha"])
        bm = bmean.get((r["model"], r["family"]), math.nan)
        if not is_num(bm):
            missing.append(f"{lbl}: no usable baseline run")
            continue
        if not is_num(r["mean"]):
            fails.append(f"{lbl}: no finite final loss ({int(r['n_div'])} diverged)")
            vals[lbl] = None
            continue
        rel = r["mean"] / bm - 1.0
        vals[lbl] = rel
        if worst is None or rel > worst[1]:
            worst = (lbl, rel)
        if (abs(rel) if two else rel) > tol:
            fails.append(f"{lbl}: {rel:+.2%} ({r['mean']:.4f} vs {bm:.4f})")
    obs = f"worst {worst[0]} {worst[1]:+.2%}" if worst else "none computable"
    if fails:
        return _result(name, FAIL, thr, obs, "outside: " + "; ".join(fails + missing), {"rel_diff": vals})
    if missing:
        return _result(name, INSUFFICIENT, thr, obs, "; ".join(missing), {"rel_diff": vals})
    return _result(name, PASS, thr, obs, f"all {len(vals)} arms within (relative differences vs baseline)",
                   {"rel_diff": vals})


def gate_effective_rank_logged(c: Ctx, s: dict) -> dict:
    name = "effective_rank_logged"
    lo, hi = float(s["min_value"]), float(s["max_value"])
    thr = f"every run (baseline included) has a finite eff_rank_mean in [{lo:g}, {hi:g}]"
    if len(c.runs) == 0:
        return _result(name, INSUFFICIENT, thr, "no runs", "the phase has no runs")
    er = pd.to_numeric(c.runs.get("eff_rank_mean", pd.Series(np.nan, index=c.runs.index)), errors="coerce")
    good = np.isfinite(er) & (er >= lo) & (er <= hi)
    bad = c.runs[~good]
    obs = f"{int(good.sum())}/{len(c.runs)} runs; range {fmt(er[good].min(), 2)}..{fmt(er[good].max(), 2)}" \
        if good.any() else f"0/{len(c.runs)} runs"
    if len(bad):
        items = [f"{_run_label(r)} (eff_rank_mean={fmt(r.get('eff_rank_mean'), 3) or 'missing'}, {r['status']})"
                 for r in bad.to_dict("records")]
        return _result(name, FAIL, thr, obs, "not logged or out of range: " + "; ".join(items))
    return _result(name, PASS, thr, obs, "logged in every run")


def _improvement_gate(c: Ctx, name: str, min_imp: float, model: str | None, arms: list | None) -> dict:
    who = "some arm" if arms is None else f"some arm of {list(arms)}"
    thr = f"{who} improves mean final loss by > {min_imp:.1%} with verdict 'better' (Holm-corrected)"
    sig = c.sig
    if len(sig) and "family" in sig:
        sig = sig[sig["family"].fillna("main") == "main"]
    if model is not None and len(sig):
        sig = sig[sig["model"] == model]
    if arms is not None and len(sig):
        sig = sig[sig["arm"].isin(list(arms))]
    if len(sig) == 0:
        return _result(name, INSUFFICIENT, thr, "no comparisons", "no arm-vs-baseline comparison in this phase")
    testable = sig[(sig["n_arm"] >= 2) & (sig["n_base"] >= 2)]
    if len(testable) == 0:
        return _result(name, INSUFFICIENT, thr, "no comparison with >= 2 seeds each side",
                       f"{len(sig)} comparisons, all with fewer than 2 usable seeds on a side")
    imp = -testable["diff_pct"] / 100.0
    best_i = imp.idxmax()
    b = testable.loc[best_i]
    obs = (f"best {_group_label(b['model'], b['arm'], b['alpha'])}: {-b['diff_pct']:.2f}% lower loss, "
           f"Holm p={fmt(b['p_holm'], 3, sig=True)}, verdict {b['verdict']}")
    ok = testable[(testable["verdict"] == "better") & (imp > min_imp)]
    vals = {_group_label(r["model"], r["arm"], r["alpha"]): {"improvement": -r["diff_pct"] / 100.0,
                                                             "p_holm": r["p_holm"], "verdict": r["verdict"]}
            for r in testable.to_dict("records")}
    if len(ok):
        lbls = [f"{_group_label(r['model'], r['arm'], r['alpha'])} ({-r['diff_pct']:.2f}%, Holm p="
                f"{r['p_holm']:.3g})" for r in ok.sort_values("diff_pct").to_dict("records")]
        return _result(name, PASS, thr, obs, "qualifying: " + "; ".join(lbls), vals)
    return _result(name, FAIL, thr, obs, f"none of {len(testable)} testable comparisons is significantly "
                   f"better by more than {min_imp:.1%}", vals)


def gate_beats_baseline(c: Ctx, s: dict) -> dict:
    return _improvement_gate(c, "beats_baseline", float(s["min_improvement"]), None, s["arms"])


def gate_advantage_replicates(c: Ctx, s: dict) -> dict:
    return _improvement_gate(c, "advantage_replicates", float(s["min_improvement"]), s["model"], s["arms"])


def gate_effective_rank_higher(c: Ctx, s: dict) -> dict:
    name = "effective_rank_higher"
    arms = list(s["arms"] or [])
    if not arms:
        raise ValueError("gate 'effective_rank_higher': setting 'arms' must list at least one arm")
    a_lvl = float(s["alpha"])
    thr = f"mean eff_rank_mean of {arms} > baseline's, Welch t-test (two-sided) p < {a_lvl:g}"
    if len(c.runs) == 0:
        return _result(name, INSUFFICIENT, thr, "no runs", "the phase has no runs")
    r = c.runs[c.runs["family"] == "main"]
    isb = c.is_base.loc[r.index]
    er = pd.to_numeric(r.get("eff_rank_mean"), errors="coerce")
    ok = (r["status"] == "ok") & np.isfinite(er)
    results, vals = [], {}
    for model in sorted(r["model"].unique()):
        m = r["model"] == model
        a = er[m & ~isb & r["arm"].isin(arms) & ok].to_numpy(float)
        b = er[m & isb & ok].to_numpy(float)
        if len(a) < 2 or len(b) < 2:
            results.append((model, INSUFFICIENT, f"{model}: {len(a)} arm / {len(b)} baseline values"))
            continue
        cmp = compare(a, [], b, [1], alpha_level=a_lvl)  # seed lists differ -> Welch
        vals[model] = {"mean_arms": cmp["mean_arm"], "mean_base": cmp["mean_base"], "t": cmp["t"],
                       "p": cmp["p"], "n_arms": len(a), "n_base": len(b)}
        good = cmp["diff"] > 0 and cmp["p"] < a_lvl
        results.append((model, PASS if good else FAIL,
                        f"{model}: {cmp['mean_arm']:.3f} vs {cmp['mean_base']:.3f} (t={cmp['t']:.3g}, "
                        f"p={cmp['p']:.3g}, n={len(a)}/{len(b)})"))
    if not results:
        return _result(name, INSUFFICIENT, thr, "no runs", "no main-family runs")
    verdicts = [v for _, v, _ in results]
    verdict = FAIL if FAIL in verdicts else (PASS if all(v == PASS for v in verdicts) else INSUFFICIENT)
    det = "; ".join(d for _, _, d in results)
    return _result(name, verdict, thr, det, det, vals)


def _alpha_key(a) -> float | None:
    return round(float(a), 12) if is_num(a) else None


def gate_isotropic_worse(c: Ctx, s: dict) -> dict:
    name = "isotropic_worse"
    on, iso, a_lvl = s["orthonoise"], s["isotropic"], float(s["alpha"])
    thr = (f"{iso} mean final loss > {on}'s at every shared alpha, one-sided p < {a_lvl:g} "
           f"(paired t where seeds pair, else Welch) at one alpha at least")
    if len(c.runs) == 0:
        return _result(name, INSUFFICIENT, thr, "no runs", "the phase has no runs")
    r = c.runs[(c.runs["family"] == "main") & ~c.is_base]
    r = r.assign(_ak=r["alpha"].map(_alpha_key), _u=usable_mask(r, c.metric),
                 _v=pd.to_numeric(r[c.metric], errors="coerce"))
    shared = []
    for (model, ak), g in r.groupby(["model", "_ak"], sort=True, dropna=True):
        go, gi = g[g["arm"] == on], g[g["arm"] == iso]
        if len(go) and len(gi):
            shared.append((model, ak, go, gi))
    if not shared:
        return _result(name, INSUFFICIENT, thr, "no shared alpha", f"no alpha has both {on} and {iso} runs")
    details, vals, direction_ok, any_sig, any_testable = [], {}, True, False, False
    for model, ak, go, gi in shared:
        uo, ui = go[go["_u"]], gi[gi["_u"]]
        lbl = f"{model} alpha={ak:g}"
        if len(ui) == 0 or len(uo) == 0:
            # a side with no usable (all diverged) run: isotropic failing is 'worse', orthonoise failing is not
            holds = len(ui) == 0 and len(uo) > 0
            direction_ok &= holds
            details.append(f"{lbl}: {len(uo)} usable {on} / {len(ui)} usable {iso} runs "
                           f"({'direction holds' if holds else 'direction fails'})")
            continue
        cmp = compare(ui["_v"].to_numpy(), ui["seed"].tolist(), uo["_v"].to_numpy(), uo["seed"].tolist(),
                      alpha_level=a_lvl, alternative="greater")
        holds = cmp["diff"] > 0
        direction_ok &= bool(holds)
        sig = is_num(cmp["p"]) and cmp["p"] < a_lvl
        any_testable |= cmp["test"] != "none"
        any_sig |= bool(sig and holds)
        vals[lbl] = {"mean_isotropic": cmp["mean_arm"], "mean_orthonoise": cmp["mean_base"], "test": cmp["test"],
                     "t": cmp["t"], "p_one_sided": cmp["p"], "n_isotropic": cmp["n_arm"],
                     "n_orthonoise": cmp["n_base"]}
        details.append(f"{lbl}: {iso} {cmp['mean_arm']:.4f} vs {on} {cmp['mean_base']:.4f} "
                       f"({cmp['diff_pct']:+.2f}%), {cmp['test']}"
                       + (f" one-sided p={cmp['p']:.3g}" if is_num(cmp["p"]) else " (n<2: no test)"))
    det = "; ".join(details)
    obs = f"direction {'holds' if direction_ok else 'fails'} at {len(shared)} shared alpha(s); " \
          f"{'a' if any_sig else 'no'} significant one"
    if not direction_ok:
        return _result(name, FAIL, thr, obs, det, vals)
    if not any_testable:
        return _result(name, INSUFFICIENT, thr, obs, "no shared alpha with >= 2 usable seeds each side; " + det,
                       vals)
    return _result(name, PASS if any_sig else FAIL, thr, obs, det, vals)


def _val_at(c: Ctx, df: pd.DataFrame, step: int) -> pd.Series:
    """Per-run val loss at `step`: runs.csv val_loss_at_<step>, else curves.csv at that step."""
    col = f"val_loss_at_{step}"
    out = pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)
    if out.isna().any() and len(c.curves) and "val_loss" in c.curves:
        cv = c.curves[(c.curves["step"] == step) & c.curves["val_loss"].notna()]
        if "role" in cv:
            key = ["role", "model", "arm", "seed"]
        else:
            key = ["model", "arm", "seed"]
        look = {}
        for r in cv.to_dict("records"):
            look[tuple(r[k] for k in key) + (_alpha_key(r["alpha"]),)] = r["val_loss"]
        for i, r in df[out.isna()].iterrows():
            v = look.get(tuple(r[k] for k in key) + (_alpha_key(r["alpha"]),))
            if v is not None:
                out.loc[i] = v
    return out


def gate_early_loss_not_worse(c: Ctx, s: dict) -> dict:
    name = "early_loss_not_worse"
    step, tol = int(s["step"]), float(s["tolerance"])
    thr = f"best arm's mean val loss at step {step} <= baseline's x (1 + {tol:g})"
    chosen, rule, _ = best_arm(c.sig, s["arms"])
    if chosen is None:
        return _result(name, INSUFFICIENT, thr, "no best arm", "no arm with a usable mean final loss to select")
    r = c.runs[c.runs["family"] == "main"]
    isb = c.is_base.loc[r.index]
    ak = _alpha_key(chosen["alpha"])
    sel = (~isb & (r["model"] == chosen["model"]) & (r["arm"] == chosen["arm"])
           & (r["alpha"].map(_alpha_key) == ak))
    bsel = isb & (r["model"] == chosen["model"])
    va = _val_at(c, r[sel & (r["status"] == "ok")], step)
    vb = _val_at(c, r[bsel & (r["status"] == "ok")], step)
    va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
    lbl = _group_label(chosen["model"], chosen["arm"], chosen["alpha"])
    if len(va) == 0 or len(vb) == 0:
        return _result(name, INSUFFICIENT, thr, f"step {step} not evaluated",
                       f"best arm {lbl} (rule {rule}): {len(va)} arm / {len(vb)} baseline runs have a val loss at "
                       f"step {step}")
    ma, mb = float(va.mean()), float(vb.mean())
    obs = f"{lbl}: {ma:.4f} vs baseline {mb:.4f} ({(ma / mb - 1):+.2%})"
    vals = {"arm": lbl, "rule": rule, "mean_arm": ma, "mean_base": mb, "n_arm": len(va), "n_base": len(vb)}
    verdict = PASS if ma <= mb * (1 + tol) else FAIL
    return _result(name, verdict, thr, obs, f"best arm chosen by rule '{rule}'; n={len(va)}/{len(vb)}", vals)


def _steps_to(curve: pd.DataFrame, target: float) -> float:
    hit = curve[curve["val_loss"] <= target]
    return float(hit["step"].iloc[0]) if len(hit) else math.nan


def gate_scratch_faster(c: Ctx, s: dict) -> dict:
    name = "scratch_faster"
    thr = "scratch arm reaches the scratch baseline's mean final val loss in fewer steps (mean over seeds)"
    cv = c.curves
    if len(c.runs) == 0 or "role" not in c.runs:
        return _result(name, INSUFFICIENT, thr, "no scratch runs", "the phase has no scratch runs")
    sr = c.runs[c.runs["role"].isin(["scratch_baseline", "scratch_arm"])]
    if len(sr) == 0 or len(cv) == 0 or "role" not in cv:
        return _result(name, INSUFFICIENT, thr, "no scratch runs", "the phase has no scratch runs with curves")
    cv = cv[cv["role"].isin(["scratch_baseline", "scratch_arm"]) & cv["val_loss"].notna()]
    cv = cv[np.isfinite(cv["val_loss"].astype(float))].sort_values("step", kind="mergesort")
    curves = {k: g for k, g in cv.groupby(["role", "model", "arm", "seed"], sort=True)}
    base_ok = sr[(sr["role"] == "scratch_baseline") & (sr["status"] == "ok")]
    arm_runs = sr[sr["role"] == "scratch_arm"]
    finals = []
    for r in base_ok.to_dict("records"):
        g = curves.get(("scratch_baseline", r["model"], r["arm"], r["seed"]))
        if g is not None and len(g):
            finals.append((r, g, float(g["val_loss"].iloc[-1]), float(g["step"].iloc[-1])))
    if not finals or len(arm_runs) == 0:
        return _result(name, INSUFFICIENT, thr, "no scratch runs",
                       f"{len(finals)} scratch baseline runs with a val curve, {len(arm_runs)} scratch arm runs")
    target = float(np.mean([f for _, _, f, _ in finals]))
    base_steps = []
    for _, g, _, last in finals:
        st = _steps_to(g, target)
        base_steps.append(st if is_num(st) else last)  # never below the mean: counted at its last step
    arm_steps, problems = [], []
    for r in arm_runs.to_dict("records"):
        g = curves.get(("scratch_arm", r["model"], r["arm"], r["seed"]))
        st = _steps_to(g, target) if g is not None else math.nan
        if r["status"] != "ok":
            problems.append(f"{_run_label(r)} {r['status']}")
        elif not is_num(st):
            problems.append(f"{_run_label(r)} never reached {target:.4f}")
        arm_steps.append(st)
    mb = float(np.mean(base_steps))
    ma = float(np.nanmean(arm_steps)) if any(is_num(x) for x in arm_steps) else math.nan
    obs = f"arm {fmt(ma, 0)} vs baseline {mb:.0f} steps to val loss {target:.4f}"
    vals = {"target": target, "arm_steps": arm_steps, "baseline_steps": base_steps}
    if problems:
        return _result(name, FAIL, thr, obs, "; ".join(problems), vals)
    verdict = PASS if ma < mb else FAIL
    return _result(name, verdict, thr, obs, f"{len(arm_steps)} arm / {len(base_steps)} baseline seeds; a "
                   "baseline seed that never goes below the mean is counted at its last evaluated step", vals)


GATE_FUNCS: dict[str, Callable[[Ctx, dict], dict]] = {
    "no_crashes": gate_no_crashes,
    "loss_within_baseline": gate_loss_within_baseline,
    "effective_rank_logged": gate_effective_rank_logged,
    "beats_baseline": gate_beats_baseline,
    "effective_rank_higher": gate_effective_rank_higher,
    "isotropic_worse": gate_isotropic_worse,
    "early_loss_not_worse": gate_early_loss_not_worse,
    "advantage_replicates": gate_advantage_replicates,
    "scratch_faster": gate_scratch_faster,
}


def resolve_settings(name: str, settings: Mapping | None) -> dict:
    if name not in GATES:
        raise ValueError(f"unknown gate {name!r}; known gates: {sorted(GATES)}")
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(GATES[name]) - _IGNORED_KEYS)
    if unknown:
        raise ValueError(f"gate {name!r}: unknown setting(s) {unknown}; allowed: {sorted(GATES[name])}")
    out = {}
    for k, default in GATES[name].items():
        if k in settings:
            out[k] = settings[k]
        elif default is REQUIRED:
            raise ValueError(f"gate {name!r}: setting {k!r} is required")
        else:
            out[k] = default
    return out


def evaluate_gates(runs: pd.DataFrame, significance: pd.DataFrame, curves: pd.DataFrame,
                   gates: Mapping[str, Any] | None, baseline: str, phase: str) -> dict:
    ctx = Ctx(runs, significance, curves, baseline, phase)
    results = []
    for name, settings in (gates or {}).items():
        st = resolve_settings(name, settings)
        res = GATE_FUNCS[name](ctx, st)
        res["settings"] = {k: v for k, v in st.items()}
        results.append(res)
        log.info("gate %s: %s (%s)", name, res["verdict"], res["observed"])
    verdicts = [r["verdict"] for r in results]
    if not verdicts:
        passed = None
    elif FAIL in verdicts:
        passed = False
    elif all(v == PASS for v in verdicts):
        passed = True
    else:
        passed = None
    return clean({"phase": phase, "passed": passed, "gates": results})


def passed_word(passed) -> str:
    return {True: "PASSED", False: "FAILED"}.get(passed, "INCONCLUSIVE")


def gates_markdown(g: dict) -> str:
    head = (f"**{g['phase']} gates: {passed_word(g['passed'])}** "
            f"({sum(x['verdict'] == PASS for x in g['gates'])}/{len(g['gates'])} PASS)\n\n")
    rows = [(x["name"], x["verdict"], x["threshold"], x["observed"], x["detail"]) for x in g["gates"]]
    return head + md_table(["gate", "verdict", "threshold", "observed", "detail"], rows)
