"""The DeMo compressor (optim/dct.py, optim/demo.py) on GPT-124M's hidden matrices, against the Muon step.

Single device (default): GPT-124M's Muon-side matrices (the trainer's model and split: q, k, v, proj
768x768, fc 3072x768, proj 768x3072, 12 layers: 72 matrices, 85M weights), float32, fixed Gaussian
gradients. For each top-k (the seed's 1%, 5%, 10%, 25% of a 64x64 chunk, and DeMo's 32/4096) it times
the pieces (momentum, DCT, top-k, error feedback, pack, decode), compression (momentum + DCT + top-k +
error feedback + pack) plus decoding, and DeMo's whole step per orthogonalize mode (one process: no
exchange), against optim.Muon's step (bf16 Newton-Schulz, no rank checks) over the same tensors in the
same run. Target: compression plus decoding <= 1.0 x the Muon step. CUDA events, median of --iters.

    python3 benchmarks/compressor.py --out $OUT/compressor.json                 # one GPU, < 2 minutes
    python3 benchmarks/compressor.py --smoke --out /tmp/compressor.json         # CPU, tiny model, seconds

Two processes (--distributed, under torchrun; NCCL on GPUs, gloo on CPU): the arms of the DisTrO study
on the trainer's GPT-124M, each rank its own random batch (bf16 autocast on CUDA): adamw-ddp (every
parameter to AdamW, gradients all-reduced), muon-ddp, and demo, demo-muon-pre, demo-muon-post at each
top-k. Per arm: tokens/s (global), bytes sent per step per rank (payload, counted by the optimizer:
optim.MuonWithAdamW.communication()), the all-reduce payload of the same gradients, the time spent in
the exchange (all_reduce of the gradients the trainer reduces + DeMo's all_gather, each synchronized),
and float64 parameter checksums all-gathered: `ranks_identical` says every rank ends with the same
parameters.

    torchrun --standalone --nproc-per-node 2 benchmarks/compressor.py --distributed --out $OUT/compressor_2gpu.json
    torchrun --standalone --nproc-per-node 2 benchmarks/compressor.py --distributed --smoke --out /tmp/c2.json  # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optim  # noqa: E402
from optim import dct as D  # noqa: E402
from trainer.model import build_model  # noqa: E402

TOPK = (0.0078125, 0.01, 0.05, 0.10, 0.25)
SEED_TOPK = (0.01, 0.05, 0.10, 0.25)
MODES = ("none", "pre", "post")
ARMS = {"demo": "none", "demo-muon-pre": "pre", "demo-muon-post": "post"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, iters: int, warmup: int = 2) -> float:
    """Median milliseconds of fn()."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def hidden_shapes(arch: str) -> list[tuple[int, ...]]:
    model = build_model(arch)
    muon, _ = optim.split_parameters(model)
    return [tuple(p.shape) for _, p in muon]


