"""Shared helpers of the trainer tests (no tests here): a tiny spec and a real subprocess run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "workflow" / "scripts" / "train.py"
BUILD = ROOT / "workflow" / "scripts" / "build_corpus.py"
PY = sys.executable


def build_corpus(dest: Path) -> Path:
    """The stdlib corpus through the real entry point (cached per test session by the caller)."""
    r = subprocess.run([PY, str(BUILD), "--out-dir", str(dest)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dest


def tiny_spec(corpus: Path, **sections) -> dict:
    spec = {
        "run_id": "test/tiny/muon/seed1",
        "model": {"name": "tiny", "arch": "tiny"},
        "optimizer": {"arm": "muon", "class": "Muon", "muon": {"lr": 0.02, "momentum": 0.95, "rank_every": 5},
                      "adamw": {"lr": 0.003, "betas": [0.9, 0.95]}},
        "alpha": 0.0,
        "seed": 1,
        "training": {"steps": 30, "global_batch": 8, "micro_batch": 4, "seq_len": 32, "warmup_steps": 3,
                     "cooldown_frac": 0.2, "grad_clip": 0.0, "divergence_factor": 3.0},
        "eval": {"every": 10, "batches": 2, "at_steps": [5, 10, 20, 30], "target_losses": [4.5, 3.5]},
        "data": {"kind": "stdlib", "path": str(corpus)},
        "checkpoint": {"every": 0, "keep": False},
        "wandb": {"mode": "disabled"},
        "runtime": {"device": "auto", "compile": "auto", "dtype": "auto"},
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(spec.get(k), dict):
            spec[k] = {**spec[k], **copy.deepcopy(v)}
        else:
            spec[k] = copy.deepcopy(v)
    return spec


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                    "MASTER_", "TORCHELASTIC"))}
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    e.update({k: str(v) for k, v in extra.items()})
    return e


def write_spec(spec: dict, path: Path) -> Path:
    path.write_text(json.dumps(spec))
    return path


def train_cmd(spec_path: Path, out: Path, ck: Path, nproc: int | None = None) -> list[str]:
    args = [str(TRAIN), "--spec", str(spec_path), "--out-dir", str(out), "--checkpoint-dir", str(ck)]
    if nproc is None:
        return [PY, *args]
    return [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]


def run_train(spec: dict, tmp: Path, name: str, nproc: int | None = None, timeout: int = 180, **env_extra):
    tmp.mkdir(parents=True, exist_ok=True)
    sp = write_spec(spec, tmp / f"{name}.json")
    out, ck = tmp / name / "out", tmp / name / "ckpt"
    r = subprocess.run(train_cmd(sp, out, ck, nproc), capture_output=True, text=True, timeout=timeout,
                       env=env(**env_extra), cwd=tmp)
    return r, out, ck


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def history(out: Path, drop=("tokens_per_s",)) -> list[dict]:
    import csv

    with open(out / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


TIMING_KEYS = ("tokens_per_s", "wall_time_s", "gpu_hours", "gpu_share", "gpu_share_source")


def comparable(m: dict) -> dict:
    """metrics.json without what legitimately differs between two runs of the same spec."""
    return {k: v for k, v in m.items() if k not in TIMING_KEYS}
