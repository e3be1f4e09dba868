"""significance: each arm against the baseline of the same model and role family.

One row per (model, family, arm, alpha) that is not the baseline. `family` is "main" for the roles
baseline/arm and "scratch" for scratch_baseline/scratch_arm: scratch arms are compared with the scratch
baseline only.

Which values enter a test: runs with status "ok" and a finite value of the metric ("usable"). A diverged
run is excluded from the mean, std and test, counted in n_diverged_arm / n_diverged_base, and forces the
arm's verdict to be anything but "better" (a diverged seed is a failure, not a missing value).

Test: "paired t" (scipy.stats.ttest_rel on the seed-matched differences) when the usable seeds of both
sides are the same set, each seed once, n >= 2; otherwise "welch" (scipy.stats.ttest_ind,
equal_var=False). Fewer than 2 usable values on either side: verdict "insufficient" and no t, p, p_holm,
CI (empty cells, never a number). p_holm: Holm over all of the phase's comparisons that have a p
(statsmodels multipletests). Effect size: Cohen's d_z = mean(d)/sd(d) for paired, Cohen's d =
diff / pooled sd for Welch. MDE: the difference (in loss units, and % of the baseline mean) that a
two-sided test at alpha_level would detect with the given power, from statsmodels TTestPower (paired,
times sd of the differences) or TTestIndPower (times the pooled sd; an approximation for Welch).
"""
from __future__ import annotations

import logging
import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

log = logging.getLogger("analysis.stats")

BASE_ROLES = ("baseline", "scratch_baseline")
SIG_COLS = ["phase", "model", "family", "arm", "alpha", "metric", "n_arm", "n_base", "mean_arm", "mean_base",
            "std_arm", "std_base", "diff", "diff_pct", "ci_low", "ci_high", "test", "df", "t", "p", "p_holm",
            "effect_size", "effect_size_kind", "mde", "mde_pct", "n_diverged_arm", "n_diverged_base",
            "seeds_arm", "seeds_base", "verdict", "note"]
VERDICTS = ("better", "worse", "no significant difference", "insufficient")


def family_of(role: Any) -> str:
    return "scratch" if str(role).startswith("scratch") else "main"


def baseline_mask(runs: pd.DataFrame, baseline: str) -> pd.Series:
    """Baseline runs: role baseline/scratch_baseline, or (without a role column) arm == baseline."""
    if "role" in runs:
        return runs["role"].isin(BASE_ROLES) | (runs["arm"] == baseline)
    return runs["arm"] == baseline


def with_family(runs: pd.DataFrame) -> pd.DataFrame:
    out = runs.copy()
    out["family"] = out["role"].map(family_of) if "role" in out else "main"
    return out


def usable_mask(df: pd.DataFrame, metric: str) -> pd.Series:
    vals = pd.to_numeric(df[metric], errors="coerce") if metric in df else pd.Series(np.nan, index=df.index)
    return (df["status"] == "ok") & np.isfinite(vals.astype(float))