# --------------------------------------------------------------------------- one device
def single(a, device) -> dict:
    arch = "tiny" if a.smoke else "gpt-124m"
    shapes = hidden_shapes(arch)
    g = torch.Generator(device="cpu").manual_seed(0)
    grads = [torch.randn(s, generator=g).to(device) for s in shapes]

    def params():
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(s, device=device) * 0.02) for s in shapes]
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        return ps

    res = {"arch": arch, "matrices": len(shapes), "weights": sum(int(torch.Size(s).numel()) for s in shapes),
           "shapes": sorted({str(s) for s in shapes}), "iters": a.iters}
    muon = optim.Muon(params(), lr=0.02, rank_every=0)
    res["muon_step_ms"] = timed(muon.step, device, a.iters)
    rows = []
    for f in TOPK:
        row = {"topk": f}
        ps = params()
        opt = optim.DeMo(ps, lr=1e-3, topk=f)
        opt.step()  # state and buckets exist
        items = [(p, opt.param_groups[0]) for p in ps]
        layouts = [opt._layout(p) for p in ps]
        buckets = opt._buckets(items)
        deltas = [opt.state[p]["delta"] for p in ps]
        row["k_per_chunk"] = layouts[0].k
        row["bytes_sent_per_step"], row["dense_bytes_per_step"] = opt.bytes_per_step()

        def momentum():
            torch._foreach_mul_(deltas, 0.999)
            torch._foreach_add_(deltas, grads)

        def chunks_of(bucket):
            return torch.cat([D.to_chunks(deltas[i].view(layouts[i].rows, layouts[i].cols), layouts[i]) for i in bucket])

        coefs = [D.dct_chunks(chunks_of(b)) for b in buckets]
        sel = [D.topk(c, layouts[b[0]].k) for c, b in zip(coefs, buckets)]
        row["dct_ms"] = timed(lambda: [D.dct_chunks(chunks_of(b)) for b in buckets], device, a.iters)
        row["topk_ms"] = timed(lambda: [D.topk(c, layouts[b[0]].k) for c, b in zip(coefs, buckets)], device, a.iters)

        def error_feedback():
            for b, (idx, vals) in zip(buckets, sel):
                L = layouts[b[0]]
                X = chunks_of(b)
                X.sub_(D.idct_chunks(D.scatter(idx, vals, L.a * L.b), L.a, L.b))
                off = 0
                for i in b:
                    deltas[i].copy_(D.from_chunks(X[off:off + layouts[i].n_chunks], layouts[i]))
                    off += layouts[i].n_chunks

        row["error_feedback_ms"] = timed(error_feedback, device, a.iters)
        row["momentum_ms"] = timed(momentum, device, a.iters)

        def encode():
            segs, counts = [], []
            for b in buckets:
                s, n = opt._encode(items, layouts, b)
                segs.extend(s)
                counts.append(n)
            return torch.cat(segs), counts

        buf, counts = encode()
        row["encode_ms"] = timed(encode, device, a.iters)  # DCT + top-k + error feedback + pack

        def decode(world):
            parts = [buf] * world
            off = 0
            for b, n in zip(buckets, counts):
                chunks, off = opt._decode(parts, off, n, layouts[b[0]])
                c0 = 0
                for i in b:
                    D.from_chunks(chunks[c0:c0 + layouts[i].n_chunks], layouts[i])
                    c0 += layouts[i].n_chunks

        row["decode_ms"] = timed(lambda: decode(1), device, a.iters)
        row["decode_2ranks_ms"] = timed(lambda: decode(2), device, a.iters)
        row["compress_plus_decode_ms"] = timed(lambda: (momentum(), encode(), decode(2)), device, a.iters)
        row["ratio_to_muon"] = row["compress_plus_decode_ms"] / res["muon_step_ms"]
        for mode in MODES:
            o = optim.DeMo(params(), lr=0.02 if mode == "post" else 3e-3, topk=f, orthogonalize=mode)
            row[f"demo_step_{mode}_ms"] = timed(o.step, device, a.iters)
        rows.append(row)
        del opt
    res["topk"] = rows
    res["target"] = "compress_plus_decode_ms <= 1.0 x muon_step_ms"
    res["meets_target"] = {str(r["topk"]): r["ratio_to_muon"] <= 1.0 for r in rows}
    if device.type == "cuda":
        res["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def print_single(res: dict) -> None:
    print(f"{res['arch']}: {res['matrices']} matrices, {res['weights']:,} weights; Muon step {res['muon_step_ms']:.2f} ms",
          file=sys.stderr)
    print(f"{'top-k':>9} {'k':>5} {'dct':>7} {'topk':>7} {'ef':>7} {'encode':>7} {'decode':>7} {'c+d(2)':>7} "
          f"{'ratio':>6} {'none':>7} {'pre':>7} {'post':>7} {'MB sent':>8}", file=sys.stderr)
    for r in res["topk"]:
        print(f"{r['topk']:9.4g} {r['k_per_chunk']:5d} {r['dct_ms']:7.2f} {r['topk_ms']:7.2f} {r['error_feedback_ms']:7.2f} "
              f"{r['encode_ms']:7.2f} {r['decode_ms']:7.2f} {r['compress_plus_decode_ms']:7.2f} {r['ratio_to_muon']:6.2f} "
              f"{r['demo_step_none_ms']:7.2f} {r['demo_step_pre_ms']:7.2f} {r['demo_step_post_ms']:7.2f} "
              f"{r['bytes_sent_per_step'] / 1e6:8.2f}", file=sys.stderr)


# --------------------------------------------------------------------------- two processes
class ExchangeClock:
    """Wraps torch.distributed.all_reduce / all_gather: synchronized milliseconds per call."""

    def __init__(self, device):
        import torch.distributed as dist

        self.dist, self.device, self.ms = dist, device, 0.0
        self.real = {"all_reduce": dist.all_reduce, "all_gather": dist.all_gather}
        self.on = False

    def _wrap(self, name):
        real = self.real[name]

        def f(*args, **kw):
            if not self.on:
                return real(*args, **kw)
            sync(self.device)
            t0 = time.perf_counter()
            out = real(*args, **kw)
            sync(self.device)
            self.ms += 1000 * (time.perf_counter() - t0)
            return out

        return f

    def install(self):
        for name in self.real:
            setattr(self.dist, name, self._wrap(name))
        return self


def distributed(a) -> dict | None:
    import torch.distributed as dist

    from trainer import distributed as dist_mod

    info = dist_mod.setup("cpu" if a.smoke else "auto")
    device = info.device
    clock = ExchangeClock(device).install()
    arch = "tiny" if a.smoke else "gpt-124m"
    batch, seq = (2, 32) if a.smoke else (a.micro_batch, a.seq_len)
    steps = 4 if a.smoke else a.steps
    warm = 1 if a.smoke else 3
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    arms = [("adamw-ddp", "Muon", None, None), ("muon-ddp", "Muon", {"lr": 0.02}, None)]
    for name, mode in ARMS.items():
        for f in SEED_TOPK:
            kw = {"lr": 0.02 if mode == "post" else 3e-3, "orthogonalize": mode, "topk": f}
            arms.append((name, "DeMo", kw, f))
    out = []
    for name, cls, kw, f in arms:
        torch.manual_seed(0)
        model = build_model(arch).to(device)
        patterns = ["."] if name == "adamw-ddp" else None  # every dotted name: all parameters to AdamW
        opt = optim.build_optimizer(model, cls, kw or {}, {"lr": 3e-4, "betas": [0.9, 0.95]}, patterns, seed=0)
        own = opt.self_synced()
        reduce = [p for p in model.parameters() if id(p) not in own]
        params = list(model.parameters())
        vocab = model.vocab_size
        g = torch.Generator(device="cpu").manual_seed(1000 + info.rank)  # each rank its own data
        times, ex = [], []
        for step in range(steps + warm):
            x = torch.randint(0, vocab, (batch, seq + 1), generator=g).to(device)
            sync(device)
            t0 = time.perf_counter()
            clock.ms, clock.on = 0.0, True
            with amp if amp is not None else torch.autocast("cpu", enabled=False):
                loss = model(x[:, :-1], x[:, 1:])
            (loss / info.world_size).backward()
            dist_mod.all_reduce_grads(reduce, info)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            clock.on = False
            if step >= warm:
                times.append(time.perf_counter() - t0)
                ex.append(clock.ms)
        comm = opt.communication()
        with torch.no_grad():
            local = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in params])
        parts = [torch.empty_like(local) for _ in range(info.world_size)]
        clock.real["all_gather"](parts, local)
        same = all(torch.equal(parts[0], q) for q in parts[1:])
        st = statistics.median(times)
        out.append({"arm": name, "class": cls, "kwargs": kw, "topk": f, "step_ms": 1000 * st,
                    "tokens_per_s": batch * seq * info.world_size / st, "exchange_ms": statistics.median(ex),
                    "bytes_sent_per_step": comm["bytes_sent_per_step"],
                    "allreduce_bytes_per_step": comm["allreduce_bytes_per_step"],
                    "compression": comm["allreduce_bytes_per_step"] / comm["bytes_sent_per_step"],
                    "ranks_identical": same, "checksum": float(parts[0][:, 0].sum())})
        if info.is_main:
            r = out[-1]
            print(f"{name:>15} topk {str(f):>6}: {r['tokens_per_s']:12,.0f} tok/s  step {r['step_ms']:8.1f} ms  "
                  f"exchange {r['exchange_ms']:7.1f} ms  sent {r['bytes_sent_per_step'] / 1e6:8.2f} MB "
                  f"(all-reduce {r['allreduce_bytes_per_step'] / 1e6:7.2f} MB)  identical {same}", file=sys.stderr)
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    res = {"arch": arch, "world_size": info.world_size, "backend": info.backend, "micro_batch": batch, "seq_len": seq,
           "steps": steps, "arms": out, "all_ranks_identical": all(r["ranks_identical"] for r in out)}
    is_main = info.is_main
    dist_mod.cleanup(info)
    return res if is_main else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, few iterations")
    p.add_argument("--distributed", action="store_true", help="the arms on torchrun's processes")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--steps", type=int, default=10, help="--distributed: timed steps per arm")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--dct-matmuls", default=None, help="comma list of optim.dct.CUDA_MATMUL values to time in "
                   "this run (one device: each under by_dct_matmul, the default's also at the top level)")
    a = p.parse_args()
    if a.smoke:
        a.iters = min(a.iters, 3)
    meta = {"torch": torch.__version__, "python": sys.version.split()[0], "smoke": a.smoke}
    if a.distributed:
        res = distributed(a)
        if res is None:
            return
    else:
        device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            meta["device"] = torch.cuda.get_device_name(device)
        else:
            meta["device"] = "cpu"
        impls = a.dct_matmuls.split(",") if a.dct_matmuls else [D.CUDA_MATMUL]
        default, by = D.CUDA_MATMUL, {}
        for impl in impls:
            if impl not in D.CUDA_MATMULS:
                raise SystemExit(f"--dct-matmuls: {impl!r} is not allowed; use {list(D.CUDA_MATMULS)}")
            D.CUDA_MATMUL = impl
            try:
                by[impl] = single(a, device)
            finally:
                D.CUDA_MATMUL = default
            print(f"optim.dct.CUDA_MATMUL = {impl!r}", file=sys.stderr)
            print_single(by[impl])
        res = dict(by.get(default, by[impls[0]]))
        res["dct_matmul"] = default if default in by else impls[0]
        res["by_dct_matmul"] = by
    res = {**meta, **res}
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = a.out.with_name(f".{a.out.name}.tmp{os.getpid()}")
        tmp.write_text(text + "\n")
        os.replace(tmp, a.out)
    else:
        print(text)


if __name__ == "__main__":
    main()
