"""The `muon-ablations` CLI, the train rule's quiet progress and the HTML report, on one tiny study's real
records: phase 1 of a two-phase copy of the OrthoNoise twin (baseline Muon and OrthoNoise, 2 seeds, 40
steps; phase 2 takes phase 1's selection), run once by real Snakemake for the whole module. The report is
opened in a real headless Chromium (Debian's package; scripts/test.sh installs it when it runs as root)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.workflow_helpers import REPO, copy_workflow, custom_study, snakemake

pytestmark = pytest.mark.slow
TWIN = "results/orthonoise-tiny"
RUNS = ["tiny/muon/alpha0/seed42", "tiny/muon/alpha0/seed123", "tiny/orthonoise/alpha0.001/seed42",
        "tiny/orthonoise/alpha0.001/seed123"]


def two_phases(study: dict) -> None:
    study["phases"] = {
        "phase1": dict(study["phases"]["phase1"],
                       runs=[{"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": [1.0e-3]}}],
                       gates={"no_crashes": {"kind": "no_crashes"},
                              "loss_within_baseline": {"kind": "within_baseline", "margin": 0.05}}),
        "phase2": {"question": "Does the selected arm hold on a fresh seed?", "model": "gpt-350m", "seeds": [7],
                   "baseline": "muon", "select": {"from": "phase1", "arms": ["orthonoise"], "rule": "lowest_mean"},
                   "force": True, "runs": [{"arm": "selected"}], "gates": {"no_crashes": {"kind": "no_crashes"}}},
    }
    tiny = study["tiny"]
    tiny["phases"] = {"phase1": {"model": "tiny"}, "phase2": {"model": "tiny"}}
    tiny["models"]["tiny"]["steps"] = 40
    tiny["training_defaults"].update(eval_every=20, eval_at_steps=[20, 40], checkpoint_every=20, warmup_steps=5)
    tiny["wandb"] = {"mode": "disabled"}


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("cli") / "wf")
    study = custom_study(wf, "orthonoise", two_phases)
    r = snakemake(wf, "phase1", "--config", study, "tiny=true", "--cores", "2")
    assert r.returncode == 0, r.stderr[-4000:]
    (wf / "snakemake.out").write_text(r.stdout + r.stderr)
    return wf


def cli(wf: Path, *args: str, study: str = "custom-orthonoise.yaml", check: bool = True):
    cmd = [sys.executable, "-m", "cli", *args, "--root", str(wf), "--study", study, "--tiny"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if check:
        assert r.returncode == 0, r.stderr
    return r


def cli_json(wf: Path, *args: str, **kw):
    return json.loads(cli(wf, *args, "--json", **kw).stdout)


def metrics(wf: Path, key: str) -> dict:
    return json.loads((wf / TWIN / "runs" / key / "metrics.json").read_text())


# -- the CLI --------------------------------------------------------------------------------------
def test_runs_lists_every_record_with_its_numbers(wf):
    rows = cli_json(wf, "runs")
    assert sorted(r["key"] for r in rows) == sorted(RUNS)  # phase 2's runs are not known before its selection
    for r in rows:
        m = metrics(wf, r["key"])
        assert (r["status"], r["stale"], r["phases"]) == ("done", False, ["phase1"])
        assert r["final_val_loss"] == m["final_val_loss"] and r["wall_time_s"] == m["wall_time_s"]
        assert r["gpu_hours"] == m["gpu_hours"] and r["fingerprint"] == m["fingerprint"]
    assert sorted(r["key"] for r in cli_json(wf, "runs", "--arm", "orthonoise")) == sorted(RUNS[2:])
    assert cli_json(wf, "runs", "--status", "stale") == []
    text = cli(wf, "runs", "--phase", "phase1").stdout
    assert text.splitlines()[0].split() == ["phase", "model", "arm", "variant", "seed", "status", "stale",
                                            "final", "loss", "wall", "GPU-h"]
    assert f"{metrics(wf, RUNS[0])['final_val_loss']:.4f}" in text and text.rstrip().endswith("4 runs")


def test_status_counts_verdicts_and_an_eta_from_measured_times(wf):
    d = cli_json(wf, "status")
    p1, p2 = d["phases"]
    gates = json.loads((wf / TWIN / "phase1" / "gates.json").read_text())
    assert (p1["finished"], p1["planned"], p1["verdict"]) == (4, 4, gates["passed"])
    assert [g["verdict"] for g in p1["gates"]] == [g["verdict"] for g in gates["gates"]]
    # phase 2 waits for its selection, but its total is known: the progress line never shrinks or jumps
    assert (p2["known"], p2["planned"], p2["counts"]["missing"]) == (False, 2, 2)
    assert "selection" in p2["note"]
    walls = sorted(metrics(wf, k)["wall_time_s"] for k in RUNS)
    typical = (walls[1] + walls[2]) / 2  # the median of 4
    assert d["measured_run_s"]["tiny"] == pytest.approx(typical)
    assert d["eta_s"] == pytest.approx(2 * typical)  # phase 2's two runs, one at a time
    lines = cli(wf, "status").stdout.splitlines()
    assert lines[1].startswith("phase1") and "4/4 done" in lines[1] and f"gates: {'PASS' if gates['passed'] else 'FAIL'}" in lines[1]
    assert lines[2].startswith("phase2") and "0/2 done" in lines[2] and "waits for phase1's selection" in lines[2]


def test_every_selection_gives_a_phase_its_planned_total(wf):
    """Why the status line's total is fixed before the selection: each possible selection gives the same count."""
    sys.path.insert(0, str(REPO))
    from cli.study_view import open_study

    view = open_study(wf, "custom-orthonoise.yaml", True)
    for phase in view.plan.phases:
        counts = {len(view.plan.phase_runs(phase, sel)) for sel in view.plan.possible_selections(phase)}
        assert counts == {view.phase_runs(phase).planned}


