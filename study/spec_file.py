"""The run spec handed to the trainer as a file (`--spec-json @FILE`), not as ~2 kB of JSON on the command
line that Snakemake prints for every job.

The file sits beside the run's log (logs/STUDY/train/.../seedN.spec.json). It is no input and no output
of the train rule: staleness stays with the fingerprint param alone, and the file is rewritten whenever
its content changed (an operational setting such as wandb's mode changes it without re-running a run).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trainer.atomic import atomic_write_text


def spec_text(spec: dict) -> str:
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def write_spec_file(path: str | os.PathLike, spec: dict) -> str:
    """Write the spec to `path` atomically unless it already holds exactly this; returns the path."""
    path = Path(path)
    text = spec_text(spec)
    try:
        if path.read_text(encoding="utf-8") == text:
            return str(path)
    except OSError:
        pass
    atomic_write_text(path, text)
    return str(path)
