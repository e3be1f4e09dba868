"""One writer per run, and no worker outliving its launcher.

`RunLock`: an exclusive `flock` on `run.lock` in the run's checkpoint directory, taken by the writing
process (rank 0) before it touches the run's files and held until it exits (the kernel drops it when
the process dies, however it dies). A second trainer of the same run is refused with `RunLockError`,
whose message names the holder's PID and host (written into the lock file). flock works across hosts
on NFSv4 (emulated with byte-range locks) and on Lustre mounted with `flock`; not on a filesystem
mounted `nolock` or Lustre's `localflock`.

`die_with_parent()`: torchrun starts each worker in a session of its own, so a SIGKILL of torchrun (or
of the Snakemake that started it) used to leave the workers training. On Linux the worker asks the
kernel for SIGKILL when its parent exits (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread polls the
parent. The next start resumes from the last checkpoint, which is the same as after any other kill.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

LOCK_NAME = "run.lock"


class RunLockError(RuntimeError):
    """Another process holds the run's lock."""


class RunLock:
    def __init__(self, ckpt_dir: str | os.PathLike):
        self.dir = Path(ckpt_dir)
        self.path = self.dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise RunLockError(
                    f"run directory {self.dir} is being written by another trainer: {self.holder()}. Two trainers "
                    f"must not write one run; wait for that one to end, or stop it, then start again "
                    f"(lock file {self.path})") from None
            # A holder that released unlinks the file: if ours is no longer the one at the path, retry
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        self.fd = fd
        return self

    def holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text or "a process that has not written its PID and host yet"

    def release(self) -> None:
        """Unlink the lock file (while still holding it), unlock, and remove the directory if empty."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None
        try:
            self.dir.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def started_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> str:
    """Make this process die with its parent. Returns how ('prctl' or 'thread')."""
    ppid = os.getppid()
    how = "thread"
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if how == "thread":
        def watch():
            while os.getppid() == ppid:
                time.sleep(1.0)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
    elif os.getppid() != ppid:  # the parent ended before the prctl took effect
        os.kill(os.getpid(), sig)
    return how
