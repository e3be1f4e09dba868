"""gates: a study's named gate instances -> PASS / FAIL / INSUFFICIENT, each testing what its words claim.

A gate instance is `{kind: K, ...settings}`; the kinds and their settings are declared in
analysis/gate_kinds.py (resolved with defaults by `resolve`). Every gate reports {"name", "kind",
"verdict", "claim", "observed", "detail", "settings", "values"}; the phase's "passed" is true when all
gates PASS, false when any FAILs, otherwise null.

Statistical gates (every kind GATE_KINDS marks statistical) state their claim as one or more one-sided
hypotheses on ratios of means (lower loss is better), e.g. beats_baseline with min_improvement m:
H1: mean(arm) < (1 - m) mean(baseline), tested exactly by stats.ratio_test (paired t on a - (1 - m) b when
the seeds pair, else Welch on a and (1 - m) b). The claim's side, boundary, power distance and how the
hypotheses combine are the kind's declaration (gate_kinds.GateKind), which the design check reads too.
The phase's statistical hypotheses form ONE multiplicity family: their p-values are Holm-adjusted together
(a control gate is corrected with the comparisons it controls), and so are the p-values of the opposite
side. Each hypothesis is then three-way, from one-sided confidence bounds:
  pass          Holm p < level: the one-sided bound on the claim's side clears the boundary;
  fail          Holm p of the opposite side < level: the other one-sided bound lies on the wrong side of
                the boundary (the data exclude the claim);
  insufficient  neither, or fewer than min_n seeds on a side, or no test (zero spread between seeds: a
                t-test would say p = 0).
At a true effect equal to the threshold (the boundary) both PASS and FAIL happen at most `level` of the
time (tests/test_gates_simulation.py measures it). The detail shows the bound used, at Holm's level for
that hypothesis (level / j, j the hypotheses left at its step), and the power at the threshold (the
design's figure: information, never a verdict).
A run that is not ok (diverged) is the worst outcome inside the test, never a verdict by itself: with one
on either side the hypothesis is tested by an exact rank test (stats.rank_test; a diverged loss ranks
last), and a judged arm with such a run cannot PASS (at best INSUFFICIENT; FAIL when the test says no).
A gate over several hypotheses: mode "any" (beats_baseline, any_better_than_arm) PASSes when ANY passes,
FAILs when every one fails; mode "all" needs ALL (any fail -> FAIL).
'selected': the arm the phase took from an earlier one (its selection); with several named selections,
'selected:NAME' is that selection's pick (each claim about a winner judges its own selection's arm). In a
phase that selects nothing itself, the arm the later phase's selection would take from this phase (the same
rule over the same candidates: `pick` = that `select:`, or {reference: select} for named ones), never a
control outside its candidates; with no later selection at all (refused by the pre-run check) the phase's
own pick among the arms that are neither its baseline nor a control (an arm a gate compares against).
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
from .gate_kinds import GATE_KINDS, SELECTED, function_name, is_selected, resolve
from .io import clean, fmt_p, is_num, md_table
from .stats import baseline_mask, holm, pairing, pooled_rel_sd, rank_test, ratio_test, usable_mask, with_family

log = logging.getLogger("analysis.gates")

PASS, FAIL, INSUFFICIENT = "PASS", "FAIL", "INSUFFICIENT"
GATES = GATE_KINDS  # the kinds a study may name (settings: gate_kinds.params_of)
KEY = ["model", "arm", "variant"]


def _label(model, arm, variant) -> str:
    return f"{model}/{arm}" + (f" {variant}" if variant not in (None, "", "default") else "")


def _run_label(r: Mapping) -> str:
    return f"{_label(r.get('model'), r.get('arm'), r.get('variant'))}/seed{int(r.get('seed'))}"


def selections_by_ref(selection: Mapping | None) -> dict[str, dict]:
    """{'selected' / 'selected:NAME': record} of a phase's selection.json: one record (select_arm's dict,
    'selected'), or {"selections": {NAME: record}} ('selected:NAME'; plain 'selected' too when only one)."""
    if not selection:
        return {}
    if isinstance(selection.get("selections"), Mapping):
        out = {f"{SELECTED}:{k}": dict(v) for k, v in selection["selections"].items()}
        if len(out) == 1:
            out[SELECTED] = next(iter(out.values()))
        return out
    out = {SELECTED: dict(selection)}
    if selection.get("name"):
        out[f"{SELECTED}:{selection['name']}"] = dict(selection)
    return out


def picks_by_ref(pick: Mapping | None) -> dict[str, dict]:
    """{reference: {arms, rule}} of the later selections from a phase: one {arms, rule} ('selected'), or
    {'selected' / 'selected:NAME': {arms, rule}}."""
    if not pick:
        return {}
    if "rule" in pick or "arms" in pick:
        return {SELECTED: dict(pick)}
    return {str(k): dict(v) for k, v in pick.items() if v}


class Ctx:
    def __init__(self, runs: pd.DataFrame, curves: pd.DataFrame | None, baseline: str, phase: str,
                 selection: Mapping | None = None, noise_sd: float | None = None, metric: str = "final_val_loss",
                 pick: Mapping | None = None, significance: pd.DataFrame | None = None,
                 controls: set | None = None):
        self.runs = with_family(runs).reset_index(drop=True) if len(runs) else pd.DataFrame(
            columns=["phase", "role", "model", "arm", "variant", "alpha", "seed", "status", metric, "family"])
        self.curves = curves if curves is not None else pd.DataFrame()
        self.baseline, self.phase, self.metric = baseline, phase, metric
        self.selections = selections_by_ref(selection)
        self.selection = self.selections.get(SELECTED)
        self.noise_sd = float(noise_sd) if is_num(noise_sd) and float(noise_sd) > 0 else None
        self.is_base = baseline_mask(self.runs, baseline) if len(self.runs) else pd.Series(dtype=bool)
        self.main = self.runs[self.runs["family"] == "main"] if len(self.runs) else self.runs
        self.selected_notes: dict[str, str] = {}
        self.notes: list[str] = []
        self.picks = picks_by_ref(pick)
        self.pick = self.picks.get(SELECTED)
        # the arms the phase's gates compare against (a gate's worse / ref side): controls, never 'selected'
        self.controls = set(controls or ())
        self.significance = significance
        self._sd_cache: dict = {}
        self._grouped = None
        self._qty: dict = {}
        self._picked: dict = {}

    @property
    def selected_note(self) -> str:
        return self.selected_notes.get(SELECTED, "")

    # ------------------------------------------------------------------------------------------ arms
    def arm_keys(self, names: list | None) -> list[tuple]:
        """(model, arm, variant) of the main-family non-baseline configurations named (None: all);
        'selected' / 'selected:NAME' is that selection's pick (an earlier phase's, or the later phase's
        selection from this one)."""
        r = self.main[~self.is_base.loc[self.main.index]] if len(self.main) else self.main
        keys = sorted({tuple(x) for x in r[KEY].itertuples(index=False)}) if len(r) else []
        if names is None:
            return keys
        out = []
        for n in names:
            if is_selected(n):
                out += [k for k in self.selected_keys(n) if k not in out]
            else:
                out += [k for k in keys if k[1] == n and k not in out]
        return out

    def selected_keys(self, ref: str = SELECTED) -> list[tuple]:
        r = self.main[~self.is_base.loc[self.main.index]] if len(self.main) else self.main
        if self.selections:
            sel = self.selections.get(ref)
            if not sel or not sel.get("arm"):
                self.selected_notes[ref] = (f"{ref!r}: no such selection in this phase (it has "
                                            f"{', '.join(sorted(self.selections))}), nothing judged")
                return []
            arm, var = sel["arm"], sel.get("variant")
            m = r["arm"] == arm
            if var is not None and "variant" in r:
                # the selected variant, or the phase's own variants built on it (a sweep of the selected arm:
                # topk0.01 for a selected 'default', lr0.03+projection_every3 for a selected lr0.03)
                v = r["variant"].astype(str)
                mine = (v == str(var)) | v.str.startswith(f"{var}+")
                if not (m & mine).any() and not sel.get("param"):
                    mine = pd.Series(True, index=r.index)  # an unswept choice, swept by this phase: all of it
                m &= mine
            self.selected_notes[ref] = (f"{ref!r} = {arm}" + (f" {var}" if var else "")
                                        + " (from the earlier phase's selection)")
            return sorted({tuple(x) for x in r.loc[m, KEY].itertuples(index=False)})
        return self.own_pick(ref)

    def own_pick(self, ref: str = SELECTED) -> list[tuple]:
        """No earlier selection: the arm the later phase's `select:` (self.picks[ref]: arms, rule) takes from
        this phase, by analysis.selection.best_arm on this phase's significance table. Without a later
        selection (the pre-run check refuses that study; a direct call can still get here) the same rule,
        significant_best, over the arms that are neither the baseline nor a control (an arm a gate of the
        phase compares against), and the note says so."""
        if ref in self._picked:
            return self._picked[ref]
        from .selection import best_arm
        from .stats import significance_table
        if self.significance is None or not len(self.significance):
            self.significance = significance_table(self.runs, self.baseline, metric=self.metric) \
                if len(self.runs) else pd.DataFrame()
        pick = self.picks.get(ref)
        if pick is None and self.picks:
            self.selected_notes[ref] = (f"{ref!r}: no later selection from this phase is named so (known: "
                                        f"{', '.join(sorted(self.picks))}), nothing judged")
            self._picked[ref] = []
            return []
        arms = (pick or {}).get("arms")
        if pick is None:
            sig = self.significance
            every = sorted(set(sig["arm"])) if len(sig) and "arm" in sig else []
            arms = [a for a in every if a not in self.controls]
        rule = (pick or {}).get("rule") or "significant_best"
        chosen, applied, _ = best_arm(self.significance, list(arms) if arms is not None else None, rule)
        if chosen is None:
            self.selected_notes[ref] = f"{ref!r}: no candidate without a diverged seed, nothing judged"
            self._picked[ref] = []
            return []
        key = (chosen["model"], chosen["arm"], str(chosen.get("variant") or "default"))
        if pick is not None:
            fam = f"among {', '.join(arms)}" if arms else "among every arm of the phase"
            what = "the pick of the later phase's selection"
        else:
            fam = (f"among {', '.join(arms)}: no later phase selects from this one, so every arm but the "
                   f"baseline and the controls ({', '.join(sorted(self.controls)) or 'none'})")
            what = "this phase's own pick"
        self.selected_notes[ref] = f"{ref!r} = {_label(*key)}: {what} ({applied}, {fam}); its estimate is optimistic"
        self._picked[ref] = [key]
        return [key]

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
         a_worst: int = 0, b_worst: int = 0, cannot_pass: str | None = None, distance=math.nan, sd=math.nan,
         sd_src="", note="", scale=None, estimate_pct=None) -> dict:
    """One hypothesis. a, b: the usable values (and seeds) of the judged side and its reference; a_worst /
    b_worst: runs that are not ok (diverged), the worst outcome, tested by ranks; cannot_pass: why this
    hypothesis may not PASS (a judged run not ok). `scale` (default mean(b)) turns the tested difference
    q = mean(a) - ratio x mean(b) into a fraction for the bounds; the boundary is ratio - 1."""
    a = np.asarray(a if a is not None else [], float)
    b = np.asarray(b if b is not None else [], float)
    h = {"label": label, "claim": claim, "n_arm": len(a) + a_worst, "n_base": len(b) + b_worst,
         "n_worst": a_worst + b_worst, "cannot_pass": cannot_pass, "note": note, "ratio": ratio,
         "direction": direction, "distance": distance, "sd": sd, "sd_source": sd_src, "p": math.nan,
         "p_against": math.nan, "test": "none", "estimate_pct": math.nan, "ci_pct": [math.nan, math.nan],
         "mean_arm": math.nan, "mean_base": math.nan, "boundary_pct": 100.0 * (ratio - 1.0), "q": math.nan,
         "se": math.nan, "df": math.nan, "scale": math.nan, "paired": pairing(list(sa or []), list(sb or []))}
    if len(a) and len(b):
        ma, mb = float(a.mean()), float(b.mean())
        h.update(mean_arm=ma, mean_base=mb, estimate_pct=100 * (ma / mb - 1) if mb else math.nan)
        if len(a) >= 2 and len(b) >= 2 and mb and not (a_worst or b_worst) and scale is None:
            t = ratio_test(a, sa, b, sb, 1.0, "less")  # the plain difference, for its two-sided 95% CI
            if is_num(t["df"]) and is_num(t["se"]):
                half = sps.t.ppf(0.975, t["df"]) * t["se"]
                h["ci_pct"] = [100 * (ma - mb - half) / mb, 100 * (ma - mb + half) / mb]
    if estimate_pct is not None:
        h["estimate_pct"] = estimate_pct
    if h["n_arm"] >= 2 and h["n_base"] >= 2:
        if a_worst or b_worst:
            inf = math.inf if direction == "less" else -math.inf
            t = rank_test(np.concatenate([a, np.full(a_worst, inf)]), np.concatenate([b, np.full(b_worst, inf)]),
                          ratio, direction)
        else:
            t = ratio_test(a, sa, b, sb, ratio, direction)
        h.update(p=t["p"], p_against=t["p_other"], test=t["test"], q=t["q"], se=t["se"], df=t["df"],
                 scale=float(scale) if scale is not None else (float(b.mean()) if len(b) else math.nan))
    return h


def _bound(h: dict, level: float, side: str) -> float:
    """The one-sided bound (in %, on the scale of the boundary) at `level`: side "claim" is the bound the
    PASS side reads (upper for a "less" claim), "against" the other one."""
    if not (is_num(h.get("se")) and h["se"] > 0 and is_num(h.get("scale")) and h["scale"] and is_num(h["df"])):
        return math.nan
    upper = (side == "claim") == (h["direction"] == "less")
    tq = float(sps.t.isf(level, h["df"]))
    q = h["q"] + (tq if upper else -tq) * h["se"]
    return 100.0 * q / h["scale"] + h["boundary_pct"]


def _not_ok(rows: pd.DataFrame) -> list[str]:
    return [_run_label(r) + f" ({r['status']})" for r in rows[rows["status"] != "ok"].to_dict("records")]


def _side(c: Ctx, rows: pd.DataFrame, col: str) -> tuple[np.ndarray, list, int, list[str]]:
    """(usable values, seeds, worst outcomes, labels of runs not ok) of one side of a comparison."""
    v, sd, _ = c.values(rows, col)
    bad = _not_ok(rows)
    return v, sd, len(bad), bad


def _pair(c: Ctx, label: str, claim: str, arm_rows, ref_rows, col: str, ratio: float, direction: str,
          distance: float, family: str = "main") -> dict:
    a, sa, aw, abad = _side(c, arm_rows, col)
    b, sb, bw, _ = _side(c, ref_rows, col)
    sd, src = c.rel_sd(col, family)
    return _hyp(label, claim, a=a, sa=sa, b=b, sb=sb, ratio=ratio, direction=direction, a_worst=aw, b_worst=bw,
                cannot_pass=("a judged run is not ok: " + ", ".join(abad)) if abad else None,
                distance=distance, sd=sd, sd_src=src)


def _arm_vs_base(c: Ctx, key: tuple, col: str, s: dict, claim: str, family: str = "main") -> dict:
    gk = GATE_KINDS[s["kind"]]
    return _pair(c, _label(*key), claim, c.rows(key, family), c.base_rows(key[0], family), col, gk.boundary(s),
                 gk.direction, gk.distance(s), family)


# ----------------------------------------------------------------------------------- statistical kinds
# Each returns (hypotheses, claim); the mode ("any" / "all") is the kind's declaration.
def k_within_baseline(c: Ctx, s: dict) -> tuple[list, str]:
    m = float(s["margin"])
    claim = f"mean final loss < baseline x (1 + {m:.1%}) (non-inferiority, margin {m:.1%})"
    return [_arm_vs_base(c, k, c.metric, s, claim) for k in c.arm_keys(s["arms"])], claim


def k_beats_baseline(c: Ctx, s: dict) -> tuple[list, str]:
    m = float(s["min_improvement"])
    claim = f"mean final loss < baseline x (1 - {m:.1%}) (improvement > {m:.1%})"
    keys = [k for k in c.arm_keys(s["arms"]) if s["model"] is None or k[0] == s["model"]]
    return [_arm_vs_base(c, k, c.metric, s, claim) for k in keys], claim


def k_not_worse_than_baseline(c: Ctx, s: dict) -> tuple[list, str]:
    m = float(s["margin"])
    col = c.metric if s["step"] is None else f"val_loss_at_{int(s['step'])}"
    where = "final loss" if s["step"] is None else f"val loss at step {int(s['step'])}"
    claim = f"mean {where} < baseline x (1 + {m:.1%}) (non-inferiority, margin {m:.1%})"
    return [_arm_vs_base(c, k, col, s, claim) for k in c.arm_keys(s["arms"])], claim


def k_metric_higher(c: Ctx, s: dict) -> tuple[list, str]:
    claim = f"mean {s['metric']} > baseline's"
    return [_arm_vs_base(c, k, s["metric"], s, claim) for k in c.arm_keys(s["arms"])], claim


def _arm_pairs(c: Ctx, better_names: list, worse_name: str, matched: bool) -> tuple[list, list]:
    """(better, worse) configuration pairs of one model: the same variant when there is one (always with
    `matched`), else every configuration of the worse arm; and the better configurations left unmatched."""
    worse = c.arm_keys([worse_name])
    pairs, unmatched = [], []
    for bk in c.arm_keys(better_names):
        same_model = [w for w in worse if w[0] == bk[0]]
        shared = [w for w in same_model if w[2] == bk[2]]
        if matched and not shared:
            unmatched.append(bk)
        pairs += [(bk, w) for w in (shared if (shared or matched) else same_model)]
    return pairs, unmatched


def k_arm_better_than_arm(c: Ctx, s: dict) -> tuple[list, str]:
    gk = GATE_KINDS[s["kind"]]
    m = float(s["margin"])
    claim = (f"{s['better']}'s mean final loss < {s['worse']}'s x (1 - {m:.1%})"
             + (" at the same variant" if s.get("matched") else ""))
    pairs, unmatched = _arm_pairs(c, [s["better"]], s["worse"], bool(s.get("matched")))
    hs = [_pair(c, f"{_label(*bk)} vs {_label(*wk)}", claim, c.rows(bk), c.rows(wk), c.metric, gk.boundary(s),
                "less", gk.distance(s)) for bk, wk in pairs]
    if unmatched:
        c.notes.append(f"not judged (no {s['worse']} run at the same variant): "
                       + ", ".join(_label(*k) for k in unmatched))
    return hs, claim


def k_any_better_than_arm(c: Ctx, s: dict) -> tuple[list, str]:
    gk = GATE_KINDS[s["kind"]]
    m = float(s["margin"])
    claim = f"at least one of {', '.join(s['arms'])} has a mean final loss < {s['worse']}'s x (1 - {m:.1%})"
    pairs, _ = _arm_pairs(c, list(s["arms"]), s["worse"], False)
    return [_pair(c, f"{_label(*bk)} vs {_label(*wk)}", claim, c.rows(bk), c.rows(wk), c.metric, gk.boundary(s),
                  "less", gk.distance(s)) for bk, wk in pairs], claim


def _last_part(variant) -> str:
    return str(variant).split("+")[-1]


def k_interaction(c: Ctx, s: dict) -> tuple[list, str]:
    """Per seed: rise_arm(v) - rise_ref(v), rise = loss at v / loss at the start setting - 1; one-sample t
    (seed-matched) of that difference < -margin. The start of an arm may be the phase's baseline."""
    m, start = float(s["margin"]), str(s["start"])
    claim = (f"{s['arm']}'s relative loss rise from {start} < {s['ref']}'s - {m:.1%} (difference of "
             "differences, seed-matched)")
    gk = GATE_KINDS[s["kind"]]
    r = c.main
    hs = []

    def configs(arm):
        out = {}
        for k, g in r[r["arm"] == arm].groupby(KEY, sort=True):
            out.setdefault(k[0], {})[_last_part(k[2])] = g
        return out
    arm_c, ref_c = configs(s["arm"]), configs(s["ref"])
    for model in sorted(arm_c):
        ac, rc = arm_c[model], ref_c.get(model, {})
        if start not in ac or start not in rc:
            c.notes.append(f"{model}: {s['arm']} or {s['ref']} has no run at {start}")
            continue
        for v in sorted(set(ac) & set(rc) - {start}, key=_natural):
            per = []
            bad = []
            for g in (ac[v], ac[start], rc[v], rc[start]):
                vals, seeds, _ = c.values(g, c.metric)
                per.append(dict(zip(seeds, vals)))
                bad += _not_ok(g)
            common = sorted(set(per[0]) & set(per[1]) & set(per[2]) & set(per[3]))
            ra = np.array([per[0][x] / per[1][x] - 1 for x in common])
            rr = np.array([per[2][x] / per[3][x] - 1 for x in common])
            sd, src = c.rel_sd(c.metric)
            h = _hyp(f"{model} {v}: {s['arm']} rise vs {s['ref']} rise", claim, a=ra + m, sa=common, b=rr,
                     sb=common, ratio=1.0, direction="less", distance=gk.distance(s),
                     sd=sd * math.sqrt(2) if is_num(sd) else sd, sd_src=src + " (x sqrt 2: a rise)",
                     cannot_pass=("runs not ok (no rise without them): " + ", ".join(bad)) if bad else None,
                     scale=1.0, estimate_pct=100 * float((ra - rr).mean()) if len(common) else math.nan)
            h["boundary_pct"] = 0.0 - 100.0 * m + 0.0
            hs.append(h)
    return hs, claim


