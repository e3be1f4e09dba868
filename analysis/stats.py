"""significance: each arm against the baseline of the same model and role family.

One row per (model, family, arm, variant) that is not the baseline. `family` is "main" for the roles
baseline/arm and "scratch" for scratch_baseline/scratch_arm: scratch arms are compared with the scratch
baseline only.

Which values enter a test: runs with status "ok" and a finite value of the metric ("usable"). A diverged
run is excluded from the mean, std and test, counted in n_diverged_arm / n_diverged_base, and forces the
arm's verdict to be anything but "better" (a diverged seed is a failure, not a missing value).

Test: "paired t" (scipy.stats.ttest_rel on the seed-matched differences) when the usable seeds of both
sides are the same set, each seed once, n >= 2; otherwise "welch" (scipy.stats.ttest_ind,
equal_var=False). Pairing tests the mean of the per-seed differences: it removes whatever the two runs of
one seed share (initialisation, data order) and costs degrees of freedom (n - 1 instead of about 2n - 2);
whether it is the more sensitive test depends on how strongly seed-matched runs correlate. Fewer than 2
usable values on either side: verdict "insufficient" and no t, p, p_holm, CI (empty cells, never a number).
p_holm: Holm over all of the phase's comparisons that have a p (statsmodels multipletests). Effect size:
Cohen's d_z = mean(d)/sd(d) for paired, Cohen's d = diff / pooled sd for Welch.

MDE (mde, mde_pct): the true difference that this comparison's test, two-sided, at the Holm worst-case
level alpha_level / k (k = comparisons with a p in the phase), detects with probability `power`. Exact
(analysis/power.py): noncentral t for paired, the Welch integral for Welch. The sd is NOT the comparison's
own sample sd (at n = 2 that is too noisy to plan with): it is `noise_sd` (a fraction of the loss, e.g. the
design check's estimate) when given, else the pooled within-configuration sd of this phase (every
configuration with >= 2 usable seeds), relative to each configuration's mean; paired runs are assumed
uncorrelated (sd of a difference = sd x sqrt 2). `sd_rel` and `sd_source` say which.
"""
from __future__ import annotations

import logging
import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as sps

from . import power as pw

log = logging.getLogger("analysis.stats")

BASE_ROLES = ("baseline", "scratch_baseline")
SIG_COLS = ["phase", "model", "family", "arm", "variant", "param", "value", "alpha", "metric", "n_arm", "n_base", "mean_arm", "mean_base",
            "std_arm", "std_base", "diff", "diff_pct", "ci_low", "ci_high", "test", "df", "t", "p", "p_holm",
            "effect_size", "effect_size_kind", "mde", "mde_pct", "n_diverged_arm", "n_diverged_base",
            "seeds_arm", "seeds_base", "k_family", "sd_rel", "sd_source", "verdict", "note"]
VERDICTS = ("better", "worse", "no significant difference", "insufficient")


def family_of(role: Any) -> str:
    return "scratch" if str(role).startswith("scratch") else "main"


def baseline_mask(runs: pd.DataFrame, baseline: str) -> pd.Series:
    """Baseline runs: role baseline/scratch_baseline, or (without a role column) arm == baseline.

    With roles, the role alone decides: the baseline's arm can run at other values in the same phase (Muon
    at the selected lr against Muon projecting every 3 steps), and those runs are arms to judge."""
    if "role" in runs:
        return runs["role"].isin(BASE_ROLES)
    return runs["arm"] == baseline


