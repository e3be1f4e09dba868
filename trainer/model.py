"""A GPT in the style of nanoGPT / modded-nanogpt: RMSNorm (pre-norm, learnable gain), rotary position
embeddings, causal scaled-dot-product attention, a ReLU^2 MLP (4x), no biases.

Head: untied by default (the input embedding `embed.weight` and the output head `lm_head.weight` are
separate matrices, as in modded-nanogpt); `model.tie_embeddings: true` shares them as in GPT-2. The
untied gpt-124m therefore has 124M parameters in the GPT-2 count (tied) plus a 38.6M head.

Parameter names carry the words the optimizer split looks for: `embed`, `lm_head` and `norm` go to
the AdamW half by default (spec optimizer.split.adamw_patterns); the q/k/v/proj/fc matrices of the
blocks go to Muon. q, k and v are separate matrices so that Muon orthogonalizes each on its own.

Init (nanoGPT): normal(0, 0.02) for every matrix and the embedding, 0.02/sqrt(2 n_layer) for the two
residual output projections, gains 1. It is drawn from torch's global generator, which the trainer
seeds with the run seed just before building the model, so init depends on the seed only (not on the
optimizer arm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.models import build_model  # noqa: F401  (every family's models; kept here for its callers)
from trainer.models.families import ModelError


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int = 4096  # longest sequence (sizes the rotary table only)
    tie_embeddings: bool = False
    rope_base: float = 10000.0
    norm_eps: float = 1e-6


PRESETS = {
    # well under 1M parameters (about 0.13M); byte vocabulary; for CPU
    "tiny": GPTConfig(vocab_size=256, n_layer=2, n_head=4, n_embd=64, block_size=1024),
    # GPT-2 small / medium shapes; GPT-2 vocabulary padded to a multiple of 128 (50257 -> 50304)
    "gpt-124m": GPTConfig(vocab_size=50304, n_layer=12, n_head=12, n_embd=768),
    "gpt-350m": GPTConfig(vocab_size=50304, n_layer=24, n_head=16, n_embd=1024),
    # 1.0B non-embedding parameters: 20 layers of width 2048, head size 128
    "gpt-1b": GPTConfig(vocab_size=50304, n_layer=20, n_head=16, n_embd=2048),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)


def rotary_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    t = torch.arange(length, dtype=torch.float64)
    f = torch.outer(t, inv)
    return f.cos().float(), f.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos, sin: (T, D/2). Rotates the two halves of each head (GPT-NeoX layout)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d].float(), x[..., d:].float()
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x1 * c + x2 * s, x2 * c - x1 * s], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0 and (cfg.n_embd // cfg.n_head) % 2 == 0
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)
        k = self.k(x).view(B, T, self.n_head, self.head_dim)
        v = self.v(x).view(B, T, self.n_head, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        self.block_size = cfg.block_size
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @torch.no_grad()
    def _init_weights(self):
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.startswith("norm_f"):
                p.fill_(1.0)
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layer))
            else:
                p.normal_(0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.size(1)
        if T > self.block_size:
            raise ModelError(f"sequence length {T} exceeds the model's block size {self.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 x matmul parameters (the input embedding
        excluded, the head included even when tied) + 12 x n_layer x n_embd x seq_len for attention
        (PaLM appendix B; the causal mask's saving is not subtracted)."""
        cfg = self.cfg
        n_matmul = sum(p.numel() for n, p in self.named_parameters() if n != "embed.weight" and p.dim() == 2)
        if cfg.tie_embeddings:
            n_matmul += self.embed.weight.numel()
        return 6.0 * n_matmul + 12.0 * cfg.n_layer * cfg.n_embd * seq_len


def preset_config(arch: str, vocab_size: int | None = None, tie_embeddings: bool = False) -> GPTConfig:
    if arch not in PRESETS:
        raise ModelError(f"model.arch {arch!r}: one of {sorted(PRESETS)} or 'hf:<local path>'")
    cfg = PRESETS[arch]
    if vocab_size is not None:
        cfg = replace(cfg, vocab_size=vocab_size)
    return replace(cfg, tie_embeddings=tie_embeddings)


def build(arch: str, vocab_size: int | None = None, tie_embeddings: bool = False, options: dict | None = None,
          revision: str | None = None) -> GPT:
    """The GPT family's models (trainer/models/families.py "gpt")."""
    if options:
        raise ModelError(f"model.options {options!r}: only the nGPT presets take options")
    return GPT(preset_config(arch, vocab_size, tie_embeddings))

