"""The design check (power before any GPU-hour), escaping of user text, the CPU-twin line, trigger rates."""
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis import power as pw
from analysis.design import design, design_markdown, noise_from_runs, warnings_for
from analysis.report import report_markdown, section_markdown, trigger_rates

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_analysis_report import script, sm  # noqa: E402

FAMILY = ["orthonoise", "orthonoise-anneal", "orthonoise-linear", "orthonoise-exp", "orthonoise-rank0.3",
          "orthonoise-rank0.7"]


def phase2(seeds=(42, 123), gates=None):
    """OrthoNoise phase 2 as configured: 14 OrthoNoise configurations + the isotropic control = 15."""
    cf = [dict(model="gpt-350m", arm="muon", variant="alpha0", role="baseline")]
    cf += [dict(model="gpt-350m", arm=a, variant=f"alpha{x}", role="arm") for a in FAMILY[:2]
           for x in ("0.0001", "0.001", "0.005", "0.01", "0.05")]
    cf += [dict(model="gpt-350m", arm=a, variant="alpha0.01", role="arm") for a in FAMILY[2:]]
    cf += [dict(model="gpt-350m", arm="isotropic", variant="alpha0.001", role="arm")]
    return {"seeds": list(seeds), "baseline": "muon", "configs": cf, "gpu_hours_per_run": 0.5,
            "gates": gates or {"beats_baseline": {"kind": "beats_baseline", "min_improvement": 0.01}}}


def test_phase2_as_configured_is_underpowered_and_says_what_fixes_it():
    rows = design({"phase2": phase2()}, prior_sd=0.005, usd_per_gpu_hour=2.8)
    r = rows[0]
    assert (r["hypotheses"], r["k_family"], r["seeds"]) == (15, 15, 2)
    assert r["alpha_per_test"] == pytest.approx(0.05 / 15)
    assert r["power"] == pytest.approx(pw.paired_power(0.01, 0.005 * math.sqrt(2), 2, 0.05 / 15))
    assert r["power"] < 0.02 and r["underpowered"]
    assert r["seeds_for_target"] == 11
    assert pw.power(0.01, 0.005, 11, 0.05 / 15) >= 0.8 > pw.power(0.01, 0.005, 10, 0.05 / 15)
    assert r["runs"] == 32 and r["gpu_hours"] == pytest.approx(16.0) and r["cost_usd"] == pytest.approx(44.8)
    assert r["runs_at_target"] == 176 and r["cost_usd_at_target"] == pytest.approx(176 * 0.5 * 2.8)
    w = warnings_for(rows)
    assert len(w) == 1 and "11 seeds per side would give 80%" in w[0]
    assert "Underpowered" in design_markdown(rows)
    ok = design({"phase2": phase2(seeds=range(11))}, prior_sd=0.005)[0]
    assert not ok["underpowered"] and warnings_for([ok]) == []


def test_one_seed_has_no_power_and_the_table_says_so():
    # a phase on one seed (docs/examples/distro_compress's topk): no test, no power; the cell read '****'
    r = design({"phase2": phase2(seeds=[1])}, prior_sd=0.005)[0]
    assert r["power"] is None or not math.isfinite(r["power"])
    assert r["underpowered"]
    md = design_markdown([r])
    assert "| **n/a** (under floor) |" in md and "****" not in md


def test_family_counts_every_statistical_gate_and_selected_is_one():
    gates = {"beats": {"kind": "beats_baseline", "min_improvement": 0.01, "arms": FAMILY},
             "rank": {"kind": "metric_higher", "arms": ["selected"]},
             "iso": {"kind": "arm_better_than_arm", "better": "selected", "worse": "isotropic"},
             "early": {"kind": "not_worse_than_baseline", "step": 100, "arms": ["selected"]},
             "nc": {"kind": "no_crashes"}}
    rows = design({"phase2": phase2(gates=gates)})
    assert [r["hypotheses"] for r in rows] == [14, 1, 1, 1] and {r["k_family"] for r in rows} == {17}
    with pytest.raises(ValueError, match="not a gate kind"):
        design({"p": phase2(gates={"x": {"kind": "nope"}})})


def test_noise_comes_from_earlier_phases():
    rows = []
    for arm, base in (("muon", 3.0), ("on", 2.9)):
        for s, e in zip((1, 2, 3), (-0.01, 0.0, 0.01)):
            rows.append(dict(phase="phase1", role="baseline" if arm == "muon" else "arm", model="m", arm=arm,
                             variant="default", seed=s, status="ok", final_val_loss=base + e))
    noise = noise_from_runs([pd.DataFrame(rows)], ["phase1", "phase2"])
    assert "phase1" not in noise
    sd, src = noise["phase2"]
    want = math.sqrt(((0.01 / 3.0) ** 2 * 2 + (0.01 / 2.9) ** 2 * 2) / 4)
    assert sd == pytest.approx(want, rel=1e-6) and "phase1" in src
    r = design({"phase2": phase2()}, noise=noise)[0]
    assert r["sd"] == pytest.approx(want) and r["sd_source"] == src


