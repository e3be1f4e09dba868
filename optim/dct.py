"""Chunked orthonormal DCT and per-chunk top-k: the compressor of DeMo / DisTrO (pure PyTorch).

A tensor is cut into chunks and each chunk is transformed by an orthonormal DCT-II (2-D for matrices,
1-D for vectors): coefficients C = D_a X D_b^T, inverse X = D_a^T C D_b, with D_n the n x n DCT-II
matrix scaled so that D_n D_n^T = I (so the transform keeps Frobenius norms and inner products).

Chunk shape (how shapes not divisible by the chunk are handled): along each dimension the chunk is the
largest divisor of that dimension that is <= `chunk` (bloc97/DeMo's `_get_smaller_split` rule). Chunks
therefore tile the tensor exactly, with no padding (padding would leak decoded energy into cells that
are then cropped, and error feedback would stop conserving). GPT shapes (multiples of 64) get 64 x 64
chunks; a width of 96 gets 48; a prime width p > chunk gets chunks of 1 along it (no compression
structure along that dimension; the layout still conserves and decodes exactly). Tensors of more than
two dimensions are viewed as (shape[0], rest).

Top-k: per chunk, the k coefficients of largest magnitude, k = max(1, min(n, round(topk * n))) for a
chunk of n coefficients (`topk` is the fraction of each chunk's coefficients that is sent, the seed's
"1%, 5%, 10%, 25% of a chunk"; DeMo's 32 of 64 x 64 is 0.0078125). Ties are broken as torch.topk
breaks them. Indices are sent in the smallest integer type that holds n - 1 (uint8 up to 256
coefficients, int16 up to 32768, else int32); values in float32 or bfloat16, or as 1 bit each (sign).

Decode: the mean of each coefficient over the ranks that sent it (bloc97/DeMo demo.py:296), see
`decode_mean_chunks`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@lru_cache(maxsize=64)
def _dct_cpu64(n: int) -> Tensor:
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


_DCT_CACHE: dict = {}


def dct_matrix(n: int, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """The orthonormal n x n DCT-II matrix D (rows are basis vectors): coefficients = D @ x."""
    key = (n, dtype, str(device))
    d = _DCT_CACHE.get(key)
    if d is None:
        d = _dct_cpu64(n).to(dtype=dtype, device=device)
        if len(_DCT_CACHE) > 256:
            _DCT_CACHE.clear()
        _DCT_CACHE[key] = d
    return d


def largest_divisor_at_most(n: int, target: int) -> int:
    for c in range(min(n, target), 0, -1):
        if n % c == 0:
            return c
    return 1


def index_dtype(n: int) -> torch.dtype:
    """Smallest integer dtype holding the indices 0..n-1 of a chunk of n coefficients."""
    if n <= 256:
        return torch.uint8
    if n <= 32768:
        return torch.int16
    return torch.int32


@dataclass(frozen=True)
class Layout:
    """How one tensor is chunked: its 2-D view (rows, cols) and the chunk (a, b); vectors have rows=1, a=1."""

    shape: tuple[int, ...]
    rows: int
    cols: int
    a: int
    b: int
    k: int

    @property
    def n_chunks(self) -> int:
        return (self.rows // self.a) * (self.cols // self.b)

    @property
    def chunk_numel(self) -> int:
        return self.a * self.b

    @property
    def idx_dtype(self) -> torch.dtype:
        return index_dtype(self.chunk_numel)


def make_layout(shape, chunk: int, topk: float) -> Layout:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        raise ValueError("a scalar cannot be chunked")
    if len(shape) == 1:
        rows, cols, a = 1, shape[0], 1
    else:
        rows = shape[0]
        cols = math.prod(shape[1:])
        a = largest_divisor_at_most(rows, chunk)
    b = largest_divisor_at_most(cols, chunk)
    n = a * b
    k = max(1, min(n, int(round(topk * n))))
    return Layout(shape, rows, cols, a, b, k)


def to_chunks(x: Tensor, L: Layout) -> Tensor:
    """(rows, cols) -> (n_chunks, a, b), chunks in row-major order of the chunk grid."""
    x = x.reshape(L.rows // L.a, L.a, L.cols // L.b, L.b)
    return x.permute(0, 2, 1, 3).reshape(-1, L.a, L.b)


def from_chunks(c: Tensor, L: Layout) -> Tensor:
    x = c.reshape(L.rows // L.a, L.cols // L.b, L.a, L.b).permute(0, 2, 1, 3)
    return x.reshape(L.shape)


def to_chunks_into(out: Tensor, x: Tensor, L: Layout) -> Tensor:
    """to_chunks(x, L) written into out (n_chunks, a, b) by one copy (to_chunks then a copy would be two)."""
    out.view(L.rows // L.a, L.cols // L.b, L.a, L.b).copy_(
        x.reshape(L.rows // L.a, L.a, L.cols // L.b, L.b).permute(0, 2, 1, 3))
    return out


def from_chunks_into(out: Tensor, c: Tensor, L: Layout) -> Tensor:
    """from_chunks(c, L) written into out (of L.shape) by one copy (out contiguous; else two)."""
    if not out.is_contiguous():
        return out.copy_(from_chunks(c, L))
    out.view(L.rows // L.a, L.a, L.cols // L.b, L.b).copy_(
        c.reshape(L.rows // L.a, L.cols // L.b, L.a, L.b).permute(0, 2, 1, 3))
    return out


@contextmanager
def _ieee_fp32(device: torch.device):
    """Full float32 matmuls on CUDA (the trainer enables TF32, whose 10-bit mantissa would make the
    round trip and error feedback lose ~1e-3 of the momentum each step)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


