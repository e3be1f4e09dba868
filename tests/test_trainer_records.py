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
