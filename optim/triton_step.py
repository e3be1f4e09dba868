"""The elementwise part of a Muon step in two Triton kernels per bucket (CUDA, float32 parameters).

Unfused, one step over a bucket of B same-shape float32 matrices moves (in passes over B fp32 matrices):
the momentum lerp (3), the Nesterov lerp into new tensors (3), their torch.stack (2), the gradients' norms
(1), the update's norm in the orthogonalizer (1), then after it the update's norm (0.5), its fp32 copy
(1.5) and the foreach add (3): ~15 passes, 5.1 GB at GPT-124M (85M weights), ~2 ms of an H200 step.

Fused:
- `momentum_nesterov`: B <- lerp(B, g, 1 - beta); U <- lerp(g, B, beta) (or B) written straight into the
  stack the orthogonalizer takes; per-block partial sums of g^2 and U^2 (5 passes, no allocation per
  matrix, no stack copy, no separate norm launches);
- `apply_update`: W <- W * decay + step * O read from the orthogonalizer's bf16 result (no fp32 copy),
  with the partial sums of O^2 (2.5 passes).

The matrices of a bucket are separate tensors (p, p.grad, the momentum buffers keep their own storage, so
state_dict and checkpoints are unchanged): a kernel reads them through a device table of their addresses,
one program per (block, matrix). The norms are sums of fixed per-block partials (no atomics): the same
inputs give the same bits on every run. The lerps are torch's (ATen Lerp.h: self + w (end - self) for
|w| < 0.5, else end - (end - self)(1 - w), both as fused multiply-adds), so the momentum matches the
foreach path; the sums run in another order than torch's norms (float32 rounding only).

Used by optim.Muon on CUDA when Triton runs (optim/triton_ns.py's `available`, so OPTIM_TRITON=0 turns
this off too; OPTIM_FUSED_STEP=0 this alone), for float32 parameters, unsharded, without the hooks that rewrite the momentum (NOLAH).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import triton_ns

import os

BLOCK = 4096  # elements per program: 144 programs per 768 x 768 matrix
ENV_SWITCH = "OPTIM_FUSED_STEP"  # "0": the foreach path (with the Newton-Schulz kernels still on)

if triton_ns.HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _lerp(self_, end, w, omw, SMALL: tl.constexpr):
        if SMALL:
            return tl.fma(w, end - self_, self_)
        return tl.fma(-(end - self_), omw, end)

    @triton.jit
    def _momentum_kernel(g_tab, b_tab, u_ptr, gsq_ptr, usq_ptr, N, NBLK,
                         w_m, omw_m, w_n, omw_n,
                         SMALL_M: tl.constexpr, NESTEROV: tl.constexpr, SMALL_N: tl.constexpr,
                         BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        gp = tl.load(g_tab + b).to(tl.pointer_type(tl.float32))
        bp = tl.load(b_tab + b).to(tl.pointer_type(tl.float32))
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        g = tl.load(gp + offs, mask=mask, other=0.0)
        m = tl.load(bp + offs, mask=mask, other=0.0)
        m = _lerp(m, g, w_m, omw_m, SMALL_M)
        tl.store(bp + offs, m, mask=mask)
        if NESTEROV:
            u = _lerp(g, m, w_n, omw_n, SMALL_N)
        else:
            u = m
        u = tl.where(mask, u, 0.0)
        tl.store(u_ptr + b.to(tl.int64) * N + offs, u, mask=mask)
        tl.store(gsq_ptr + b * NBLK + pid, tl.sum(g * g, axis=0))
        tl.store(usq_ptr + b * NBLK + pid, tl.sum(u * u, axis=0))

    @triton.jit
    def _update_kernel(w_tab, o_ptr, osq_ptr, N, NBLK, decay, step,
                       HAS_DECAY: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        wp = tl.load(w_tab + b).to(tl.pointer_type(tl.float32))
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        w = tl.load(wp + offs, mask=mask, other=0.0)
        o = tl.load(o_ptr + b.to(tl.int64) * N + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_DECAY:
            w = w * decay
        w = tl.fma(o, step, w)  # as foreach_add_(W, O, alpha=step): one rounding of W + step * O
        tl.store(wp + offs, w, mask=mask)
        tl.store(osq_ptr + b * NBLK + pid, tl.sum(o * o, axis=0))


def usable(tensors: list[Tensor]) -> bool:
    """Whether the fused kernels can take these tensors: float32, contiguous, on a device where Triton runs."""
    t0 = tensors[0]
    if not triton_ns.HAVE_TRITON or not triton_ns.available(t0) or os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    return all(t.dtype == torch.float32 and t.is_contiguous() and t.device == t0.device for t in tensors)


class AddressTables:
    """Device tables of tensor addresses, cached by the addresses (parameters and buffers keep theirs; a
    gradient re-allocated at the same place hits the cache). A miss is a pinned, non-blocking copy: no
    host sync."""

    def __init__(self, size: int = 64):
        self._cache: dict = {}
        self._size = size

    def __call__(self, tensors: list[Tensor]) -> Tensor:
        key = (tensors[0].device, tuple(t.data_ptr() for t in tensors))
        tab = self._cache.get(key)
        if tab is None:
            if len(self._cache) >= self._size:
                self._cache.pop(next(iter(self._cache)))
            host = torch.tensor(key[1], dtype=torch.int64)
            if tensors[0].is_cuda:
                host = host.pin_memory()
            tab = self._cache[key] = host.to(tensors[0].device, non_blocking=True)
        return tab


def _f32(x: float) -> float:
    return float(np.float32(x))


def _lerp_args(w: float) -> tuple[float, float, bool]:
    """(weight, 1 - weight, small) as ATen's lerp computes them: opmath float32, 1 - w in float32."""
    wf = np.float32(w)
    return float(wf), float(np.float32(1.0) - wf), bool(abs(wf) < 0.5)


