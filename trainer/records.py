"""Atomic writes of the run's records: a temporary file in the same directory, fsync, then os.replace.

A reader (or Snakemake) therefore sees either no file or a complete one, never half a file; if the
writer fails or is killed midway, the temporary file is removed (or, after a hard kill, left under a
name starting with '.tmp-' that no rule declares).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

HISTORY_COLUMNS = ["step", "train_loss", "val_loss", "lr_scale", "grad_norm", "update_rms", "eff_rank_mean",
                   "eff_rank_min", "noise_fraction", "eps", "tokens_per_s", "weight_norm_dev", "bytes_sent_per_step",
                   "allreduce_bytes_per_step"]


def atomic_write(path: str | os.PathLike, write: Callable[[io.TextIOBase], None], mode: str = "w") -> None:
    """Call write(f) on a temporary file beside `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


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
