"""Newton-Schulz / Polar Express over stacks of matrices with Triton kernels that use the symmetry of X X^T.

One quintic step is A = X X^T, B = b A + c A A, X <- a X + B X. A and B are symmetric, so the two
products that make them need only the tiles on and below the diagonal: `_sym_kernel` computes
alpha X X^T + beta Y for a stack of wide X (m x k, m <= k) and a symmetric Y, one program per
lower-triangular tile (a triangular grid: no program starts only to return), and writes every
off-diagonal tile twice (itself and its mirror). That is (nt + 1) / (2 nt) of the multiply-adds of
the full product (nt tiles per side: 0.56 at m = 768 with 128-wide tiles). The third product B X is
a general one and stays with cuBLAS (`torch.baddbmm`).

All stacks of one optimizer step whose small side is the same (GPT: every hidden matrix has the model
width as its small side) share one A/B buffer, so the middle product runs as one launch over all of
them (72 matrices at GPT-124M), and each first product as one launch per distinct long side.

Used by `optim.orthogonalize.orthogonalize_stacks` on CUDA, for bf16 iterations, when Triton imports;
everywhere else (CPU, fp32 iterations, no Triton, `OPTIM_TRITON=0`) the torch path runs, unchanged.
The kernels compute in bf16 with float32 accumulation, as cuBLAS does for the torch path, but in another
order: the results agree with the torch path to bf16 rounding, not bitwise (tests/test_optim_triton.py).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:  # Triton is optional: CPU installs and old GPUs run the torch path
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except Exception:  # pragma: no cover - depends on the install
    HAVE_TRITON = False

ENV_SWITCH = "OPTIM_TRITON"  # "0" turns the kernels off (the torch path, bitwise as before)


def available(t: Tensor) -> bool:
    """Whether the Triton path can run on t's device: CUDA (compute capability >= 8.0), Triton importable,
    and not switched off by OPTIM_TRITON=0."""
    if not HAVE_TRITON or os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    if t.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    if t.device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(t.device)
        if major < 8:  # bf16 tensor cores
            return False
    return True


if HAVE_TRITON:

    def _configs():
        # (tile, k-step, pipeline stages, warps): square tiles (the triangular grid needs them); the 128-wide
        # ones suit m = 768 / 1024 (GPT widths), the 64-wide ones small or odd m
        shapes = [(128, 64, 3, 8), (128, 64, 4, 8), (128, 64, 4, 4), (128, 128, 3, 8), (128, 32, 4, 8),
                  (64, 64, 4, 4), (64, 128, 3, 4), (64, 32, 5, 4)]
        return [triton.Config({"BLOCK": b, "BLOCK_K": k}, num_stages=s, num_warps=w) for b, k, s, w in shapes]

    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter (CPU development): one small config
        _CONFIGS = [triton.Config({"BLOCK": 32, "BLOCK_K": 32})]
    else:
        _CONFIGS = _configs()

    # NBQ (the stack's size, bucketed) is in the key: the best tile for a stack of 2 is not that for 72
    @triton.autotune(configs=_CONFIGS, key=["M", "K", "HAS_Y", "NBQ", "sxk"], cache_results=True)
    @triton.jit
    def _sym_kernel(
        X_ptr, Y_ptr, C_ptr,
        M, K, NBQ,
        sxb, sxm, sxk,
        syb, sym, syn,
        scb, scm, scn,
        alpha, beta,
        HAS_Y: tl.constexpr,
        BLOCK: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """C[b] = alpha * X[b] @ X[b]^T (+ beta * Y[b]); one program per lower-triangular tile of C[b]."""
        nt = tl.cdiv(M, BLOCK)
        tiles = nt * (nt + 1) // 2
        pid = tl.program_id(0)
        b = pid // tiles
        t = pid % tiles
        # t = i (i + 1) / 2 + j with 0 <= j <= i: invert by a float square root, then correct by one
        i = ((tl.sqrt(8.0 * t.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
        i = tl.where(i * (i + 1) // 2 > t, i - 1, i)
        i = tl.where((i + 1) * (i + 2) // 2 <= t, i + 1, i)
        j = t - i * (i + 1) // 2

        bb = b.to(tl.int64)
        X_ptr += bb * sxb
        C_ptr += bb * scb
        offs_m = i * BLOCK + tl.arange(0, BLOCK)
        offs_n = j * BLOCK + tl.arange(0, BLOCK)
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < M
        a_ptrs = X_ptr + offs_m[:, None] * sxm + offs_k[None, :] * sxk
        b_ptrs = X_ptr + offs_n[:, None] * sxm + offs_k[None, :] * sxk
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k in tl.range(0, tl.cdiv(K, BLOCK_K)):
            kmask = offs_k[None, :] < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & kmask, other=0.0)
            bt = tl.load(b_ptrs, mask=mask_n[:, None] & kmask, other=0.0)
            acc = tl.dot(a, tl.trans(bt), acc)
            a_ptrs += BLOCK_K * sxk
            b_ptrs += BLOCK_K * sxk
        acc = acc * alpha
        if HAS_Y:
            y_ptrs = Y_ptr + bb * syb + offs_m[:, None] * sym + offs_n[None, :] * syn
            y = tl.load(y_ptrs, mask=mask_m[:, None] & mask_n[None, :], other=0.0)
            acc += beta * y.to(tl.float32)
        out = acc.to(C_ptr.dtype.element_ty)
        c_ptrs = C_ptr + offs_m[:, None] * scm + offs_n[None, :] * scn
        tl.store(c_ptrs, out, mask=mask_m[:, None] & mask_n[None, :])
        if i != j:  # the mirror tile above the diagonal
            ct_ptrs = C_ptr + offs_n[:, None] * scm + offs_m[None, :] * scn
            tl.store(ct_ptrs, tl.trans(out), mask=mask_n[:, None] & mask_m[None, :])


def sym_mm(X: Tensor, out: Tensor, Y: Tensor | None = None, alpha: float = 1.0, beta: float = 0.0) -> Tensor:
    """out[b] = alpha * X[b] @ X[b]^T + beta * Y[b] for a stack X (B, m, k) and symmetric Y (B, m, m).

    out and Y may be slices of larger stacks (any strides); X's last dim should be contiguous for speed.
    """
    if X.ndim != 3 or out.ndim != 3 or out.shape != (X.shape[0], X.shape[1], X.shape[1]):
        raise ValueError(f"sym_mm: X (B, m, k) and out (B, m, m) expected, got {tuple(X.shape)} and {tuple(out.shape)}")
    Bn, M, K = X.shape
    if Bn == 0:
        return out
    has_y = Y is not None
    Yt = Y if has_y else out
    grid = lambda meta: (Bn * (triton.cdiv(M, meta["BLOCK"]) * (triton.cdiv(M, meta["BLOCK"]) + 1) // 2),)
    nbq = 1 << max(0, (Bn - 1).bit_length())  # the next power of two
    _sym_kernel[grid](
        X, Yt, out, M, K, nbq,
        X.stride(0), X.stride(1), X.stride(2),
        Yt.stride(0), Yt.stride(1), Yt.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        float(alpha), float(beta), HAS_Y=has_y,
    )
    return out


def quintic_stacks(Xs: list[Tensor], coefficients: list[tuple[float, float, float]]) -> list[Tensor]:
    """Run X <- a X + (b A + c A^2) X, A = X X^T, for each (a, b, c) on each normalised bf16 stack in Xs
    (each (B_i, r_i, c_i), contiguous; a tall one is iterated as its transpose, X^T <- a X^T + (b A +
    c A^2) X^T with A = X^T X, without moving it). Stacks with the same small side share the middle
    product's launch. Returns new stacks in the inputs' layout (the inputs are overwritten as scratch)."""
    by_m: dict[int, list[int]] = {}
    for idx, X in enumerate(Xs):
        by_m.setdefault(min(X.shape[1:]), []).append(idx)
    Xs = list(Xs)
    for m, members in by_m.items():
        sizes = [Xs[i].shape[0] for i in members]
        total = sum(sizes)
        dev, dt = Xs[members[0]].device, Xs[members[0]].dtype
        A = torch.empty((total, m, m), device=dev, dtype=dt)
        Bm = torch.empty_like(A)
        starts = [sum(sizes[:q]) for q in range(len(sizes))]
        scratch = [torch.empty_like(Xs[i]) for i in members]
        tall = {i: Xs[i].shape[1] > Xs[i].shape[2] for i in members}
        for a, b, c in coefficients:
            for q, i in enumerate(members):
                sym_mm(Xs[i].mT if tall[i] else Xs[i], A[starts[q] : starts[q] + sizes[q]])
            sym_mm(A, Bm, Y=A, alpha=c, beta=b)  # b A + c A A^T, A symmetric
            for q, i in enumerate(members):
                Bi = Bm[starts[q] : starts[q] + sizes[q]]
                if tall[i]:  # (a X^T + B X^T)^T = a X + X B  (B symmetric)
                    torch.baddbmm(Xs[i], Xs[i], Bi, beta=a, out=scratch[q])
                else:
                    torch.baddbmm(Xs[i], Bi, Xs[i], beta=a, out=scratch[q])
                Xs[i], scratch[q] = scratch[q], Xs[i]
    return Xs
