"""Issue 19: the verdicts' operating characteristics by simulation (analysis/verdict_sim.py, vectorized),
checked one for one against analysis.gates.evaluate_gates on a sample of the same draws.

Targets: at a true effect equal to the threshold (the claim's boundary) PASS <= 5% and FAIL <= 5%; FAIL
<= 5% at every true effect on the claim's side (the design distance); A/A PASS <= 5% for every claim of
an improvement. 4000 seeded replicates: a rate of 5% has a binomial se of 0.34 points, so "<= 5%" is
checked as <= 6% (3 se); the draws are fixed by the seed, so the test cannot flake."""
import numpy as np
import pandas as pd
import pytest

from analysis import verdict_sim as vs
from analysis.gates import evaluate_gates

TOL = 0.06  # 5% + 3 binomial se at 4000 replicates
SD = {"metric_higher": 0.05, "reaches_target_sooner": 0.05}  # the design's prior for non-loss quantities
IMPROVEMENT = ("beats_baseline", "metric_higher", "arm_better_than_arm", "any_better_than_arm", "interaction",
               "reaches_target_sooner")


@pytest.mark.parametrize("kind", vs.KINDS)
@pytest.mark.parametrize("n", [2, 3, 11])
def test_pass_and_fail_at_most_5pct_at_the_threshold(kind, n):
    sd = SD.get(kind, 0.005)
    at = vs.rates(kind, "boundary", n, sd=sd, seed=n)
    assert at["PASS"] <= TOL and at["FAIL"] <= TOL, at
    beyond = vs.rates(kind, "design", n, sd=sd, seed=n + 1)
    assert beyond["FAIL"] <= TOL and beyond["PASS"] > at["PASS"], beyond
    if kind in IMPROVEMENT:
        assert vs.rates(kind, "aa", n, sd=sd, seed=n + 2)["PASS"] <= TOL
    if kind == "beats_baseline":  # nGPT's claims: an improvement > 0
        assert vs.rates(kind, "aa", n, sd=sd, seed=n + 3, min_improvement=0.0)["PASS"] <= TOL


def _rows(role, arm, variant, values, col, model="m"):
    return [dict(phase="p", role=role, model=model, arm=arm, variant=variant, param="", value=np.nan, alpha=0.0,
                 seed=s + 1, status="ok", **{"final_val_loss": 1.0, col: float(v)}) for s, v in enumerate(values)]


def _real(kind, st, dr, r):
    """The verdict of analysis.gates for replicate r of the draws."""
    curves = None
    col = {"metric_higher": "eff_rank_mean", "not_worse_than_baseline": "val_loss_at_100"}.get(kind, "final_val_loss")
    settings = {k: v for k, v in st.items()}
    if kind == "interaction":
        rows = (_rows("baseline", "muon", "default", dr["ref_0"][r], col)
                + _rows("arm", "on", "k1", dr["arm_0"][r], col) + _rows("arm", "on", "k2", dr["arm_v"][r], col)
                + _rows("arm", "ref", "k1", dr["ref_0"][r], col) + _rows("arm", "ref", "k2", dr["ref_v"][r], col))
    elif kind == "reaches_target_sooner":
        steps = np.arange(0, vs.T_STEPS + 1, 50)
        rows, cv = [], []
        for role, arm, cs in (("scratch_baseline", "muon", dr["c_b"][r]), ("scratch_arm", "on", dr["c_a"][r])):
            rows += _rows(role, arm, "default", cs - vs.SLOPE * vs.T_STEPS, col, model="s")
            cv += [dict(role=role, model="s", arm=arm, variant="default", alpha=0.0, seed=s + 1, step=int(x),
                        val_loss=float(c - vs.SLOPE * x)) for s, c in enumerate(cs) for x in steps]
        curves = pd.DataFrame(cv)
    elif kind in ("arm_better_than_arm", "any_better_than_arm"):
        rows = (_rows("baseline", "muon", "default", dr["b"][r], col) + _rows("arm", "on", "v", dr["a"][r], col)
                + _rows("arm", "ref", "v", dr["b"][r], col))
    else:
        rows = _rows("baseline", "muon", "default", dr["b"][r], col) + _rows("arm", "on", "v", dr["a"][r], col)
        if kind == "not_worse_than_baseline":
            settings["step"] = 100
        if kind in ("within_baseline", "beats_baseline", "not_worse_than_baseline"):
            settings["arms"] = ["on"]
    res = evaluate_gates(pd.DataFrame(rows), None, curves, {"g": settings}, "muon", "p", noise_sd=0.005)
    return res["gates"][0]["verdict"]


@pytest.mark.parametrize("kind", vs.KINDS)
def test_the_vectorized_kernel_is_the_gate(kind):
    """20 replicates per scenario through the real gate: the same verdict, one for one."""
    sd = SD.get(kind, 0.005) * 2  # noisier than the table, so that every verdict occurs
    st = vs.settings_of(kind)
    seen = set()
    for i, scenario in enumerate(("aa", "boundary", "design")):
        dr = vs.draws(kind, st, vs.truth_of(kind, st, scenario), 3, sd, 20, seed=100 + i)
        v = vs.verdicts(kind, st, dr["a"], dr["b"])
        for r in range(20):
            assert _real(kind, st, dr, r) == v[r], (scenario, r)
        seen |= set(v)
    assert len(seen) >= 2
