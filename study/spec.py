"""One run's spec (the trainer's input, docs/DESIGN.md) and its fingerprint.

The fingerprint is what decides whether a finished run is stale. It covers everything that can change
the run's numbers (model, optimizer class and settings, alpha, seed, training, eval, data) and the
behaviour versions of the optimizer class and of the trainer; it leaves out what cannot (wandb,
checkpoint cadence, the GPU count, compile). The Snakefile hands it to Snakemake as the train rule's
only tracked param, as a plain string, so the params trigger compares a stable value.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STDLIB_CORPUS_DIR = "results/data/stdlib"
WANDB_DIR = "results/wandb"
# Sections of the spec that cannot change a run's results.
OPERATIONAL = ("checkpoint", "wandb", "runtime", "fingerprint")


def _clean(x: float) -> float:
    """Round derived floats so that 1e-2 * 0.1 is written 0.001, not 0.0010000000000000002."""
    return float(f"{x:.12g}")


def load_file_module(root: str | Path, relpath: str):
    """A module read from its file without importing its package (optim/ and analysis/ import torch and
    pandas; their declaration files import nothing). Cached until the file changes."""
    path = Path(root) / relpath
    return _load_file(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _load_file(path: str, _mtime_ns: int):
    name = f"_study_{abs(hash((path, _mtime_ns)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


OPTIMIZER_REGISTRY = "optim/registry.py"  # the optimizer declarations, read without importing optim/ (torch)


def optimizer_registry(code_root: str | Path = ROOT):
    """optim/registry.py of the code under code_root, loaded from its file."""
    return load_file_module(Path(code_root), OPTIMIZER_REGISTRY)


def load_code_versions(code_root: str | Path = ROOT) -> dict:
    """The behaviour versions of the code under code_root (optim/registry.py, trainer/version.py)."""
    registry = optimizer_registry(code_root)
    return {"optimizer": registry.ALGORITHM_VERSIONS, "features": registry.FEATURE_VERSIONS,
            "trainer": load_file_module(Path(code_root), "trainer/version.py").TRAINER_VERSION}


def _set_path(settings: dict, param: str, value) -> None:
    section, key = param.split(".", 1)
    settings.setdefault(section, {})[key] = value


def arm_settings(config: dict, arm: str, swept: tuple = (), class_args: dict | None = None) -> dict:
    """An arm's resolved settings by section (muon, adamw, training, model) with the run's swept value.

    optimizer_defaults.muon gives every Muon-family class the keys it takes (`class_args`: the class's
    keyword arguments, optim/registry.py); the arm's own settings override them; the swept value
    overrides both (`swept`: the run's (param, value) pairs). `alpha_end_ratio` is the study's way to
    write alpha_end = alpha x ratio.
    """
    a = config["arms"][arm]
    defaults = config["optimizer_defaults"]
    muon = {k: v for k, v in defaults["muon"].items() if class_args is None or k in class_args}
    out = {"muon": {**muon, **a.get("muon", {})}, "adamw": {**defaults["adamw"], **a.get("adamw", {})},
           "training": dict(a.get("training", {})), "model": dict(a.get("model", {}))}
    for param, value in swept:
        _set_path(out, param, value)
    ratio = out["muon"].pop("alpha_end_ratio", None)
    if ratio is not None and "alpha" in out["muon"]:
        out["muon"]["alpha_end"] = _clean(out["muon"]["alpha"] * ratio)
    if class_args == {}:  # a class that takes no optimizer.muon settings (AdamW: its settings are optimizer.adamw)
        out["muon"] = {}
    return out


def data_settings(config: dict, text_data: dict | None = None) -> dict:
    """The run spec's data section; for kind text, the prepared shards' section (with their checksum)."""
    d = config["data"]
    if d["kind"] == "stdlib":
        return {"kind": "stdlib", "path": STDLIB_CORPUS_DIR}
    if d["kind"] in ("text", "hub"):
        if text_data is None:
            raise ValueError(f"data.kind {d['kind']}: the prepared or fetched shards' data section is needed (the data "
                             "stage runs first)")
        return dict(text_data)
    return {"kind": "bin", "train": d["train"], "val": d["val"]}


def text_data_dir(config: dict) -> str:
    """Where the data stage writes a study's text corpus: data.name, else a hash of what makes it."""
    d = config["data"]
    name = d.get("name") or "text-" + hashlib.sha256(canonical_json(
        {k: v for k, v in d.items() if k != "name"}).encode()).hexdigest()[:10]
    return f"results/data/{name}"


def model_vocab(config: dict, model: str, tokenizer_vocab: int | None) -> int | None:
    """A preset's vocabulary: the model's own setting, else (text data) the tokenizer's, rounded up to 64."""
    m = config["models"][model]
    if "vocab_size" in m:
        return m["vocab_size"]
    if tokenizer_vocab is not None and not m["arch"].startswith("hf:"):
        return -(-tokenizer_vocab // 64) * 64
    return None


def run_settings(config: dict, run, root: str | Path = ROOT) -> tuple[dict, dict]:
    """(the arm's resolved settings by section, the spec's optimizer section) of a run; no data needed."""
    cls = config["arms"][run.arm]["class"]
    class_args = optimizer_registry(root).OPTIMIZER_ARGUMENTS.get(cls)
    settings = arm_settings(config, run.arm, run.settings, class_args)
    optimizer = {"arm": run.arm, "class": cls, "muon": dict(sorted(settings["muon"].items())),
                 "adamw": dict(sorted(settings["adamw"].items())),
                 "split": {"adamw_patterns": list(config["optimizer_defaults"]["adamw_patterns"])}}
    return settings, optimizer


def build_spec(config: dict, run, versions: dict | None = None, root: str | Path = ROOT,
               text_data: dict | None = None, tokenizer_vocab: int | None = None,
               model_revision: str | None = None, results: str | None = None, twin: bool = False) -> dict:
    m = config["models"][run.model]
    t = config["training_defaults"]
    settings, optimizer = run_settings(config, run, root)
    steps = m["steps"]
    model = {"name": run.model, "arch": m["arch"]}
    if model_revision is not None:  # a Hub model: the commit fetched (its weights) is part of what the run is
        model["revision"] = model_revision
    vocab = model_vocab(config, run.model, tokenizer_vocab)
    if vocab is not None:
        model["vocab_size"] = vocab
    options = {**m.get("options", {}), **settings["model"]}
    if options:
        model["options"] = dict(sorted(options.items()))
    spec = {
        "run_id": run.key,
        "model": model,
        "optimizer": optimizer,
        "alpha": float(optimizer["muon"].get("alpha", 0.0)),
        "seed": int(run.seed),
        "training": {
            "steps": steps,
            "global_batch": m["global_batch"],
            "micro_batch": m["micro_batch"],
            "seq_len": m["seq_len"],
            "warmup_steps": t["warmup_steps"],
            "cooldown_frac": t["cooldown_frac"],
            "grad_clip": t["grad_clip"],
            "divergence_factor": t["divergence_factor"],
            **settings["training"],
        },
        "eval": {
            "every": t["eval_every"],
            "batches": t["eval_batches"],
            "at_steps": sorted(eval_at_steps(config, run.model)),
            "target_losses": list(t["target_losses"]),
        },
        "data": data_settings(config, text_data),
        "checkpoint": {"every": t["checkpoint_every"], "keep": t["keep_checkpoints"]},
        # Operational (no fingerprint). One folder per study and twin (results/STUDY[-tiny]/wandb), so
        # `wandb sync results/STUDY/wandb/wandb/offline-run-*` uploads one study's runs and never a twin's; a
        # twin's runs are also grouped STUDY-tiny/MODEL and tagged "twin".
        "wandb": {
            "mode": config["wandb"]["mode"],
            "project": config["wandb"]["project"],
            "group": f"{config['study']['name']}{'-tiny' if twin else ''}/{run.model}",
            "tags": [run.model, run.arm, run.variant, f"seed{run.seed}"] + (["twin"] if twin else []),
            "dir": f"{results}/wandb" if results else WANDB_DIR,
        },
        "runtime": {"device": "auto", "compile": "auto", "dtype": "auto", "deterministic": True},
    }
    if "entity" in config["wandb"]:
        spec["wandb"]["entity"] = config["wandb"]["entity"]
    capture = config["arms"][run.arm].get("capture")
    if capture:  # the arm's runs write gradients and momenta at these steps (a measurement's input)
        spec["capture"] = {"steps": sorted(capture["steps"]), "what": list(capture.get("what", ["grad", "momentum"]))}
    from study.external import external_section

    external = external_section(config, run.model, run.arm, root)
    if external:  # a study's own training command (study/external.py); built-in runs' specs have no such key
        spec["external"] = external
    spec["fingerprint"] = fingerprint(spec, versions)
    return spec


def eval_at_steps(config: dict, model: str) -> list[int]:
    """The model's evaluated steps (its own list, else the study's training_defaults)."""
    m = config["models"][model]
    return list(m.get("eval_at_steps", config["training_defaults"]["eval_at_steps"]))


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def features_used(muon_settings: dict, features: dict) -> dict:
    """{feature: version} of the versioned features (optim/registry.py FEATURE_VERSIONS) a run uses."""
    return {name: version for name, (version, when) in sorted(features.items())
            if all(muon_settings.get(k) == v for k, v in when.items())}


def fingerprint(spec: dict, versions: dict | None = None) -> str:
    """16 hex digits over the result-affecting part of the spec and the code's behaviour versions."""
    affecting = {k: v for k, v in spec.items() if k not in OPERATIONAL}
    if "external" in spec:
        # An external trainer's code is its command, settings and declared files' content (all in the
        # section): the built-in trainer's and optimizers' versions do not apply to it.
        affecting["code_versions"] = {"external": 1}
        return hashlib.sha256(canonical_json(affecting).encode()).hexdigest()[:16]
    versions = versions or load_code_versions()
    cls = spec["optimizer"]["class"]
    if cls not in versions["optimizer"]:
        raise KeyError(f"optim/registry.py has no OPTIMIZERS entry for {cls}")
    affecting["code_versions"] = {"optimizer": versions["optimizer"][cls], "trainer": versions["trainer"]}
    used = features_used(spec["optimizer"].get("muon", {}), versions.get("features", {}))
    if used:  # only runs that use a versioned feature carry it: the others keep their fingerprints
        affecting["code_versions"]["features"] = used
    return hashlib.sha256(canonical_json(affecting).encode()).hexdigest()[:16]