def momentum_nesterov(grads: list[Tensor], bufs: list[Tensor], beta: float, nesterov: bool,
                      tables: AddressTables) -> tuple[Tensor, Tensor, Tensor]:
    """bufs <- lerp(bufs, grads, 1 - beta) in place; returns (U, grad_norms, U_norms): the (B, *shape) float32
    stack of lerp(g, buf, beta) (nesterov) or of the buffers, and the (B,) float32 norms of g and U."""
    n, N = len(grads), grads[0].numel()
    dev = grads[0].device
    nblk = triton.cdiv(N, BLOCK)
    U = torch.empty((n, *grads[0].shape), device=dev, dtype=torch.float32)
    part = torch.empty((2, n, nblk), device=dev, dtype=torch.float32)
    w_m, omw_m, small_m = _lerp_args(1 - beta)
    w_n, omw_n, small_n = _lerp_args(beta)
    _momentum_kernel[(nblk, n)](tables(grads), tables(bufs), U, part[0], part[1], N, nblk,
                                w_m, omw_m, w_n, omw_n, SMALL_M=small_m, NESTEROV=bool(nesterov),
                                SMALL_N=small_n, BLOCK=BLOCK, num_warps=8)
    norms = part.sum(dim=2).sqrt()
    return U, norms[0], norms[1]


def apply_update(params: list[Tensor], O: Tensor, decay: float, step: float, tables: AddressTables) -> Tensor:
    """params[b] <- params[b] * decay + step * O[b] (O any float dtype, (B, ...) matching); returns the
    float32 scalar sum of O^2."""
    n, N = len(params), params[0].numel()
    if O.shape[0] != n or O[0].numel() != N:
        raise ValueError(f"apply_update: O of shape {tuple(O.shape)} does not match {n} parameters of {N} elements")
    O = O.contiguous()
    nblk = triton.cdiv(N, BLOCK)
    part = torch.empty((n, nblk), device=O.device, dtype=torch.float32)
    _update_kernel[(nblk, n)](tables(params), O, part, N, nblk, _f32(decay), _f32(step),
                              HAS_DECAY=decay != 1, BLOCK=BLOCK, num_warps=8)
    return part.sum()
