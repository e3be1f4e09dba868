"""DeMo: compressed data-parallel training (Peng, Quesnelle, Kingma 2024; bloc97/DeMo, Psyche's distro.rs),
with two Muon variants. The optimizer does its own exchange: the trainer must not all-reduce the
gradients of its parameters (`communicates_itself`).

One step, per parameter, on every rank r (g_r: the rank's local gradient):

    delta_r <- beta * delta_r + lr * g_r                 local momentum (compression_decay, 0.999), lr the
                                                          step's scheduled lr (bloc97/DeMo demo.py:128-132);
                                                          lr_scaled_delta=False: + g_r (the former rule)
    C      = DCT(delta_r) per chunk (optim.dct)          'pre': S = DCT(orth(delta_r)) chooses and is sent
    idx    = top-k |C| per chunk (|S| for 'pre')
    sent   = C[idx] ('pre': S[idx]), as float32/bf16 values or 1 sign bit each
    delta_r <- delta_r - IDCT(C[idx])                    error feedback (the sent frequencies leave)
    all_gather (idx, sent) of every rank (one flat uint8 buffer per step; parameters with the same
                                                          chunk shape are stacked and sent as one segment)
    D      = IDCT(each coefficient's mean over the ranks that sent it)   the shared direction, identical
                                                          on all ranks (demo.py:156-158, :296 scatter_reduce
                                                          "mean", include_self=False); mean_over_senders=False:
                                                          sum / world size (the former rule)
    U      = sign(D)                                     orthogonalize='none' (DeMo as published), and
                                                          'pre' with pre_update='sign' (the seed's design:
                                                          Psyche's pipeline with orth inserted before encoding)
           = D * sqrt(min(m, n)) / ||D||_F * adjust       'pre', pre_update='rescale' (norm of an orthogonal
                                                          factor, so Muon's lr carries over)
           = D * adjust                                  'pre', pre_update='raw'
           = orth(D) * adjust                            'post': orthogonalize the decoded direction
    W      <- W * (1 - lr * weight_decay) - lr * U       (demo.py:124-125, then SGD on sign, :167-170)

DeMo as published (orthogonalize='none', the defaults): bloc97/DeMo demo.py @0e48145, checked step for
step against an independent float64 implementation at world sizes 1, 2 and 4 under warmup and cooldown
(tests/test_demo_reference.py). The two former rules are kept as options, off by default, only to
reproduce runs made before issue 20: with them the optimizer is not DeMo as published (at a constant lr
lr_scaled_delta=False changes only delta's scale, which the sign step ignores; under a schedule it
re-weights old against new gradients; mean_over_senders=False shrinks a coefficient that some ranks did
not send towards 0).

'pre' error feedback: the sent values are the orthogonalized momentum's coefficients, which live on
another scale than delta (||orth(X)||_F = sqrt(min(m, n))); what leaves delta is delta's own
coefficients at the sent indices, so that delta stays a momentum of gradients and the conservation
C_before = C[idx] + C_residual holds exactly. With sign=True the error feedback also removes the
full-precision coefficients (Psyche's quantize_1bit does the same): the quantization error is not
fed back.

Bytes: `bytes_sent_per_step` is the size of the buffer this rank passes to all_gather (indices +
values, exactly as sent); `dense_bytes_per_step` is the size of the same parameters' gradients, i.e.
the payload of an all-reduce of them. Both are per rank and counted whether or not a process group
exists. A ring all-gather moves (W-1) x payload into every rank, a ring all-reduce 2(W-1)/W x payload
out of every rank: these are payloads, not wire bytes.

Chunks, top-k and index types: see optim/dct.py. Non-matrix parameters are not this class's business
(optim/factory.py gives them to AdamW; their gradients are all-reduced uncompressed by the trainer and
counted by MuonWithAdamW.communication()). 1-D parameters are accepted with orthogonalize='none'.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from . import dct as D
from .muon import DIAGNOSTIC_KEYS, _invalid, _is_int
from .sphere import adjust_ratio
from .orthogonalize import orthogonalize as _orth, resolve_eps
from .registry import ALGORITHM_VERSIONS, check_arguments

ORTHOGONALIZE_MODES = ("none", "pre", "post")
PRE_UPDATES = ("sign", "rescale", "raw")
DEMO_DIAGNOSTIC_KEYS = DIAGNOSTIC_KEYS + ("bytes_sent_per_step", "dense_bytes_per_step")


def _delta_dtype(p: Tensor) -> torch.dtype:
    """float32 for float32/bf16/fp16 parameters (every run), float64 for float64 ones (so that the tests can
    compare this discrete algorithm, top-k and sign, with a float64 reference without rounding ties)."""
    return torch.promote_types(p.dtype, torch.float32)


class DeMo(torch.optim.Optimizer):
    """Decoupled-momentum compressed data-parallel optimizer; see the module docstring.

    Args:
        lr: learning rate (sign steps for 'none'; Muon's spectral units for 'pre'/'post').
        compression_decay: beta of the local momentum delta = beta * delta + g (0.999).
        chunk: chunk side (64: 64 x 64 chunks for matrices, 64 for vectors).
        topk: fraction of each chunk's coefficients sent, in (0, 1] (k = round(topk * chunk numel), >= 1;
            0.0078125 = DeMo's 32 of 4096).
        sign: send 1 bit (the sign) per value instead of the value.
        value_dtype: 'float32' | 'bfloat16' for the values when sign=False.
        orthogonalize: 'none' (DeMo: sign of the decoded direction) | 'pre' | 'post'.
        pre_update: the update of 'pre' from the decoded direction D: 'sign' (sign(D) with DeMo's SGD step:
            the seed's pipeline, Psyche's DisTrO with orthogonalization inserted before encoding; DeMo's lr),
            'rescale' (D rescaled to an orthogonal factor's norm x Muon's shape factor; Muon's lr),
            'raw' (D x Muon's shape factor: the mean of the ranks' compressed orthogonal factors).
        weight_decay: decoupled, W *= 1 - lr * weight_decay.
        lr_scaled_delta: delta accumulates lr * g (True, DeMo) or g (False, the rule before issue 20).
        mean_over_senders: decode each coefficient as the mean over the ranks that sent it (True, DeMo) or
            as the sum / world size (False, the rule before issue 20).
        adjust_lr_fn, orthogonalizer, ns_steps, ns_precision, eps: Muon's, for 'pre'/'post' (eps None: the
            orthogonalizer's own, optim.orthogonalize.DEFAULT_EPS).
        seed: accepted for the factory (DeMo draws no random numbers).
    """

    communicates_itself = True  # the trainer leaves these parameters' gradients alone
    has_rank_local_state = True  # delta differs between ranks: checkpoint it per rank

    def __init__(
        self,
        params,
        lr: float = 0.001,
        compression_decay: float = 0.999,
        chunk: int = 64,
        topk: float = 0.0078125,
        sign: bool = False,
        value_dtype: str = "float32",
        orthogonalize: str = "none",
        pre_update: str = "sign",
        weight_decay: float = 0.0,
        lr_scaled_delta: bool = True,
        mean_over_senders: bool = True,
        adjust_lr_fn: str | None = None,
        orthogonalizer: str = "newton_schulz",
        ns_steps: int = 5,
        ns_precision: str = "bf16",
        eps: float | None = None,
        seed: int = 0,
    ):
        name = type(self).__name__
        check_arguments(self, locals())  # the ranges optim/registry.py declares
        if not _is_int(seed):
            raise _invalid(name, "seed", seed, "use an int")
        self.chunk, self.topk, self.sign, self.value_dtype = chunk, float(topk), sign, D.VALUE_DTYPES[value_dtype]
        self.mode = orthogonalize
        self.pre_update = pre_update
        self.orthogonalizer, self.ns_steps, self.ns_precision = orthogonalizer, ns_steps, ns_precision
        self.eps = resolve_eps(orthogonalizer, eps)
        self.lr_scaled_delta, self.mean_over_senders = lr_scaled_delta, mean_over_senders
        self.seed = seed
        self.algorithm_version = ALGORITHM_VERSIONS.get(name, 1)
        self._step = 0
        self._diag: dict = {}
        self._layouts: dict[int, D.Layout] = {}
        defaults = dict(lr=lr, compression_decay=compression_decay, weight_decay=weight_decay,
                        adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        name = type(self).__name__
        for p in group["params"]:
            if p.ndim == 0:
                raise _invalid(name, "params", tuple(p.shape), "scalars cannot be chunked (use AdamW)")
            if p.ndim < 2 and self.mode != "none":
                raise _invalid(name, "params", tuple(p.shape), f"orthogonalize={self.mode!r} needs matrices (use AdamW)")
            if torch.is_complex(p) or not p.is_floating_point():
                raise _invalid(name, "params", p.dtype, "real floating-point parameters only")

    def _layout(self, p: Tensor) -> D.Layout:
        L = self._layouts.get(id(p))
        if L is None or L.shape != tuple(p.shape):
            L = self._layouts[id(p)] = D.make_layout(p.shape, self.chunk, self.topk)
        return L

    @staticmethod
    def _world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    # ------------------------------------------------------------------ buckets, exchange, decode
    def _buckets(self, items: list) -> list[list[int]]:
        """Positions of the parameters grouped by chunk layout (a, b): each bucket's chunks are stacked
        and transformed, selected and decoded in single batched calls (the step's speed)."""
        key = tuple(id(p) for p, _ in items)
        if getattr(self, "_bucket_key", None) != key:
            by: dict = {}
            for i, (p, _) in enumerate(items):
                L = self._layout(p)
                by.setdefault((L.a, L.b), []).append(i)
            self._bucket_key, self._bucket_list = key, list(by.values())
        return self._bucket_list

    def _value_bytes(self, n: int) -> int:
        return (n + 7) // 8 if self.sign else n * self.value_dtype.itemsize

    def _orth_by_shape(self, mats: list[Tensor]) -> list[Tensor]:
        """Orthogonalize 2-D matrices, stacking those of one shape into one batched call."""
        out: list = [None] * len(mats)
        by: dict = {}
        for i, m in enumerate(mats):
            by.setdefault(tuple(m.shape), []).append(i)
        for pos in by.values():
            o = _orth(torch.stack([mats[i] for i in pos]), self.orthogonalizer, self.ns_steps, self.ns_precision,
                      self.eps).float()
            for j, i in enumerate(pos):
                out[i] = o[j]
        return out

    def _encode(self, items, layouts, bucket) -> tuple[list[Tensor], int]:
        """Selection and error feedback for one bucket; returns its byte segments and its chunk count."""
        Ls = [layouts[i] for i in bucket]
        a, b, k = Ls[0].a, Ls[0].b, Ls[0].k
        deltas = [self.state[items[i][0]]["delta"] for i in bucket]
        views = [d.reshape(L.rows, L.cols) for d, L in zip(deltas, Ls)]
        X = torch.empty(sum(L.n_chunks for L in Ls), a, b, dtype=deltas[0].dtype, device=deltas[0].device)
        off = 0
        for v, L in zip(views, Ls):  # one copy per matrix into the bucket's chunks (not a copy, then a cat)
            D.to_chunks_into(X[off:off + L.n_chunks], v, L)
            off += L.n_chunks
        C = D.dct_chunks(X)
        if self.mode == "pre":
            O = self._orth_by_shape(views)
            S = D.dct_chunks(torch.cat([D.to_chunks(o, L) for o, L in zip(O, Ls)]))
            idx = torch.topk(S.abs(), k, dim=-1, sorted=False).indices
            vals, ef = S.gather(-1, idx), C.gather(-1, idx)
        else:
            idx, vals = D.topk(C, k)
            ef = vals
        X.sub_(D.idct_chunks(D.scatter(idx, ef, a * b), a, b))  # error feedback: the sent part leaves delta
        off = 0
        for d, L in zip(deltas, Ls):
            D.from_chunks_into(d, X[off:off + L.n_chunks], L)
            off += L.n_chunks
        segs = [idx.to(Ls[0].idx_dtype).reshape(-1).view(torch.uint8)]
        segs.append(D.pack_signs(vals) if self.sign else vals.to(self.value_dtype).reshape(-1).view(torch.uint8))
        return segs, X.shape[0]

    def _decode(self, parts: list[Tensor], off: int, n_chunks: int, L: D.Layout,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, int]:
        """The bucket's shared direction as (n_chunks, a, b) chunks, and the next offset."""
        n = n_chunks * L.k
        ib = n * L.idx_dtype.itemsize
        vb = self._value_bytes(n)
        idxs, vals = [], []
        for buf in parts:
            idxs.append(buf[off:off + ib].clone().view(L.idx_dtype))
            raw = buf[off + ib:off + ib + vb]
            vals.append(D.unpack_signs(raw, n) if self.sign else raw.clone().view(self.value_dtype).float())
        return (D.decode_mean_chunks(idxs, vals, n_chunks, L.a, L.b, L.k, dtype, over_senders=self.mean_over_senders),
                off + ib + vb)

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step += 1
        world, _ = self._world()
        items = [(p, g) for g in self.param_groups for p in g["params"]]
        if not items:
            self._diag = {}
            return loss
        grads = [p.grad for p, _ in items if p.grad is not None]
        layouts = [self._layout(p) for p, _ in items]
        for group in self.param_groups:  # local momentum: delta = beta * delta + lr * g (DeMo) or + g
            ds, gs = [], []
            for p in group["params"]:
                st = self.state[p]
                if "delta" not in st:  # float32 (float64 for float64 parameters: the reference tests)
                    st["delta"] = torch.zeros_like(p, dtype=_delta_dtype(p), memory_format=torch.contiguous_format)
                ds.append(st["delta"])
                # a parameter without a gradient still sends (zeros): every rank must send the same layout
                gs.append(p.grad.to(st["delta"].dtype) if p.grad is not None else torch.zeros_like(st["delta"]))
            if ds:
                torch._foreach_mul_(ds, group["compression_decay"])
                torch._foreach_add_(ds, [g.reshape(d.shape) for g, d in zip(gs, ds)],
                                    alpha=group["lr"] if self.lr_scaled_delta else 1.0)
        buckets = self._buckets(items)
        segs, counts = [], []
        for bucket in buckets:
            s, n = self._encode(items, layouts, bucket)
            segs.extend(s)
            counts.append(n)
        buf = torch.cat(segs)
        dense_bytes = sum(p.numel() * p.element_size() for p, _ in items)
        if world > 1:
            parts = [torch.empty_like(buf) for _ in range(world)]
            dist.all_gather(parts, buf)
        else:
            parts = [buf]
        off = 0
        dirs: list = [None] * len(items)
        for bucket, n in zip(buckets, counts):
            chunks, off = self._decode(parts, off, n, layouts[bucket[0]], self.state[items[bucket[0]][0]]["delta"].dtype)
            c0 = 0
            for i in bucket:
                L = layouts[i]
                dirs[i] = D.from_chunks(chunks[c0:c0 + L.n_chunks], L)
                c0 += L.n_chunks
        if self.mode == "post":
            ortho = self._orth_by_shape([d.reshape(L.rows, L.cols) for d, L in zip(dirs, layouts)])
        upd_sq = []
        pos = 0
        for group in self.param_groups:  # the update, with foreach ops per group (few kernel launches)
            idx = list(range(pos, pos + len(group["params"])))
            pos += len(idx)
            if not idx:
                continue
            if self.mode == "none" or (self.mode == "pre" and self.pre_update == "sign"):
                us = torch._foreach_sign([dirs[i] for i in idx])
            elif self.mode == "post":
                us = torch._foreach_mul([ortho[i] for i in idx],
                                        [adjust_ratio(group["adjust_lr_fn"], layouts[i].rows, layouts[i].cols)
                                         for i in idx])
            elif self.pre_update == "raw":
                us = torch._foreach_mul([dirs[i] for i in idx],
                                        [adjust_ratio(group["adjust_lr_fn"], layouts[i].rows, layouts[i].cols)
                                         for i in idx])
            else:
                us = []
                for i in idx:
                    L = layouts[i]
                    scale = math.sqrt(min(L.rows, L.cols)) * adjust_ratio(group["adjust_lr_fn"], L.rows, L.cols)
                    us.append(dirs[i] * (scale / dirs[i].norm().clamp(min=self.eps)))
            upd_sq.append(torch.stack(torch._foreach_norm(us, 2)).square().sum())
            ps = [items[i][0] for i in idx]
            lr, wd = group["lr"], group["weight_decay"]
            if wd != 0:
                torch._foreach_mul_(ps, 1 - lr * wd)
            torch._foreach_add_(ps, [u.reshape(p.shape).to(p.dtype) for u, p in zip(us, ps)], alpha=-lr)
        numel = sum(p.numel() for p, _ in items)
        self._diag = {
            "grad_norm": torch.stack(torch._foreach_norm(grads, 2)).square().sum().sqrt() if grads else 0.0,
            "update_rms": (torch.stack(upd_sq).sum() / numel).sqrt(),
            "noise_fraction": 0.0, "eps_mean": 0.0, "eff_rank_mean": None, "eff_rank_min": None,
            "bytes_sent_per_step": int(buf.numel()),
            "dense_bytes_per_step": int(dense_bytes),
        }
        return loss

    def bytes_per_step(self) -> tuple[int, int]:
        """(bytes sent, dense bytes) per step for the current parameters, without stepping."""
        items = [(p, g) for g in self.param_groups for p in g["params"]]
        sent = 0
        for bucket in self._buckets(items):
            L = self._layout(items[bucket[0]][0])
            n = sum(self._layout(items[i][0]).n_chunks for i in bucket) * L.k
            sent += n * L.idx_dtype.itemsize + self._value_bytes(n)
        return sent, sum(p.numel() * p.element_size() for p, _ in items)

    # ------------------------------------------------------------------ diagnostics and state
    @property
    def step_count(self) -> int:
        return self._step

    @property
    def diagnostics(self) -> dict:
        d = self._diag
        if not d:
            return {k: None for k in DEMO_DIAGNOSTIC_KEYS}
        return {k: (float(v) if isinstance(v, Tensor) else v) for k, v in ((k, d.get(k)) for k in DEMO_DIAGNOSTIC_KEYS)}

    def state_dict(self):
        sd = super().state_dict()
        sd["demo_global"] = {"step": self._step, "class": type(self).__name__, "version": self.algorithm_version}
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        g = state_dict.pop("demo_global", None)
        if g is not None and g.get("class") not in (None, type(self).__name__):
            raise ValueError(f"{type(self).__name__}: state_dict was saved by {g['class']}")
        super().load_state_dict(state_dict)
        for p, st in self.state.items():  # torch casts state to the parameter dtype; delta stays float32
            if "delta" in st:
                st["delta"] = st["delta"].to(_delta_dtype(p))
        self._step = int(g["step"]) if g is not None else 0
