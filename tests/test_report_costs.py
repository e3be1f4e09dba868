"""Costs that add up (issue 19): GPU-hours counted by share, the report's cost table (planned at the time
limits | measured, k of n | projected from the measured mean per run), the at-80% figures projected the same
way, the CPU twin's lines, and the dry run's design check before and after runs exist (no extra job)."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.aggregate import aggregate, read_runs
from analysis.costs import cost_markdown, cost_rows, planned, project, projection_lines
from analysis.design import design, design_from_files
from analysis.report import runs_markdown
from analysis.synth import write_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_analysis_report import script, sm  # noqa: E402

KEYS = ("phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "run_dir")
GATES = {"beats_baseline": {"kind": "beats_baseline", "min_improvement": 0.01}}


def trainer_share(wall_s: float, gpu_s_by_share: float, gpus: int = 1) -> dict:
    """metrics.json's gpu_share fields as the trainer writes them (trainer.loop.share_record) for a CUDA run
    that held `gpus` GPUs for `wall_s` and counted `gpu_s_by_share` GPU-seconds by share."""
    import torch

    from trainer.distributed import DistInfo
    from trainer.loop import share_record

    info = DistInfo(rank=0, world_size=gpus, local_rank=0, device=torch.device("cuda", 0), backend=None)
    share = {"gpu_s_by_share": gpu_s_by_share, "gpu_s_unmeasured": 0.0, "samples": 12, "devices_held": gpus,
             "max_listed": 2, "why": ""}
    return share_record(share, wall_s, info)


def entry(seeds=(1, 2), per_run=0.5, model="tiny"):
    """A design entry as rules/common.smk's design_entry builds it: baseline + 2 arms, time limit per run."""
    cf = [dict(model=model, arm="muon", variant="alpha0", role="baseline"),
          dict(model=model, arm="orthonoise", variant="alpha0.001", role="arm"),
          dict(model=model, arm="isotropic", variant="alpha0.001", role="arm")]
    return {"seeds": list(seeds), "baseline": "muon", "configs": cf, "gates": GATES,
            "gpu_hours_per_run": {model: per_run}, "n_runs": 3 * len(seeds)}


def write_phase(root: Path, phase: str, seeds, *, gpu_hours=0.02, wall=72.0, shares=None, only=None):
    """The phase's runs (real records, as the trainer writes them; `shares[i]`: the i-th run's share, None:
    alone) and its runs table through the real aggregate."""
    recs, i = [], 0
    for s in seeds:
        for arm, role in (("muon", "baseline"), ("orthonoise", "arm"), ("isotropic", "arm")):
            if only is not None and i >= only:
                break
            sh = (shares or {}).get(i)
            rec = write_run(root / phase, model="tiny", arm=arm, alpha=0.0 if arm == "muon" else 1e-3, seed=s,
                            final_loss=3.0 - 0.01 * (arm != "muon") + 0.001 * s, role=role, phase=phase,
                            gpu_hours=gpu_hours, wall_time_s=wall,
                            gpu_share=None if not gpu_hours else
                            trainer_share(wall, wall * (sh if sh is not None else 1.0))["gpu_share"])
            recs.append(rec)
            i += 1
    runs, _ = aggregate([r["metrics"] for r in recs], [r["history"] for r in recs],
                        [{k: r[k] for k in KEYS} for r in recs], phase)
    return runs


def test_two_runs_sharing_one_gpu_count_half_each(tmp_path):
    # the trainer's record of a run that had half its GPU for its whole wall time
    rec = trainer_share(720.0, 360.0)
    assert rec["gpu_share"] == pytest.approx(0.5) and rec["gpu_share_source"].startswith("NVML")
    runs = write_phase(tmp_path, "phase1", [1, 2], gpu_hours=0.2, wall=720.0, shares={0: 0.5, 1: 0.5})
    by = runs.set_index(["arm", "seed"])
    assert by.loc[("muon", 1), "gpu_share"] == pytest.approx(0.5)
    assert by.loc[("muon", 1), "gpu_hours_by_share"] == pytest.approx(0.1)
    assert by.loc[("orthonoise", 1), "gpu_hours_by_share"] == pytest.approx(0.1)
    assert by.loc[("isotropic", 1), "gpu_hours_by_share"] == pytest.approx(0.2)  # alone: its whole GPU
    md, tot = runs_markdown(runs, 2.0)
    # 6 runs x 0.2 GPU-h held; the two sharing runs count 0.1 each: 0.2 less
    assert tot["gpu_hours"] == pytest.approx(1.0) and tot["gpu_hours_unshared"] == pytest.approx(1.2)
    assert tot["cost"] == pytest.approx(2.0) and tot["n_shared"] == 2
    assert md.count("0.100 (0.200 unshared, share 50%)") == 2
    assert "**total: 6 runs**" in md and "1.000 (1.200 unshared)" in md
    assert "| GPU-h (by share) |" in md


