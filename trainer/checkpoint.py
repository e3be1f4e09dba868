"""Checkpoints (`latest.pt` and the one before it, `previous.pt`, in the run's checkpoint directory) and
preemption signals.

A checkpoint holds everything the rest of the run depends on: model and optimizer state, the number
of completed steps (which is also the data position: the batch of step s is a function of (seed, s)),
the history rows and evaluations so far, the timing and diagnostic accumulators, the RNG states
(torch CPU, CUDA, numpy, python, all as tensors), the data checksum and the wandb run id. It is
written atomically (temporary file, then rename; the old `latest.pt` becomes `previous.pt`), so a
kill during the save leaves the previous checkpoints intact.

Only plain data is stored: tensors, numbers, strings, None and dict/list/tuple (`save` refuses
anything else, naming where it is), and files are read with `torch.load(weights_only=True)`, so a
checkpoint cannot run code when it is loaded. A file that holds anything else (a crafted pickle) is
refused with `CheckpointUnsafeError` and nothing of it is executed. A file that cannot be read at all
(truncated, zero bytes, garbage, a member whose CRC-32 does not match: torch.load does not check) is set aside as `latest.pt.bad` and the run falls back to
`previous.pt`; `load` returns what it did, and the loop writes it into the run's records.

A checkpoint is resumed only when its resume key (the result-affecting spec, the study fingerprint
and the code's behaviour versions) equals the current run's; otherwise the run starts fresh and says
why in the log.

SIGTERM, SIGINT and SIGUSR1 (Slurm's preemption and time-limit signals, Ctrl-C; torchrun forwards
SIGTERM and SIGINT to its workers) only set a flag; the loop finishes the step in hand, saves a
checkpoint and exits with PREEMPTED_EXIT_CODE so that Snakemake/Slurm retry and the next start
resumes. A second SIGINT (Ctrl-C twice) interrupts at once.
"""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import random
import signal
import tempfile
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.atomic import atomic_write, fsync_dir
from trainer.records import write_json

CKPT_NAME = "latest.pt"
PREVIOUS_NAME = "previous.pt"
BAD_SUFFIX = ".bad"
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again
FORMAT_VERSION = 2  # 2: plain data only (weights_only), RNG states as tensors, two files kept
# What a format-1 checkpoint (the trainer before weights_only) holds besides plain data: such a file
# is not resumed (it is not loaded at all) and the run starts fresh, as for a foreign spec.
FORMAT1_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                   "numpy._core.multiarray._reconstruct", "torch.torch_version.TorchVersion"}
EVENTS_NAME = "events.json"  # what went wrong in earlier processes of the run, for its metrics.json
EVENT_KEYS = ("checkpoint_fallbacks", "record_errors")
PLAIN = "tensors, numbers, strings, None and dict/list/tuple"


class CheckpointError(ValueError):
    """A checkpoint state that cannot be saved as plain data."""


class CheckpointUnsafeError(RuntimeError):
    """A checkpoint file that holds objects other than plain data: refused, never unpickled."""


# --------------------------------------------------------------------------- RNG states as tensors
def rng_state(device: torch.device) -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    s = {"torch": torch.get_rng_state(),
         "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)},
         "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                    "gauss_next": gauss_next}}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(s: dict, device: torch.device) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if device.type == "cuda" and "cuda" in s:
        torch.cuda.set_rng_state(s["cuda"], device)


# --------------------------------------------------------------------------- plain data only
_SCALARS = (bool, int, float, str, type(None))


def plain(x: Any, where: str = "state") -> Any:
    """x with numpy scalars made Python numbers and str subclasses plain str; raises CheckpointError
    naming the first value that is not plain data."""
    if isinstance(x, torch.Tensor):
        if type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):
            raise CheckpointError(f"checkpoint {where} is a {type(x).__name__}: only {PLAIN} are stored")
        return x.detach() if isinstance(x, torch.nn.Parameter) else x
    if type(x) in _SCALARS:
        return x
    if isinstance(x, str):  # e.g. torch.__version__ (TorchVersion)
        return str(x)
    if isinstance(x, np.generic) and isinstance(x.item(), _SCALARS):
        return x.item()
    if isinstance(x, (torch.dtype, torch.device, torch.Size)):
        return x
    if isinstance(x, dict):
        out = OrderedDict() if isinstance(x, OrderedDict) else {}
        for k, v in x.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint {where} has a key {k!r} of type {type(k).__name__}: "
                                      f"keys are strings or integers")
            out[str(k) if isinstance(k, str) else int(k)] = plain(v, f"{where}[{k!r}]")
        if isinstance(getattr(x, "_metadata", None), dict):  # a module state_dict's per-module versions
            out._metadata = plain(x._metadata, f"{where}._metadata")
        return out
    if isinstance(x, (list, tuple)) and type(x) in (list, tuple):
        return type(x)(plain(v, f"{where}[{i}]") for i, v in enumerate(x))
    raise CheckpointError(f"checkpoint {where} is a {type(x).__module__}.{type(x).__qualname__}: only {PLAIN} "
                          f"are stored (checkpoints are read with weights_only=True, so that loading one "
                          f"cannot run code); store it as one of those")


