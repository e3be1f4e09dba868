"""gates: a study's named gate instances -> PASS / FAIL / INSUFFICIENT, each testing what its words claim.

A gate instance is `{kind: K, ...settings}`; the kinds and their settings are declared in
analysis/gate_kinds.py (resolved with defaults by `resolve`). Every gate reports {"name", "kind",
"verdict", "claim", "observed", "detail", "settings", "values"}; the phase's "passed" is true when all
gates PASS, false when any FAILs, otherwise null.

Statistical gates (all but no_crashes, metric_logged, baseline_sane) state their claim as one or more
one-sided hypotheses on ratios of means (lower loss is better), e.g. beats_baseline with min_improvement m:
H1: mean(arm) < (1 - m) mean(baseline), tested exactly by stats.ratio_test (paired t on a - (1 - m) b when
the seeds pair, else Welch on a and (1 - m) b). The phase's statistical hypotheses form ONE multiplicity
family: their p-values are Holm-adjusted together (a control gate is corrected with the comparisons it
controls). Each hypothesis is then:
  pass          Holm p < level;
  fail          the judged arm has a diverged (or never-reaching) seed, or the opposite one-sided test
                (Holm within the gate) rejects the claim ("the data say no"), or nothing was decided although
                the design's power at the threshold is >= power_floor;
  insufficient  fewer than min_n usable seeds on a side, or nothing decided and the power at the threshold
                is below power_floor (or unknown): "the design could not tell".
Power at the threshold: a one-sided test at level / K (K = the phase's family size; Holm's worst case)
with the hypothesis' seeds, at a true difference one threshold away from the boundary (non-inferiority:
a true difference of 0 against margin m; a threshold m > 0: m; a threshold of 0: design_effect). The sd
is the design check's (`noise_sd`, a fraction of the loss) for final-loss hypotheses when given, else the
pooled within-configuration sd of the quantity in this phase; paired runs are assumed uncorrelated.
A gate over several hypotheses: beats_baseline PASSes when ANY passes (the claim is "some arm"),
FAILs when every one fails; the others need ALL (any fail -> FAIL).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import power as pw
from .design import with_floor
from .gate_kinds import GATE_KINDS, SELECTED, resolve
from .io import clean, fmt_p, is_num, md_table
from .stats import baseline_mask, holm, pairing, pooled_rel_sd, ratio_test, usable_mask, with_family

log = logging.getLogger("analysis.gates")

PASS, FAIL, INSUFFICIENT = "PASS", "FAIL", "INSUFFICIENT"
GATES = GATE_KINDS  # the kinds a study may name (settings: gate_kinds.params_of)
KEY = ["model", "arm", "variant"]


def _label(model, arm, variant) -> str:
    return f"{model}/{arm}" + (f" {variant}" if variant not in (None, "", "default") else "")


def _run_label(r: Mapping) -> str:
    return f"{_label(r.get('model'), r.get('arm'), r.get('variant'))}/seed{int(r.get('seed'))}"


class Ctx:
    def __init__(self, runs: pd.DataFrame, curves: pd.DataFrame | None, baseline: str, phase: str,
                 selection: Mapping | None = None, noise_sd: float | None = None, metric: str = "final_val_loss"):
        self.runs = with_family(runs).reset_index(drop=True) if len(runs) else pd.DataFrame(
            columns=["phase", "role", "model", "arm", "variant", "alpha", "seed", "status", metric, "family"])
        self.curves = curves if curves is not None else pd.DataFrame()
        self.baseline, self.phase, self.metric = baseline, phase, metric
        self.selection = dict(selection) if selection else None
        self.noise_sd = float(noise_sd) if is_num(noise_sd) and float(noise_sd) > 0 else None
        self.is_base = baseline_mask(self.runs, baseline) if len(self.runs) else pd.Series(dtype=bool)
        self.main = self.runs[self.runs["family"] == "main"] if len(self.runs) else self.runs
        self.selected_note = ""
        self._sd_cache: dict = {}
        self._grouped = None
        self._qty: dict = {}

    # ------------------------------------------------------------------------------------------ arms
    def arm_keys(self, names: list | None) -> list[tuple]:
        """(model, arm, variant) of the main-family non-baseline configurations named (None: all);
        'selected' is the arm the phase took from an earlier one, or this phase's best arm."""
        r = self.main[~self.is_base.loc[self.main.index]] if len(self.main) else self.main
        keys = sorted({tuple(x) for x in r[KEY].itertuples(index=False)}) if len(r) else []
        if names is None:
            return keys
        out = []
        for n in names:
            if n == SELECTED:
                out += [k for k in self.selected_keys() if k not in out]
            else:
                out += [k for k in keys if k[1] == n and k not in out]
        return out

    def selected_keys(self) -> list[tuple]:
        r = self.main[~self.is_base.loc[self.main.index]] if len(self.main) else self.main
        if self.selection and self.selection.get("arm"):
            arm, var = self.selection["arm"], self.selection.get("variant")
            m = r["arm"] == arm
            if var is not None and "variant" in r:
                # the selected variant, or the phase's own variants built on it (a sweep of the selected arm:
                # topk0.01 for a selected 'default', lr0.03+projection_every3 for a selected lr0.03)
                v = r["variant"].astype(str)
                mine = (v == str(var)) | v.str.startswith(f"{var}+")
                if not (m & mine).any() and not self.selection.get("param"):
                    mine = pd.Series(True, index=r.index)  # an unswept choice, swept by this phase: all of it
                m &= mine
            self.selected_note = f"'selected' = {arm} {var or ''} (from the earlier phase's selection)".strip()
            return sorted({tuple(x) for x in r.loc[m, KEY].itertuples(index=False)})
        best = self.best_key()
        if best is None:
            return []
        self.selected_note = (f"'selected' = {_label(*best)}: this phase's arm with the lowest mean "
                              "final loss (no earlier selection; its estimate is optimistic)")
        return [best]

    def best_key(self) -> tuple | None:
        r = self.main[~self.is_base.loc[self.main.index]] if len(self.main) else self.main
        if len(r) == 0:
            return None
        v = pd.to_numeric(r[self.metric], errors="coerce").where(usable_mask(r, self.metric))
        d = r.assign(_v=v, _div=r["status"] != "ok").groupby(KEY, sort=True).agg(m=("_v", "mean"), d=("_div", "sum"))
        d = d[(d["d"] == 0) & d["m"].notna()]
        return None if len(d) == 0 else tuple(d["m"].idxmin())

    def base_rows(self, model: str, family: str = "main") -> pd.DataFrame:
        return self._groups()[1].get((family, model), self.runs.iloc[0:0])

    def rows(self, key: tuple, family: str = "main") -> pd.DataFrame:
        return self._groups()[0].get((family,) + tuple(key), self.runs.iloc[0:0])

    def _groups(self):
        """{(family, model, arm, variant): non-baseline runs}, {(family, model): baseline runs}: built once."""
        if self._grouped is None:
            r = self.runs
            arms = {k: g for k, g in r[~self.is_base].groupby(["family"] + KEY, sort=False)} if len(r) else {}
            base = {k: g for k, g in r[self.is_base].groupby(["family", "model"], sort=False)} if len(r) else {}
            self._grouped = (arms, base)
        return self._grouped

    # ------------------------------------------------------------------------------------ quantities
    def values(self, df: pd.DataFrame, col: str) -> tuple[np.ndarray, list, int]:
        """(usable values, their seeds, number of runs not ok) for a column of runs.csv; df is a subset of
        self.runs (the column is computed once for the whole table: the gates call this per configuration)."""
        if col not in self._qty:
            v = self.column(self.runs, col).to_numpy(float)
            st_ok = (self.runs["status"] == "ok").to_numpy() if len(self.runs) else np.zeros(0, bool)
            self._qty[col] = (v, st_ok & np.isfinite(v), st_ok, self.runs["seed"].to_numpy() if len(self.runs)
                              else np.zeros(0))
        v, ok, st_ok, seeds = self._qty[col]
        pos = self.runs.index.get_indexer(df.index)
        m = ok[pos]
        return v[pos][m], seeds[pos][m].tolist(), int((~st_ok[pos]).sum())

    def column(self, df: pd.DataFrame, col: str) -> pd.Series:
        if col.startswith("val_loss_at_"):
            return self.val_at(df, int(col[12:]))
        if col not in df:
            return pd.Series(np.nan, index=df.index, dtype=float)
        return pd.to_numeric(df[col], errors="coerce").astype(float)

    def val_at(self, df: pd.DataFrame, step: int) -> pd.Series:
        """Per-run val loss at `step`: runs.csv val_loss_at_<step>, else curves.csv at that step."""
        col = f"val_loss_at_{step}"
        out = pd.to_numeric(df[col], errors="coerce").astype(float) if col in df else \
            pd.Series(np.nan, index=df.index, dtype=float)
        cv = self.curves
        if out.isna().any() and len(cv) and "val_loss" in cv:
            cv = with_family(cv[(cv["step"] == step) & cv["val_loss"].notna()])
            look = {(r["role"] if "role" in cv else "", r["model"], r["arm"], r["variant"], int(r["seed"])):
                    float(r["val_loss"]) for r in cv.to_dict("records")}
            for i, r in df[out.isna()].iterrows():
                v = look.get((r["role"] if "role" in df else "", r["model"], r["arm"], r["variant"], int(r["seed"])))
                if v is not None:
                    out.loc[i] = v
        return out

    def rel_sd(self, col: str, family: str = "main") -> tuple[float, str]:
        """The sd (fraction of the level) used by the power check for this quantity."""
        if col == self.metric and self.noise_sd is not None:
            return self.noise_sd, "design check"
        if (col, family) not in self._sd_cache:
            self._sd_cache[(col, family)] = self._rel_sd(col, family)
        return self._sd_cache[(col, family)]

    def _rel_sd(self, col: str, family: str) -> tuple[float, str]:
        r = self.runs[(self.runs["family"] == family) & (self.runs["status"] == "ok")]
        if len(r) == 0:
            return math.nan, "none"
        sd, dof = pooled_rel_sd(r.assign(_q=self.column(r, col)), "_q", KEY)
        return sd, (f"pooled in this phase ({dof} df)" if dof else "none")