def test_design_script_end_to_end(tmp_path):
    out = {"csv": str(tmp_path / "design.csv"), "md": str(tmp_path / "design.md"),
           "json": str(tmp_path / "design.json")}
    script("design", sm({}, out, {"phases": {"phase2": phase2()}, "order": ["phase1", "phase2"],
                                  "prior_sd": 0.005, "usd_per_gpu_hour": 2.8}, str(tmp_path / "d.log")))
    d = json.loads(Path(out["json"]).read_text())
    assert d["noise"]["phase2"] == {"sd": 0.005, "source": "prior"} and len(d["warnings"]) == 1
    assert pd.read_csv(out["csv"])["seeds_for_target"].tolist() == [11]
    assert "underpowered" in Path(tmp_path / "d.log").read_text()


def test_user_text_is_escaped_and_the_twin_says_so():
    """Issue 14 item 9: a <script> tag in a title or question survived into the Markdown and HTML."""
    evil = 'Q <script>alert("x")</script> *bold* [link](http://x) --> end'
    gates = {"phase": "phase1", "passed": None, "gates": []}
    runs = pd.DataFrame(columns=["phase", "role", "model", "arm", "variant", "seed", "status", "gpu_hours",
                                 "wall_time_s", "final_val_loss"])
    sec = section_markdown(phase="phase1", question=evil, runs=runs, significance=pd.DataFrame(), gates=gates,
                           plots=[], results_root=".", arms={}, usd_per_gpu_hour=1.0, baseline="muon", tiny=True)
    rep = report_markdown([sec], f"T {evil}", ["phase1"], tiny=False)
    for text in (sec, rep):
        assert "<script>" not in text and "</script>" not in text
        assert text.count("<!--") == text.count("-->")  # nothing closes the summary comment early
    assert "&lt;script&gt;" in sec and "\\*bold\\*" in sec
    assert rep.splitlines()[0].startswith("# T ") and "CPU twin" in "\n".join(rep.splitlines()[:4])
    from analysis.report import parse_summary
    assert parse_summary(sec)["question"] == evil and parse_summary(sec)["tiny"] is True


def test_trigger_rate_table_flags_identical_schedules():
    """Issue 9: the rank-threshold arms fired on 100% of matrix-steps: the constant arm under other names."""
    rows = []
    for arm, rate in (("muon", 0.0), ("orthonoise", 1.0), ("orthonoise-rank0.3", 1.0), ("orthonoise-rank0.7", 0.9999),
                      ("isotropic", 0.4)):
        for s in (1, 2):
            rows.append(dict(phase="p", role="baseline" if arm == "muon" else "arm", model="m", arm=arm,
                             variant="alpha0.01", seed=s, status="ok", noise_fraction_mean=rate))
    arms = {"orthonoise": {"class": "MuonOrthoNoise", "muon": {"rank_threshold": 0.5}},
            "orthonoise-rank0.3": {"class": "MuonOrthoNoise", "muon": {"rank_threshold": 0.3}},
            "orthonoise-rank0.7": {"class": "MuonOrthoNoise", "muon": {"rank_threshold": 0.7}},
            "isotropic": {"class": "MuonIsotropic", "muon": {"rank_threshold": 0.5}}}
    md, flags = trigger_rates(pd.DataFrame(rows), arms)
    assert "100.0%" in md and "40.0%" in md
    assert len(flags) == 1 and "orthonoise, orthonoise-rank0.3, orthonoise-rank0.7" in flags[0]
    assert "differ only in trigger settings" in flags[0] and "identical in practice" in flags[0]


def test_escaped_text_renders_as_text_in_html():
    """The Markdown rendered to HTML (markdown-it, CommonMark with raw HTML allowed, as report viewers do)
    carries the user's <script> as text, never as a tag."""
    from markdown_it import MarkdownIt
    evil = 'Plan <script>alert(1)</script> & <img src=x onerror=alert(2)> \n\n<!-- x --> `code`'
    gates = {"phase": "p1", "passed": None, "gates": []}
    runs = pd.DataFrame(columns=["phase", "role", "model", "arm", "variant", "seed", "status", "gpu_hours",
                                 "wall_time_s", "final_val_loss"])
    sec = section_markdown(phase="p1", question=evil, runs=runs, significance=pd.DataFrame(), gates=gates,
                           plots=[], results_root=".", arms={}, usd_per_gpu_hour=1.0, baseline="muon")
    html = MarkdownIt("commonmark", {"html": True}).enable("table").render(report_markdown([sec], evil, ["p1"]))
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_design_from_files_for_the_dry_run(tmp_path):
    from analysis.design import design_from_files
    rows, warn = design_from_files({"phase2": phase2()}, ["phase1", "phase2"], [str(tmp_path / "missing.csv")],
                                   prior_sd=0.005)
    assert len(rows) == 1 and len(warn) == 1 and rows[0]["sd_source"] == "prior"


