"""Checkpoints: plain data only (a crafted pickle never runs), two kept (a cut latest.pt falls back to the
previous one and the records say so), leftovers of killed saves removed, data checked on resume."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_trainer_helpers import (ROOT, build_corpus, comparable, env, history, metrics, run_train, tiny_spec,
                                        train_cmd)
from trainer import checkpoint as ckpt
from trainer.data import write_shard


class _Payload:
    """What an attacker puts into a pickle: a call that runs when the file is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_raw(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"format_version": 2, "step": 3, "x": _Payload(marker)}, f)


def _crafted_torch(path, marker):
    torch.save({"format_version": 2, "model": {"w": torch.ones(2)}, "x": _Payload(marker)}, path)


def _crafted_memo(path, marker):
    """Hand-written opcodes: the callable's name reaches STACK_GLOBAL through the memo, not inline."""
    import struct

    cmd = f"touch {marker}".encode()
    path.write_bytes(b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93X" + struct.pack("<I", len(cmd)) +
                     cmd + b"\x85R.")


@pytest.mark.parametrize("craft", [_crafted_raw, _crafted_torch, _crafted_memo])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, craft):
    marker = tmp_path / "PWNED"
    craft(tmp_path / "latest.pt", marker)
    with pytest.raises(ckpt.CheckpointUnsafeError, match=r"refusing to load it.*posix.system|system") as ei:
        ckpt.load(tmp_path)
    assert "nothing of it was executed" in str(ei.value) and str(tmp_path / "latest.pt") in str(ei.value)
    assert not marker.exists()
    assert (tmp_path / "latest.pt").exists()  # left as it is, for whoever looks into it


def test_save_stores_plain_data_only_and_rng_round_trips(tmp_path):
    class Opaque:
        pass

    with pytest.raises(ckpt.CheckpointError, match=r"state\['optimizer'\]\['extra'\]\[1\] is a .*Opaque"):
        ckpt.save(tmp_path, {"optimizer": {"extra": [1, Opaque()]}})
    assert not any(tmp_path.iterdir())  # nothing written, not even a temporary

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # a cached gaussian in numpy's state
    state = {"rng": ckpt.rng_state(torch.device("cpu")), "torch": torch.__version__, "n": np.float64(2.5)}
    want = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    ckpt.save(tmp_path, state)
    got_state, events = ckpt.load(tmp_path)
    assert events == [] and got_state["format_version"] == ckpt.FORMAT_VERSION
    assert type(got_state["torch"]) is str and type(got_state["n"]) is float
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    ckpt.set_rng_state(got_state["rng"], torch.device("cpu"))
    got = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]


def test_a_format1_checkpoint_is_not_loaded_and_not_resumed(tmp_path):
    torch.save({"rng": {"numpy": np.random.get_state()}, "torch": torch.__version__, "resume_key": "k"},
               tmp_path / "latest.pt")
    state, events = ckpt.load(tmp_path)
    assert state["format_version"] == 1 and state["resume_key"] != "k" and events == []


