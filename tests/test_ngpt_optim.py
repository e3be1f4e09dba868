"""The nGPT study's optimizers: the geodesic update on the sphere (and the seed's flipped-sign version
failing the same checks), NorMuon against a float64 re-implementation, cautious weight decay against a
reference (and its refusal with weight decay 0), and the AdamW arm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optim
from optim.factory import _allowed_kwargs
from optim.muon import adjust_ratio
from optim.sphere import cautious_mask, geodesic_step, geodesic_update_, seed_flipped_step
from trainer.model import build_model


# ------------------------------------------------------------------ a problem on the sphere
def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


def sphere_problem(n=8, d=16, seed=0, dtype=torch.float64):
    """loss(W) = -sum_i <w_i, a_i> over unit rows w_i, unit a_i: minimum -n at W = A; gradient -A."""
    g = torch.Generator().manual_seed(seed)
    A = unit_rows(torch.randn(n, d, generator=g, dtype=dtype))
    W = unit_rows(torch.randn(n, d, generator=g, dtype=dtype))
    return W, A


def loss(W, A):
    return -(W * A).sum().item()


def descends_on_the_sphere(step, lr=1e-2, steps=40, dtype=torch.float64) -> tuple[bool, bool]:
    """(every step lowered the loss, every iterate stayed on the sphere to 1e-6) for step(W, U, lr)."""
    W, A = sphere_problem(dtype=dtype)
    lowers, stays = True, True
    for _ in range(steps):
        new = step(W, -A, lr)  # U = the gradient; the plain step would be W - lr * U
        lowers &= loss(new, A) < loss(W, A)
        stays &= bool(((new.double().norm(dim=1) - 1).abs() < 1e-6).all())
        W = new
    return lowers, stays


@pytest.mark.parametrize("scaled", [False, True])
def test_geodesic_steps_lower_the_loss_and_stay_on_the_sphere(scaled):
    ok = descends_on_the_sphere(lambda W, U, lr: geodesic_step(W, U, lr, 1, scaled))
    assert ok == (True, True)
    # in float32 too, and it converges to the known minimum
    assert descends_on_the_sphere(lambda W, U, lr: geodesic_step(W, U, lr, 1, scaled), dtype=torch.float32)[1]
    W, A = sphere_problem()
    for _ in range(400):
        W = geodesic_step(W, -A, 0.05, 1, scaled)
    # theta = lr ends within a fixed angle lr of the minimum (it cannot take smaller steps); lr * ||t|| converges
    # until the tangent part falls under TANGENT_FLOOR (1e-3 of |u|: an angle of 1e-3, 4e-6 of loss here)
    assert loss(W, A) == pytest.approx(-8.0, abs=1e-5 if scaled else 8 * (1 - torch.cos(torch.tensor(0.05)).item()))


@pytest.mark.parametrize("scaled", [False, True])
def test_the_seeds_flipped_sign_fails_the_same_checks(scaled):
    lowers, stays = descends_on_the_sphere(lambda W, U, lr: seed_flipped_step(W, U, lr, scaled))
    assert not lowers and not stays
    # the sign alone: even projected back onto the sphere it climbs
    lowers, _ = descends_on_the_sphere(lambda W, U, lr: unit_rows(seed_flipped_step(W, U, lr, scaled)))
    assert not lowers


def test_scaled_geodesic_equals_the_projected_step_to_first_order():
    W, A = sphere_problem(seed=1)
    U = -A + 0.3 * torch.randn(A.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errs = []
    for lr in (1e-2, 1e-3, 1e-4):
        geo = geodesic_step(W, U, lr, 1, scaled=True)
        proj = unit_rows(W - lr * U)
        errs.append((geo - proj).norm().item())
        assert errs[-1] < 0.05 * (geo - W).norm().item()  # far below the step itself
    assert errs[1] / errs[0] < 0.02 and errs[2] / errs[1] < 0.02  # second order: 100x smaller per 10x lr
    # theta = lr moves each row by the angle lr along the same tangent direction as the projected step
    lr = 1e-4
    geo1 = geodesic_step(W, U, lr, 1, scaled=False)
    d1, dp = (geo1 - W) / lr, (unit_rows(W - lr * U) - W) / lr
    cos = (d1 * dp).sum(1) / (d1.norm(dim=1) * dp.norm(dim=1))
    assert (cos > 1 - 1e-6).all()
    torch.testing.assert_close(torch.arccos((geo1 * W).sum(1).clamp(max=1)), torch.full((8,), lr, dtype=torch.float64),
                               rtol=1e-4, atol=0)


def test_geodesic_axis_parallel_update_and_radius():
    W, A = sphere_problem(seed=2)
    U = torch.randn(W.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(geodesic_step(W.T, U.T, 0.1, 0, True), geodesic_step(W, U, 0.1, 1, True).T)
    # an update parallel to w (no tangent part) leaves w where it is, for both treatments
    for scaled in (False, True):
        torch.testing.assert_close(geodesic_step(W, 3.0 * W, 0.1, 1, scaled), W)
    # a vector of norm 2 moves on the sphere of radius 2
    out = geodesic_step(2 * W, U, 0.1, 1, True)
    torch.testing.assert_close(out.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("scaled", [False, True])
def test_fast_geodesic_update_equals_the_reference(scaled):
    g = torch.Generator().manual_seed(9)
    W = torch.randn(3, 64, 256, generator=g)
    W = W / W.norm(dim=1, keepdim=True)  # unit columns
    O = torch.randn(3, 64, 256, generator=g).bfloat16()
    ref = geodesic_step(W.double(), 2.0 * O.double(), 0.03, 1, scaled)
    fast = W.clone()
    geodesic_update_(fast, O, 0.03, 2.0, 1, scaled)
    torch.testing.assert_close(fast.double(), ref, atol=2e-6, rtol=0)


# ------------------------------------------------------------------ the geodesic option of the Muon family
def muon_on_sphere(update, shape=(12, 8), dim=0, steps=1, lr=0.05, cls=optim.Muon, **kw):
    g = torch.Generator().manual_seed(7)
    W0 = torch.randn(shape, generator=g)
    W0 = W0 / W0.norm(dim=dim, keepdim=True)
    A = torch.randn(shape, generator=g)
    A = A / A.norm(dim=dim, keepdim=True)
    p = nn.Parameter(W0.clone())
    opt = cls([p], lr=lr, momentum=0.0, nesterov=False, update=update, orthogonalizer="svd", rank_every=0, **kw)
    opt.set_sphere_dims({p: dim})
    losses, devs = [], []
    for _ in range(steps):
        p.grad = -A.clone()
        opt.step()
        losses.append(-(p.detach() * A).sum().item())
        devs.append((p.detach().norm(dim=dim) - 1).abs().max().item())
    return W0, A, p.detach(), opt, losses, devs


@pytest.mark.parametrize("update", ["geodesic", "geodesic_scaled"])
@pytest.mark.parametrize("shape, dim", [((12, 8), 0), ((8, 12), 1), ((10, 10), 0)])
def test_muon_geodesic_is_the_geodesic_step_of_its_update_and_stays_on_the_sphere(update, shape, dim):
    W0, A, W1, opt, _, _ = muon_on_sphere(update, shape, dim)
    O = optim.orthogonalize.svd_orthogonalize(-A)
    ref = geodesic_step(W0, adjust_ratio(None, *shape) * O, 0.05, dim, update == "geodesic_scaled")
    torch.testing.assert_close(W1, ref, atol=1e-6, rtol=1e-6)
    _, _, _, _, losses, devs = muon_on_sphere(update, shape, dim, steps=30, lr=0.02)
    # float32 steps leave the sphere by rounding only: at most about one ulp of the norm per step
    # (measured 1.07-1.19e-6 after 30 steps on one CPU; a bound of 1e-6 failed there)
    assert max(devs) < 30 * torch.finfo(torch.float32).eps and losses[-1] < losses[0] - 0.5


def test_geodesic_needs_an_axis_for_every_matrix():
    p = nn.Parameter(torch.randn(4, 4))
    opt = optim.Muon([p], update="geodesic")
    with pytest.raises(ValueError, match="needs every parameter on the sphere"):
        opt.set_sphere_dims({})
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="sphere_dims"):  # the GPT has no axes
        optim.build_optimizer(build_model("tiny"), muon_kwargs={"update": "geodesic"})
    with pytest.raises(ValueError, match="update='sideways' is not allowed"):
        optim.Muon([p], update="sideways")


def test_replaced_update_keeps_muons_diagnostics():
    def diag(**kw):
        torch.manual_seed(0)
        m = build_model("ngpt-tiny")
        x = torch.randint(0, 256, (2, 17))
        m(x[:, :-1], x[:, 1:]).backward()
        opt = optim.build_optimizer(m, muon_kwargs=kw)
        opt.step()
        return opt.diagnostics

    ref = diag()
    for kw in ({"update": "geodesic"}, {"cautious_wd": True, "weight_decay": 0.1}):
        assert diag(**kw) == ref


# ------------------------------------------------------------------ NorMuon
SHAPES = [(16, 8), (8, 16), (12, 12), (16, 8)]


def normuon_reference(W0, grads, lr, mu, wd, beta2, nesterov=True):
    """NorMuon in float64, written from the description (modded-nanogpt's variance reduction)."""
    W = [w.double().clone() for w in W0]
    B = [torch.zeros_like(w) for w in W]
    V = [None] * len(W)
    for gs in grads:
        for i, g in enumerate(gs):
            g = g.double()
            B[i] = B[i] + (1 - mu) * (g - B[i])
            U = g + mu * (B[i] - g) if nesterov else B[i]
            u, _, vh = torch.linalg.svd(U, full_matrices=False)
            O = u @ vh
            r, c = O.shape
            red = 1 if r >= c else 0
            m = (O * O).mean(dim=red, keepdim=True)
            V[i] = (1 - beta2) * m if V[i] is None else beta2 * V[i] + (1 - beta2) * m
            O2 = O / V[i].clamp_min(1e-10).sqrt()
            O2 = O2 * O.norm() / O2.norm()
            W[i] = W[i] * (1 - lr * wd) - lr * adjust_ratio(None, r, c) * O2
    return W


def test_normuon_matches_a_float64_reimplementation():
    g = torch.Generator().manual_seed(11)
    W0 = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(6)]
    ps = [nn.Parameter(w.clone()) for w in W0]
    opt = optim.NorMuon(ps, lr=0.02, momentum=0.9, weight_decay=0.05, beta2=0.95, orthogonalizer="svd",
                        rank_every=0)
    for gs in grads:
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        opt.step()
    ref = normuon_reference(W0, grads, 0.02, 0.9, 0.05, 0.95)
    for p, r, w0 in zip(ps, ref, W0):
        assert ((p.detach().double() - r).norm() / (r - w0.double()).norm()).item() < 1e-4
    # per-row statistics for rows >= cols, per-column otherwise
    assert opt.state[ps[0]]["normuon_second_moment"].shape == (16, 1)
    assert opt.state[ps[1]]["normuon_second_moment"].shape == (1, 16)
    # and it is not Muon: the same run without the normalization ends elsewhere
    plain = [nn.Parameter(w.clone()) for w in W0]
    mo = optim.Muon(plain, lr=0.02, momentum=0.9, weight_decay=0.05, orthogonalizer="svd", rank_every=0)
    for gs in grads:
        for p, gr in zip(plain, gs):
            p.grad = gr.clone()
        mo.step()
    assert max((a.detach() - b.detach()).norm().item() for a, b in zip(plain, ps)) > 1e-3


