"""Atomic file writes, shared by the trainer's records, the study's spec files and the analysis tables.

A temporary file beside the target (named `.tmp-NAME.*`, which no rule declares), fsync, then os.replace:
a reader (or Snakemake) sees no file or a complete one, never half a file. A writer that fails or is
interrupted removes its temporary; after a hard kill one may be left under that hidden name. The file gets
the permissions of a plain `open` (0666 less the umask), not mkstemp's 0600. Standard library only.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Callable


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def fsync_dir(d: str | os.PathLike) -> None:
    """Make the renames in directory d durable (where the file system allows it)."""
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[io.IOBase], None], mode: str = "w") -> None:
    """Call write(f) on a temporary file beside `path` (text: UTF-8, newlines as written), then rename it
    onto `path`."""
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
    fsync_dir(path.parent)  # make the rename itself durable


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), mode="wb")