def _natural(x: str):
    import re
    return [float(t) if t.replace(".", "", 1).isdigit() else t for t in re.split(r"(\d+\.?\d*)", x)]


def _steps_to(g: pd.DataFrame, target: float) -> float:
    """The step at which a curve first reaches `target`, interpolated linearly between the evaluation
    before and the one at which it is reached (NaN: never)."""
    v, st = g["val_loss"].to_numpy(float), g["step"].to_numpy(float)
    hit = np.nonzero(v <= target)[0]
    if not len(hit):
        return math.nan
    i = int(hit[0])
    if i == 0 or v[i - 1] == v[i]:
        return float(st[i])
    return float(st[i - 1] + (st[i] - st[i - 1]) * (v[i - 1] - target) / (v[i - 1] - v[i]))


def k_reaches_target_sooner(c: Ctx, s: dict) -> tuple[list, str]:
    gk = GATE_KINDS[s["kind"]]
    m = float(s["min_speedup"])
    claim = (f"scratch arm's steps to the scratch baseline's mean final loss < (1 - {m:.0%}) x the baseline's "
             "(steps interpolated between evaluations)")
    r = c.runs[c.runs["family"] == "scratch"] if len(c.runs) else c.runs
    cv = c.curves
    if len(r) == 0 or len(cv) == 0 or "val_loss" not in cv:
        return [], claim
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
        # a baseline seed that never goes below the mean counts at its last evaluated step (in its favour)
        b = [_steps_to(g, target) if is_num(_steps_to(g, target)) else float(g["step"].iloc[-1]) for _, g in fin]
        sb = [sd for sd, _ in fin]
        for key, ar in arms.groupby(["arm", "variant"], sort=True):
            a, sa, bad, worst = [], [], [], 0
            for x in ar.to_dict("records"):
                g = curves.get((x["model"], x["arm"], x["variant"], x["seed"]))
                st = _steps_to(g, target) if g is not None else math.nan
                if x["status"] != "ok" or not is_num(st):
                    worst += 1  # never reached (or diverged): the worst outcome, ranked last
                    bad.append(_run_label(x) + (f" ({x['status']})" if x["status"] != "ok" else " never reached it"))
                else:
                    a.append(st)
                    sa.append(x["seed"])
            sd, dof = pooled_rel_sd(pd.DataFrame({"g": ["a"] * len(a) + ["b"] * len(b), "v": a + b}), "v", ["g"])
            hs.append(_hyp(f"{_label(model, *key)} vs scratch baseline", claim, a=a, sa=sa, b=b, sb=sb,
                           ratio=gk.boundary(s), direction="less", a_worst=worst,
                           cannot_pass=("worst outcome: " + ", ".join(bad)) if bad else None,
                           distance=gk.distance(s), sd=sd, sd_src=f"pooled steps ({dof} df)" if dof else "none",
                           note=f"target val loss {target:.4f}"))
    return hs, claim


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