# ------------------------------------------------------------------------------------- hypotheses
def _hyp(label: str, claim: str, *, a=None, sa=None, b=None, sb=None, ratio=1.0, direction="less",
         failure: str | None = None, distance=math.nan, sd=math.nan, sd_src="", note="") -> dict:
    a = np.asarray(a if a is not None else [], float)
    b = np.asarray(b if b is not None else [], float)
    h = {"label": label, "claim": claim, "n_arm": len(a), "n_base": len(b), "failure": failure, "note": note,
         "ratio": ratio, "direction": direction, "distance": distance, "sd": sd, "sd_source": sd_src,
         "p": math.nan, "p_against": math.nan, "test": "none", "estimate_pct": math.nan,
         "ci_pct": [math.nan, math.nan], "mean_arm": math.nan, "mean_base": math.nan,
         "paired": pairing(list(sa or []), list(sb or []))}
    if len(a) and len(b):
        ma, mb = float(a.mean()), float(b.mean())
        h.update(mean_arm=ma, mean_base=mb, estimate_pct=100 * (ma / mb - 1) if mb else math.nan)
        if len(a) >= 2 and len(b) >= 2 and mb:
            t = ratio_test(a, sa, b, sb, 1.0, "less")  # the plain difference, for its 95% CI
            if is_num(t["df"]):
                half = sps.t.ppf(0.975, t["df"]) * (abs((ma - mb) / t["t"]) if is_num(t["t"]) and t["t"] else 0.0)
                h["ci_pct"] = [100 * (ma - mb - half) / mb, 100 * (ma - mb + half) / mb]
    if failure is None and len(a) >= 2 and len(b) >= 2:
        t = ratio_test(a, sa, b, sb, ratio, direction)
        h.update(p=t["p"], p_against=t["p_other"], test=t["test"])
    return h


