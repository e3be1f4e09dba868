"""Seed 004's measurements, on captured real gradients and momenta beside synthetic matrices of the same
shapes (the DisTrO study's `measure` phase).

Inputs: capture files written by the trainer (trainer/capture.py: `captures/step<N>.pt`, a flat dict
`grad/<name>` / `momentum/<name>` -> 2-D float32 tensor). Every captured matrix is a "real" tensor
(source `grad` or `momentum`); for every distinct shape one Gaussian N(0, 1) matrix (source
`gaussian`) and low-rank products A B with A (m x r), B (r x n) Gaussian (sources `lowrank<r>`, r in
`ranks`, r < min(m, n)) are drawn from `seed`; a 64 x 64 Gaussian (source `gaussian64`) is the seed's
own input. Compression: optim.dct (chunked orthonormal DCT, top-k per chunk, decode on one process).
Orthogonalization: optim.orthogonalize (`orthogonalizer`, fp32; polar_express is what the seed used).

Tables (long CSV: table, source, tensor, step, rows, cols, topk, orth, target, metric, value):
- `quality` (seed's Experiment 1), per top-k: orth=none compresses x and compares x^ with x (target
  `input`); orth=pre compresses o = orth(x) and compares o^ with o (target `self`, like with like) and
  with x (target `input`, the direction). Metrics: `rel_err` = || a/||a|| - b/||b|| || (both normalized,
  so scales never enter), `rel_err_raw` = ||a - b|| / ||b|| (the seed's unnormalized error, which for
  orth=pre/input compares tensors of different scales), `sign_agree` (fraction of equal signs),
  `cosine`.
- `condition` (Experiment 2): `cond` of x and `cond_recon` of x^ (sigma_max / sigma_min, inf when
  sigma_min = 0), `smin_rel_recon` = sigma_min / sigma_max of x^, `dead_frac_recon` = fraction of
  singular values of x^ below 1e-6 sigma_max.
- `energy` (Experiments 3 and 4): `energy` = fraction of ||x||^2 in the top-k coefficients per chunk,
  orth=none for x and orth=pre for orth(x).
- `spectrum`: `stable_rank_frac` (||x||_F^2 / sigma_1^2 / min(m, n)), `eff_rank_frac` (exp of the
  entropy of sigma / sum sigma, / min(m, n)), `top1_energy` (sigma_1^2 / sum sigma^2), `smin_rel`.
The spectra themselves (sigma_i / sigma_1 against i / min(m, n)) go to a second CSV.

`section_markdown` turns the tables into a Markdown section: each table with the seed's numbers quoted
beside ours, and sentences, computed from the numbers, on where real gradients differ from synthetic.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from analysis.io import fmt, md_table
from optim import dct as D
from optim.orthogonalize import orthogonalize

TOPK = (0.01, 0.05, 0.10, 0.25)
COND_TOPK = (0.05, 0.10, 0.25)
RANKS = (1, 4, 16, 64)
REAL = ("grad", "momentum")
COLUMNS = ["table", "source", "tensor", "step", "rows", "cols", "topk", "orth", "target", "metric", "value"]

# The seed's numbers (seed 004, random and synthetic matrices), quoted as text beside ours.
SEED_QUALITY = {"rel_err": ("53-96%", "93-100%"), "sign_agree": ("67-82%", "64-81%"),
                "cosine": ("0.53-0.85", "0.42-0.82")}  # (without orth, with orth)
SEED_CONDITION = {0.05: ("101.5", "4,885,288"), 0.10: ("101.5", "4,526,313"), 0.25: ("101.5", "3,811")}  # 64x64
SEED_ENERGY_GAUSS = {0.01: ("1.3%", "1.5%"), 0.05: ("5.5%", "5.5%"), 0.25: ("24.9%", "25.0%")}  # 64x64 Gaussian
SEED_ENERGY_LOWRANK = {1: ("5.1%", "11.0%"), 4: ("10.8%", "10.7%"), 16: ("11.1%", "10.6%"), 64: ("11.7%", "10.9%")}


# --------------------------------------------------------------------------- inputs
def load_captures(paths: Sequence[str | Path], what: Sequence[str] = REAL, max_per_file: int = 0) -> list[dict]:
    """Real matrices from capture files: dicts source, tensor (name), step, x (float64 2-D)."""
    out = []
    for path in sorted(map(str, paths)):
        stem = Path(path).stem
        step = int(stem[4:]) if stem.startswith("step") and stem[4:].isdigit() else -1
        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a capture file holds a dict of tensors, got {type(d).__name__}")
        keys = sorted(k for k in d if k.split("/", 1)[0] in what and d[k].ndim >= 2)
        if max_per_file and len(keys) > max_per_file:  # evenly spaced, deterministic
            keys = [keys[int(i)] for i in np.linspace(0, len(keys) - 1, max_per_file)]
        run = run_label(path, paths)
        for k in keys:
            src, name = k.split("/", 1)
            x = d[k].double()
            out.append({"source": src, "tensor": f"{run}:{name}" if run else name, "step": step,
                        "x": x.reshape(x.shape[0], -1)})
    return out


def run_label(path: str | Path, paths: Sequence[str | Path]) -> str:
    """What tells this capture file's run from the others' (runs/.../<seed dir>/captures/step<N>.pt):
    the part of its run directory that differs between the files, '' when all files come from one run.
    Without it two seeds' matrices would share (tensor, step) and be counted as one."""
    runs = sorted({str(Path(p).resolve().parent.parent) for p in paths})
    if len(runs) <= 1:
        return ""
    parts = [Path(r).parts for r in runs]
    first = next((i for i in range(min(map(len, parts))) if len({q[i] for q in parts}) > 1), 0)
    return "/".join(Path(str(Path(path).resolve().parent.parent)).parts[first:])


