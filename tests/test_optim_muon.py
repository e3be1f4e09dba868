"""optim.Muon against torch.optim.Muon and against a float64 reference of the same algorithm."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import optim
from optim.muon import adjust_ratio
from optim.orthogonalize import NS_COEFFICIENTS

SHAPES = [(32, 48), (64, 32), (32, 48), (16, 16), (64, 32)]


def _initial():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _grads(ps, t):
    # Gradients that depend on the parameters, so that any difference compounds over the steps.
    g = torch.Generator().manual_seed(1000 + t)
    return [torch.randn(p.shape, generator=g) + 0.5 * p.detach() for p in ps]


def _train(make, steps=20):
    ps = [nn.Parameter(p.clone()) for p in _initial()]
    opt = make(ps)
    for t in range(steps):
        for p, g in zip(ps, _grads(ps, t)):
            p.grad = g
        opt.step()
    return [p.detach() for p in ps]


def _displacement_err(a, b):
    """max over matrices of ||a - b|| / ||b - p0||: the error relative to how far training moved."""
    p0 = _initial()
    return max(((x - y).norm() / (y - z).norm()).item() for x, y, z in zip(a, b, p0))


@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_follows_torch_muon_for_20_steps(adjust_lr_fn, nesterov):
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ref = _train(lambda ps: torch.optim.Muon(ps, **kw))
    ours = _train(lambda ps: optim.Muon(ps, **kw))
    assert _displacement_err(ours, ref) <= 1e-3


def test_torch_comparison_would_catch_a_wrong_scale_or_momentum():
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95)
    ref = _train(lambda ps: torch.optim.Muon(ps, adjust_lr_fn="original", **kw))
    wrong_scale = _train(lambda ps: optim.Muon(ps, adjust_lr_fn="match_rms_adamw", **kw))
    wrong_momentum = _train(lambda ps: optim.Muon(ps, adjust_lr_fn="original", **dict(kw, momentum=0.9)))
    assert _displacement_err(wrong_scale, ref) > 1e-1
    assert _displacement_err(wrong_momentum, ref) > 1e-2


def _reference_muon_f64(steps, lr, momentum, wd, nesterov, adjust_lr_fn):
    """The same algorithm in float64 numpy: EMA momentum, Nesterov lerp, quintic NS, adjust, decay."""
    a, b, c = NS_COEFFICIENTS
    ps = [p.double().numpy().copy() for p in _initial()]
    bufs = [np.zeros_like(p) for p in ps]
    for t in range(steps):
        grads = [g.double().numpy() for g in _grads([torch.from_numpy(p) for p in ps], t)]
        for i, (p, g) in enumerate(zip(ps, grads)):
            bufs[i] = bufs[i] + (1 - momentum) * (g - bufs[i])
            u = g + momentum * (bufs[i] - g) if nesterov else bufs[i]
            X = u.T if u.shape[0] > u.shape[1] else u
            X = X / max(np.linalg.norm(X), 1e-7)
            for _ in range(5):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            O = X.T if u.shape[0] > u.shape[1] else X
            ps[i] = p * (1 - lr * wd) - lr * adjust_ratio(adjust_lr_fn, *p.shape) * O
    return ps


@pytest.mark.parametrize("nesterov,adjust_lr_fn", [(True, "original"), (False, "match_rms_adamw")])
def test_float32_orthogonalization_matches_float64_reference(nesterov, adjust_lr_fn):
    kw = dict(lr=0.02, momentum=0.95, weight_decay=0.05, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    ours = _train(lambda ps: optim.Muon(ps, ns_precision="fp32", **kw), steps=8)
    ref = _reference_muon_f64(8, kw["lr"], kw["momentum"], kw["weight_decay"], nesterov, adjust_lr_fn)
    for x, y, z in zip(ours, ref, _initial()):
        err = np.linalg.norm(x.double().numpy() - y) / np.linalg.norm(y - z.double().numpy())
        assert err < 1e-5


@pytest.mark.parametrize("orthogonalizer", ["polar_express", "svd"])
def test_other_orthogonalizers_train(orthogonalizer):
    out = _train(lambda ps: optim.Muon(ps, orthogonalizer=orthogonalizer, lr=0.02), steps=3)
    assert all(torch.isfinite(p).all() for p in out)
    assert _displacement_err(out, _train(lambda ps: optim.Muon(ps, lr=0.02), steps=3)) < 0.5


def test_conv_weights_are_flattened_and_step_is_per_optimizer_step():
    torch.manual_seed(0)
    conv = nn.Parameter(torch.randn(8, 4, 3, 3))
    lin = [nn.Parameter(torch.randn(8, 8)) for _ in range(6)]
    opt = optim.Muon([conv, *lin], lr=0.1)
    for t in range(3):
        for p in [conv, *lin]:
            p.grad = torch.randn_like(p)
        before = conv.detach().clone()
        opt.step()
        assert opt.step_count == t + 1  # once per step, not once per parameter
    # the conv update is an orthogonalized (8, 36) matrix: its singular values are O(1) * lr
    delta = (conv.detach() - before).reshape(8, 36) / -0.1
    s = torch.linalg.svdvals(delta)
    assert delta.shape == (8, 36) and s.min() > 0.5 and s.max() < 1.5


def test_diagnostics():
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(12, 20)) for _ in range(3)] + [nn.Parameter(torch.randn(20, 12))]
    opt = optim.Muon(ps, lr=0.02, rank_every=3)
    assert opt.diagnostics["grad_norm"] is None  # before any step
    seen, measured = [], None
    for t in range(1, 8):
        grads = [torch.randn_like(p) for p in ps]
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
        d = opt.diagnostics
        assert set(d) == set(optim.DIAGNOSTIC_KEYS)
        assert d["noise_fraction"] == 0.0 and d["eps_mean"] == 0.0
        assert math.isclose(d["grad_norm"], torch.sqrt(sum((g * g).sum() for g in grads)).item(), rel_tol=1e-5)
        assert isinstance(d["update_rms"], float) and 0 < d["update_rms"] < 1
        seen.append(d["eff_rank_mean"] is not None)
        if d["eff_rank_mean"] is not None:  # the measurement of rank_every steps ago
            assert math.isclose(d["eff_rank_mean"], sum(measured) / 4, rel_tol=1e-5)
            assert math.isclose(d["eff_rank_min"], min(measured), rel_tol=1e-5)
        else:
            assert d["eff_rank_min"] is None
        if (t - 1) % 3 == 0:  # a rank step measures the momentum as it is after this step's update
            measured = [optim.rank.effective_rank(opt.state[p]["momentum_buffer"]).item() for p in ps]
    # measured on steps 1, 4, 7 (rank_every=3), each reported (and acted on) rank_every steps later
    assert seen == [False, False, False, True, False, False, True]
    off = optim.Muon([nn.Parameter(torch.randn(4, 4))], rank_every=0)
    off.param_groups[0]["params"][0].grad = torch.randn(4, 4)
    off.step()
    assert off.diagnostics["eff_rank_mean"] is None


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(lr=-1.0), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(adjust_lr_fn="rms"), "adjust_lr_fn"),
        (dict(orthogonalizer="qr"), "orthogonalizer"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(ns_precision="fp16"), "ns_precision"),
        (dict(eps=0.0), "eps"),
        (dict(seed=1.5), "seed"),
        (dict(rank_every=-1), "rank_every"),
        (dict(shard_across_ranks=1), "shard_across_ranks"),
    ],
)
def test_bad_kwargs_name_argument_and_value(kwargs, name):
    with pytest.raises(ValueError) as e:
        optim.Muon([nn.Parameter(torch.randn(4, 4))], **kwargs)
    msg = str(e.value)
    assert name in msg and repr(next(iter(kwargs.values()))) in msg and "allowed" in msg


def test_rejects_vectors():
    with pytest.raises(ValueError, match="params"):
        optim.Muon([nn.Parameter(torch.randn(4))])
