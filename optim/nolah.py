"""MuonNOLAH: the archived heuristics of seeds 000/001, kept as a comparison arm.

1. gradient gating: g <- tanh(g) * |g|                                  (gating)
2. after the momentum update, the buffer is multiplied by percentile_scale (0.9) where |g| (the gated
   gradient) is above its per-matrix percentile (0.95: the k-th smallest |g| with
   k = ceil(0.95 * numel))                                              (percentile, percentile_scale)
3. U <- U * sigmoid(U) before orthogonalization                        (sigmoid_projection)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .muon import BucketContext, Muon
from .registry import check_arguments

# How a GPU finds the percentile (kth_smallest_nonneg; both give kthvalue's threshold, tested). H100, the
# 72 GPT-124M matrices: kthvalue 40.7 ms, the bitwise search 26.5 ms, topk 2.0 ms.
SELECT = "topk"


def kth_smallest_nonneg(x: Tensor, k: int, method: str = "search") -> Tensor:
    """The k-th smallest (1-based) entry of each row of a (B, N) float32 tensor of entries >= 0 (or NaN):
    the same value as x.kthvalue(k, dim=1), without a per-row sort.

    'search': the bit patterns of non-negative floats, read as int32, are ordered as the floats are, so
    a binary search over the 31 value bits (31 batched counts of `bits <= mid`) finds the smallest
    pattern v with at least k entries <= v: that is the k-th smallest entry itself, exactly.
    'topk': the smallest of the N - k + 1 largest entries (a radix selection, unsorted), NaN read as
    +inf first; it differs from kthvalue only where kthvalue gives NaN (this gives +inf), and
    `x > threshold` is all False for both.
    """
    if method == "topk":
        y = torch.where(torch.isnan(x), torch.inf, x)
        return y.topk(x.shape[1] - k + 1, dim=1, largest=True, sorted=False).values.amin(dim=1)
    if method != "search":
        raise ValueError(f"method={method!r} is not allowed; use 'search' or 'topk'")
    bits = x.contiguous().view(torch.int32)
    lo = torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
    hi = torch.full_like(lo, 0x7FFFFFFF)
    for _ in range(31):
        mid = lo + (hi - lo) // 2
        enough = (bits <= mid[:, None]).sum(dim=1) >= k
        hi = torch.where(enough, mid, hi)
        lo = torch.where(enough, lo, mid + 1)
    return hi.view(torch.float32)


class MuonNOLAH(Muon):
    def __init__(
        self,
        params,
        gating: bool = True,
        percentile: float = 0.95,
        percentile_scale: float = 0.9,
        sigmoid_projection: bool = True,
        **muon_kwargs,
    ):
        check_arguments(self, locals())
        super().__init__(params, **muon_kwargs)
        self.gating = gating
        self.percentile = percentile
        self.percentile_scale = percentile_scale
        self.sigmoid_projection = sigmoid_projection

    def _transform_grads(self, grads: list[Tensor], group: dict) -> list[Tensor]:
        if not self.gating:
            return grads
        return torch._foreach_mul(torch._foreach_tanh(grads), torch._foreach_abs(grads))

    def _after_momentum(self, grads: list[Tensor], bufs: list[Tensor], group: dict) -> None:
        if self.percentile_scale == 1.0:
            return
        by_shape: dict = {}
        for g, buf in zip(grads, bufs):
            by_shape.setdefault((tuple(g.shape), g.dtype), []).append((g, buf))
        for pairs in by_shape.values():  # one batched selection per shape
            mag = torch.stack([g for g, _ in pairs]).abs().float()
            flat = mag.reshape(len(pairs), -1)
            k = min(max(math.ceil(self.percentile * flat.shape[1]), 1), flat.shape[1])
            # the same value either way (tested); topk wins on a GPU, kthvalue on a CPU
            kth = kth_smallest_nonneg(flat, k, SELECT) if flat.is_cuda else flat.kthvalue(k, dim=1).values
            threshold = kth.view(-1, *([1] * (mag.ndim - 1)))
            scale = torch.where(mag > threshold, self.percentile_scale, 1.0)
            torch._foreach_mul_([b for _, b in pairs], list(scale.to(pairs[0][1].dtype).unbind(0)))

    def _perturb(self, updates: Tensor, ctx: BucketContext) -> Tensor:
        if not self.sigmoid_projection:
            return updates
        return updates * torch.sigmoid(updates)
