"""Update rules of the Muon family other than the plain step: the geodesic step on the sphere (nGPT) and
cautious weight decay. Options of every Muon-family class (`update=`, `cautious_wd=`).

With O the orthogonalized update of a matrix W and U = adjust(shape) * O (the plain step is W - lr * U):

- update="euclidean" (the default, Muon's own step): W <- W - lr * U. On nGPT the trainer then puts W back
  on the sphere (every `training.projection_every` steps), so with projection every step this is the
  projection baseline normalize(w - lr * u) of the nGPT study.
- update="geodesic" / "geodesic_scaled": for every unit vector w of W (rows or columns, as the model's
  `sphere_dims()` says) with its piece u of U, the descent direction d = -u is projected onto the tangent
  space, t = d - (w.d) w, and w moves along the great circle:
      w <- cos(theta) w + sin(theta) t / ||t||,  theta = lr ("geodesic") or lr * ||t|| ("geodesic_scaled").
  "geodesic_scaled" equals the projected step to first order in lr; "geodesic" moves every vector by the
  same angle. A vector with t = 0 (u parallel to w) does not move. A vector not of unit norm moves on the
  sphere of its own radius (the math is done on w / ||w|| and the result scaled back), in float32.
  The seed's script computed W cos(theta) + U sin(theta) with one theta per matrix: that steps uphill
  (the sign), leaves the sphere (no tangent projection) and ignores the per-vector geometry
  (`seed_flipped_step` keeps it, for the tests that show it fails).
- cautious_wd=True: decoupled decay only where the update and the weight agree in sign, as modded-nanogpt's
  NorMuon does it (cautious_wd_and_update_inplace, train_gpt.py:916-933 @f411b3d3, :428-433 @9060ff47):
      mask = (U * W) >= 0,  W <- W - rate * mask * W - lr * U   (mask and both terms from the same W)
  With weight_decay 0 it does nothing, so the constructor refuses that combination.

The decay rate (`weight_decay_scale`; None picks "lr_lr_eff" with cautious_wd, "lr" without):
- "lr_lr_eff": rate = weight_decay * lr * lr_eff with lr_eff = lr * adjust(shape), modded-nanogpt's
  (eff_wd = wd * lr, train_gpt.py:878/899, times eff_lr = lr * shape_mult, :877/901, in :930; the
  same at 9060ff47 :640-641 and :433): quadratic in lr, so its wd 1.2 at lr 0.023 means the same here.
- "lr": rate = lr * weight_decay, the decoupled decay of torch.optim.Muon and KellerJordan/Muon
  (p.mul_(1 - lr * wd)); cautious decay used it before issue 20 (modded-nanogpt's wd 1.2 is about
  0.028 on this scale at lr 0.023).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

UPDATES = ("euclidean", "geodesic", "geodesic_scaled")
WEIGHT_DECAY_SCALES = ("lr", "lr_lr_eff")
# |t| below this fraction of |u| counts as "u parallel to w": no direction to move in. In float32, |t| from
# the dot products (geodesic_update_) carries an error of about 6e-4 |u|, so the floor sits above it; the
# vectors it stops move by at most lr * 1e-3 |u| with theta = lr * |t|.
TANGENT_FLOOR = 1e-3


def adjust_ratio(adjust_lr_fn: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's update scale for a (rows, cols) matrix."""
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


def resolve_weight_decay_scale(scale: str | None, cautious_wd: bool) -> str:
    """The decay rate's rule: as given, or modded-nanogpt's with cautious decay and lr * wd without."""
    if scale is None:
        return "lr_lr_eff" if cautious_wd else "lr"
    return scale


def decay_rate(scale: str, lr: float, weight_decay: float, ratio: float) -> float:
    """The fraction of W that the decoupled decay removes in one step (where it applies)."""
    if scale == "lr_lr_eff":
        return weight_decay * lr * (lr * ratio)
    return lr * weight_decay


def check_options(cls: str, update, cautious_wd, weight_decay, weight_decay_scale=None) -> None:
    """Raise ValueError for a bad `update` / `cautious_wd` / `weight_decay_scale`, and for cautious decay
    that would do nothing."""
    if weight_decay_scale is not None and weight_decay_scale not in WEIGHT_DECAY_SCALES:
        raise ValueError(f"{cls}: weight_decay_scale={weight_decay_scale!r} is not allowed; use one of "
                         f"{list(WEIGHT_DECAY_SCALES)} or None (lr_lr_eff with cautious_wd, lr without)")
    if update not in UPDATES:
        raise ValueError(f"{cls}: update={update!r} is not allowed; use one of {list(UPDATES)}")
    if not isinstance(cautious_wd, bool):
        raise ValueError(f"{cls}: cautious_wd={cautious_wd!r} is not allowed; use True or False")
    if cautious_wd and weight_decay == 0:
        raise ValueError(f"{cls}: cautious_wd=True with weight_decay=0 would do nothing (cautious decay only "
                         f"masks the weight decay); set weight_decay > 0 or cautious_wd=False")


