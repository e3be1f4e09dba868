"""MuonOrthoNoise, MuonIsotropic and MuonNOLAH: the noise step, trigger, warm-up, persistence, counters."""

import math

import pytest
import torch
from torch import nn

import optim
from optim.noise import NoiseSource, haar_qr, isotropic
from optim.orthogonalize import svd_orthogonalize

SHAPES = [(12, 20), (20, 12), (12, 20)]


def _params(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def _grad_seq(t, shapes=SHAPES, low_rank=()):
    g = torch.Generator().manual_seed(100 + t)
    out = []
    for i, s in enumerate(shapes):
        if i in low_rank:
            out.append(torch.randn(s[0], 1, generator=g) @ torch.randn(1, s[1], generator=g))
        else:
            out.append(torch.randn(s, generator=g))
    return out


def _run(opt, ps, steps, low_rank=(), start=0):
    diags = []
    for t in range(start, start + steps):
        for p, g in zip(ps, _grad_seq(t, low_rank=low_rank)):
            p.grad = g.to(p.dtype)
        opt.step()
        diags.append(opt.diagnostics)
    return diags


def test_noise_step_is_polar_of_momentum_update_plus_eps_q():
    """With the exact (svd) orthogonalizer, the update is polar(U + eps Q), Q from (seed, step, index)."""
    ps = _params()
    p0 = [p.detach().clone() for p in ps]
    alpha, lr, beta = 0.3, 0.05, 0.9
    opt = optim.MuonOrthoNoise(
        ps, lr=lr, momentum=beta, alpha=alpha, rank_threshold=None, orthogonalizer="svd", ns_precision="fp32", seed=11
    )
    grads = _grad_seq(0)
    for p, g in zip(ps, grads):
        p.grad = g
    opt.step()
    src = NoiseSource(11)
    for i, (p, g, w0) in enumerate(zip(ps, grads, p0)):
        buf = (1 - beta) * g
        U = g + beta * (buf - g)  # Nesterov
        Q = haar_qr(src.gaussian(g.shape, "cpu", step=1, indices=[i]))[0]
        expected = svd_orthogonalize(U + alpha * g.norm() * Q)
        ratio = math.sqrt(max(1, g.shape[0] / g.shape[1]))
        assert torch.allclose((w0 - p.detach()) / (lr * ratio), expected, atol=2e-4)
    assert opt.diagnostics["noise_fraction"] == 1.0
    assert opt.diagnostics["eps_mean"] == pytest.approx(alpha * sum(g.norm().item() for g in grads) / 3, rel=1e-5)


def test_alpha_zero_and_warmup_are_bitwise_muon():
    a, b, c = _params(), _params(), _params()
    muon = optim.Muon(a, lr=0.02)
    zero = optim.MuonOrthoNoise(b, lr=0.02, alpha=0.0, rank_threshold=None)
    warm = optim.MuonIsotropic(c, lr=0.02, alpha=0.5, rank_threshold=None, noise_warmup_steps=3)
    for t in range(3):
        _run(muon, a, 1, start=t)
        _run(zero, b, 1, start=t)
        d = _run(warm, c, 1, start=t)[0]
        assert d["noise_fraction"] == 0.0
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
    d = _run(warm, c, 1, start=3)[0]  # step 4: the noise starts
    assert d["noise_fraction"] == 1.0
    _run(muon, a, 1, start=3)
    assert not torch.equal(a[0], c[0])


def test_annealing_counts_optimizer_steps_not_parameters():
    ps = [nn.Parameter(torch.randn(8, 8)) for _ in range(10)]
    opt = optim.MuonOrthoNoise(
        ps, alpha=1e-2, schedule="exponential", alpha_end=1e-3, schedule_steps=4, rank_threshold=None
    )
    for t in range(1, 6):
        grads = [torch.randn(8, 8) for _ in ps]
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
        mean_norm = sum(g.norm().item() for g in grads) / len(grads)
        expected_alpha = 1e-2 * 0.1 ** ((t - 1) / 4)  # 10 parameters, still one tick per step
        assert opt.diagnostics["eps_mean"] == pytest.approx(expected_alpha * mean_norm, rel=1e-5)
        assert opt.step_count == t


def test_trigger_is_deferred_by_rank_every_and_cached_between(monkeypatch):
    calls = []
    real = optim.muon.submit_effective_rank

    def counting(M, method="gram"):
        calls.append(M.shape[0])
        return real(M, method)

    monkeypatch.setattr(optim.muon, "submit_effective_rank", counting)
    ps = _params()
    opt = optim.MuonOrthoNoise(ps, alpha=1e-2, rank_threshold=0.5, rank_every=4)
    # matrix 0 gets rank-1 gradients (low effective rank: noise), the others full-rank ones. The
    # measurement of step 1 is applied at step 5: no noise before (a trigger is off until measured).
    d = _run(opt, ps, 4, low_rank=(0,))
    assert [x["noise_fraction"] for x in d] == [0.0] * 4 and all(x["eff_rank_mean"] is None for x in d)
    assert "noise_on" not in opt.state[ps[0]]
    d = _run(opt, ps, 1, start=4, low_rank=(0,))
    assert d[0]["noise_fraction"] == pytest.approx(1 / 3) and d[0]["eff_rank_mean"] is not None
    assert opt.state[ps[0]]["noise_on"] is True and opt.state[ps[1]]["noise_on"] is False
    # now all gradients are full rank, but the cached trigger holds until the next rank step (9), and
    # step 9 applies the measurement of step 5 (still low rank): the trigger turns off at 13 at the earliest
    d = _run(opt, ps, 7, start=5)  # steps 6 to 12
    assert [x["noise_fraction"] for x in d] == [pytest.approx(1 / 3)] * 7
    n_calls = len(calls)
    for t in range(12, 80):
        _run(opt, ps, 1, start=t)
        if opt.diagnostics["eff_rank_mean"] is not None:
            assert (opt.step_count - 1) % 4 == 0
        if opt.diagnostics["noise_fraction"] == 0.0:
            break
    assert opt.diagnostics["noise_fraction"] == 0.0  # re-measured: the momentum's rank recovered
    assert (opt.step_count - 1) % 4 == 0 and len(calls) > n_calls
    # rank checks ran on steps 1, 5, 9, ... only: one call per bucket (two shapes)
    assert len(calls) == 2 * len(range(1, opt.step_count + 1, 4))


@pytest.mark.parametrize("cls", [optim.MuonOrthoNoise, optim.MuonIsotropic])
def test_persist_noise_both_ways(cls):
    a, b, c = _params(), _params(), _params()
    kw = dict(lr=0.02, alpha=0.2, rank_threshold=None, seed=3)
    plain = optim.Muon(a, lr=0.02)
    keep = cls(b, persist_noise=True, **kw)
    drop = cls(c, persist_noise=False, **kw)
    for opt, ps in ((plain, a), (keep, b), (drop, c)):
        _run(opt, ps, 1)
    # the update of step 1 is the same with and without persistence
    assert all(torch.equal(x, y) for x, y in zip(b, c))
    src = NoiseSource(3)
    for i, (pa, pb, pc) in enumerate(zip(a, b, c)):
        buf_plain = plain.state[pa]["momentum_buffer"]
        assert torch.equal(drop.state[pc]["momentum_buffer"], buf_plain)  # the noise did not persist
        g = _grad_seq(0)[i]
        Z = src.gaussian(g.shape, "cpu", step=1, indices=[i])
        N = haar_qr(Z, cls.qr_algorithm)[0] if cls is optim.MuonOrthoNoise else isotropic(Z)[0]
        expected = buf_plain + 0.2 * g.norm() * N
        assert torch.allclose(keep.state[pb]["momentum_buffer"], expected, atol=1e-6)
    _run(keep, b, 1, start=1)
    _run(drop, c, 1, start=1)
    assert not torch.equal(b[0], c[0])  # from step 2 on, the persisted noise changes the path


def test_isotropic_step_is_polar_of_update_plus_scaled_gaussian():
    """The same eps and draw as OrthoNoise, but the Gaussian itself scaled to sqrt(min(m, n)), no re-ortho."""
    ps = _params()
    p0 = [p.detach().clone() for p in ps]
    alpha, lr, beta = 0.3, 0.05, 0.9
    opt = optim.MuonIsotropic(
        ps, lr=lr, momentum=beta, alpha=alpha, rank_threshold=None, orthogonalizer="svd", seed=11
    )
    grads = _grad_seq(0)
    for p, g in zip(ps, grads):
        p.grad = g
    opt.step()
    src = NoiseSource(11)
    for i, (p, g, w0) in enumerate(zip(ps, grads, p0)):
        U = g + beta * ((1 - beta) * g - g)
        N = isotropic(src.gaussian(g.shape, "cpu", step=1, indices=[i]))[0]
        expected = svd_orthogonalize(U + alpha * g.norm() * N)
        ratio = math.sqrt(max(1, g.shape[0] / g.shape[1]))
        assert torch.allclose((w0 - p.detach()) / (lr * ratio), expected, atol=2e-4)


@pytest.mark.parametrize("method", ["qr", "polar"])
def test_bf16_parameters(method):
    ps = _params(torch.bfloat16)
    opt = optim.MuonOrthoNoise(ps, alpha=0.1, rank_threshold=1.0, rank_every=2, noise_method=method)
    d = _run(opt, ps, 3)
    assert all(torch.isfinite(p).all() and p.dtype == torch.bfloat16 for p in ps)
    assert d[2]["eff_rank_mean"] is not None and d[-1]["noise_fraction"] == 1.0


@pytest.mark.parametrize(
    "cls,kwargs,name",
    [
        (optim.MuonOrthoNoise, dict(alpha=-1.0), "alpha"),
        (optim.MuonOrthoNoise, dict(schedule="step"), "schedule"),
        (optim.MuonOrthoNoise, dict(schedule="linear"), "alpha_end"),
        (optim.MuonOrthoNoise, dict(rank_threshold=0.0), "rank_threshold"),
        (optim.MuonOrthoNoise, dict(rank_threshold=1.5), "rank_threshold"),
        (optim.MuonOrthoNoise, dict(rank_every=0), "rank_every"),
        (optim.MuonOrthoNoise, dict(noise_method="svd"), "noise_method"),
        (optim.MuonOrthoNoise, dict(persist_noise="no"), "persist_noise"),
        (optim.MuonOrthoNoise, dict(reortho_steps=-1), "reortho_steps"),
        (optim.MuonIsotropic, dict(noise_warmup_steps=1.5), "noise_warmup_steps"),
        (optim.MuonNOLAH, dict(percentile=0.0), "percentile"),
        (optim.MuonNOLAH, dict(percentile_scale=-1), "percentile_scale"),
        (optim.MuonNOLAH, dict(gating=1), "gating"),
        (optim.MuonNOLAH, dict(sigmoid_projection=None), "sigmoid_projection"),
    ],
)
def test_bad_kwargs(cls, kwargs, name):
    with pytest.raises(ValueError, match=name) as e:
        cls([nn.Parameter(torch.randn(4, 4))], **kwargs)
    assert type(e.value) is ValueError and cls.__name__ in str(e.value)


def test_nolah_pieces():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(10, 20))
    g = torch.randn(10, 20)
    beta = 0.9
    opt = optim.MuonNOLAH([p], lr=0.01, momentum=beta, nesterov=False, orthogonalizer="svd", ns_precision="fp32")
    w0 = p.detach().clone()
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)  # the gating does not touch p.grad
    gated = torch.tanh(g) * g.abs()
    buf = (1 - beta) * gated
    thr = gated.abs().flatten().kthvalue(math.ceil(0.95 * 200)).values
    mask = gated.abs() > thr
    assert mask.sum() == 10  # the top 5% of 200 entries
    buf = torch.where(mask, buf * 0.9, buf)
    assert torch.allclose(opt.state[p]["momentum_buffer"], buf, atol=1e-7)
    expected = svd_orthogonalize(buf * torch.sigmoid(buf))
    assert torch.allclose((w0 - p.detach()) / 0.01, expected, atol=1e-4)
    # every piece can be switched off: then it is plain Muon
    a, b = _params(), _params()
    off = optim.MuonNOLAH(a, gating=False, percentile_scale=1.0, sigmoid_projection=False)
    muon = optim.Muon(b)
    _run(off, a, 3)
    _run(muon, b, 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_isotropic_with_reorthogonalization_is_the_control_for_orthonoise():
    """At a vanishing alpha the noise is nothing, but the cubic re-orthogonalization still changes the
    update: OrthoNoise moves away from Muon, and so does MuonIsotropic(reortho_steps=3), by the same
    amount; the original control (no re-orthogonalization) stays at Muon."""
    kw = dict(lr=0.02, alpha=1e-12, rank_threshold=None, ns_precision="fp32", seed=2)
    runs = {}
    for name, make in (("muon", lambda ps: optim.Muon(ps, lr=0.02, ns_precision="fp32")),
                       ("orthonoise", lambda ps: optim.MuonOrthoNoise(ps, **kw)),
                       ("isotropic", lambda ps: optim.MuonIsotropic(ps, **kw)),
                       ("isotropic_reortho", lambda ps: optim.MuonIsotropic(ps, reortho_steps=3, **kw))):
        ps = _params()
        _run(make(ps), ps, 3)
        runs[name] = ps
    p0 = _params()

    def dist(a, b):
        return max(((x - y).norm() / (y - z).norm()).item() for x, y, z in zip(runs[a], runs[b], p0))

    assert dist("orthonoise", "muon") > 5e-3  # the re-orthogonalization, not the noise
    assert dist("isotropic_reortho", "muon") > 5e-3
    assert dist("isotropic", "muon") < 1e-5
    assert dist("isotropic_reortho", "orthonoise") < 1e-5  # the control separates the two effects
    with pytest.raises(ValueError, match="reortho_steps"):
        optim.MuonIsotropic(_params(), reortho_steps=-1)


def test_isotropic_reortho_step_is_polar_of_cubic_of_update_plus_noise():
    from optim.orthogonalize import cubic_newton_schulz

    ps = _params()
    p0 = [p.detach().clone() for p in ps]
    alpha, lr, beta = 0.3, 0.05, 0.9
    opt = optim.MuonIsotropic(ps, lr=lr, momentum=beta, alpha=alpha, rank_threshold=None, orthogonalizer="svd",
                              ns_precision="fp32", reortho_steps=3, seed=11)
    grads = _grad_seq(0)
    for p, g in zip(ps, grads):
        p.grad = g
    opt.step()
    src = NoiseSource(11)
    for i, (p, g, w0) in enumerate(zip(ps, grads, p0)):
        U = g + beta * ((1 - beta) * g - g)
        N = isotropic(src.gaussian(g.shape, "cpu", step=1, indices=[i]))[0]
        expected = svd_orthogonalize(cubic_newton_schulz(U + alpha * g.norm() * N, steps=3, precision="fp32"))
        ratio = math.sqrt(max(1, g.shape[0] / g.shape[1]))
        assert torch.allclose((w0 - p.detach()) / (lr * ratio), expected, atol=2e-4)


def test_nolah_selection_is_kthvalue_exactly():
    from optim.nolah import kth_smallest_nonneg

    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 999, generator=g).abs()
    x[1, :500] = 0.0  # ties and zeros
    x[2] = x[2, :1].expand(999).clone()  # all equal
    x[3, ::7] = float("inf")
    x[4] = torch.tanh(torch.randn(999, generator=g)) * torch.randn(999, generator=g).abs()
    x[4] = x[4].abs()
    x[5, 10] = 1e-40  # a subnormal
    for k in (1, 2, 500, 501, 949, 950, 999):
        ref = x.kthvalue(k, dim=1).values
        for method in ("search", "topk"):
            got = kth_smallest_nonneg(x, k, method)
            assert torch.equal(got, ref), (k, method)
            assert torch.equal(x > got[:, None], x > ref[:, None])  # the same entries get scaled
    x[0, :30] = float("nan")  # NaN counts as the largest, as in kthvalue
    for k in (1, 969, 970, 999):
        ref = x.kthvalue(k, dim=1).values
        for method in ("search", "topk"):
            got = kth_smallest_nonneg(x, k, method)
            assert torch.equal(x > got[:, None], x > ref[:, None]), (k, method)
            if method == "search" or not ref.isnan().any():
                assert torch.equal(got.nan_to_num(), ref.nan_to_num()), (k, method)
