"""nGPT, the normalized transformer (Loshchilov, Hsieh, Sun, Ginsburg 2024), as NVIDIA/ngpt's model.py
defines it (read there at ed19eb2; written anew here, not copied).

Every hidden vector and every weight vector lives on the unit sphere:

- `justnorm(x) = x / ||x||_2`, computed in float32; the residual stream stays float32.
- Weights are normalized at init and by the trainer after every `training.projection_every`-th optimizer
  step (`normalize_weights`), each unit vector along the embedding dimension: the rows of the embedding,
  the head and the q/k/v/fc_u/fc_v matrices (torch shape (out, d): norm over dim 1) and the columns of the
  attention and MLP output projections (shape (d, out): norm over dim 0). `sphere_dims()` names that dim
  per parameter; the geodesic Muon update (optim/sphere.py) uses the same map.
- Residual (reference): `h <- norm(A + |alpha| (B - A))`, A = norm(h), B = norm(block(h)), with per-dimension
  eigen learning rates alpha_A, alpha_M (init 0.05, stored scaled: parameter init 1/sqrt(d), effective
  value = parameter * 0.05 * sqrt(d)).
  Residual (gated, the seed's variant, `model.options` {"residual": "gated", "gate_alpha": 0.15}):
  `h <- norm(h + sigmoid(g) * gate_alpha * block(h))`, g per dimension (init 0), gate_alpha a constant.
- Attention: q, k after RoPE are `s_qk * norm(q)` per head (s_qk stored scaled like alpha, init 1), softmax
  scale sqrt(d_head) instead of 1/sqrt(d_head). RoPE is the GPT preset's (half-split layout), a true
  rotation: norms kept, q.k a function of the relative position. The reference's is not a rotation
  (model.py:44-54: `sin, cos = chunk(2)` of an interleaved sin/cos table pairs mismatched frequencies and
  never adds the pair; vectors shrink to ~0.71 of their norm, half the coordinates are zeroed at position 0, q.k
  loses the relative-position property; NVIDIA/ngpt issue 10). It deliberately differs: copying that defect
  would confound the optimizer comparisons with a positional-encoding bug (docs/ngpt.md).
- MLP: SwiGLU `proj(u * silu(v))` with u = s_u * sqrt(d) * fc_u(h), v = s_v * sqrt(d) * fc_v(h) (s_u, s_v
  stored unscaled, init 1), hidden size 4d. fc_u and fc_v are separate matrices (the reference's c_fc is
  their concatenation, normalized by rows the same way) so that Muon orthogonalizes each on its own, as the
  GPT preset does with q, k, v.
- Logits: `s_z * lm_head(h)` with s_z per vocabulary entry (stored scaled, init 1).
- No LayerNorm, no biases, no weight tying.

Optimizer split (optim/factory.py): the 1-D scalars (alphas, gates, s_qk, s_u, s_v, s_z) go to AdamW by
their dimension; `embed.weight` and `lm_head.weight` go to AdamW by name ("embed", "lm_head"), as in the GPT
presets and Keller Jordan's Muon recipe (the nGPT reference trains everything with AdamW; the seed's
SimpleMuon took only the attention and MLP matrices); the block matrices go to the Muon-family arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model import ModelError, apply_rotary, rotary_tables

RESIDUALS = ("reference", "gated")
DEFAULT_GATE_ALPHA = 0.15


@dataclass(frozen=True)
class NGPTConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 4096
    rope_base: float = 10000.0
    mlp_mult: int = 4
    residual: str = "reference"
    gate_alpha: float = DEFAULT_GATE_ALPHA
    alpha_init: float = 0.05  # eigen learning rates alpha_A, alpha_M (effective value at init)

    @property
    def base_scale(self) -> float:
        return 1.0 / math.sqrt(self.n_embd)


NGPT_PRESETS = {
    # like the `tiny` GPT preset: byte vocabulary, 2 x 64, for CPU
    "ngpt-tiny": NGPTConfig(vocab_size=256, n_layer=2, n_head=4, n_embd=64, block_size=1024),
    "ngpt-124m": NGPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768),
    "ngpt-350m": NGPTConfig(vocab_size=50304, n_layer=24, n_head=16, n_embd=1024),
}


def justnorm(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ||x||_2 along dim, in float32 (the result is float32)."""
    x = x.float()
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True)


