"""optim.DeMo against DeMo as published, step for step, on 1, 2 and 4 real processes (gloo), under the
trainer's warmup and cooldown, with identical and with correlated gradients on the ranks.

The reference below is written from the paper (Peng, Quesnelle, Kingma 2024, "DeMo: Decoupled Momentum
Optimization", Algorithm 1) and from the semantics of bloc97/DeMo's demo.py @0e48145, not from optim/:
per parameter and rank, decoupled weight decay p *= 1 - lr wd (demo.py:124-125); delta = beta delta +
lr g (:128-132); per-chunk orthonormal 2-D DCT-II (TransformDCT, chunk side the largest divisor <= 64,
_get_smaller_split :440-449); the k largest |coefficients| of each chunk (CompressDCT.compress :283-284);
delta -= IDCT(those) (:139-145); all ranks' (indices, values) gathered, each coefficient averaged over
the ranks that sent it (scatter_reduce "mean", include_self=False, :296 via batch_decompress :304-307);
p -= lr sign(IDCT(that)) (:166-170). Transforms by scipy, selection by numpy sorts, float64.

The parameters are float64 so that the optimizer computes in float64 too: top-k and sign are discrete,
and a float32 run would be compared with a float64 one through rounding ties. The optimizer sends float32
values (value_dtype), the published code the parameter's dtype: the reference rounds what it sends to
float32 the same way (for float32 parameters, the case of every real run, the two are the same).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import scipy.fft
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import optim
from trainer.loop import lr_scale

SHAPES = [(64, 128), (128, 64)]  # every GPT hidden matrix tiles into 64 x 64 chunks, as these do
K = 32  # DeMo's compression_topk: 32 of each 64 x 64 chunk's 4096 coefficients
STEPS, WARMUP, COOLDOWN = 10, 4, 0.4  # lr x 0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25
LR, BETA, WD = 0.01, 0.9, 0.1
# name: (gradient mix c: g_r = common + c * own_r, with weight decay, 1-bit values, the former rules)
CONFIGS = {
    "identical-wd": (0.0, WD, False, False),
    "correlated": (0.6, 0.0, False, False),
    "correlated-1bit": (0.6, 0.0, True, False),  # Psyche's quantize_1bit: signs sent, averaged likewise
    "correlated-former": (0.6, 0.0, False, True),  # lr_scaled_delta=False, mean_over_senders=False
}


def lrs() -> list[float]:
    return [LR * lr_scale(t, STEPS, WARMUP, COOLDOWN) for t in range(STEPS)]


def grad(t: int, rank: int, i: int, mix: float) -> np.ndarray:
    common = np.random.default_rng([t, i, 99]).standard_normal(SHAPES[i])
    own = np.random.default_rng([t, i, rank]).standard_normal(SHAPES[i])
    return common + mix * own


def init_params() -> list[np.ndarray]:
    return [np.random.default_rng([7, i]).standard_normal(s) for i, s in enumerate(SHAPES)]


# ------------------------------------------------------------------ DeMo as published, float64
def chunk_side(n: int, target: int = 64) -> int:
    return max(d for d in range(1, min(n, target) + 1) if n % d == 0)


def to_coefficients(x: np.ndarray) -> np.ndarray:
    """(chunks, a*b): orthonormal 2-D DCT-II of every chunk, chunks in row-major order of the grid."""
    a, b = chunk_side(x.shape[0]), chunk_side(x.shape[1])
    return np.stack([scipy.fft.dctn(x[i:i + a, j:j + b], norm="ortho").reshape(-1)
                     for i in range(0, x.shape[0], a) for j in range(0, x.shape[1], b)])


def from_coefficients(c: np.ndarray, shape) -> np.ndarray:
    a, b = chunk_side(shape[0]), chunk_side(shape[1])
    x, n = np.zeros(shape), 0
    for i in range(0, shape[0], a):
        for j in range(0, shape[1], b):
            x[i:i + a, j:j + b] = scipy.fft.idctn(c[n].reshape(a, b), norm="ortho")
            n += 1
    return x


class PublishedDeMo:
    """Every rank of one parameter. `former=True`: the rules optim.DeMo had before issue 20 (delta += g;
    the sum over ranks / world size), for the test that shows the published ones are what it checks."""

    def __init__(self, p: np.ndarray, world: int, sign: bool = False, wd: float = 0.0, former: bool = False):
        self.p, self.world, self.sign, self.wd, self.former = p.copy(), world, sign, wd, former
        self.deltas = [np.zeros_like(p) for _ in range(world)]

    def step(self, grads: list[np.ndarray], lr: float) -> np.ndarray:
        self.p = self.p * (1.0 - lr * self.wd)
        total = sent = 0.0
        for r in range(self.world):
            d = BETA * self.deltas[r] + (grads[r] if self.former else lr * grads[r])
            c = to_coefficients(d)
            keep = np.zeros(c.shape, dtype=bool)
            np.put_along_axis(keep, np.argsort(-np.abs(c), axis=1)[:, :K], True, axis=1)
            self.deltas[r] = d - from_coefficients(np.where(keep, c, 0.0), d.shape)
            values = np.where(c >= 0, 1.0, -1.0) if self.sign else c.astype(np.float32).astype(np.float64)
            total = total + np.where(keep, values, 0.0)
            sent = sent + keep
        mean = total / self.world if self.former else total / np.maximum(sent, 1)
        self.direction = from_coefficients(mean, self.p.shape)
        self.p = self.p - lr * np.sign(self.direction)
        return self.p


def published_run(world: int, config: str, former: bool | None = None):
    """[(params, deltas of every rank, directions)] after each step."""
    mix, wd, sign, was = CONFIGS[config]
    refs = [PublishedDeMo(p, world, sign, wd, was if former is None else former) for p in init_params()]
    out = []
    for t, lr in enumerate(lrs()):
        for i, ref in enumerate(refs):
            ref.step([grad(t, r, i, mix) for r in range(world)], lr)
        out.append(([ref.p.copy() for ref in refs], [[d.copy() for d in ref.deltas] for ref in refs],
                    [ref.direction for ref in refs]))
    return out


# ------------------------------------------------------------------ optim.DeMo on real processes
def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    results = {}
    for name, (mix, wd, sign, former) in CONFIGS.items():
        params = [torch.nn.Parameter(torch.from_numpy(p)) for p in init_params()]
        opt = optim.DeMo(params, lr=LR, compression_decay=BETA, topk=K / 4096, chunk=64, sign=sign, weight_decay=wd,
                         lr_scaled_delta=not former, mean_over_senders=not former)
        hist = []
        for t, lr in enumerate(lrs()):
            for group in opt.param_groups:  # the trainer's schedule: lr = initial_lr * lr_scale
                group["lr"] = lr
            for i, p in enumerate(params):
                p.grad = torch.from_numpy(grad(t, rank, i, mix))
            opt.step()
            hist.append(([p.detach().numpy().copy() for p in params],
                         [opt.state[p]["delta"].numpy().copy() for p in params]))
        results[name] = hist
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=[1, 2, 4])
def runs(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"demo_world{world}")
    # forked, not spawned: the processes start with this one's imports (torch, scipy), not a minute of their own
    # on two busy cores; each sets one thread before any torch computation (no OpenMP pool crosses the fork)
    mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=True, start_method="fork")
    return world, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _check_step(name, t, ours_p, ours_deltas, ref):
    ref_p, ref_deltas, ref_dirs = ref
    for i in range(len(SHAPES)):
        # sign steps: a decoded entry this close to 0 could take either sign through float64 rounding
        # (none did in the runs here; the mask only states what the comparison cannot decide)
        tie = np.abs(ref_dirs[i]) < 1e-12 * np.abs(ref_dirs[i]).max()
        assert tie.sum() <= 2, (name, t, i, tie.sum())
        err = np.abs(ours_p[i] - ref_p[i])
        assert err[~tie].max() < 1e-12, (name, t, i, err.max())  # float64 arithmetic of O(1) values
        for r, d in enumerate(ours_deltas):
            scale = np.abs(ref_deltas[i][r]).max()
            np.testing.assert_allclose(d[i], ref_deltas[i][r], rtol=0, atol=1e-12 * scale,
                                       err_msg=f"{name} step {t} param {i} rank {r}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_demo_is_the_published_algorithm_step_for_step(runs, name):
    world, res = runs
    ref = published_run(world, name)
    for t in range(STEPS):
        for r in range(world):
            assert all(np.array_equal(a, b) for a, b in zip(res[0][name][t][0], res[r][name][t][0]))  # one model
        _check_step(name, t, res[0][name][t][0], [res[r][name][t][1] for r in range(world)], ref[t])


def test_the_check_tells_the_published_rules_from_the_former(runs):
    """The comparison above can fail: the former rules (delta += g; sum / world size) give other sign steps
    under the schedule (every world size) and with correlated gradients (2 ranks or more)."""
    world, res = runs
    published, former = published_run(world, "correlated"), published_run(world, "correlated", former=True)
    differ = [np.mean(np.sign(a) != np.sign(b)) for step_p, step_f in zip(published, former)
              for a, b in zip(step_p[2], step_f[2])]
    assert max(differ) > 0.05, differ  # issue 20 measured 18-40% under warmup and cooldown
    with pytest.raises(AssertionError):
        for t in range(STEPS):
            _check_step("correlated", t, res[0]["correlated"][t][0],
                        [res[r]["correlated"][t][1] for r in range(world)], former[t])
    if world > 1:  # at a constant lr, only the decode differs, and only where some rank did not send
        ref = PublishedDeMo(init_params()[0], world)
        old = PublishedDeMo(init_params()[0], world, former=True)
        grads = [grad(0, r, 0, 0.6) for r in range(world)]
        ref.step(grads, LR)
        old.step([g * LR for g in grads], LR)  # delta += g with g = lr * grads: the same deltas
        np.testing.assert_allclose(old.deltas[0], ref.deltas[0], atol=1e-15)
        assert np.mean(np.sign(ref.direction) != np.sign(old.direction)) > 0.001
