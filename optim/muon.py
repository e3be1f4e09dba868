"""Muon (MomentUm Orthogonalized by Newton-Schulz), batched by shape, with hooks for the variants.

One optimizer step, for each parameter group:

    g_t  = grad                                   (_transform_grads: NOLAH gates it)
    B_t  = lerp(B_{t-1}, g_t, 1 - momentum)       the EMA form of torch.optim.Muon
                                                  (_after_momentum: NOLAH rescales it)
    U_t  = lerp(g_t, B_t, momentum) if nesterov else B_t
    O_t  = orthogonalize(_perturb(U_t))           (_perturb: the noise arms, NOLAH's sigmoid)
    W_t  = W_{t-1} * (1 - lr * weight_decay) - lr * adjust(shape) * O_t   (decay: see weight_decay_scale)

Matrices of the same shape, dtype and group are stacked and orthogonalized in one batched call
("buckets"). Conv weights (>2-D) are viewed as (out, in * k * k). Nothing in a step reads a GPU
value back to the host except on effective-rank steps (every `rank_every` steps); diagnostics stay
tensors until read. The effective ranks are deferred: a rank step k starts measuring the momentum on
the host (optim/rank.py) and applies the measurement of step k - rank_every, waiting for it if needed,
so the decisions do not depend on timing; a checkpoint stores the measurement not yet applied.

With `shard_across_ranks=True` and torch.distributed initialized, each rank runs the per-matrix
work (rank check, noise, orthogonalization) for a contiguous share of every bucket and the results
are all-gathered, so every rank applies the same updates as without sharding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from .orthogonalize import ORTHOGONALIZERS, PRECISIONS, orthogonalize_stacks, resolve_eps
from . import triton_step
from .rank import RankJob, submit_effective_rank
from .sphere import adjust_ratio, apply_update, check_options, decay_rate, replaces_update, resolve_weight_decay_scale
from .registry import ALGORITHM_VERSIONS, check_arguments

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def _invalid(cls: str, name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{cls}: {name}={value!r} is not allowed; {allowed}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass
class Bucket:
    """Same-shape matrices of one parameter group, in parameter order."""

    positions: list[int]  # positions in the step's list of parameters with a gradient
    params: list[Tensor]
    indices: list[int]  # global parameter indices (order of all groups' params at construction)
    shape: tuple[int, int]  # the 2-D view (rows, cols)


@dataclass
class BucketContext:
    """What the hooks see of one bucket in one step. `rows` is this rank's share of the bucket."""

    step: int
    group: dict
    bucket: Bucket
    states: list[dict]
    grads: list[Tensor]  # the raw gradients (p.grad), 2-D views
    bufs: list[Tensor]  # momentum buffers, 2-D views
    grad_norms: Tensor  # (B,) float32 Frobenius norms of the raw gradients
    rows: range
    noised: list[int] = field(default_factory=list)  # bucket positions that received noise (all ranks)
    alpha: float = 0.0
    persist: bool = False  # whether buffer_delta is gathered and added (decided alike on all ranks)
    buffer_delta: Tensor | None = None  # (len(rows), r, c) added to the momentum buffers (None: zeros)
    fused: bool = False  # momentum and update through optim/triton_step.py's kernels
    update_norms: Tensor | None = None  # (B,) norms of the unperturbed stack, when the kernel made them


