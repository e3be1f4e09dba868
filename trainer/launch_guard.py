"""The train job's top process: runs the launch command and exits by the run's records (issue 28.1).

    python trainer/launch_guard.py -- torchrun ... workflow/scripts/train.py ... --out-dir DIR ...
    python trainer/launch_guard.py -- srun ... torchrun ...            (any launcher: a prefix)

torchrun exits 1 when it gets a SIGTERM or SIGINT, even when its workers then exit 0: a signal to the job after
the trainer wrote `metrics.json` failed a complete run, and Snakemake deleted it. The guard starts the command
in a session of its own, passes each signal it gets (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1) on to it
once, waits for it, and then exits

- 0 when the run's records in `--out-dir` (read from the command's own arguments) are complete: spec.json,
  history.csv and a metrics.json written by this launch, of status ok or diverged, whose fingerprint is that
  of spec.json and of the spec the command was given (`--spec-json`, `--spec`, when JSON);
- the command's exit status otherwise (128 + N for a command killed by signal N), and 1 for a command that
  exited 0 without complete records: an incomplete run is never reported done.

The command dies with the guard (PR_SET_PDEATHSIG, SIGKILL), as torchrun's workers die with torchrun.
Standard library only, and run as a file: it must start wherever the job's Python is, before any import
of the project or torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1")
STATUSES = ("ok", "diverged")
PR_SET_PDEATHSIG = 1


def option(argv: list[str], name: str) -> str | None:
    """The value of the last `name VALUE` or `name=VALUE` in argv."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a[len(name) + 1:]
    return value


def _stat(path: str) -> tuple | None:
    try:
        s = os.stat(path)
    except OSError:
        return None
    return s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns


def _json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def given_fingerprint(argv: list[str]) -> str | None:
    """The fingerprint in the spec the command was given, where that spec is JSON (else None)."""
    raw = option(argv, "--spec-json")
    try:
        if raw is not None:
            spec = _json(raw[1:]) if raw.startswith("@") else json.loads(raw)
        elif option(argv, "--spec") is not None:
            spec = _json(option(argv, "--spec"))
        else:
            return None
    except (OSError, ValueError):
        return None  # YAML, say: the trainer reads it; spec.json's fingerprint is checked below
    fp = spec.get("fingerprint") if isinstance(spec, dict) else None
    return fp if isinstance(fp, str) else None


def record_problems(out_dir: str, metrics_before: tuple | None, fingerprint: str | None) -> list[str]:
    """Why the run's records in out_dir are not complete ([] when they are)."""
    mp, sp, hp = (os.path.join(out_dir, n) for n in ("metrics.json", "spec.json", "history.csv"))
    now = _stat(mp)
    if now is None:
        return [f"{mp}: missing"]
    if now == metrics_before:
        return [f"{mp}: not written by this launch (unchanged since it started)"]
    problems = []
    try:
        m = _json(mp)
        if not isinstance(m, dict):
            raise ValueError(f"a JSON object expected, got {type(m).__name__}")
    except (OSError, ValueError) as e:
        return [f"{mp}: unreadable ({e})"]
    if m.get("status") not in STATUSES:
        problems.append(f"{mp}: status {m.get('status')!r}, not one of {', '.join(STATUSES)}")
    try:
        spec = _json(sp)
        fp = spec.get("fingerprint") if isinstance(spec, dict) else None
        if m.get("fingerprint") != fp:
            problems.append(f"{mp}: fingerprint {m.get('fingerprint')!r}, but {sp} has {fp!r}")
    except (OSError, ValueError) as e:
        problems.append(f"{sp}: unreadable ({e})")
    if fingerprint is not None and m.get("fingerprint") != fingerprint:
        problems.append(f"{mp}: fingerprint {m.get('fingerprint')!r}, but the command's spec has {fingerprint!r}")
    if not (_stat(hp) or (0, 0, 0))[2]:
        problems.append(f"{hp}: missing or empty")
    return problems


def _die_with_parent() -> None:  # in the child, between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def say(text: str) -> None:
    print(f"launch guard: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        say("usage: launch_guard.py -- COMMAND ... --out-dir DIR ...")
        return 2
    out_dir = option(argv, "--out-dir")
    if not out_dir:
        say(f"no --out-dir in the command {' '.join(argv)!r}: the run's records cannot be checked")
        return 2
    before = _stat(os.path.join(out_dir, "metrics.json"))
    fingerprint = given_fingerprint(argv)
    child: subprocess.Popen | None = None
    pending: list[int] = []
    received: list[str] = []

    def forward(signum, frame):
        received.append(signal.Signals(signum).name)
        if child is None:
            pending.append(signum)
        elif child.returncode is None:
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:
                pass

    for name in FORWARDED:
        signal.signal(getattr(signal, name), forward)
    parent = os.getpid()

    def preexec():
        _die_with_parent()
        if os.getppid() != parent:  # the guard ended before the prctl took effect
            os._exit(128 + signal.SIGKILL)

    try:
        child = subprocess.Popen(argv, start_new_session=True, preexec_fn=preexec)
    except OSError as e:
        say(f"cannot start {argv[0]!r}: {e}")
        return 127
    for signum in pending:  # arrived while the command was starting
        os.kill(child.pid, signum)
    rc = child.wait()
    code = rc if rc >= 0 else 128 - rc
    problems = record_problems(out_dir, before, fingerprint)
    got = f" (signals received: {', '.join(received)})" if received else ""
    if not problems:
        if code != 0:
            say(f"{os.path.basename(argv[0])} exited {code}{got}, but the run's records in {out_dir} are complete: "
                f"exit 0")
        return 0
    if code == 0:
        say(f"{os.path.basename(argv[0])} exited 0{got}, but the run's records are not complete: "
            + "; ".join(problems))
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