def test_normuon_first_step_equalizes_row_norms():
    p = nn.Parameter(torch.zeros(16, 8))
    p.grad = torch.randn(16, 8) * torch.linspace(0.1, 3, 16)[:, None]
    opt = optim.NorMuon([p], lr=1.0, momentum=0.0, nesterov=False, orthogonalizer="svd", rank_every=0)
    opt.step()
    rows = p.detach().norm(dim=1)
    torch.testing.assert_close(rows, rows.mean().expand(16), rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="beta2"):
        optim.NorMuon([p], beta2=1.0)


# ------------------------------------------------------------------ cautious weight decay
def test_cautious_mask_truth_table():
    U = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 1.0])
    W = torch.tensor([1.0, 1.0, -1.0, -1.0, 1.0, 0.0])
    assert cautious_mask(U, W).tolist() == [True, False, False, True, True, True]


def _one_muon_step(shape, lr, wd, **kw):
    g = torch.Generator().manual_seed(4)
    W0, G = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    p = nn.Parameter(W0.clone())
    p.grad = G.clone()
    opt = optim.Muon([p], lr=lr, momentum=0.0, nesterov=False, weight_decay=wd, orthogonalizer="svd", rank_every=0,
                     **kw)
    opt.step()
    return W0.double(), optim.orthogonalize.svd_orthogonalize(G).double(), p.detach().double()


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_cautious_decay_is_modded_nanogpts_formula(shape):
    """modded-nanogpt's NorMuon (train_gpt.py @f411b3d3: eff_lr = lr_mul * lr with lr_mul = shape_mult =
    max(1, rows/cols)^0.5, :510-511/:877; eff_wd = wd * lr, :878; cautious_wd_and_update_inplace, :929-930):
    mask = (v p) >= 0;  p <- p - p mask eff_wd eff_lr - v eff_lr. Written here in its own form."""
    lr, wd = 0.023, 1.2  # modded-nanogpt's NorMuon lr and weight decay
    W, V, got = _one_muon_step(shape, lr, wd, cautious_wd=True)
    eff_lr = lr * max(1.0, shape[0] / shape[1]) ** 0.5
    eff_wd = wd * lr
    mask = (V * W) >= 0
    assert 0.2 < mask.double().mean() < 0.8  # both cases occur
    ref = W - W * mask * eff_wd * eff_lr - V * eff_lr
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)  # float32 step of O(1) entries
    # the former rule (lr * wd) is a named option; with the same number it decays ~1 / (lr * shape) times more
    _, _, former = _one_muon_step(shape, lr, wd, cautious_wd=True, weight_decay_scale="lr")
    torch.testing.assert_close(former, W - lr * wd * mask * W - V * eff_lr, atol=1e-6, rtol=1e-6)
    assert (former - got).abs().max() > 1e-2


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
def test_plain_decay_keeps_torch_muons_rate_and_takes_modded_nanogpts(shape):
    lr, wd = 0.05, 0.3
    W, V, got = _one_muon_step(shape, lr, wd)
    ratio = adjust_ratio(None, *shape)
    torch.testing.assert_close(got, W * (1 - lr * wd) - lr * ratio * V, atol=1e-6, rtol=1e-6)
    _, _, quad = _one_muon_step(shape, lr, wd, weight_decay_scale="lr_lr_eff")  # the cautious arm's control
    torch.testing.assert_close(quad, W * (1 - wd * lr * lr * ratio) - lr * ratio * V, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"weight_decay_scale='lr2' is not allowed"):
        optim.Muon([nn.Parameter(torch.randn(4, 4))], weight_decay=0.1, weight_decay_scale="lr2")