def k_equal_bytes(c: Ctx, s: dict) -> dict:
    col, tol = s["metric"], float(s["tolerance"])
    claim = f"{', '.join(s['arms'])} send the same {col} (within {tol:.1%}) at each shared variant"
    r = c.runs[(c.runs["family"] == "main") & (c.runs["status"] == "ok")] if len(c.runs) else c.runs
    if len(r) == 0:
        return _result(INSUFFICIENT, claim, "no runs", "the phase has no finished runs")
    names = list(s["arms"])
    sel = {k: n for n in names if is_selected(n) for k in c.arm_keys([n])}
    r = r.assign(_v=c.column(r, col), _who=[sel.get((m, a, v), a) for m, a, v in r[KEY].itertuples(index=False)])
    r = r[r["_who"].isin(names) | r["arm"].isin(names)]
    r = r.assign(_who=np.where(r["arm"].isin(names), r["arm"], r["_who"]))
    means = r.groupby(["model", "variant", "_who"])["_v"].mean()
    problems, checked, missing = [], 0, []
    for (model, variant), g in means.groupby(level=[0, 1]):
        if g.index.get_level_values(2).nunique() < 2:
            continue
        if not np.isfinite(g.to_numpy()).all():
            missing.append(f"{model} {variant}")
            continue
        checked += 1
        lo, hi = float(g.min()), float(g.max())
        if lo <= 0 or hi / lo - 1 > tol:
            problems.append(f"{model} {variant}: " + ", ".join(f"{w} {float(x):.4g}" for (_, _, w), x in g.items()))
    if missing and not checked:
        return _result(INSUFFICIENT, claim, "not logged", f"{col} missing for {', '.join(missing)}")
    if not checked:
        return _result(INSUFFICIENT, claim, "no shared variant", "the arms share no variant to compare")
    if problems:
        return _result(FAIL, claim, f"{len(problems)} of {checked} differ", "; ".join(problems))
    return _result(PASS, claim, f"{checked} variant(s) equal", f"{col} within {tol:.1%} at every shared variant"
                   + (f"; not logged at {', '.join(missing)}" if missing else ""))