def synthetic_like(shapes: Iterable[tuple[int, int]], seed: int = 0, ranks: Sequence[int] = RANKS) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = [{"source": "gaussian64", "tensor": "64x64", "step": -1,
            "x": torch.randn(64, 64, generator=g, dtype=torch.float64)}]
    for m, n in sorted(set(shapes)):
        out.append({"source": "gaussian", "tensor": f"{m}x{n}", "step": -1,
                    "x": torch.randn(m, n, generator=g, dtype=torch.float64)})
        for r in ranks:
            if r < min(m, n):
                a = torch.randn(m, r, generator=g, dtype=torch.float64)
                b = torch.randn(r, n, generator=g, dtype=torch.float64)
                out.append({"source": f"lowrank{r}", "tensor": f"{m}x{n}", "step": -1, "x": a @ b})
    return out


# --------------------------------------------------------------------------- metrics
def _compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return {"rel_err": float("nan"), "rel_err_raw": float("nan"), "sign_agree": float("nan"), "cosine": float("nan")}
    return {"rel_err": float((a / na - b / nb).norm()), "rel_err_raw": float((a - b).norm() / nb),
            "sign_agree": float((torch.sign(a) == torch.sign(b)).double().mean()),
            "cosine": float((a * b).sum() / (na * nb))}


def _svals(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.double())


def _cond_stats(s: torch.Tensor) -> dict:
    smax, smin = float(s[0]), float(s[-1])
    return {"cond": smax / smin if smin > 0 else float("inf"), "smin_rel": smin / smax if smax > 0 else float("nan"),
            "dead_frac": float((s < 1e-6 * smax).double().mean())}


def spectrum_stats(s: torch.Tensor) -> dict:
    k = s.numel()
    sq = s.square()
    p = s / s.sum()
    p = p[p > 0]
    return {"stable_rank_frac": float(sq.sum() / sq[0] / k), "eff_rank_frac": float(torch.exp(-(p * p.log()).sum()) / k),
            "top1_energy": float(sq[0] / sq.sum()), "smin_rel": float(s[-1] / s[0])}


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): the GPU when there is one, else the CPU; else the device named."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# cuSOLVER's driver for the GPU's float64 singular values (torch.linalg.svdvals(driver=...)); None: torch's
# choice (gesvdj, Jacobi, one matrix at a time above 32 x 32). Measured on an H200 on 768 x 768 R factors of
# GPT-124M gradients (benchmarks/distro_measure_gpu.py, benchmarks/results/distro_measure_h200_issue24_s2.json):
# gesvd 48.5 ms a matrix, max error 3e-16 sigma_max against LAPACK; gesvdj (torch's) 59.4 ms, 2e-13;
# gesvda 6.2 ms but sigma_min off by 4e-9 relative (approximate: the condition numbers need better).
GPU_SVD_DRIVER: str | None = "gesvd"
GPU_SVD_DRIVERS = (None, "gesvd", "gesvdj", "gesvda")


