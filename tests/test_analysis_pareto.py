"""pareto: a synthetic DisTrO top-k runs.csv -> the front, the table, the PNG (and the Snakemake script)."""
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import read_runs
from analysis.io import write_csv
from analysis.pareto import make_pareto, pareto_front, summarize, topk_label

ROOT = Path(__file__).resolve().parents[1]
DENSE, ALLREDUCE = 132_000.0, 526_000.0  # the tiny twin's bytes (docs/distro.md)


def _bytes(topk):
    return DENSE + 394_000.0 * topk * 1.5  # compressed matrices: 6 bytes per kept coefficient vs 4 dense


def _runs(seeds=(1, 2, 3)):
    """muon-ddp / adamw-ddp references; demo and demo-muon-post over four top-k; demo-muon-post at 1%
    dominated by demo at 1%; demo at 25% with one diverged seed; demo-muon-pre at 1% diverged on every seed."""
    loss = {("muon-ddp", "default"): 2.04, ("adamw-ddp", "default"): 2.10,
            ("demo", "topk0.01"): 2.30, ("demo", "topk0.05"): 2.21, ("demo", "topk0.1"): 2.22,
            ("demo", "topk0.25"): 2.12,
            ("demo-muon-post", "topk0.01"): 2.35, ("demo-muon-post", "topk0.05"): 2.16,
            ("demo-muon-post", "topk0.1"): 2.12, ("demo-muon-post", "topk0.25"): 2.11,
            ("demo-muon-pre", "topk0.01"): 2.5}
    rows = []
    for (arm, variant), y in loss.items():
        for i, seed in enumerate(seeds):
            topk = float(variant[4:]) if variant.startswith("topk") else None
            status = "ok"
            if (arm, variant) == ("demo", "topk0.25") and seed == seeds[-1]:
                status = "diverged"
            if arm == "demo-muon-pre":
                status = "diverged"
            sent = _bytes(topk) if topk else ALLREDUCE
            rows.append(dict(phase="topk", role="baseline" if arm == "muon-ddp" else "arm", model="gpt124m",
                             arm=arm, variant=variant, param="muon.topk" if topk else "", value=topk or math.nan,
                             alpha=math.nan, seed=seed, status=status,
                             final_val_loss=(y + 0.01 * (i - 1)) if status == "ok" else math.nan,
                             bytes_sent_per_step=sent + i, allreduce_bytes_per_step=ALLREDUCE))
    return pd.DataFrame(rows)


def test_front_is_right():
    s = summarize(_runs(), "muon-ddp").set_index(["arm", "variant"])
    front = set(s.index[s["on_front"]])
    # demo 1% (2.30) beats demo-muon-post 1% (2.35) at the same bytes; demo-muon-post 5% (2.16) beats demo 5%
    # (2.21) and demo 10% (2.22); demo-muon-post 10% (2.12) then 25% (2.11); adamw-ddp (2.10) is beaten by
    # muon-ddp (2.04) at the same bytes; demo 25% (mean of its ok seeds 2.115) has a diverged seed.
    assert front == {("demo", "topk0.01"), ("demo-muon-post", "topk0.05"), ("demo-muon-post", "topk0.1"),
                     ("demo-muon-post", "topk0.25"), ("muon-ddp", "default")}
    assert not s.loc[("demo-muon-post", "topk0.01"), "on_front"]  # dominated
    assert s.loc[("demo", "topk0.25"), "failed"] and s.loc[("demo", "topk0.25"), "n_ok"] == 2
    assert s.loc[("demo", "topk0.25"), "mean_loss"] == pytest.approx(2.115)
    assert s.loc[("demo-muon-pre", "topk0.01"), "n_ok"] == 0 and math.isnan(s.loc[("demo-muon-pre", "topk0.01"),
                                                                                 "mean_loss"])
    assert s.loc[("muon-ddp", "default"), "reference"] and s.loc[("adamw-ddp", "default"), "reference"]
    assert not s.loc[("demo", "topk0.05"), "reference"]
    assert s.loc[("demo", "topk0.05"), "ratio"] == pytest.approx((_bytes(0.05) + 1) / ALLREDUCE)
    assert s.loc[("demo", "topk0.05"), "min_loss"] == pytest.approx(2.20)
    assert s.loc[("demo", "topk0.05"), "max_loss"] == pytest.approx(2.22)