def _arm_vs_base(c: Ctx, key: tuple, col: str, ratio: float, direction: str, claim: str, distance: float,
                 family: str = "main", fail_on_diverged: bool = True) -> dict:
    ar, br = c.rows(key, family), c.base_rows(key[0], family)
    a, sa, na_bad = c.values(ar, col)
    b, sb, _ = c.values(br, col)
    sd, src = c.rel_sd(col, family)
    fail = None
    if fail_on_diverged and na_bad:
        bad = [_run_label(r) + f" ({r['status']})" for r in ar[ar["status"] != "ok"].to_dict("records")]
        fail = "a run that is not ok is a failure: " + ", ".join(bad)
    elif len(ar) and len(a) == 0:
        fail = f"no usable {col} value"
    return _hyp(_label(*key), claim, a=a, sa=sa, b=b, sb=sb, ratio=ratio, direction=direction, failure=fail,
                distance=distance, sd=sd, sd_src=src)


# ----------------------------------------------------------------------------------- statistical kinds
def k_within_baseline(c: Ctx, s: dict) -> tuple[list, str, str]:
    m = float(s["margin"])
    claim = f"mean final loss < baseline x (1 + {m:.1%}) (non-inferiority, margin {m:.1%})"
    hs = [_arm_vs_base(c, k, c.metric, 1 + m, "less", claim, m) for k in c.arm_keys(s["arms"])]
    return hs, "all", claim


