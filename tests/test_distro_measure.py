"""analysis/distro_measure.py and its Snakemake script on small capture files (CPU, seconds)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import distro_measure as M
from optim import dct as D

ROOT = Path(__file__).resolve().parents[1]


def _captures(tmp_path: Path) -> list[Path]:
    g = torch.Generator().manual_seed(0)
    paths = []
    for step in (1, 5):
        low = torch.randn(64, 2, generator=g) @ torch.randn(2, 128, generator=g)  # gradient-like: nearly rank 2
        d = {"grad/blocks.0.fc.weight": low + 0.01 * torch.randn(64, 128, generator=g),
             "momentum/blocks.0.fc.weight": torch.randn(64, 128, generator=g)}
        p = tmp_path / "captures" / f"step{step}.pt"
        p.parent.mkdir(exist_ok=True)
        torch.save(d, p)
        paths.append(p)
    return paths


def test_metrics_are_scale_free_and_exact_at_full_topk():
    x = torch.randn(64, 128, dtype=torch.float64)
    t, _ = M.measure([{"source": "grad", "tensor": "w", "step": 1, "x": x}], topk=(0.05, 1.0), cond_topk=(1.0,))
    t2, _ = M.measure([{"source": "grad", "tensor": "w", "step": 1, "x": 1000 * x}], topk=(0.05, 1.0), cond_topk=(1.0,))
    q = t[t.table == "quality"].reset_index(drop=True)
    q2 = t2[t2.table == "quality"].reset_index(drop=True)
    sel = q.metric.isin(["rel_err", "cosine", "sign_agree"])
    none, pre = sel & (q.orth == "none"), sel & (q.orth == "pre") & (q.target == "self")
    np.testing.assert_allclose(q[none].value, q2[none].value, rtol=1e-9, atol=1e-12)  # normalized: scale never enters
    np.testing.assert_allclose(q[pre].value, q2[pre].value, atol=1e-3)  # (the orthogonalizer runs in float32)
    full = q[(q.topk == 1.0) & (q.orth == "none")].set_index("metric").value
    assert full["rel_err"] < 1e-10 and full["cosine"] == pytest.approx(1.0) and full["sign_agree"] == 1.0
    e = t[(t.table == "energy") & (t.topk == 1.0)]
    np.testing.assert_allclose(e.value, 1.0)
    c = t[(t.table == "condition")].set_index("metric").value
    s = np.linalg.svd(x.numpy(), compute_uv=False)
    assert c["cond"] == pytest.approx(s[0] / s[-1]) and c["cond_recon"] == pytest.approx(s[0] / s[-1], rel=1e-6)


def test_gaussian_energy_matches_the_analytic_value():
    x = torch.randn(512, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for q in (0.01, 0.10, 0.25):
        assert D.topk_energy_fraction(x, 64, q) == pytest.approx(M.gaussian_topk_energy(q), abs=0.01)


def test_run_writes_tables_spectra_and_a_section_with_computed_findings(tmp_path):
    paths = _captures(tmp_path)
    t = M.run(paths, tmp_path / "t.csv", tmp_path / "s.csv", tmp_path / "m.md", topk=(0.05, 0.25), cond_topk=(0.05,),
              ranks=(1, 4))
    back = pd.read_csv(tmp_path / "t.csv")
    assert list(back.columns) == M.COLUMNS and len(back) == len(t)
    assert set(back.source) == {"grad", "momentum", "gaussian64", "gaussian", "lowrank1", "lowrank4"}
    assert set(back.step[back.source == "grad"]) == {1, 5}
    spec = pd.read_csv(tmp_path / "s.csv")
    assert spec.groupby(["source", "tensor", "step"]).size().max() == 64 and (spec.sigma_rel <= 1 + 1e-12).all()
    md = (tmp_path / "m.md").read_text()
    for needle in ("Experiment 1", "Experiment 2", "Experiments 3 and 4", "Singular-value spectrum", "53-96%",
                   "4,885,288", "24.9% / 25.0%", "Where real gradients differ"):
        assert needle in md, needle
    # the nearly rank-2 "gradient" is found closer to the low-rank matrices than to the Gaussian ones
    assert "real grad matrices have stable rank" in md and "closest to lowrank1" in md
    assert "real momentum matrices" in md


def test_snakemake_script(tmp_path):
    paths = _captures(tmp_path)
    out = SimpleNamespace(tables=str(tmp_path / "o" / "t.csv"), spectra=str(tmp_path / "o" / "s.csv"),
                          md=str(tmp_path / "o" / "m.md"))
    sm = SimpleNamespace(input=SimpleNamespace(captures=[str(p) for p in paths]), output=out,
                         params=SimpleNamespace(topk=[0.1], cond_topk=[0.1], max_per_file=1, what=["grad"]),
                         log=[str(tmp_path / "log.txt")])
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    try:
        runpy.run_path(str(ROOT / "workflow" / "scripts" / "distro_measure.py"), init_globals={"snakemake": sm})
    finally:
        sys.path.remove(str(ROOT / "workflow" / "scripts"))
    t = pd.read_csv(out.tables)
    assert set(t.source[t.source.isin(["grad", "momentum"])]) == {"grad"} and set(t.topk.dropna()) == {0.1}
    assert Path(out.md).read_text().startswith("## Seed 004")


# --------------------------------------------------------------------------- the batched stage
def _mixed_items() -> list[dict]:
    """Real-like matrices of several shapes (a width of 96 gets 48-wide chunks), square, wide and tall,
    with the synthetic ones (low-rank matrices are exactly rank-deficient)."""
    g = torch.Generator().manual_seed(11)
    shapes = [(64, 128), (64, 128), (96, 64), (128, 192), (64, 64)]
    items = []
    for i, (m, n) in enumerate(shapes):
        x = torch.randn(m, 3, generator=g, dtype=torch.float64) @ torch.randn(3, n, generator=g, dtype=torch.float64)
        items.append({"source": "grad", "tensor": f"w{i}", "step": 1, "x": x + 0.05 * torch.randn(m, n, generator=g,
                                                                                                     dtype=torch.float64)})
    return items + M.synthetic_like(shapes, seed=0, ranks=(1, 4))


def _assert_matches_reference(new: tuple, ref: tuple) -> None:
    """The tolerances, and why:
    - metrics of x itself (quality none/input, energy none, spectrum): both are float64 with the same
      operations, only stacked: rtol 1e-9 (float64 rounding is ~1e-15; the margin covers summation order).
    - metrics of orth(x) (pre rows): the orthogonalizer runs in float32, stacked (baddbmm) here and per
      matrix (addmm) there, so the inputs differ by float32 rounding (~1e-6), which can move a top-k pick at
      a near-tie: atol 1e-4; a sign agreement counts elements, and an element within float32 rounding of 0
      can flip its sign (seen on an H200: 1 of 8192): atol 1e-3 there.
    - condition numbers: singular values are backward stable to ~eps * sigma_max in both, so sigma_min is
      only meaningful above that floor; compared where the reference's sigma_min / sigma_max > 1e-10 (rtol
      1e-5 >= eps / 1e-10), sigma_min / sigma_max to atol 1e-12, dead fractions (threshold 1e-6) exactly.
    """
    (t, s), (tr, sr) = new, ref
    key = ["table", "source", "tensor", "step", "rows", "cols", "topk", "orth", "target", "metric"]
    pd.testing.assert_frame_equal(t[key], tr[key])  # the same rows in the same order
    v, vr = t["value"].to_numpy(), tr["value"].to_numpy()
    pre = (tr.orth == "pre").to_numpy()
    cond = tr.metric.isin(["cond", "cond_recon"]).to_numpy()
    x_rows = ~pre & ~cond
    np.testing.assert_allclose(v[x_rows & (tr.table != "condition").to_numpy()],
                               vr[x_rows & (tr.table != "condition").to_numpy()], rtol=1e-9, atol=1e-12)
    sign = (tr.metric == "sign_agree").to_numpy()
    np.testing.assert_allclose(v[pre & ~sign], vr[pre & ~sign], atol=1e-4)
    np.testing.assert_allclose(v[pre & sign], vr[pre & sign], atol=1e-3)
    smin = tr[tr.metric == "smin_rel_recon"]
    np.testing.assert_allclose(t.value[smin.index], smin.value, atol=1e-12)
    dead = tr.metric == "dead_frac_recon"
    np.testing.assert_array_equal(t.value[dead], tr.value[dead])
    # cond (orig) of a matrix, cond_recon of its decoding: meaningful where sigma_min is above the floor
    rel = tr[tr.metric == "smin_rel_recon"].set_index(["source", "tensor", "topk"]).value
    sp = tr[(tr.table == "spectrum") & (tr.metric == "smin_rel")].set_index(["source", "tensor"]).value
    for i in np.flatnonzero(cond):
        r = tr.iloc[i]
        floor = sp[(r.source, r.tensor)] if r.metric == "cond" else rel[(r.source, r.tensor, r.topk)]  # unique keys
        if floor > 1e-10:
            assert v[i] == pytest.approx(vr[i], rel=1e-5), r.to_dict()
    assert (tr.metric == "cond").sum() > 0 and (sp > 1e-10).sum() > 0 and (sp < 1e-10).sum() > 0  # both kinds ran
    pd.testing.assert_frame_equal(s.drop(columns="sigma_rel"), sr.drop(columns="sigma_rel"))
    np.testing.assert_allclose(s.sigma_rel, sr.sigma_rel, rtol=0, atol=1e-12)


@pytest.fixture
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference's LAPACK calls are far faster single-threaded on a busy CPU
    yield
    torch.set_num_threads(old)


def test_batched_cpu_measure_equals_the_float64_reference(one_thread):
    items = _mixed_items()
    ref = M.measure_reference(items, topk=(0.05, 0.25), cond_topk=(0.05, 0.25))
    new = M.measure(items, topk=(0.05, 0.25), cond_topk=(0.05, 0.25), device="cpu", workers=2,
                    max_batch_bytes=64 * 128 * 8)  # one 64 x 128 matrix per batch: batches of several shapes' sizes
    _assert_matches_reference(new, ref)
    assert torch.get_num_threads() == 1  # the SVD pool restored the thread count it changed


def test_svdvals_batched_matches_lapack_on_wide_tall_and_square():
    g = torch.Generator().manual_seed(5)
    for shape in ((3, 40, 70), (2, 70, 40), (2, 33, 33)):
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        want = np.linalg.svd(x.numpy(), compute_uv=False)
        np.testing.assert_allclose(M.svdvals_batched(x, workers=2).numpy(), want, rtol=0, atol=1e-12 * want.max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("driver", ["default", None, "gesvd", "gesvdj"])
def test_gpu_measure_equals_the_float64_reference(one_thread, driver):
    items = _mixed_items()
    ref = M.measure_reference(items, topk=(0.05, 0.25), cond_topk=(0.05, 0.25))
    _assert_matches_reference(M.measure(items, topk=(0.05, 0.25), cond_topk=(0.05, 0.25), device="cuda",
                                        svd_driver=driver), ref)


def test_a_bad_svd_driver_is_named():
    if not torch.cuda.is_available():
        pytest.skip("the driver applies on CUDA only")
    with pytest.raises(ValueError, match="svd driver='qr'.*allowed"):
        M.svdvals_batched(torch.randn(2, 4, 4, device="cuda"), driver="qr")


def test_two_runs_matrices_stay_apart(tmp_path):
    """Two seeds capture the same tensor at the same step: each is its own matrix in the tables."""
    paths = []
    for seed in (42, 123):
        d = {"grad/h.fc.weight": torch.randn(64, 128, generator=torch.Generator().manual_seed(seed))}
        p = tmp_path / "runs" / "m" / "muon" / "default" / f"seed{seed}" / "captures" / "step5.pt"
        p.parent.mkdir(parents=True)
        torch.save(d, p)
        paths.append(p)
    items = M.load_captures(paths)
    assert sorted(it["tensor"] for it in items) == ["seed123:h.fc.weight", "seed42:h.fc.weight"]
    assert M.load_captures(paths[:1])[0]["tensor"] == "h.fc.weight"  # one run: the name alone
