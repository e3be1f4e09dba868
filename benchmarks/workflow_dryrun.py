"""How the DAG scales: time `snakemake phase2 -n` for studies of N runs (default 100 and 1,000).

The study is the CPU twin with phase 2's run list replaced by one arm at N/seeds alphas. Writes JSON
(times, job counts, growth ratio) to --out or stdout. Target (issue 4): at most 10 s at 1,000 runs on a
2-core machine, growing about linearly.

    .venv/bin/python benchmarks/workflow_dryrun.py --sizes 100 1000 --out benchmarks/results/workflow_dryrun.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.workflow_helpers import copy_workflow, job_counts, snakemake, write_config  # noqa: E402


def study_of(n_runs: int, seeds: int = 10) -> dict:
    n_alphas = max(1, n_runs // seeds)
    alphas = [round(1.0e-4 * (1 + i), 6) for i in range(n_alphas)]
    return {"phases": {"phase2": {"seeds": list(range(seeds)),
                                  "runs": [{"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": alphas}}],
                                  "gates": {"beats_baseline": {"kind": "beats_baseline", "min_improvement": 0.01,
                                                               "arms": ["orthonoise"]}}}}}


def time_dry_run(n_runs: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wf = copy_workflow(Path(tmp))
        write_config(wf / "scale.yaml", study_of(n_runs))
        times, counts = [], {}
        for _ in range(repeats):
            start = time.perf_counter()
            result = snakemake(wf, "phase2", "-n", "-q", "rules", "--config", "tiny=true", "--configfile",
                               "scale.yaml")
            times.append(time.perf_counter() - start)
            if result.returncode != 0:
                raise SystemExit(result.stderr[-3000:])
            counts = job_counts(result.stdout + result.stderr)
        return {"runs_requested": n_runs, "train_jobs": counts.get("train"), "total_jobs": counts.get("total"),
                "seconds": sorted(times)[len(times) // 2], "all_seconds": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = [time_dry_run(n, args.repeats) for n in args.sizes]
    result = {"benchmark": "workflow_dryrun", "machine": platform.platform(), "python": sys.version.split()[0],
              "rows": rows}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        result["growth"] = {"runs_ratio": b["train_jobs"] / a["train_jobs"], "time_ratio": b["seconds"] / a["seconds"]}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    for r in rows:
        print(f"{r['train_jobs']:>6} train jobs  {r['total_jobs']:>6} jobs  dry run {r['seconds']:.2f} s")


if __name__ == "__main__":
    main()