def test_unshared_runs_and_old_records_count_whole_gpus(tmp_path):
    runs = write_phase(tmp_path, "phase1", [1], gpu_hours=0.2)
    md, tot = runs_markdown(runs, 1.0)
    assert tot["gpu_hours"] == pytest.approx(0.6) == tot["gpu_hours_unshared"] and "unshared" not in md
    old = runs.drop(columns=["gpu_share", "gpu_hours_by_share"])  # a runs.csv from before the share existed
    _, tot_old = runs_markdown(old, 1.0)
    assert tot_old["gpu_hours"] == pytest.approx(0.6)


def test_cost_table_planned_measured_and_projected(tmp_path):
    ph = entry()  # 6 runs at 0.5 GPU-h each: 3.0 planned
    plan = planned(ph)
    assert plan == {"runs": 6, "runs_by_model": {"tiny": 6}, "gpu_hours_per_run": {"tiny": 0.5}, "gpu_hours": 3.0}
    # 4 of the 6 runs measured, 0.02 GPU-h held each; two of them shared a GPU (half each)
    runs = write_phase(tmp_path, "phase1", [1, 2], shares={0: 0.5, 1: 0.5}, only=4)
    rows = cost_rows({"phase1": plan}, {"phase1": runs}, usd_per_gpu_hour=2.0)
    r = rows[0]
    assert (r["runs_measured"], r["runs_planned"], r["n_shared"]) == (4, 6, 2)
    assert r["gpu_hours_measured"] == pytest.approx(0.06) and r["gpu_hours_unshared"] == pytest.approx(0.08)
    assert r["gpu_hours_per_run"] == pytest.approx(0.015)
    assert r["gpu_hours_projected"] == pytest.approx(6 * 0.015)  # the measured mean x the runs planned
    assert r["ratio"] == pytest.approx(0.09 / 3.0) and r["usd_projected"] == pytest.approx(0.18)
    drows = design({"phase1": ph}, prior_sd=0.005, usd_per_gpu_hour=2.0)
    md = cost_markdown(rows, drows, 2.0)
    assert "| phase1 | 6 | 3.0 | 4 of 6 | 0.060 (0.080 unshared, 2 run(s) shared a GPU) | 0.0150 | 0.090 |" in md
    assert "tiny: mean of 4 measured run(s) of this phase" in md
    d = drows[0]
    at = f"| phase1 | beats_baseline | {d['seeds_for_target']} | {d['runs_at_target']} | " \
         f"{d['gpu_hours_at_target']:.1f} | {d['gpu_hours_at_target'] * 0.03:.2f} |"
    assert at in md, md


def test_projection_falls_back_to_the_study_then_to_the_time_limit():
    plan = {"runs_by_model": {"a": 10, "b": 2}, "gpu_hours_per_run": {"a": 1.0, "b": 4.0}}
    study = {"a": {"n": 3, "n_gpu": 3, "gpu_hours": 0.3, "gpu_hours_unshared": 0.3, "n_shared": 0}}
    p = project(plan, {}, study)
    # a: 10 x the study's 0.1 per run; b: never measured, at its time limit
    assert p["gpu_hours"] == pytest.approx(1.0 + 8.0) and p["ratio"] == pytest.approx(9.0 / 18.0)
    assert "a: mean of 3 measured run(s) of the study" in p["source"] and "b at the time limit" in p["source"]
    assert project(plan, {}, {})["gpu_hours"] is None