# ------------------------------------------------------------------------------------- evaluation
def _fmt_bound(x) -> str:
    return f"{x:+.2f}%" if is_num(x) else "n/a"


def _status(h: dict, s: dict) -> str:
    """pass / fail / insufficient for one hypothesis (module docstring), with the bound it used."""
    mn, level = int(s["min_n"]), float(s["level"])
    bnd = h["boundary_pct"]
    up = h["direction"] == "less"
    claim_side, other_side = ("upper", "lower") if up else ("lower", "upper")
    h["bound_claim_pct"] = _bound(h, h.get("level_claim", level), "claim")
    h["bound_against_pct"] = _bound(h, h.get("level_against", level), "against")
    pw_txt = f"; power at the threshold {h['power']:.0%}" if is_num(h.get("power")) else ""
    if h["n_arm"] < mn or h["n_base"] < mn:
        h["why"] = f"{h['n_arm']}/{h['n_base']} seeds, fewer than min_n={mn}"
        return "insufficient"
    if not is_num(h["p"]):
        h["why"] = ("zero spread between seeds: no test (a t-test would say p = 0)" if h["test"] == "zero spread"
                    else "no test")
        return "insufficient"
    cmp = "<" if up else ">"
    if is_num(h.get("p_holm")) and h["p_holm"] < level:
        if h.get("cannot_pass"):
            h["why"] = f"shown on ranks (Holm p={fmt_p(h['p_holm'])}) but {h['cannot_pass']}: cannot PASS"
            return "insufficient"
        b = (f"{claim_side} bound {_fmt_bound(h['bound_claim_pct'])} {cmp} {bnd:+.2f}%, "
             if is_num(h["bound_claim_pct"]) else "")
        h["why"] = f"{b}Holm p={fmt_p(h['p_holm'])} < {level:g}"
        return "pass"
    if is_num(h.get("p_against_holm")) and h["p_against_holm"] < level:
        b = (f"{other_side} bound {_fmt_bound(h['bound_against_pct'])} {'>' if up else '<'} {bnd:+.2f}%, "
             if is_num(h["bound_against_pct"]) else "")
        h["why"] = f"{b}the opposite side's Holm p={fmt_p(h['p_against_holm'])} < {level:g}: the data exclude the claim"
        return "fail"
    b = (f"{claim_side} bound {_fmt_bound(h['bound_claim_pct'])} does not clear {bnd:+.2f}% (not shown), "
         f"{other_side} bound {_fmt_bound(h['bound_against_pct'])} does not exclude it, "
         if is_num(h["bound_claim_pct"]) and is_num(h["bound_against_pct"]) else "")
    h["why"] = (f"{b}Holm p={fmt_p(h.get('p_holm'))} (opposite {fmt_p(h.get('p_against_holm'))}): undecided"
                + pw_txt + (f"; {h['cannot_pass']}" if h.get("cannot_pass") else ""))
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


