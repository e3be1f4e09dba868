"""The report-readability items of issue 19 in analysis/plots.py and analysis/report.py: sweep values ordered
as numbers, the baseline's variant in the legend, one style per configuration across a phase's plots (two
baselines never alike), placeholders left out of the report with the reason, and the noise-trigger table
only where the phase ran a noise arm. Small hand-made tables through the real plot and report code."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis.plots as P
from analysis.report import has_noise_arms, section_markdown
from analysis.stats import significance_table

SWEEP = ["lr0.1", "lr0.023", "lr0.05", "lr0.2"]
GATES = {"phase": "p", "passed": None, "gates": []}
MUON_ARMS = {"muon": {"class": "Muon", "muon": {"lr": 0.02}}, "normuon": {"class": "NorMuon", "muon": {"lr": 0.02}}}


def tables(variants=SWEEP, seeds=(1, 2), steps=(0, 50, 100, 150, 200), noise=0.0, scratch=False):
    """runs and curves: a Muon baseline at lr0.02 and an arm `normuon` at each variant; optionally a
    scratch baseline (a second baseline of the same model)."""
    runs, curves = [], []
    confs = [("baseline", "muon", "lr0.02", 3.0)] + [("arm", "normuon", v, 2.9 + 0.01 * i) for i, v in
                                                     enumerate(variants)]
    if scratch:
        confs.append(("scratch_baseline", "muon", "lr0.02", 3.2))
    for role, arm, var, final in confs:
        for s in seeds:
            f = final + 0.002 * s
            runs.append({"phase": "p", "model": "tiny", "role": role, "arm": arm, "variant": var, "param": "lr",
                         "value": float(var[2:]), "alpha": 0.0, "seed": s, "status": "ok", "final_val_loss": f,
                         "noise_fraction_mean": noise, "gpu_hours": 0.001, "wall_time_s": 3.6})
            for st in steps:
                curves.append({"model": "tiny", "role": role, "arm": arm, "variant": var, "seed": s, "step": st,
                               "val_loss": f + 2.0 * (1 - st / steps[-1]), "eff_rank_mean": 10.0 + st / 100})
    return pd.DataFrame(runs), pd.DataFrame(curves)


@pytest.fixture
def legend(monkeypatch):
    """The legend entries each curve plot draws, in order: (label, colour, line style)."""
    got = []

    def capture(fig, handles, labels, n_axes_rows=1):
        got.append([(lb, tuple(np.round(np.atleast_1d(P.matplotlib.colors.to_rgba(h.get_color())), 4)),
                     h.get_linestyle()) for h, lb in zip(handles, labels)])
    monkeypatch.setattr(P, "_legend_below", capture)
    return got


def test_sweep_values_sort_as_numbers(tmp_path, legend):
    assert sorted(["lr0.1", "lr0.023", "lr1e-3", "default", "every10", "every3"], key=P.num_key) == \
        ["default", "every3", "every10", "lr1e-3", "lr0.023", "lr0.1"]
    # as strings these sort lr0.023, lr0.1, lr10, lr1e-3, lr2
    runs, curves = tables(variants=["lr10", "lr0.1", "lr0.023", "lr2", "lr1e-3"])
    P.plot_val_loss(curves, runs, str(tmp_path / "v.png"), "muon")
    numeric = ["lr1e-3", "lr0.023", "lr0.1", "lr2", "lr10"]
    assert [lb.split(" [")[0] for lb, *_ in legend[0][1:]] == [f"normuon {v}" for v in numeric]
    assert list(P.order(significance_table(runs, "muon"))["variant"]) == numeric


def test_baseline_variant_in_legend_and_forest_title(tmp_path, legend):
    runs, curves = tables()
    P.plot_val_loss(curves, runs, str(tmp_path / "v.png"), "muon")
    assert legend[0][0][0].startswith("muon (lr0.02), baseline [n=2")
    assert P.baseline_name(runs, "muon") == "muon (lr0.02)"
    assert P.baseline_name(runs.assign(variant="default"), "muon") == "muon"


def test_one_style_per_configuration_across_plots(tmp_path, legend):
    runs, curves = tables(variants=[f"lr0.0{i}" for i in range(1, 10)] + ["lr0.1", "lr0.2", "lr0.3"])
    P.plot_val_loss(curves, runs, str(tmp_path / "v.png"), "muon", max_lines=12)
    P.plot_eff_rank(curves, runs, str(tmp_path / "r.png"), "muon", max_lines=3)   # a subset: the 3 lowest
    P.plot_early(curves, runs, str(tmp_path / "e.png"), "muon", 150, max_lines=12)
    full, sub, early = ({lb.split(" [")[0]: (c, ls) for lb, c, ls in got} for got in legend)
    assert len(sub) == 4 and set(sub) < set(full)
    for name, st in sub.items():
        assert full[name] == st, name
    assert early == full
    assert len(set(full.values())) == len(full)  # 13 configurations (12 arms past tab10's 10), all distinct


def test_two_baselines_never_alike(tmp_path, legend):
    runs, curves = tables(variants=["lr0.05"], scratch=True)
    P.plot_val_loss(curves, runs, str(tmp_path / "v.png"), "muon")
    base = [(c, ls) for lb, c, ls in legend[0] if "baseline" in lb]
    assert len(base) == 2 and base[0] != base[1]
    sty = P.styles(runs, "muon")
    assert sum(v[2] for v in sty.values()) == 2


def test_placeholder_left_out_of_the_report(tmp_path):
    runs, curves = tables(steps=(0, 100, 200))   # one evaluated step at or below 60: nothing to zoom on
    out = {k: str(tmp_path / "plots" / f"{k}.png") for k in ("val_loss", "early", "forest", "eff_rank")}
    P.make_plots(runs, curves, out, "muon", 60, phase="p")
    assert P.omitted_reason(out["val_loss"]) is None
    why = P.omitted_reason(out["early"])
    assert why and "evaluated step" in why
    text = section_markdown(phase="p", question="q", runs=runs, significance=significance_table(runs, "muon"),
                            gates=GATES, plots=list(out.values()), results_root=str(tmp_path),
                            arms=MUON_ARMS, usd_per_gpu_hour=1.0, baseline="muon", tiny=True)
    assert "plots/early.png" not in text and "![Validation loss vs step](plots/val_loss.png)" in text
    assert ("_Early training (zoomed): left out, only 1 evaluated step at or below step 60 (steps: 0); the "
            "early-training zoom needs at least 3._") in text


def test_trigger_table_only_with_noise_arms(tmp_path):
    runs, _ = tables()      # Muon and NorMuon: noise_fraction_mean logged as 0 for every run
    sig = significance_table(runs, "muon")
    kw = dict(phase="p", question="q", significance=sig, gates=GATES, plots=[], results_root=str(tmp_path),
              usd_per_gpu_hour=1.0, baseline="muon")
    assert not has_noise_arms(runs, MUON_ARMS)
    assert "Noise trigger rate" not in section_markdown(runs=runs, arms=MUON_ARMS, **kw)
    noisy = {**MUON_ARMS, "normuon": {"class": "MuonOrthoNoise", "muon": {"lr": 0.02, "alpha": 1.0e-3}}}
    assert has_noise_arms(runs, noisy)
    assert "### Noise trigger rate per configuration" in section_markdown(runs=runs, arms=noisy, **kw)
    # settings not given: the runs decide (an arm that noised some matrix-step is a noise arm)
    assert not has_noise_arms(runs, {}) and has_noise_arms(runs.assign(noise_fraction_mean=0.3), {})
