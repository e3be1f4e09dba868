"""Time one optimizer step of each Muon-family optimizer over the hidden matrices of GPT-shaped models.

Shapes per transformer layer (d = model width): q, k, v, o projections (d x d) and the MLP's
fc (4d x d) and proj (d x 4d); embeddings, head, norms and biases are left out (they go to AdamW).

    124m: 12 layers, d = 768   (72 matrices,  85M weights)
    350m: 24 layers, d = 1024  (144 matrices, 302M weights)
    1b:   24 layers, d = 2048  (144 matrices, 1.21B weights)

Beside optim's classes, the same run times torch.optim.Muon and fused torch.optim.AdamW over the same
tensors. Parameters and gradients are float32 (master weights); gradients are fixed Gaussian
matrices, whose momentum has a high effective rank, so the adaptive trigger (rank_threshold 0.5)
stays off. Real runs are the other way round (GPT-124M, OrthoNoise alpha 1e-3: mean effective rank 88
of 768, noise on 100% of the matrices at every step), so the "always" rows (rank_threshold=None: noise
on every matrix) are the cost real runs pay.

The effective rank is measured on the host while training goes on (optim/rank.py) and applied
rank_every steps later, so its cost depends on how long the rest of a training step takes. Between two
optimizer steps this benchmark keeps the GPU busy for --gap-ms (default: GPT-124M's forward/backward on
an H100 at 32 x 1024 tokens, 65 ms; 350m 190 ms), and gap 0 rows show the back-to-back worst case.

Timing: host wall clock around opt.step() with a device sync after it (so a wait for the host's
result counts). For optimizers with a rank check every `rank_every` steps, ms/step is the amortized
cost ((r-1) * median(other steps) + mean(rank steps)) / r; otherwise the median. A micro-benchmark
of the pieces (orthogonalization, effective rank, noise, NOLAH's selection) per shape stack follows.
Writes JSON (--out, default stdout) and prints a table last.

    python3 benchmarks/optimizer_step.py --sizes 124m,350m --out $OUT/optimizer_step.json   (~4 min, H100)
    python3 benchmarks/optimizer_step.py --smoke                                            (CPU, seconds)
    python3 benchmarks/optimizer_step.py --sizes 124m,350m --quick --no-pieces --peers DIR  (issue 24's run)

--peers DIR adds the public kernels (benchmarks/peers.py: Dion's, modded-nanogpt's) as rows of the same run;
every row gets `torch_muon_over_this` (torch.optim.Muon's time over the row's, same gap), and the
"Muon (no rank check, torch path)" row runs optim.Muon with OPTIM_TRITON=0, "Muon (no rank check, unfused step)"
with OPTIM_FUSED_STEP=0 (the foreach momentum and update around the Newton-Schulz kernels: optim/triton_step.py).
`orthogonalize_all_ms` times the orthogonalization alone of the whole model for optim and each peer.
--rank-gpu adds `rank_gpu_candidates` (first size): device calls for the effective rank (cuSOLVER eigvalsh of the
Gram in float64/float32, svdvals with each driver, MAGMA), ms per matrix and their distance from the host path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optim  # noqa: E402
from benchmarks import peers  # noqa: E402
from optim import triton_ns  # noqa: E402
from optim.orthogonalize import orthogonalize_stacks  # noqa: E402
import optim.noise  # noqa: E402
import optim.rank  # noqa: E402
import optim.triton_step  # noqa: E402
from optim.nolah import kth_smallest_nonneg  # noqa: E402
from optim.noise import NoiseSource, haar_polar, haar_qr, isotropic  # noqa: E402
from optim.orthogonalize import cubic_newton_schulz, orthogonalize  # noqa: E402
from optim.rank import HostRankPool, effective_rank, gram64  # noqa: E402

SIZES = {"tiny": (2, 64), "124m": (12, 768), "350m": (24, 1024), "1b": (24, 2048)}  # tiny: CPU smoke test
RANK_EVERY = 10
# forward + backward of a training step without the optimizer, ms (H100, 32 x 1024 tokens, bf16, compile)
GAP_MS = {"tiny": 5.0, "124m": 65.0, "350m": 190.0, "1b": 600.0}


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
        (
            "Isotropic reortho always",
            lambda ps: optim.MuonIsotropic(ps, rank_threshold=None, reortho_steps=3, **noisy),
            RANK_EVERY,
        ),
        ("NOLAH", lambda ps: optim.MuonNOLAH(ps, **base), RANK_EVERY),
    ]
    rows.insert(4, ("Muon (no rank check, torch path)", lambda ps: _TorchPath(optim.Muon(ps, **dict(base, rank_every=0))),
                    None))
    rows.insert(5, ("Muon (no rank check, unfused step)",
                    lambda ps: _TorchPath(optim.Muon(ps, **dict(base, rank_every=0)), optim.triton_step.ENV_SWITCH), None))
    for label, fn in PEER_ORTHO.items():
        rows.insert(6, (f"peer: {label}", lambda ps, fn=fn: peers.PeerMuon(ps, fn), None))
    if quick:
        keep = ("torch.optim.Muon", "Muon", "Muon (no rank check)", "Muon (no rank check, torch path)",
                "Muon (no rank check, unfused step)",
                "OrthoNoise qr always", "Isotropic always", "NOLAH") + tuple(f"peer: {k}" for k in PEER_ORTHO)
        rows = [r for r in rows if r[0] in keep]
    if only is not None:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        rows = [r for r in rows if r[0] in wanted or r[0] == "Muon"] if wanted != ["none"] else []
    return rows


PEER_ORTHO: dict = {}  # label -> orthogonalization of a stack (benchmarks/peers.py, --peers DIR)


class _TorchPath:
    """An optim optimizer stepped with the Triton kernels switched off (OPTIM_TRITON=0): the torch path;
    with switch=OPTIM_FUSED_STEP, only the fused momentum/update kernels off (optim/triton_step.py)."""

    def __init__(self, opt, switch=triton_ns.ENV_SWITCH):
        self.opt, self.switch = opt, switch

    def step(self):
        saved = os.environ.get(self.switch)
        os.environ[self.switch] = "0"
        try:
            return self.opt.step()
        finally:
            if saved is None:
                del os.environ[self.switch]
            else:
                os.environ[self.switch] = saved

    @property
    def step_count(self):
        return self.opt.step_count

    @property
    def diagnostics(self):
        return self.opt.diagnostics


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Filler:
    """Keeps the device busy for about `ms` between optimizer steps, as a model's forward/backward would
    (bf16 matmuls on a GPU; a sleep on the CPU, where the host pool then has the cores)."""

    def __init__(self, device, ms: float):
        self.device, self.ms, self.n = device, ms, 0
        if device.type == "cuda" and ms > 0:
            self.a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
            for _ in range(3):
                self.a @ self.a
            sync(device)
            t0 = time.perf_counter()
            for _ in range(20):
                self.a @ self.a
            sync(device)
            per = (time.perf_counter() - t0) / 20 * 1e3
            self.n = max(1, round(ms / per))

    def __call__(self):
        if self.ms <= 0:
            return
        if self.device.type == "cuda":
            for _ in range(self.n):
                self.a @ self.a
            sync(self.device)
        else:
            time.sleep(self.ms / 1e3)


def sync_current(device):
    """Wait for the current stream only: the rank measurement's copy to the host runs on a side stream
    and overlaps the next step's work, as in training (torch.cuda.synchronize would wait for it)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def wall_times(fn, n: int, device, filler) -> list[float]:
    """ms of each call of fn, host wall clock with a sync of the current stream after it, the filler before."""
    out = []
    for _ in range(n):
        filler()
        t0 = time.perf_counter()
        fn()
        sync_current(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


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


def bench_optimizer(factory, rank_every, params, grads, device, iters, warmup, budget_s, filler):
    for p, gr in zip(params, grads):
        p.grad = gr
    opt = factory(params)
    w = wall_times(opt.step, warmup, device, filler)
    t_est = statistics.median(w[1:]) if len(w) > 1 else w[0]
    per_step = t_est + filler.ms
    n = int(min(iters, max(3 * RANK_EVERY + 1 if rank_every else 5, budget_s * 1e3 / max(per_step, 1e-3))))
    first = getattr(opt, "step_count", 0) + 1
    waited0 = optim.rank.WAITED_S
    times = wall_times(opt.step, n, device, filler)
    waited_ms = (optim.rank.WAITED_S - waited0) * 1e3
    res = {"steps_timed": n, "median_ms": statistics.median(times), "min_ms": min(times), "gap_ms": filler.ms}
    if rank_every:
        steps = range(first, first + n)
        rank_t = [t for s, t in zip(steps, times) if (s - 1) % rank_every == 0]
        other = [t for s, t in zip(steps, times) if (s - 1) % rank_every != 0]
        res["rank_step_ms"] = statistics.mean(rank_t) if rank_t else None
        res["rank_step_max_ms"] = max(rank_t) if rank_t else None
        res["rank_wait_ms_per_rank_step"] = waited_ms / len(rank_t) if rank_t else None  # blocked on the host
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
    if hasattr(opt, "settle_measurements"):
        opt.settle_measurements()
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


def _qr_with(mode):
    def run(X):
        saved = optim.noise.RIGHT_SOLVE
        optim.noise.RIGHT_SOLVE = mode
        try:
            return haar_qr(X, "cholesky")
        finally:
            optim.noise.RIGHT_SOLVE = saved

    return run


def bench_rank_host(shapes, device, workers_list):
    """The whole model's effective-rank measurement: Gram on the device, then the host pool (wall clock
    from submit to the last result), for each pool size; and the old floor, cuSOLVER eigvalsh."""
    stacks = {}
    for shape in sorted(set(shapes)):
        stacks[shape] = torch.randn((shapes.count(shape), *shape), device=device) * 1e-3
    out = {"matrices": len(shapes)}
    ref = None
    for w in workers_list:
        pool = HostRankPool(w)
        for _ in range(2):  # the second is timed (pinned buffers and the threads warm)
            sync(device)
            t0 = time.perf_counter()
            jobs = [pool.submit(X) for X in stacks.values()]
            t_submit = time.perf_counter() - t0
            vals = torch.cat([j.result() for j in jobs])
            t_all = time.perf_counter() - t0
        pool.shutdown()
        out[f"workers{w}"] = {"submit_ms": t_submit * 1e3, "all_results_ms": t_all * 1e3,
                              "core_ms_per_matrix": t_all * 1e3 * w / len(shapes) if w == 1 else None}
        if ref is None:
            ref = vals
        out[f"workers{w}"]["bitwise_equal_to_first"] = bool(torch.equal(ref, vals))
    sync(device)
    t0 = time.perf_counter()
    for X in stacks.values():
        gram64(X)
    sync(device)
    out["gram64_device_ms"] = (time.perf_counter() - t0) * 1e3
    if device.type == "cuda":
        grams = [gram64(X) for X in stacks.values()]
        sync(device)
        t0 = time.perf_counter()
        for G in grams:
            torch.linalg.eigvalsh(G)
        sync(device)
        out["cusolver_eigvalsh_fp64_ms (old method)"] = (time.perf_counter() - t0) * 1e3
        X = next(iter(stacks.values()))
        sv = torch.linalg.svdvals(X[:4].double()).cpu()
        out["check_vs_float64_svd_max_rel"] = float(
            (effective_rank(X[:4]).cpu().double() - _erank_from_s(sv)).abs().div(_erank_from_s(sv)).max())
    return out


def bench_rank_gpu(shapes, device, sample: int = 4):
    """Candidate device calls for the effective rank (issue 24): each on `sample` matrices of every distinct
    shape (ms per matrix, CUDA events around one batched call, after a warm-up call on one), and the largest
    relative difference of the effective ranks from the host float64 path's (optim.rank, the reference)."""
    out = {"sample_per_shape": sample}
    g = torch.Generator(device="cpu").manual_seed(5)
    timer = Timer(device)

    def erank_from_s(s):
        s = s.double().clamp(min=0)
        p = s / s.sum(-1, keepdim=True)
        return torch.exp(-torch.special.xlogy(p, p).sum(-1))

    def erank_from_lam(lam):
        return erank_from_s(lam.double().clamp(min=0).sqrt())

    for shape in sorted(set(shapes)):
        # a decaying spectrum (as momentum buffers have: effective rank ~ 1/8 of the side), not white noise
        k = min(shape)
        U = torch.linalg.qr(torch.randn(sample, shape[0], k, generator=g))[0]
        V = torch.linalg.qr(torch.randn(sample, shape[1], k, generator=g))[0]
        s = torch.exp(-torch.arange(k, dtype=torch.float32) / (k / 16))
        M = ((U * s) @ V.mT * 1e-3).to(device)
        ref = optim.rank.effective_rank(M).double().cpu()
        row = {"host_float64_erank_mean": float(ref.mean())}
        cands = {
            "eigvalsh fp64 of Gram (cuSOLVER)": lambda X: erank_from_lam(torch.linalg.eigvalsh(gram64(X))),
            "eigvalsh fp32 of Gram (cuSOLVER)": lambda X: erank_from_lam(torch.linalg.eigvalsh(gram64(X).float())),
            "svdvals fp32": lambda X: erank_from_s(torch.linalg.svdvals(X.float())),
            "svdvals fp64": lambda X: erank_from_s(torch.linalg.svdvals(X.double())),
            "svdvals fp32 gesvdj": lambda X: erank_from_s(torch.linalg.svdvals(X.float(), driver="gesvdj")),
            "svdvals fp32 gesvda": lambda X: erank_from_s(torch.linalg.svdvals(X.float(), driver="gesvda")),
        }
        for name, fn in cands.items():
            try:
                fn(M[:1])  # warm-up (handles, workspaces)
                sync(device)
                box = []
                ms = timer.run(lambda: box.append(fn(M)), 1)[0]
                val = box[0].double().cpu()
                row[name] = {"ms_per_matrix": ms / sample, "max_rel_vs_host_fp64": float(((val - ref).abs() / ref).max())}
            except Exception as e:  # a driver that this build lacks
                row[name] = repr(e)[:200]
        try:
            saved = torch.backends.cuda.preferred_linalg_library()
            torch.backends.cuda.preferred_linalg_library("magma")
            fn = cands["eigvalsh fp64 of Gram (cuSOLVER)"]
            fn(M[:1])
            sync(device)
            ms = timer.run(lambda: fn(M), 1)[0]
            row["eigvalsh fp64 of Gram (MAGMA)"] = {"ms_per_matrix": ms / sample}
        except Exception as e:
            row["eigvalsh fp64 of Gram (MAGMA)"] = repr(e)[:200]
        finally:
            torch.backends.cuda.preferred_linalg_library(saved)
        out[f"{shape[0]}x{shape[1]} (x{shapes.count(shape)} in the model)"] = row
        print(f"rank gpu {shape}: {row}", file=sys.stderr, flush=True)
    return out


def bench_ortho_all(shapes, device, reps):
    """The orthogonalization alone of every matrix of the model (bf16, 5 steps), ms per call (CUDA events,
    median): optim's stacks together (Triton on CUDA) and one stack at a time on the torch path, each peer
    one stack at a time; and how far optim's Triton result is from the torch path's (relative Frobenius)."""
    timer = Timer(device)
    g = torch.Generator(device="cpu").manual_seed(1)
    stacks = [(torch.randn((shapes.count(s), *s), generator=g) * 1e-3).to(device) for s in sorted(set(shapes))]
    out = {}

    def torch_path(method):
        saved = os.environ.get(triton_ns.ENV_SWITCH)
        os.environ[triton_ns.ENV_SWITCH] = "0"
        try:
            return [orthogonalize(S, method, 5, "bf16") for S in stacks]
        finally:
            if saved is None:
                del os.environ[triton_ns.ENV_SWITCH]
            else:
                os.environ[triton_ns.ENV_SWITCH] = saved

    fns = {
        "optim newton_schulz (stacks together)": lambda: orthogonalize_stacks(stacks, "newton_schulz", 5, "bf16"),
        "optim newton_schulz torch path (per stack)": lambda: torch_path("newton_schulz"),
        "optim polar_express (stacks together)": lambda: orthogonalize_stacks(stacks, "polar_express", 5, "bf16"),
        "optim polar_express torch path (per stack)": lambda: torch_path("polar_express"),
    }
    for label, fn in PEER_ORTHO.items():
        fns[f"peer: {label}"] = lambda fn=fn: [fn(S) for S in stacks]
    for name, fn in fns.items():
        try:
            for _ in range(3):
                fn()
            sync(device)
            out[name] = statistics.median(timer.run(fn, reps))
        except Exception as e:  # a peer that fails here must not cost the rest
            out[name] = repr(e)
    for method in ("newton_schulz", "polar_express"):
        new, ref = orthogonalize_stacks(stacks, method, 5, "bf16"), torch_path(method)
        out[f"{method}: max rel diff, stacks together vs torch path"] = max(
            float((a.float() - b.float()).norm() / b.float().norm()) for a, b in zip(new, ref))
        out[f"{method}: triton used"] = bool(triton_ns.available(stacks[0]))
    return out


def _erank_from_s(s):
    p = s / s.sum(-1, keepdim=True)
    return torch.exp(-torch.special.xlogy(p, p).sum(-1))


def bench_pieces(shapes, device, reps, slow_limit_s, only=None):
    """Each piece on each distinct shape stack; ms per call (median)."""
    timer = Timer(device)
    out = {}
    src = NoiseSource(0)
    for shape in sorted(set(shapes)):
        B = shapes.count(shape)
        X = torch.randn((B, *shape), device=device) * 1e-3
        flat = X.abs().reshape(B, -1)
        k = math.ceil(0.95 * flat.shape[1])
        pieces = {
            "newton_schulz bf16": lambda: orthogonalize(X, "newton_schulz", 5, "bf16"),
            "polar_express bf16": lambda: orthogonalize(X, "polar_express", 5, "bf16"),
            "cubic reortho bf16 (3)": lambda: cubic_newton_schulz(X, 3, "bf16"),
            "gaussian draw (per-matrix seeds)": lambda: src.gaussian(shape, device, 1, list(range(B))),
            "isotropic noise": lambda: isotropic(X),
            "polar noise bf16": lambda: haar_polar(X),
            "qr cholesky fp64 (trsm)": lambda: _qr_with("solve")(X),
            "qr cholesky fp64 (R^-1 then matmul)": lambda: _qr_with("inverse")(X),
            "qr householder fp32": lambda: haar_qr(X, "householder"),
            "gram fp64": lambda: gram64(X),
            "nolah select kthvalue": lambda: flat.kthvalue(k, dim=1),
            "nolah select bitwise search": lambda: kth_smallest_nonneg(flat, k, "search"),
            "nolah select topk": lambda: kth_smallest_nonneg(flat, k, "topk"),
        }
        row = {f"nolah select {m} equal (bitwise)": float(torch.equal(flat.kthvalue(k, dim=1).values,
                                                                       kth_smallest_nonneg(flat, k, m)))
               for m in ("search", "topk")}
        Q = _qr_with("solve")(X).double()
        Qt = Q.mT @ Q if shape[0] >= shape[1] else Q @ Q.mT
        row["qr cholesky max |QtQ - I|"] = float((Qt - torch.eye(Qt.shape[-1], device=device, dtype=Qt.dtype)).abs().max())
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
        del X, flat
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
    ap.add_argument("--gaps", default="auto",
                    help="comma-separated gaps (ms of device work between optimizer steps); 'auto': 0 and the size's "
                         "forward/backward time (GAP_MS), with gap 0 for the Muon rows only")
    ap.add_argument("--rank-workers", default="1,4,8,15", help="host pool sizes for the rank measurement piece")
    ap.add_argument("--peers", default=None, help="folder with the public kernels' files (benchmarks/peers.py)")
    ap.add_argument("--peer-commits", default="", help="recorded in the JSON: where the peer files came from")
    ap.add_argument("--ortho-reps", type=int, default=20)
    ap.add_argument("--rank-gpu", action="store_true", help="time device calls for the effective rank (first size)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, a few steps (seconds)")
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.sizes, args.iters, args.budget, args.piece_reps = "cpu", "tiny", 31, 0.5, 2
        args.rank_workers = "1,2"

    device = torch.device(args.device)
    if args.peers:
        PEER_ORTHO.update(peers.orthogonalizers(peers.load(args.peers)))
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
        "rank_workers_default": optim.rank.default_workers(),
        "host_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "blas_single_threaded": optim.rank.blas_single_threaded(),
        "triton": getattr(getattr(triton_ns, "triton", None), "__version__", None),
        "optim_triton_kernels": triton_ns.available(torch.empty(0, device=device)),
        "peers": sorted(PEER_ORTHO),
        "peer_commits": args.peer_commits,
        "cpu": _cpu_name(),
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
        if args.gaps == "auto":
            plan = [(GAP_MS[size], None), (0.0, ("Muon", "Muon (no rank check)", "Muon (no rank check, torch path)",
                                                 "Muon (no rank check, unfused step)", "torch.optim.Muon") + tuple(f"peer: {k}" for k in PEER_ORTHO))]
        else:
            plan = [(float(g), None) for g in args.gaps.split(",")]
        for gap, only_rows in plan:
            filler = Filler(device, gap)
            suffix = "" if gap == plan[0][0] else f" [gap {gap:g} ms]"
            for label, factory, rank_every in configs(args.quick, args.configs):
                if only_rows is not None and label not in only_rows:
                    continue
                t0 = time.perf_counter()
                try:
                    r = bench_optimizer(factory, rank_every, params, grads, device, args.iters, args.warmup,
                                        args.budget, filler)
                except Exception as e:  # record and go on: one failing row must not cost the others
                    entry["optimizers"][label + suffix] = {"error": repr(e)}
                    print(f"[{size}] {label}{suffix}: FAILED {e!r}", file=sys.stderr, flush=True)
                    continue
                r["wall_s"] = round(time.perf_counter() - t0, 2)
                entry["optimizers"][label + suffix] = r
                print(f"[{size}] {label}{suffix}: {r['ms_per_step']:.2f} ms/step ({r['steps_timed']} steps)",
                      file=sys.stderr, flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            del filler
        opts = entry["optimizers"]
        for key, r in opts.items():
            base_key = "Muon" + (key[key.index(" [gap"):] if " [gap" in key else "")
            if "ms_per_step" in r and "ms_per_step" in opts.get(base_key, {}):
                r["x_muon"] = r["ms_per_step"] / opts[base_key]["ms_per_step"]
            nr_key = "Muon (no rank check)" + (key[key.index(" [gap"):] if " [gap" in key else "")
            if "ms_per_step" in r and "ms_per_step" in opts.get(nr_key, {}):
                r["x_muon_no_rank"] = r["ms_per_step"] / opts[nr_key]["ms_per_step"]
            tm_key = "torch.optim.Muon" + (key[key.index(" [gap"):] if " [gap" in key else "")
            if "ms_per_step" in r and "ms_per_step" in opts.get(tm_key, {}):
                r["torch_muon_over_this"] = opts[tm_key]["ms_per_step"] / r["ms_per_step"]
        del params, grads
        entry["orthogonalize_all_ms"] = bench_ortho_all(shapes, device, args.ortho_reps)
        print(f"[{size}] orthogonalization alone: {entry['orthogonalize_all_ms']}", file=sys.stderr, flush=True)
        if args.rank_gpu and size == sizes[0]:
            entry["rank_gpu_candidates"] = bench_rank_gpu(shapes, device)
        if not args.no_pieces:
            only = [w.strip() for w in args.pieces.split(",")] if args.pieces else None
            entry["pieces_ms"] = bench_pieces(shapes, device, args.piece_reps, 1.0, only)
            workers = [int(w) for w in args.rank_workers.split(",") if w.strip()]
            entry["rank_measurement"] = bench_rank_host(shapes, device, workers)
            print(f"[{size}] rank measurement: {entry['rank_measurement']}", file=sys.stderr, flush=True)
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


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
            cells.append("-" if r is None or "ms_per_step" not in r else
                         f"{r['ms_per_step']:.2f} ({r.get('x_muon', float('nan')):.2f}x; torch.optim.Muon/this "
                         f"{r.get('torch_muon_over_this', float('nan')):.2f})")
        print(f"| {lab} | " + " | ".join(cells) + " |")
    for s in result["sizes"]:
        oa = result["sizes"][s].get("orthogonalize_all_ms")
        if oa:
            print(f"\northogonalization of all {result['sizes'][s]['matrices']} matrices at {s}, ms:")
            for k, v in oa.items():
                print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
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