# How the chunks' two small transforms are multiplied on CUDA: "bmm" (A @ c @ B as torch.matmul does it: a
# batched a x a x b product per chunk, then one folded product) or "mm" (both sides as single large
# products over all chunks at once, the chunks' rows moved next to each other and back by two copies).
# Same arithmetic in IEEE float32, another summation order (rounding only). The CPU always takes "bmm".
# Measured on an H200 (benchmarks/results/compressor_h200_issue24_s2.json, GPT-124M's 72 matrices): the
# DCT 2.6-2.8 ms either way, compression + decoding no faster with "mm"; so "bmm" stays, and DeMo's
# numbers with it (version 2).
CUDA_MATMUL = "bmm"
CUDA_MATMULS = ("bmm", "mm")


def _two_sided(c: Tensor, left: Tensor, right: Tensor, impl: str | None = None) -> Tensor:
    """left @ c[n] @ right for every chunk n of c (N, a, b); left (a, a), right (b, b). impl: "bmm" | "mm";
    None: "bmm" on the CPU, CUDA_MATMUL on CUDA."""
    if impl is None:
        impl = CUDA_MATMUL if c.device.type == "cuda" else "bmm"
    if impl not in CUDA_MATMULS:
        raise ValueError(f"optim.dct.CUDA_MATMUL={impl!r} is not allowed; use one of {list(CUDA_MATMULS)}")
    if impl == "bmm":
        return left @ c @ right
    n, a, b = c.shape
    y = c.reshape(n * a, b) @ right                      # every chunk's rows times right: one product
    y = y.view(n, a, b).transpose(0, 1).reshape(a, n * b)  # (a, N*b): chunk n's rows side by side
    z = left @ y                                         # one (a x a) @ (a x N*b) product
    return z.view(a, n, b).transpose(0, 1).contiguous()


def dct_chunks(c: Tensor) -> Tensor:
    """(N, a, b) chunks -> (N, a*b) coefficients (2-D orthonormal DCT of each chunk)."""
    n, a, b = c.shape
    da = dct_matrix(a, c.dtype, c.device)
    db = dct_matrix(b, c.dtype, c.device)
    with _ieee_fp32(c.device):
        return _two_sided(c, da, db.T).reshape(n, a * b)


def idct_chunks(coef: Tensor, a: int, b: int) -> Tensor:
    """(N, a*b) coefficients -> (N, a, b) chunks."""
    c = coef.reshape(-1, a, b)
    da = dct_matrix(a, c.dtype, c.device)
    db = dct_matrix(b, c.dtype, c.device)
    with _ieee_fp32(c.device):
        return _two_sided(c, da.T, db)


def dct(x: Tensor, L: Layout) -> Tensor:
    """Coefficients of every chunk, (n_chunks, a*b), in x's dtype (float32 or wider recommended)."""
    return dct_chunks(to_chunks(x, L))


def idct(coef: Tensor, L: Layout) -> Tensor:
    """Inverse of dct: (n_chunks, a*b) -> a tensor of L.shape."""
    return from_chunks(idct_chunks(coef, L.a, L.b), L)


