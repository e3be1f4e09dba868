"""Atomic records: an interrupted write never leaves a final file, nor a half one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from trainer.records import HISTORY_COLUMNS, atomic_write, read_csv, write_csv, write_json


def test_failed_write_leaves_no_final_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"

    def rows():
        yield {"step": 1, "train_loss": 1.0}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_csv(tmp_path / "history.csv", HISTORY_COLUMNS, rows())
    with pytest.raises(TypeError):
        write_json(target, {"x": object.__new__(type("Unserialisable", (), {"item": None}))})
    assert not (tmp_path / "history.csv").exists()
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_failed_rewrite_keeps_the_previous_complete_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"status": "ok"})

    def boom(f):
        f.write('{"status": "half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"status": "ok"}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_killed_writer_process_leaves_no_final_file(tmp_path):
    """A real process killed (SIGKILL) in the middle of a large write: the final name never appears."""
    target = tmp_path / "history.csv"
    code = (
        "import sys, time\n"
        "from trainer.records import write_csv\n"
        "def rows():\n"
        "    for i in range(10**9):\n"
        "        if i == 1000: print('writing', flush=True)\n"
        "        if i > 1000: time.sleep(0.001)\n"
        "        yield {'step': i, 'train_loss': 1.0}\n"
        f"write_csv({str(target)!r}, ['step', 'train_loss'], rows())\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert not target.exists()
    leftovers = os.listdir(tmp_path)
    assert all(n.startswith(".tmp-history.csv.") for n in leftovers)  # hidden, no rule declares it


def test_json_is_strict_and_csv_round_trips_exactly(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": (1, 2)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.5, None], "c": [1, 2]}
    x = 0.1 + 0.2
    write_csv(tmp_path / "h.csv", ["step", "val_loss", "train_loss"],
              [{"step": 1, "val_loss": None, "train_loss": x}, {"step": 2, "train_loss": float("nan")}])
    rows = read_csv(tmp_path / "h.csv")
    assert rows[0] == {"step": "1", "val_loss": "", "train_loss": repr(x)} and float(rows[0]["train_loss"]) == x
    assert math.isnan(float(rows[1]["train_loss"]))


def test_every_atomic_writer_is_the_one_and_gives_open_s_permissions(tmp_path):
    """The analysis tables and the study's spec files are written by the trainer's atomic writer (one module,
    trainer/atomic.py): a file as readable as a plain open() makes it under the umask, not mkstemp's 0600."""
    import pandas as pd

    from analysis.io import write_csv as write_table
    from study.spec_file import write_spec_file

    old = os.umask(0o022)
    try:
        write_table(pd.DataFrame({"a": [1.5]}), tmp_path / "t" / "table.csv")
        write_spec_file(tmp_path / "s" / "run.spec.json", {"run_id": "x"})
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    for p in (tmp_path / "t" / "table.csv", tmp_path / "s" / "run.spec.json", tmp_path / "m.json"):
        assert oct(p.stat().st_mode & 0o777) == oct(0o644), p
    assert sorted(os.listdir(tmp_path / "t")) == ["table.csv"] and sorted(os.listdir(tmp_path / "s")) == ["run.spec.json"]
