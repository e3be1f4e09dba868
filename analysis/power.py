"""power: the power and minimum detectable effect of the tests the gates and the significance table run.

- Paired t (seed-matched differences): exact, from the noncentral t distribution (scipy.stats.nct), with
  df = n - 1 and noncentrality delta * sqrt(n) / sd_d.
- Welch's t: exact for normal data, by integrating over the two sample variances. Welch's degrees of
  freedom are themselves random (Satterthwaite from the sample variances), so the pooled-variance formula
  (statsmodels TTestIndPower, df = n1 + n2 - 2) overstates its power at small n (at n = 2 per side, the
  pooled MDE has about 48% real power, not 80%). Here each (s1^2, s2^2) on a grid of chi-square quantiles
  gives the test's critical value and the normal probability of the mean difference crossing it.
- Holm: the design uses the Bonferroni level alpha / k for each of k hypotheses, Holm's first step. It is
  Holm's power when one hypothesis is false and a lower bound otherwise (Holm rejects at least what
  Bonferroni rejects).
- `alternative`: "one-sided" (the gates test a direction) or "two-sided" (the significance table).
Effects and sds are in the same units (the gates use fractions of the baseline's loss).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as sps

_GRID = 96  # chi-square quantiles per sample variance for the Welch integral (error < 1e-3 in power)


def _check(alternative: str) -> None:
    if alternative not in ("one-sided", "two-sided"):
        raise ValueError(f"alternative {alternative!r}: use 'one-sided' or 'two-sided'")


def paired_power(effect: float, sd_d: float, n: int, alpha: float, alternative: str = "one-sided") -> float:
    """Power of the paired t-test (n pairs, sd of the differences sd_d) to detect a true mean difference
    `effect` (> 0 in the tested direction)."""
    _check(alternative)
    if n < 2 or not (sd_d > 0) or not math.isfinite(effect):
        return math.nan
    df = n - 1
    nc = effect * math.sqrt(n) / sd_d
    c = sps.t.isf(alpha if alternative == "one-sided" else alpha / 2, df)
    p = sps.nct.sf(c, df, nc) + (sps.nct.cdf(-c, df, nc) if alternative == "two-sided" else 0.0)
    if not math.isfinite(p):  # scipy's nct fails far in the tail (df = 1, large nc): integrate directly
        p = _nct_sf_quad(c, df, nc) + (1.0 - _nct_sf_quad(-c, df, nc) if alternative == "two-sided" else 0.0)
    return float(min(max(p, 0.0), 1.0))


_U = (np.arange(4000) + 0.5) / 4000


def _nct_sf_quad(c: float, df: int, nc: float) -> float:
    """P(T > c) for T = (Z + nc) / sqrt(V / df), V ~ chi2(df): the mean over 4000 chi-square quantiles of
    Phi(nc - c sqrt(V / df)) (vectorized midpoint rule in probability; error < 1e-3)."""
    v = sps.chi2.ppf(_U, df)
    return float(sps.norm.cdf(nc - c * np.sqrt(v / df)).mean())


def welch_power(effect: float, sd1: float, sd2: float, n1: int, n2: int, alpha: float,
                alternative: str = "one-sided") -> float:
    """Power of Welch's t-test (scipy.stats.ttest_ind(equal_var=False)) for normal samples of sds sd1, sd2
    and sizes n1, n2, at a true mean difference `effect`."""
    _check(alternative)
    if n1 < 2 or n2 < 2 or not (sd1 > 0 and sd2 > 0) or not math.isfinite(effect):
        return math.nan
    u = (np.arange(_GRID) + 0.5) / _GRID
    s1 = sd1 ** 2 * sps.chi2.ppf(u, n1 - 1) / (n1 - 1)
    s2 = sd2 ** 2 * sps.chi2.ppf(u, n2 - 1) / (n2 - 1)
    v1, v2 = np.meshgrid(s1 / n1, s2 / n2, indexing="ij")
    se = np.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    sd_mean = math.sqrt(sd1 ** 2 / n1 + sd2 ** 2 / n2)
    c = _t_isf(alpha if alternative == "one-sided" else alpha / 2, df)
    p = sps.norm.sf((c * se - effect) / sd_mean)
    if alternative == "two-sided":
        p = p + sps.norm.cdf((-c * se - effect) / sd_mean)
    return float(p.mean())


def _t_isf(q: float, df: np.ndarray) -> np.ndarray:
    """scipy.stats.t.isf(q, df) for many df at once: exact on 400 df points between min and max of df,
    interpolated in log df between them (relative error < 1e-5: the critical value is smooth in df)."""
    lo, hi = float(df.min()), float(df.max())
    if hi - lo < 1e-9:
        return np.full_like(df, sps.t.isf(q, lo))
    knots = np.exp(np.linspace(math.log(lo), math.log(hi), 400))
    return np.interp(np.log(df), np.log(knots), sps.t.isf(q, knots))


def power(effect: float, sd: float, n: int, alpha: float, *, paired: bool = True, n2: int | None = None,
          rho: float = 0.0, alternative: str = "one-sided") -> float:
    """Power at a true difference `effect` between two arms whose per-seed values have sd `sd`.
    Paired: the differences have sd sd * sqrt(2 (1 - rho)) (rho: the correlation of seed-matched runs;
    0 unless measured). Unpaired: Welch with n and n2 (default n) per side."""
    if paired:
        return paired_power(effect, sd * math.sqrt(2.0 * (1.0 - rho)), n, alpha, alternative)
    return welch_power(effect, sd, sd, n, n2 or n, alpha, alternative)


def mde(sd: float, n: int, alpha: float, target: float = 0.8, *, paired: bool = True, n2: int | None = None,
        rho: float = 0.0, alternative: str = "one-sided") -> float:
    """The smallest true difference detected with probability `target` (same units as sd)."""
    if n < 2 or (not paired and (n2 or n) < 2) or not (sd > 0):
        return math.nan
    f = lambda e: power(e, sd, n, alpha, paired=paired, n2=n2, rho=rho, alternative=alternative) - target  # noqa: E731
    hi = sd
    while f(hi) < 0:
        hi *= 2.0
        if hi > 1e9 * sd:
            return math.inf
    return float(optimize.brentq(f, 0.0, hi, xtol=sd * 1e-6))


def seeds_needed(effect: float, sd: float, alpha: float, target: float = 0.8, *, paired: bool = True,
                 rho: float = 0.0, alternative: str = "one-sided", n_max: int = 10_000) -> int | None:
    """Fewest seeds per side for power >= target (None when more than n_max)."""
    if not (effect > 0 and sd > 0):
        return None
    lo, hi = 2, 2
    p = lambda n: power(effect, sd, n, alpha, paired=paired, rho=rho, alternative=alternative)  # noqa: E731
    while p(hi) < target:
        lo, hi = hi, hi * 2
        if hi > n_max:
            return None
    while lo < hi:  # power is increasing in n: bisect for the first n that reaches the target
        mid = (lo + hi) // 2
        if p(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def expected_max_normal(k: int) -> float:
    """E[max of k independent standard normals] (the winner's curse of picking the best of k noisy
    estimates of equal true effects): numerical integral of the maximum's density."""
    if k <= 1:
        return 0.0
    x = np.linspace(-8, 8, 4001)
    dens = k * sps.norm.pdf(x) * sps.norm.cdf(x) ** (k - 1)
    return float(np.trapezoid(x * dens, x) if hasattr(np, "trapezoid") else np.trapz(x * dens, x))
