"""Noise draws, Haar QR (sign fix, wide matrices, float32), polar and isotropic noise, schedules."""

import math

import pytest
import torch

from optim.noise import NoiseSource, haar_polar, haar_qr, isotropic, mix_seed
from optim.schedules import AlphaSchedule


@pytest.mark.parametrize("algorithm", ["householder", "cholesky"])
@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (12, 12)])
def test_haar_qr_shape_orthonormality_and_sign_fix(algorithm, shape):
    torch.manual_seed(0)
    Z = torch.randn(4, *shape, dtype=torch.bfloat16)  # bf16 in: the linear algebra runs in float32+
    Q = haar_qr(Z, algorithm)
    assert Q.shape == Z.shape and Q.dtype == torch.float32
    m, n = shape
    gram = Q.mT @ Q if m >= n else Q @ Q.mT
    assert torch.allclose(gram, torch.eye(min(m, n)).expand_as(gram), atol=1e-5)
    # Q is the QR factor with a positive diagonal of R: R = Q^T A is upper triangular, diag > 0
    A = Z.float() if m >= n else Z.float().mT
    Qt = Q if m >= n else Q.mT
    R = Qt.mT @ A
    assert torch.allclose(R, R.triu(), atol=1e-4)
    assert (torch.diagonal(R, dim1=-2, dim2=-1) > 0).all()


def test_qr_algorithms_agree():
    torch.manual_seed(1)
    Z = torch.randn(3, 40, 16)
    assert torch.allclose(haar_qr(Z, "householder"), haar_qr(Z, "cholesky"), atol=1e-5)
    with pytest.raises(ValueError, match="algorithm='lu'"):
        haar_qr(Z, "lu")


def test_plain_qr_is_wrong_for_wide_and_bf16_and_unfixed_signs_are_biased():
    torch.manual_seed(2)
    wide = torch.randn(6, 20)
    assert torch.linalg.qr(wide).Q.shape == (6, 6)  # the seed's version: wrong shape
    assert haar_qr(wide).shape == (6, 20)
    # Without the sign fix, LAPACK's Householder QR makes Q[0, 0] one-signed: not Haar.
    Z = torch.randn(2000, 4, 4)
    raw = torch.linalg.qr(Z).Q[:, 0, 0]
    fixed = haar_qr(Z, "householder")[:, 0, 0]
    assert (raw > 0).all() or (raw < 0).all()
    assert abs(fixed.mean()) < 0.05 and (fixed > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    # Haar: E[Q_ij^2] = 1/n for every entry
    assert torch.allclose((haar_qr(Z) ** 2).mean(0), torch.full((4, 4), 0.25), atol=0.03)


def test_isotropic_noise_has_the_frobenius_norm_of_an_orthonormal_matrix():
    torch.manual_seed(3)
    for shape in [(6, 20), (20, 6), (9, 9)]:
        Z = torch.randn(3, *shape)
        N = isotropic(Z)
        assert torch.allclose(N.norm(dim=(-2, -1)), torch.full((3,), math.sqrt(min(shape))), rtol=1e-5)
        assert torch.allclose(N.norm(dim=(-2, -1)), haar_qr(Z).norm(dim=(-2, -1)), rtol=1e-5)
        # same direction as the Gaussian: only the scale changes
        assert torch.allclose(N / N.norm(dim=(-2, -1), keepdim=True), Z / Z.norm(dim=(-2, -1), keepdim=True), atol=1e-6)


def test_polar_noise_is_nearly_orthonormal():
    torch.manual_seed(4)
    Z = torch.randn(8, 16, 48)  # wide Gaussians are well conditioned
    P = haar_polar(Z, precision="fp32")
    s = torch.linalg.svdvals(P)
    assert P.dtype == torch.float32 and P.shape == Z.shape
    assert (s > 0.8).all() and (s < 1.2).all()  # Polar Express ends within about 15% of 1


def test_draws_depend_only_on_seed_step_and_index():
    src = NoiseSource(7)
    a = src.gaussian((5, 3), "cpu", step=4, indices=[2, 9])
    b = src.gaussian((5, 3), "cpu", step=4, indices=[9])
    c = NoiseSource(7).gaussian((5, 3), "cpu", step=4, indices=[2])
    assert torch.equal(a[1], b[0]) and torch.equal(a[0], c[0])  # independent of who else draws
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(src.gaussian((5, 3), "cpu", 5, [2])[0], a[0])
    assert not torch.equal(NoiseSource(8).gaussian((5, 3), "cpu", 4, [2])[0], a[0])
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3) != mix_seed(1, 3, 2)
    assert 0 <= mix_seed(2**40, 10**6, 500) < 2**63


