"""The noise arms (seed 000_91d92a7bba3aba98.txt): MuonOrthoNoise and its control MuonIsotropic.

Before orthogonalization, a matrix whose noise trigger is on gets

    U~ = U + eps * N,   eps = alpha_t * ||g||_F   (g: this step's raw gradient of that matrix)

- MuonOrthoNoise: N is a Haar-random orthonormal matrix of U's shape ('qr': QR of a Gaussian with the
  sign fix; 'polar': the Polar Express polar factor of a Gaussian), and U~ is re-orthogonalized by
  the seed's cubic Newton-Schulz (normalised first) before the chosen orthogonalizer makes the update.
- MuonIsotropic: N is the same Gaussian scaled to ||N||_F = sqrt(min(m, n)) (the norm of an
  orthonormal matrix), with no QR and, by default, no re-orthogonalization. With reortho_steps=3 it
  re-orthogonalizes exactly as MuonOrthoNoise does, and then only the structure of the noise differs
  (the study's control for OrthoNoise; docs/optim.md says what each arm isolates).

Shared: alpha_t from the schedule (optim.schedules), no noise during noise_warmup_steps, and the
adaptive trigger: every rank_every steps the momentum buffer's effective rank is measured and a matrix
is noised until the next measurement iff erank < rank_threshold * min(m, n) (rank_threshold=None:
always). Before a matrix's first measurement its trigger is off.

persist_noise=False: the noise only feeds this step's update. True: eps * N is also added to the
momentum buffer (the seed's pseudocode wrote the perturbed matrix back); this step's update is the
same either way. (The seed also wrote the *re-orthogonalized* matrix back, which would replace the
momentum's gradient-scale values by singular values near 1; that is not done.)
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .muon import BucketContext, Muon, _invalid
from .noise import NoiseSource, haar_polar, haar_qr, isotropic
from .orthogonalize import cubic_newton_schulz
from .registry import check_arguments
from .schedules import AlphaSchedule

ENV_AHEAD = "OPTIM_NOISE_AHEAD"  # "0": draw the noise inside the step (on CUDA it is drawn ahead, same values)


class _NoisyMuon(Muon):
    """Schedule, warm-up, trigger and the noise step; subclasses choose the noise and re-orthogonalization."""

    def __init__(
        self,
        params,
        alpha: float = 1e-3,
        schedule: str = "constant",
        alpha_end: float | None = None,
        schedule_steps: int = 1000,
        half_life: float | None = None,
        noise_warmup_steps: int = 0,
        rank_threshold: float | None = 0.5,
        persist_noise: bool = False,
        **muon_kwargs,
    ):
        check_arguments(self, locals())
        super().__init__(params, **muon_kwargs)
        name = type(self).__name__
        try:
            self.schedule = AlphaSchedule(
                alpha=alpha,
                schedule=schedule,
                alpha_end=alpha_end,
                schedule_steps=schedule_steps,
                half_life=half_life,
                noise_warmup_steps=noise_warmup_steps,
            )
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if rank_threshold is not None and self.rank_every == 0:
            raise _invalid(name, "rank_every", 0, "the trigger (rank_threshold set) needs rank_every >= 1")
        self.rank_threshold = rank_threshold
        self.persist_noise = persist_noise
        self.noise = NoiseSource(self.seed)
        self._alpha_t = 0.0
        self._ahead: dict = {}  # (step, shape, parameter indices) -> (noise matrices, event): drawn ahead
        self._noise_streams: dict = {}

    def alpha_at(self, step: int) -> float:
        return self.schedule(step)

    def _begin_step(self, step: int) -> None:
        self._alpha_t = self.schedule(step)

    def _on_effective_ranks(self, ctx: BucketContext, ranks: Tensor) -> None:
        if self.rank_threshold is None:
            return
        limit = self.rank_threshold * min(ctx.bucket.shape)
        for state, on in zip(ctx.states, (ranks < limit).tolist()):  # one sync, on rank steps only
            state["noise_on"] = bool(on)

    def _noise_on(self, state: dict) -> bool:
        return True if self.rank_threshold is None else state.get("noise_on", False)

    reortho_steps = 0  # cubic Newton-Schulz steps after the noise is added (0: none)

    def _noise_matrices(self, Z: Tensor) -> Tensor:
        raise NotImplementedError

    def _reorthogonalize(self, X: Tensor) -> Tensor:
        if self.reortho_steps == 0:
            return X
        return cubic_newton_schulz(X, steps=self.reortho_steps, precision=self.ns_precision, eps=self.cubic_eps)

    def _plan(self, ctx: BucketContext) -> None:
        if self._alpha_t <= 0:
            return
        ctx.alpha = self._alpha_t
        ctx.noised = [i for i, s in enumerate(ctx.states) if self._noise_on(s)]
        ctx.persist = self.persist_noise and bool(ctx.noised)

    def _mine(self, ctx: BucketContext) -> list[int]:
        noised = set(ctx.noised)
        return [i for i in ctx.rows if i in noised]

    def _draw(self, shape, device, step: int, indices: list[int]) -> Tensor:
        """The noise matrices of (step, parameter indices): the seeded Gaussians made Haar / isotropic."""
        return self._noise_matrices(self.noise.gaussian(shape, device, step, indices))

    def _end_step(self, step: int, ctxs) -> None:
        """On CUDA, draw the next step's noise now on a side stream (it does not depend on the gradient),
        so that it overlaps the forward/backward in between; for the matrices the current triggers
        select. The same calls on the same inputs as drawing it in the step: the same values. A step
        whose selection differs (a trigger flipped on a rank step) draws inline what it needs."""
        self._ahead = {k: v for k, v in self._ahead.items() if k[0] > step}
        if os.environ.get(ENV_AHEAD, "1") == "0" or self.schedule(step + 1) <= 0:
            return
        for ctx in ctxs:
            dev = ctx.bufs[0].device
            if dev.type != "cuda":
                continue
            mine = [i for i in ctx.rows if self._noise_on(ctx.states[i])]
            if not mine:
                continue
            indices = [ctx.bucket.indices[i] for i in mine]
            side = self._noise_streams.get(dev)
            if side is None:
                side = self._noise_streams[dev] = torch.cuda.Stream(dev)
            with torch.cuda.stream(side):
                N = self._draw(ctx.bucket.shape, dev, step + 1, indices)
                ev = torch.cuda.Event()
                ev.record(side)
            self._ahead[(step + 1, ctx.bucket.shape, tuple(indices))] = (N, ev)

    def _perturb(self, updates: Tensor, ctx: BucketContext) -> Tensor:
        alpha = ctx.alpha
        if not ctx.noised:
            return updates
        mine = self._mine(ctx)
        if not mine:
            return updates
        start = ctx.rows.start
        indices = [ctx.bucket.indices[i] for i in mine]
        ahead = self._ahead.pop((ctx.step, ctx.bucket.shape, tuple(indices)), None)
        if ahead is not None:
            N, ev = ahead
            torch.cuda.current_stream(N.device).wait_event(ev)
            N.record_stream(torch.cuda.current_stream(N.device))
        else:
            N = self._draw(ctx.bucket.shape, updates.device, ctx.step, indices)
        everyone = len(mine) == len(ctx.rows)
        if everyone:
            eps = alpha * ctx.grad_norms[ctx.rows.start : ctx.rows.stop]
        else:
            eps = alpha * torch.stack([ctx.grad_norms[i] for i in mine])
        term = N * eps[:, None, None]
        base = updates if everyone else torch.stack([updates[i - start] for i in mine])
        X = self._reorthogonalize(base.float() + term).to(updates.dtype)
        if ctx.persist:
            if everyone:
                ctx.buffer_delta = term
            else:
                zero = term.new_zeros(term.shape[1:])
                k = {i: j for j, i in enumerate(mine)}
                ctx.buffer_delta = torch.stack([term[k[i]] if i in k else zero for i in ctx.rows])
        if everyone:
            return X
        k = {i: j for j, i in enumerate(mine)}
        return torch.stack([X[k[i]] if i in k else updates[i - start] for i in ctx.rows])


class MuonOrthoNoise(_NoisyMuon):
    """Muon with Haar-orthonormal noise on the momentum update before orthogonalization.

    Args (beyond Muon's): alpha, schedule ('constant'|'exponential'|'linear'), alpha_end,
    schedule_steps, half_life, noise_warmup_steps, rank_threshold (float in (0, 1] or None),
    noise_method ('qr'|'polar'), persist_noise, reortho_steps (cubic Newton-Schulz steps, 3).
    """

    # How 'qr' noise is computed (both give the QR factor with a positive diagonal of R; see
    # optim.noise.haar_qr). A change of this default changes results (by rounding): bump the version.
    qr_algorithm = "cholesky"

    def __init__(self, params, noise_method: str = "qr", reortho_steps: int = 3, **kwargs):
        check_arguments(self, locals())
        super().__init__(params, **kwargs)
        self.reortho_steps = reortho_steps
        self.noise_method = noise_method

    def _noise_matrices(self, Z: Tensor) -> Tensor:
        if self.noise_method == "qr":
            return haar_qr(Z, algorithm=self.qr_algorithm)
        return haar_polar(Z, precision=self.ns_precision)


class MuonIsotropic(_NoisyMuon):
    """The control: Gaussian noise scaled to Frobenius norm sqrt(min(m, n)); no QR.

    Args (beyond Muon's): alpha, schedule, alpha_end, schedule_steps, half_life, noise_warmup_steps,
    rank_threshold, persist_noise (as MuonOrthoNoise), reortho_steps (0: no re-orthogonalization, the
    original control; 3: MuonOrthoNoise's cubic re-orthogonalization, so that only the noise differs).
    """

    def __init__(self, params, reortho_steps: int = 0, **kwargs):
        check_arguments(self, locals())
        super().__init__(params, **kwargs)
        self.reortho_steps = reortho_steps

    def _noise_matrices(self, Z: Tensor) -> Tensor:
        return isotropic(Z)
