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
