"""optim/triton_ns.py: the Triton symmetric-product Newton-Schulz against the torch path and float64.

The CUDA tests skip cleanly without a CUDA device or without Triton (CI); the CPU test checks that the
CPU path is the torch path, bit for bit.
"""

import pytest
import torch
from torch import nn

import optim
from optim import triton_ns
from optim.orthogonalize import orthogonalize, orthogonalize_stacks

cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and triton_ns.HAVE_TRITON and triton_ns.available(torch.empty(0, device="cuda"))),
    reason="needs a CUDA device (compute capability >= 8) and Triton",
)

# multiples of the tiles and not (masks), square, tall, wide; two stacks share the small side 192
STACKS = [(3, 192, 192), (2, 576, 192), (2, 192, 576), (2, 200, 328), (1, 64, 40)]


def test_cpu_is_the_torch_path_bitwise():
    g = torch.Generator().manual_seed(0)
    stacks = [torch.randn(s, generator=g) for s in [(2, 32, 32), (2, 96, 32), (1, 32, 96)]]
    for method in ("newton_schulz", "polar_express"):
        for S, O in zip(stacks, orthogonalize_stacks(stacks, method)):
            assert torch.equal(O, orthogonalize(S, method))


@cuda
def test_sym_mm_matches_float64_and_writes_every_element():
    """bf16 output of a float32 accumulation: the error is the output's rounding, <= 2^-9 per element
    relative; 4e-3 in Frobenius norm leaves room for the accumulation (float32, ~1e-6)."""
    g = torch.Generator(device="cuda").manual_seed(1)
    for B, m, k in [(3, 192, 192), (2, 200, 328), (1, 64, 40), (2, 768, 3072)]:
        X = torch.randn((B, m, k), device="cuda", generator=g).bfloat16()
        Y = torch.randn((B, m, m), device="cuda", generator=g)
        Y = (Y + Y.mT).bfloat16()
        out = torch.full((B, m, m), float("nan"), device="cuda", dtype=torch.bfloat16)
        triton_ns.sym_mm(X, out)
        ref = X.double() @ X.double().mT
        assert not out.isnan().any()
        assert ((out.double() - ref).norm() / ref.norm()) < 4e-3
        out2 = torch.full_like(out, float("nan"))
        triton_ns.sym_mm(out, out2, Y=Y, alpha=0.7, beta=-1.3)
        ref2 = 0.7 * out.double() @ out.double() - 1.3 * Y.double()
        assert not out2.isnan().any()
        assert ((out2.double() - ref2).norm() / ref2.norm()) < 4e-3


def _fp32_reference(S, method):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return orthogonalize(S, method, 5, "fp32").double()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@cuda
@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
def test_stacks_follow_the_torch_path_within_its_bf16_spread(method, monkeypatch):
    """Both bf16; the bound is the torch path's own distance from the float32 iteration: ours may be as
    far on the other side, so the two differ by at most twice that (triangle inequality)."""
    g = torch.Generator(device="cuda").manual_seed(2)
    stacks = [torch.randn(s, device="cuda", generator=g) * 1e-3 for s in STACKS]
    ours = orthogonalize_stacks(stacks, method, 5, "bf16")
    with monkeypatch.context() as m:
        m.setenv(triton_ns.ENV_SWITCH, "0")
        theirs = [orthogonalize(S, method, 5, "bf16") for S in stacks]
    for S, a, b in zip(stacks, ours, theirs):
        assert a.shape == S.shape and a.dtype == torch.bfloat16
        ref = _fp32_reference(S, method)
        spread = ((b.double() - ref).norm() / ref.norm()).item()
        assert 0 < spread < 3e-2
        assert ((a.double() - ref).norm() / ref.norm()).item() <= 2 * spread


def _train(make, shapes, steps=20):
    g = torch.Generator().manual_seed(0)
    p0 = [torch.randn(s, generator=g).cuda() for s in shapes]
    ps = [nn.Parameter(p.clone()) for p in p0]
    opt = make(ps)
    for t in range(steps):
        gg = torch.Generator().manual_seed(1000 + t)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gg).cuda() + 0.5 * p.detach()
        opt.step()
    return p0, [p.detach() for p in ps]


@cuda
def test_muon_with_the_kernels_follows_torch_muon(monkeypatch):
    """20 steps on CUDA: optim.Muon (kernels on) against torch.optim.Muon in bf16, within twice
    torch.optim.Muon's own bf16-vs-float32 spread (the bound of tests/test_optim_muon.py), and the same
    with the kernels off (the torch path: the same cuBLAS calls as torch.optim.Muon)."""
    import torch.optim._muon as tm

    from tests.test_optim_muon import _torch_muon_fp32_ns

    shapes = [(192, 192), (576, 192), (192, 576), (192, 192), (200, 328)]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95)
    p0, ref_bf16 = _train(lambda ps: torch.optim.Muon(ps, **kw), shapes)
    with monkeypatch.context() as m:
        m.setattr(tm, "_zeropower_via_newtonschulz", _torch_muon_fp32_ns())
        m.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        _, ref_fp32 = _train(lambda ps: torch.optim.Muon(ps, **kw), shapes)

    def err(a, b):
        return max(((x - y).norm() / (y - z).norm()).item() for x, y, z in zip(a, b, p0))

    spread = err(ref_bf16, ref_fp32)
    _, ours = _train(lambda ps: optim.Muon(ps, rank_every=0, **kw), shapes)
    assert 0 < spread < 1e-2
    assert err(ours, ref_bf16) <= 2 * spread
    with monkeypatch.context() as m:
        m.setenv(triton_ns.ENV_SWITCH, "0")
        _, torch_path = _train(lambda ps: optim.Muon(ps, rank_every=0, **kw), shapes)
    assert err(torch_path, ref_bf16) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the noise is drawn ahead on a side stream)")
@pytest.mark.parametrize("cls,kw", [
    ("MuonOrthoNoise", dict(rank_threshold=None, persist_noise=True)),
    ("MuonOrthoNoise", dict(rank_threshold=1.0, rank_every=3)),  # triggers flip at step 4: drawn inline there
    ("MuonOrthoNoise", dict(rank_threshold=None, noise_method="polar")),
    ("MuonIsotropic", dict(rank_threshold=None, reortho_steps=3)),
])
def test_noise_drawn_ahead_is_bitwise_the_noise_drawn_in_the_step(cls, kw, monkeypatch):
    shapes = [(192, 192), (576, 192), (192, 576), (192, 192)]
    make = lambda ps: getattr(optim, cls)(ps, lr=0.02, alpha=1e-2, seed=5, **kw)  # noqa: E731
    _, ahead = _train(make, shapes, steps=8)
    with monkeypatch.context() as m:
        m.setenv("OPTIM_NOISE_AHEAD", "0")
        _, inline = _train(make, shapes, steps=8)
    assert all(torch.equal(a, b) for a, b in zip(ahead, inline))