def svdvals_batched(x: torch.Tensor, workers: int = 0, driver: str | None = "default") -> torch.Tensor:
    """Singular values (descending) of a stack (B, m, n), in float64.

    A non-square stack is first reduced to its triangular QR factor (B, k, k), k = min(m, n), whose
    singular values are those of x (Householder QR is backward stable, unlike forming the Gram matrix).
    On a GPU the stack goes to torch.linalg.svdvals in one call (cuSOLVER). On the CPU, LAPACK's own
    threads are slow for matrices of this size (8 SVDs of 768 x 768 took 52 s with 2 threads and 2.8 s
    with 1 on the 2-core machine), so each matrix gets one thread and `workers` threads (0: all cores)
    take the matrices in parallel (torch releases the GIL inside LAPACK). `driver` (CUDA only): cuSOLVER's
    SVD driver, one of GPU_SVD_DRIVERS; "default" takes GPU_SVD_DRIVER.
    """
    x = x.double()
    m, n = x.shape[-2:]
    if x.device.type != "cpu":
        if driver == "default":
            driver = GPU_SVD_DRIVER
        if driver not in GPU_SVD_DRIVERS:
            raise ValueError(f"svd driver={driver!r} is not allowed; use one of {list(GPU_SVD_DRIVERS)}")
        r = x if m == n else torch.linalg.qr(x if m > n else x.mT, mode="r")[1]
        return torch.linalg.svdvals(r, driver=driver)

    def one(a: torch.Tensor) -> torch.Tensor:
        r = a if m == n else torch.linalg.qr(a if m > n else a.mT, mode="r")[1]
        return torch.linalg.svdvals(r)

    from concurrent.futures import ThreadPoolExecutor

    workers = workers or os.cpu_count() or 1
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max(1, min(workers, x.shape[0]))) as ex:
            return torch.stack(list(ex.map(one, x.unbind(0))))
    finally:
        torch.set_num_threads(old)