def geodesic_step(W: Tensor, U: Tensor, lr: float, dim: int, scaled: bool) -> Tensor:
    """The geodesic update of every vector of W along `dim` (the dim the norm runs over), in float32.

    W, U: same shape (a matrix or a stack); the plain step would be W - lr * U. Returns the new W (float32,
    or float64 for float64 input).
    """
    dt = torch.promote_types(W.dtype, torch.float32)
    W, U = W.to(dt), U.to(dt)
    radius = torch.linalg.vector_norm(W, dim=dim, keepdim=True)
    w = W / radius
    d = -U
    t = d - (w * d).sum(dim=dim, keepdim=True) * w
    tn = torch.linalg.vector_norm(t, dim=dim, keepdim=True)
    moving = tn > TANGENT_FLOOR * torch.linalg.vector_norm(d, dim=dim, keepdim=True)
    theta = lr * tn if scaled else torch.full_like(tn, lr)
    theta = torch.where(moving, theta, torch.zeros_like(theta))
    direction = t / torch.where(moving, tn, torch.ones_like(tn))
    return radius * (torch.cos(theta) * w + torch.sin(theta) * direction)


def seed_flipped_step(W: Tensor, U: Tensor, lr: float, scaled: bool) -> Tensor:
    """The seed script's "geodesic" update (kept only to test that it fails): W cos(theta) + U sin(theta),
    theta = lr or lr * ||U||_F, one theta per matrix, no tangent projection."""
    dt = torch.promote_types(W.dtype, torch.float32)
    W, U = W.to(dt), U.to(dt)
    theta = lr * torch.linalg.vector_norm(U, dim=(-2, -1), keepdim=True) if scaled else torch.tensor(lr, dtype=dt)
    return W * torch.cos(theta) + U * torch.sin(theta)


def cautious_mask(U: Tensor, W: Tensor) -> Tensor:
    """Where decoupled decay applies: the update U (W - lr * U) and the weight agree in sign (or one is 0)."""
    return (U * W) >= 0


def replaces_update(opt) -> bool:
    """Whether apply_update, not Muon's plain step, applies this optimizer's update."""
    return opt.update != "euclidean" or opt.cautious_wd


def geodesic_update_(W: Tensor, O: Tensor, lr: float, ratio: float, dim: int, scaled: bool) -> None:
    """In place: W <- geodesic_step(W, ratio * O, lr, dim, scaled), W float32 (a stack), O any float dtype.

    Written as one linear combination per vector, W <- a W + b O, with a and b from three dot products
    (W.W, W.O, O.O), so that it costs a few passes over memory (the optimizer's path; geodesic_step is the
    readable reference it is tested against). With r = ||w||, wu = w.u, t = -u + (wu / r^2) w:
        ||t||^2 = ||u||^2 - wu^2 / r^2,   W_new = cos(theta) W + (r sin(theta) / ||t||) t.
    """
    ww = torch.linalg.vector_norm(W, dim=dim, keepdim=True, dtype=torch.float32).square_()
    uu = torch.linalg.vector_norm(O, dim=dim, keepdim=True, dtype=torch.float32).square_().mul_(ratio * ratio)
    wu = (W * O).sum(dim=dim, keepdim=True, dtype=torch.float32).mul_(ratio)
    tn = (uu - wu.square() / ww).clamp_min_(0.0).sqrt_()
    moving = tn > TANGENT_FLOOR * uu.sqrt()
    theta = tn * lr if scaled else torch.full_like(tn, lr)
    theta = torch.where(moving, theta, torch.zeros_like(theta))
    k = ww.sqrt() * torch.sin(theta) / torch.where(moving, tn, torch.ones_like(tn))
    a = torch.cos(theta) + k * wu / ww
    W.mul_(a).addcmul_(O, k.mul_(-ratio))


@torch.no_grad()
def apply_update(opt, bucket, group: dict, O: Tensor, ctx, stats) -> None:
    """The update and the statistics of one bucket, for Muon._finish_bucket when replaces_update(opt).

    Keeps Muon's statistics (update_sq, count, noised, grad_sq, numel, eps_sum) exactly as its plain path does.
    The arithmetic is float32 (W of the bucket stacked, per axis of its unit vectors for the geodesic).
    """
    r, c = bucket.shape
    n = len(bucket.params)
    lr, wd = group["lr"], group["weight_decay"]
    ratio = adjust_ratio(group["adjust_lr_fn"], r, c)
    stats.update_sq.append(torch.linalg.vector_norm(O, dtype=torch.float32).square() * ratio**2)
    views = [p.view(r, c) for p in bucket.params]
    groups: dict = {}  # the unit vectors' dim -> bucket positions (one group for the euclidean step)
    for i, p in enumerate(bucket.params):
        groups.setdefault(None if opt.update == "euclidean" else opt.sphere_dim_of(p), []).append(i)
    for dim, idx in groups.items():
        Og = O if len(idx) == n else O[idx]
        W = torch.stack([views[i] for i in idx]).float()
        if wd != 0:
            rate = decay_rate(opt.weight_decay_scale, lr, wd, ratio)
            if opt.cautious_wd:
                W.mul_(torch.where(cautious_mask(Og, W), 1.0 - rate, 1.0))
            else:
                W.mul_(1.0 - rate)
        if dim is None:
            W.add_(Og, alpha=-lr * ratio)
        else:
            geodesic_update_(W, Og, lr, ratio, dim + 1, opt.update == "geodesic_scaled")
        torch._foreach_copy_([views[i] for i in idx], list(W.to(views[0].dtype).unbind(0)))

    stats.count += n
    stats.noised += len(ctx.noised)
    stats.grad_sq.append(ctx.grad_norms.square().sum())
    stats.numel += O.numel()
    if ctx.noised:
        stats.eps_sum.append(ctx.alpha * torch.stack([ctx.grad_norms[i] for i in ctx.noised]).sum())
