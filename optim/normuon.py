"""NorMuon: Muon with a per-neuron second-moment normalization of the orthogonalized update
(Li et al. 2025; modded-nanogpt's `apply_normuon_variance_reduction`, read at 9060ff47 and HEAD).

After orthogonalization, for each matrix V (rows x cols) of the bucket:

    red    = cols if rows >= cols else rows          reduce over the last dim (per-row statistics) when
                                                     rows >= cols, else over the rows (per-column)
    m      = mean(V^2 over red)                      (rows, 1) or (1, cols), float32
    buf    = lerp(buf, m, 1 - beta2)                 the EMA, state "normuon_second_moment", starts at 0,
                                                     no bias correction (as modded-nanogpt)
    V'     = V * rsqrt(max(buf, 1e-10))
    V'     = V' * ||V||_F / max(||V'||_F, 1e-10)     back to the Frobenius norm V had

then Muon's step with V' in place of V (so cautious decay, the geodesic update, the shape factor and the lr
apply as for Muon). beta2 is 0.95 as in modded-nanogpt at 9060ff47 (the seed's source; 0.9 at its HEAD).
Rows and columns refer to the torch layout (out, in) of the 2-D view.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .muon import BucketContext, Muon
from .registry import check_arguments

STATE_KEY = "normuon_second_moment"


def normuon_scale(V: Tensor, buf: Tensor, beta2: float) -> Tensor:
    """One NorMuon normalization of a stack V (B, r, c); updates buf (B, r, 1) or (B, 1, c) in place.
    Returns V' in float32. Both Frobenius norms come from the per-vector means (as modded-nanogpt computes
    them), so V is read twice: once for the means, once for the scaling."""
    red = -1 if V.size(-2) >= V.size(-1) else -2
    n = V.size(red)
    m = torch.linalg.vector_norm(V, dim=red, keepdim=True, dtype=torch.float32).square_().div_(n)
    buf.lerp_(m, 1 - beta2)
    step = buf.clamp_min(1e-10).rsqrt()
    before = m.sum(dim=(-2, -1), keepdim=True)  # ||V||_F^2 / n
    after = (m * step.square()).sum(dim=(-2, -1), keepdim=True)  # ||V * step||_F^2 / n
    return V * (step * (before / after.clamp_min(1e-20 / n)).sqrt())


class NorMuon(Muon):
    """Muon plus NorMuon's second-moment normalization (beta2: the EMA coefficient, 0.95)."""

    def __init__(self, params, beta2: float = 0.95, **muon_kwargs):
        check_arguments(self, locals())
        super().__init__(params, **muon_kwargs)
        self.beta2 = beta2

    def _after_orthogonalize(self, O: Tensor, ctx: BucketContext) -> Tensor:
        r, c = ctx.bucket.shape
        shape = (r, 1) if r >= c else (1, c)
        for s in ctx.states:
            if STATE_KEY not in s:
                s[STATE_KEY] = torch.zeros(shape, device=O.device, dtype=torch.float32)
        bufs = [s[STATE_KEY] for s in ctx.states]
        buf = torch.stack(bufs)
        out = normuon_scale(O, buf, self.beta2)
        torch._foreach_copy_(bufs, list(buf.unbind(0)))
        return out
