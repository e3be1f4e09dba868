"""Time one optimizer step of each Muon-family optimizer over the hidden matrices of GPT-shaped models.

Shapes per transformer layer (d = model width): q, k, v, o projections (d x d) and the MLP's
fc (4d x d) and proj (d x 4d); embeddings, head, norms and biases are left out (they go to AdamW).

    124m: 12 layers, d = 768   (72 matrices,  85M weights)
    350m: 24 layers, d = 1024  (144 matrices, 302M weights)
    1b:   24 layers, d = 2048  (144 matrices, 1.21B weights)

Beside optim's classes, the same run times torch.optim.Muon and fused torch.optim.AdamW over the same
tensors. Parameters and gradients are float32 (master weights); gradients are fixed Gaussian
matrices, whose momentum has a high effective rank, so the adaptive trigger (rank_threshold 0.5)
stays off: the "always" rows (rank_threshold=None) give the cost when every matrix gets noise.

Timing: CUDA events around every step after warm-up. For optimizers with a rank check every
`rank_every` steps, ms/step is the amortized cost ((r-1) * median(other steps) + mean(rank steps)) / r;
otherwise the median. A micro-benchmark of the pieces (orthogonalization, effective rank, noise) per
shape stack follows. Writes JSON (--out, default stdout) and prints a table last.

Needs only torch (>= 2.9) and the repository's optim/ package:
    python3 benchmarks/optimizer_step.py --out optimizer_step.json
    python3 benchmarks/optimizer_step.py --device cpu --sizes tiny --iters 2      # smoke test (seconds)
    (124m on a CPU works too but takes about half a minute per step)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optim  # noqa: E402
import optim.rank  # noqa: E402
from optim.noise import NoiseSource, haar_polar, haar_qr, isotropic  # noqa: E402
from optim.orthogonalize import cubic_newton_schulz, orthogonalize  # noqa: E402
from optim.rank import effective_rank  # noqa: E402

SIZES = {"tiny": (2, 64), "124m": (12, 768), "350m": (24, 1024), "1b": (24, 2048)}  # tiny: CPU smoke test
RANK_EVERY = 10


def layer_shapes(layers: int, d: int) -> list[tuple[int, int]]:
    per_layer = [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]  # q, k, v, o, fc, proj
    return per_layer * layers


def configs(quick: bool, only: str | None = None):
    """(label, factory(params) -> optimizer, rank_every or None)."""
    base = dict(lr=0.02, momentum=0.95, rank_every=RANK_EVERY)
    noisy = dict(base, alpha=1e-3)
    rows = [
        ("torch.optim.Muon", lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0), None),
        ("AdamW (fused)", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=ps[0].is_cuda), None),
        ("Muon", lambda ps: optim.Muon(ps, **base), RANK_EVERY),
        ("Muon (no rank check)", lambda ps: optim.Muon(ps, **dict(base, rank_every=0)), None),
        ("OrthoNoise qr", lambda ps: optim.MuonOrthoNoise(ps, noise_method="qr", **noisy), RANK_EVERY),
        ("OrthoNoise polar", lambda ps: optim.MuonOrthoNoise(ps, noise_method="polar", **noisy), RANK_EVERY),
        ("Isotropic", lambda ps: optim.MuonIsotropic(ps, **noisy), RANK_EVERY),
        (
            "OrthoNoise qr always",
            lambda ps: optim.MuonOrthoNoise(ps, noise_method="qr", rank_threshold=None, **noisy),
            RANK_EVERY,
        ),
        (
            "OrthoNoise polar always",
            lambda ps: optim.MuonOrthoNoise(ps, noise_method="polar", rank_threshold=None, **noisy),
            RANK_EVERY,
        ),
        ("Isotropic always", lambda ps: optim.MuonIsotropic(ps, rank_threshold=None, **noisy), RANK_EVERY),
        ("NOLAH", lambda ps: optim.MuonNOLAH(ps, **base), RANK_EVERY),
    ]
    if quick:
        rows = [r for r in rows if r[0] in ("torch.optim.Muon", "Muon", "OrthoNoise qr always", "Isotropic always")]
    if only is not None:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        rows = [r for r in rows if r[0] in wanted or r[0] == "Muon"] if wanted != ["none"] else []
    return rows


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Per-call times in ms: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.device = device

    def run(self, fn, n: int) -> list[float]:
        if self.device.type == "cuda":
            ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
            for a, b in ev:
                a.record()
                fn()
                b.record()
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in ev]
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out


def make_tensors(shapes, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    params, grads = [], []
    for s in shapes:
        params.append(torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(device)))
        grads.append((torch.randn(s, generator=g) * 1e-3).to(device))
    return params, grads


def bench_optimizer(factory, rank_every, params, grads, device, iters, warmup, budget_s):
    for p, gr in zip(params, grads):
        p.grad = gr
    opt = factory(params)
    timer = Timer(device)
    w = timer.run(opt.step, warmup)
    sync(device)
    t_est = statistics.median(w[1:]) if len(w) > 1 else w[0]
    n = int(min(iters, max(RANK_EVERY + 1 if rank_every else 3, budget_s * 1e3 / max(t_est, 1e-3))))
    first = getattr(opt, "step_count", 0) + 1
    times = timer.run(opt.step, n)
    res = {"steps_timed": n, "median_ms": statistics.median(times), "min_ms": min(times)}
    if rank_every:
        steps = range(first, first + n)
        rank_t = [t for s, t in zip(steps, times) if (s - 1) % rank_every == 0]
        other = [t for s, t in zip(steps, times) if (s - 1) % rank_every != 0]
        res["rank_step_ms"] = statistics.mean(rank_t) if rank_t else None
        res["other_step_median_ms"] = statistics.median(other) if other else None
        if rank_t and other:
            res["ms_per_step"] = ((rank_every - 1) * statistics.median(other) + statistics.mean(rank_t)) / rank_every
        else:
            res["ms_per_step"] = res["median_ms"]
    else:
        res["ms_per_step"] = res["median_ms"]
    d = getattr(opt, "diagnostics", None)
    if d:
        res["noise_fraction"] = d.get("noise_fraction")
    del opt
    for p in params:
        p.grad = None
    return res


def check_vs_torch(params, grads, steps=5):
    """Max over matrices of ||ours - torch|| / ||torch - p0|| after `steps` steps (bf16 rounding only)."""
    p0 = [p.detach().clone() for p in params]
    out = []
    for make in (lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0), lambda ps: optim.Muon(ps, lr=0.02)):
        ps = [torch.nn.Parameter(p.clone()) for p in p0]
        opt = make(ps)
        for t in range(steps):
            for p, g in zip(ps, grads):
                p.grad = g * (1 + 0.1 * t)
            opt.step()
        out.append([p.detach() for p in ps])
    theirs, ours = out
    err = max(((a - b).norm() / (b - c).norm()).item() for a, b, c in zip(ours, theirs, p0))
    return {"steps": steps, "max_rel_err": err}


def _serial(fn):
    """Run fn with optim.rank's eigensolver on one stream (the default spreads matrices over 16)."""
    saved = optim.rank._CUDA_WORKERS
    optim.rank._CUDA_WORKERS = 1
    try:
        return fn()
    finally:
        optim.rank._CUDA_WORKERS = saved