def test_show_gives_spec_metrics_log_and_checkpoint(wf):
    d = cli_json(wf, "show", "orthonoise/alpha0.001/seed42")
    m = metrics(wf, RUNS[2])
    assert d["run"]["key"] == RUNS[2] and d["spec"]["fingerprint"] == m["fingerprint"]
    assert d["metrics"]["final_val_loss"] == m["final_val_loss"]
    assert any(line.startswith("[train") and "done: status ok" in line for line in d["log_tail"])
    assert d["run"]["checkpoint"] == {}  # removed after a finished run (checkpoint.keep false)
    text = cli(wf, "show", RUNS[2]).stdout
    assert "none (no checkpoint directory)" in text and '"class": "MuonOrthoNoise"' in text
    r = cli(wf, "show", "seed42", check=False)  # ambiguous: both arms' seed 42
    assert r.returncode == 2 and RUNS[0] in r.stderr and RUNS[2] in r.stderr
    r = cli(wf, "show", "tiny/nolah/x/seed1", check=False)
    assert r.returncode == 2 and "no run of study orthonoise-tiny matches" in r.stderr


def test_diff_puts_settings_and_outcomes_side_by_side(wf):
    d = cli_json(wf, "diff", RUNS[0], RUNS[2])
    settings = {s["key"]: (s["a"], s["b"]) for s in d["settings"]}
    assert settings["optimizer.class"] == ("Muon", "MuonOrthoNoise")
    assert settings["optimizer.muon.alpha"] == (None, 0.001)
    assert "seed" not in settings and "training.steps" not in settings  # equal settings are left out
    outcomes = {o["key"]: (o["a"], o["b"]) for o in d["outcomes"]}
    assert outcomes["final_val_loss"] == (metrics(wf, RUNS[0])["final_val_loss"], metrics(wf, RUNS[2])["final_val_loss"])
    assert "optimizer.class" in cli(wf, "diff", RUNS[0], RUNS[2]).stdout


def test_unknown_names_are_refused_with_what_is_allowed(wf):
    r = cli(wf, "runs", "--phase", "phase9", check=False)
    assert r.returncode == 2 and "phase 'phase9'" in r.stderr and "phase1, phase2" in r.stderr
    r = cli(wf, "status", study="nosuch", check=False)
    assert r.returncode == 2 and "nosuch" in r.stderr and "orthonoise" in r.stderr