def topk(coef: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(indices int64, values) of the k largest-magnitude coefficients of every chunk (row)."""
    idx = torch.topk(coef.abs(), k, dim=-1, sorted=False).indices
    return idx, coef.gather(-1, idx)


def scatter(idx: Tensor, vals: Tensor, n: int) -> Tensor:
    """Dense (n_chunks, n) coefficients holding vals at idx (indices within a row are distinct)."""
    return torch.zeros(idx.shape[0], n, dtype=vals.dtype, device=vals.device).scatter_(-1, idx.long(), vals)


def pack_signs(vals: Tensor) -> Tensor:
    """1 bit per value (1: >= 0), little-endian within each byte, flattened; uint8 of ceil(numel/8)."""
    bits = (vals.reshape(-1) >= 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    w = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (bits.view(-1, 8) * w).sum(-1, dtype=torch.uint8) if bits.numel() else bits


def unpack_signs(packed: Tensor, numel: int, dtype=torch.float32) -> Tensor:
    """+1/-1 values from pack_signs' bytes (the first `numel`)."""
    w = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) & w) != 0
    return bits.reshape(-1)[:numel].to(dtype) * 2 - 1


def compress(x: Tensor, L: Layout, select: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(idx, vals, coef) of x's top-k per chunk; `select` (coefficients of another tensor of the same
    layout) chooses the indices instead of x's own magnitudes. coef: all of x's coefficients."""
    coef = dct(x, L)
    if select is None:
        idx, vals = topk(coef, L.k)
    else:
        idx = torch.topk(select.abs(), L.k, dim=-1, sorted=False).indices
        vals = coef.gather(-1, idx)
    return idx, vals, coef


def decode_mean_chunks(idx_parts: list[Tensor], val_parts: list[Tensor], n_chunks: int, a: int, b: int, k: int,
                       dtype=torch.float32, over_senders: bool = True) -> Tensor:
    """The ranks' sent coefficients averaged and inverse-transformed: (n_chunks, a, b).

    over_senders=True (DeMo as published): each coefficient is the mean over the ranks that sent it, as
    bloc97/DeMo's `scatter_reduce_(..., reduce="mean", include_self=False)` of the concatenated indices
    (demo.py:296, via batch_decompress :304-307); a coefficient no rank sent is 0. over_senders=False: the
    sum divided by the number of ranks (a rank that did not send a coefficient counts as 0; this
    project's rule before issue 20).

    Ranks are added one at a time in rank order (each rank's indices within a chunk are distinct, so
    every scatter_add is collision-free): the result is deterministic and the same on every rank."""
    dense = torch.zeros(n_chunks, a * b, dtype=dtype, device=val_parts[0].device)
    count = torch.zeros_like(dense) if over_senders else None
    for idx, vals in zip(idx_parts, val_parts):
        i = idx.reshape(n_chunks, k).long()
        dense.scatter_add_(-1, i, vals.reshape(n_chunks, k).to(dtype))
        if count is not None:
            count.scatter_add_(-1, i, torch.ones(n_chunks, k, dtype=dtype, device=dense.device))
    if count is None:
        dense.div_(len(idx_parts))
    elif len(idx_parts) > 1:  # one rank: every count is 0 or 1, the division would change nothing
        dense.div_(count.clamp_(min=1.0))
    return idct_chunks(dense, a, b)


def decode_mean(idx_parts: list[Tensor], val_parts: list[Tensor], L: Layout, dtype=torch.float32,
                over_senders: bool = True) -> Tensor:
    """decode_mean_chunks for one tensor: a tensor of L.shape."""
    return from_chunks(decode_mean_chunks(idx_parts, val_parts, L.n_chunks, L.a, L.b, L.k, dtype, over_senders), L)


def compress_decode(x: Tensor, chunk: int = 64, topk_frac: float = 0.0078125) -> Tensor:
    """x after top-k compression and decoding on one process (for measurements; float64 stays float64)."""
    L = make_layout(x.shape, chunk, topk_frac)
    idx, vals, _ = compress(x if x.dtype == torch.float64 else x.float(), L)
    return idct(scatter(idx, vals, L.chunk_numel), L)


def topk_energy_fraction(x: Tensor, chunk: int, topk_frac: float) -> float:
    """Fraction of x's squared Frobenius norm held by its per-chunk top-k DCT coefficients."""
    L = make_layout(x.shape, chunk, topk_frac)
    coef = dct(x.double(), L)
    _, vals = topk(coef, L.k)
    total = coef.square().sum()
    return float(vals.square().sum() / total) if total > 0 else float("nan")
