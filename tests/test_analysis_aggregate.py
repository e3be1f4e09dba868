"""aggregate: crafted metrics.json / history.csv files -> runs.csv / curves.csv."""
import json
import math

import pandas as pd
import pytest

from analysis.aggregate import aggregate, read_curves, read_runs
from analysis.io import write_csv
from analysis.synth import write_run


def _study(tmp_path):
    recs = [
        write_run(tmp_path, model="tiny", arm="muon", alpha=0.0, seed=1, final_loss=3.0, role="baseline"),
        write_run(tmp_path, model="tiny", arm="muon", alpha=0.0, seed=2, final_loss=3.1, role="baseline"),
        write_run(tmp_path, model="tiny", arm="orthonoise", alpha=1e-3, seed=1, final_loss=2.9),
        write_run(tmp_path, model="tiny", arm="orthonoise", alpha=1e-3, seed=2, final_loss=2.95,
                  status="diverged", diverged_step=120),
    ]
    return recs


def _agg(recs, phase="phase1"):
    keys = ("phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "run_dir")
    meta = [{k: r[k] for k in keys} for r in recs]
    return aggregate([r["metrics"] for r in recs], [r["history"] for r in recs], meta, phase)


def test_runs_table_columns_and_values(tmp_path):
    runs, curves = _agg(_study(tmp_path))
    assert len(runs) == 4  # the diverged run is kept
    head = ["phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "status",
            "diverged_step"]
    assert list(runs.columns[:11]) == head
    assert set(runs["variant"]) == {"alpha0", "alpha0.001"}
    for c in ["final_val_loss", "best_val_loss", "val_loss_at_50", "val_loss_at_100", "val_loss_at_500",
              "steps_to_4", "steps_to_3.5", "eff_rank_mean", "noise_fraction_mean", "tokens_per_s",
              "wall_time_s", "gpu_hours", "world_size", "wandb_id", "fingerprint", "run_dir"]:
        assert c in runs.columns, c
    assert list(runs.columns[-17:]) == ["eff_rank_mean", "noise_fraction_mean", "bytes_sent_per_step",
                                        "allreduce_bytes_per_step", "weight_norm_dev_mean", "weight_norm_dev_max",
                                        "n_record_errors", "n_checkpoint_fallbacks", "tokens_per_s", "wall_time_s",
                                        "gpu_hours", "gpu_share", "gpu_hours_by_share", "world_size", "wandb_id",
                                        "fingerprint", "run_dir"]
    vl = [c for c in runs.columns if c.startswith("val_loss_at_")]
    assert vl == sorted(vl, key=lambda c: float(c[12:]))
    d = runs[runs["status"] == "diverged"].iloc[0]
    assert d["diverged_step"] == 120 and math.isnan(d["final_val_loss"])
    assert math.isnan(d["val_loss_at_500"]) and d["val_loss_at_100"] > 0
    ok = runs[(runs["arm"] == "orthonoise") & (runs["status"] == "ok")].iloc[0]
    assert ok["final_val_loss"] == pytest.approx(2.9)
    assert set(runs["role"]) == {"baseline", "arm"}
    assert (runs["phase"] == "phase1").all()


def test_curves_long_table(tmp_path):
    runs, curves = _agg(_study(tmp_path))
    for c in ["model", "arm", "variant", "param", "value", "alpha", "seed", "step", "val_loss", "train_loss",
              "eff_rank_mean"]:
        assert c in curves.columns
    assert curves.groupby(["arm", "seed"]).size().min() > 5
    div = curves[(curves["arm"] == "orthonoise") & (curves["seed"] == 2)]
    assert div["step"].max() <= 120 and div["val_loss"].isna().any()  # NaN as recorded


def test_roundtrip_csv(tmp_path):
    runs, curves = _agg(_study(tmp_path))
    write_csv(runs, tmp_path / "runs.csv")
    write_csv(curves, tmp_path / "curves.csv")
    back = read_runs(tmp_path / "runs.csv")
    assert list(back.columns) == list(runs.columns)
    pd.testing.assert_series_equal(back["final_val_loss"], runs["final_val_loss"], check_dtype=False)
    assert back["wandb_id"].str.len().min() > 0
    c2 = read_curves(tmp_path / "curves.csv")
    assert len(c2) == len(curves)


def test_null_and_nan_metrics_and_missing_keys(tmp_path):
    recs = _study(tmp_path)
    m = json.loads(open(recs[2]["metrics"]).read())
    m["final_val_loss"] = float("nan")
    m["diagnostics"] = None
    del m["val_loss_at"]
    with open(recs[2]["metrics"], "w") as fh:
        json.dump(m, fh)  # writes NaN
    runs, _ = _agg(recs)
    r = runs.iloc[2]
    assert math.isnan(r["final_val_loss"]) and math.isnan(r["eff_rank_mean"])


def test_errors_name_the_problem(tmp_path):
    recs = _study(tmp_path)
    keys = ("phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "run_dir")
    meta = [{k: r[k] for k in keys} for r in recs]
    with pytest.raises(ValueError, match="parallel"):
        aggregate([r["metrics"] for r in recs], [r["history"] for r in recs[:3]], meta, "p")
    with pytest.raises(FileNotFoundError, match="nope"):
        aggregate([str(tmp_path / "nope.json")], [recs[0]["history"]], meta[:1], "p")
    bad = dict(meta[0], role="boss")
    with pytest.raises(ValueError, match="role"):
        aggregate([recs[0]["metrics"]], [recs[0]["history"]], [bad], "p")
    with pytest.raises(ValueError, match="twice"):
        aggregate([recs[0]["metrics"]] * 2, [recs[0]["history"]] * 2, [meta[0]] * 2, "p")


def test_empty_phase():
    runs, curves = aggregate([], [], [], "phase1")
    assert len(runs) == 0 and "final_val_loss" in runs.columns and len(curves) == 0


def test_variant_is_the_key_and_defaults_from_alpha(tmp_path):
    """Two runs of one arm and seed that differ only in variant are two runs; a record without a variant
    gets alpha<alpha>, or 'default' without an alpha."""
    a = write_run(tmp_path, model="tiny", arm="muon", alpha=None, seed=1, final_loss=3.0, variant="lr0.003")
    b = write_run(tmp_path, model="tiny", arm="muon", alpha=None, seed=1, final_loss=3.1, variant="lr0.01")
    meta = [dict(phase="p", role="arm", model="tiny", arm="muon", variant=v, param="muon.lr", value=lr,
                 alpha=0.0, seed=1, run_dir=r["run_dir"]) for r, v, lr in ((a, "lr0.003", 3e-3), (b, "lr0.01", 1e-2))]
    runs, _ = aggregate([a["metrics"], b["metrics"]], [a["history"], b["history"]], meta, "p")
    assert list(runs["variant"]) == ["lr0.003", "lr0.01"] and list(runs["param"]) == ["muon.lr"] * 2
    with pytest.raises(ValueError, match="twice"):
        aggregate([a["metrics"]] * 2, [a["history"]] * 2, [meta[0], meta[0]], "p")
    old = [dict(phase="p", role="arm", model="tiny", arm="x", alpha=1e-3, seed=1, run_dir=""),
           dict(phase="p", role="arm", model="tiny", arm="y", seed=1, run_dir="")]
    runs, _ = aggregate([a["metrics"]] * 2, [a["history"]] * 2, old, "p")
    assert list(runs["variant"]) == ["alpha0.001", "default"]


def _edit_metrics(path, **kw):
    with open(path) as fh:
        m = json.load(fh)
    m.update(kw)
    with open(path, "w") as fh:
        json.dump(m, fh)


def _add_history_cols(path, cols):
    """Append columns (name -> function of the row index, None = empty cell) to a history.csv."""
    lines = open(path).read().splitlines()
    out = [lines[0] + "," + ",".join(cols)]
    for i, line in enumerate(lines[1:]):
        cells = [cols[c](i) for c in cols]
        out.append(line + "," + ",".join("" if v is None else repr(v) for v in cells))
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


def test_comm_ngpt_and_event_columns(tmp_path):
    """bytes (compressed / distributed runs), weight-norm drift (nGPT runs) and the event counts come from
    metrics.json when recorded and are NaN (counts: 0) when not; curves carry the history columns."""
    recs = _study(tmp_path)
    diag = json.load(open(recs[2]["metrics"]))["diagnostics"]
    _edit_metrics(recs[2]["metrics"],
                  diagnostics=dict(diag, bytes_sent_per_step=162000.5, allreduce_bytes_per_step=526000.0),
                  record_errors=[{"record": "wandb", "error": "x"}, {"record": "wandb", "error": "y"}],
                  checkpoint_fallbacks=[{"step": 100, "reason": "rank file missing"}])
    _edit_metrics(recs[1]["metrics"], diagnostics=dict(diag, weight_norm_dev_mean=0.01, weight_norm_dev_max=0.05),
                  record_errors=[], checkpoint_fallbacks=None)
    _add_history_cols(recs[2]["history"], {"bytes_sent_per_step": lambda i: 162000 + i,
                                            "allreduce_bytes_per_step": lambda i: 526000})
    _add_history_cols(recs[1]["history"], {"weight_norm_dev": lambda i: None if i == 0 else 0.001 * i})
    runs, curves = _agg(recs)
    comp, ngpt, plain = runs.iloc[2], runs.iloc[1], runs.iloc[0]
    assert comp["bytes_sent_per_step"] == 162000.5 and comp["allreduce_bytes_per_step"] == 526000.0
    assert comp["n_record_errors"] == 2 and comp["n_checkpoint_fallbacks"] == 1
    assert math.isnan(comp["weight_norm_dev_mean"]) and math.isnan(comp["weight_norm_dev_max"])
    assert ngpt["weight_norm_dev_mean"] == 0.01 and ngpt["weight_norm_dev_max"] == 0.05
    assert math.isnan(ngpt["bytes_sent_per_step"]) and ngpt["n_record_errors"] == 0
    assert ngpt["n_checkpoint_fallbacks"] == 0
    for c in ("bytes_sent_per_step", "allreduce_bytes_per_step", "weight_norm_dev_mean", "weight_norm_dev_max"):
        assert math.isnan(plain[c]), c
    assert plain["n_record_errors"] == 0 and plain["n_checkpoint_fallbacks"] == 0

    assert {"bytes_sent_per_step", "weight_norm_dev"} <= set(curves.columns)
    c2 = curves[(curves["arm"] == "orthonoise") & (curves["seed"] == 1)]
    assert list(c2["bytes_sent_per_step"]) == [162000.0 + i for i in range(len(c2))]
    assert c2["weight_norm_dev"].isna().all()
    c1 = curves[(curves["arm"] == "muon") & (curves["seed"] == 2)]
    assert math.isnan(c1["weight_norm_dev"].iloc[0]) and c1["weight_norm_dev"].iloc[3] == pytest.approx(0.003)
    assert c1["bytes_sent_per_step"].isna().all()
    assert curves[(curves["arm"] == "muon") & (curves["seed"] == 1)][["bytes_sent_per_step",
                                                                     "weight_norm_dev"]].isna().all().all()

    write_csv(runs, tmp_path / "runs.csv")
    write_csv(curves, tmp_path / "curves.csv")
    back, cb = read_runs(tmp_path / "runs.csv"), read_curves(tmp_path / "curves.csv")
    assert back.iloc[2]["bytes_sent_per_step"] == 162000.5 and back.iloc[2]["n_record_errors"] == 2
    assert math.isnan(back.iloc[0]["weight_norm_dev_mean"])
    assert list(cb.columns) == list(curves.columns)


@pytest.mark.parametrize("content", [b"", b'{"status": "ok", "final_val', b"\xff\xfe"], ids=["empty", "cut", "binary"])
def test_a_damaged_metrics_file_is_one_line_naming_it(tmp_path, content):
    """Issue 28.5: a 0-byte metrics.json failed the aggregate with a traceback that named no file."""
    from analysis.aggregate import load_metrics

    p = tmp_path / "run" / "metrics.json"
    p.parent.mkdir()
    p.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_metrics(p)
    assert str(p) in str(err.value) and "rerun to train the run again" in str(err.value)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