def k_beats_baseline(c: Ctx, s: dict) -> tuple[list, str, str]:
    m = float(s["min_improvement"])
    dist = m if m > 0 else float(s["design_effect"] or 0.01)
    claim = f"mean final loss < baseline x (1 - {m:.1%}) (improvement > {m:.1%})"
    keys = [k for k in c.arm_keys(s["arms"]) if s["model"] is None or k[0] == s["model"]]
    return [_arm_vs_base(c, k, c.metric, 1 - m, "less", claim, dist) for k in keys], "any", claim


def k_not_worse_than_baseline(c: Ctx, s: dict) -> tuple[list, str, str]:
    m = float(s["margin"])
    col = c.metric if s["step"] is None else f"val_loss_at_{int(s['step'])}"
    where = "final loss" if s["step"] is None else f"val loss at step {int(s['step'])}"
    claim = f"mean {where} < baseline x (1 + {m:.1%}) (non-inferiority, margin {m:.1%})"
    hs = [_arm_vs_base(c, k, col, 1 + m, "less", claim, m) for k in c.arm_keys(s["arms"])]
    return hs, "all", claim


def k_metric_higher(c: Ctx, s: dict) -> tuple[list, str, str]:
    col = s["metric"]
    dist = float(s["design_effect"] or 0.05)
    claim = f"mean {col} > baseline's"
    return [_arm_vs_base(c, k, col, 1.0, "greater", claim, dist) for k in c.arm_keys(s["arms"])], "all", claim


def k_arm_better_than_arm(c: Ctx, s: dict) -> tuple[list, str, str]:
    m = float(s["margin"])
    dist = m if m > 0 else float(s["design_effect"] or 0.01)
    better, worse = c.arm_keys([s["better"]]), c.arm_keys([s["worse"]])
    claim = f"{s['better']}'s mean final loss < {s['worse']}'s x (1 - {m:.1%})"
    pairs = []
    for bk in better:
        same_model = [w for w in worse if w[0] == bk[0]]
        shared = [w for w in same_model if w[2] == bk[2]]
        pairs += [(bk, w) for w in (shared or same_model)]
    hs = []
    for bk, wk in pairs:
        br, wr = c.rows(bk), c.rows(wk)
        a, sa, a_bad = c.values(br, c.metric)
        b, sb, b_bad = c.values(wr, c.metric)
        sd, src = c.rel_sd(c.metric)
        lbl = f"{_label(*bk)} vs {_label(*wk)}"
        fail = note = None
        if a_bad:
            fail = f"{_label(*bk)} has {a_bad} run(s) not ok: a failure"
        h = _hyp(lbl, claim, a=a, sa=sa, b=b, sb=sb, ratio=1 - m, direction="less", failure=fail, distance=dist,
                 sd=sd, sd_src=src)
        if not a_bad and b_bad and len(a) >= int(s["min_n"]):
            h.update(forced_pass=f"{_label(*wk)} has {b_bad} run(s) not ok and {_label(*bk)} none")
        hs.append(h)
    return hs, "all", claim


