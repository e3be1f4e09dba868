"""Public Muon kernels as peers in the same run as optim's (benchmarks/optimizer_step.py --peers DIR).

Nothing of theirs is in this repository: DIR holds their source files, copied unmodified from their
repositories for the run (the benchmark's JSON records the commits given with --peer-commits):

    DIR/dion_newton_schulz_triton.py   microsoft/dion dion/newton_schulz_triton.py (batched Triton
                                       Newton-Schulz: symmetric X X^T and b A + c A A kernels, baddbmm)
    DIR/modded_triton_kernels.py       KellerJordan/modded-nanogpt triton_kernels.py (XXT, XTX,
                                       ba_plus_cAA: the symmetric-matmul kernels)

This file is the harness: it loads them by path, and drives each through the same optimizer step as
the others (`PeerMuon`: torch.optim.Muon's EMA momentum and Nesterov blend with foreach ops, one stack
per shape, the peer's orthogonalization of the stack, the update W -= lr * sqrt(max(1, r/c)) * O).
modded-nanogpt's orthogonalization is written here as its train_gpt.py `polar_express` calls its
kernels (the Nesterov momentum it fuses in is done by PeerMuon's foreach ops, as for the others; it
runs eager here: its file compiles the whole function with torch.compile).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

FILES = {"dion": "dion_newton_schulz_triton.py", "modded": "modded_triton_kernels.py"}

# modded-nanogpt train_gpt.py @f411b3d: num_iters=5, safety_factor=2e-2, cushion=2
MODDED_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


def load(directory: str | Path) -> dict:
    """{name: module} for the peer files present in directory."""
    out = {}
    for name, fname in FILES.items():
        path = Path(directory) / fname
        if not path.is_file():
            continue
        spec = importlib.util.spec_from_file_location(f"peer_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except ImportError as e:  # e.g. no Triton on this machine: that peer cannot run here
            print(f"peers: {fname} not loaded: {e!r}", file=sys.stderr)
            continue
        out[name] = mod
    return out


def modded_polar_express(mod, G: torch.Tensor) -> torch.Tensor:
    """modded-nanogpt's polar_express (train_gpt.py) without its fused momentum, with its kernels."""
    X = G.bfloat16()
    is_tall = G.size(-2) > G.size(-1)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * (1 + 2e-2) + 1e-6)
    X = X.contiguous()
    if is_tall:
        A = torch.empty((*X.shape[:-2], X.size(-1), X.size(-1)), device=X.device, dtype=X.dtype)
        B = torch.empty_like(A)
        C = torch.empty_like(X)
        for a, b, c in MODDED_COEFFS:
            mod.XTX(X, out=A)
            mod.ba_plus_cAA(A, alpha=c, beta=b, out=B)
            torch.baddbmm(X, X, B, beta=a, out=C)
            X, C = C, X
    else:
        A = torch.empty((*X.shape[:-1], X.size(-2)), device=X.device, dtype=X.dtype)
        B = torch.empty_like(A)
        C = torch.empty_like(X)
        for a, b, c in MODDED_COEFFS:
            mod.XXT(X, out=A)
            mod.ba_plus_cAA(A, alpha=c, beta=b, out=B)
            torch.baddbmm(X, B, X, beta=a, out=C)
            X, C = C, X
    return X


def orthogonalizers(mods: dict) -> dict:
    """{label: fn(stack) -> stack} for the loaded peers."""
    out = {}
    if "dion" in mods:
        out["Dion newton_schulz_triton"] = lambda G, m=mods["dion"]: m.newton_schulz_triton(G)
    if "modded" in mods:
        out["modded-nanogpt polar_express (XXT/XTX/ba_plus_cAA)"] = lambda G, m=mods["modded"]: modded_polar_express(m, G)
    return out


class PeerMuon:
    """The optimizer step around a peer's orthogonalization (see the module docstring)."""

    def __init__(self, params, ortho, lr: float = 0.02, momentum: float = 0.95):
        self.params, self.ortho, self.lr, self.beta = list(params), ortho, lr, momentum
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.by_shape: dict = {}
        for i, p in enumerate(self.params):
            self.by_shape.setdefault(tuple(p.shape), []).append(i)

    @torch.no_grad()
    def step(self):
        grads = [p.grad for p in self.params]
        torch._foreach_lerp_(self.bufs, grads, 1 - self.beta)
        upd = torch._foreach_lerp(grads, self.bufs, self.beta)
        for (r, c), idx in self.by_shape.items():
            O = self.ortho(torch.stack([upd[i] for i in idx]))
            step = list(O.float().unbind(0))
            torch._foreach_mul_(step, -self.lr * math.sqrt(max(1.0, r / c)))
            torch._foreach_add_([self.params[i] for i in idx], step)
