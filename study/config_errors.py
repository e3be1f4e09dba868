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
    if v == "pattern":
        return f"{where}: {value!r} does not match the pattern {error.validator_value}"
    if v == "oneOf":
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