@pytest.mark.parametrize("cls", [optim.Muon, optim.NorMuon, optim.MuonOrthoNoise, optim.MuonIsotropic,
                                 optim.MuonNOLAH])
def test_cautious_decay_without_weight_decay_is_refused(cls):
    p = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"cautious_wd=True with weight_decay=0 would do nothing"):
        cls([p], cautious_wd=True)
    cls([p], cautious_wd=True, weight_decay=0.01)  # with decay it is fine
    with pytest.raises(ValueError, match="would do nothing"):
        optim.build_optimizer(build_model("ngpt-tiny"), cls=cls.__name__, muon_kwargs={"cautious_wd": True})


# ------------------------------------------------------------------ the AdamW arm and the factory
def test_adamw_arm_takes_every_parameter_and_equals_torch_adamw():
    torch.manual_seed(0)
    m = build_model("ngpt-tiny")
    ref = build_model("ngpt-tiny")
    ref.load_state_dict(m.state_dict())
    kw = {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.0}
    opt = optim.build_optimizer(m, cls="AdamW", adamw_kwargs=kw)
    assert opt.assignment["muon"] == [] and len(opt.assignment["adamw"]) == len(list(m.parameters()))
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    x = torch.randint(0, 256, (2, 17))
    for model, o in ((m, opt), (ref, ref_opt)):
        for _ in range(2):
            model(x[:, :-1], x[:, 1:]).backward()
            o.step()
            o.zero_grad()
    for a, b in zip(m.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="AdamW: takes no Muon-family settings"):
        optim.build_optimizer(m, cls="AdamW", muon_kwargs={"lr": 0.02})


def test_allowed_kwargs_and_versions():
    assert _allowed_kwargs(optim.OPTIMIZERS["AdamW"]) == []
    for name in ("Muon", "MuonOrthoNoise", "NorMuon"):
        assert {"update", "cautious_wd", "weight_decay"} <= set(_allowed_kwargs(optim.OPTIMIZERS[name]))
    assert "beta2" in _allowed_kwargs(optim.NorMuon)
    assert set(optim.ALGORITHM_VERSIONS) == set(optim.OPTIMIZERS)
