"""Schema errors as one line each: the key, the value, what is allowed.

jsonschema's own messages dump the whole sub-schema; a researcher needs the dotted key and a hint.
"""

from __future__ import annotations

import re

import jsonschema
import yaml

NUMBER_LIKE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(error: jsonschema.ValidationError) -> str:
    where, value, v = dotted(error.absolute_path), error.instance, error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed)) if isinstance(value, dict) else []
        return (f"{where}: unknown key(s) {', '.join(map(repr, extra))}"
                + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
    if v == "required":
        return f"{where}: {error.message}"
    if v == "type" and isinstance(value, str) and NUMBER_LIKE.match(value):
        return (f"{where}: {value!r} is a string, not a number; write it with a decimal point "
                f"(e.g. 1.0e-3): YAML 1.1 reads 1e-3 as text")
    if v == "enum":
        return f"{where}: {value!r} is not allowed (allowed: {', '.join(map(str, error.validator_value))})"
    if v == "pattern" and "selected" in str(error.validator_value):
        return (f"{where}: {value!r} is not allowed ('selected', or 'selected:NAME' with NAME a selection of the "
                f"phase's select:)")
    if v == "pattern":
        return f"{where}: {value!r} does not match the pattern {error.validator_value}"
    if v == "oneOf":
        # a choice of shapes (a mapping or a list of them, phases.P.select): the errors of the shape the value
        # has say what is wrong with it, one line (the first; the others follow once it is fixed)
        shape = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else None
        options = [o for o in error.schema.get("oneOf", []) if isinstance(o, dict)]
        idx = [i for i, o in enumerate(options) if o.get("type") == shape]
        if shape == "object" and not idx:
            idx = [i for i, o in enumerate(options) if "$ref" in o]
        inner = sorted((c for c in error.context or [] if c.schema_path and c.schema_path[0] in idx),
                       key=lambda c: -len(c.absolute_path))
        if inner:
            return describe(inner[0])
        return f"{where}: {value!r} is neither of the allowed forms ({error.schema.get('oneOf')})"
    return f"{where}: {error.message}"


def schema_errors(config: dict, schema_path: str) -> list[str]:
    with open(schema_path) as fh:
        schema = yaml.safe_load(fh)
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(describe(e) for e in validator.iter_errors(config))


def explain(config: dict, schema_path: str) -> str:
    errors = schema_errors(config, schema_path)
    return "invalid study config (config/schema.yaml):\n  - " + "\n  - ".join(errors or ["(unknown)"])