def test_the_cli_writes_nothing(wf):
    """Read-only (safe beside a running Snakemake): no file under the workflow changes, none appears."""
    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in wf.rglob("*") if p.is_file()}

    before = snapshot()
    for args in (["runs"], ["status"], ["show", RUNS[0]], ["diff", RUNS[0], RUNS[3]], ["runs", "--all-studies"]):
        cli(wf, *args)
    assert snapshot() == before


def test_entry_point_is_declared():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["muon-ablations"].split(":")
    sys.path.insert(0, str(REPO))
    import importlib

    assert callable(getattr(importlib.import_module(module), func))


# -- staleness: the CLI and Snakemake agree; the spec travels as a file ------------------------------
def test_stale_runs_are_exactly_those_snakemake_would_rerun_and_a_dry_run_writes_no_spec(wf):
    study = yaml.safe_load((wf / "custom-orthonoise.yaml").read_text())
    study["arms"]["orthonoise"]["muon"]["rank_threshold"] = 0.6
    (wf / "changed.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    spec_file = wf / "logs/orthonoise-tiny/train" / f"{RUNS[2]}.spec.json"
    spec_file.unlink()
    stale = {r["key"] for r in cli_json(wf, "runs", "--status", "stale", study="changed.yaml")}
    assert stale == set(RUNS[2:])
    dry = snakemake(wf, "phase1", "-n", "--config", "study=changed.yaml", "tiny=true")
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = set(re.findall(r"wildcards: model=(\S+), arm=(\S+), variant=(\S+), seed=(\d+)", dry.stdout + dry.stderr))
    assert {f"{m}/{a}/{v}/seed{s}" for m, a, v, s in jobs} == stale
    assert not spec_file.exists()  # a dry run writes nothing


def test_the_spec_reaches_the_trainer_as_a_file_not_as_json_on_the_command_line(wf):
    out = (wf / "snakemake.out").read_text()
    assert '"run_id"' not in out  # no spec JSON in Snakemake's printed shell commands
    for key in RUNS:
        assert f"--spec-json @logs/orthonoise-tiny/train/{key}.spec.json" in out
    key = RUNS[0]
    spec = json.loads((wf / "logs/orthonoise-tiny/train" / f"{key}.spec.json").read_text())
    assert spec["fingerprint"] == metrics(wf, key)["fingerprint"] and spec["run_id"] == key


def test_the_runs_progress_is_lines_in_its_log(wf):
    log = (wf / "logs/orthonoise-tiny/train" / f"{RUNS[0]}.log").read_bytes().decode()
    assert "\r" not in log  # one line per progress update, readable with tail and less
    assert re.search(r"^tiny/muon/alpha0/seed42: 100%\|#+\| 40/40 \[", log, re.M), log


def test_a_running_run_shows_its_progress_and_a_signalled_one_its_checkpoint(wf, tmp_path):
    """A real trainer on a run whose record was moved away: `status` shows it running (its lock and its
    log's progress line), then interrupted with a checkpoint after SIGUSR1 (the preemption signal)."""
    key = RUNS[1]
    run_dir, backup = wf / TWIN / "runs" / key, tmp_path / "backup"
    shutil.copytree(run_dir, backup)
    (run_dir / "metrics.json").unlink()
    log = wf / "logs/orthonoise-tiny/train" / f"{key}.log"
    ckpt = wf / TWIN / "checkpoints" / key
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "workflow/scripts/train.py", "--spec-json", f"@{log.with_suffix('.spec.json').relative_to(wf)}",
             "--set", "training.steps=100000", "--out-dir", str(run_dir.relative_to(wf)),
             "--checkpoint-dir", str(ckpt.relative_to(wf))], cwd=wf, stdout=fh, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(wf), "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 240
        while not (re.search(r" 0/100000 \[", log.read_text()) and (ckpt / "run.lock").exists()):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.5)
        rows = cli_json(wf, "runs", "--status", "running")
        assert [r["key"] for r in rows] == [key] and rows[0]["progress"]["total"] == 100000
        assert f"PID {proc.pid} on host {socket.gethostname()}" in rows[0]["checkpoint"]["lock"]
        st = cli(wf, "status").stdout
        assert f"running {key} step" in st and "/100000" in st and "1 running" in st
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(timeout=240) == 75  # preempted: checkpoint saved
        d = cli_json(wf, "show", key)
        assert d["run"]["status"] == "interrupted"
        assert "latest.pt" in [f["file"] for f in d["run"]["checkpoint"]["files"]]
        assert "lock" not in d["run"]["checkpoint"]  # released at exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir)
        shutil.copytree(backup, run_dir)
        shutil.rmtree(ckpt, ignore_errors=True)