class Attention(nn.Module):
    def __init__(self, cfg: NGPTConfig):
        super().__init__()
        d = cfg.n_embd
        if d % cfg.n_head or (d // cfg.n_head) % 2:
            raise ModelError(f"n_embd {d} must split into {cfg.n_head} heads of even size")
        self.n_head, self.head_dim = cfg.n_head, d // cfg.n_head
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.s_qk_scale = 1.0 / cfg.base_scale  # init value 1 / init scaling base_scale
        self.s_qk = nn.Parameter(torch.full((d,), cfg.base_scale))

    def forward(self, h, cos, sin):
        B, T, C = h.shape
        q = self.q(h).view(B, T, self.n_head, self.head_dim)
        k = self.k(h).view(B, T, self.n_head, self.head_dim)
        v = self.v(h).view(B, T, self.n_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        s = (self.s_qk * self.s_qk_scale).view(self.n_head, self.head_dim)
        q = (s * justnorm(q)).to(v.dtype)
        k = (s * justnorm(k)).to(v.dtype)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           scale=math.sqrt(self.head_dim))
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: NGPTConfig):
        super().__init__()
        d, hidden = cfg.n_embd, cfg.mlp_mult * cfg.n_embd
        self.fc_u = nn.Linear(d, hidden, bias=False)
        self.fc_v = nn.Linear(d, hidden, bias=False)
        self.proj = nn.Linear(hidden, d, bias=False)
        self.s_uv_scale = math.sqrt(d)  # (init value 1 / init scaling 1) * sqrt(d)
        self.s_u = nn.Parameter(torch.ones(hidden))
        self.s_v = nn.Parameter(torch.ones(hidden))

    def forward(self, h):
        u = self.fc_u(h) * (self.s_u * self.s_uv_scale)
        v = self.fc_v(h) * (self.s_v * self.s_uv_scale)
        return self.proj(u * F.silu(v))


class Block(nn.Module):
    def __init__(self, cfg: NGPTConfig):
        super().__init__()
        d = cfg.n_embd
        self.residual = cfg.residual
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        if cfg.residual == "reference":
            self.alpha_scale = cfg.alpha_init / cfg.base_scale
            self.attn_alpha = nn.Parameter(torch.full((d,), cfg.base_scale))
            self.mlp_alpha = nn.Parameter(torch.full((d,), cfg.base_scale))
        else:
            self.gate_alpha = float(cfg.gate_alpha)
            self.attn_gate = nn.Parameter(torch.zeros(d))
            self.mlp_gate = nn.Parameter(torch.zeros(d))

    def _mix(self, h, out, coef):
        if self.residual == "reference":
            a = torch.abs(coef * self.alpha_scale)
            A, B = justnorm(h), justnorm(out)
            return justnorm(A + a * (B - A))
        return justnorm(h + torch.sigmoid(coef) * self.gate_alpha * out.float())

    def forward(self, h, cos, sin):
        coef_a, coef_m = ((self.attn_alpha, self.mlp_alpha) if self.residual == "reference"
                          else (self.attn_gate, self.mlp_gate))
        h = self._mix(h, self.attn(h, cos, sin), coef_a)
        return self._mix(h, self.mlp(h), coef_m)