def test_schedules_values():
    const = AlphaSchedule(alpha=1e-2)
    assert const(1) == const(5000) == 1e-2
    # the seed's anneal: alpha * 0.1 ** (t / 1000), t counted from 0 at the first step
    exp = AlphaSchedule(alpha=1e-2, schedule="exponential", alpha_end=1e-3, schedule_steps=1000)
    for t in (0, 1, 500, 1000, 2000):
        assert exp(t + 1) == pytest.approx(1e-2 * 0.1 ** (t / 1000), rel=1e-12)
    half = AlphaSchedule(alpha=1e-2, schedule="exponential", half_life=500)
    assert half(1) == pytest.approx(1e-2) and half(501) == pytest.approx(5e-3) and half(1001) == pytest.approx(2.5e-3)
    lin = AlphaSchedule(alpha=1e-2, schedule="linear", alpha_end=1e-3, schedule_steps=100)
    assert lin(1) == pytest.approx(1e-2)
    assert lin(51) == pytest.approx(5.5e-3)
    assert lin(101) == pytest.approx(1e-3) and lin(10_000) == pytest.approx(1e-3)


def test_noise_warmup_delays_the_schedule():
    s = AlphaSchedule(alpha=1e-2, schedule="linear", alpha_end=0.0, schedule_steps=10, noise_warmup_steps=5)
    assert [s(t) for t in range(1, 6)] == [0.0] * 5
    assert s(6) == pytest.approx(1e-2)  # the clock starts with the noise
    assert s(11) == pytest.approx(5e-3) and s(16) == 0.0


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=1e-2, schedule="cosine"), "schedule"),
        (dict(alpha=1e-2, schedule="linear"), "alpha_end"),
        (dict(alpha=1e-2, schedule="exponential"), "alpha_end/half_life"),
        (dict(alpha=1e-2, schedule="exponential", alpha_end=1e-3, half_life=5), "alpha_end/half_life"),
        (dict(alpha=1e-2, schedule="exponential", alpha_end=0.0), "alpha_end"),
        (dict(alpha=1e-2, schedule="constant", alpha_end=1e-3), "alpha_end"),
        (dict(alpha=1e-2, schedule_steps=0), "schedule_steps"),
        (dict(alpha=1e-2, noise_warmup_steps=-1), "noise_warmup_steps"),
        (dict(alpha=1e-2, schedule="exponential", half_life=0), "half_life"),
    ],
)
def test_schedule_validation(kwargs, name):
    with pytest.raises(ValueError, match=name.replace("/", ".")):
        AlphaSchedule(**kwargs)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (24, 24)])
def test_cholesky_haar_law_and_orthonormality(shape):
    """Haar: Q[0, 0]^2 ~ Beta(1/2, (N - 1)/2) with N the length of Q's columns (tall) or rows (wide), so
    sqrt(N) Q[0, 0] is about standard normal; and Q is orthonormal to 1e-6 (CholeskyQR2 / shifted 3)."""
    from scipy import stats

    torch.manual_seed(6)
    Z = torch.randn(3000, *shape)
    Q = haar_qr(Z, "cholesky")
    m, n = shape
    N = max(m, n)
    q00 = Q[:, 0, 0].double()
    assert stats.kstest((q00**2).numpy(), stats.beta(0.5, (N - 1) / 2).cdf).pvalue > 1e-3
    assert abs((q00 > 0).double().mean().item() - 0.5) < 0.04  # no sign bias
    assert abs((N**0.5 * q00).std().item() - 1.0) < 0.05
    Qd = Q.double()
    gram = Qd.mT @ Qd if m >= n else Qd @ Qd.mT
    assert (gram - torch.eye(min(shape), dtype=torch.float64)).abs().max() < 1e-6
    # and it is Householder QR with the sign fix (the same matrices, to float32 rounding)
    assert torch.allclose(Q[:50], haar_qr(Z[:50], "householder"), atol=1e-5)