# -- the HTML report in a real browser --------------------------------------------------------------
def browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def chromium(exe: str, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1000",
           "--virtual-time-budget=10000", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def ink(png: Path) -> float:
    """The fraction of pixels that are not (near) white: a blank page has none."""
    from PIL import Image

    img = Image.open(png).convert("L")
    hist = img.histogram()
    return 1.0 - sum(hist[245:]) / (img.width * img.height)


@pytest.fixture(scope="module")
def report(wf):
    r = snakemake(wf, "phase1", "--config", "study=custom-orthonoise.yaml", "tiny=true", "--report", "report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    return wf / "report.html"


def test_report_holds_every_documented_file_and_html_tables(report):
    text = report.read_text()
    for f in ["phase1/runs.csv", "phase1/significance.csv", "phase1/gates.csv", "design.csv",
              "phase1/plots/val_loss.png", "phase1/plots/early.png", "phase1/plots/forest.png",
              "phase1/plots/eff_rank.png", "phase1/runs.html", "phase1/gates.html", "phase1/significance.html",
              "design.html"]:
        assert f'"{TWIN}/{f}": {{' in text, f


def embedded(report: Path, name: str) -> str:
    """A result's file as the report embeds it (base64 in its data URI)."""
    m = re.search(re.escape(f'"{TWIN}/{name}": {{') + r'.*?"data_uri": "data:[^"]*?base64,([A-Za-z0-9+/=]+)"',
                  report.read_text(), re.S)
    assert m, name
    return base64.b64decode(m.group(1)).decode()


def test_report_landing_page_and_a_table_in_chromium(wf, report, tmp_path):
    exe = browser()
    if exe is None:
        pytest.skip("no Chromium here (scripts/test.sh installs Debian's chromium when it runs as root)")
    gates = json.loads((wf / TWIN / "phase1" / "gates.json").read_text())
    verdict = "PASS" if gates["passed"] else ("FAIL" if gates["passed"] is False else "INSUFFICIENT")
    shot = tmp_path / "landing.png"
    r = chromium(exe, report.as_uri(), f"--screenshot={shot}")
    assert shot.exists() and ink(shot) > 0.02, r.stderr[-2000:]
    shutil.copy(shot, wf / "landing.png")  # kept beside the report for a look
    dom = chromium(exe, report.as_uri(), "--dump-dom").stdout
    landing = dom[dom.index('id="study-landing"'):]  # rendered by the report's own scripts
    assert "OrthoNoise: orthogonal noise" in landing and "The question." in landing
    assert re.search(r"phase1: <span class=\"" + verdict + r"\">" + verdict + "</span>", landing)
    assert all(g["name"] in landing for g in gates["gates"])
    assert 'id="design"' in landing and 'id="runs-phase1"' in landing
    # the runs table, as the report embeds it, in the browser
    page = tmp_path / "runs.html"
    page.write_text(embedded(report, "phase1/runs.html"))
    shot = tmp_path / "runs.png"
    chromium(exe, page.as_uri(), f"--screenshot={shot}")
    assert ink(shot) > 0.01
    dom = chromium(exe, page.as_uri(), "--dump-dom").stdout
    body = dom[dom.index("<tbody>"):dom.index("</tbody>")]
    assert body.count("<tr>") == 4 and body.count(">orthonoise<") == 2 and body.count(">muon<") == 2