class NGPT(nn.Module):
    def __init__(self, cfg: NGPTConfig):
        super().__init__()
        if cfg.residual not in RESIDUALS:
            raise ModelError(f"model.options.residual {cfg.residual!r}: one of {list(RESIDUALS)}")
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.block_size = cfg.block_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.s_z_scale = 1.0 / cfg.base_scale
        self.s_z = nn.Parameter(torch.full((cfg.vocab_size,), cfg.base_scale))
        cos, sin = rotary_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        # matrices: normal then onto the sphere (the std is irrelevant after normalization; the draw order
        # is model order, from torch's global generator seeded with the run seed)
        for name in self.sphere_dims():
            self.get_parameter(name).normal_(0.0, 0.02)
        self.normalize_weights()

    def sphere_dims(self) -> dict[str, int]:
        """Parameter name -> the dim its unit vectors run along (`p.norm(dim=...)` is 1 for every vector):
        1 for (out, d) matrices (rows), 0 for the (d, out) output projections (columns)."""
        dims = {"embed.weight": 1}
        for i in range(len(self.blocks)):
            b = f"blocks.{i}."
            dims.update({b + "attn.q.weight": 1, b + "attn.k.weight": 1, b + "attn.v.weight": 1,
                         b + "attn.proj.weight": 0, b + "mlp.fc_u.weight": 1, b + "mlp.fc_v.weight": 1,
                         b + "mlp.proj.weight": 0})
        dims["lm_head.weight"] = 1
        return dims

    # Matrices of one shape, dim and dtype are projected as one stack when there are at least this many
    # (issue 24: per parameter the projection was ~170 small launches, 3.7 ms of a 7-9 ms Muon step on an
    # H200; stacked it is a few launches per shape, at the price of one copy in and one out).
    STACK_AT_LEAST = 3

    def _sphere_groups(self) -> list[tuple[int, list[str]]]:
        """(dim, names) of the matrices projected together, in sphere_dims() order of first appearance."""
        key = tuple((n, tuple(self.get_parameter(n).shape), self.get_parameter(n).dtype) for n in self.sphere_dims())
        cached = getattr(self, "_sphere_groups_cache", None)
        if cached is None or cached[0] != key:
            by: dict = {}
            for (name, shape, dtype), dim in zip(key, self.sphere_dims().values()):
                by.setdefault((dim, shape, dtype), []).append(name)
            self._sphere_groups_cache = (key, [(d, names) for (d, _, _), names in by.items()])
        return self._sphere_groups_cache[1]

    @torch.no_grad()
    def normalize_weights(self) -> torch.Tensor:
        """Project every matrix onto the sphere along its dim; returns the mean |‖w‖ - 1| over all unit
        vectors just before (a float32 0-dim tensor on the model's device; reading it syncs).

        Matrices of one shape and dim (q, k, v of all layers, ...) go as one stack: the norms are float32
        over the same elements as one matrix at a time (on CUDA the reduction's summation order may differ
        by rounding), the division the same; the returned mean concatenates the norms in sphere_dims() order."""
        norms: dict[str, torch.Tensor] = {}
        for dim, names in self._sphere_groups():
            ps = [self.get_parameter(n) for n in names]
            if len(ps) < self.STACK_AT_LEAST:
                for name, p in zip(names, ps):
                    n = torch.linalg.vector_norm(p, dim=dim, keepdim=True, dtype=torch.float32)
                    p.div_(n.to(p.dtype))
                    norms[name] = n.flatten()
                continue
            w = torch.stack(ps)
            n = torch.linalg.vector_norm(w, dim=dim + 1, keepdim=True, dtype=torch.float32)
            w.div_(n.to(w.dtype))
            torch._foreach_copy_(ps, list(w.unbind(0)))
            for name, ni in zip(names, n.unbind(0)):
                norms[name] = ni.flatten()
        return torch.cat([norms[n] for n in self.sphere_dims()]).sub_(1.0).abs_().mean()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.size(1)
        if T > self.block_size:
            raise ModelError(f"sequence length {T} exceeds the model's block size {self.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        h = self.embed(idx).float()  # rows of unit norm: h is on the sphere
        for block in self.blocks:
            h = block(h, cos, sin)
        logits = self.lm_head(h) * (self.s_z * self.s_z_scale)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, as GPT.flops_per_token: 6 x matmul parameters (head included, input
        embedding excluded) + 12 x n_layer x n_embd x seq_len for attention."""
        n_matmul = sum(p.numel() for n, p in self.named_parameters() if n != "embed.weight" and p.dim() == 2)
        return 6.0 * n_matmul + 12.0 * self.cfg.n_layer * self.cfg.n_embd * seq_len


def ngpt_config(arch: str, vocab_size: int | None = None, options: dict | None = None) -> NGPTConfig:
    if arch not in NGPT_PRESETS:
        raise ModelError(f"model.arch {arch!r}: one of {sorted(NGPT_PRESETS)}")
    cfg = NGPT_PRESETS[arch]
    if vocab_size is not None:
        cfg = replace(cfg, vocab_size=vocab_size)
    opts = dict(options or {})
    unknown = sorted(set(opts) - {"residual", "gate_alpha"})
    if unknown:
        raise ModelError(f"model.options {unknown}: unknown; allowed keys: ['gate_alpha', 'residual']")
    residual = opts.get("residual", "reference")
    if residual not in RESIDUALS:
        raise ModelError(f"model.options.residual {residual!r}: one of {list(RESIDUALS)}")
    if "gate_alpha" in opts and residual != "gated":
        raise ModelError("model.options.gate_alpha: only with residual 'gated' (the reference residual has none)")
    return replace(cfg, residual=residual, gate_alpha=float(opts.get("gate_alpha", DEFAULT_GATE_ALPHA)))


def build_ngpt(arch: str, vocab_size: int | None = None, tie_embeddings: bool = False,
               options: dict | None = None) -> NGPT:
    if tie_embeddings:
        raise ModelError(f"model.tie_embeddings: nGPT ({arch}) has no weight tying")
    return NGPT(ngpt_config(arch, vocab_size, options))


def build(arch: str, vocab_size: int | None = None, tie_embeddings: bool = False, options: dict | None = None,
          revision: str | None = None) -> NGPT:
    """The nGPT family's models (trainer/models/families.py "ngpt")."""
    return build_ngpt(arch, vocab_size, tie_embeddings, options)


def step_hook(model: nn.Module, training) -> LazyProjection | None:
    """The family's per-step hook: the projection back onto the sphere every training.projection_every steps."""
    return sphere_projection(model, training.projection_every)


class LazyProjection:
    """The trainer's hook: after every `every`-th optimizer step, put the model's weights back on the sphere.

    after_step(step) (step = optimizer steps taken, 1-based) returns the mean deviation of the weight norms
    from 1 just before the projection (a 0-dim tensor), or None on steps without one.
    """

    def __init__(self, model: nn.Module, every: int = 1):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"training.projection_every={every!r} is not allowed; use an int >= 1")
        self.model, self.every = model, every

    def after_step(self, step: int) -> torch.Tensor | None:
        if step % self.every:
            return None
        return self.model.normalize_weights()


def sphere_projection(model: nn.Module, every: int) -> LazyProjection | None:
    """A LazyProjection for a model whose weights live on the sphere, else None."""
    if not callable(getattr(model, "normalize_weights", None)):
        return None
    return LazyProjection(model, every)
