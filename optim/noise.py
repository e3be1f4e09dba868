"""Noise for the OrthoNoise arms: reproducible Gaussian draws and the matrices made from them.

Every draw comes from a generator seeded with mix_seed(seed, step, param_index), so it is the same on
every DDP rank and does not depend on the world size, on sharding, or on which other matrices get noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .orthogonalize import polar_express

NOISE_METHODS = ("qr", "polar")
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit generator seed from (run seed, optimizer step, parameter index); pure Python, stable."""
    h = 0
    for v in (seed, step, index):
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h >> 1


class NoiseSource:
    """Draws float32 standard-normal matrices, one generator per device, re-seeded for every draw."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        device = torch.device(device)
        g = self._generators.get(device)
        if g is None:
            g = self._generators[device] = torch.Generator(device=device)
        g.manual_seed(mix_seed(self.seed, step, index))
        return g

    def gaussian(self, shape, device, step: int, indices: list[int]) -> Tensor:
        """A stack (len(indices), *shape): row i drawn from the generator of (seed, step, indices[i])."""
        out = torch.empty((len(indices), *shape), device=device, dtype=torch.float32)
        for row, index in enumerate(indices):
            torch.randn(tuple(shape), generator=self.generator(device, step, index), out=out[row])
        return out


QR_ALGORITHMS = ("householder", "cholesky")


# How Q = A R^-1 is formed: "solve" (a batched triangular solve per pass), "inverse" (R^-1 by a k x k
# triangular solve, then a batched matmul), or "auto": the inverse for the tall, well-conditioned case
# (H100, 12 x 3072 x 768: 1.7 ms instead of 2.2 per pass), the solve for the square one. Both give Q to
# rounding; benchmarks/optimizer_step.py times the two.
RIGHT_SOLVE = "auto"


def _right_solve(R: Tensor, Q: Tensor, well_conditioned: bool) -> Tensor:
    if RIGHT_SOLVE == "inverse" or (RIGHT_SOLVE == "auto" and well_conditioned):
        eye = torch.eye(R.shape[-1], dtype=R.dtype, device=R.device).expand_as(R)
        return Q @ torch.linalg.solve_triangular(R, eye, upper=True)
    return torch.linalg.solve_triangular(R, Q, upper=True, left=False)


def _cholesky_qr(A: Tensor) -> Tensor:
    """Q of the QR factorization A = QR with diag(R) > 0, for tall A (..., N, k), in float64.

    Passes of R = chol(Q^T Q), Q <- Q R^-1. A Gaussian with N >= 2k rows is well conditioned
    (cond(A) <= about (1 + sqrt(k/N)) / (1 - sqrt(k/N)) < 6), so two passes (CholeskyQR2) reach
    orthonormality to rounding. A square-ish one (N < 2k) can have cond(A) ~ 1e4 and more, so it gets
    shifted CholeskyQR3: three passes, the first with the shift of Fukaya et al. 2020
    (11 (N k + k (k + 1)) u ||A||^2) so that the Cholesky factorization cannot break down.
    The product of the R factors is upper triangular with a positive diagonal, so the result is the
    same matrix as Householder QR with the sign fix, up to rounding; on a GPU it is a handful of
    batched matmuls and triangular solves instead of one cuSOLVER call per matrix.
    """
    Q = A.double()
    N, k = Q.shape[-2:]
    shifted = N < 2 * k
    eye = torch.eye(k, dtype=Q.dtype, device=Q.device)
    for i in range(3 if shifted else 2):
        G = Q.mT @ Q
        if i == 0 and shifted:
            fro2 = G.diagonal(dim1=-2, dim2=-1).sum(-1)
            G = G + (11 * (N * k + k * (k + 1)) * torch.finfo(Q.dtype).eps * fro2)[..., None, None] * eye
        R = torch.linalg.cholesky_ex(G, upper=True).L
        Q = _right_solve(R, Q, well_conditioned=not shifted)
    return Q


def haar_qr(Z: Tensor, algorithm: str = "cholesky") -> Tensor:
    """Haar-distributed orthonormal matrices of Z's shape from the Gaussian stack Z, as float32.

    The QR factorization of the tall side (Z itself if m >= n, else Z^T, then transposed back: a
    plain QR of a wide matrix returns an m x m Q) with the sign fix Q <- Q diag(sign(diag R)), which
    makes the distribution exactly Haar (Mezzadri 2007). The result has orthonormal columns (tall) or
    rows (wide). algorithm 'householder': torch.linalg.qr in float32 and the explicit sign fix;
    'cholesky': CholeskyQR2 (tall, N >= 2k) or shifted CholeskyQR3 (square-ish) in float64, whose R
    has a positive diagonal by construction.
    """
    tall = Z.size(-2) >= Z.size(-1)
    A = Z if tall else Z.mT
    if algorithm == "householder":
        Q, R = torch.linalg.qr(A.float(), mode="reduced")
        d = torch.diagonal(R, dim1=-2, dim2=-1)
        Q = Q * torch.where(d < 0, -1.0, 1.0).to(Q.dtype).unsqueeze(-2)
    elif algorithm == "cholesky":
        Q = _cholesky_qr(A).float()
    else:
        raise ValueError(f"qr algorithm={algorithm!r} is not allowed; use one of {list(QR_ALGORITHMS)}")
    return Q if tall else Q.mT


def haar_polar(Z: Tensor, steps: int = 5, precision: str = "bf16") -> Tensor:
    """The polar factor of the Gaussian stack Z by Polar Express (Haar in the limit of convergence).

    The polar factor of a Gaussian matrix is exactly Haar; the 5-step iteration leaves the few
    smallest singular directions short of 1, so this is an approximation that costs a few matmuls
    instead of a QR. Returned in float32.
    """
    return polar_express(Z, steps=steps, precision=precision, eps=1e-7).float()  # unchanged by issue 20: noise, not the update


def isotropic(Z: Tensor) -> Tensor:
    """Z scaled to the Frobenius norm an orthonormal matrix of its shape has: sqrt(min(m, n))."""
    Z = Z.float()
    target = math.sqrt(min(Z.shape[-2:]))
    return Z * (target / Z.norm(dim=(-2, -1), keepdim=True).clamp(min=torch.finfo(Z.dtype).tiny))