def test_scratch_pair_with_one_seed_is_flagged():
    ph = {"seeds": [7, 8, 9], "scratch_seeds": [42], "baseline": "muon",
          "configs": [dict(model="s", arm="muon", variant="default", role="scratch_baseline"),
                      dict(model="s", arm="on", variant="default", role="scratch_arm")],
          "gates": {"scratch_faster": {"kind": "reaches_target_sooner"}}}
    r = design({"phase3": ph})[0]
    assert r["seeds"] == 1 and math.isnan(r["power"]) and r["underpowered"] and r["seeds_for_target"] >= 2
    assert "fewer than 2 seeds" in warnings_for([r])[0]


def test_study_power_floor_default():
    from analysis.gates import evaluate_gates
    rows = design({"phase2": phase2()}, power_floor=0.01)
    assert rows[0]["power_floor"] == 0.01 and not rows[0]["underpowered"]
    vals = {("muon", 1): 3.0, ("muon", 2): 3.02, ("on", 1): 0.99 * 3.0 + 0.01, ("on", 2): 0.99 * 3.02 - 0.012}
    runs = pd.DataFrame([dict(phase="p", role=r, model="m", arm=a, variant="v", seed=s, status="ok",
                              final_val_loss=vals[(a, s)])  # undecided against the 1% threshold
                         for r, a in (("baseline", "muon"), ("arm", "on")) for s in (1, 2)])
    g = {"g": {"kind": "beats_baseline", "min_improvement": 0.01}}
    lo = evaluate_gates(runs, None, None, g, "muon", "p", noise_sd=0.005, power_floor=0.001)
    hi = evaluate_gates(runs, None, None, g, "muon", "p", noise_sd=0.005)
    # issue 19: the floor is the design check's flag; an undecided result stays INSUFFICIENT whatever the power
    assert lo["gates"][0]["settings"]["power_floor"] == 0.001 and lo["gates"][0]["verdict"] == "INSUFFICIENT"
    assert hi["gates"][0]["verdict"] == "INSUFFICIENT"


def test_costs_count_the_scratch_pair_at_its_own_seeds():
    """Issue 19 item 5: OrthoNoise phase 3 showed 156 GPU-h for 13 runs that cost 116, and its 'at 80%'
    figure scaled the scratch pair too (1040 vs 320)."""
    cf = [dict(model="granite-1b", arm="muon", variant="alpha0", role="baseline"),
          dict(model="granite-1b", arm="orthonoise", variant="alpha0.01", role="arm"),
          dict(model="granite-1b", arm="nolah", variant="default", role="arm"),
          dict(model="gpt-1b-scratch", arm="muon", variant="alpha0", role="scratch_baseline"),
          dict(model="gpt-1b-scratch", arm="orthonoise", variant="alpha0.01", role="scratch_arm")]
    ph = {"seeds": [7, 8, 9], "baseline": "muon", "configs": cf, "scratch_seeds": [42, 123],
          "gpu_hours_per_run": {"granite-1b": 4.0, "gpt-1b-scratch": 20.0}, "selected_arms": ["orthonoise"],
          "gates": {"adv": {"kind": "beats_baseline", "min_improvement": 0.005, "arms": ["selected"]},
                    "early": {"kind": "not_worse_than_baseline", "step": 100, "arms": ["selected"]},
                    "scratch": {"kind": "reaches_target_sooner"}}}
    rows = {r["gate"]: r for r in design({"phase3": ph}, prior_sd=0.005)}
    adv = rows["adv"]
    assert adv["runs"] == 13 and adv["gpu_hours"] == pytest.approx(116.0)
    assert adv["seeds_for_target"] == 20 and adv["runs_at_target"] == 64
    assert adv["gpu_hours_at_target"] == pytest.approx(60 * 4.0 + 4 * 20.0)
    assert [rows[g]["hypotheses"] for g in ("adv", "early", "scratch")] == [1, 1, 1]
    # the per-gate figure is labelled beside the per-hypothesis one; one hypothesis: the same up to noise
    assert adv["gate_power"] == pytest.approx(adv["power"], abs=0.03)
    md = design_markdown(list(rows.values()), tiny=True)
    assert "power per hypothesis" in md and "P(gate passes), simulated" in md and "CPU twin" in md


def test_gate_power_of_all_of_and_any_of_gates():
    """Issue 19 item 4: nGPT's projection gate read 10.9% per hypothesis where all six true pass together
    far less often; an any-of gate passes more often than one of its hypotheses."""
    cf = [dict(model="n", arm="muon", variant="k1", role="baseline")] + \
         [dict(model="n", arm="muon", variant=f"k{k}", role="arm") for k in (3, 5, 7, 10, 15, 20)]
    ph = {"seeds": [1, 2, 3], "baseline": "muon", "configs": cf,
          "gates": {"lazy": {"kind": "not_worse_than_baseline", "margin": 0.01, "arms": ["muon"]},
                    "any": {"kind": "beats_baseline", "arms": ["muon"]}}}
    rows = {r["gate"]: r for r in design({"p": ph}, prior_sd=0.005)}
    assert rows["lazy"]["gate_power"] < rows["lazy"]["power"] / 5
    assert rows["any"]["gate_power"] > rows["any"]["power"] * 2