def with_family(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy with `family`, and the identity columns variant/param/value/alpha filled in when a table
    predates them (variant from alpha as aggregate.variant_of does)."""
    out = runs.copy()
    out["family"] = out["role"].map(family_of) if "role" in out else "main"
    if "alpha" not in out:
        out["alpha"] = math.nan
    if "variant" not in out:
        out["variant"] = [f"alpha{format(float(a), 'g')}" if is_num_pos(a) or a == 0 else "default"
                          for a in out["alpha"]]
    out["variant"] = out["variant"].fillna("default").astype(str)
    if "param" not in out:
        out["param"] = ""
    if "value" not in out:
        out["value"] = math.nan
    return out


def usable_mask(df: pd.DataFrame, metric: str) -> pd.Series:
    vals = pd.to_numeric(df[metric], errors="coerce") if metric in df else pd.Series(np.nan, index=df.index)
    return (df["status"] == "ok") & np.isfinite(vals.astype(float))


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values (equal to statsmodels multipletests(method="holm")[1], which calls
    gc.collect() on every use: 0.15 s each)."""
    p = np.asarray(p, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="mergesort")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def pooled_sd(a: np.ndarray, b: np.ndarray) -> float:
    n1, n2 = len(a), len(b)
    if n1 + n2 <= 2:
        return math.nan
    return math.sqrt(((n1 - 1) * np.var(a, ddof=1) + (n2 - 1) * np.var(b, ddof=1)) / (n1 + n2 - 2))


def pairing(arm_seeds: list, base_seeds: list) -> bool:
    """Seeds pair when both sides hold the same seed set, each seed once."""
    return (len(arm_seeds) == len(set(arm_seeds)) and len(base_seeds) == len(set(base_seeds))
            and set(arm_seeds) == set(base_seeds))


def compare(arm_vals: np.ndarray, arm_seeds: list, base_vals: np.ndarray, base_seeds: list, *,
            confidence: float = 0.95, alpha_level: float = 0.05, power: float = 0.8,
            alternative: str = "two-sided") -> dict:
    """Compare two samples of a metric (arm - base). Returns the statistics of one significance row
    (no Holm, no verdict). `alternative` is passed to scipy (used by the gates' one-sided tests)."""
    a = np.asarray(arm_vals, dtype=float)
    b = np.asarray(base_vals, dtype=float)
    n1, n2 = len(a), len(b)
    r: dict[str, Any] = dict(n_arm=n1, n_base=n2,
                             mean_arm=float(a.mean()) if n1 else math.nan,
                             mean_base=float(b.mean()) if n2 else math.nan,
                             std_arm=float(a.std(ddof=1)) if n1 >= 2 else math.nan,
                             std_base=float(b.std(ddof=1)) if n2 >= 2 else math.nan,
                             test="none", df=math.nan, t=math.nan, p=math.nan, ci_low=math.nan,
                             ci_high=math.nan, effect_size=math.nan, effect_size_kind="", mde=math.nan)
    r["diff"] = r["mean_arm"] - r["mean_base"]
    r["diff_pct"] = 100.0 * r["diff"] / r["mean_base"] if r["mean_base"] else math.nan
    if n1 < 2 or n2 < 2:
        return r
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if pairing(list(arm_seeds), list(base_seeds)):
            order_a = np.argsort(np.asarray(arm_seeds))
            order_b = np.argsort(np.asarray(base_seeds))
            a2, b2 = a[order_a], b[order_b]
            res = sps.ttest_rel(a2, b2, alternative=alternative)
            d = a2 - b2
            sd = float(d.std(ddof=1))
            es = float(d.mean() / sd) if sd > 0 else math.nan
            r.update(test="paired t", effect_size=es, effect_size_kind="d_z")
        else:
            res = sps.ttest_ind(a, b, equal_var=False, alternative=alternative)
            sp = pooled_sd(a, b)
            es = float(r["diff"] / sp) if sp > 0 else math.nan
            r.update(test="welch", effect_size=es, effect_size_kind="d")
        ci = res.confidence_interval(confidence)
        r.update(t=float(res.statistic), p=float(res.pvalue), df=float(res.df),
                 ci_low=float(ci.low), ci_high=float(ci.high))
    return r


def ratio_test(arm_vals, arm_seeds, base_vals, base_seeds, ratio: float, direction: str) -> dict:
    """One-sided test of mean(arm) against ratio x mean(base); direction "less": H1 mean(arm) < ratio x
    mean(base), "greater": H1 mean(arm) > ratio x mean(base). Exact for that hypothesis: paired, the
    seed-matched a - ratio x b against 0 (one-sample t, as scipy ttest_1samp); else Welch's t on a and
    ratio x b (as scipy ttest_ind(equal_var=False)); written out in numpy because the gates run it for
    every configuration. Zero spread (all differences equal) is no test: p and p_other are NaN and test
    is "zero spread" (a t-test would say p = 0). Returns test, n, p, t, df, the difference q = mean(a) -
    ratio x mean(b) and its standard error se (for one-sided bounds), and the opposite direction's p as
    p_other."""
    a = np.asarray(arm_vals, dtype=float)
    b = np.asarray(base_vals, dtype=float)
    out = {"test": "none", "p": math.nan, "p_other": math.nan, "t": math.nan, "df": math.nan,
           "n_arm": len(a), "n_base": len(b), "q": math.nan, "se": math.nan}
    if len(a) < 2 or len(b) < 2:
        return out
    sign = -1.0 if direction == "less" else 1.0
    if pairing(list(arm_seeds), list(base_seeds)):
        d = a[np.argsort(np.asarray(arm_seeds))] - ratio * b[np.argsort(np.asarray(base_seeds))]
        out["test"] = "paired t"
        diff, var, df = float(d.mean()), float(d.var(ddof=1)) / len(d), float(len(d) - 1)
    else:
        out["test"] = "welch"
        rb = ratio * b
        va, vb = float(a.var(ddof=1)) / len(a), float(rb.var(ddof=1)) / len(b)
        diff, var = float(a.mean() - rb.mean()), va + vb
        df = var ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if var > 0 else math.nan
    # zero spread, or a spread at rounding level (equal values stored as floats): no test
    if not var > (1e-12 * max(abs(diff), float(np.abs(a).mean()), 1e-300)) ** 2:
        return dict(out, test="zero spread", q=diff, se=0.0)
    t = diff / math.sqrt(var)
    # special.stdtr(df, x) is Student's t cdf (scipy.stats.t's own kernel, without its per-call overhead)
    return dict(out, p=float(special.stdtr(df, -sign * t)), p_other=float(special.stdtr(df, sign * t)), t=t,
                df=df, q=diff, se=math.sqrt(var))


_EXACT_MAX = 20_000  # splits enumerated exactly by rank_test (7 vs 7 is 3432); beyond, the normal approximation


def rank_p_normal(w, ranks_all, n1: int, n2: int):
    """P(W <= w) and P(W >= w) for the rank sum W of n1 of the ranks (normal approximation with the tie
    correction and a continuity correction of 1/2, as scipy.stats.mannwhitneyu(method="asymptotic")).
    w, ranks_all: arrays (rows of replicates) or scalars / 1-d."""
    r = np.atleast_2d(np.asarray(ranks_all, float))
    n = n1 + n2
    # sum over tie groups of t^3 - t = sum over values of (its group's size^2 - 1)
    cnt = (r[:, :, None] == r[:, None, :]).sum(axis=2)
    ties = (cnt.astype(float) ** 2 - 1).sum(axis=1)
    mu = n1 * (n + 1) / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    sd = np.sqrt(np.maximum(var, 1e-300))
    w = np.asarray(w, float).reshape(-1)
    lo = sps.norm.cdf((w - mu + 0.5) / sd)
    hi = sps.norm.sf((w - mu - 0.5) / sd)
    return lo, hi


def rank_test(arm_vals, base_vals, ratio: float, direction: str) -> dict:
    """One-sided permutation test on ranks (Wilcoxon-Mann-Whitney) of a against ratio x b, for samples
    that hold a worst outcome (a diverged run: +inf for a loss, -inf for a metric to raise) where no mean
    exists. H1 ("less"): a tends to lie below ratio x b. Ties (two diverged runs) take mid-ranks. Exact
    (every split enumerated) up to 20000 splits: the p-value counts the splits at least as extreme, the
    observed one included, so it is never 0 (at 3 vs 3 it is at least 1/20); beyond, the normal
    approximation with tie and continuity corrections. Returns test, p, p_other."""
    a = np.asarray(arm_vals, dtype=float)
    rb = ratio * np.asarray(base_vals, dtype=float)
    n1, n2 = len(a), len(rb)
    out = {"test": "rank (diverged = worst)", "p": math.nan, "p_other": math.nan, "t": math.nan,
           "df": math.nan, "n_arm": n1, "n_base": n2, "q": math.nan, "se": math.nan}
    if n1 < 2 or n2 < 2:
        return out
    ranks = sps.rankdata(np.concatenate([a, rb]))
    w = ranks[:n1].sum()
    if math.comb(n1 + n2, n1) <= _EXACT_MAX:
        from itertools import combinations
        idx = np.array(list(combinations(range(n1 + n2), n1)))
        sums = ranks[idx].sum(axis=1)
        eps = 1e-9
        lo, hi = float(np.mean(sums <= w + eps)), float(np.mean(sums >= w - eps))
    else:
        l_, h_ = rank_p_normal(w, ranks, n1, n2)
        lo, hi = float(l_[0]), float(h_[0])
    p, po = (lo, hi) if direction == "less" else (hi, lo)
    return dict(out, p=p, p_other=po)


def pooled_rel_sd(df: pd.DataFrame, value_col: str, group_cols: list[str]) -> tuple[float, int]:
    """The pooled within-group sd of `value_col`, each group's values divided by the group's mean (a
    fraction), over groups with >= 2 finite values; returns (sd, degrees of freedom)."""
    if value_col not in df or len(df) == 0:
        return math.nan, 0
    x = pd.to_numeric(df[value_col], errors="coerce").astype(float)
    d = df[list(group_cols)].assign(_x=x)
    d = d[np.isfinite(d["_x"])]
    if len(d) == 0:
        return math.nan, 0
    g = d.groupby(list(group_cols), dropna=False, sort=False)["_x"]
    m, n = g.transform("mean"), g.transform("count")
    keep = (n >= 2) & (m != 0)
    counts, means = g.count(), g.mean()
    dof = int((counts[(counts >= 2) & (means != 0)] - 1).sum())
    ss = float(((d.loc[keep, "_x"] / m[keep] - 1.0) ** 2).sum())
    return (math.sqrt(ss / dof) if dof else math.nan), dof


def _seed_str(seeds: list) -> str:
    return " ".join(str(int(s)) for s in sorted(seeds))


def verdict_for(row: dict, alpha_level: float) -> tuple[str, str]:
    n_div = int(row.get("n_diverged_arm") or 0)
    if row["n_arm"] < 2 or row["n_base"] < 2:
        note = f"fewer than 2 usable seeds (arm {row['n_arm']}, baseline {row['n_base']})"
        if n_div:
            note += f"; {n_div} arm seed(s) diverged"
        return "insufficient", note
    p = row["p_holm"]
    sig = p is not None and not math.isnan(p) and p < alpha_level
    if sig and row["diff"] < 0:
        if n_div:
            return ("no significant difference",
                    f"lower loss on the surviving seeds (Holm p={p:.3g}) but {n_div} seed(s) diverged: "
                    f"a diverged arm cannot be 'better'")
        return "better", ""
    if sig and row["diff"] > 0:
        return "worse", ""
    note = f"{n_div} arm seed(s) diverged" if n_div else ""
    return "no significant difference", note


def _degenerate(row: dict) -> str:
    sa, sb = row.get("std_arm"), row.get("std_base")
    if row["test"] != "none" and sa == 0.0 and sb == 0.0:
        return "zero spread between seeds: the t-test is degenerate"
    return ""


def is_num_pos(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x)) and float(x) > 0
    except (TypeError, ValueError):
        return False