def _layout_chunks(x: torch.Tensor, L) -> torch.Tensor:
    """(B, rows, cols) -> (B * n_chunks, a, b): every matrix chunked as D.to_chunks chunks one."""
    bsz = x.shape[0]
    x = x.reshape(bsz, L.rows // L.a, L.a, L.cols // L.b, L.b)
    return x.permute(0, 1, 3, 2, 4).reshape(-1, L.a, L.b)


def _unchunk(c: torch.Tensor, L, bsz: int) -> torch.Tensor:
    x = c.reshape(bsz, L.rows // L.a, L.cols // L.b, L.a, L.b).permute(0, 1, 3, 2, 4)
    return x.reshape(bsz, L.rows, L.cols)


def compress_decode_batched(x: torch.Tensor, chunk: int, topk_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded x^, top-k energy fraction per matrix) for a stack (B, m, n): D.compress_decode and
    D.topk_energy_fraction of each matrix, in x's dtype (float64 here)."""
    bsz, m, n = x.shape
    L = D.make_layout((m, n), chunk, topk_frac)
    coef = D.dct_chunks(_layout_chunks(x, L))  # (B * n_chunks, a * b)
    idx, vals = D.topk(coef, L.k)
    energy = (vals.square().reshape(bsz, -1).sum(-1) / coef.square().reshape(bsz, -1).sum(-1))
    dense = D.scatter(idx, vals, L.chunk_numel)
    return _unchunk(D.idct_chunks(dense, L.a, L.b), L, bsz), energy


def _compare_batched(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """_compare for each pair of matrices of two stacks (B, m, n): dict of (B,) tensors."""
    na, nb = a.norm(dim=(-2, -1)), b.norm(dim=(-2, -1))
    ok = (na > 0) & (nb > 0)
    sa, sb = na.clamp(min=1e-300)[:, None, None], nb.clamp(min=1e-300)[:, None, None]
    nan = torch.full_like(na, float("nan"))
    out = {"rel_err": (a / sa - b / sb).norm(dim=(-2, -1)), "rel_err_raw": (a - b).norm(dim=(-2, -1)) / nb,
           "sign_agree": (torch.sign(a) == torch.sign(b)).double().mean(dim=(-2, -1)),
           "cosine": (a * b).sum(dim=(-2, -1)) / (na * nb)}
    return {k: torch.where(ok, v, nan) for k, v in out.items()}


def _batches(items: list[dict], max_bytes: float) -> list[list[int]]:
    """Indices of items grouped by shape, in batches of at most max_bytes of float64 input each."""
    by_shape: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        by_shape.setdefault(tuple(it["x"].shape), []).append(i)
    out = []
    for (m, n), idx in by_shape.items():
        per = max(1, int(max_bytes // (8 * m * n)))
        out.extend(idx[j:j + per] for j in range(0, len(idx), per))
    return out


def measure(items: list[dict], topk: Sequence[float] = TOPK, cond_topk: Sequence[float] = COND_TOPK, chunk: int = 64,
            orthogonalizer: str = "polar_express", ns_steps: int = 5, device: str | torch.device | None = "auto",
            workers: int = 0, max_batch_bytes: float = 2.0e8, log=None, svd_driver: str | None = "default"
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tables, spectra) for every item (see the module docstring), the same rows in the same order as
    measure_reference, computed over same-shape stacks: on the GPU when there is one (device 'auto'),
    else on the CPU with `workers` threads for the SVDs (0: all cores). Everything on x is float64; the
    orthogonalizer runs in float32 as in the reference (full float32: TF32 is switched off). svd_driver:
    cuSOLVER's SVD driver on the GPU (see svdvals_batched)."""
    dev = pick_device(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference's float32 is IEEE float32
    fs = sorted(set(topk) | set(cond_topk))
    res: dict[int, dict] = {}
    t0 = time.perf_counter()
    try:
        for batch in _batches(items, max_batch_bytes):
            x = torch.stack([items[i]["x"] for i in batch]).to(dev, torch.float64)
            o = orthogonalize(x.float(), orthogonalizer, ns_steps, "fp32").double()
            s = svdvals_batched(x, workers, svd_driver)
            per = {"s": s, "f": {}}
            for f in fs:
                xh, ex = compress_decode_batched(x, chunk, f)
                r = {}
                if f in topk:
                    oh, eo = compress_decode_batched(o, chunk, f)
                    r["none/input"] = _compare_batched(xh, x)
                    r["pre/self"] = _compare_batched(oh, o)
                    r["pre/input"] = _compare_batched(oh, x)
                    r["energy"] = (ex, eo)
                if f in cond_topk:
                    r["s_recon"] = svdvals_batched(xh, workers, svd_driver)
                per["f"][f] = r
            per = _to_cpu(per)
            for j, i in enumerate(batch):
                res[i] = _pick(per, j)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if log is not None:
        log.info("measured %d matrices on %s in %.1f s", len(items), dev, time.perf_counter() - t0)
    return _rows(items, res, topk, cond_topk)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def _pick(obj, j: int):
    """Matrix j of a batch's results."""
    if isinstance(obj, torch.Tensor):
        return obj[j]
    if isinstance(obj, dict):
        return {k: _pick(v, j) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_pick(v, j) for v in obj)
    return obj


def _rows(items, res, topk, cond_topk) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows measure_reference writes, in its order, from the per-matrix results."""
    rows, spectra = [], []
    for i, it in enumerate(items):
        m, n = it["x"].shape
        base = {"source": it["source"], "tensor": it["tensor"], "step": it["step"], "rows": m, "cols": n}

        def add(table, metric, value, topk=float("nan"), orth="", target=""):
            rows.append({**base, "table": table, "topk": topk, "orth": orth, "target": target, "metric": metric,
                         "value": float(value)})

        r = res[i]
        s = r["s"]
        for k, v in spectrum_stats(s).items():
            add("spectrum", k, v)
        cs = _cond_stats(s)
        for f in sorted(set(topk) | set(cond_topk)):
            rf = r["f"][f]
            if f in topk:
                for key in ("none/input", "pre/self", "pre/input"):
                    orth, target = key.split("/")
                    for metric in ("rel_err", "rel_err_raw", "sign_agree", "cosine"):
                        add("quality", metric, rf[key][metric], f, orth, target)
                ex, eo = rf["energy"]
                add("energy", "energy", ex, f, "none")
                add("energy", "energy", eo, f, "pre")
            if f in cond_topk:
                _add_condition(add, f, cs, _cond_stats(rf["s_recon"]))
        spectra.extend(_spectrum_rows(base, s))
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(spectra)


def _add_condition(add, f, cs: dict, cr: dict) -> None:
    """The condition table's rows at top-k fraction f: the input's condition number (cs) and the
    reconstruction's (cr)."""
    add("condition", "cond", cs["cond"], f)
    add("condition", "cond_recon", cr["cond"], f)
    add("condition", "smin_rel_recon", cr["smin_rel"], f)
    add("condition", "dead_frac_recon", cr["dead_frac"], f)


def _spectrum_rows(base: dict, s) -> list[dict]:
    """The singular values s (descending) relative to the largest, one row each."""
    rel = (s / s[0]).tolist() if s[0] > 0 else [float("nan")] * s.numel()
    return [{**base, "i": i, "i_frac": (i + 0.5) / len(rel), "sigma_rel": v} for i, v in enumerate(rel)]


def measure_reference(items: list[dict], topk: Sequence[float] = TOPK, cond_topk: Sequence[float] = COND_TOPK, chunk: int = 64,
            orthogonalizer: str = "polar_express", ns_steps: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tables, spectra), one matrix at a time in float64 on the CPU: the original implementation, kept as
    the reference `measure` is tested against (tests/test_distro_measure.py)."""
    rows, spectra = [], []
    for it in items:
        x = it["x"]
        m, n = x.shape
        base = {"source": it["source"], "tensor": it["tensor"], "step": it["step"], "rows": m, "cols": n}

        def add(table, metric, value, topk=float("nan"), orth="", target=""):
            rows.append({**base, "table": table, "topk": topk, "orth": orth, "target": target, "metric": metric,
                         "value": value})

        o = orthogonalize(x.float(), orthogonalizer, ns_steps, "fp32").double()
        s = _svals(x)
        for k, v in spectrum_stats(s).items():
            add("spectrum", k, v)
        cs = _cond_stats(s)
        for f in sorted(set(topk) | set(cond_topk)):
            xh = D.compress_decode(x, chunk, f).double()
            if f in topk:
                oh = D.compress_decode(o, chunk, f).double()
                for metric, v in _compare(xh, x).items():
                    add("quality", metric, v, f, "none", "input")
                for metric, v in _compare(oh, o).items():
                    add("quality", metric, v, f, "pre", "self")
                for metric, v in _compare(oh, x).items():
                    add("quality", metric, v, f, "pre", "input")
                add("energy", "energy", D.topk_energy_fraction(x, chunk, f), f, "none")
                add("energy", "energy", D.topk_energy_fraction(o, chunk, f), f, "pre")
            if f in cond_topk:
                _add_condition(add, f, cs, _cond_stats(_svals(xh)))
        spectra.extend(_spectrum_rows(base, s))
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(spectra)


# --------------------------------------------------------------------------- the section
def _med(df: pd.DataFrame, **sel) -> float:
    q = df
    for k, v in sel.items():
        q = q[np.isclose(q[k], v)] if isinstance(v, float) else q[q[k] == v]
    vals = q["value"].replace([np.inf, -np.inf], np.nan)
    if vals.isna().all() and (q["value"] == np.inf).any():
        return float("inf")
    return float(q["value"].median()) if len(q) else float("nan")


def _range(df: pd.DataFrame, pct: bool, **sel) -> str:
    q = df
    for k, v in sel.items():
        q = q[np.isclose(q[k], v)] if isinstance(v, float) else q[q[k] == v]
    if not len(q):
        return ""
    v = q["value"]
    f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.2f}")
    return f"{f(v.median())} [{f(v.min())}-{f(v.max())}]"


def _cmp_word(a: float, b: float, tol: float = 0.1) -> str:
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "not comparable with"
    r = a / b
    return "higher than" if r > 1 + tol else "lower than" if r < 1 - tol else "about the same as"


def _big(x: float) -> str:
    if not math.isfinite(x):
        return "inf"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def section_markdown(tables: pd.DataFrame, title: str = "Seed 004 on real gradients") -> str:
    t = tables
    present = list(dict.fromkeys(t["source"]))
    real = [s for s in REAL if s in present]
    synth = [s for s in present if s not in REAL]
    order = real + synth
    out = [f"## {title}\n"]
    n_real = t[t["source"].isin(real)].drop_duplicates(["source", "tensor", "step"]).shape[0]
    shapes = sorted({(int(r), int(c)) for r, c in t[t["source"].isin(real)][["rows", "cols"]].values})
    out.append(f"{n_real} captured matrices ({', '.join(real) or 'none'}; shapes {', '.join(f'{a}x{b}' for a, b in shapes)}), "
               f"beside synthetic matrices of the same shapes ({', '.join(synth)}). Medians [min-max] over matrices.\n")

    # Experiment 1
    q = t[t["table"] == "quality"]
    out.append("### Compressed-and-decoded vs original (seed's Experiment 1)\n")
    out.append("Errors are between normalized tensors (like with like); `raw` is the seed's unnormalized error. "
               "`pre/self`: the orthogonalized tensor against its own decoding; `pre/input`: against the gradient.\n")
    hdr = ["source", "top-k", "orth/target", "rel. error", "raw error", "sign agreement", "cosine"]
    body = []
    for src in order:
        for f in sorted(q["topk"].dropna().unique()):
            for orth, target in (("none", "input"), ("pre", "self"), ("pre", "input")):
                sel = dict(source=src, topk=float(f), orth=orth, target=target)
                body.append([src, f"{100 * f:g}%", f"{orth}/{target}", _range(q[q.metric == "rel_err"], True, **sel),
                             _range(q[q.metric == "rel_err_raw"], True, **sel),
                             _range(q[q.metric == "sign_agree"], True, **sel), _range(q[q.metric == "cosine"], False, **sel)])
    body.append(["seed (synthetic)", "", "none", SEED_QUALITY["rel_err"][0], "", SEED_QUALITY["sign_agree"][0],
                 SEED_QUALITY["cosine"][0]])
    body.append(["seed (synthetic)", "", "pre (vs input, raw)", "", SEED_QUALITY["rel_err"][1], SEED_QUALITY["sign_agree"][1],
                 SEED_QUALITY["cosine"][1]])
    out.append(md_table(hdr, body))

    # Experiment 2
    c = t[t["table"] == "condition"]
    out.append("\n### Condition after compression (seed's Experiment 2)\n")
    body = []
    for src in order:
        for f in sorted(c["topk"].dropna().unique()):
            sel = dict(source=src, topk=float(f))
            a, b = _med(c[c.metric == "cond"], **sel), _med(c[c.metric == "cond_recon"], **sel)
            seed = SEED_CONDITION.get(round(float(f), 4), ("", ""))
            body.append([src, f"{100 * f:g}%", _big(a), _big(b), _big(b / a) if math.isfinite(a) and a > 0 else "",
                         fmt(_med(c[c.metric == "smin_rel_recon"], **sel), 3, sig=True),
                         fmt(_med(c[c.metric == "dead_frac_recon"], **sel), 3),
                         f"{seed[0]} -> {seed[1]}" if seed[0] else ""])
    out.append(md_table(["source", "top-k", "cond (orig)", "cond (recon)", "change", "sigma_min/sigma_max (recon)",
                         "dead fraction (recon)", "seed, 64x64"], body))

    # Experiments 3 and 4
    e = t[t["table"] == "energy"]
    out.append("\n### DCT energy in the top-k coefficients (seed's Experiments 3 and 4)\n")
    body = []
    for src in order:
        for f in sorted(e["topk"].dropna().unique()):
            sel = dict(source=src, topk=float(f))
            seed = ""
            if src == "gaussian64" and round(float(f), 4) in SEED_ENERGY_GAUSS:
                seed = " / ".join(SEED_ENERGY_GAUSS[round(float(f), 4)])
            if src.startswith("lowrank") and np.isclose(f, 0.10):
                r = int(src[7:])
                if r in SEED_ENERGY_LOWRANK:
                    seed = " / ".join(SEED_ENERGY_LOWRANK[r]) + " (64x64)"
            body.append([src, f"{100 * f:g}%", _range(e, True, orth="none", **sel), _range(e, True, orth="pre", **sel),
                         seed])
    out.append(md_table(["source", "top-k", "energy (orig)", "energy (orth)", "seed orig / orth"], body))

    # spectrum
    s = t[t["table"] == "spectrum"]
    out.append("\n### Singular-value spectrum\n")
    body = []
    for src in order:
        body.append([src] + [fmt(_med(s[s.metric == m], source=src), 3, sig=True)
                             for m in ("stable_rank_frac", "eff_rank_frac", "top1_energy", "smin_rel")])
    out.append(md_table(["source", "stable rank / min dim", "effective rank / min dim", "top-1 energy",
                         "sigma_min/sigma_max"], body))

    out.append("\n### Where real gradients differ from synthetic ones\n")
    out.extend(f"- {line}" + "\n" for line in findings(t, real))
    return "\n".join(out)


def findings(t: pd.DataFrame, real: Sequence[str]) -> list[str]:
    """Sentences computed from the tables (no conclusion is written in advance)."""
    lines = []
    e, q, c, s = (t[t["table"] == k] for k in ("energy", "quality", "condition", "spectrum"))
    fr = [f for f in sorted(e["topk"].dropna().unique())]
    f10 = min(fr, key=lambda f: abs(f - 0.10)) if fr else None
    for src in real:
        if f10 is None:
            break
        a = _med(e, source=src, topk=float(f10), orth="none")
        g = _med(e, source="gaussian", topk=float(f10), orth="none")
        ao = _med(e, source=src, topk=float(f10), orth="pre")
        go = _med(e, source="gaussian", topk=float(f10), orth="pre")
        lines.append(f"Top-{100 * f10:g}% DCT energy: real {src} matrices keep {100 * a:.1f}% of their energy, "
                     f"{_cmp_word(a, g)} Gaussian matrices of the same shapes ({100 * g:.1f}%; the seed: 11.7% at 64x64). "
                     f"Orthogonalizing first gives {100 * ao:.1f}% ({_cmp_word(ao, a)} without), Gaussian {100 * go:.1f}%.")
        qq = q[(q.source == src) & (q.metric == "cosine")]
        none = qq[(qq.orth == "none")].set_index(["tensor", "step", "topk"])["value"]
        pre_self = qq[(qq.orth == "pre") & (qq.target == "self")].set_index(["tensor", "step", "topk"])["value"]
        pre_in = qq[(qq.orth == "pre") & (qq.target == "input")].set_index(["tensor", "step", "topk"])["value"]
        j = none.index.intersection(pre_self.index)
        helped = int((pre_self[j] > none[j]).sum())
        gq = q[(q.source == "gaussian") & (q.metric == "cosine")]
        gn = gq[gq.orth == "none"].set_index(["tensor", "topk"])["value"]
        gp = gq[(gq.orth == "pre") & (gq.target == "self")].set_index(["tensor", "topk"])["value"]
        gj = gn.index.intersection(gp.index)
        lines.append(f"Like with like (cosine of the decoded tensor to what was compressed), orthogonalizing before "
                     f"compression helped in {helped}/{len(j)} real {src} cases (median cosine {pre_self.median():.3f} vs "
                     f"{none.median():.3f} without; to the gradient itself {pre_in.median():.3f}); on the Gaussian "
                     f"matrices in {int((gp[gj] > gn[gj]).sum())}/{len(gj)} (the seed: 0/20).")
        cr = c[(c.source == src)]
        if len(cr):
            f5 = float(sorted(cr["topk"].unique())[0])
            a, b = _med(cr[cr.metric == "cond"], topk=f5), _med(cr[cr.metric == "cond_recon"], topk=f5)
            ga = _med(c[(c.source == "gaussian") & (c.metric == "cond")], topk=f5)
            gb = _med(c[(c.source == "gaussian") & (c.metric == "cond_recon")], topk=f5)
            lines.append(f"At top-{100 * f5:g}% the median condition number of real {src} matrices goes from {_big(a)} to "
                         f"{_big(b)}; Gaussian ones from {_big(ga)} to {_big(gb)} (the seed, 64x64 Gaussian: 101.5 to 4.9M). "
                         f"Real {src} matrices are {'already' if a > 10 * ga else 'not'} much worse conditioned than "
                         f"Gaussian ones before compression.")
        st, gs = _med(s[s.metric == "stable_rank_frac"], source=src), _med(s[s.metric == "stable_rank_frac"], source="gaussian")
        t1, g1 = _med(s[s.metric == "top1_energy"], source=src), _med(s[s.metric == "top1_energy"], source="gaussian")
        low = [x for x in t["source"].unique() if str(x).startswith("lowrank")]
        closest = min(low, key=lambda x: abs(_med(s[s.metric == "stable_rank_frac"], source=x) - st)) if low else None
        lines.append(f"Spectrum: real {src} matrices have stable rank {100 * st:.1f}% of their smaller side (Gaussian "
                     f"{100 * gs:.1f}%) and put {100 * t1:.1f}% of their energy in the top singular value (Gaussian "
                     f"{100 * g1:.1f}%)" + (f"; by stable rank they are closest to {closest}." if closest else "."))
    if not real:
        lines.append("No real matrices were captured: only the synthetic rows are shown.")
    g = {f: _med(e, source="gaussian64", topk=float(f), orth="none") for f in fr}
    if g:
        parts = ", ".join(f"{100 * f:g}%: expected {100 * gaussian_topk_energy(f):.1f}%, measured {100 * v:.1f}%"
                          for f, v in g.items())
        seed = ", ".join(f"{100 * f:g}%: {v[0]}" for f, v in SEED_ENERGY_GAUSS.items())
        lines.append(f"For i.i.d. Gaussian entries the orthonormal DCT's coefficients are i.i.d. Gaussian too, and the "
                     f"top q of them by magnitude hold q + 2 t phi(t) of the energy (t = Phi^-1(1 - q/2)): {parts}. "
                     f"The seed's Gaussian energies ({seed}) are close to q itself, what a selection that ignores "
                     f"magnitude keeps, so its Experiments 3 and 4 did not measure top-k-by-magnitude energy as "
                     f"defined here; compare the seed's orig/orth differences, not its levels.")
    return lines


def gaussian_topk_energy(q: float) -> float:
    """Expected energy fraction of the top q (by magnitude) of i.i.d. N(0, 1) values."""
    from scipy.stats import norm

    t = norm.ppf(1 - q / 2)
    return float(q + 2 * t * norm.pdf(t))


def run(capture_paths: Sequence[str], tables_csv: str, spectra_csv: str, md: str, topk: Sequence[float] = TOPK,
        cond_topk: Sequence[float] = COND_TOPK, chunk: int = 64, orthogonalizer: str = "polar_express",
        seed: int = 0, what: Sequence[str] = REAL, max_per_file: int = 0, ranks: Sequence[int] = RANKS,
        title: str = "Seed 004 on real gradients", device: str = "auto", workers: int = 0, log=None,
        svd_driver: str | None = "default") -> pd.DataFrame:
    """Load the captures, add the synthetic matrices, measure (`device`: 'auto' = the GPU when there is
    one; `workers`: CPU threads for the SVDs, 0 = all cores) and write the tables and the section."""
    from analysis.io import atomic_write_text, write_csv

    for f in list(topk) + list(cond_topk):
        if not 0 < f <= 1:
            raise ValueError(f"topk={f!r} is not allowed; use fractions in (0, 1]")
    real = load_captures(capture_paths, what, max_per_file)
    items = real + synthetic_like([tuple(it["x"].shape) for it in real], seed, ranks)
    if log is not None:
        log.info("%d captured matrices loaded, %d in all with the synthetic ones", len(real), len(items))
    tables, spectra = measure(items, topk, cond_topk, chunk, orthogonalizer, device=device, workers=workers, log=log,
                              svd_driver=svd_driver)
    write_csv(tables, tables_csv)
    write_csv(spectra, spectra_csv)
    atomic_write_text(md, section_markdown(tables, title))
    return tables
