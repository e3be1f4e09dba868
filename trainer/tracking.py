"""Weights & Biases, mode from the spec: disabled, offline (no network; `wandb sync DIR` later) or online.

Only rank 0 talks to wandb. The run's config is the resolved spec (which holds no secrets); group and
tags come from the spec; history rows and the final metrics are logged. The wandb run id is chosen
here (or taken from the checkpoint on resume, so a preempted run continues the same wandb run) and
recorded in metrics.json with the mode and the run directory.

wandb not installed: when the spec leaves wandb.mode out, the run goes on with wandb disabled and
says so; when the spec asks for offline or online, that is an error that says how to fix it.
API keys are read by wandb itself from its usual places; this module never reads, logs or records
them, and nothing of the environment is put into the config or the records.

Records are never lost silently. wandb writes in a process of its own and does not report a failed
write (a full disk gave a 4 KB `.wandb` file instead of 67 KB and exit 0), so: a wandb call that raises
is a warning and turns wandb off for the rest of the run (training goes on); a run directory that wandb
moved elsewhere (it falls back to a temporary directory when `wandb.dir` is not writable) is a warning;
and after `finish` the run's transaction log (`run-<id>.wandb`, written in offline and online mode) is
read back: fewer history rows than were logged, a cut record or a missing end is a warning. Each
warning is logged and kept in `errors`, which the loop writes into metrics.json (`record_errors`).

The read-back waits for the writer. `run.finish()` returns once wandb-core has the exit record, not once
it is on disk (wandb 0.31 writes the file after `finish` returns: read at once, a complete log looked cut
or empty). So the tracker then shuts wandb's service down (`wandb.teardown()`, which joins the wandb-core
process this process started) and reads the file after that; when the service is not this process's own
(WANDB_SERVICE set by a parent), it re-reads until the file holds the end-of-run record or stops changing
for `settle_s` seconds.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from trainer.spec import WandbSpec


class TrackingError(RuntimeError):
    pass


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def _new_id() -> str:
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class Tracker:
    def __init__(self, wspec: WandbSpec, run_name: str, config: dict, is_main: bool,
                 resume_id: str | None = None, log: Callable[[str], None] = print):
        self.mode = wspec.mode
        self.id: str | None = None
        self.dir: str | None = None
        self.run = None
        self._wandb = None
        self._log = log
        self.errors: list[dict] = []  # record write failures: {"record", "error"}
        self.n_logged = 0  # history rows handed to wandb by this process
        if self.mode == "disabled":
            return
        if not wandb_available():
            if wspec.mode_given:
                raise TrackingError(f"wandb.mode is {self.mode!r} but the wandb package is not installed here; "
                                    f"install it (pip install wandb) or set wandb.mode: disabled in the spec")
            log("wandb is not installed and the spec left wandb.mode out: wandb disabled for this run")
            self.mode = "disabled"
            return
        if not is_main:
            return
        import wandb

        self._wandb = wandb
        wdir = Path(wspec.dir)
        run_id = resume_id or _new_id()
        self.id = run_id
        try:
            wdir.mkdir(parents=True, exist_ok=True)
            settings = wandb.Settings(console="off", silent=True)
            self.run = wandb.init(project=wspec.project, entity=wspec.entity, group=wspec.group,
                                  tags=list(wspec.tags), name=run_name, job_type="train", config=config,
                                  dir=str(wdir), mode=self.mode, id=run_id, resume="allow", settings=settings)
        except Exception as e:
            self.run, self.id = None, resume_id
            self.error(f"wandb could not start in {wdir} ({type(e).__name__}: {e}); wandb is off for this run")
            return
        self.id = self.run.id
        run_dir = Path(self.run.dir).parent  # .../wandb/offline-run-<time>-<id>: what `wandb sync` takes
        self._run_dir = run_dir
        try:
            self.dir = os.path.relpath(run_dir)
        except ValueError:
            self.dir = str(run_dir)
        try:
            moved = not run_dir.resolve().is_relative_to(wdir.resolve())
        except OSError:
            moved = False
        if moved:
            self.error(f"wandb writes this run to {run_dir}, not under wandb.dir {wdir} (not writable?)")

    def error(self, msg: str) -> None:
        self.errors.append({"record": "wandb", "error": msg})
        self._log(f"warning: records lost: {msg}")

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        """A wandb call; one that raises is a recorded warning, and wandb is off from then on."""
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self.error(f"wandb {what} failed ({type(e).__name__}: {e}); wandb is off for the rest of this run")
            run, self.run = self.run, None
            try:
                run.finish(exit_code=1, quiet=True)
            except Exception:
                pass

    @property
    def active(self) -> bool:
        return self.run is not None

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            clean = {k: v for k, v in row.items() if v is not None and k != "step"}
            self._call("log", self.run.log, clean, step=step)
            if self.run is not None:
                self.n_logged += 1

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self._call("summary", self._summary, metrics)

    def _summary(self, metrics: dict[str, Any]) -> None:
        for k in ("status", "diverged_step", "final_val_loss", "best_val_loss", "steps_completed",
                  "tokens_per_s", "wall_time_s", "gpu_hours"):
            if metrics.get(k) is not None:
                self.run.summary[k] = metrics[k]
        for k, v in (metrics.get("diagnostics") or {}).items():
            if v is not None:
                self.run.summary[f"diagnostics/{k}"] = v

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        if self.run is not None:
            if preempted:
                try:
                    self.run.mark_preempting()
                except Exception:
                    pass
            run = self.run
            self._call("finish", run.finish, exit_code=exit_code)
            self.run = None
            writer_joined = self._join_writer()
            self.verify(settle_s=0.0 if writer_joined else self.settle_s)

    settle_s = 5.0  # an outside wandb-core's writes: re-read until the file stops changing this long

    def _join_writer(self) -> bool:
        """Shut down the wandb-core process this process started, so that its writes are on disk; True when
        it was ours and has exited (then one read of the file is the truth)."""
        if self._wandb is None:
            return False
        try:
            from wandb.sdk import wandb_setup

            singleton = getattr(wandb_setup, "_singleton", None)
            conn = getattr(singleton, "_connection", None)
            owned = bool(conn is not None and getattr(conn, "owns_service", False))
            self._wandb.teardown()
            return owned
        except Exception as e:  # a teardown that fails: fall back to re-reading the file
            self._log(f"note: wandb teardown failed ({type(e).__name__}: {e}); re-reading its log until it settles")
            return False

    def verify(self, settle_s: float = 0.0) -> None:
        """Read back this process's transaction log and compare it with what was logged. With `settle_s`,
        an incomplete file is re-read until it is complete or has not changed for that long."""
        run_dir = getattr(self, "_run_dir", None)
        if run_dir is None or self.errors:
            return
        f = run_dir / f"run-{self.id}.wandb"
        last, quiet_since = None, time.monotonic()
        while True:
            state = _read_state(f)
            if state is None:
                break
            kinds, problem, stat = state
            if not problem and kinds.get("history", 0) >= self.n_logged and "exit" in kinds:
                break
            if stat != last:
                last, quiet_since = stat, time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s:
                break
            time.sleep(0.2)
        if not f.exists():
            self.error(f"wandb's transaction log {f} is missing")
            return
        try:
            kinds, problem = read_transaction_log(f)
        except ValueError as e:  # a format this reader does not know: say so, claim nothing
            self._log(f"note: cannot verify wandb's transaction log {f}: {e}")
            return
        rows = kinds.get("history", 0)
        if problem or rows < self.n_logged or "exit" not in kinds:
            self.error(f"wandb's transaction log {f} ({f.stat().st_size} bytes) holds {rows} of the "
                       f"{self.n_logged} history rows logged{', ' + problem if problem else ''}"
                       f"{'' if 'exit' in kinds else ', no end-of-run record'} (disk full?)")

    def record(self) -> dict:
        return {"mode": self.mode, "id": self.id, "dir": self.dir}


def _read_state(f: Path):
    """(kinds, problem, (size, mtime)) of a transaction log; None when it is missing or unknown."""
    try:
        st = f.stat()
        kinds, problem = read_transaction_log(f)
    except (OSError, ValueError):
        return None
    return kinds, problem, (st.st_size, st.st_mtime_ns)


# --------------------------------------------------------------------------- wandb's transaction log
_LOG_IDENT, _LOG_MAGIC, _LOG_VERSION = b":W&B", 0xBEE1, 0
_BLOCK, _HEADER = 32768, 7  # leveldb log format: 32 KiB blocks; crc32, length, type per chunk


def read_transaction_log(path: str | os.PathLike) -> tuple[dict[str, int], str]:
    """Count the records of a `.wandb` file by kind, e.g. {"history": 300, "exit": 1, ...}, and say what
    is wrong with it ("" when nothing): a cut or corrupt chunk ends the scan. ValueError for a file that
    is not in the format this reader knows (its header)."""
    data = Path(path).read_bytes()
    if len(data) < _HEADER or data[:4] != _LOG_IDENT or struct.unpack("<HB", data[4:7]) != (_LOG_MAGIC,
                                                                                             _LOG_VERSION):
        if len(data) < _HEADER:
            return {}, f"only {len(data)} bytes"
        raise ValueError(f"unknown header {data[:7]!r}")
    try:
        from wandb.proto import wandb_internal_pb2 as pb
    except ImportError:
        pb = None
    records, buf, pos, problem = [], b"", _HEADER, ""
    while pos < len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        if pos + _HEADER > len(data):
            problem = f"a cut chunk header at byte {pos}"
            break
        crc, n, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if crc == 0 and n == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + _HEADER:pos + _HEADER + n]
        if len(chunk) < n:
            problem = f"a cut record at byte {pos}"
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            problem = f"a corrupt record at byte {pos}"
            break
        pos += _HEADER + n
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            records.append(buf + chunk)
            buf = b""
    kinds: dict[str, int] = {}
    for r in records:
        k = "record"
        if pb is not None:
            rec = pb.Record()
            try:
                rec.ParseFromString(r)
                k = rec.WhichOneof("record_type") or "record"
            except Exception:
                k = "unparsed"
        kinds[k] = kinds.get(k, 0) + 1
    return kinds, problem