def bench_pieces(shapes, device, reps, slow_limit_s, only=None):
    """Each piece on each distinct shape stack; ms per call (median)."""
    timer = Timer(device)
    out = {}
    src = NoiseSource(0)
    for shape in sorted(set(shapes)):
        B = shapes.count(shape)
        X = torch.randn((B, *shape), device=device) * 1e-3
        pieces = {
            "newton_schulz bf16": lambda: orthogonalize(X, "newton_schulz", 5, "bf16"),
            "polar_express bf16": lambda: orthogonalize(X, "polar_express", 5, "bf16"),
            "cubic reortho bf16 (3)": lambda: cubic_newton_schulz(X, 3, "bf16"),
            "gaussian draw (per-matrix seeds)": lambda: src.gaussian(shape, device, 1, list(range(B))),
            "isotropic noise": lambda: isotropic(X),
            "polar noise bf16": lambda: haar_polar(X),
            "qr cholesky fp64": lambda: haar_qr(X, "cholesky"),
            "qr householder fp32": lambda: haar_qr(X, "householder"),
            "erank svdvals fp32": lambda: effective_rank(X, "svd"),
            "erank gram eigvalsh fp64 serial": lambda: _serial(lambda: effective_rank(X, "gram")),
            "erank gram eigvalsh fp64 (default)": lambda: effective_rank(X, "gram"),
        }
        if device.type == "cuda":
            G32 = X @ X.mT if shape[0] <= shape[1] else X.mT @ X
            pieces["erank gram eigvalsh fp32 (eigen part only)"] = lambda: optim.rank._eigvalsh_cuda(G32)
        row = {}
        if not only or any(w in "erank gram eigvalsh" for w in only):
            row["gram threaded == serial (bitwise)"] = float(
                torch.equal(_serial(lambda: effective_rank(X, "gram")), effective_rank(X, "gram"))
            )
        for name, fn in pieces.items():
            if only and not any(w in name for w in only):
                continue
            t0 = time.perf_counter()
            fn()
            sync(device)
            first = time.perf_counter() - t0
            n = 1 if first > slow_limit_s else reps
            row[name] = statistics.median(timer.run(fn, n))
        out[f"{B}x{shape[0]}x{shape[1]}"] = row
        del X
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="124m,350m,1b")
    ap.add_argument("--iters", type=int, default=60, help="most timed steps per optimizer")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of timed steps per optimizer (at least 11 steps)")
    ap.add_argument("--piece-reps", type=int, default=10)
    ap.add_argument("--no-pieces", action="store_true")
    ap.add_argument("--pieces", default=None, help="comma-separated substrings of the pieces to time (default all)")
    ap.add_argument("--configs", default=None, help="comma-separated optimizer labels ('none': pieces only)")
    ap.add_argument("--quick", action="store_true", help="only Muon, torch Muon and the 'always' noise rows")
    ap.add_argument("--no-check", action="store_true", help="skip the 5-step comparison with torch.optim.Muon")
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for s in sizes:
        if s not in SIZES:
            ap.error(f"--sizes: {s!r} is not one of {list(SIZES)}")
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "rank_every": RANK_EVERY,
        "param_dtype": "float32",
        "sizes": {},
    }
    for size in sizes:
        layers, d = SIZES[size]
        shapes = layer_shapes(layers, d)
        params, grads = make_tensors(shapes, device)
        entry = {
            "layers": layers,
            "d": d,
            "matrices": len(shapes),
            "weights": sum(a * b for a, b in shapes),
            "optimizers": {},
        }
        if size == sizes[0] and not args.no_check:
            entry["check_vs_torch_muon"] = check_vs_torch(params, grads)
            print(f"[{size}] check vs torch.optim.Muon: {entry['check_vs_torch_muon']}", file=sys.stderr, flush=True)
        for label, factory, rank_every in configs(args.quick, args.configs):
            t0 = time.perf_counter()
            try:
                r = bench_optimizer(factory, rank_every, params, grads, device, args.iters, args.warmup, args.budget)
            except Exception as e:  # record and go on: one failing row must not cost the others
                entry["optimizers"][label] = {"error": repr(e)}
                print(f"[{size}] {label}: FAILED {e!r}", file=sys.stderr, flush=True)
                continue
            r["wall_s"] = round(time.perf_counter() - t0, 2)
            entry["optimizers"][label] = r
            print(f"[{size}] {label}: {r['ms_per_step']:.2f} ms/step ({r['steps_timed']} steps)", file=sys.stderr, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if "ms_per_step" in entry["optimizers"].get("Muon", {}):
            base = entry["optimizers"]["Muon"]["ms_per_step"]
            for r in entry["optimizers"].values():
                if "ms_per_step" in r:
                    r["x_muon"] = r["ms_per_step"] / base
        del params, grads
        if not args.no_pieces:
            only = [w.strip() for w in args.pieces.split(",")] if args.pieces else None
            entry["pieces_ms"] = bench_pieces(shapes, device, args.piece_reps, 1.0, only)
        if device.type == "cuda":
            entry["max_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        result["sizes"][size] = entry
        if args.out != "-":  # after every size, so that a run cut short keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.out == "-":
        print(json.dumps(result, indent=1))
    print_table(result)


def print_table(result):
    sizes = [s for s in result["sizes"] if result["sizes"][s]["optimizers"]]
    labels = []
    for s in sizes:
        labels += [k for k in result["sizes"][s]["optimizers"] if k not in labels]
    print(f"\noptimizer step, ms (x optim.Muon); {result['device']}, torch {result['torch']}, rank check every {result['rank_every']}")
    print("| optimizer | " + " | ".join(sizes) + " |")
    print("| --- |" + " --- |" * len(sizes))
    for lab in labels:
        cells = []
        for s in sizes:
            r = result["sizes"][s]["optimizers"].get(lab)
            cells.append("-" if r is None or "ms_per_step" not in r else f"{r['ms_per_step']:.2f} ({r.get('x_muon', float('nan')):.2f}x)")
        print(f"| {lab} | " + " | ".join(cells) + " |")
    for s in result["sizes"]:
        pieces = result["sizes"][s].get("pieces_ms")
        if not pieces:
            continue
        print(f"\npieces at {s}, ms per call on the whole stack:")
        names = list(next(iter(pieces.values())))
        if not names:
            continue
        print("| piece | " + " | ".join(pieces) + " |")
        print("| --- |" + " --- |" * len(pieces))
        for n in names:
            print(f"| {n} | " + " | ".join(f"{pieces[k][n]:.2f}" for k in pieces) + " |")


if __name__ == "__main__":
    main()