# --------------------------------------------------------------------------- files
def path_of(ckpt_dir: str | os.PathLike) -> Path:
    return Path(ckpt_dir) / CKPT_NAME


def previous_of(ckpt_dir: str | os.PathLike) -> Path:
    return Path(ckpt_dir) / PREVIOUS_NAME


def save(ckpt_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write the state to a temporary file (fsync), then latest.pt -> previous.pt, temporary -> latest.pt."""
    d = Path(ckpt_dir)
    p, prev = path_of(d), previous_of(d)
    state = plain({"format_version": FORMAT_VERSION, **state})
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".tmp-{CKPT_NAME}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if p.exists():
            os.replace(p, prev)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(d)  # make the renames durable
    return p


def _globals_in(path: Path) -> list[str]:
    """The importable names a pickle file refers to, found without executing it (torch zip or raw pickle;
    for a raw pickle, what the scan found before any damage)."""
    if zipfile.is_zipfile(path):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:
            return []
    names: set[str] = set()
    stack: list = []  # the last strings pushed, and memo, enough to name a STACK_GLOBAL
    memo: dict = {}
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.add(str(arg).replace(" ", "."))
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    stack.append(str(arg))
                elif op.name == "MEMOIZE" and stack:
                    memo[len(memo)] = stack[-1]
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and stack:
                    memo[arg] = stack[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    stack.append(memo.get(arg))
                elif op.name == "STACK_GLOBAL":
                    a, b = (stack[-2], stack[-1]) if len(stack) >= 2 else (None, None)
                    names.add(f"{a}.{b}" if isinstance(a, str) and isinstance(b, str) else
                              "<a global the scan could not name>")
    except Exception:
        pass
    return sorted(names)


def _crc_failure(p: Path) -> str:
    """'' when every member of a torch zip checkpoint matches its CRC-32 (or the file is no zip: then
    torch.load judges it), else which member does not."""
    if not zipfile.is_zipfile(p):
        return ""
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"not a readable zip ({e})"
    return f"the CRC-32 of {bad} does not match its bytes (a changed bit)" if bad else ""


def read(p: Path, map_location="cpu") -> dict:
    """One checkpoint file, loaded with weights_only=True. Raises CheckpointUnsafeError for a file that
    holds anything but plain data (nothing of it runs); any other exception means unreadable."""
    bad_member = _crc_failure(p)
    if bad_member:  # torch.load does not check the CRCs: a flipped bit would be resumed silently
        raise ValueError(f"damaged: {bad_member}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        names = _globals_in(p)
        if not names:  # nothing it asks to import: damaged (a flipped bit), not crafted; still never run
            raise ValueError(f"not a readable checkpoint ({str(e).splitlines()[0][:200]})") from None
        if set(names) <= FORMAT1_GLOBALS:  # not resumed (its resume key cannot match); not loaded
            return {"format_version": 1, "resume_key": "none: a format-1 checkpoint (an older trainer)"}
        what = ", ".join(names)
        raise CheckpointUnsafeError(
            f"checkpoint {p} holds objects other than {PLAIN} ({what}): refusing to load it, since unpickling "
            f"it could run code; nothing of it was executed. The trainer never writes such a file: if you did "
            f"not put it there, someone with write access to {p.parent} did. Delete it to start this run afresh"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a checkpoint dict")
    return state


def load(ckpt_dir: str | os.PathLike, map_location="cpu", move_bad: bool = True) -> tuple[dict | None, list[dict]]:
    """(state, events): the state of latest.pt, else of previous.pt when latest.pt cannot be read, else
    None; events lists each file that could not be read and what was done instead (for the records).
    A file that cannot be read is renamed to NAME.bad (when move_bad; only the process that writes)
    so that the next save cannot make it the fallback. Raises CheckpointUnsafeError (see read)."""
    events: list[dict] = []
    for p in (path_of(ckpt_dir), previous_of(ckpt_dir)):
        if not p.exists():
            continue
        try:
            state = read(p, map_location)
        except CheckpointUnsafeError:
            raise
        except Exception as e:
            size = p.stat().st_size if p.exists() else None
            events.append({"file": p.name, "size": size, "error": f"{type(e).__name__}: {e}"[:300]})
            if move_bad:
                try:
                    os.replace(p, p.with_name(p.name + BAD_SUFFIX))
                except OSError:
                    pass
            continue
        for ev in events:
            ev["fallback"] = p.name
        return state, events
    for ev in events:
        ev["fallback"] = "fresh start"
    return None, events


def read_events(ckpt_dir: str | os.PathLike) -> dict[str, list]:
    """What the run's earlier processes recorded in events.json (JSON, never code): checkpoint_fallbacks
    and record_errors."""
    p = Path(ckpt_dir) / EVENTS_NAME
    try:
        ev = json.loads(p.read_text())
        return {k: list(ev.get(k) or []) for k in EVENT_KEYS}
    except (OSError, ValueError, AttributeError, TypeError):
        return {k: [] for k in EVENT_KEYS}


def add_events(ckpt_dir: str | os.PathLike, reset: bool = False, **new: list) -> dict[str, list]:
    """Append to events.json (reset: start from nothing); returns all events so far. A failed write
    raises OSError: the caller warns."""
    p = Path(ckpt_dir) / EVENTS_NAME
    ev = {k: [] for k in EVENT_KEYS} if reset else read_events(ckpt_dir)
    for k, v in new.items():
        ev[k].extend(v)
    if (reset and p.exists()) or any(new.values()):
        write_json(p, ev)
    return ev


def clean_temporaries(ckpt_dir: str | os.PathLike) -> list[str]:
    """Remove the temporary files of saves that a kill interrupted (only while holding the run lock)."""
    d = Path(ckpt_dir)
    gone = []
    for leftover in sorted(d.glob(f".tmp-{CKPT_NAME}.*")) if d.is_dir() else []:
        leftover.unlink(missing_ok=True)
        gone.append(leftover.name)
    return gone


def remove(ckpt_dir: str | os.PathLike) -> None:
    d = Path(ckpt_dir)
    for p in (path_of(d), previous_of(d), d / (CKPT_NAME + BAD_SUFFIX), d / (PREVIOUS_NAME + BAD_SUFFIX),
              d / EVENTS_NAME):
        p.unlink(missing_ok=True)
    prune_ranks(d, keep_steps=())
    clean_temporaries(d)
    try:
        d.rmdir()
    except OSError:
        pass


class PreemptionFlag:
    """Turns SIGTERM/SIGINT/SIGUSR1 into a flag the loop polls after each step."""

    SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self):
        self.signum: int | None = None
        self.finished = False  # the run's records are complete: a signal now ends the process with 0
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        if self.finished:  # nothing left to save: exit 0, so that no one deletes the complete run
            raise SystemExit(0)
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without waiting for the checkpoint

    def install(self) -> "PreemptionFlag":
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except ValueError:  # not the main thread
                    pass
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, TypeError):
                pass
        self._old.clear()

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


# --------------------------------------------------------------------------- rank-local optimizer state
# An optimizer whose state differs between ranks (DeMo's per-rank residual delta; has_rank_local_state)
# is checkpointed per rank: every rank other than 0 writes `rank<r>.step<s>.pt` (atomic) before rank 0
# writes latest.pt, which names the step; a resume loads the file of latest.pt's step, so a kill between
# the two writes leaves a consistent pair. Rank 0's own state is in latest.pt.
def rank_path(ckpt_dir: str | os.PathLike, rank: int, step: int) -> Path:
    return Path(ckpt_dir) / f"rank{rank}.step{step}.pt"


def save_rank(ckpt_dir: str | os.PathLike, rank: int, step: int, state: dict[str, Any]) -> Path:
    """One rank's own state (plain data, like latest.pt) for `step`."""
    p = rank_path(ckpt_dir, rank, step)
    state = plain({"format_version": FORMAT_VERSION, **state})
    atomic_write(p, lambda f: torch.save(state, f), mode="wb")
    return p


def prune_ranks(ckpt_dir: str | os.PathLike, keep_steps=()) -> None:
    """Remove the rank files of every step but keep_steps (the steps of latest.pt and previous.pt, so
    that a fallback to previous.pt finds its ranks' state too)."""
    d = Path(ckpt_dir)
    if not d.exists():
        return
    keep = {f".step{s}.pt" for s in keep_steps}
    for f in list(d.glob("rank*.step*.pt")) + list(d.glob(".tmp-rank*.step*.pt.*")):
        if not any(f.name.endswith(k) for k in keep):
            f.unlink(missing_ok=True)


def file_sha256(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def rank_checksums(ckpt_dir: str | os.PathLike, step: int, world_size: int) -> dict[str, str]:
    """{rank: sha256} of the rank files of `step` (rank 0 calls it after the ranks saved them): latest.pt
    records them, so that a resume takes only the rank files it was saved with."""
    return {str(r): file_sha256(rank_path(ckpt_dir, r, step)) for r in range(1, world_size)}


def attach_rank_state(state: dict, ckpt_dir, info, key: str, log, name: str = CKPT_NAME) -> tuple[dict | None, str]:
    """Put this rank's own optimizer state into `state` (read from `name`; collective: every rank calls it).
    Returns (state, "") when every rank restored its state; else (None, why) on every rank: why is
    "world size" when the checkpoint was written by another number of ranks (nothing to fall back to), else
    (on rank 0) which rank files are missing, unreadable, of another step or not the ones `name` was saved
    with (its recorded sha256); then the caller falls back to previous.pt or starts fresh rather than resume
    with a wrong residual."""
    import sys

    from trainer import distributed as dist_mod

    why = ""
    if state.get("world_size") != info.world_size:
        why = f"it was written by {state.get('world_size')} ranks, this run has {info.world_size}"
    elif not info.is_main:
        p = rank_path(ckpt_dir, info.rank, state["step"])
        want = (state.get("rank_files") or {}).get(str(info.rank))  # absent in checkpoints before the binding
        mine = None
        try:
            if not p.exists():
                why = f"{p.name} is missing"
            elif want is not None and file_sha256(p) != want:
                why = f"{p.name} is not the file {name} was saved with (its sha256 differs from the recorded {want[:16]}...)"
            else:
                mine = read(p, "cpu")  # weights only, as latest.pt
        except CheckpointUnsafeError:
            raise
        except Exception as e:
            why = f"{p.name} cannot be read ({type(e).__name__}: {str(e)[:200]})"
        if not why and (mine.get("resume_key") != key or mine.get("step") != state["step"]):
            why = f"{p.name} holds step {mine.get('step')} of resume key {mine.get('resume_key')}, not step {state['step']} of {key}"
        if why:
            print(f"[train rank {info.rank}] warning: {why}", file=sys.stderr, flush=True)
        else:
            state = dict(state, optimizer=mine["optimizer"])
    bad = torch.zeros(info.world_size, device=info.device)
    bad[info.rank] = 1.0 if why else 0.0
    dist_mod.all_reduce_max_(bad, info)
    if bad.sum().item() == 0:
        return state, ""
    if state.get("world_size") != info.world_size:
        log(f"checkpoint {Path(ckpt_dir) / name} holds rank-local optimizer state that cannot be restored on every "
            f"rank: {why}: not resuming; starting fresh")
        return None, "world size"
    ranks = [r for r in range(info.world_size) if bad[r].item() > 0]
    why = (f"the rank-local optimizer state of step {state['step']} ("
           f"{', '.join(rank_path(ckpt_dir, r, state['step']).name for r in ranks)}) is missing, unreadable or not "
           f"the file {name} was saved with")
    return None, why