def _holm_levels(ps: list[float], level: float) -> list[float]:
    """Holm's per-hypothesis level at its step: level / (K - rank), rank of its p among the K (0 first)."""
    order = np.argsort(np.asarray(ps, float), kind="mergesort")
    out = [level] * len(ps)
    for rank, i in enumerate(order):
        out[i] = level / (len(ps) - rank)
    return out


def kind_function(kind: str) -> Callable:
    """The function analysis/gates.py implements for a declared kind (gate_kinds.function_name)."""
    fn = globals().get(function_name(kind))
    if fn is None:
        raise AssertionError(f"gate kind {kind!r} is declared in analysis/gate_kinds.py but analysis/gates.py "
                             f"has no function {function_name(kind)}")
    return fn


def control_arms(resolved: Mapping[str, Mapping]) -> set[str]:
    """The arms the phase's gates compare against (arm_better_than_arm / any_better_than_arm `worse`,
    interaction `ref`): the controls, which a phase's own 'selected' never picks."""
    out = set()
    for st in resolved.values():
        for key in ("worse", "ref"):
            v = st.get(key)
            if isinstance(v, str) and not is_selected(v) and GATE_KINDS[st["kind"]].params.get(key) is not None:
                out.add(v)
    return out


def evaluate_gates(runs: pd.DataFrame, significance: pd.DataFrame | None, curves: pd.DataFrame | None,
                   gates: Mapping[str, Any] | None, baseline: str, phase: str, *, selection: Mapping | None = None,
                   noise_sd: float | None = None, power_floor: float | None = None,
                   pick: Mapping | None = None) -> dict:
    """gates: {instance name: {kind: K, ...settings}} (resolved again here: unknown kinds or settings raise
    ValueError naming them). `significance`: the phase's significance table (what a later phase's
    selection reads; computed from runs when None), used for 'selected' when no earlier selection gives it;
    `selection`: this phase's selection.json (one record, or {"selections": {NAME: record}}: 'selected:NAME');
    `pick`: the later phase's `select:` from this phase ({arms, rule}, or {reference: {arms, rule}}). `power_floor` (the study's
    default) applies to statistical gates that do not set their own (the design check's flag)."""
    resolved = {}
    for name, settings in (gates or {}).items():
        settings = with_floor(settings, power_floor)
        st, problems = resolve(f"gates.{name}", settings)
        if problems:
            raise ValueError("; ".join(problems))
        resolved[name] = st
    ctx = Ctx(runs, curves, baseline, phase, selection, noise_sd, pick=pick, significance=significance,
              controls=control_arms(resolved))
    hyps: dict[str, tuple] = {}
    for name, st in resolved.items():
        if GATE_KINDS[st["kind"]].statistical:
            ctx.notes = []
            hs, claim = kind_function(st["kind"])(ctx, st)
            hyps[name] = (hs, claim, list(ctx.notes))
    family = [(n, i) for n, (hs, _, _) in hyps.items() for i, h in enumerate(hs) if is_num(h["p"])]
    k = len(family)
    if k:
        lvl = {n: float(resolved[n]["level"]) for n in hyps}
        for side, key in (("p", "p_holm"), ("p_against", "p_against_holm")):
            ps = [hyps[n][0][i][side] for n, i in family]
            adj = holm(ps)
            levels = _holm_levels(ps, 1.0)
            for (n, i), p, lv in zip(family, adj, levels):
                hyps[n][0][i][key] = float(p)
                hyps[n][0][i]["level_claim" if side == "p" else "level_against"] = lvl[n] * lv
    results = []
    for name, st in resolved.items():
        kind = st["kind"]
        gk = GATE_KINDS[kind]
        if not gk.statistical:
            res = kind_function(kind)(ctx, st)
        else:
            hs, claim, notes = hyps[name]
            for h in hs:
                if is_num(h["sd"]) and h["sd"] > 0 and is_num(h["distance"]) and h["distance"] > 0 \
                        and min(h["n_arm"], h["n_base"]) >= 2:
                    h["power"] = pw.power(h["distance"], h["sd"], min(h["n_arm"], h["n_base"]),
                                          float(st["level"]) / max(k, 1), paired=h["paired"], n2=h["n_base"])
                else:
                    h["power"] = math.nan
                h["status"] = _status(h, st)
            verdict = _combine([h["status"] for h in hs], gk.mode)
            who = "some" if gk.mode == "any" else "every"
            if not hs:
                obs, det = "nothing to judge", "no configuration of this phase matches the gate's arms / data"
            else:
                counts = {x: sum(h["status"] == x for h in hs) for x in ("pass", "fail", "insufficient")}
                obs = f"{counts['pass']} pass, {counts['fail']} fail, {counts['insufficient']} insufficient of {len(hs)}"
                det = "; ".join(_describe(h) for h in hs)
            if notes:
                det = "; ".join(notes) + ". " + det
            used = [x for v in st.values() for x in (v if isinstance(v, list) else [v]) if is_selected(x)]
            said = [ctx.selected_notes[x] for x in dict.fromkeys(used) if ctx.selected_notes.get(x)]
            if said:
                det = "; ".join(said) + ". " + det
            res = _result(verdict, f"{who} judged configuration: {claim}; one-sided bounds, Holm over the phase's "
                          f"{k} hypotheses at {float(st['level']):g} (PASS and FAIL sides alike), min n {st['min_n']}",
                          obs, det,
                          {"hypotheses": [{x: h.get(x) for x in (
                              "label", "status", "why", "n_arm", "n_base", "n_worst", "test", "mean_arm",
                              "mean_base", "estimate_pct", "ci_pct", "boundary_pct", "bound_claim_pct",
                              "bound_against_pct", "level_claim", "level_against", "p", "p_holm", "p_against",
                              "p_against_holm", "power", "distance", "sd", "sd_source", "note")} for h in hs],
                           "k_family": k, "mode": gk.mode})
        res = {"name": name, "kind": kind, **res, "settings": st}
        results.append(res)
        log.info("gate %s (%s): %s (%s)", name, kind, res["verdict"], res["observed"])
    verdicts = [r["verdict"] for r in results]
    passed = None if not verdicts else (False if FAIL in verdicts else (True if all(v == PASS for v in verdicts)
                                                                        else None))
    return clean({"phase": phase, "passed": passed, "k_family": k, "gates": results})


