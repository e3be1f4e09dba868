"""significance: numbers against scipy / statsmodels on crafted run tables."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower

from analysis.io import write_csv
from analysis.stats import significance_table, read_significance


def runs_table(groups, model="tiny", phase="phase2"):
    """groups: list of (role, arm, alpha, {seed: loss or None (diverged)})."""
    rows = []
    for role, arm, alpha, vals in groups:
        for seed, v in vals.items():
            rows.append(dict(phase=phase, role=role, model=model, arm=arm, alpha=alpha, seed=seed,
                             status="diverged" if v is None else "ok",
                             diverged_step=100 if v is None else np.nan,
                             final_val_loss=np.nan if v is None else v, eff_rank_mean=20.0,
                             gpu_hours=0.0, wall_time_s=10.0, wandb_id="", run_dir=""))
    return pd.DataFrame(rows)


BASE = {1: 3.00, 2: 3.05, 3: 2.98}


def test_paired_matches_scipy_ttest_rel():
    arm = {1: 2.95, 2: 3.01, 3: 2.90}
    sig = significance_table(runs_table([("baseline", "muon", 0.0, BASE), ("arm", "on", 1e-3, arm)]), "muon")
    assert len(sig) == 1
    r = sig.iloc[0]
    a = np.array([arm[s] for s in (1, 2, 3)])
    b = np.array([BASE[s] for s in (1, 2, 3)])
    ref = sps.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert r["test"] == "paired t"
    assert r["t"] == pytest.approx(ref.statistic)
    assert r["p"] == pytest.approx(ref.pvalue)
    assert r["p_holm"] == pytest.approx(ref.pvalue)  # one comparison
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    d = a - b
    assert r["diff"] == pytest.approx(d.mean())
    assert r["diff_pct"] == pytest.approx(100 * (a.mean() - b.mean()) / b.mean())
    assert r["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert r["effect_size_kind"] == "d_z"
    # MDE: two-sided, Holm level 0.05/1, the phase's pooled relative sd (not this comparison's sample sd),
    # uncorrelated pairs (sd of a difference = sd x sqrt 2)
    sd_rel = math.sqrt((((a / a.mean() - 1) ** 2).sum() + ((b / b.mean() - 1) ** 2).sum()) / 4)
    assert r["sd_rel"] == pytest.approx(sd_rel)
    es = TTestPower().solve_power(effect_size=None, nobs=3, alpha=0.05, power=0.8, alternative="two-sided")
    assert r["mde_pct"] == pytest.approx(100 * es * sd_rel * math.sqrt(2), rel=1e-5)
    assert (r["n_arm"], r["n_base"], r["std_arm"]) == (3, 3, pytest.approx(a.std(ddof=1)))


def test_welch_when_seeds_do_not_pair():
    arm = {4: 2.95, 5: 3.01, 6: 2.90, 7: 2.93}
    sig = significance_table(runs_table([("baseline", "muon", 0.0, BASE), ("arm", "on", 1e-3, arm)]), "muon")
    r = sig.iloc[0]
    a, b = np.array(list(arm.values())), np.array(list(BASE.values()))
    ref = sps.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert r["test"] == "welch"
    assert r["t"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    assert r["df"] == pytest.approx(ref.df)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    sp = math.sqrt((3 * a.var(ddof=1) + 2 * b.var(ddof=1)) / 5)
    assert r["effect_size"] == pytest.approx((a.mean() - b.mean()) / sp)
    # the Welch MDE is the exact Welch power's (analysis.power), larger than the pooled formula's
    from analysis.power import welch_power
    sd_rel = r["sd_rel"]
    assert welch_power(r["mde_pct"] / 100, sd_rel, sd_rel, 4, 3, 0.05, "two-sided") == pytest.approx(0.8, abs=1e-4)
    es = TTestIndPower().solve_power(effect_size=None, nobs1=4, ratio=3 / 4, alpha=0.05, power=0.8)
    assert r["mde_pct"] > 100 * es * sd_rel


def test_duplicate_seed_forces_welch():
    base = runs_table([("baseline", "muon", 0.0, BASE)])
    dup = base.iloc[[0]].assign(final_val_loss=3.01, run_dir="x")
    arm = runs_table([("arm", "on", 1e-3, {1: 2.9, 2: 2.95, 3: 2.93})])
    sig = significance_table(pd.concat([base, dup, arm], ignore_index=True), "muon")
    assert sig.iloc[0]["test"] == "welch" and sig.iloc[0]["n_base"] == 4


def test_holm_over_phase_matches_statsmodels():
    groups = [("baseline", "muon", 0.0, BASE)]
    for i, shift in enumerate([-0.10, -0.03, 0.002, 0.05]):
        groups.append(("arm", "on", 10.0 ** -(i + 1), {s: v + shift + 0.01 * ((s * (i + 2)) % 3) for s, v in
                                                     BASE.items()}))
    sig = significance_table(runs_table(groups), "muon")
    assert len(sig) == 4
    ref = multipletests(sig["p"].to_numpy(), alpha=0.05, method="holm")[1]
    np.testing.assert_allclose(sig["p_holm"].to_numpy(), ref)
    for r in sig.to_dict("records"):
        if r["p_holm"] < 0.05:
            assert r["verdict"] == ("better" if r["diff"] < 0 else "worse")
        else:
            assert r["verdict"] == "no significant difference"


def test_clear_improvement_is_better_and_worse_is_worse():
    better = {s: v - 0.2 + 0.001 * s for s, v in BASE.items()}
    worse = {s: v + 0.2 + 0.001 * s for s, v in BASE.items()}
    sig = significance_table(runs_table([("baseline", "muon", 0.0, BASE), ("arm", "good", 1e-3, better),
                                         ("arm", "bad", 1e-3, worse)]), "muon")
    v = dict(zip(sig["arm"], sig["verdict"]))
    assert v == {"good": "better", "bad": "worse"}


def test_diverged_arm_is_never_better():
    # the surviving seeds are far better, but one seed diverged
    arm = {1: 2.50, 2: 2.52, 3: 2.51, 4: None}
    sig = significance_table(runs_table([("baseline", "muon", 0.0, {**BASE, 4: 3.02}),
                                         ("arm", "on", 1e-3, arm)]), "muon")
    r = sig.iloc[0]
    assert r["n_diverged_arm"] == 1 and r["n_arm"] == 3
    assert r["mean_arm"] == pytest.approx(np.mean([2.50, 2.52, 2.51]))  # diverged excluded from the mean
    assert r["p_holm"] < 0.05 and r["diff"] < 0
    assert r["verdict"] != "better"
    assert "diverged" in r["note"]


def test_fewer_than_two_seeds_is_insufficient_without_p(tmp_path):
    sig = significance_table(runs_table([("baseline", "muon", 0.0, BASE), ("arm", "one", 1e-3, {1: 2.0}),
                                         ("arm", "div", 1e-3, {1: 2.0, 2: None}),
                                         ("arm", "ok", 1e-3, {1: 2.9, 2: 2.95, 3: 2.91})]), "muon")
    ins = sig[sig["arm"].isin(["one", "div"])]
    assert (ins["verdict"] == "insufficient").all()
    assert ins[["t", "p", "p_holm", "ci_low", "ci_high"]].isna().all().all()
    ok = sig[sig["arm"] == "ok"].iloc[0]
    assert ok["p_holm"] == pytest.approx(ok["p"])  # Holm only over comparisons with a p
    path = tmp_path / "significance.csv"
    write_csv(sig, path)
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    for line in lines[1:]:
        cells = dict(zip(header, line.split(",")))
        if cells["arm"] in ("one", "div"):
            assert cells["p"] == "" and cells["p_holm"] == "" and cells["t"] == ""
    back = read_significance(path)
    assert back.set_index("arm").loc["one", "verdict"] == "insufficient"


def test_baseline_with_one_seed_is_insufficient():
    sig = significance_table(runs_table([("baseline", "muon", 0.0, {1: 3.0}),
                                         ("arm", "on", 1e-3, {1: 2.9, 2: 2.8})]), "muon")
    assert sig.iloc[0]["verdict"] == "insufficient" and math.isnan(sig.iloc[0]["p"])


def test_scratch_arms_compare_with_scratch_baseline_per_model():
    t1 = runs_table([("baseline", "muon", 0.0, BASE), ("arm", "on", 1e-3, {1: 2.9, 2: 2.95, 3: 2.92})],
                    model="big")
    t2 = runs_table([("scratch_baseline", "muon", 0.0, {1: 5.0, 2: 5.1}),
                     ("scratch_arm", "on", 1e-3, {1: 4.9, 2: 5.0})], model="big")
    t3 = runs_table([("baseline", "muon", 0.0, {1: 9.0, 2: 9.1}), ("arm", "on", 1e-3, {1: 8.0, 2: 8.1})],
                    model="small")
    sig = significance_table(pd.concat([t1, t2, t3], ignore_index=True), "muon")
    assert len(sig) == 3
    s = sig.set_index(["model", "family"])
    assert s.loc[("big", "scratch"), "mean_base"] == pytest.approx(5.05)
    assert s.loc[("big", "main"), "mean_base"] == pytest.approx(np.mean(list(BASE.values())))
    assert s.loc[("small", "main"), "mean_base"] == pytest.approx(9.05)


def test_empty_and_no_baseline():
    assert len(significance_table(pd.DataFrame(), "muon")) == 0
    sig = significance_table(runs_table([("arm", "on", 1e-3, {1: 2.9, 2: 2.95})]), "muon")
    assert sig.iloc[0]["n_base"] == 0 and sig.iloc[0]["verdict"] == "insufficient"


def test_ratio_test_matches_scipy():
    """The gates' one-sided test of mean(a) vs r x mean(b): scipy's one-sample t on a - r b (paired) and
    Welch's t on a and r b, both directions."""
    from analysis.stats import holm, ratio_test
    rng = np.random.default_rng(4)
    a, b = 3 + 0.02 * rng.standard_normal(5), 3 + 0.02 * rng.standard_normal(5)
    for r, d in ((0.99, "less"), (1.05, "less"), (1.0, "greater")):
        got = ratio_test(a, [1, 2, 3, 4, 5], b, [5, 4, 3, 2, 1], r, d)
        ref = sps.ttest_1samp(a - r * b[::-1], 0.0, alternative=d)
        assert got["test"] == "paired t" and got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        other = sps.ttest_1samp(a - r * b[::-1], 0.0, alternative="greater" if d == "less" else "less")
        assert got["p_other"] == pytest.approx(other.pvalue, rel=1e-9)
        got = ratio_test(a, [1, 2, 3, 4, 5], b[:4], [6, 7, 8, 9], r, d)
        ref = sps.ttest_ind(a, r * b[:4], equal_var=False, alternative=d)
        assert got["test"] == "welch" and got["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert got["df"] == pytest.approx(ref.df)
    # issue 19: zero spread is no test (a t-test would say p = 0), also at rounding level
    z = ratio_test([1.0, 1.0], [1, 2], [2.0, 2.0], [1, 2], 1.0, "less")
    assert z["test"] == "zero spread" and math.isnan(z["p"]) and math.isnan(z["p_other"])
    assert ratio_test([0.1 + 0.2, 0.3], [1, 2], [0.4, 0.4], [1, 2], 1.0, "less")["test"] == "zero spread"
    p = rng.uniform(0, 0.2, 9)
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_rank_test_is_exact_and_never_zero():
    """The diverged-run test: exact Mann-Whitney (scipy's exact method, no ties) and at least 1/C(n1+n2, n1)."""
    from analysis.stats import rank_test
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(4), rng.standard_normal(5) + 1
    for d in ("less", "greater"):
        ref = sps.mannwhitneyu(a, b, alternative=d, method="exact")
        assert rank_test(a, b, 1.0, d)["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    r = rank_test([1.0, 1.1, 1.2], [2.0, 2.1, math.inf], 1.0, "less")
    assert r["p"] == pytest.approx(1 / 20) and r["p_other"] == pytest.approx(1.0)


def test_the_baseline_arm_at_other_values_is_judged_not_pooled():
    """nGPT's projection campaign: the baseline is Muon projecting every step; Muon projecting every 3 steps is
    an arm of the same name, and must be compared with it, not counted as more baseline seeds."""
    rows = []
    for seed, base, lazy in ((1, 3.00, 3.10), (2, 3.02, 3.13), (3, 2.99, 3.08)):
        rows.append({"phase": "projection", "role": "baseline", "model": "ngpt", "arm": "muon",
                     "variant": "lr0.03+projection_every1", "alpha": 0.0, "seed": seed, "status": "ok",
                     "final_val_loss": base})
        rows.append({"phase": "projection", "role": "arm", "model": "ngpt", "arm": "muon",
                     "variant": "lr0.03+projection_every3", "alpha": 0.0, "seed": seed, "status": "ok",
                     "final_val_loss": lazy})
    sig = significance_table(pd.DataFrame(rows), "muon")
    assert len(sig) == 1
    row = sig.iloc[0]
    assert row["variant"] == "lr0.03+projection_every3" and row["n_arm"] == 3 and row["n_base"] == 3
    assert row["mean_base"] == pytest.approx(np.mean([3.00, 3.02, 2.99]))
