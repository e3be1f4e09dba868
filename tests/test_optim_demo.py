"""optim.dct and optim.DeMo against float64 references (scipy's DCT, numpy sorts, a single-process
simulation of the ranks), and on 2 and 3 CPU processes (gloo)."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import scipy.fft
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optim
from optim import dct as D

SHAPES = [(64, 64), (128, 192), (96, 40), (7, 64), (200,), (3, 5, 8)]


# ------------------------------------------------------------------ float64 references
def ref_layout(shape, chunk):
    if len(shape) == 1:
        rows, cols, a = 1, shape[0], 1
    else:
        rows, cols = shape[0], math.prod(shape[1:])
        a = max(c for c in range(1, min(rows, chunk) + 1) if rows % c == 0)
    b = max(c for c in range(1, min(cols, chunk) + 1) if cols % c == 0)
    return rows, cols, a, b


def ref_blocks(x, chunk):
    """Per-chunk orthonormal DCT coefficients with scipy: array (n_chunks, a*b) and the layout."""
    rows, cols, a, b = ref_layout(x.shape, chunk)
    x = np.asarray(x, dtype=np.float64).reshape(rows, cols)
    out = []
    for i in range(0, rows, a):
        for j in range(0, cols, b):
            out.append(scipy.fft.dctn(x[i:i + a, j:j + b], norm="ortho").reshape(-1))
    return np.stack(out), (rows, cols, a, b)


def ref_unblocks(coef, lay, shape):
    rows, cols, a, b = lay
    x = np.zeros((rows, cols))
    n = 0
    for i in range(0, rows, a):
        for j in range(0, cols, b):
            x[i:i + a, j:j + b] = scipy.fft.idctn(coef[n].reshape(a, b), norm="ortho")
            n += 1
    return x.reshape(shape)


def ref_mask(sel, frac):
    k = max(1, min(sel.shape[1], int(round(frac * sel.shape[1]))))
    order = np.argsort(-np.abs(sel), axis=1, kind="stable")[:, :k]
    m = np.zeros(sel.shape, dtype=bool)
    np.put_along_axis(m, order, True, axis=1)
    return m


def ref_orth(x, steps=5):
    """optim's quintic Newton-Schulz in float64 (a polynomial: well conditioned, unlike U V^T of the
    nearly rank-deficient decoded matrices, whose float32 SVD is not comparable to a float64 one)."""
    a, b, c = optim.orthogonalize.NS_COEFFICIENTS
    tall = x.shape[0] > x.shape[1]
    X = x.T if tall else x
    X = X / max(np.linalg.norm(X), 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


class RefDeMo:
    """The ranks of one DeMo parameter simulated in one process, in float64."""

    def __init__(self, shape, world, mode, sign, frac, beta=0.9, chunk=64, lr=0.01, pre_update="sign"):
        self.shape, self.world, self.mode, self.sign, self.frac = shape, world, mode, sign, frac
        self.pre_update = pre_update
        self.beta, self.chunk, self.lr = beta, chunk, lr
        self.deltas = [np.zeros(shape) for _ in range(world)]

    def step(self, p, grads):
        acc, senders = None, None
        for r in range(self.world):
            d = self.deltas[r] = self.beta * self.deltas[r] + self.lr * grads[r]  # DeMo: delta += lr * g
            coef, lay = ref_blocks(d, self.chunk)
            if self.mode == "pre":
                sel, _ = ref_blocks(ref_orth(d.reshape(lay[0], lay[1])), self.chunk)
            else:
                sel = coef
            m = ref_mask(sel, self.frac)
            vals = np.where(m, sel, 0.0)
            if self.sign:
                vals = np.where(m, np.where(vals >= 0, 1.0, -1.0), 0.0)
            self.deltas[r] = d - ref_unblocks(np.where(m, coef, 0.0), lay, self.shape)
            acc = vals if acc is None else acc + vals
            senders = m.astype(float) if senders is None else senders + m
        direction = ref_unblocks(acc / np.maximum(senders, 1.0), lay, self.shape)  # mean over the senders
        rows, cols = lay[0], lay[1]
        if self.mode == "none" or (self.mode == "pre" and self.pre_update == "sign"):
            u = np.sign(direction)
        elif self.mode == "post":
            u = ref_orth(direction.reshape(rows, cols)) * math.sqrt(max(1, rows / cols))
        elif self.pre_update == "raw":
            u = direction * math.sqrt(max(1, rows / cols))
        else:
            u = direction * math.sqrt(min(rows, cols)) / np.linalg.norm(direction) * math.sqrt(max(1, rows / cols))
        return p - self.lr * u.reshape(self.shape)


# ------------------------------------------------------------------ the compressor
@pytest.mark.parametrize("shape", SHAPES)
def test_dct_is_orthonormal_and_matches_scipy(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    L = D.make_layout(shape, 64, 0.1)
    coef = D.dct(x, L)
    ref, lay = ref_blocks(x.numpy(), 64)
    assert (L.rows, L.cols, L.a, L.b) == lay
    np.testing.assert_allclose(coef.numpy(), ref, atol=1e-10)
    assert torch.allclose(D.idct(coef, L), x, atol=1e-10)
    x32 = x.float()
    assert (D.idct(D.dct(x32, L), L) - x32).abs().max() < 1e-6 * x32.abs().max()  # float32 round trip, relative
    assert abs(coef.square().sum() - x.square().sum()) < 1e-8 * x.square().sum()  # Parseval
    for n in (1, 7, 48, 64):
        d = D.dct_matrix(n, torch.float64)
        assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("impl", D.CUDA_MATMULS)
def test_both_chunk_products_compute_the_transform(impl):
    """The CUDA path's "mm" (both sides as single products over all chunks) and "bmm" are the same
    transform: float64 to 1e-12 (rounding), chunks of 64 x 64, 48 x 50 and vectors (a = 1)."""
    g = torch.Generator().manual_seed(11)
    for n, a, b in ((37, 64, 64), (5, 48, 50), (9, 1, 64)):
        c = torch.randn(n, a, b, dtype=torch.float64, generator=g)
        da, db = D.dct_matrix(a, torch.float64), D.dct_matrix(b, torch.float64)
        want = torch.einsum("ik,nkl,jl->nij", da, c, db)
        got = D._two_sided(c, da, db.T, impl)
        assert got.shape == (n, a, b) and got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        torch.testing.assert_close(D._two_sided(got, da.T, db, impl), c, rtol=0, atol=1e-12)  # the inverse
    with pytest.raises(ValueError, match="CUDA_MATMUL='fft'.*allowed"):
        D._two_sided(c, da, db.T, "fft")


def test_chunks_written_in_place_equal_the_copies():
    g = torch.Generator().manual_seed(13)
    for shape in ((96, 100), (97, 64), (3, 5, 8), (130,)):
        L = D.make_layout(shape, 64, 0.1)
        x = torch.randn(shape, generator=g)
        out = torch.full((L.n_chunks + 2, L.a, L.b), float("nan"))  # poisoned, with a margin left alone
        D.to_chunks_into(out[1:-1], x.reshape(L.rows, L.cols), L)
        assert torch.equal(out[1:-1], D.to_chunks(x.reshape(L.rows, L.cols), L)) and out[0].isnan().all()
        back = torch.full(shape, float("nan"))
        assert torch.equal(D.from_chunks_into(back, out[1:-1], L), x)
        if len(shape) == 2:  # a non-contiguous target takes the two-copy path
            t = torch.full(shape[::-1], float("nan")).T
            assert torch.equal(D.from_chunks_into(t, out[1:-1], L), x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dct_matches_the_cpu_float64_transform():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(20, 64, 64, generator=g)
    want = D.dct_chunks(x.double())
    for impl in D.CUDA_MATMULS:
        old, D.CUDA_MATMUL = D.CUDA_MATMUL, impl
        try:
            got = D.dct_chunks(x.cuda()).double().cpu()  # IEEE float32 (TF32 off inside): ~1e-6 relative
            back = D.idct_chunks(got.float().cuda(), 64, 64).double().cpu()
        finally:
            D.CUDA_MATMUL = old
        assert (got - want).abs().max() < 1e-5 * want.abs().max()
        assert (back - x.double()).abs().max() < 1e-5 * x.abs().max()


def test_chunks_of_awkward_shapes_tile_exactly():
    def t(L):
        return (L.rows, L.cols, L.a, L.b, L.k)

    assert t(D.make_layout((50304, 768), 64, 0.01)) == (50304, 768, 64, 64, 41)
    assert t(D.make_layout((96, 100), 64, 0.05)) == (96, 100, 48, 50, 120)
    assert t(D.make_layout((3, 5, 8), 64, 0.5)) == (3, 40, 3, 40, 60)
    L = D.make_layout((97, 64), 64, 0.25)  # a prime number of rows: chunks of one row
    assert (L.a, L.b, L.k, L.n_chunks) == (1, 64, 16, 97)
    assert [D.make_layout((64, 64), 64, f).k for f in (0.01, 0.05, 0.10, 0.25, 0.0078125)] == [41, 205, 410, 1024, 32]
    assert D.index_dtype(4096) == torch.int16 and D.index_dtype(256) == torch.uint8 and D.index_dtype(40000) == torch.int32


@pytest.mark.parametrize("frac", [0.01, 0.05, 0.25])
def test_topk_picks_what_a_sort_picks(frac):
    torch.manual_seed(1)
    x = torch.randn(128, 192, dtype=torch.float64)
    L = D.make_layout(x.shape, 64, frac)
    idx, vals, coef = D.compress(x, L)
    ref, _ = ref_blocks(x.numpy(), 64)
    m = ref_mask(ref, frac)
    got = np.zeros_like(m)
    np.put_along_axis(got, idx.numpy(), True, axis=1)
    assert (got == m).all() and got.sum(1).tolist() == [L.k] * L.n_chunks
    np.testing.assert_allclose(vals.numpy(), np.take_along_axis(ref, idx.numpy(), 1), atol=1e-10)


def test_signs_pack_and_unpack():
    v = torch.tensor([0.5, -1.0, 0.0, -0.1, 2.0, 3.0, -4.0, 1.0, -2.0, 7.0, -0.0])
    packed = D.pack_signs(v)
    assert packed.dtype == torch.uint8 and packed.numel() == 2
    assert D.unpack_signs(packed, v.numel()).tolist() == [1, -1, 1, -1, 1, 1, -1, 1, -1, 1, 1]


@pytest.mark.parametrize("mode,pre_update", [("none", "sign"), ("pre", "sign"), ("pre", "rescale"), ("pre", "raw"),
                                             ("post", "sign")])
def test_error_feedback_conserves_and_one_process_matches_reference(mode, pre_update):
    torch.manual_seed(2)
    shape = (96, 128)
    p = torch.nn.Parameter(torch.randn(shape))
    p0 = p.detach().double().numpy().copy()
    opt = optim.DeMo([p], lr=0.01, compression_decay=0.9, topk=0.05, orthogonalize=mode, orthogonalizer="newton_schulz",
                     ns_precision="fp32", pre_update=pre_update)
    ref = RefDeMo(shape, 1, mode, False, 0.05, pre_update=pre_update)
    for t in range(3):
        g = torch.randn(shape)
        before = 0.9 * opt.state[p]["delta"].double().numpy() if t else np.zeros(shape)
        before = before + 0.01 * g.double().numpy()
        p.grad = g.clone()
        opt.step()
        p0 = ref.step(p0, [g.double().numpy()])
        after = opt.state[p]["delta"].double().numpy()
        # sent + residual = momentum before (the sent part in delta's own coefficients)
        coef, lay = ref_blocks(before, 64)
        sel = ref_blocks(ref_orth(before), 64)[0] if mode == "pre" else coef
        sent = ref_unblocks(np.where(ref_mask(sel, 0.05), coef, 0.0), lay, shape)
        np.testing.assert_allclose(sent + after, before, atol=1e-6 * np.abs(before).max())
        np.testing.assert_allclose(after, ref.deltas[0], atol=1e-7)  # float32 deltas of O(lr = 0.01)
        np.testing.assert_allclose(p.detach().double().numpy(), p0, atol=1e-5)
    d = opt.diagnostics
    L = D.make_layout(shape, 64, 0.05)
    assert d["bytes_sent_per_step"] == L.n_chunks * L.k * (2 + 4) == opt.bytes_per_step()[0]
    assert d["dense_bytes_per_step"] == 96 * 128 * 4 and d["update_rms"] > 0


def test_bad_arguments_are_named():
    p = [torch.nn.Parameter(torch.zeros(4, 4))]
    for kw, msg in (({"topk": 0.0}, "topk=0.0"), ({"topk": 32}, "topk=32"), ({"orthogonalize": "mid"}, "orthogonalize"),
                    ({"compression_decay": 1.0}, "compression_decay"), ({"value_dtype": "fp8"}, "value_dtype"),
                    ({"lr_scaled_delta": 1}, "lr_scaled_delta=1"), ({"mean_over_senders": "yes"}, "mean_over_senders"),
                    ({"eps": 0.0}, "eps=0.0")):
        with pytest.raises(ValueError, match=msg):
            optim.DeMo(p, **kw)
    with pytest.raises(ValueError, match="needs matrices"):
        optim.DeMo([torch.nn.Parameter(torch.zeros(8))], orthogonalize="post")
    opt = optim.build_optimizer(torch.nn.Sequential(torch.nn.Linear(4, 4, bias=True)), "DeMo", {"topk": 0.25})
    assert opt.self_synced() == {id(opt.muon.param_groups[0]["params"][0])} and opt.has_rank_local_state


# ------------------------------------------------------------------ several processes
CONFIGS = [  # (mode, sign, value_dtype, shapes)
    ("none", False, "float32", [(64, 128), (64, 64), (96, 40), (192,)]),
    ("none", True, "float32", [(64, 128), (192,), (64, 64)]),  # (64, 128) and (64, 64): one bucket of 3 chunks
    ("pre", False, "float32", [(64, 128), (96, 40)]),  # pre_update 'sign'
    ("pre-rescale", False, "float32", [(64, 128), (96, 40)]),
    ("post", False, "float32", [(128, 64), (96, 40)]),
    ("post", False, "bfloat16", [(64, 64)]),
]
STEPS = 3


def _grad(t, r, i, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(10_000 * t + 100 * r + i))


def _worker(rank, world, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    sent_sizes = []
    real = dist.all_gather

    def recording(parts, tensor, *a, **k):
        sent_sizes.append(tensor.numel() * tensor.element_size())
        return real(parts, tensor, *a, **k)

    dist.all_gather = recording
    results = []
    for ci, (mode, sign, vdt, shapes) in enumerate(CONFIGS):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = optim.DeMo(params, lr=0.01, compression_decay=0.9, topk=0.05, sign=sign, value_dtype=vdt,
                         orthogonalize=mode.split("-")[0], orthogonalizer="newton_schulz", ns_precision="fp32",
                         pre_update=(mode.split("-") + ["sign"])[1])
        hist, counted = [], []
        sent_sizes.clear()
        for t in range(STEPS):
            for i, p in enumerate(params):
                p.grad = _grad(t, rank, i, p.shape)
            opt.step()
            hist.append([p.detach().clone() for p in params])
            counted.append(opt.diagnostics["bytes_sent_per_step"])
        results.append({"hist": hist, "counted": counted, "sent": list(sent_sizes)})
    dist.all_gather = real
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_one_direction_equal_to_the_simulated_ranks(world, tmp_path):
    # forked, not spawned: the ranks start with this process's imports instead of importing torch again each
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True,
                       start_method="fork")
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for ci, (mode, sign, vdt, shapes) in enumerate(CONFIGS):
        for r in range(1, world):
            for t in range(STEPS):
                for a, b in zip(res[0][ci]["hist"][t], res[r][ci]["hist"][t]):
                    assert torch.equal(a, b), (ci, r, t)  # bitwise the same on every rank
        # bytes: what was counted is what went into all_gather, and the formula
        expected, buckets = 0, {}
        for s in shapes:  # parameters of one chunk shape are sent as one segment
            L = D.make_layout(s, 64, 0.05)
            buckets.setdefault((L.a, L.b), []).append(L)
        for Ls in buckets.values():
            n = sum(L.n_chunks for L in Ls) * Ls[0].k
            expected += n * Ls[0].idx_dtype.itemsize + ((n + 7) // 8 if sign else n * (2 if vdt == "bfloat16" else 4))
        for r in range(world):
            assert res[r][ci]["counted"] == res[r][ci]["sent"] == [expected] * STEPS, (ci, r)
        if vdt == "bfloat16":
            continue  # the reference sends float64 values
        torch.manual_seed(0)
        p0 = [torch.randn(s).double().numpy() for s in shapes]
        refs = [RefDeMo(s, world, mode.split("-")[0], sign, 0.05, pre_update=(mode.split("-") + ["sign"])[1])
                for s in shapes]
        for t in range(STEPS):
            for i, s in enumerate(shapes):
                p0[i] = refs[i].step(p0[i], [_grad(t, r, i, s).double().numpy() for r in range(world)])
                np.testing.assert_allclose(res[0][ci]["hist"][t][i].double().numpy(), p0[i], atol=2e-5,
                                           err_msg=f"{CONFIGS[ci][:2]} step {t} param {s}")
