"""`runtime.deterministic: true`: the same seed gives bit-identical numbers on the same GPU and software.

What it sets (before the first CUDA operation of the process; `configure` is idempotent):

- CUBLAS_WORKSPACE_CONFIG=:4096:8: cuBLAS picks reduction orders that do not depend on which of its
  workspaces a call lands in (required by torch for deterministic matmuls, CUDA >= 10.2);
- torch.use_deterministic_algorithms(True): every op with a nondeterministic CUDA kernel (atomics)
  uses a deterministic one (e.g. index_add_/index_put_ with accumulation, which the embedding backward
  and torch.compile's scatter lowerings use) or raises, so nothing nondeterministic passes silently;
- cuDNN: deterministic algorithms, no benchmarking (its choice would depend on timing);
- attention: scaled_dot_product_attention may use the flash kernel (its backward accumulates dQ in a
  fixed order when deterministic algorithms are on) or the math one; the memory-efficient and cuDNN
  backends, whose backward uses atomics, are switched off.

The optimizer side is deterministic already: Newton-Schulz is matmuls, the noise comes from seeded
generators, the effective rank is computed on the host one matrix per BLAS thread (optim/rank.py).
Cost: measured by benchmarks/deterministic.py (tokens/s on vs off).
"""

from __future__ import annotations

import os

import torch

WORKSPACE = ":4096:8"
_enabled = False


def configure(enabled: bool) -> bool:
    """Switch deterministic mode on for this process (a no-op when `enabled` is False). Returns it."""
    global _enabled
    if not enabled:
        return False
    ws = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if ws not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = WORKSPACE
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    if hasattr(torch.backends.cuda, "enable_mem_efficient_sdp"):
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        torch.backends.cuda.enable_cudnn_sdp(False)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def state() -> dict:
    """What is in force, for the run's records."""
    d = {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }
    if hasattr(torch.backends.cuda, "mem_efficient_sdp_enabled"):
        d["sdpa"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                     "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                     "math": torch.backends.cuda.math_sdp_enabled()}
    return d
