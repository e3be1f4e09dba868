"""Training throughput of the trainer: tokens/s, model FLOPs utilisation, and the optimizer's share of
the step, for a GPT preset (default gpt-124m, sequence 1024, bf16 autocast, torch.compile) with each
optimizer asked for (default Muon and MuonOrthoNoise).

It times the trainer's own step (trainer.loop.Session.train_step: data sampling, forward/backward
over the micro-batches, gradient all-reduce, optimizer step, the per-step loss read-back and the
optimizer diagnostics), so the figures are those of real runs. The optimizer's time is measured with
CUDA events around opt.step() inside the same steps.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput_h100.json
    python benchmarks/train_throughput.py --smoke                         # CPU, tiny, seconds
    torchrun --standalone --nproc-per-node 2 benchmarks/train_throughput.py \
        --out benchmarks/results/train_throughput_h200x2.json --compare benchmarks/results/train_throughput_h200.json

Under torchrun the global batch stays the same (each GPU gets its share), tokens/s is for the whole
run, and --compare FILE (a 1-GPU result of the same settings) adds the scaling efficiency
tokens_per_s(N GPUs) / (N x tokens_per_s(1 GPU)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from trainer import distributed as dist_mod  # noqa: E402
from trainer.data import build_stdlib_corpus  # noqa: E402
from trainer.loop import Session  # noqa: E402
from trainer.records import write_json  # noqa: E402
from trainer.spec import RunSpec  # noqa: E402

# dense bf16 peak per GPU (FLOP/s), from the datasheets (SXM parts)
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(name: str) -> float | None:
    for k, v in PEAK_BF16.items():
        if k in name:
            return v
    return None


def make_spec(a, cls: str, corpus: str) -> dict:
    muon = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0, "adjust_lr_fn": "original",
            "orthogonalizer": "newton_schulz", "ns_steps": 5, "rank_every": a.rank_every}
    alpha = 0.0
    if cls in ("MuonOrthoNoise", "MuonIsotropic"):
        alpha = a.alpha
        muon.update(alpha=a.alpha, schedule="constant", rank_threshold=0.5)
    return {
        "run_id": f"bench/{a.model}/{cls}",
        "model": {"name": a.model, "arch": a.model},
        "optimizer": {"arm": cls, "class": cls, "muon": muon,
                      "adamw": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.0}},
        "alpha": alpha,
        "seed": 42,
        "training": {"steps": a.warmup + a.steps, "global_batch": a.global_batch, "micro_batch": a.micro_batch,
                     "seq_len": a.seq_len, "warmup_steps": 0, "cooldown_frac": 0.0},
        "eval": {"every": 0, "batches": 1},
        "data": {"kind": "stdlib", "path": corpus},
        "wandb": {"mode": "disabled"},
        "runtime": {"device": a.device, "compile": a.compile, "dtype": "auto", "deterministic": not a.nondeterministic},
    }


def wait_barrier(spec: str, timeout: float = 600.0) -> None:
    """--barrier DIR:N: N processes start their timed steps together (each writes DIR/<pid>, then waits
    until N files are there), so that runs sharing one GPU are timed while all of them run."""
    d, n = spec.rsplit(":", 1)
    Path(d).mkdir(parents=True, exist_ok=True)
    (Path(d) / str(os.getpid())).touch()
    t0 = time.time()
    while len(list(Path(d).iterdir())) < int(n):
        if time.time() - t0 > timeout:
            raise TimeoutError(f"--barrier {spec}: {len(list(Path(d).iterdir()))} of {n} processes after {timeout} s")
        time.sleep(0.05)


def profile_steps(sess: Session, a, info, step0: int) -> dict:
    """Where one run's step goes: torch.profiler over --profile-steps more steps. busy = the summed time of
    the device's kernels / the steps' wall time (one stream: kernels do not overlap), the host's top
    operators by self time, the device's top kernels."""
    from torch.profiler import ProfilerActivity, profile

    cuda = info.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        if cuda:
            torch.cuda.synchronize()
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            for i in range(a.profile_steps):
                sess.train_step(step0 + i)
            wall = time.perf_counter() - t0
        ev = prof.key_averages()
        dev_us = sum(e.self_device_time_total for e in ev if getattr(e, "device_type", None) is not None
                     and "CUDA" in str(e.device_type)) if cuda else 0.0
        host = sorted(ev, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        kern = sorted((e for e in ev if e.self_device_time_total > 0), key=lambda e: e.self_device_time_total,
                      reverse=True)[:12] if cuda else []
        return {"steps": a.profile_steps, "wall_ms_per_step": 1e3 * wall / a.profile_steps,
                "device_busy_ms_per_step": dev_us / 1e3 / a.profile_steps,
                "device_busy_fraction": (dev_us / 1e6) / wall if cuda else None,
                "host_top": [{"name": e.key[:90], "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / a.profile_steps,
                              "calls_per_step": e.count / a.profile_steps} for e in host],
                "device_top": [{"name": e.key[:90], "ms_per_step": e.self_device_time_total / 1e3 / a.profile_steps,
                                "calls_per_step": e.count / a.profile_steps} for e in kern]}
    except Exception as e:  # noqa: BLE001 - the profile is extra: its failure must not lose the timings
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def bench_one(sess: Session, a, info) -> dict:
    """Times warm-up + steps optimizer steps. "Diagnostic" steps are those on which the optimizer computes
    the effective rank (every rank_every steps, an SVD per matrix); the steady figures leave them out."""
    cuda = info.device.type == "cuda"
    losses, step_s, opt_ms, diag_step = [], [], [], []
    for i in range(a.warmup + a.steps):
        timed = i >= a.warmup
        if i == a.warmup and a.barrier:
            wait_barrier(a.barrier)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = sess.train_step(i, time_optimizer=timed)
        dt = time.perf_counter() - t0  # train_step reads the loss back: the step is finished here
        losses.append(r.loss)
        if timed:
            step_s.append(dt)
            opt_ms.append(r.opt_ms)
            diag_step.append(r.diag.get("eff_rank_mean") is not None)
        if info.is_main and (i < a.warmup or i == a.warmup + a.steps - 1 or (timed and diag_step[-1])):
            print(f"  step {i}: loss {r.loss:.4f}, {dt * 1e3:.1f} ms{'' if timed else ' (warm-up)'}"
                  f"{', effective-rank step' if timed and diag_step[-1] else ''}", flush=True)
    tokens = a.global_batch * a.seq_len
    mean_s = statistics.fmean(step_s)
    steady = [t for t, d in zip(step_s, diag_step) if not d] or step_s
    steady_s = statistics.fmean(steady)
    res = {
        "tokens_per_step": tokens,
        "step_ms_mean": mean_s * 1e3,
        "step_ms_median": statistics.median(step_s) * 1e3,
        "step_ms_min": min(step_s) * 1e3,
        "tokens_per_s": tokens / mean_s,
        "tokens_per_s_per_gpu": tokens / mean_s / info.world_size,
        "steady_step_ms_mean": steady_s * 1e3,
        "steady_tokens_per_s": tokens / steady_s,
        "diagnostic_steps": sum(diag_step),
        "final_train_loss": losses[-1],
        "first_train_loss": losses[0],
        "step_ms": [t * 1e3 for t in step_s],
    }
    if a.profile_steps:
        res["profile"] = profile_steps(sess, a, info, a.warmup + a.steps)
    if all(o is not None for o in opt_ms):
        steady_opt = [o for o, d in zip(opt_ms, diag_step) if not d] or opt_ms
        diag_opt = [o for o, d in zip(opt_ms, diag_step) if d]
        res["optimizer_ms"] = opt_ms
        res["optimizer_ms_mean"] = statistics.fmean(opt_ms)
        res["optimizer_ms_median"] = statistics.median(opt_ms)
        res["optimizer_share"] = statistics.fmean(opt_ms) / (mean_s * 1e3)
        res["steady_optimizer_ms_mean"] = statistics.fmean(steady_opt)
        res["steady_optimizer_share"] = statistics.fmean(steady_opt) / (steady_s * 1e3)
        res["diagnostic_optimizer_ms_mean"] = statistics.fmean(diag_opt) if diag_opt else None
    if cuda:
        peak = peak_flops(torch.cuda.get_device_name(info.device))
        for key, tps in (("", tokens / mean_s), ("steady_", tokens / steady_s)):
            res[f"{key}model_tflops_per_gpu"] = sess.flops_per_token * tps / info.world_size / 1e12
            res[f"{key}mfu"] = sess.flops_per_token * tps / info.world_size / peak if peak else None
        res["max_memory_gib"] = torch.cuda.max_memory_allocated(info.device) / 2**30
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Trainer throughput: tokens/s, MFU, optimizer share.")
    p.add_argument("--model", default="gpt-124m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--global-batch", type=int, default=512, help="sequences per optimizer step (512 x 1024 = "
                                                                  "524,288 tokens, llm.c's GPT-2 batch)")
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per optimizer")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator, caches)")
    p.add_argument("--optimizers", default="Muon,MuonOrthoNoise")
    p.add_argument("--alpha", type=float, default=1.0e-3, help="alpha of the noise arms")
    p.add_argument("--rank-every", type=int, default=10, help="effective-rank diagnostic cadence (study default 10)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--data", default=None, help="stdlib corpus dir (built if missing; default a temporary dir)")
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--compare", default=None, help="1-GPU result JSON of the same settings: adds scaling efficiency")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, a few steps: checks the script")
    p.add_argument("--nondeterministic", action="store_true", help="runtime.deterministic false (default true, "
                   "the studies' and the trainer's default)")
    p.add_argument("--barrier", default=None, help="DIR:N: start the timed steps when N processes are ready")
    p.add_argument("--profile-steps", type=int, default=0, help="profile this many more steps (torch.profiler)")
    p.add_argument("--smoke-model", default="tiny", help="the model of --smoke (tiny, ngpt-tiny)")
    a = p.parse_args(argv)
    if a.smoke:
        a.model, a.seq_len, a.global_batch, a.micro_batch = a.smoke_model, 64, 16, 8
        a.steps, a.warmup, a.device, a.compile = min(a.steps, 3), 1, "cpu", "false"
    a.compile = {"auto": "auto", "true": True, "false": False}[a.compile]

    info = dist_mod.setup(a.device)
    try:
        corpus = a.data or os.path.join(tempfile.gettempdir(), "muon-ablations-bench-stdlib")
        if info.is_main:
            build_stdlib_corpus(corpus)
        dist_mod.barrier(info)
        results = {
            "benchmark": "train_throughput",
            "settings": {k: v for k, v in vars(a).items() if k not in ("out", "compare", "data")},
            "world_size": info.world_size,
            "device": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "optimizers": {},
        }
        sess = None
        for cls in [c.strip() for c in a.optimizers.split(",") if c.strip()]:
            spec = RunSpec.from_dict(make_spec(a, cls, corpus))
            if sess is None:
                sess = Session(spec, info, log=lambda m: print(m, flush=True) if info.is_main else None)
                results["params"] = sess.n_params
                results["flops_per_token"] = sess.flops_per_token
                results["compile"] = sess.compile
                results["amp"] = str(sess.amp_dtype)
                results["grad_accum_per_rank"] = sess.accum
            else:  # same (compiled) model, a new optimizer: no second compile
                import optim

                o = spec.optimizer
                sess.spec = spec
                sess.opt = optim.build_optimizer(sess.model, cls=o.cls, muon_kwargs=dict(o.muon),
                                                 adamw_kwargs=dict(o.adamw), adamw_patterns=list(o.adamw_patterns),
                                                 seed=spec.seed)
            if info.is_main:
                print(f"{cls}: {a.model}, {a.global_batch} x {a.seq_len} tokens/step, micro-batch {a.micro_batch}, "
                      f"{info.world_size} process(es), compile {sess.compile}", flush=True)
            if info.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(info.device)
            results["optimizers"][cls] = bench_one(sess, a, info)
        if a.compare and info.is_main:
            base = json.loads(Path(a.compare).read_text())
            results["compare"] = {"file": a.compare, "world_size": base.get("world_size"), "device": base.get("device")}
            for cls, r in results["optimizers"].items():
                b = base.get("optimizers", {}).get(cls)
                if b:
                    ratio = info.world_size / base["world_size"]
                    r["scaling_efficiency"] = r["tokens_per_s"] / (ratio * b["tokens_per_s"])
                    r["steady_scaling_efficiency"] = r["steady_tokens_per_s"] / (ratio * b["steady_tokens_per_s"])
                    r["final_train_loss_1gpu"] = b["final_train_loss"]
        if info.is_main:
            print(f"\n{'optimizer':<16}{'tok/s':>11}{'steady':>10}{'step ms':>9}{'opt ms':>8}{'opt %':>7}"
                  f"{'steady %':>9}{'MFU':>6}{'steady':>7}{'scaling':>9}")

            def pct(x):
                return "" if x is None else f"{100 * x:.1f}"

            for cls, r in results["optimizers"].items():
                sc = r.get("scaling_efficiency")
                print(f"{cls:<16}{r['tokens_per_s']:>11,.0f}{r['steady_tokens_per_s']:>10,.0f}{r['step_ms_mean']:>9.1f}"
                      f"{r.get('optimizer_ms_mean', float('nan')):>8.1f}{pct(r.get('optimizer_share')):>7}"
                      f"{pct(r.get('steady_optimizer_share')):>9}{pct(r.get('mfu')):>6}{pct(r.get('steady_mfu')):>7}"
                      f"{'' if sc is None else f'{100 * sc:.1f}%':>9}")
            if a.out:
                write_json(a.out, results)
                print(f"wrote {a.out}")
        return 0
    finally:
        dist_mod.cleanup(info)


if __name__ == "__main__":
    sys.exit(main())