def test_twin_measures_cpu_and_projects_nothing(tmp_path):
    runs = write_phase(tmp_path, "phase1", [1, 2], gpu_hours=0.0)
    rows = cost_rows({"phase1": planned(entry(per_run=0.25))}, {"phase1": runs}, usd_per_gpu_hour=3.0)
    assert rows[0]["gpu_hours_projected"] is None and rows[0]["runs_measured"] == 6
    md = cost_markdown(rows, [], 3.0, tiny=True)
    assert "**CPU twin:** the planned figures are the twin's Slurm time limits at the real study's price" in md
    assert "| phase1 | 6 | 1.5 | 6 of 6 | 0 (CPU) | n/a | n/a | 4 / n/a | no GPU run measured yet |" in md
    assert projection_lines({"phase2": entry()}, ["phase1", "phase2"], {"phase1": runs}) == []


def test_design_check_before_and_after_runs_exist(tmp_path):
    """The dry run's design check (design_from_files, projection_lines) reads the runs.csv files on disk:
    before phase 1 ran only the plan, after it the projection for phase 2 from phase 1's measured runs."""
    phases = {"phase1": entry(), "phase2": entry(seeds=(3,))}  # one seed: underpowered, whatever the noise
    paths = [str(tmp_path / p / "runs.csv") for p in phases]
    _, before = design_from_files(phases, list(phases), paths, prior_sd=0.005, usd_per_gpu_hour=2.0)
    assert before and all("projected" not in w for w in before)
    from analysis.io import write_csv

    write_csv(write_phase(tmp_path / "r", "phase1", [1, 2]), paths[0])  # 6 runs, 0.02 GPU-h each
    rows, after = design_from_files(phases, list(phases), paths, prior_sd=0.005, usd_per_gpu_hour=2.0)
    p2 = next(r for r in rows if r["phase"] == "phase2")
    assert p2["gpu_hours"] == pytest.approx(1.5)  # the plan stays: 3 runs at 0.5
    assert p2["gpu_hours_projected"] == pytest.approx(3 * 0.02)
    assert p2["gpu_hours_at_target_projected"] == pytest.approx(p2["gpu_hours_at_target"] * 0.02 / 0.5)
    w2 = next(w for w in after if w.startswith("phase2"))
    assert f"{p2['gpu_hours_at_target_projected']:.2f} GPU-h projected from measured runs (tiny: mean of 6 " \
           "measured run(s) of the study)" in w2
    tables = {"phase1": read_runs(paths[0])}
    lines = projection_lines(phases, list(phases), tables, 2.0)
    assert lines == ["phase2: 3 runs, 1.5 GPU-h at the time limits (USD 3); 0.06 GPU-h projected (USD 0.12) "
                     "from tiny: mean of 6 measured run(s) of the study"]


def test_report_script_sets_measured_beside_planned(tmp_path):
    """The design and report scripts end to end: design.json carries the plan per phase, the report puts the
    runs' measured GPU-h and the projection beside it."""
    res = tmp_path / "results"
    lg = str(tmp_path / "logs" / "x.log")
    phases = {"phase1": entry()}
    script("design", sm({}, {"csv": str(res / "design.csv"), "md": str(res / "design.md"),
                             "json": str(res / "design.json")},
                        {"phases": phases, "order": ["phase1"], "usd_per_gpu_hour": 2.0}, lg))
    dj = json.loads((res / "design.json").read_text())
    assert dj["cost"]["phase1"]["gpu_hours"] == pytest.approx(3.0)
    from analysis.io import write_csv

    write_csv(write_phase(tmp_path / "r", "phase1", [1, 2], shares={0: 0.25}), str(res / "phase1" / "runs.csv"))
    sec = res / "phase1" / "section.md"
    sec.parent.mkdir(parents=True, exist_ok=True)
    sec.write_text("<!-- phase-summary {\"phase\": \"phase1\"} -->\n## phase1\n")
    script("report", sm({"sections": [str(sec)], "design_md": str(res / "design.md"),
                         "design_json": str(res / "design.json"), "runs": [str(res / "phase1" / "runs.csv")]},
                        {"md": str(res / "reports" / "phase1.md")},
                        {"title": "T", "phases": ["phase1"], "latest": str(res / "ABLATION_RESULTS.md"),
                         "usd_per_gpu_hour": 2.0}, lg))
    rep = (res / "ABLATION_RESULTS.md").read_text()
    assert rep.index("### Design check") < rep.index("### Cost: planned and measured") < rep.index("## phase1")
    # 6 runs x 0.02 held; one had a quarter of its GPU: 0.105 by share
    assert "| phase1 | 6 | 3.0 | 6 of 6 | 0.105 (0.120 unshared, 1 run(s) shared a GPU) | 0.0175 | 0.105 |" in rep
    assert re.search(r"\| phase1 \| beats_baseline \| \d+ \| \d+ \|", rep)