def k_reaches_target_sooner(c: Ctx, s: dict) -> tuple[list, str, str]:
    m = float(s["min_speedup"])
    dist = m if m > 0 else float(s["design_effect"] or 0.1)
    claim = f"scratch arm's steps to the scratch baseline's mean final loss < (1 - {m:.0%}) x the baseline's"
    r = c.runs[c.runs["family"] == "scratch"] if len(c.runs) else c.runs
    cv = c.curves
    if len(r) == 0 or len(cv) == 0 or "val_loss" not in cv:
        return [], "all", claim
    cv = with_family(cv)
    cv = cv[(cv["family"] == "scratch") & cv["val_loss"].notna()].sort_values("step", kind="mergesort")
    curves = {k: g for k, g in cv.groupby(["model", "arm", "variant", "seed"], sort=False)}
    hs = []
    for model in sorted(r["model"].unique()):
        base = r[c.is_base.loc[r.index] & (r["model"] == model)]
        arms = r[~c.is_base.loc[r.index] & (r["model"] == model)]
        fin = []
        for x in base[base["status"] == "ok"].to_dict("records"):
            g = curves.get((x["model"], x["arm"], x["variant"], x["seed"]))
            if g is not None and len(g):
                fin.append((x["seed"], g))
        if not fin:
            continue
        target = float(np.mean([g["val_loss"].iloc[-1] for _, g in fin]))

        def steps(g):
            hit = g[g["val_loss"] <= target]
            return float(hit["step"].iloc[0]) if len(hit) else math.nan
        # a baseline seed that never goes below the mean counts at its last evaluated step (in its favour)
        b = [steps(g) if is_num(steps(g)) else float(g["step"].iloc[-1]) for _, g in fin]
        sb = [sd for sd, _ in fin]
        for key, ar in arms.groupby(["arm", "variant"], sort=True):
            a, sa, bad = [], [], []
            for x in ar.to_dict("records"):
                g = curves.get((x["model"], x["arm"], x["variant"], x["seed"]))
                st = steps(g) if g is not None else math.nan
                if x["status"] != "ok" or not is_num(st):
                    bad.append(_run_label(x) + (f" ({x['status']})" if x["status"] != "ok" else " never reached it"))
                else:
                    a.append(st)
                    sa.append(x["seed"])
            sd, dof = pooled_rel_sd(pd.DataFrame({"g": ["a"] * len(a) + ["b"] * len(b), "v": a + b}), "v", ["g"])
            h = _hyp(f"{_label(model, *key)} vs scratch baseline", claim, a=a, sa=sa, b=b, sb=sb, ratio=1 - m,
                     direction="less", failure=("a failure: " + ", ".join(bad)) if bad else None, distance=dist,
                     sd=sd, sd_src=f"pooled steps ({dof} df)" if dof else "none",
                     note=f"target val loss {target:.4f}")
            hs.append(h)
    return hs, "all", claim


STATISTICAL_KINDS: dict[str, Callable[[Ctx, dict], tuple[list, str, str]]] = {
    "within_baseline": k_within_baseline,
    "beats_baseline": k_beats_baseline,
    "not_worse_than_baseline": k_not_worse_than_baseline,
    "metric_higher": k_metric_higher,
    "arm_better_than_arm": k_arm_better_than_arm,
    "reaches_target_sooner": k_reaches_target_sooner,
}


# ------------------------------------------------------------------------------------ plain kinds
def _result(verdict, claim, observed, detail, values=None) -> dict:
    return {"verdict": verdict, "claim": claim, "observed": observed, "detail": detail,
            "values": values if values is not None else {}}


def k_no_crashes(c: Ctx, s: dict) -> dict:
    claim = "every run has status ok"
    if len(c.runs) == 0:
        return _result(INSUFFICIENT, claim, "no runs", "the phase has no runs")
    bad = c.runs[c.runs["status"] != "ok"]
    obs = f"{len(c.runs) - len(bad)}/{len(c.runs)} ok"
    if len(bad):
        items = [f"{_run_label(r)} ({r['status']}" + (f" at step {int(r['diverged_step'])}" if
                 is_num(r.get("diverged_step")) else "") + ")" for r in bad.to_dict("records")]
        return _result(FAIL, claim, obs, "not ok: " + "; ".join(items), {"not_ok": items})
    return _result(PASS, claim, obs, f"all {len(c.runs)} runs finished with status ok")


