"""Orthogonalizers: map a matrix G = U S V^T (or a stack of them) to (about) its polar factor U V^T.

Every function takes a tensor of shape (..., m, n) and returns one of the same shape, in the precision
it computed in (bfloat16 or float32); the caller casts. Tall matrices are transposed inside, so the
Gram matrices are always the small side.

- `newton_schulz`: Keller Jordan's quintic iteration (coefficients 3.4445, -4.7750, 2.0315), written
  with addmm/baddbmm like torch.optim.Muon so that it follows it step for step. It does not converge
  to U V^T but to U S' V^T with S' roughly in [0.7, 1.2], which is what Muon uses.
- `polar_express`: the per-step coefficients of Amsel et al. 2025 as modded-nanogpt uses them
  (5 iterations, safety factor 2e-2, cushion 2; normalised as X / (||X||_F * 1.02 + 1e-6), the
  epsilon of modded-nanogpt's train_gpt.py:198 @f411b3d3, :388 @9060ff47).
- `svd_orthogonalize`: exact U V^T in float32 (the seeds' version; the reference).
- `cubic_newton_schulz`: the seed's re-orthogonalization X <- 1.5 X - 0.5 X X^T X, after
  normalising X by its Frobenius norm. Unnormalised it diverges once ||X||_2 > sqrt(3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import triton_ns

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express, num_iters=5, safety_factor=2e-2, cushion=2 (Amsel, Persson, Musco, Gower 2025),
# the coefficients modded-nanogpt uses. More than 5 steps repeat the last triple.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02

PRECISIONS = {"bf16": torch.bfloat16, "fp32": torch.float32}
ORTHOGONALIZERS = ("newton_schulz", "polar_express", "svd")
# Each orthogonalizer's normalisation epsilon in its reference: KellerJordan/Muon's zeropower_via_newtonschulz5
# divides by ||X|| + 1e-7; modded-nanogpt's polar_express by ||X|| * 1.02 + 1e-6 (train_gpt.py:198). The
# optimizers' eps=None means this one. svd takes none.
DEFAULT_EPS = {"newton_schulz": 1e-7, "polar_express": 1e-6, "svd": 1e-7}


def resolve_eps(method: str, eps: float | None) -> float:
    """eps as given, or the orthogonalizer's reference epsilon when None."""
    return DEFAULT_EPS.get(method, 1e-7) if eps is None else eps


def _dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not allowed; use one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def _addmm(inp: Tensor, m1: Tensor, m2: Tensor, *, beta: float, alpha: float = 1.0) -> Tensor:
    """beta * inp + alpha * m1 @ m2 for one matrix or a stack (any number of leading dims)."""
    if inp.ndim == 2:
        return torch.addmm(inp, m1, m2, beta=beta, alpha=alpha)
    lead = inp.shape[:-2]
    out = torch.baddbmm(
        inp.reshape(-1, *inp.shape[-2:]),
        m1.reshape(-1, *m1.shape[-2:]),
        m2.reshape(-1, *m2.shape[-2:]),
        beta=beta,
        alpha=alpha,
    )
    return out.reshape(*lead, *out.shape[-2:])


def _wide(G: Tensor, dtype: torch.dtype) -> tuple[Tensor, bool]:
    if G.ndim < 2:
        raise ValueError(f"orthogonalization needs a matrix or a stack of matrices, got shape {tuple(G.shape)}")
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    return (X.mT if tall else X), tall


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    precision: str = "bf16",
    eps: float = 1e-7,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
) -> Tensor:
    """Quintic Newton-Schulz: X <- a X + (b A + c A^2) X with A = X X^T, after X <- G / ||G||_F."""
    a, b, c = coefficients
    X, tall = _wide(G, _dtype(precision))
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT
        B = _addmm(A, A, A, beta=b, alpha=c)
        X = _addmm(X, B, X, beta=a)
    return X.mT if tall else X


def polar_express(G: Tensor, steps: int = 5, precision: str = "bf16", eps: float = 1e-6) -> Tensor:
    """Polar Express: the quintic iteration with per-step coefficients (modded-nanogpt's)."""
    X, tall = _wide(G, _dtype(precision))
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * POLAR_EXPRESS_SAFETY + eps)
    for i in range(steps):
        a, b, c = POLAR_EXPRESS_COEFFICIENTS[min(i, len(POLAR_EXPRESS_COEFFICIENTS) - 1)]
        A = X @ X.mT
        B = _addmm(A, A, A, beta=b, alpha=c)
        X = _addmm(X, B, X, beta=a)
    return X.mT if tall else X


