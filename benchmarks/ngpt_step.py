"""The nGPT step on the device (issue 10): tokens/s of ngpt-124m with Muon against the GPT preset of the
same shape (gpt-124m, Muon), and the cost of the nGPT study's additions as a share of the Muon step.

Part 1, `throughput`: the trainer's own step (trainer.loop.Session.train_step: data, forward/backward,
optimizer, the weight projection hook, the loss read-back) for gpt-124m + Muon and for ngpt-124m + Muon
with projection every step (and every 7, the seed's lazy setting), bf16 autocast, torch.compile as the
trainer does it on CUDA. Target: ngpt tokens/s >= 80% of the GPT's with projection every step. ngpt-124m
has a SwiGLU MLP of hidden size 4d (as the nGPT reference) and so about 1.33x the block FLOPs of
gpt-124m: the per-FLOP ratio (model TFLOP/s) is reported beside the raw one.

Part 2, `costs`: the Muon-family step over ngpt-124m's block matrices (Gaussian gradients, rank check
off) and, as a share of the plain Muon step: the projection of all weights onto the sphere
(model.normalize_weights; with --compile-projection also torch.compile'd), the geodesic updates
(theta = lr and lr*||t||) and NorMuon (extra time over Muon), cautious decay and Polar Express for
information. Target: each <= 15% of the Muon step.
Timing by CUDA events, median over the iterations after warm-up.

    python3 benchmarks/ngpt_step.py --out $OUT/ngpt_step.json          # CUDA, about 2-3 minutes on an H100
    python3 benchmarks/ngpt_step.py --smoke --out /tmp/ngpt_step.json   # CPU, tiny presets, seconds

Every section is wrapped: a failure is written into the JSON (`error`) and the rest still runs; with
torch.compile failing, the throughput section retries eagerly and records `compile_error`. The JSON is
rewritten after each section, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import optim  # noqa: E402
from trainer import distributed as dist_mod  # noqa: E402
from trainer.data import build_stdlib_corpus  # noqa: E402
from trainer.loop import Session  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.ngpt import LazyProjection  # noqa: E402
from trainer.records import write_json  # noqa: E402
from trainer.spec import RunSpec  # noqa: E402

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}
TARGET_TOKENS_RATIO = 0.80
TARGET_COST_SHARE = 0.15


def spec_for(a, arch: str, every: int, corpus: str, compile_) -> dict:
    return {
        "run_id": f"bench/{arch}/muon/every{every}",
        "model": {"name": arch, "arch": arch},
        "optimizer": {"arm": "muon", "class": "Muon",
                      "muon": {"lr": 0.02, "momentum": 0.95, "nesterov": True, "rank_every": a.rank_every},
                      "adamw": {"lr": 1.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.0}},
        "alpha": 0.0,
        "seed": 42,
        "training": {"steps": a.warmup + a.steps, "global_batch": a.global_batch, "micro_batch": a.micro_batch,
                     "seq_len": a.seq_len, "warmup_steps": 0, "cooldown_frac": 0.0,
                     **({"projection_every": every} if arch.startswith("ngpt-") else {})},
        "eval": {"every": 0, "batches": 1},
        "data": {"kind": "stdlib", "path": corpus},
        "wandb": {"mode": "disabled"},
        "runtime": {"device": a.device, "compile": compile_, "dtype": "auto"},
    }


def time_session(sess: Session, a) -> dict:
    cuda = sess.device.type == "cuda"
    step_s, opt_ms, losses = [], [], []
    for i in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = sess.train_step(i, time_optimizer=i >= a.warmup)
        dt = time.perf_counter() - t0  # the loss was read back: the step is done
        losses.append(r.loss)
        if i >= a.warmup:
            step_s.append(dt)
            opt_ms.append(r.opt_ms)
    tokens = a.global_batch * a.seq_len
    mean_s = statistics.fmean(step_s)
    res = {"tokens_per_step": tokens, "step_ms_mean": mean_s * 1e3, "step_ms_median": statistics.median(step_s) * 1e3,
           "tokens_per_s": tokens / mean_s, "first_loss": losses[0], "last_loss": losses[-1],
           "params": sess.n_params, "flops_per_token": sess.flops_per_token, "compile": sess.compile,
           "model_tflops": sess.flops_per_token * tokens / mean_s / 1e12}
    if all(o is not None for o in opt_ms):
        res["optimizer_ms_mean"] = statistics.fmean(opt_ms)
    if cuda:
        res["max_memory_gib"] = torch.cuda.max_memory_allocated(sess.device) / 2**30
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name(sess.device)), None)
        res["mfu"] = res["model_tflops"] * 1e12 / peak if peak else None
    return res


def throughput(a, info, corpus: str, out: dict, save) -> None:
    res = out["throughput"] = {}
    for label, arch in (("gpt", a.gpt), ("ngpt", a.ngpt)):
        sess = None
        try:
            try:
                sess = Session(RunSpec.from_dict(spec_for(a, arch, 1, corpus, a.compile)), info, log=lambda m: None)
                res[label] = time_session(sess, a)
            except Exception as e:  # torch.compile trouble: measure eagerly, and say so
                if a.compile is False:
                    raise
                err = f"{type(e).__name__}: {e}"[:2000]
                print(f"{label}: failed with compile ({err[:200]}); retrying eagerly", flush=True)
                sess = Session(RunSpec.from_dict(spec_for(a, arch, 1, corpus, False)), info, log=lambda m: None)
                res[label] = {**time_session(sess, a), "compile_error": err}
            res[label].update(arch=arch, projection_every=1 if label == "ngpt" else None)
            print(f"{label:<12} {arch:<10} {res[label]['tokens_per_s']:>12,.0f} tok/s  "
                  f"{res[label]['step_ms_mean']:8.1f} ms/step", flush=True)
            if label == "ngpt":  # the same compiled model, projecting every 7 steps (the seed's lazy setting)
                sess.projection = LazyProjection(sess.model, 7)
                r7 = res["ngpt_every7"] = {**time_session(sess, a), "arch": arch, "projection_every": 7}
                print(f"{'ngpt_every7':<12} {arch:<10} {r7['tokens_per_s']:>12,.0f} tok/s  "
                      f"{r7['step_ms_mean']:8.1f} ms/step", flush=True)
        except Exception as e:
            res[label] = {"arch": arch, "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-4000:]}
            print(f"{label}: {res[label]['error']}", flush=True)
        finally:
            sess = None
            if info.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(info.device)
        save()
    g, n = res.get("gpt", {}), res.get("ngpt", {})
    if "tokens_per_s" in g and "tokens_per_s" in n:
        ratio = n["tokens_per_s"] / g["tokens_per_s"]
        res["summary"] = {"tokens_ratio": ratio, "target": TARGET_TOKENS_RATIO, "met": ratio >= TARGET_TOKENS_RATIO,
                          "tflops_ratio": n["model_tflops"] / g["model_tflops"]}
        if "tokens_per_s" in res.get("ngpt_every7", {}):
            res["summary"]["tokens_ratio_every7"] = res["ngpt_every7"]["tokens_per_s"] / g["tokens_per_s"]


def timer(device: torch.device):
    """fn -> list of ms per call (CUDA events on CUDA, perf_counter on CPU)."""

    def run(fn, warmup: int, iters: int) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(iters):
            if device.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                e.synchronize()
                out.append(s.elapsed_time(e))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    return run


def costs(a, info, out: dict, save) -> None:
    dev = info.device
    res = out["costs"] = {}
    torch.manual_seed(0)
    model = build_model(a.ngpt).to(dev)
    run = timer(dev)
    muon_named, _ = optim.split_parameters(model)
    params = [p for _, p in muon_named]
    res["muon_matrices"] = len(params)
    res["muon_weights"] = sum(p.numel() for p in params)
    g = torch.Generator(device=dev).manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, device=dev, generator=g) * 1e-3
    dims = model.sphere_dims()
    by_id = {id(p): dims[n] for n, p in muon_named}
    base = dict(lr=0.02, momentum=0.95, rank_every=0)
    variants = [("muon", optim.Muon, {}), ("geodesic", optim.Muon, {"update": "geodesic"}),
                ("geodesic_scaled", optim.Muon, {"update": "geodesic_scaled"}), ("normuon", optim.NorMuon, {}),
                ("cautious_wd", optim.Muon, {"cautious_wd": True, "weight_decay": 0.1}),
                ("polar_express", optim.Muon, {"orthogonalizer": "polar_express"})]
    for label, cls, kw in variants:
        try:
            opt = cls(params, **base, **kw)
            opt.set_sphere_dims({p: by_id[id(p)] for p in params})
            ms = run(opt.step, a.cost_warmup, a.cost_iters)
            res[label] = {"ms_median": statistics.median(ms), "ms_min": min(ms)}
        except Exception as e:
            res[label] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        print(f"{label:<16} {res[label].get('ms_median', float('nan')):8.3f} ms", flush=True)
        save()
    for label, fn in (("projection", model.normalize_weights), ("projection_compiled", None)):
        try:
            if fn is None:
                if dev.type != "cuda" or not a.compile_projection:
                    continue
                fn = torch.compile(model.normalize_weights)
            ms = run(fn, a.cost_warmup + (3 if label.endswith("compiled") else 0), a.cost_iters)
            res[label] = {"ms_median": statistics.median(ms), "ms_min": min(ms)}
        except Exception as e:
            res[label] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        print(f"{label:<16} {res[label].get('ms_median', float('nan')):8.3f} ms", flush=True)
        save()
    m = res.get("muon", {}).get("ms_median")
    if m:
        share = {}
        for label in ("projection", "projection_compiled"):
            if "ms_median" in res.get(label, {}):
                share[label] = res[label]["ms_median"] / m
        for label in ("geodesic", "geodesic_scaled", "normuon", "cautious_wd", "polar_express"):
            if "ms_median" in res.get(label, {}):
                share[label] = (res[label]["ms_median"] - m) / m
        res["share_of_muon_step"] = share
        res["target"] = TARGET_COST_SHARE
        res["met"] = {k: share[k] <= TARGET_COST_SHARE for k in ("projection", "geodesic", "geodesic_scaled",
                                                                 "normuon") if k in share}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="nGPT step: tokens/s vs the GPT preset, and the cost of "
                                            "projection, geodesic and NorMuon")
    p.add_argument("--ngpt", default="ngpt-124m")
    p.add_argument("--gpt", default="gpt-124m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--global-batch", type=int, default=128, help="sequences per optimizer step")
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    p.add_argument("--rank-every", type=int, default=0, help="Muon's effective-rank cadence in part 1 (0: off)")
    p.add_argument("--cost-iters", type=int, default=20)
    p.add_argument("--cost-warmup", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--parts", default="throughput,costs")
    p.add_argument("--compile-projection", action="store_true",
                   help="also time a torch.compile'd projection (CUDA; its compile takes a minute)")
    p.add_argument("--data", default=None, help="stdlib corpus dir (built if missing; default a temporary dir)")
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--smoke", action="store_true", help="tiny presets on the CPU, a few steps: checks the script")
    a = p.parse_args(argv)
    if a.smoke:
        a.ngpt, a.gpt, a.seq_len, a.global_batch, a.micro_batch = "ngpt-tiny", "tiny", 64, 16, 8
        a.steps, a.warmup, a.device, a.compile = min(a.steps, 2), 1, "cpu", "false"
        a.cost_iters, a.cost_warmup = 2, 1
    a.compile = {"auto": "auto", "true": True, "false": False}[a.compile]
    parts = {x.strip() for x in a.parts.split(",") if x.strip()}

    info = dist_mod.setup(a.device)
    out = {"benchmark": "ngpt_step", "settings": {k: v for k, v in vars(a).items() if k not in ("out", "data")},
           "device": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
           "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def save():
        if a.out:
            write_json(a.out, out)

    try:
        if "throughput" in parts:
            corpus = a.data or os.path.join(tempfile.gettempdir(), "muon-ablations-bench-stdlib")
            if not (Path(corpus) / "manifest.json").exists():
                build_stdlib_corpus(corpus)
            throughput(a, info, corpus, out, save)
        if "costs" in parts:
            try:
                costs(a, info, out, save)
            except Exception as e:
                out["costs"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        save()
        s = out.get("throughput", {}).get("summary")
        if s:
            print(f"\nngpt/gpt tokens/s: {100 * s['tokens_ratio']:.1f}% (target >= {100 * TARGET_TOKENS_RATIO:.0f}%), "
                  f"per FLOP {100 * s['tflops_ratio']:.1f}%")
        for k, v in out.get("costs", {}).get("share_of_muon_step", {}).items():
            print(f"{k:<20} {100 * v:6.1f}% of the Muon step")
        if a.out:
            print(f"wrote {a.out}")
        return 0
    finally:
        dist_mod.cleanup(info)


if __name__ == "__main__":
    sys.exit(main())
