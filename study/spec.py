"""One run's spec (the trainer's input, docs/DESIGN.md) and its fingerprint.

The fingerprint is what decides whether a finished run is stale. It covers everything that can change
the run's numbers (model, optimizer class and settings, alpha, seed, training, eval, data) and the
behaviour versions of the optimizer class and of the trainer; it leaves out what cannot (wandb,
checkpoint cadence, the GPU count, compile). The Snakefile hands it to Snakemake as the train rule's
only tracked param, as a plain string, so the params trigger compares a stable value.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB_CORPUS_DIR = "results/data/stdlib"
WANDB_DIR = "results/wandb"
# Sections of the spec that cannot change a run's results.
OPERATIONAL = ("checkpoint", "wandb", "runtime", "fingerprint")


def _clean(x: float) -> float:
    """Round derived floats so that 1e-2 * 0.1 is written 0.001, not 0.0010000000000000002."""
    return float(f"{x:.12g}")


def _load_constant(root: Path, relpath: str, name: str):
    # Read the constant from its file without importing the package (and torch with it).
    spec = importlib.util.spec_from_file_location(f"_versions_{name}", root / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def load_code_versions(code_root: str | Path = ROOT) -> dict:
    """The behaviour versions of the code under code_root (optim/versions.py, trainer/version.py)."""
    root = Path(code_root)
    return {"optimizer": _load_constant(root, "optim/versions.py", "ALGORITHM_VERSIONS"),
            "trainer": _load_constant(root, "trainer/version.py", "TRAINER_VERSION")}


def optimizer_settings(config: dict, arm: str, alpha: float) -> dict:
    from study.plan import NOISE_CLASSES  # local: plan imports this module

    a = config["arms"][arm]
    defaults = config["optimizer_defaults"]
    muon = {**defaults["muon"], **a.get("muon", {})}
    if a["class"] in NOISE_CLASSES:
        muon["alpha"] = float(alpha)
        ratio = muon.pop("alpha_end_ratio", None)
        if ratio is not None:
            muon["alpha_end"] = _clean(alpha * ratio)
    return {
        "class": a["class"],
        "muon": dict(sorted(muon.items())),
        "adamw": dict(sorted({**defaults["adamw"], **a.get("adamw", {})}.items())),
        "split": {"adamw_patterns": list(defaults.get("adamw_patterns", []))},
    }


def data_settings(config: dict) -> dict:
    d = config["data"]
    if d["kind"] == "stdlib":
        return {"kind": "stdlib", "path": STDLIB_CORPUS_DIR}
    return {"kind": "bin", "train": d["train"], "val": d["val"]}


def build_spec(config: dict, run, versions: dict | None = None) -> dict:
    m = config["models"][run.model]
    t = config["training_defaults"]
    steps = m["steps"]
    spec = {
        "run_id": run.key,
        "model": {"name": run.model, "arch": m["arch"]},
        "optimizer": {"arm": run.arm, **optimizer_settings(config, run.arm, run.alpha)},
        "alpha": float(run.alpha),
        "seed": int(run.seed),
        "training": {
            "steps": steps,
            "global_batch": m["global_batch"],
            "micro_batch": m["micro_batch"],
            "seq_len": m["seq_len"],
            "warmup_steps": t.get("warmup_steps", 0),
            "cooldown_frac": t.get("cooldown_frac", 0.0),
            "grad_clip": t.get("grad_clip", 0.0),
            "divergence_factor": t.get("divergence_factor", 3.0),
        },
        "eval": {
            "every": t.get("eval_every", 50),
            "batches": t.get("eval_batches", 20),
            "at_steps": sorted(s for s in t.get("eval_at_steps", []) if s <= steps),
            "target_losses": list(t.get("target_losses", [])),
        },
        "data": data_settings(config),
        "checkpoint": {"every": t.get("checkpoint_every", 100), "keep": t.get("keep_checkpoints", False)},
        "wandb": {
            "mode": config["wandb"]["mode"],
            "project": config["wandb"]["project"],
            "group": f"{config['study']['name']}/{run.model}",
            "tags": [run.model, run.arm, f"alpha{format(run.alpha, 'g')}", f"seed{run.seed}"],
            "dir": WANDB_DIR,
        },
        "runtime": {"device": "auto", "compile": "auto", "dtype": "auto"},
    }
    if "entity" in config["wandb"]:
        spec["wandb"]["entity"] = config["wandb"]["entity"]
    spec["fingerprint"] = fingerprint(spec, versions)
    return spec


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint(spec: dict, versions: dict | None = None) -> str:
    """16 hex digits over the result-affecting part of the spec and the code's behaviour versions."""
    versions = versions or load_code_versions()
    cls = spec["optimizer"]["class"]
    if cls not in versions["optimizer"]:
        raise KeyError(f"optim/versions.py has no ALGORITHM_VERSIONS entry for {cls}")
    affecting = {k: v for k, v in spec.items() if k not in OPERATIONAL}
    affecting["code_versions"] = {"optimizer": versions["optimizer"][cls], "trainer": versions["trainer"]}
    return hashlib.sha256(canonical_json(affecting).encode()).hexdigest()[:16]