@lru_cache(maxsize=None)
def mde_effect_size(kind: str, n1: int, n2: int, alpha: float, power: float) -> float:
    """Standardised minimum detectable effect (two-sided). Cached: it depends only on the n's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "paired":
                es = TTestPower().solve_power(effect_size=None, nobs=n1, alpha=alpha, power=power,
                                              alternative="two-sided")
            else:
                es = TTestIndPower().solve_power(effect_size=None, nobs1=n1, ratio=n2 / n1, alpha=alpha,
                                                 power=power, alternative="two-sided")
            return float(np.asarray(es).item())
        except Exception as e:  # statsmodels root finding can fail for degenerate inputs
            log.warning("MDE solve failed for %s n=%d/%d: %s", kind, n1, n2, e)
            return math.nan


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
            mde_sd = sd
            mes = mde_effect_size("paired", n1, n1, alpha_level, power)
        else:
            res = sps.ttest_ind(a, b, equal_var=False, alternative=alternative)
            sp = pooled_sd(a, b)
            es = float(r["diff"] / sp) if sp > 0 else math.nan
            r.update(test="welch", effect_size=es, effect_size_kind="d")
            mde_sd = sp
            mes = mde_effect_size("welch", n1, n2, alpha_level, power)
        ci = res.confidence_interval(confidence)
        r.update(t=float(res.statistic), p=float(res.pvalue), df=float(res.df),
                 ci_low=float(ci.low), ci_high=float(ci.high), mde=mes * mde_sd)
    return r


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
    mde = row.get("mde")
    if row["test"] != "none" and (mde is not None and not math.isnan(mde) and mde == 0.0):
        return "zero spread between seeds: the t-test and MDE are degenerate"
    return ""


def significance_table(runs: pd.DataFrame, baseline: str, *, confidence: float = 0.95,
                       alpha_level: float = 0.05, power: float = 0.8,
                       metric: str = "final_val_loss") -> pd.DataFrame:
    """The phase's significance table (see the module docstring)."""
    if runs is None or len(runs) == 0:
        return pd.DataFrame(columns=SIG_COLS)
    df = with_family(runs)
    if metric not in df:
        raise ValueError(f"significance: metric {metric!r} is not a column of runs.csv")
    df["_usable"] = usable_mask(df, metric)
    df["_div"] = df["status"] == "diverged"
    df["_val"] = pd.to_numeric(df[metric], errors="coerce").astype(float)
    is_base = baseline_mask(df, baseline)
    base = df[is_base]
    arms = df[~is_base]
    phase = str(df["phase"].iloc[0]) if "phase" in df else ""
    base_groups = {k: g for k, g in base.groupby(["model", "family"], sort=False)}
    rows = []
    for (model, fam, arm, alpha), g in arms.groupby(["model", "family", "arm", "alpha"], dropna=False,
                                                    sort=True):
        bg = base_groups.get((model, fam), base.iloc[0:0])
        gu, bu = g[g["_usable"]], bg[bg["_usable"]]
        r = compare(gu["_val"].to_numpy(), gu["seed"].tolist(), bu["_val"].to_numpy(), bu["seed"].tolist(),
                    confidence=confidence, alpha_level=alpha_level, power=power)
        r.update(phase=phase, model=model, family=fam, arm=arm, alpha=alpha, metric=metric,
                 n_diverged_arm=int(g["_div"].sum()), n_diverged_base=int(bg["_div"].sum()),
                 seeds_arm=_seed_str(gu["seed"].tolist()), seeds_base=_seed_str(bu["seed"].tolist()))
        r["mde_pct"] = 100.0 * r["mde"] / r["mean_base"] if r["mean_base"] else math.nan
        rows.append(r)
    if not rows:
        return pd.DataFrame(columns=SIG_COLS)
    out = pd.DataFrame(rows)
    out["p_holm"] = math.nan
    has_p = out["p"].notna()
    if has_p.any():
        out.loc[has_p, "p_holm"] = multipletests(out.loc[has_p, "p"].to_numpy(), alpha=alpha_level,
                                                 method="holm")[1]
    vn = [verdict_for(r, alpha_level) for r in out.to_dict("records")]
    out["verdict"] = [v for v, _ in vn]
    out["note"] = ["; ".join(x for x in (n, _degenerate(r)) if x)
                   for (_, n), r in zip(vn, out.to_dict("records"))]
    log.info("significance: %d comparisons, %d with a p-value, verdicts %s", len(out), int(has_p.sum()),
             out["verdict"].value_counts().to_dict())
    return out[SIG_COLS]


def read_significance(path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"phase": str, "model": str, "family": str, "arm": str, "test": str,
                                      "verdict": str, "note": str, "seeds_arm": str, "seeds_base": str,
                                      "effect_size_kind": str, "metric": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=SIG_COLS)
    for c in ("note", "seeds_arm", "seeds_base", "effect_size_kind", "test"):
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