def k_metric_logged(c: Ctx, s: dict) -> dict:
    col, lo, hi = s["metric"], float(s["min_value"]), float(s["max_value"])
    claim = f"every run (baseline included) has a finite {col} in [{lo:g}, {hi:g}]"
    if len(c.runs) == 0:
        return _result(INSUFFICIENT, claim, "no runs", "the phase has no runs")
    v = c.column(c.runs, col)
    good = np.isfinite(v) & (v >= lo) & (v <= hi)
    bad = c.runs[~good]
    obs = f"{int(good.sum())}/{len(c.runs)} runs"
    if len(bad):
        items = [_run_label(r) for r in bad.to_dict("records")]
        return _result(FAIL, claim, obs, f"missing or out of range in: {', '.join(items)}", {"bad": items})
    return _result(PASS, claim, obs, f"{col} range {float(v.min()):.3g} to {float(v.max()):.3g}")


def k_baseline_sane(c: Ctx, s: dict) -> dict:
    ratio_max, ceiling, gap = float(s["max_ratio_to_start"]), s["max_final_loss"], s["max_gap_to_best_arm"]
    claim = (f"every baseline run ok, final/first val loss <= {ratio_max:g}"
             + (f", final <= {float(ceiling):g}" if ceiling is not None else "")
             + (f", mean final <= best arm's x (1 + {float(gap):.0%})" if gap is not None else ""))
    r = c.runs
    base = r[c.is_base] if len(r) else r
    if len(base) == 0:
        return _result(INSUFFICIENT, claim, "no baseline runs", f"the phase has no run of {c.baseline}")
    problems, vals = [], {}
    first = {}
    cv = c.curves
    if len(cv) and "val_loss" in cv:
        cvf = with_family(cv[cv["val_loss"].notna()]).sort_values("step", kind="mergesort")
        for k, g in cvf.groupby(["model", "arm", "variant", "seed"], sort=False):
            first[k] = float(g["val_loss"].iloc[0])
    for x in base.to_dict("records"):
        lbl = _run_label(x)
        fin = float(x[c.metric]) if is_num(x.get(c.metric)) else math.nan
        if x["status"] != "ok" or not is_num(fin):
            problems.append(f"{lbl}: status {x['status']} (a baseline that does not finish is broken)")
            continue
        st = first.get((x["model"], x["arm"], x["variant"], x["seed"]))
        if st is not None and st > 0:
            vals[lbl] = {"final": fin, "first": st, "ratio": fin / st}
            if fin / st > ratio_max:
                problems.append(f"{lbl}: final {fin:.4f} is {fin / st:.2f} x its first evaluated loss {st:.4f}")
        else:
            vals[lbl] = {"final": fin}
        if ceiling is not None and fin > float(ceiling):
            problems.append(f"{lbl}: final {fin:.4f} above the ceiling {float(ceiling):g}")
    if gap is not None and len(c.main):
        for model in sorted(c.main["model"].unique()):
            bv = pd.to_numeric(base.loc[(base["model"] == model) & (base["status"] == "ok"), c.metric],
                               errors="coerce").dropna()
            am = c.main[~c.is_base.loc[c.main.index] & (c.main["model"] == model) & (c.main["status"] == "ok")]
            if len(bv) == 0 or len(am) == 0:
                continue
            means = am.assign(_v=pd.to_numeric(am[c.metric], errors="coerce")).groupby(KEY)["_v"].mean().dropna()
            if len(means) == 0:
                continue
            best, bm = means.idxmin(), float(means.min())
            rel = float(bv.mean()) / bm - 1
            vals[f"{model} gap to best arm"] = rel
            if rel > float(gap):
                problems.append(f"{model}: baseline mean {bv.mean():.4f} is {rel:.1%} above the best arm "
                                f"{_label(*best)} ({bm:.4f}): a baseline this far behind is suspect, not beaten")
    obs = f"{len(base)} baseline runs" + (f", {len(problems)} problem(s)" if problems else ", sane")
    if problems:
        return _result(FAIL, claim, obs, "; ".join(problems), vals)
    ratios = [v["ratio"] for v in vals.values() if isinstance(v, dict) and "ratio" in v]
    det = f"final/first val loss {min(ratios):.2f} to {max(ratios):.2f}" if ratios else "no first evaluation found"
    return _result(PASS, claim, obs, det, vals)