def svd_orthogonalize(G: Tensor) -> Tensor:
    """Exact polar factor U V^T in float32, over the singular values above the numerical rank cutoff.

    Directions whose singular value is below max(m, n) * float32-epsilon * s_max (and all of a zero
    matrix) get 0, as a pseudo-inverse would: SVD's basis for a null space is arbitrary.
    """
    X = G.float()
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    cutoff = S[..., :1] * (max(X.shape[-2:]) * torch.finfo(torch.float32).eps)
    keep = ((S > cutoff) & (S > 0)).to(X.dtype)
    return (U * keep.unsqueeze(-2)) @ Vh


def cubic_newton_schulz(
    X: Tensor, steps: int = 3, precision: str = "fp32", eps: float = 1e-7, normalize: bool = True
) -> Tensor:
    """The seed's cubic iteration X <- 1.5 X - 0.5 X X^T X.

    It converges to the polar factor only for singular values in (0, sqrt(3)); `normalize` (the
    default; the seed's pseudocode omits it) first divides X by its Frobenius norm, which bounds the
    spectral norm by 1. `normalize=False` exists to show the divergence in the tests.
    """
    Y, tall = _wide(X, _dtype(precision))
    if normalize:
        Y = Y / Y.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = Y @ Y.mT
        Y = _addmm(Y, A, Y, beta=1.5, alpha=-0.5)
    return Y.mT if tall else Y


def orthogonalize(G: Tensor, method: str = "newton_schulz", steps: int = 5, precision: str = "bf16",
                  eps: float | None = None) -> Tensor:
    """Dispatch by name (see ORTHOGONALIZERS); `svd` ignores steps and precision (always float32);
    eps None: the method's DEFAULT_EPS."""
    eps = resolve_eps(method, eps)
    if method == "newton_schulz":
        return newton_schulz(G, steps=steps, precision=precision, eps=eps)
    if method == "polar_express":
        return polar_express(G, steps=steps, precision=precision, eps=eps)
    if method == "svd":
        return svd_orthogonalize(G)
    raise ValueError(f"orthogonalizer={method!r} is not allowed; use one of {list(ORTHOGONALIZERS)}")


def _coefficients(method: str, steps: int) -> list[tuple[float, float, float]]:
    if method == "newton_schulz":
        return [NS_COEFFICIENTS] * steps
    return [POLAR_EXPRESS_COEFFICIENTS[min(i, len(POLAR_EXPRESS_COEFFICIENTS) - 1)] for i in range(steps)]


_KERNEL_DTYPE = torch.bfloat16  # what the kernels iterate in (a float32 stand-in checks the logic on the interpreter)


def orthogonalize_stacks(stacks: list[Tensor], method: str = "newton_schulz", steps: int = 5,
                         precision: str = "bf16", eps: float | None = None,
                         norms: list[Tensor | None] | None = None) -> list[Tensor]:
    """`orthogonalize` of each stack (B_i, m_i, n_i) of a list, returned in the same order and shapes.

    On CUDA with Triton, for the quintic methods in bf16, the stacks run together through the kernels of
    optim/triton_ns.py (symmetric products; stacks with the same small side share launches). Elsewhere
    each stack goes through `orthogonalize`, exactly as one call per stack would.
    `norms` (kernel path only): for each stack, its (B,) float32 Frobenius norms if the caller has them
    (optim.Muon's fused momentum kernel), or None: they are then taken here.
    """
    live = [S for S in stacks if S.numel()]
    if (method not in ("newton_schulz", "polar_express") or precision != "bf16" or not live
            or any(S.ndim != 3 for S in live) or not triton_ns.available(live[0])):
        return [orthogonalize(S, method, steps, precision, eps) for S in stacks]
    eps = resolve_eps(method, eps)
    xs = []
    given = [nm for S, nm in zip(stacks, norms or [None] * len(stacks)) if S.numel()]
    for S, nm in zip(live, given):
        # the normalisation of newton_schulz / polar_express, with the norm taken of S itself (float32) and
        # one rounding to bf16 (there: the norm of the bf16 copy, and a division in bf16)
        if nm is not None:
            norm = nm.float().reshape(-1, 1, 1)
        else:
            norm = torch.linalg.vector_norm(S, dim=(-2, -1), keepdim=True,
                                            dtype=None if S.dtype == torch.float64 else torch.float32).float()
        scale = 1.0 / (norm.clamp(min=eps) if method == "newton_schulz" else norm * POLAR_EXPRESS_SAFETY + eps)
        X = torch.empty(S.shape, device=S.device, dtype=_KERNEL_DTYPE)
        xs.append(torch.mul(S, scale, out=X))
    outs = iter(triton_ns.quintic_stacks(xs, _coefficients(method, steps)))
    result = [next(outs) if S.numel() else S.to(torch.bfloat16) for S in stacks]
    return result
