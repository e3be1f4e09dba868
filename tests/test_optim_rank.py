"""The deferred effective rank (host LAPACK pool): exactness, determinism whatever the timing, checkpoints;
and the dtype fixes of issue 15 (float64 parameters, bf16 weight decay)."""

import io
import math
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

import optim
import optim.rank as rank_mod
from optim.rank import HostRankPool, effective_rank


def _erank64(m: np.ndarray) -> float:
    s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _momentum_like(shape, decay, seed):
    """A matrix whose singular values fall off like a real momentum's (effective rank well below full)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = torch.exp(-decay * torch.arange(k, dtype=torch.float64))
    return ((U * s) @ V.T).float()


@pytest.mark.parametrize("shape", [(96, 64), (64, 160), (80, 80)])
def test_host_rank_matches_a_float64_svd(shape):
    M = torch.stack([_momentum_like(shape, d, i) for i, d in enumerate((0.0, 0.02, 0.1, 0.5, 3.0))])
    job = HostRankPool(2).submit(M)
    got = job.result()
    ref = np.array([_erank64(m) for m in M.numpy()])
    assert got.dtype == torch.float32 and got.shape == (5,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-3)  # the bar; measured ~1e-7
    assert np.max(np.abs(got.numpy() / ref - 1)) < 1e-5
    assert torch.equal(got, effective_rank(M))  # the synchronous form gives the same bits


def test_values_do_not_depend_on_workers_or_order():
    M = torch.stack([_momentum_like((72, 48), 0.05 * i, i) for i in range(7)])
    one = HostRankPool(1).submit(M).result()
    three = HostRankPool(3).submit(M).result()
    rev = HostRankPool(2).submit(M.flip(0)).result().flip(0)
    assert torch.equal(one, three) and torch.equal(one, rev)


@pytest.fixture
def slow_pool(monkeypatch):
    """One worker; every matrix takes 30 ms more on the host, and none starts while `gate` is closed."""
    real = rank_mod._erank_task
    gate = threading.Event()
    gate.set()

    def slow(arr, i, ready):
        gate.wait()
        time.sleep(0.03)
        return real(arr, i, ready)

    monkeypatch.setattr(rank_mod, "_erank_task", slow)
    rank_mod.set_default_workers(1)
    yield gate
    gate.set()
    monkeypatch.undo()
    rank_mod.set_default_workers(2)


SHAPES = [(12, 20), (20, 12), (12, 20), (16, 16)]


def _grads(t):
    g = torch.Generator().manual_seed(100 + t)
    out = []
    for i, s in enumerate(SHAPES):
        if i == 0 or (i == 3 and t < 6):  # low rank: the trigger turns on (and off again for matrix 3)
            out.append(torch.randn(s[0], 1, generator=g) @ torch.randn(1, s[1], generator=g))
        else:
            out.append(torch.randn(s, generator=g))
    return out


def _build():
    g = torch.Generator().manual_seed(0)
    ps = [nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    return ps, optim.MuonOrthoNoise(ps, lr=0.02, alpha=0.05, rank_threshold=0.5, rank_every=3, seed=1)


def _run(opt, ps, steps, start=0):
    out = []
    for t in range(start, start + steps):
        for p, g in zip(ps, _grads(t)):
            p.grad = g
        opt.step()
        out.append(opt.diagnostics["noise_fraction"])
    return out


def test_decisions_do_not_depend_on_timing(slow_pool, monkeypatch):
    ps_slow, opt_slow = _build()
    fr_slow = _run(opt_slow, ps_slow, 14)
    monkeypatch.undo()  # the real task again, and three workers
    ps_fast, opt_fast = _build()
    rank_mod.set_default_workers(3)
    fr_fast = _run(opt_fast, ps_fast, 14)
    assert fr_slow == fr_fast and 0 < max(fr_fast) < 1
    assert all(torch.equal(a, b) for a, b in zip(ps_slow, ps_fast))


def test_checkpoint_with_a_measurement_in_flight_resumes_exactly(slow_pool):
    ps_a, opt_a = _build()
    fr_a = _run(opt_a, ps_a, 14)

    ps_b, opt_b = _build()
    _run(opt_b, ps_b, 6)
    opt_b.settle_measurements()  # step 4's measurement is in (step 7 applies it)
    slow_pool.clear()
    _run(opt_b, ps_b, 1, start=6)  # step 7 is a rank step: its measurement is held back by the gate
    pending = opt_b._rank_jobs
    assert pending and not any(j.local.ready() for j in pending.values())
    threading.Timer(0.2, slow_pool.set).start()
    buf = io.BytesIO()
    torch.save({"ps": [p.detach() for p in ps_b], "opt": opt_b.state_dict()}, buf)  # waits for it
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    jobs = saved["opt"]["muon_global"]["rank_jobs"]
    assert {j["step"] for j in jobs} == {7} and all(len(j["ranks"]) == len(j["indices"]) for j in jobs)

    ps_c, opt_c = _build()
    with torch.no_grad():
        for p, q in zip(ps_c, saved["ps"]):
            p.copy_(q)
    opt_c.load_state_dict(saved["opt"])
    fr_c = _run(opt_c, ps_c, 7, start=7)  # step 10 applies the measurement of step 7 from the checkpoint
    assert fr_c == fr_a[7:] and fr_a[9] != fr_a[8]  # the trigger changed at step 10
    assert all(torch.equal(a, c) for a, c in zip(ps_a, ps_c))


# ---------------------------------------------------------------------------- dtype fixes
@pytest.mark.parametrize("cls,kw", [("Muon", {}), ("MuonOrthoNoise", dict(alpha=0.1, rank_threshold=1.0)),
                                    ("MuonIsotropic", dict(alpha=0.1, rank_threshold=None)), ("MuonNOLAH", {})])
def test_float64_parameters(cls, kw):
    g = torch.Generator().manual_seed(0)
    ps = [nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in SHAPES]
    ref = [nn.Parameter(p.detach().float().clone()) for p in ps]
    opt = optim.OPTIMIZERS[cls](ps, lr=0.02, rank_every=2, ns_precision="fp32", **kw)
    opt_ref = optim.OPTIMIZERS[cls](ref, lr=0.02, rank_every=2, ns_precision="fp32", **kw)
    for t in range(3):  # step 3 applies the rank measurement of step 1
        for p, q, gr in zip(ps, ref, _grads(t)):
            p.grad, q.grad = gr.double(), gr
        opt.step()
        opt_ref.step()
    assert all(p.dtype == torch.float64 for p in ps)
    for p, q in zip(ps, ref):
        assert torch.allclose(p.float(), q, atol=1e-5)  # the same algorithm as in float32
    assert opt.diagnostics["eff_rank_mean"] == pytest.approx(opt_ref.diagnostics["eff_rank_mean"], rel=1e-5)


def test_bf16_weight_decay_is_the_right_factor():
    """Zero gradients: the step is pure decay W <- W (1 - lr wd), computed in float32 and rounded to bf16
    once, as torch.optim.Muon does. It used to multiply by bf16(0.998) = 0.99609375, twice the decay
    (0.896 of the norm after 20 steps instead of torch's 0.999: bf16 cannot hold most 0.2% changes)."""
    lr, wd, steps = 0.02, 0.1, 20
    w0 = torch.randn(32, 48, generator=torch.Generator().manual_seed(3)).bfloat16()
    out = {}
    for name, make in (("ours", lambda ps: optim.Muon(ps, lr=lr, weight_decay=wd, rank_every=0)),
                       ("torch", lambda ps: torch.optim.Muon(ps, lr=lr, weight_decay=wd))):
        p = nn.Parameter(w0.clone())
        opt = make([p])
        for i in range(steps):
            p.grad = torch.zeros_like(p)
            opt.step()
            if i == 0:
                assert torch.equal(p.detach(), (w0.float() * (1 - lr * wd)).bfloat16()), name
        out[name] = p.detach()
    assert torch.equal(out["ours"], out["torch"])
    buggy = w0.clone()
    for _ in range(steps):
        torch._foreach_mul_([buggy], 1 - lr * wd)
    assert (buggy.float().norm() / w0.float().norm()).item() < 0.9  # what the old code did
    assert (out["ours"].float().norm() / w0.float().norm()).item() > 0.99


def test_bf16_update_follows_a_float32_run():
    """bf16 parameters with weight decay: one rounding per step, close to the float32 run (and to torch's)."""
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95)
    g = torch.Generator().manual_seed(4)
    w0 = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(10)]

    def train(make, dtype):
        ps = [nn.Parameter(w.to(dtype, copy=True)) for w in w0]
        opt = make(ps)
        for gs in grads:
            for p, gr in zip(ps, gs):
                p.grad = gr.to(dtype)
            opt.step()
        return [p.detach().float() for p in ps]

    ref = train(lambda ps: optim.Muon(ps, rank_every=0, **kw), torch.float32)
    ours = train(lambda ps: optim.Muon(ps, rank_every=0, **kw), torch.bfloat16)
    theirs = train(lambda ps: torch.optim.Muon(ps, **kw), torch.bfloat16)

    def err(a):
        return max(((x - y).norm() / (y - z).norm()).item() for x, y, z in zip(a, ref, w0))

    assert err(ours) <= err(theirs) and err(ours) < 0.3  # bf16 storage rounds the 2% steps coarsely
    assert math.isfinite(err(theirs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (pinned host buffers)")
def test_pinned_buffers_are_reused_only_once_read():
    """On CUDA the Gram stack goes through a pinned host buffer kept per shape: a second measurement
    reuses it once the first job has finished reading, takes a new one while it is in flight, and the
    values are those of the CPU path."""
    from optim.rank import HostRankPool

    pool = HostRankPool(2)
    g = torch.Generator().manual_seed(3)
    M1 = torch.randn((4, 24, 40), generator=g)
    M2 = torch.randn((4, 24, 40), generator=g)
    j1 = pool.submit(M1.cuda())
    j2 = pool.submit(M2.cuda())  # j1 may still be in flight: must not share its buffer unless it is done
    r1, r2 = j1.result(), j2.result()
    j3 = pool.submit(M1.cuda())  # both done: reuses one of the two buffers
    r3 = j3.result()
    assert len(pool._pinned[((4, 24, 24), torch.float64)]) <= 2
    ref = HostRankPool(1)
    # the device's float64 Gram may differ from the CPU's in the last bits: float32 results, 1e-6 relative
    torch.testing.assert_close(r1, ref.submit(M1).result(), rtol=1e-6, atol=0)
    torch.testing.assert_close(r2, ref.submit(M2).result(), rtol=1e-6, atol=0)
    assert torch.equal(r3, r1)  # the same device, the same calls: bitwise
    pool.shutdown()
    ref.shutdown()


def _rank_in_forked_child(q):
    from optim.rank import submit_effective_rank

    q.put(float(submit_effective_rank(torch.eye(6).expand(2, 6, 6).contiguous()).result()[0]))


def test_a_forked_child_measures_ranks_with_a_pool_of_its_own():
    """The shared host pool's threads do not survive fork: a child that reused the parent's pool waited for
    ever (the forked DDP test hung the suite). The child makes its own."""
    import multiprocessing as mp

    from optim.rank import submit_effective_rank

    submit_effective_rank(torch.eye(4).expand(1, 4, 4).contiguous()).result()  # the parent's pool exists
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_rank_in_forked_child, args=(q,))
    p.start()
    p.join(timeout=300)  # seconds when it works; a hang is what this catches
    if p.is_alive():
        p.kill()
    assert p.exitcode == 0 and abs(q.get(timeout=10) - 6.0) < 1e-6
