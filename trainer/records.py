"""The run's records, written atomically (trainer/atomic.py): a temporary file in the same directory, fsync,
then os.replace.

A reader (or Snakemake) therefore sees either no file or a complete one, never half a file; if the
writer fails or is killed midway, the temporary file is removed (or, after a hard kill, left under a
name starting with '.tmp-' that no rule declares).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from trainer.atomic import atomic_write  # noqa: F401  (the trainer's modules import it from here)

HISTORY_COLUMNS = ["step", "train_loss", "val_loss", "lr_scale", "grad_norm", "update_rms", "eff_rank_mean",
                   "eff_rank_min", "noise_fraction", "eps", "tokens_per_s", "weight_norm_dev", "bytes_sent_per_step",
                   "allreduce_bytes_per_step"]


def json_safe(x: Any) -> Any:
    """NaN and infinities become null (strict JSON); tuples become lists; numpy/torch scalars floats."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if hasattr(x, "item"):
        return json_safe(x.item())
    return str(x)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    return str(v)


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Rows as dicts; a missing or None value is an empty cell; floats are written exactly (repr)."""

    def write(f):
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])

    atomic_write(path, write)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))
