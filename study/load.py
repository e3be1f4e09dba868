"""Reading a study: which file, strict YAML, the CPU twin's overlay, the user's overrides.

`snakemake --config study=NAME tiny=true TARGET` selects `config/studies/NAME.yaml` (or a path to a
YAML file) and, with tiny=true, merges the file's `tiny:` section over it. Every other top-level key of
Snakemake's config (from `--configfile` or `--config`) is merged over the result last, so a user can
change one setting without copying the study. Every way a YAML file can be unreadable ends here, in one
line that names the file.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import yaml

STUDIES_DIR = "config/studies"
SELECTION_KEYS = ("study", "tiny")  # Snakemake config keys that choose a study, not change it


class StudyFileError(ValueError):
    """A study file that cannot be read as a study (one line, naming the file)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one without a word)."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


MAX_VALUES = 1_000_000  # a study is some hundred values; far more only comes of aliases nested in aliases


def expanded_size(node) -> int:
    """How many values the YAML node graph holds once every alias is expanded (computed per node once, so a
    graph that expands to 10**10 values is measured in microseconds, not walked)."""
    huge = 10 * MAX_VALUES  # also the size of a cycle (an alias inside its own anchor): endless
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()  # nodes whose children are being sized
    stack = [(node, False)] if node is not None else []
    while stack:
        n, children_done = stack.pop()
        if id(n) in sizes:
            continue
        kids = [x for pair in n.value for x in pair] if isinstance(n, yaml.MappingNode) else \
            list(n.value) if isinstance(n, yaml.SequenceNode) else []
        if children_done or not kids:
            open_ids.discard(id(n))
            sizes[id(n)] = min(1 + sum(sizes.get(id(k), huge) for k in kids), huge)
        elif id(n) not in open_ids:
            open_ids.add(id(n))
            stack.append((n, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes and id(k) not in open_ids)
    return sizes.get(id(node), 0) if node is not None else 0


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`, or StudyFileError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudyFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise StudyFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        loader = _StrictLoader(text)
        try:
            node = loader.get_single_node()
            size = expanded_size(node)
            if size > MAX_VALUES:
                at_least = "at least " if size >= 10 * MAX_VALUES else ""
                raise StudyFileError(f"{path}: its aliases (*name) expand to {at_least}{size:,} values, more than "
                                     f"the {MAX_VALUES:,} a study may hold (an alias bomb?); write the values out")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hint = " (YAML forbids tabs for indentation: use spaces)" if "\t" in text and "tab" in str(e).lower() \
            or "found character '\\t'" in str(e) else ""
        raise StudyFileError(f"{path}:{where}: {e.problem or e.context}{hint}") from None
    except yaml.YAMLError as e:
        raise StudyFileError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        raise StudyFileError(f"{path}: the file is empty (or only comments); a study is a YAML mapping "
                             "with study, models, arms and phases")
    if not isinstance(data, dict):
        raise StudyFileError(f"{path}: the top level is a {type(data).__name__}, not a mapping of keys "
                             "(study, models, arms, phases, ...)")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def merge_study(base: dict, over: dict) -> dict:
    """deep_merge, except that a data section of another kind replaces the data section (a twin's
    `data: {kind: stdlib}` over a Hub dataset keeps none of the Hub's keys)."""
    out = deep_merge(base, over)
    new, old = over.get("data"), base.get("data")
    if isinstance(new, dict) and isinstance(old, dict) and "kind" in new and new["kind"] != old.get("kind"):
        out["data"] = copy.deepcopy(new)
    return out


def study_path(name: str, root: str | Path) -> Path:
    """config/studies/NAME.yaml, or NAME itself when it is a path to a YAML file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        p = Path(name)
        return p if p.is_absolute() else Path(root) / p
    return Path(root) / STUDIES_DIR / f"{name}.yaml"


def available_studies(root: str | Path) -> list[str]:
    return sorted(p.stem for p in (Path(root) / STUDIES_DIR).glob("*.yaml"))


def as_bool(key: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise StudyFileError(f"config {key}: {value!r} is not allowed (true or false)")


def load_study(snakemake_config: dict, root: str | Path, overlays=()) -> tuple[dict, bool, Path]:
    """(the study's config with the twin and the user's overrides applied, tiny?, the study file).

    overlays: the --configfile files Snakemake already merged into snakemake_config. Snakemake reads them
    with a loader that keeps the last of duplicate keys and expands any alias; they are read again here,
    strictly, so that a duplicate key or an alias bomb in one is an error naming the file, before the
    merged values are used."""
    for overlay in overlays:
        read_yaml(overlay)
    name = snakemake_config.get("study", "orthonoise")
    if not isinstance(name, str) or not name:
        raise StudyFileError(f"config study: {name!r} is not allowed (a study name: "
                             f"{', '.join(available_studies(root))}; or a path to a YAML file)")
    path = study_path(name, root)
    if not path.exists():
        raise StudyFileError(f"config study: {name!r} is not a study (known: "
                             f"{', '.join(available_studies(root))}; or a path to a YAML file)")
    tiny = as_bool("tiny", snakemake_config.get("tiny", False))
    study = read_yaml(path)
    twin = study.pop("tiny", None)
    if tiny:
        if not isinstance(twin, dict):
            raise StudyFileError(f"{path}: tiny=true needs a `tiny:` section (the study's CPU twin)")
        study = merge_study(study, twin)
    overrides = {k: v for k, v in snakemake_config.items() if k not in SELECTION_KEYS}
    if overrides:
        study = merge_study(study, overrides)
    return study, tiny, path


def non_finite_numbers(obj, where: str = "") -> list[str]:
    """Dotted keys of every NaN or infinite number in a loaded config (YAML's .nan, .inf)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += non_finite_numbers(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += non_finite_numbers(v, f"{where}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj):
        out.append(f"{where}: {obj!r} is not allowed (a finite number)")
    return out


def apply_defaults(config: dict, schema: dict) -> dict:
    """Fill in, in place, every optional key the schema gives a `default:` that the study leaves out (the one
    place a study setting's default lives; the code then reads the key itself). Only keys of mappings that are
    there are filled, never a section the study did not write, so a default cannot make a phase select or
    measure. Returns config."""
    defs = schema.get("$defs", {})

    def resolve(node: dict) -> dict:
        while isinstance(node, dict) and "$ref" in node:
            node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
        return node

    def fill(value, node) -> None:
        node = resolve(node)
        if not isinstance(node, dict):
            return
        # a choice of shapes (phases.P.select: one mapping or a list of them): fill the shape the value has
        for option in node.get("oneOf", []):
            option = resolve(option)
            if isinstance(option, dict) and option.get("type") == ("object" if isinstance(value, dict) else "array"):
                fill(value, option)
        for part in node.get("allOf", []):
            fill(value, part)
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            for item in value:
                fill(item, node["items"])
            return
        if not isinstance(value, dict):
            return
        for key, sub in node.get("properties", {}).items():
            sub = resolve(sub)
            if key not in value and isinstance(sub, dict) and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                fill(value[key], sub)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in node.get("properties", {}):
                    fill(item, extra)

    fill(config, schema)
    return config