@pytest.mark.parametrize("damage", ["zero", "cut", "noise", "plain pickle"])
def test_unreadable_latest_falls_back_to_previous(tmp_path, damage):
    ckpt.save(tmp_path, {"step": 4})
    ckpt.save(tmp_path, {"step": 8})
    p = tmp_path / "latest.pt"
    p.write_bytes({"zero": b"", "cut": p.read_bytes()[:p.stat().st_size // 2], "noise": os.urandom(5000),
                   "plain pickle": pickle.dumps({"step": 8})}[damage])
    state, events = ckpt.load(tmp_path)
    assert state["step"] == 4
    assert len(events) == 1 and events[0]["file"] == "latest.pt" and events[0]["fallback"] == "previous.pt"
    assert not p.exists() and (tmp_path / "latest.pt.bad").exists()  # never rotated into previous.pt
    ckpt.save(tmp_path, {"step": 8})
    assert ckpt.load(tmp_path)[0]["step"] == 8 and ckpt.read(tmp_path / "previous.pt")["step"] == 4


_KILLED_SAVE = """
import os, sys, time, torch
from trainer import checkpoint as ckpt
ckpt.save(sys.argv[1], {"step": 1, "w": torch.ones(10)})
def stuck(fd):  # the second save has written its temporary file; it is killed before the renames
    print("saving", flush=True)
    time.sleep(600)
os.fsync = stuck
ckpt.save(sys.argv[1], {"step": 2, "w": torch.ones(10)})
"""


def test_a_save_killed_midway_leaves_the_last_checkpoint_and_a_temporary_that_is_cleaned(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         env=env(PYTHONPATH=str(ROOT)))
    try:
        assert p.stdout.readline().strip() == "saving"
    finally:
        p.kill()
        p.wait(timeout=30)
    leftovers = list(tmp_path.glob(".tmp-latest.pt.*"))
    assert len(leftovers) == 1 and not (tmp_path / "previous.pt").exists()
    state, events = ckpt.load(tmp_path)
    assert state["step"] == 1 and events == []
    assert ckpt.clean_temporaries(tmp_path) == [leftovers[0].name] and not leftovers[0].exists()


# --------------------------------------------------------------------------- real trainer processes
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


@pytest.mark.slow
def test_trainer_refuses_a_crafted_checkpoint(corpus, tmp_path):
    spec = tiny_spec(corpus, training={"steps": 4}, eval={"every": 0, "at_steps": [4]})
    ck = tmp_path / "evil" / "ckpt"
    ck.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    _crafted_torch(ck / "latest.pt", marker)
    r, out, _ = run_train(spec, tmp_path, "evil")
    assert r.returncode == 2, r.stderr
    assert "refusing to load it" in r.stderr and "posix.system" in r.stderr and str(ck / "latest.pt") in r.stderr
    assert not marker.exists() and not (out / "metrics.json").exists()


@pytest.mark.slow
def test_cut_checkpoint_falls_back_to_previous_and_says_so(corpus, tmp_path):
    """Kept checkpoints of a finished 12-step run (step 12 latest, step 8 previous): with latest.pt cut in
    half, a rerun resumes from step 8, redoes 4 steps to the same numbers, logs the fallback and records
    it in metrics.json; a leftover temporary of a killed save is removed at start."""
    spec = tiny_spec(corpus, training={"steps": 12}, eval={"every": 6, "at_steps": [6, 12]},
                     checkpoint={"every": 4, "keep": True})
    r1, out, ck = run_train(spec, tmp_path, "run")
    assert r1.returncode == 0, r1.stderr
    ref = metrics(out)
    assert ref["checkpoint_fallbacks"] == [] and ref["record_errors"] == []
    assert ckpt.read(ck / "latest.pt")["step"] == 12 and ckpt.read(ck / "previous.pt")["step"] == 8
    size = (ck / "latest.pt").stat().st_size
    (ck / "latest.pt").write_bytes((ck / "latest.pt").read_bytes()[:size // 2])
    (ck / ".tmp-latest.pt.k1ll3d").write_bytes(b"half a save")

    r2, out2, _ = run_train(spec, tmp_path, "run")
    assert r2.returncode == 0, r2.stderr
    assert f"warning: checkpoint {ck / 'latest.pt'} ({size // 2} bytes) cannot be read" in r2.stderr
    assert "falling back to previous.pt" in r2.stderr and "at step 8" in r2.stderr
    assert f"removed {ck / '.tmp-latest.pt.k1ll3d'}" in r2.stderr
    assert not list(ck.glob(".tmp-*"))
    m = metrics(out2)
    [ev] = m["checkpoint_fallbacks"]
    assert ev["file"] == "latest.pt" and ev["size"] == size // 2 and ev["fallback"] == "previous.pt"
    assert ev["resumed_at_step"] == 8
    drop = ("checkpoint_fallbacks",)
    assert {k: v for k, v in comparable(m).items() if k not in drop} == \
        {k: v for k, v in comparable(ref).items() if k not in drop}

    # both files unreadable: a fresh start, recorded as such
    (ck / "latest.pt").write_bytes(b"")
    (ck / "previous.pt").write_bytes(b"")
    r3, out3, _ = run_train(spec, tmp_path, "run")
    assert r3.returncode == 0, r3.stderr
    evs = metrics(out3)["checkpoint_fallbacks"]
    assert [e["file"] for e in evs] == ["latest.pt", "previous.pt"]
    assert all(e["fallback"] == "fresh start" and e["resumed_at_step"] == 0 for e in evs)
    assert len(history(out3)) == 13


@pytest.mark.slow
def test_a_shard_changed_under_a_checkpoint_is_refused(corpus, tmp_path):
    toks = np.frombuffer((corpus / "train.bin").read_bytes()[1024:1024 + 2 * 60_000], dtype="<u2")
    write_shard(tmp_path / "train_000.bin", toks[:50_000])
    write_shard(tmp_path / "val_000.bin", toks[50_000:])
    spec = tiny_spec(corpus, data={"kind": "bin", "train": str(tmp_path / "train_*.bin"),
                                   "val": str(tmp_path / "val_*.bin")},
                     training={"steps": 6}, eval={"every": 0, "at_steps": [6]}, checkpoint={"every": 3, "keep": True})
    del spec["data"]["path"]
    r1, out, ck = run_train(spec, tmp_path, "bin")
    assert r1.returncode == 0, r1.stderr
    assert ckpt.read(ck / "latest.pt")["data_checksum"] == metrics(out)["versions"]["data_checksum"]
    # the same size and header, other tokens (a regenerated shard)
    write_shard(tmp_path / "train_000.bin", toks[:50_000][::-1])
    r2 = subprocess.run(train_cmd(tmp_path / "bin.json", out, ck), env=env(), cwd=tmp_path, capture_output=True,
                        text=True, timeout=180)
    assert r2.returncode == 2, r2.stderr
    assert "the data changed since checkpoint" in r2.stderr and "resuming from" not in r2.stderr
    assert not (out / "metrics.json").exists()


def test_a_flipped_bit_in_latest_falls_back_to_previous(tmp_path):
    """Issue 28.2: torch.load ignores the zip CRCs, so one flipped bit in a tensor resumed silently."""
    ckpt.save(tmp_path, {"step": 4, "w": torch.zeros(50_000)})
    ckpt.save(tmp_path, {"step": 8, "w": torch.zeros(50_000)})
    p = tmp_path / "latest.pt"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x10  # inside the tensor's 200 kB, far from any header
    p.write_bytes(bytes(raw))
    assert torch.load(p, weights_only=True)["w"].abs().sum() > 0  # what torch alone would resume
    state, events = ckpt.load(tmp_path)
    assert state["step"] == 4 and torch.equal(state["w"], torch.zeros(50_000))
    [ev] = events
    assert ev["file"] == "latest.pt" and ev["fallback"] == "previous.pt" and "CRC-32" in ev["error"]
    assert (tmp_path / "latest.pt.bad").exists()