def test_front_definition_edge_cases():
    s = pd.DataFrame({"model": ["m"] * 5, "bytes": [1.0, 1.0, 2.0, 3.0, np.nan], "failed": [False] * 4 + [False],
                      "mean_loss": [2.0, 2.0, 2.0, 1.0, 0.5]})
    # two equal points are both on it; same loss at more bytes is dominated; no bytes: not placeable
    assert list(pareto_front(s)) == [True, True, False, True, False]
    s2 = s.assign(failed=[False, False, False, True, False])
    assert list(pareto_front(s2)) == [True, True, False, False, False]
    assert topk_label("topk0.05") == "top-k 5%" and topk_label("topk0.0078125") == "top-k 0.781%"
    assert topk_label("default") == "default"


def test_png_and_table_written(tmp_path):
    png, md = tmp_path / "p" / "pareto.png", tmp_path / "p" / "pareto.md"
    make_pareto(_runs(), str(png), str(md), "muon-ddp", phase="topk")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    text = md.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0] == ("| arm | variant | n | failures | mean final loss | bytes/step/rank | ratio to all-reduce "
                        "| on the front |")
    row = {ln.split(" | ")[0][2:] + "/" + ln.split(" | ")[1]: ln for ln in lines[2:]}
    assert row["demo-muon-post/topk0.01"].endswith("| no |")
    assert row["demo/topk0.25"].endswith("| no (failed) |") and "1 diverged" in row["demo/topk0.25"]
    assert "| 2/3 |" in row["demo/topk0.25"]
    assert row["muon-ddp (baseline)/default"].endswith("| 1.000 | yes |")
    assert "| 161.6 kB |" in row["demo/topk0.05"]  # 132000 + 29550 + mean(0, 1, 2)
    # deterministic bytes
    png2 = tmp_path / "p2.png"
    make_pareto(_runs(), str(png2), None, "muon-ddp", phase="topk")
    assert png2.read_bytes() == png.read_bytes()


def test_no_bytes_and_no_runs(tmp_path):
    r = _runs().drop(columns=["bytes_sent_per_step", "allreduce_bytes_per_step"])
    s = make_pareto(r, str(tmp_path / "a.png"), str(tmp_path / "a.md"), "muon-ddp", phase="topk")
    assert not s["on_front"].any() and (tmp_path / "a.png").stat().st_size > 0
    assert "not recorded" in (tmp_path / "a.md").read_text()
    make_pareto(_runs().iloc[:0], str(tmp_path / "b.png"), str(tmp_path / "b.md"), "muon-ddp")
    assert (tmp_path / "b.png").stat().st_size > 0


def test_snakemake_script(tmp_path):
    write_csv(_runs(), tmp_path / "runs.csv")
    assert read_runs(tmp_path / "runs.csv")["bytes_sent_per_step"].notna().all()
    out = SimpleNamespace(png=str(tmp_path / "o" / "pareto.png"), md=str(tmp_path / "o" / "pareto.md"))
    sm = SimpleNamespace(input=SimpleNamespace(runs=str(tmp_path / "runs.csv")), output=out,
                         params=SimpleNamespace(phase="topk", baseline="muon-ddp", title="DisTrO top-k sweep"),
                         log=[str(tmp_path / "log.txt")])
    sys.path.insert(0, str(ROOT / "workflow" / "scripts"))
    try:
        runpy.run_path(str(ROOT / "workflow" / "scripts" / "pareto.py"), init_globals={"snakemake": sm})
    finally:
        sys.path.remove(str(ROOT / "workflow" / "scripts"))
    assert Path(out.png).is_file() and Path(out.md).read_text().startswith("### DisTrO top-k sweep")
