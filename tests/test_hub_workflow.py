"""The Hub stage through the workflow: a CPU twin phase that fine-tunes a tiny randomly initialized Granite-4.0-H,
fetched by its Hub id, on a parquet dataset fetched from the Hub and tokenized with the model's own tokenizer,
with the real huggingface_hub client against the local Hub stand-in (tests/hub_server.py). No network."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from study.load import deep_merge
from tests import hub_assets as A
from tests.hub_server import FakeHub
from tests.workflow_helpers import copy_workflow, job_counts, snakemake

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")


def granite_twin(wf) -> str:
    """The OrthoNoise twin cut to one phase of 2 runs on the tiny Granite (8 steps), its data and model from the Hub."""
    study = yaml.safe_load((wf / "config/studies/orthonoise.yaml").read_text())
    study = deep_merge(study, study.pop("tiny"))
    study["study"]["name"] = "granite-twin"
    study["data"] = {"kind": "hub", "name": "tiny-fineweb-edu", "repo": A.TEXT_REPO, "files": [A.TEXT_FILE],
                     "tokenizer": "model", "val_fraction": 0.1}
    study["models"] = {"granite-tiny": {"arch": f"hf:{A.MODEL_REPO}", "steps": 8, "global_batch": 4, "micro_batch": 4,
                                        "seq_len": 32, "resources": {"gpus": 1, "nodes": 1, "cpus_per_gpu": 1,
                                                                     "mem_mb_per_gpu": 2000, "runtime_min": 10}}}
    study["training_defaults"].update(eval_every=4, eval_batches=2, eval_at_steps=[4, 8], checkpoint_every=8,
                                      warmup_steps=2)
    study["optimizer_defaults"]["adamw_patterns"] = ["embed", "wte", "lm_head", "norm", "bias", "gain", "conv1d",
                                                     "A_log", "dt_bias", "mamba.D"]
    study["wandb"]["mode"] = "disabled"
    phase1 = study["phases"]["phase1"]
    phase1.update(model="granite-tiny", seeds=[42], runs=[{"arm": "orthonoise", "sweep": {"param": "muon.alpha",
                                                                                          "values": [1.0e-3]}}],
                  gates={"no_crashes": {"kind": "no_crashes"}})
    study["phases"] = {"phase1": phase1}
    path = wf / "granite-twin.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return f"study={path.name}"


def test_a_twin_fine_tunes_the_tiny_granite_from_the_hub_end_to_end(tmp_path, monkeypatch):
    wf = copy_workflow(tmp_path / "wf")
    target = granite_twin(wf)
    with FakeHub() as hub:
        commit = hub.add("model", A.MODEL_REPO, A.model_files(tmp_path))
        hub.add("dataset", A.TEXT_REPO, A.text_files())
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        # the phase's two runs (the analysis downstream is the same as for every twin, tested elsewhere)
        runs = [f"results/granite-twin/runs/granite-tiny/{a}/seed42/metrics.json"
                for a in ("muon/alpha0", "orthonoise/alpha0.001")]
        dry = snakemake(wf, *runs, "-n", "--config", target)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert hub.requests == []  # planning contacts nothing
        counts = job_counts(dry.stdout + dry.stderr)
        assert (counts.get("fetch_hub"), counts.get("prepare_text"), counts.get("pin_hub"), counts.get("train")) == \
            (2, 1, 1, 2), counts
        t0 = time.monotonic()
        r = snakemake(wf, *runs, "--cores", "2", "--config", target)
        wall = time.monotonic() - t0
        assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
        print(f"tiny Granite twin (fetch model + data, tokenize, 2 runs of 8 steps): {wall:.1f} s wall")
        n = len(hub.requests)
        # a second invocation: nothing to do, nothing fetched
        again = snakemake(wf, *runs, "-n", "--config", target)
        assert "Nothing to be done" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
        assert len(hub.requests) == n
        # fetching again at the same commits re-runs no training run (the pins file is ancient; fingerprints
        # decide once the checkpoint has run; the first plan lists the runs until then)
        before = [(wf / r).stat().st_mtime_ns for r in runs]
        forced = snakemake(wf, *runs, "--cores", "2", "--forcerun", "fetch_hub", "--config", target)
        assert forced.returncode == 0, (forced.stdout + forced.stderr)[-3000:]
        assert job_counts(forced.stdout + forced.stderr).get("fetch_hub") == 2
        assert [(wf / r).stat().st_mtime_ns for r in runs] == before
    import math

    runs = wf / "results/granite-twin/runs/granite-tiny"
    specs = [json.loads(p.read_text()) for p in sorted(runs.glob("*/*/seed42/spec.json"))]
    assert len(specs) == 2
    for spec in specs:
        assert spec["model"]["arch"] == f"hf:{A.MODEL_REPO}" and spec["model"]["revision"] == commit
        assert spec["data"]["kind"] == "bin" and spec["data"]["train"].startswith("results/data/tiny-fineweb-edu/")
        assert spec["wandb"]["dir"] == "results/granite-twin/wandb"
    metrics = [json.loads(p.read_text()) for p in sorted(runs.glob("*/*/seed42/metrics.json"))]
    assert len(metrics) == 2
    for m in metrics:
        assert m["status"] == "ok" and m["steps_completed"] == 8
        # it learned: below the loss of a uniform guess over the model's 320 ids (where a random init starts)
        assert m["final_val_loss"] < math.log(320)
        assert m["versions"]["hf_model_path"].endswith(f"/snapshots/{commit}")
    prepared = json.loads((wf / "results/data/tiny-fineweb-edu/manifest.json").read_text())
    assert prepared["tokenizer"]["vocab_size"] == 300  # the Granite repo's own tokenizer