@pytest.mark.slow
def test_twin_report_and_dry_run_design_check_after_runs_exist(tmp_path, short_twin_phase1):
    """The session's finished phase 1 of the CPU twin: the report's cost table says the twin ran on CPU; a
    dry run of phase 2 lists the same jobs before and after phase 1's runs.csv holds GPU measurements (the
    design check reads it without making it an input), and only then prints phase 2's projected cost."""
    from tests.workflow_helpers import TWIN, copy_finished, job_counts, snakemake

    wf = copy_finished(short_twin_phase1, tmp_path / "wf")
    args = ("--config", "tiny=true", "--configfile", "short.yaml")
    rep = (wf / TWIN / "ABLATION_RESULTS.md").read_text()
    assert "### Cost: planned and measured" in rep and "**CPU twin:** the planned figures are the twin's" in rep
    assert re.search(r"\| phase1 \| 8 \| [\d.]+ \| 8 of 8 \| 0 \(CPU\) \| n/a \| n/a \|", rep), rep[-3000:]

    def dry(target):
        r = snakemake(wf, target, *args, "-n")
        assert r.returncode == 0, r.stderr[-3000:]
        out = r.stdout + r.stderr
        jobs = sorted(re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+output: (.*)$", out, flags=re.M))
        return out, job_counts(out), jobs

    out0, counts0, jobs0 = dry("phase2")
    assert counts0["train"] > 0 and len(jobs0) >= counts0["total"] - 1, (counts0, jobs0[:3])
    assert "cost: phase2" not in out0  # CPU runs: nothing to project from
    runs_csv = wf / TWIN / "phase1" / "runs.csv"
    st = runs_csv.stat()
    t = pd.read_csv(runs_csv)
    t["gpu_hours"], t["gpu_share"] = 0.05, 0.5  # as if phase 1 had run on a shared GPU
    t["gpu_hours_by_share"] = 0.025
    t.to_csv(runs_csv, index=False)
    os.utime(runs_csv, ns=(st.st_atime_ns, st.st_mtime_ns))  # the file's time as the aggregate job left it
    out1, counts1, jobs1 = dry("phase2")
    assert counts1 == counts0 and jobs1 == jobs0
    line = next(x for x in out1.splitlines() if "design check (orthonoise-tiny) cost: phase2:" in x)
    assert "GPU-h projected" in line and "mean of 8 measured run(s) of the study" in line, line
    assert "Nothing to be done" in snakemake(wf, "phase1", *args, "-n").stdout


def test_phase_design_check_projects_from_the_earlier_runs_it_takes_as_inputs(tmp_path):
    """design_phase's inputs are the earlier phases' runs.csv (its noise): their measured GPU-h project the
    phase's at-80% cost in its design.json and design.md; without them it stays the plan."""
    from analysis.io import write_csv

    res = tmp_path / "results"
    lg = str(tmp_path / "logs" / "x.log")
    write_csv(write_phase(tmp_path / "r", "phase1", [1, 2]), str(res / "phase1" / "runs.csv"))
    phases = {"phase2": entry(seeds=(3,))}
    out = {"csv": str(res / "phase2" / "design.csv"), "md": str(res / "phase2" / "design.md"),
           "json": str(res / "phase2" / "design.json")}
    params = {"phases": phases, "order": ["phase1", "phase2"], "usd_per_gpu_hour": 2.0}
    script("design", sm({"runs": [str(res / "phase1" / "runs.csv")]}, out, params, lg))
    row = json.loads(Path(out["json"]).read_text())["rows"][0]
    assert row["gpu_hours_at_target_projected"] == pytest.approx(row["gpu_hours_at_target"] * 0.02 / 0.5)
    assert "GPU-h projected from measured runs (tiny: mean of 6 measured run(s) of the study)" in \
        Path(out["md"]).read_text()
    script("design", sm({"runs": []}, out, params, lg))
    assert "projected" not in Path(out["md"]).read_text()
    assert "gpu_hours_at_target_projected" not in json.loads(Path(out["json"]).read_text())["rows"][0]
