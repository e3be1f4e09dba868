"""Runs that share one GPU, counted by share (trainer/gpu_share.py): N tiny trainer runs on GPU 0, K at a time
(as `snakemake --resources gpu_mem_mb=...` runs them), then the sum of their GPU-h as held (GPUs x wall) and by
share (x gpu_share) against the time the GPU had at least one of them (the union of the runs' lifetimes).

    python3 benchmarks/gpu_share.py --runs 6 --at-once 4 --steps 400 --out share.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_trainer_helpers import build_corpus, metrics, run_train, tiny_spec  # noqa: E402


def union_s(spans):
    total, end = 0.0, None
    for a, b in sorted(spans):
        if end is None or a > end:
            total, end = total + (b - a), b
        elif b > end:
            total, end = total + (b - end), b
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--at-once", type=int, default=4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every-s", type=float, default=1.0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    corpus = build_corpus(tmp / "stdlib")
    gate = threading.Semaphore(a.at_once)
    res = {}

    def one(i):
        spec = tiny_spec(corpus, seed=i, run_id=f"share/tiny/muon/seed{i}", training={"steps": a.steps},
                         eval={"every": a.steps, "at_steps": [a.steps]},
                         runtime={"device": "cuda", "compile": False, "dtype": "auto"})
        with gate:
            t0 = time.time()
            r, out, _ = run_train(spec, tmp, f"r{i}", timeout=900, CUDA_VISIBLE_DEVICES="0",
                                  TRAINER_GPU_SHARE_EVERY_S=str(a.every_s))
            t1 = time.time()
        assert r.returncode == 0, r.stderr[-2000:]
        m = metrics(out)
        res[i] = {"start": t0, "end": t1, "wall_time_s": m["wall_time_s"], "gpu_hours": m["gpu_hours"],
                  "gpu_share": m["gpu_share"], "gpu_share_source": m["gpu_share_source"]}

    th = [threading.Thread(target=one, args=(i,)) for i in range(a.runs)]
    for t in th:
        t.start()
        time.sleep(0.5)
    for t in th:
        t.join()
    held = sum(r["gpu_hours"] for r in res.values())
    by_share = sum(r["gpu_hours"] * r["gpu_share"] for r in res.values())
    # the union of the runs' own wall times (each ends when its process does, and lasts wall_time_s)
    busy = union_s([(r["end"] - r["wall_time_s"], r["end"]) for r in res.values()]) / 3600
    out = {"runs": a.runs, "at_once": a.at_once, "steps": a.steps, "gpu_hours_held": held,
           "gpu_hours_by_share": by_share, "gpu_busy_hours": busy, "by_share_over_busy": by_share / busy,
           "shares": [round(res[i]["gpu_share"], 4) for i in sorted(res)], "per_run": res}
    print(json.dumps({k: v for k, v in out.items() if k != "per_run"}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