PLAIN_KINDS: dict[str, Callable[[Ctx, dict], dict]] = {
    "no_crashes": k_no_crashes,
    "metric_logged": k_metric_logged,
    "baseline_sane": k_baseline_sane,
}


# ------------------------------------------------------------------------------------- evaluation

def _status(h: dict, s: dict, k_family: int) -> str:
    """pass / fail / insufficient for one hypothesis (module docstring)."""
    if h["failure"]:
        h["why"] = h["failure"]
        return "fail"
    if h.get("forced_pass"):
        h["why"] = h["forced_pass"]
        return "pass"
    mn = int(s["min_n"])
    if h["n_arm"] < mn or h["n_base"] < mn:
        h["why"] = f"{h['n_arm']}/{h['n_base']} usable seeds, fewer than min_n={mn}"
        return "insufficient"
    if is_num(h.get("p_holm")) and h["p_holm"] < float(s["level"]):
        h["why"] = f"Holm p={fmt_p(h['p_holm'])} < {float(s['level']):g}"
        return "pass"
    pw_ = math.nan
    if is_num(h["sd"]) and h["sd"] > 0 and is_num(h["distance"]) and h["distance"] > 0:
        pw_ = pw.power(h["distance"], h["sd"], min(h["n_arm"], h["n_base"]), float(s["level"]) / max(k_family, 1),
                       paired=h["paired"], n2=h["n_base"])
    h["power"] = pw_
    if is_num(h.get("p_against_holm")) and h["p_against_holm"] < float(s["level"]):
        h["why"] = f"the opposite is significant (Holm p={fmt_p(h['p_against_holm'])}): the data say no"
        return "fail"
    floor = float(s["power_floor"])
    if is_num(pw_) and pw_ >= floor:
        h["why"] = (f"not shown (Holm p={fmt_p(h.get('p_holm'))}) although the power at the threshold is "
                    f"{pw_:.0%} >= {floor:.0%}")
        return "fail"
    h["why"] = (f"not decided (Holm p={fmt_p(h.get('p_holm'))}) and the power at the threshold is "
                + (f"{pw_:.0%} < {floor:.0%}" if is_num(pw_) else "unknown (no noise estimate)")
                + ": the design could not tell")
    return "insufficient"


def _combine(statuses: list[str], mode: str) -> str:
    if not statuses:
        return INSUFFICIENT
    if mode == "any":
        if "pass" in statuses:
            return PASS
        return FAIL if all(x == "fail" for x in statuses) else INSUFFICIENT
    if "fail" in statuses:
        return FAIL
    return PASS if all(x == "pass" for x in statuses) else INSUFFICIENT


def _describe(h: dict) -> str:
    est = f"{h['estimate_pct']:+.2f}%" if is_num(h["estimate_pct"]) else "n/a"
    ci = (f" [{h['ci_pct'][0]:+.2f}%, {h['ci_pct'][1]:+.2f}%]" if is_num(h["ci_pct"][0]) else "")
    return f"{h['label']}: {est}{ci}, n={h['n_arm']}/{h['n_base']}, {h['status']} ({h['why']})"


