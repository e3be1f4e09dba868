"""Speed of the `muon-ablations` CLI on a generated study of 1,000 runs.

Generates, in a temporary copy of the workflow, a study whose phase 1 has 1,000 runs (baseline Muon and
OrthoNoise at 249 alphas, 4 seeds each; a phase 2 that waits for phase 1's selection), and records as the
trainer writes them: metrics.json with the run's whole spec for 950 runs (5% of them with an old
fingerprint: stale), 20 running (a lock held by this process and a log with a progress line) and 30
missing. Then times each command as a user types it (a new process: start-up, study check and plan
included), median of --repeats.

    .venv/bin/python benchmarks/cli_scale.py --out benchmarks/results/cli_scale.json

Target: each command in a few seconds on a 2-core login node, no Snakemake lock taken.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["Snakefile", "rules", "config", "profiles", "envs", "report", "workflow", "optim", "trainer", "study",
         "analysis", "cli"]


def make_study(wf: Path, n_alphas: int, seeds: list[int]) -> str:
    study = yaml.safe_load((wf / "config/studies/orthonoise.yaml").read_text())
    alphas = [round(1.0e-4 * (k + 1), 6) for k in range(n_alphas)]
    study["phases"] = {
        "phase1": dict(study["phases"]["phase1"], seeds=seeds,
                       runs=[{"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": alphas}}],
                       gates={"no_crashes": {"kind": "no_crashes"}}),
        "phase2": {"question": "The selected arm on a fresh seed?", "model": "gpt-350m", "seeds": [7],
                   "baseline": "muon", "select": {"from": "phase1", "arms": ["orthonoise"], "rule": "lowest_mean"},
                   "force": True, "runs": [{"arm": "selected"}], "gates": {"no_crashes": {"kind": "no_crashes"}}}}
    study["tiny"]["phases"] = {"phase1": {"model": "tiny"}, "phase2": {"model": "tiny"}}
    (wf / "scale.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    return "scale.yaml"


def write_records(wf: Path, study: str) -> dict:
    sys.path.insert(0, str(wf))
    from cli.study_view import open_study

    view = open_study(wf, study, True)
    runs = [pr.run for pr in view.phase_runs("phase1").runs]
    counts = {"done": 0, "stale": 0, "running": 0, "missing": 0}
    for i, run in enumerate(runs):
        run_dir = wf / view.plan.run_dir(run)
        log = view.log_of(run)
        log.parent.mkdir(parents=True, exist_ok=True)
        kind = "missing" if i % 100 >= 97 else ("running" if i % 50 == 1 else ("stale" if i % 20 == 2 else "done"))
        counts[kind] += 1
        if kind == "missing":
            continue
        spec = view.plan.spec(run)
        if kind == "running":
            ckpt = wf / view.plan.checkpoint_dir(run)
            ckpt.mkdir(parents=True, exist_ok=True)
            (ckpt / "run.lock").write_text(f"PID {os.getpid()} on host {socket.gethostname()} since now\n")
            log.write_text("[train 10:00:00] run ...\n" + f"{run.key}:  34%|###4     | 68/200 [00:10<00:20, 6.50step/s]\n")
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        fp = spec["fingerprint"] if kind == "done" else "0" * 16
        metrics = {"status": "ok" if i % 97 else "diverged", "final_val_loss": 2.6 + (i % 13) * 1e-3,
                   "best_val_loss": 2.59, "steps_completed": 200, "tokens_per_s": 20000.0,
                   "wall_time_s": 40.0 + i % 7, "gpu_hours": 0.0, "world_size": 1, "device": "cpu",
                   "diagnostics": {"eff_rank_mean": 13.7, "update_rms": 0.2}, "spec": dict(spec, fingerprint=fp),
                   "fingerprint": fp, "val_loss_at": {"50": 3.0, "100": 2.8, "150": 2.7, "200": 2.6}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
        log.write_text("[train 10:00:00] run ...\n" * 20 + f"{run.key}: 100%|#####| 200/200 [00:40<00:00, 5.0step/s]\n")
    return {"runs": len(runs), **counts, "keys": [runs[0].key, runs[5].key]}


def timed(cmd: list[str], cwd: Path, repeats: int) -> dict:
    times, out = [], ""
    for _ in range(repeats):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd)})
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stderr}")
        out = r.stdout
    return {"median_s": round(statistics.median(times), 3), "all_s": [round(x, 3) for x in times],
            "output_bytes": len(out)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alphas", type=int, default=249, help="swept alphas (x 4 seeds, + 4 baseline runs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wf = Path(tmp) / "wf"
        wf.mkdir()
        for part in PARTS:
            src = ROOT / part
            if src.is_dir():
                shutil.copytree(src, wf / part, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, wf / part)
        study = make_study(wf, args.alphas, [42, 123, 7, 8])
        t = time.perf_counter()
        made = write_records(wf, study)
        gen_s = time.perf_counter() - t
        base = [sys.executable, "-m", "cli"]
        opts = ["--study", study, "--tiny"]
        results = {
            "runs --json": timed(base + ["runs", *opts, "--json"], wf, args.repeats),
            "runs (table)": timed(base + ["runs", *opts], wf, args.repeats),
            "runs --status stale": timed(base + ["runs", *opts, "--status", "stale"], wf, args.repeats),
            "status": timed(base + ["status", *opts], wf, args.repeats),
            "show": timed(base + ["show", made["keys"][0], *opts], wf, args.repeats),
            "diff": timed(base + ["diff", made["keys"][0], made["keys"][1], *opts], wf, args.repeats),
            "--help (start-up only)": timed(base + ["--help"], wf, args.repeats),
        }
        check = json.loads(subprocess.run(base + ["status", *opts, "--json"], cwd=wf, capture_output=True, text=True,
                                          env={**os.environ, "PYTHONPATH": str(wf)}).stdout)
    out = {"benchmark": "cli_scale", "study_runs": made["runs"], "records": {k: made[k] for k in
           ("done", "stale", "running", "missing")}, "status_counts_phase1": check["phases"][0]["counts"],
           "generate_records_s": round(gen_s, 2), "commands": results,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