class Muon(torch.optim.Optimizer):
    """Muon for hidden weight matrices; use AdamW for embeddings, heads, norms, gains and biases.

    Args:
        lr: learning rate (spectral-norm units with adjust_lr_fn=None/'original').
        momentum: EMA coefficient of the momentum buffer (0.95).
        nesterov: use lerp(g, B, momentum) instead of B (True).
        weight_decay: decoupled, W *= 1 - rate, rate = lr * weight_decay (0.0; see weight_decay_scale).
        cautious_wd: decay only where update and weight agree in sign (optim/sphere.py); needs
            weight_decay > 0 (False).
        weight_decay_scale: the decay rate: 'lr' (lr * wd, torch.optim.Muon's), 'lr_lr_eff' (wd * lr *
            lr * adjust(shape), modded-nanogpt's); None (default): 'lr_lr_eff' with cautious_wd, else 'lr'.
        update: 'euclidean' (W - lr * U), 'geodesic' or 'geodesic_scaled' (on the sphere, per unit vector
            along the dims given by set_sphere_dims; optim/sphere.py).
        adjust_lr_fn: None or 'original' (sqrt(max(1, rows/cols))), 'match_rms_adamw'
            (0.2 * sqrt(max(rows, cols))), as torch.optim.Muon.
        orthogonalizer: 'newton_schulz' | 'polar_express' | 'svd'.
        ns_steps: iterations of the (quintic) orthogonalizer (5).
        ns_precision: 'bf16' | 'fp32' for the iterations.
        eps: floor of the normalising norm (None: the orthogonalizer's reference value, 1e-7 for
            Newton-Schulz as KellerJordan/Muon, 1e-6 for Polar Express as modded-nanogpt).
        seed: run seed; the noise arms draw from (seed, step, parameter index).
        rank_every: compute the momentum's effective rank every this many steps (first at step 1;
            0 disables).
        shard_across_ranks: split the per-matrix work across torch.distributed ranks.
    """

    # How the effective rank is computed ('gram': float64 Gram + host LAPACK, optim.rank; 'svd': float32
    # svdvals at once). A change of this default can flip a noise trigger (by rounding): bump all classes.
    rank_method = "gram"

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        cautious_wd: bool = False,
        weight_decay_scale: str | None = None,
        update: str = "euclidean",
        adjust_lr_fn: str | None = None,
        orthogonalizer: str = "newton_schulz",
        ns_steps: int = 5,
        ns_precision: str = "bf16",
        eps: float | None = None,
        seed: int = 0,
        rank_every: int = 10,
        shard_across_ranks: bool = False,
    ):
        check_arguments(self, locals())  # the ranges optim/registry.py declares (the study checks read them too)
        check_options(type(self).__name__, update, cautious_wd, weight_decay, weight_decay_scale)
        if not _is_int(seed):
            raise _invalid(type(self).__name__, "seed", seed, "use an int")

        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn
        )
        super().__init__(params, defaults)
        self.orthogonalizer = orthogonalizer
        self.ns_steps = ns_steps
        self.ns_precision = ns_precision
        self.eps = resolve_eps(orthogonalizer, eps)  # None: 1e-7 for Newton-Schulz, 1e-6 for Polar Express
        self.cubic_eps = 1e-7 if eps is None else eps  # the noise arms' cubic re-orthogonalization
        self.seed = seed
        self.update, self.cautious_wd = update, cautious_wd
        self.weight_decay_scale = resolve_weight_decay_scale(weight_decay_scale, cautious_wd)
        self._sphere_dims: dict[int, int] = {}
        self.rank_every = rank_every
        self.shard_across_ranks = shard_across_ranks
        self.algorithm_version = ALGORITHM_VERSIONS[type(self).__name__]
        self._step = 0
        self._bucket_cache: dict = {}
        self._diag: dict = {}
        self._rank_jobs: dict = {}  # bucket indices -> _PendingRanks (the deferred effective ranks)
        self._tables = triton_step.AddressTables()  # device tables of addresses for the fused kernels

    def add_param_group(self, param_group: dict) -> None:
        """torch's add_param_group plus validation, "initial_lr" and the global parameter indices."""
        super().add_param_group(param_group)
        name = type(self).__name__
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        self._check_group(group)
        if not hasattr(self, "_index"):
            self._index: dict[int, int] = {}
        for p in group["params"]:
            if p.ndim < 2:
                raise _invalid(name, "params", tuple(p.shape), "Muon takes only >=2-D parameters (use AdamW)")
            if torch.is_complex(p):
                raise _invalid(name, "params", p.dtype, "complex parameters are not supported")
            self._index[id(p)] = len(self._index)

    def _check_group(self, group: dict) -> None:
        name = type(self).__name__
        for key, ok, allowed in (
            ("lr", lambda v: _is_real(v) and v >= 0, "use a finite number >= 0"),
            ("momentum", lambda v: _is_real(v) and 0 <= v < 1, "use a number in [0, 1)"),
            ("weight_decay", lambda v: _is_real(v) and v >= 0, "use a finite number >= 0"),
            ("nesterov", lambda v: isinstance(v, bool), "use True or False"),
            ("adjust_lr_fn", lambda v: v in ADJUST_LR_FNS, f"use one of {list(ADJUST_LR_FNS)}"),
        ):
            if not ok(group[key]):
                raise _invalid(name, f"param_group[{key!r}]", group[key], allowed)

    # ------------------------------------------------------------------ hooks for the variants
    def _begin_step(self, step: int) -> None:
        """Called once per optimizer step before any parameter is touched."""

    def _end_step(self, step: int, ctxs: list[BucketContext]) -> None:
        """Called once at the end of every step with every bucket's context (the noise arms draw ahead)."""

    def _transform_grads(self, grads: list[Tensor], group: dict) -> list[Tensor]:
        """The gradients the momentum sees (NOLAH gates them). Must not modify p.grad in place."""
        return grads

    def _after_momentum(self, grads: list[Tensor], bufs: list[Tensor], group: dict) -> None:
        """Called after the momentum update with the (transformed) gradients and the buffers."""

    def _on_effective_ranks(self, ctx: BucketContext, ranks: Tensor) -> None:
        """Called on rank steps with the (B,) effective ranks of the bucket's momentum buffers."""

    def _plan(self, ctx: BucketContext) -> None:
        """Called for every bucket on every rank (also one with no rows here): set ctx.noised,
        ctx.alpha and ctx.persist, which must not depend on the rank."""

    def _perturb(self, updates: Tensor, ctx: BucketContext) -> Tensor:
        """The stack of momentum updates (this rank's rows of the bucket) before orthogonalization."""
        return updates

    def _after_orthogonalize(self, O: Tensor, ctx: BucketContext) -> Tensor:
        """The whole bucket's orthogonalized updates (all ranks' rows), before the step (NorMuon rescales)."""
        return O

    def set_sphere_dims(self, dims: dict) -> None:
        """{parameter: dim its unit vectors run along} (the model's sphere_dims); the geodesic updates need
        one for every parameter."""
        self._sphere_dims = {id(p): int(d) for p, d in dims.items()}
        if self.update != "euclidean":
            for g in self.param_groups:
                for p in g["params"]:
                    self.sphere_dim_of(p)

    def sphere_dim_of(self, p: Tensor) -> int:
        d = self._sphere_dims.get(id(p))
        if d is None or p.ndim != 2 or d not in (0, 1):
            raise ValueError(f"{type(self).__name__}: update={self.update!r} needs every parameter on the sphere "
                             f"with a dim (0 or 1) along which it is normalized; a parameter of shape "
                             f"{tuple(p.shape)} has {d!r} (use a model with sphere_dims(), e.g. the nGPT presets)")
        return d

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step += 1
        step = self._step
        rank_step = self.rank_every > 0 and (step - 1) % self.rank_every == 0
        self._begin_step(step)
        stats = _StepStats(rank_step)
        ctxs: list[BucketContext] = []
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                if "momentum_buffer" not in s:
                    s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            raw = [p.grad for p in params]
            grads = self._transform_grads(raw, group)
            bufs = [s["momentum_buffer"] for s in states]
            beta = group["momentum"]
            fused = False
            if self._fusable(grads, raw, bufs, params):
                updates = grads  # a marker: momentum and Nesterov per bucket in _prepare_bucket (triton_step)
                fused = True
            else:
                torch._foreach_lerp_(bufs, grads, 1 - beta)
                self._after_momentum(grads, bufs, group)
                updates = torch._foreach_lerp(grads, bufs, beta) if group["nesterov"] else bufs
            # three phases, so that all of the group's stacks are orthogonalized together (one set of
            # launches on the GPU: optim/triton_ns.py); per bucket the calls are those of one bucket at a time
            work = [self._prepare_bucket(bucket, group, step, rank_step, raw, bufs, updates, states, stats,
                                         fused=fused)
                    for bucket in self._buckets(gi, params)]
            live = [i for i, (_, U) in enumerate(work) if U is not None]
            outs = orthogonalize_stacks([work[i][1] for i in live], self.orthogonalizer, self.ns_steps,
                                        self.ns_precision, self.eps,
                                        norms=[work[i][0].update_norms for i in live])
            orth = dict(zip(live, outs))
            for i, (ctx, _) in enumerate(work):
                self._finish_bucket(ctx, orth.get(i), stats)
            ctxs += [ctx for ctx, _ in work]
        self._diag = stats.finish()
        self._end_step(step, ctxs)
        return loss

    def _fusable(self, grads, raw, bufs, params) -> bool:
        """Whether this group's step runs through optim/triton_step.py's kernels: CUDA with Triton on,
        float32 contiguous tensors, unsharded, and the base class's momentum (no _after_momentum hook)."""
        if type(self)._after_momentum is not Muon._after_momentum or self._world()[0] != 1:
            return False
        if not params[0].is_cuda:
            return False
        # one call: float32, contiguous and on one device across the three lists (the kernels index flat memory)
        return triton_step.usable(params + grads + bufs + ([] if grads is raw else raw))

    def _buckets(self, gi: int, params: list[Tensor]) -> list[Bucket]:
        key = (gi, tuple(id(p) for p in params))
        cached = self._bucket_cache.get(key)
        if cached is not None:
            return cached
        by_key: dict = {}
        for pos, p in enumerate(params):
            shape = (p.shape[0], p.numel() // p.shape[0])
            k = (shape, p.dtype, p.device)
            if k not in by_key:
                by_key[k] = Bucket([], [], [], shape)
            b = by_key[k]
            b.positions.append(pos)
            b.params.append(p)
            b.indices.append(self._index[id(p)])
        buckets = list(by_key.values())
        if len(self._bucket_cache) > 64:
            self._bucket_cache.clear()
        self._bucket_cache[key] = buckets
        return buckets

    def _world(self) -> tuple[int, int]:
        if self.shard_across_ranks and dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _prepare_bucket(self, bucket, group, step, rank_step, raw, bufs_all, updates_all, states_all, stats,
                        fused=False):
        """The bucket's context (rank check, plan) and its perturbed stack of updates (None: no rows here)."""
        r, c = bucket.shape
        n = len(bucket.params)
        world, rank = self._world()
        per = -(-n // world)
        rows = range(min(rank * per, n), min((rank + 1) * per, n))
        pos = bucket.positions
        U = u_norms = None
        if fused:  # momentum, Nesterov and the norms in one kernel, U written as the stack (world == 1);
            # updates_all holds the (transformed) gradients then
            U, g_norms, u_norms = triton_step.momentum_nesterov(
                [updates_all[i] for i in pos], [bufs_all[i] for i in pos], group["momentum"], group["nesterov"],
                self._tables)
            U = U.view(n, r, c)
            if updates_all is not raw:  # transformed gradients: the statistics are of the raw ones
                g_norms = _norms32([raw[i] for i in pos])
        else:
            g_norms = _norms32([raw[i] for i in pos])
        ctx = BucketContext(
            step=step,
            group=group,
            bucket=bucket,
            states=[states_all[i] for i in pos],
            grads=[raw[i].view(r, c) for i in pos],
            bufs=[bufs_all[i].view(r, c) for i in pos],
            grad_norms=g_norms,
            rows=rows,
            fused=fused,
        )
        if rank_step:
            ranks = self._deferred_ranks(ctx, per, n, world)
            if ranks is not None:
                self._on_effective_ranks(ctx, ranks)
                stats.ranks.append(ranks[~ranks.isnan()])
        self._plan(ctx)
        if not len(rows):
            return ctx, None
        if U is None:
            U = torch.stack([updates_all[pos[i]].view(r, c) for i in rows])
        X = self._perturb(U, ctx)
        if X is U:  # unperturbed: the orthogonalizer can use the kernel's norms
            ctx.update_norms = u_norms
        return ctx, X

    def _finish_bucket(self, ctx: BucketContext, O: Tensor | None, stats) -> None:
        """Gather the orthogonalized rows (O None: none here), then the update and the statistics."""
        bucket, group, rows = ctx.bucket, ctx.group, ctx.rows
        r, c = bucket.shape
        n = len(bucket.params)
        world, _ = self._world()
        per = -(-n // world)
        if O is None:
            O = torch.zeros((0, r, c), device=bucket.params[0].device, dtype=PRECISIONS[self.ns_precision])
        O = self._gather(O, per, n, world)
        O = self._after_orthogonalize(O, ctx)
        if ctx.persist:
            delta = ctx.buffer_delta
            if delta is None:
                delta = torch.zeros((len(rows), r, c), device=O.device, dtype=torch.float32)
            delta = self._gather(delta.to(ctx.bufs[0].dtype), per, n, world)
            torch._foreach_add_(ctx.bufs, list(delta.unbind(0)))
        if replaces_update(self):  # geodesic step or cautious decay: optim/sphere.py, with the statistics
            return apply_update(self, bucket, group, O, ctx, stats)

        lr, wd = group["lr"], group["weight_decay"]
        ratio = adjust_ratio(group["adjust_lr_fn"], r, c)
        rate = decay_rate(self.weight_decay_scale, lr, wd, ratio)  # lr * wd with the default scale
        if ctx.fused:  # W * (1 - rate) - lr * ratio * O from O's own dtype, and its norm: optim/triton_step.py
            osq = triton_step.apply_update(bucket.params, O, 1 - rate, -lr * ratio, self._tables)
            stats.update_sq.append(osq * ratio**2)
        else:
            stats.update_sq.append(torch.linalg.vector_norm(O, dtype=torch.float32).square() * ratio**2)
        views = [p.view(r, c) for p in bucket.params]
        if ctx.fused:
            pass
        elif views[0].dtype in _LOW_PRECISION:
            _update_low_precision_(views, O, 1 - rate, -lr * ratio)
        else:
            if wd != 0:
                torch._foreach_mul_(views, 1 - rate)
            upd = list(O.to(views[0].dtype, copy=True).unbind(0))
            if views[0].is_cuda:  # one pass fewer over the update: W + s * O, the product not rounded first
                torch._foreach_add_(views, upd, alpha=-lr * ratio)
            else:
                torch._foreach_mul_(upd, -lr * ratio)
                torch._foreach_add_(views, upd)

        stats.count += n
        stats.noised += len(ctx.noised)
        stats.grad_sq.append(ctx.grad_norms.square().sum())
        stats.numel += O.numel()
        if ctx.noised:
            stats.eps_sum.append(ctx.alpha * torch.stack([ctx.grad_norms[i] for i in ctx.noised]).sum())

    def _deferred_ranks(self, ctx: BucketContext, per: int, n: int, world: int) -> Tensor | None:
        """On a rank step k: the (n,) effective ranks measured at step k - rank_every (waiting for them
        if the host has not finished; None if there was no such measurement), after starting the
        measurement of this step's momentum buffers, which step k + rank_every will apply."""
        key = tuple(ctx.bucket.indices)
        job = self._rank_jobs.pop(key, None)
        ranks = None
        if job is not None and job.step == ctx.step - self.rank_every:
            ranks = job.full(self._gather)
        mine = [ctx.bufs[i] for i in ctx.rows]
        local = submit_effective_rank(torch.stack(mine), self.rank_method) if mine else RankJob(done=torch.zeros(0))
        self._rank_jobs[key] = _PendingRanks(ctx.step, local, ctx.bufs[0].device, per, n, world)
        return ranks

    def settle_measurements(self) -> None:
        """Wait for the effective-rank measurements in flight (and, sharded, all-gather them: then every
        rank must call this). state_dict() needs it first when the rank checks are sharded."""
        for key in sorted(self._rank_jobs):
            self._rank_jobs[key].full(self._gather)

    def _gather(self, x: Tensor, per: int, n: int, world: int) -> Tensor:
        """All-gather each rank's rows (padded to `per`) of a bucket-sized tensor; identity unsharded."""
        if world == 1:
            return x
        if x.shape[0] < per:
            x = torch.cat([x, x.new_zeros((per - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)[:n]

    # ------------------------------------------------------------------ diagnostics and state
    @property
    def step_count(self) -> int:
        """Optimizer steps taken (the clock of the schedules and of the noise draws)."""
        return self._step

    @property
    def diagnostics(self) -> dict:
        """Last step's diagnostics as Python numbers (reading them syncs with the GPU once).

        eff_rank_mean, eff_rank_min: over all matrices, on rank steps, else None.
        noise_fraction: fraction of matrices that received noise this step (0 for Muon).
        eps_mean: mean eps = alpha_t * ||g||_F over the matrices that received noise (0 if none).
        grad_norm: Frobenius norm of all Muon gradients together (raw p.grad).
        update_rms: RMS over all elements of adjust(shape) * O, the update before the lr.
        """
        d = self._diag
        if not d:
            return {k: None for k in DIAGNOSTIC_KEYS}
        out = {}
        for k in DIAGNOSTIC_KEYS:
            v = d.get(k)
            out[k] = float(v) if isinstance(v, Tensor) else v
        return out

    def state_dict(self):
        sd = super().state_dict()
        sd["muon_global"] = {"step": self._step, "class": type(self).__name__, "version": self.algorithm_version,
                             "rank_jobs": self._rank_jobs_state()}
        return sd

    def _rank_jobs_state(self) -> list[dict]:
        """The measurements not yet applied, as plain numbers (a checkpoint waits for those in flight)."""
        if any(j.world > 1 and j.resolved is None for j in self._rank_jobs.values()):
            raise RuntimeError(f"{type(self).__name__}: sharded effective-rank measurements are in flight; call "
                               "settle_measurements() on every rank before state_dict()")
        self.settle_measurements()
        return [{"indices": list(k), "step": j.step, "ranks": j.resolved.tolist()} for k, j in self._rank_jobs.items()]

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        g = state_dict.pop("muon_global", None)
        if g is not None and g.get("class") not in (None, type(self).__name__):
            raise ValueError(f"{type(self).__name__}: state_dict was saved by {g['class']}")
        super().load_state_dict(state_dict)
        self._step = int(g["step"]) if g is not None else 0
        self._bucket_cache.clear()
        self._rank_jobs = {}
        for j in (g or {}).get("rank_jobs", []):
            done = torch.tensor(j["ranks"], dtype=torch.float32)
            self._rank_jobs[tuple(j["indices"])] = _PendingRanks(int(j["step"]), RankJob(done=done), None, 0, len(done), 1,
                                                                 resolved=done)


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _norms32(tensors: list[Tensor]) -> Tensor:
    """(B,) float32 Frobenius norms; float64 tensors are normed in float64 (_foreach_norm refuses to narrow)."""
    if tensors[0].dtype == torch.float64:
        return torch.stack(torch._foreach_norm(tensors, 2)).float()
    return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))


def _update_low_precision_(views: list[Tensor], O: Tensor, decay: float, step: float) -> None:
    """W <- W * decay + step * O for bfloat16/float16 W, computed in float32 and rounded once: a bf16
    factor 1 - lr*wd is off by up to 2x (0.998 -> 0.99609375), and so is a bf16 step size."""
    for v, o in zip(views, O.unbind(0)):
        w = v.float()
        if decay != 1:
            w.mul_(decay)
        v.copy_(w.add_(o.float(), alpha=step))


class _PendingRanks:
    """A bucket's effective-rank measurement of step `step`: this rank's rows in flight (`local`), and the
    whole bucket's (n,) ranks once collected (`resolved`, CPU float32)."""

    def __init__(self, step: int, local: RankJob, device, per: int, n: int, world: int, resolved=None):
        self.step, self.local, self.device, self.per, self.n, self.world = step, local, device, per, n, world
        self.resolved = resolved

    def full(self, gather) -> Tensor:
        """gather: Muon._gather(x, per, n, world)."""
        if self.resolved is None:
            mine = self.local.result()
            if self.world > 1:  # a collective: every rank resolves the same buckets in the same order
                mine = gather(mine.to(self.device), self.per, self.n, self.world).cpu()
            self.resolved = mine
        return self.resolved


DIAGNOSTIC_KEYS = ("eff_rank_mean", "eff_rank_min", "noise_fraction", "eps_mean", "grad_norm", "update_rms")


class _StepStats:
    def __init__(self, rank_step: bool):
        self.rank_step = rank_step
        self.ranks: list[Tensor] = []
        self.grad_sq: list[Tensor] = []
        self.update_sq: list[Tensor] = []
        self.eps_sum: list[Tensor] = []
        self.count = 0
        self.noised = 0
        self.numel = 0

    def finish(self) -> dict:
        if self.count == 0:
            return {}
        d = {
            "noise_fraction": self.noised / self.count,
            "grad_norm": torch.stack(self.grad_sq).sum().sqrt(),
            "update_rms": (torch.stack(self.update_sq).sum() / self.numel).sqrt(),
            "eps_mean": torch.stack(self.eps_sum).sum() / self.noised if self.noised else 0.0,
            "eff_rank_mean": None,
            "eff_rank_min": None,
        }
        if self.ranks:
            ranks = torch.cat(self.ranks)
            d["eff_rank_mean"] = ranks.mean()
            d["eff_rank_min"] = ranks.min()
        return d