def evaluate_gates(runs: pd.DataFrame, significance: pd.DataFrame | None, curves: pd.DataFrame | None,
                   gates: Mapping[str, Any] | None, baseline: str, phase: str, *, selection: Mapping | None = None,
                   noise_sd: float | None = None, power_floor: float | None = None) -> dict:
    """gates: {instance name: {kind: K, ...settings}} (resolved again here: unknown kinds or settings raise
    ValueError naming them). `significance` is accepted for the old call signature and not used: the gates
    run their own one-sided tests. `power_floor` (the study's default) applies to statistical gates that do
    not set their own."""
    ctx = Ctx(runs, curves, baseline, phase, selection, noise_sd)
    resolved = {}
    for name, settings in (gates or {}).items():
        settings = with_floor(settings, power_floor)
        st, problems = resolve(f"gates.{name}", settings)
        if problems:
            raise ValueError("; ".join(problems))
        resolved[name] = st
    hyps: dict[str, tuple] = {}
    for name, st in resolved.items():
        if st["kind"] in STATISTICAL_KINDS:
            hyps[name] = STATISTICAL_KINDS[st["kind"]](ctx, st)
    family = [(n, i) for n, (hs, _, _) in hyps.items() for i, h in enumerate(hs)
              if not h["failure"] and is_num(h["p"])]
    k = len(family)
    if k:
        adj = holm([hyps[n][0][i]["p"] for n, i in family])
        for (n, i), p in zip(family, adj):
            hyps[n][0][i]["p_holm"] = float(p)
    for n, (hs, _, _) in hyps.items():  # the opposite direction: Holm within the gate
        idx = [i for i, h in enumerate(hs) if not h["failure"] and is_num(h["p_against"])]
        if idx:
            adj = holm([hs[i]["p_against"] for i in idx])
            for i, p in zip(idx, adj):
                hs[i]["p_against_holm"] = float(p)
    results = []
    for name, st in resolved.items():
        kind = st["kind"]
        if kind in PLAIN_KINDS:
            res = PLAIN_KINDS[kind](ctx, st)
        else:
            hs, mode, claim = hyps[name]
            for h in hs:
                h["status"] = _status(h, st, k)
            verdict = _combine([h["status"] for h in hs], mode)
            who = "some" if mode == "any" else "every"
            if not hs:
                obs, det = "nothing to judge", "no configuration of this phase matches the gate's arms / data"
            else:
                counts = {x: sum(h["status"] == x for h in hs) for x in ("pass", "fail", "insufficient")}
                obs = f"{counts['pass']} pass, {counts['fail']} fail, {counts['insufficient']} insufficient of {len(hs)}"
                det = "; ".join(_describe(h) for h in hs)
            if ctx.selected_note and any(SELECTED in (v if isinstance(v, list) else [v]) for v in st.values()):
                det = ctx.selected_note + ". " + det
            res = _result(verdict, f"{who} judged configuration: {claim}; one-sided, Holm over the phase's "
                          f"{k} hypotheses at {float(st['level']):g}, min n {st['min_n']}, power floor "
                          f"{float(st['power_floor']):.0%}", obs, det,
                          {"hypotheses": [{x: h.get(x) for x in (
                              "label", "status", "why", "n_arm", "n_base", "test", "mean_arm", "mean_base",
                              "estimate_pct", "ci_pct", "p", "p_holm", "p_against", "p_against_holm", "power",
                              "distance", "sd", "sd_source", "note")} for h in hs], "k_family": k, "mode": mode})
        res = {"name": name, "kind": kind, **res, "settings": st}
        results.append(res)
        log.info("gate %s (%s): %s (%s)", name, kind, res["verdict"], res["observed"])
    verdicts = [r["verdict"] for r in results]
    passed = None if not verdicts else (False if FAIL in verdicts else (True if all(v == PASS for v in verdicts)
                                                                        else None))
    return clean({"phase": phase, "passed": passed, "k_family": k, "gates": results})


def passed_word(passed) -> str:
    return {True: "PASSED", False: "FAILED"}.get(passed, "INCONCLUSIVE")


def gates_markdown(g: dict) -> str:
    head = (f"**{g['phase']} gates: {passed_word(g['passed'])}** "
            f"({sum(x['verdict'] == PASS for x in g['gates'])}/{len(g['gates'])} PASS)\n\n")
    order = sorted(g["gates"], key=lambda x: x.get("kind") != "baseline_sane")  # the baseline check first
    rows = [(x["name"], x.get("kind", ""), f"**{x['verdict']}**", x.get("claim", x.get("threshold", "")),
             x["observed"], x["detail"]) for x in order]
    return head + md_table(["gate", "kind", "verdict", "claim tested", "observed", "detail"], rows)


def gates_table(g: dict) -> pd.DataFrame:
    """gates.json as a flat table (gates.csv, for snakemake --report): one row per gate."""
    rows = [{"phase": g["phase"], "gate": x["name"], "kind": x.get("kind", ""), "verdict": x["verdict"],
             "claim": x.get("claim", ""), "observed": x["observed"], "detail": x["detail"]} for x in g["gates"]]
    return pd.DataFrame(rows, columns=["phase", "gate", "kind", "verdict", "claim", "observed", "detail"])
