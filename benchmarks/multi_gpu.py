"""Several GPUs, for real: the trainer under torchrun on 1 and 2 GPUs at the same global batch.

    python benchmarks/multi_gpu.py --out-dir $OUT            # on a machine with 2 GPUs

Runs gpt-124m on the stdlib corpus through the workflow's own entry point (workflow/scripts/train.py):
  muon-1gpu-s42, muon-1gpu-s43 (run-to-run noise), muon-2gpu-s42, orthonoise-2gpu-s42 (noise on every
  step and matrix), each for --steps steps; the trainer checks at the end that all ranks hold identical
  parameters (it all-gathers a checksum of every parameter and fails the run otherwise).
Then times the Muon step over gpt-124m's hidden matrices on 2 ranks with and without
`shard_across_ranks` (each rank orthogonalizes its share, then all-gather), median of 30 steps, the
device synchronized around each. `--arch tiny --device cpu --steps 20` checks the script on a CPU.
Writes multi_gpu.json (+ the runs' metrics/history) into --out-dir and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spec(name: str, cls: str, seed: int, a, arch: str | None = None) -> dict:
    muon = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0, "adjust_lr_fn": "original",
            "orthogonalizer": "newton_schulz", "ns_steps": 5, "rank_every": 50}
    alpha = 0.0
    if cls == "MuonOrthoNoise":
        alpha = 1.0e-2
        muon.update(alpha=alpha, schedule="constant", rank_threshold=None)  # noise on every matrix, every step
    return {
        "run_id": f"multi_gpu/{name}",
        "model": {"name": arch or a.arch, "arch": arch or a.arch},
        "optimizer": {"arm": name, "class": cls, "muon": muon,
                      "adamw": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.0}},
        "alpha": alpha,
        "seed": seed,
        "training": {"steps": a.steps, "global_batch": a.global_batch, "micro_batch": a.micro_batch,
                     "seq_len": a.seq_len, "warmup_steps": 20, "cooldown_frac": 0.2},
        "eval": {"every": a.eval_every, "batches": 4, "at_steps": []},
        "data": {"kind": "stdlib", "path": str(a.corpus)},
        "checkpoint": {"every": 10_000, "keep": False},
        "wandb": {"mode": "disabled"},
        "runtime": {"device": a.device, "compile": a.compile, "dtype": "auto", "deterministic": a.deterministic},
    }


def train(name: str, cls: str, seed: int, gpus: int, a, arch: str | None = None) -> dict:
    out = a.out_dir / "runs" / name
    ckpt = Path("/tmp/multi_gpu_ckpt") / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
           str(ROOT / "workflow/scripts/train.py"), "--spec-json", json.dumps(spec(name, cls, seed, a, arch)),
           "--out-dir", str(out), "--checkpoint-dir", str(ckpt)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    log = proc.stdout + proc.stderr
    (a.out_dir / f"{name}.log").write_text(log)
    if proc.returncode != 0:
        print(log[-3000:], flush=True)
        return {"name": name, "ok": False, "returncode": proc.returncode}
    m = json.loads((out / "metrics.json").read_text())
    return {"name": name, "ok": True, "gpus": gpus, "seed": seed, "class": cls, "arch": arch or a.arch,
            "deterministic": a.deterministic, "wall_s": time.time() - t0,
            "final_val_loss": m["final_val_loss"], "val_loss_at": m.get("val_loss_at"),
            "tokens_per_s": m["tokens_per_s"], "replicas_identical": "parameters identical on all" in log,
            "curve": curve(out / "history.csv")}


def curve(path: Path) -> dict:
    import csv
    with open(path) as fh:
        return {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(fh) if r.get("val_loss")}


def max_gap(c1: dict, c2: dict) -> float:
    steps = sorted(set(c1) & set(c2) - {0})
    return max(abs(c1[s] - c2[s]) for s in steps) if steps else float("nan")


def sharded_step(a) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), "--_sharded-worker", "--out-dir", str(a.out_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        print(proc.stdout[-2000:] + proc.stderr[-3000:], flush=True)
        return {"ok": False}
    return json.loads((a.out_dir / "sharded_step.json").read_text())


def sharded_worker(a) -> None:
    """Under torchrun: one Muon step over gpt-124m's 72 hidden matrices, every rank doing all of them
    vs each rank doing its share and all-gathering. Same gradients on both ranks, as after DDP."""
    import torch
    import torch.distributed as dist

    import optim

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    d = 768 if cuda else 64
    shapes = [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]
    results = {}
    for shard in (False, True):
        g = torch.Generator(device=dev).manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, device=dev, generator=g) * 0.02) for _ in range(12)
                  for s in shapes]
        for p in params:
            p.grad = torch.randn(p.shape, device=dev, generator=g)
        opt = optim.Muon(params, lr=0.02, rank_every=0, shard_across_ranks=shard)
        for _ in range(5):
            opt.step()
        times = []
        for _ in range(30 if cuda else 3):
            dist.barrier()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        flat = torch.cat([p.detach().flatten() for p in params])
        results["sharded" if shard else "every_rank_all"] = sorted(times)[len(times) // 2]
        results[f"checksum_{'sharded' if shard else 'all'}"] = float(flat.double().sum())
    if rank == 0:
        results["saving"] = 1 - results["sharded"] / results["every_rank_all"]
        results["same_result"] = results["checksum_sharded"] == results["checksum_all"]
        results["ok"] = True
        (Path(a.out_dir) / "sharded_step.json").write_text(json.dumps(results, indent=2))
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--compile", default="false", choices=["auto", "true", "false"])
    p.add_argument("--arch", default="gpt-124m")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--corpus", type=Path, default=Path("/tmp/stdlib_corpus"))
    p.add_argument("--only", default="", help="comma-separated parts: runs,sharded (default both)")
    p.add_argument("--deterministic", action="store_true", help="runtime.deterministic in every run")
    p.add_argument("--ngpt", default="", help="also an nGPT preset (e.g. ngpt-124m) on 1 and 2 GPUs with Muon")
    p.add_argument("--repeat", action="store_true", help="also muon-1gpu-s42 a second time (same-seed bitwise check)")
    p.add_argument("--_sharded-worker", dest="sharded_worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.out_dir.mkdir(parents=True, exist_ok=True)
    if a.sharded_worker:
        return sharded_worker(a)
    parts = set((a.only or "runs,sharded").split(","))
    result = {"benchmark": "multi_gpu", "args": {k: str(v) for k, v in vars(a).items()}}
    if "runs" in parts:
        sys.path.insert(0, str(ROOT))
        from trainer.data import build_stdlib_corpus
        build_stdlib_corpus(a.corpus)
        runs = [train("muon-1gpu-s42", "Muon", 42, 1, a), train("muon-1gpu-s43", "Muon", 43, 1, a),
                train("muon-2gpu-s42", "Muon", 42, 2, a), train("orthonoise-2gpu-s42", "MuonOrthoNoise", 42, 2, a)]
        if a.repeat:
            runs.append(train("muon-1gpu-s42-again", "Muon", 42, 1, a))
        if a.ngpt:
            runs += [train(f"{a.ngpt}-1gpu-s42", "Muon", 42, 1, a, a.ngpt),
                     train(f"{a.ngpt}-2gpu-s42", "Muon", 42, 2, a, a.ngpt)]
        result["runs"] = runs
        by = {r["name"]: r for r in runs if r["ok"]}
        if {"muon-1gpu-s42", "muon-1gpu-s42-again"} <= set(by):  # same seed, same GPU count
            x, y = by["muon-1gpu-s42"], by["muon-1gpu-s42-again"]
            result["same_seed_twice"] = {"curves_equal": x["curve"] == y["curve"],
                                         "final_equal": x["final_val_loss"] == y["final_val_loss"],
                                         "max_gap": max_gap(x["curve"], y["curve"])}
        for arch, one, two in (("gpt", "muon-1gpu-s42", "muon-2gpu-s42"),
                               ("ngpt", f"{a.ngpt}-1gpu-s42", f"{a.ngpt}-2gpu-s42")):
            if {one, two} <= set(by):  # the same run on 1 and 2 GPUs: equal only up to summation order
                result[f"{arch}_1_vs_2_gpus"] = {"curves_equal": by[one]["curve"] == by[two]["curve"],
                                                 "max_gap": max_gap(by[one]["curve"], by[two]["curve"]),
                                                 "tokens_per_s": [by[one]["tokens_per_s"], by[two]["tokens_per_s"]]}
        if {"muon-1gpu-s42", "muon-1gpu-s43", "muon-2gpu-s42"} <= set(by):
            noise = max_gap(by["muon-1gpu-s42"]["curve"], by["muon-1gpu-s43"]["curve"])
            gap = max_gap(by["muon-1gpu-s42"]["curve"], by["muon-2gpu-s42"]["curve"])
            result["curves"] = {"max_gap_1gpu_vs_2gpu_same_seed": gap, "max_gap_between_seeds_1gpu": noise,
                                "within_run_to_run_noise": gap <= noise}
    if "sharded" in parts:
        result["sharded_step_ms"] = sharded_step(a)
    (a.out_dir / "multi_gpu.json").write_text(json.dumps(result, indent=2))
    for r in result.get("runs", []):
        if r["ok"]:
            print(f"{r['name']:>22}: {r['gpus']} GPU  final val {r['final_val_loss']:.4f}  "
                  f"{r['tokens_per_s']:>9,.0f} tok/s  replicas identical: {r['replicas_identical']}  "
                  f"{r['wall_s']:.0f} s")
        else:
            print(f"{r['name']:>22}: FAILED (rc {r['returncode']})")
    if "curves" in result:
        print("curves:", json.dumps(result["curves"]))
    print("sharded:", json.dumps(result.get("sharded_step_ms")))


if __name__ == "__main__":
    main()