def passed_word(passed) -> str:
    return {True: "PASSED", False: "FAILED"}.get(passed, "INCONCLUSIVE")


DETAIL_MAX = 240  # characters of a gate's detail in the report's section (gates.md / gates.json: all of it)


def gates_markdown(g: dict, short: bool = False) -> str:
    """gates.md's table; `short` (the report's section) cuts each detail cell at DETAIL_MAX characters and
    points to gates.md for the rest."""
    head = (f"**{g['phase']} gates: {passed_word(g['passed'])}** "
            f"({sum(x['verdict'] == PASS for x in g['gates'])}/{len(g['gates'])} PASS)\n\n")
    order = sorted(g["gates"], key=lambda x: x.get("kind") != "baseline_sane")  # the baseline check first

    def cut(text: str) -> str:
        text = str(text)
        if not short or len(text) <= DETAIL_MAX:
            return text
        return text[:DETAIL_MAX].rsplit(" ", 1)[0] + " ... (full text in gates.md)"
    rows = [(x["name"], x.get("kind", ""), f"**{x['verdict']}**", cut(x.get("claim", x.get("threshold", ""))),
             x["observed"], cut(x["detail"])) for x in order]
    return head + md_table(["gate", "kind", "verdict", "claim tested", "observed", "detail"], rows)


def gates_table(g: dict) -> pd.DataFrame:
    """gates.json as a flat table (gates.csv, for snakemake --report): one row per gate."""
    rows = [{"phase": g["phase"], "gate": x["name"], "kind": x.get("kind", ""), "verdict": x["verdict"],
             "claim": x.get("claim", ""), "observed": x["observed"], "detail": x["detail"]} for x in g["gates"]]
    return pd.DataFrame(rows, columns=["phase", "gate", "kind", "verdict", "claim", "observed", "detail"])
