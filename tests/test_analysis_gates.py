"""Every gate on crafted run tables: PASS, FAIL and INSUFFICIENT; the overall verdict; the selection rule."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.gates import GATES, evaluate_gates, gates_markdown
from analysis.selection import select_arm
from analysis.stats import significance_table

SEEDS = (1, 2, 3)


def mk(role, arm, alpha, losses, model="tiny", er=20.0, v100=None):
    rows = []
    for i, (seed, v) in enumerate(losses.items()):
        e = er[i] if isinstance(er, (list, tuple)) else er
        rows.append(dict(phase="p", role=role, model=model, arm=arm, alpha=alpha, seed=seed,
                         status="diverged" if v is None else "ok", diverged_step=50 if v is None else np.nan,
                         final_val_loss=np.nan if v is None else v,
                         val_loss_at_100=np.nan if v is None else (v + 1.0 if v100 is None else v100),
                         eff_rank_mean=e, gpu_hours=0.0, wall_time_s=1.0, wandb_id="", run_dir=""))
    return pd.DataFrame(rows)


def base(model="tiny", er=20.0, v100=None, vals=(3.00, 3.05, 2.98)):
    return mk("baseline", "muon", 0.0, dict(zip(SEEDS, vals)), model=model, er=er, v100=v100)


def shifted(arm, alpha, rel, role="arm", model="tiny", er=20.0, v100=None, vals=(3.00, 3.05, 2.98),
            jitter=0.002):
    return mk(role, arm, alpha, {s: v * (1 + rel) + jitter * (k % 2) for k, (s, v) in enumerate(zip(SEEDS, vals))},
              model=model, er=er, v100=v100)


def run(gates, *tables, curves=None):
    runs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    sig = significance_table(runs, "muon")
    return evaluate_gates(runs, sig, curves if curves is not None else pd.DataFrame(), gates, "muon", "p")


def verdict(gate, *tables, settings=None, curves=None):
    res = run({gate: settings or {}}, *tables, curves=curves)
    g = res["gates"][0]
    assert set(g) >= {"name", "verdict", "threshold", "observed", "detail"}
    return g


# ------------------------------------------------------------------------------------------------ gates
def test_no_crashes():
    assert verdict("no_crashes", base(), shifted("on", 1e-3, 0.0))["verdict"] == "PASS"
    g = verdict("no_crashes", base(), mk("arm", "on", 1e-3, {1: 3.0, 2: None}))
    assert g["verdict"] == "FAIL" and "on" in g["detail"] and "seed2" in g["detail"] and "diverged" in g["detail"]
    assert verdict("no_crashes")["verdict"] == "INSUFFICIENT"


def test_loss_within_baseline():
    assert verdict("loss_within_baseline", base(), shifted("on", 1e-3, 0.02))["verdict"] == "PASS"
    assert verdict("loss_within_baseline", base(), shifted("on", 1e-3, -0.2))["verdict"] == "PASS"  # better
    g = verdict("loss_within_baseline", base(), shifted("on", 1e-3, 0.08))
    assert g["verdict"] == "FAIL" and "+8" in g["detail"]
    g = verdict("loss_within_baseline", base(), shifted("on", 1e-3, 0.02), settings={"max_rel_diff": 0.01})
    assert g["verdict"] == "FAIL"
    g = verdict("loss_within_baseline", base(), shifted("on", 1e-3, -0.2), settings={"two_sided": True})
    assert g["verdict"] == "FAIL"
    assert verdict("loss_within_baseline", mk("arm", "on", 1e-3, {1: None, 2: None}), base())["verdict"] == "FAIL"
    assert verdict("loss_within_baseline", shifted("on", 1e-3, 0.0))["verdict"] == "INSUFFICIENT"  # no baseline
    assert verdict("loss_within_baseline", base())["verdict"] == "INSUFFICIENT"  # no arms


def test_effective_rank_logged():
    assert verdict("effective_rank_logged", base(), shifted("on", 1e-3, 0.0))["verdict"] == "PASS"
    g = verdict("effective_rank_logged", base(er=[20.0, np.nan, 20.0]), shifted("on", 1e-3, 0.0))
    assert g["verdict"] == "FAIL" and "muon" in g["detail"]  # the baseline is checked too
    assert verdict("effective_rank_logged", base(er=0.5))["verdict"] == "FAIL"
    assert verdict("effective_rank_logged")["verdict"] == "INSUFFICIENT"


def test_beats_baseline():
    g = verdict("beats_baseline", base(), shifted("on", 1e-3, -0.05), shifted("on", 1e-2, 0.001))
    assert g["verdict"] == "PASS" and "on alpha=0.001" in g["detail"]
    # significant but only 0.5% better
    g = verdict("beats_baseline", base(), shifted("on", 1e-3, -0.005, jitter=0.0))
    assert g["verdict"] == "FAIL"
    # big improvement, not significant (noisy)
    noisy = mk("arm", "on", 1e-3, {1: 2.5, 2: 3.4, 3: 2.7})
    assert verdict("beats_baseline", base(), noisy)["verdict"] == "FAIL"
    # only the listed arms count (e.g. the isotropic control beating the baseline does not pass the gate)
    g = verdict("beats_baseline", base(), shifted("iso", 1e-3, -0.05), shifted("on", 1e-3, 0.0),
                settings={"arms": ["on"]})
    assert g["verdict"] == "FAIL"
    # one seed only
    one = mk("arm", "on", 1e-3, {1: 2.0})
    assert verdict("beats_baseline", base(), one)["verdict"] == "INSUFFICIENT"
    # a diverged seed: never better -> FAIL
    div = mk("arm", "on", 1e-3, {1: 2.80, 2: 2.84, 3: 2.79, 4: None})
    b4 = pd.concat([base(), mk("baseline", "muon", 0.0, {4: 3.01})])
    assert verdict("beats_baseline", b4, div)["verdict"] == "FAIL"


def test_effective_rank_higher():
    s = {"arms": ["on", "on-anneal"]}
    hi = [25.0, 25.5, 24.8]
    g = verdict("effective_rank_higher", base(er=[20.0, 20.3, 19.9]), shifted("on", 1e-3, 0, er=hi),
                shifted("on-anneal", 1e-2, 0, er=hi), shifted("iso", 1e-3, 0, er=10.0), settings=s)
    assert g["verdict"] == "PASS"
    ref = sps.ttest_ind(hi + hi, [20.0, 20.3, 19.9], equal_var=False)
    assert g["values"]["tiny"]["p"] == pytest.approx(ref.pvalue)
    g = verdict("effective_rank_higher", base(er=[20.0, 20.3, 19.9]), shifted("on", 1e-3, 0, er=[20.1, 19.8, 20.2]),
                settings=s)
    assert g["verdict"] == "FAIL"
    g = verdict("effective_rank_higher", base(er=[20.0, 20.3, 19.9]), mk("arm", "on", 1e-3, {1: 3.0}, er=30.0),
                settings=s)
    assert g["verdict"] == "INSUFFICIENT"
    with pytest.raises(ValueError, match="arms"):
        run({"effective_rank_higher": {}}, base())


def test_isotropic_worse():
    on1, iso1 = shifted("orthonoise", 1e-3, -0.01), shifted("isotropic", 1e-3, 0.03)
    on2, iso2 = shifted("orthonoise", 1e-2, 0.0), shifted("isotropic", 1e-2, 0.001, jitter=0.02)
    g = verdict("isotropic_worse", base(), on1, iso1, on2, iso2)
    assert g["verdict"] == "PASS"
    lbl = "tiny alpha=0.001"
    a = iso1.sort_values("seed")["final_val_loss"].to_numpy()
    b = on1.sort_values("seed")["final_val_loss"].to_numpy()
    ref = sps.ttest_rel(a, b, alternative="greater")
    assert g["values"][lbl]["p_one_sided"] == pytest.approx(ref.pvalue)
    assert g["values"][lbl]["test"] == "paired t"
    # direction fails at one shared alpha
    g = verdict("isotropic_worse", base(), on1, iso1, shifted("orthonoise", 1e-2, 0.02),
                shifted("isotropic", 1e-2, 0.0))
    assert g["verdict"] == "FAIL"
    # direction holds but nothing significant
    g = verdict("isotropic_worse", base(), on2, iso2)
    assert g["verdict"] == "FAIL"
    # no shared alpha / one seed each side
    assert verdict("isotropic_worse", base(), on1, shifted("isotropic", 1e-2, 0.03))["verdict"] == "INSUFFICIENT"
    g = verdict("isotropic_worse", base(), mk("arm", "orthonoise", 1e-3, {1: 3.0}),
                mk("arm", "isotropic", 1e-3, {1: 3.1}))
    assert g["verdict"] == "INSUFFICIENT"
    g = verdict("isotropic_worse", base(), on1, iso1, settings={"orthonoise": "x", "isotropic": "y"})
    assert g["verdict"] == "INSUFFICIENT"


def test_early_loss_not_worse():
    g = verdict("early_loss_not_worse", base(v100=4.0), shifted("on", 1e-3, -0.05, v100=3.9))
    assert g["verdict"] == "PASS" and "3.9" in g["observed"]
    g = verdict("early_loss_not_worse", base(v100=4.0), shifted("on", 1e-3, -0.05, v100=4.1))
    assert g["verdict"] == "FAIL"
    g = verdict("early_loss_not_worse", base(v100=4.0), shifted("on", 1e-3, -0.05, v100=4.1),
                settings={"tolerance": 0.05})
    assert g["verdict"] == "PASS"
    g = verdict("early_loss_not_worse", base(), shifted("on", 1e-3, -0.05), settings={"step": 250})
    assert g["verdict"] == "INSUFFICIENT"
    # step not in runs.csv but in curves.csv
    cur = pd.DataFrame([dict(role=r, model="tiny", arm=a, alpha=al, seed=s, step=250, val_loss=v)
                        for r, a, al, v in [("baseline", "muon", 0.0, 3.5), ("arm", "on", 1e-3, 3.4)]
                        for s in SEEDS])
    g = verdict("early_loss_not_worse", base(), shifted("on", 1e-3, -0.05), settings={"step": 250}, curves=cur)
    assert g["verdict"] == "PASS"


def test_advantage_replicates():
    assert verdict("advantage_replicates", base("1b"), shifted("on", 1e-3, -0.01, model="1b"))["verdict"] == "PASS"
    g = verdict("advantage_replicates", base("1b"), shifted("on", 1e-3, -0.003, model="1b", jitter=0.0))
    assert g["verdict"] == "FAIL"
    assert verdict("advantage_replicates", base("1b"),
                   mk("arm", "on", 1e-3, {1: 2.0}, model="1b"))["verdict"] == "INSUFFICIENT"
    # the scratch pair does not count for this gate
    sc = pd.concat([mk("scratch_baseline", "muon", 0.0, {1: 5.0, 2: 5.01}, model="1b"),
                    mk("scratch_arm", "on", 1e-3, {1: 4.0, 2: 4.01}, model="1b")])
    assert verdict("advantage_replicates", sc)["verdict"] == "INSUFFICIENT"


def _scratch_curves(base_steps, arm_steps, base_final=(3.0, 3.1), arm_final=(2.9, 3.0)):
    rows = []
    for role, arm, finals in [("scratch_baseline", "muon", base_final), ("scratch_arm", "on", arm_final)]:
        for seed, f in zip((1, 2), finals):
            for s in range(0, 1001, 50):
                tau = base_steps if role == "scratch_baseline" else arm_steps
                rows.append(dict(phase="p3", role=role, model="1b", arm=arm, alpha=0.0 if arm == "muon" else 1e-3,
                                 seed=seed, step=s, val_loss=f + 8 * np.exp(-s / tau) - 8 * np.exp(-1000 / tau),
                                 train_loss=np.nan, eff_rank_mean=np.nan))
    return pd.DataFrame(rows)


def _scratch_runs(arm_status="ok"):
    return pd.concat([mk("scratch_baseline", "muon", 0.0, {1: 3.0, 2: 3.1}, model="1b"),
                      mk("scratch_arm", "on", 1e-3, {1: 2.9, 2: None if arm_status != "ok" else 3.0}, model="1b")])


def test_scratch_faster():
    g = verdict("scratch_faster", _scratch_runs(), curves=_scratch_curves(200, 100))
    assert g["verdict"] == "PASS"
    assert g["values"]["target"] == pytest.approx(3.05)
    assert np.mean(g["values"]["arm_steps"]) < np.mean(g["values"]["baseline_steps"])
    g = verdict("scratch_faster", _scratch_runs(), curves=_scratch_curves(100, 200, arm_final=(3.04, 3.04)))
    assert g["verdict"] == "FAIL"
    g = verdict("scratch_faster", _scratch_runs("diverged"), curves=_scratch_curves(200, 100))
    assert g["verdict"] == "FAIL" and "diverged" in g["detail"]
    assert verdict("scratch_faster", base(), shifted("on", 1e-3, 0.0))["verdict"] == "INSUFFICIENT"


# ---------------------------------------------------------------------------------------- overall, config
def test_overall_passed_logic_and_markdown():
    ok = run({"no_crashes": {}, "effective_rank_logged": {}}, base(), shifted("on", 1e-3, 0.0))
    assert ok["passed"] is True
    fail = run({"no_crashes": {}, "beats_baseline": {}}, base(), mk("arm", "on", 1e-3, {1: None}))
    assert fail["passed"] is False
    ins = run({"no_crashes": {}, "beats_baseline": {}}, base(), mk("arm", "on", 1e-3, {1: 2.0}))
    assert ins["passed"] is None
    assert run({}, base())["passed"] is None
    md = gates_markdown(fail)
    assert "| gate | verdict |" in md and "FAIL" in md and "FAILED" in md


def test_unknown_gate_and_setting_are_errors():
    with pytest.raises(ValueError, match="unknown gate 'bogus'"):
        run({"bogus": {}}, base())
    with pytest.raises(ValueError, match="max_rel"):
        run({"loss_within_baseline": {"max_rel": 0.1}}, base())
    assert set(GATES) == {"no_crashes", "loss_within_baseline", "effective_rank_logged", "beats_baseline",
                          "effective_rank_higher", "isotropic_worse", "early_loss_not_worse",
                          "advantage_replicates", "scratch_faster"}
    run({"no_crashes": None, "beats_baseline": {"min_improvement": 0.02, "description": "x"}}, base())


def test_json_is_strict():
    import json
    res = run({g: ({"arms": ["on"]} if g == "effective_rank_higher" else {}) for g in GATES},
              base(), mk("arm", "on", 1e-3, {1: None, 2: 2.9}))
    json.dumps(res, allow_nan=False)
    assert len(res["gates"]) == len(GATES)


# ---------------------------------------------------------------------------------------------- selection
def _sig(*tables):
    return significance_table(pd.concat(tables, ignore_index=True), "muon")


def test_selection_picks_largest_significant_improvement():
    sig = _sig(base(), shifted("on", 1e-3, -0.02), shifted("on", 1e-2, -0.05), shifted("iso", 1e-3, 0.01))
    sel = select_arm(sig, {"passed": True}, force=False)
    assert (sel["arm"], sel["alpha"], sel["gate_passed"], sel["rule"]) == ("on", 0.01, True, "better")
    assert sel["forced"] is False and len(sel["candidates"]) == 2
    sel = select_arm(sig, {"passed": True}, arms=["on"])
    assert (sel["arm"], sel["alpha"]) == ("on", 0.01)
    sel = select_arm(sig, {"passed": True}, arms=["iso"])
    assert sel["arm"] == "iso" and sel["rule"] == "lowest_mean_loss" and sel["gate_passed"] is False


def test_selection_fallback_is_flagged_and_skips_diverged():
    b4 = pd.concat([base(), mk("baseline", "muon", 0.0, {4: 3.01})])
    div = mk("arm", "on", 1e-2, {1: 2.0, 2: 2.01, 3: 2.02, 4: None})  # lowest loss but diverged
    sig = _sig(b4, div, mk("arm", "on", 1e-3, {1: 3.01, 2: 2.9, 3: 3.1, 4: 2.95}),
               mk("arm", "iso", 1e-3, {1: 3.05, 2: 3.0, 3: 3.1, 4: 3.0}))
    sel = select_arm(sig, {"passed": True}, force=True)
    assert sel["arm"] == "on" and sel["alpha"] == 0.001 and sel["rule"] == "lowest_mean_loss"
    assert sel["gate_passed"] is False and "NOT PASSED" in sel["reason"] and sel["forced"] is True
    sel = select_arm(sig, {"passed": None}, force=False)
    assert sel["gate_passed"] is None


def test_selection_with_nothing():
    sel = select_arm(pd.DataFrame(), {"passed": False})
    assert sel["arm"] is None and sel["alpha"] is None and sel["gate_passed"] is False and sel["reason"]