def significance_table(runs: pd.DataFrame, baseline: str, *, confidence: float = 0.95,
                       alpha_level: float = 0.05, power: float = 0.8,
                       metric: str = "final_val_loss", noise_sd: float | None = None) -> pd.DataFrame:
    """The phase's significance table (see the module docstring)."""
    if runs is None or len(runs) == 0:
        return pd.DataFrame(columns=SIG_COLS)
    df = with_family(runs)
    if metric not in df:
        raise ValueError(f"significance: metric {metric!r} is not a column of runs.csv")
    df["_usable"] = usable_mask(df, metric)
    df["_div"] = df["status"] == "diverged"
    df["_val"] = pd.to_numeric(df[metric], errors="coerce").astype(float)
    phase = str(df["phase"].iloc[0]) if "phase" in df else ""
    rows = []
    is_base = baseline_mask(df, baseline)
    base = df[is_base]
    arms = df[~is_base]
    base_groups = {k: g for k, g in base.groupby(["model", "family"], sort=False)}
    if noise_sd is not None and is_num_pos(noise_sd):
        sd_rel, sd_source = float(noise_sd), "given (design check)"
    else:
        sd_rel, dof = pooled_rel_sd(df[df["_usable"]], "_val", ["model", "family", "arm", "variant"])
        sd_source = f"pooled over this phase ({dof} df)" if dof else "none (no configuration has 2 usable seeds)"
    for (model, fam, arm, variant), g in arms.groupby(["model", "family", "arm", "variant"], dropna=False,
                                                      sort=True):
        bg = base_groups.get((model, fam), base.iloc[0:0])
        gu, bu = g[g["_usable"]], bg[bg["_usable"]]
        r = compare(gu["_val"].to_numpy(), gu["seed"].tolist(), bu["_val"].to_numpy(), bu["seed"].tolist(),
                    confidence=confidence, alpha_level=alpha_level, power=power)
        first = g.iloc[0]
        r.update(phase=phase, model=model, family=fam, arm=arm, variant=variant, param=first["param"],
                 value=first["value"], alpha=first["alpha"], metric=metric,
                 n_diverged_arm=int(g["_div"].sum()), n_diverged_base=int(bg["_div"].sum()),
                 seeds_arm=_seed_str(gu["seed"].tolist()), seeds_base=_seed_str(bu["seed"].tolist()))
        rows.append(r)
    if not rows:
        return pd.DataFrame(columns=SIG_COLS)
    out = pd.DataFrame(rows)
    out["p_holm"] = math.nan
    has_p = out["p"].notna()
    k = max(int(has_p.sum()), 1)
    out["k_family"] = k
    out["sd_rel"] = sd_rel
    out["sd_source"] = sd_source
    out["mde_pct"] = [
        100.0 * _mde_cached(sd_rel, int(r["n_arm"]), int(r["n_base"]), alpha_level / k, power,
                            r["test"] == "paired t")
        if r["test"] != "none" and is_num_pos(sd_rel) else math.nan for r in out.to_dict("records")]
    out["mde"] = out["mde_pct"] / 100.0 * out["mean_base"]
    if has_p.any():
        out.loc[has_p, "p_holm"] = holm(out.loc[has_p, "p"].to_numpy())
    vn = [verdict_for(r, alpha_level) for r in out.to_dict("records")]
    out["verdict"] = [v for v, _ in vn]
    out["note"] = ["; ".join(x for x in (n, _degenerate(r)) if x)
                   for (_, n), r in zip(vn, out.to_dict("records"))]
    log.info("significance: %d comparisons, %d with a p-value, verdicts %s", len(out), int(has_p.sum()),
             out["verdict"].value_counts().to_dict())
    return out[SIG_COLS]


@lru_cache(maxsize=256)
def _mde_cached(sd: float, n1: int, n2: int, alpha: float, power: float, paired: bool) -> float:
    return pw.mde(sd, n1, alpha, power, paired=paired, n2=n2, alternative="two-sided")


def read_significance(path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"phase": str, "model": str, "family": str, "arm": str, "test": str,
                                      "variant": str, "param": str, "sd_source": str,
                                      "verdict": str, "note": str, "seeds_arm": str, "seeds_base": str,
                                      "effect_size_kind": str, "metric": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=SIG_COLS)
    for c in ("note", "seeds_arm", "seeds_base", "effect_size_kind", "test", "param", "sd_source"):
        if c in df:
            df[c] = df[c].fillna("")
    return df


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and t-based CI of a sample (CI NaN when n < 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    se = float(v.std(ddof=1)) / math.sqrt(len(v))
    h = float(sps.t.ppf(0.5 + confidence / 2, len(v) - 1)) * se
    return m, m - h, m + h
