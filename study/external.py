"""External trainers: a study's own training command in place of the built-in trainer (docs/external_trainer.md).

A study declares its commands under `trainers:` and names one per model or per arm (`trainer: NAME`; the
arm's choice wins, `builtin` is the built-in trainer). A run of an external trainer carries an `external`
section in its spec: the trainer's name, its command (an argv template), its settings and the sha256 of
every file it declares. That section is part of the run's fingerprint in place of the built-in trainer's
and optimizer's behaviour versions, so editing a declared file, the command or the settings re-runs
exactly that trainer's runs, and the built-in trainer's runs keep their fingerprints byte for byte (their
specs have no such section). Nothing here imports torch.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
import string
from pathlib import Path

from study.config_errors import NUMBER_LIKE

BUILTIN = "builtin"
# What a command's argv may hold in braces; the launcher fills them in (trainer/external.py).
PLACEHOLDERS = ("python", "spec", "out_dir", "checkpoint_dir", "seed", "run_id", "steps")


def trainer_name(config: dict, model: str, arm: str) -> str | None:
    """The external trainer of a (model, arm), or None for the built-in trainer. The arm's choice wins."""
    name = config["arms"].get(arm, {}).get("trainer") or config["models"].get(model, {}).get("trainer")
    return None if name in (None, BUILTIN) else name


def declared_files(root: str | Path, patterns: list[str]) -> list[str]:
    """The files a trainer declares (globs relative to the workflow's directory), sorted, as written there."""
    root = Path(root)
    out = set()
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(root / pattern)
        for f in glob.glob(full, recursive=True):
            if os.path.isfile(f):
                out.add(os.path.relpath(f, root) if not os.path.isabs(pattern) else f)
    return sorted(out)


def file_sha256(path: str | Path) -> str:
    st = os.stat(path)
    return _sha256(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=None)
def _sha256(path: str, _mtime_ns: int, _size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def external_section(config: dict, model: str, arm: str, root: str | Path) -> dict | None:
    """The run spec's `external` section (None for the built-in trainer): what the fingerprint covers."""
    name = trainer_name(config, model, arm)
    if name is None:
        return None
    t = config["trainers"][name]
    files = declared_files(root, t.get("files", []))
    return {"trainer": name, "command": list(t["command"]), "settings": dict(t.get("settings", {})),
            "files": {f: file_sha256(Path(root) / f) for f in files}}


def placeholders(argv: list[str]) -> list[str]:
    """The {names} a command template uses (ValueError for a malformed brace)."""
    names = []
    for arg in argv:
        for _, field, _, _ in string.Formatter().parse(arg):
            if field is not None:
                names.append(field)
    return names


def problems(config: dict, root: str | Path) -> list[str]:
    """One line per problem of the study's external-trainer settings (run after the schema)."""
    out = []
    trainers = config.get("trainers", {})
    for name, t in trainers.items():
        where = f"trainers.{name}"
        if name == BUILTIN:
            out.append(f"{where}: {BUILTIN!r} is the built-in trainer's name; name the command otherwise")
        try:
            used = placeholders(t["command"])
        except ValueError as e:
            out.append(f"{where}.command: {t['command']!r} is not a valid template ({e}; write a literal brace "
                       "as {{ or }})")
            used = []
        for field in used:
            if field not in PLACEHOLDERS:
                out.append(f"{where}.command: placeholder {{{field}}} is not allowed (allowed: "
                           f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
        for key, value in t.get("settings", {}).items():
            if isinstance(value, str) and NUMBER_LIKE.match(value):
                out.append(f"{where}.settings.{key}: {value!r} is a string, not a number; write it with a decimal "
                           "point (e.g. 1.0e-3): YAML 1.1 reads 1e-3 as text")
        for i, pattern in enumerate(t.get("files", [])):
            if not declared_files(root, [pattern]):
                out.append(f"{where}.files[{i}]: {pattern!r} matches no file (relative to {root})")
    for section in ("models", "arms"):
        for key, entry in config[section].items():
            name = entry.get("trainer")
            if name is not None and name != BUILTIN and name not in trainers:
                out.append(f"{section}.{key}.trainer: {name!r} is not a trainer of the study (known: "
                           f"{', '.join([BUILTIN] + sorted(set(trainers) - {BUILTIN}))})")
    for arm, a in config["arms"].items():
        if a.get("capture") and any(trainer_name(config, m, arm) for m in config["models"]
                                    if m in _models_running(config, arm)):
            out.append(f"arms.{arm}.capture: only the built-in trainer writes captures; arm {arm} runs on an "
                       "external trainer")
    return out


def _models_running(config: dict, arm: str) -> set[str]:
    models = set()
    for p in config["phases"].values():
        entries = [p["baseline"] if isinstance(p["baseline"], dict) else {"arm": p["baseline"]}] + list(p["runs"])
        if any(e["arm"] in (arm, "selected") for e in entries):
            models |= {p["model"]} | ({p["scratch"]["model"]} if "scratch" in p else set())
    return models


def uses_builtin_trainer(config: dict, model: str) -> bool:
    """Whether the built-in trainer runs some arm on this model (then its arch must be one of its presets)."""
    return any(trainer_name(config, model, arm) is None for arm in config["arms"]
               if model in _models_running(config, arm))
