"""Data: the stdlib corpus, the .bin shard format and its errors, deterministic sampling."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.test_trainer_helpers import build_corpus
from trainer.data import (HEADER_BYTES, MAGIC, DataError, TokenStream, build_stdlib_corpus, open_dataset,
                          open_shard, rank_slice, read_shard_header, train_indices, val_indices, write_shard)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


def test_stdlib_corpus_manifest_and_split_by_file(corpus, tmp_path):
    m = json.loads((corpus / "manifest.json").read_text())
    assert m["vocab_size"] == 256 and m["tokens"]["train"] > 1_000_000 and m["tokens"]["val"] > 10_000
    assert not set(m["files"]["train"]) & set(m["files"]["val"])
    assert m["files"]["train"] == sorted(m["files"]["train"])
    assert read_shard_header(corpus / "train.bin") == m["tokens"]["train"]
    # deterministic: a second build elsewhere gives the same bytes
    m2 = build_stdlib_corpus(tmp_path / "again")
    assert m2["sha256"] == m["sha256"] and m2["corpus_sha256"] == m["corpus_sha256"]
    # an existing complete corpus is kept as it is
    assert build_stdlib_corpus(corpus) == m
    ds = open_dataset("stdlib", 64, path=str(corpus))
    assert ds.checksum == m["corpus_sha256"] and ds.vocab_hint == 256


def test_corrupted_corpus_is_refused(corpus, tmp_path):
    d = tmp_path / "c"
    build_stdlib_corpus(d)
    with open(d / "val.bin", "r+b") as f:
        f.seek(HEADER_BYTES + 10)
        f.write(b"\xff\xff")
    with pytest.raises(DataError, match="differs from the manifest"):
        open_dataset("stdlib", 64, path=str(d))
    with pytest.raises(DataError, match="build_corpus.py --out-dir"):
        open_dataset("stdlib", 64, path=str(tmp_path / "nothing"))


def test_shard_round_trip(tmp_path):
    toks = np.arange(1000, dtype=np.int64) % 50257
    write_shard(tmp_path / "a.bin", toks)
    raw = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=256)
    assert (raw[0], raw[1], raw[2]) == (MAGIC, 1, 1000) and not raw[3:].any()
    assert (tmp_path / "a.bin").stat().st_size == 1024 + 2 * 1000
    np.testing.assert_array_equal(open_shard(tmp_path / "a.bin"), toks)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:500], "truncated shard: 500 bytes, less than the 1024-byte header"),
    (lambda b: (20240521).to_bytes(4, "little") + b[4:], "bad magic number 20240521 \\(expected 20240520\\)"),
    (lambda b: b[:4] + (7).to_bytes(4, "little") + b[8:], "unsupported shard version 7"),
    (lambda b: b[:-10], "truncated shard: the header says 100 tokens"),
    (lambda b: b + b"\0\0", "trailing data"),
])
def test_bad_shards_are_clear_errors(tmp_path, damage, message):
    write_shard(tmp_path / "ok.bin", np.arange(100))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage((tmp_path / "ok.bin").read_bytes()))
    with pytest.raises(DataError, match=message) as ei:
        open_shard(bad)
    assert str(bad) in str(ei.value)
    with pytest.raises(DataError, match=message):  # also through a dataset
        open_dataset("bin", 8, train=str(bad), val=str(tmp_path / "ok.bin"))


def test_bin_dataset_errors(tmp_path):
    write_shard(tmp_path / "t.bin", np.arange(100))
    with pytest.raises(DataError, match="no files match"):
        open_dataset("bin", 8, train=str(tmp_path / "none_*.bin"), val=str(tmp_path / "t.bin"))
    with pytest.raises(DataError, match="is the same file as data.train file"):
        open_dataset("bin", 8, train=str(tmp_path / "t.bin"), val=str(tmp_path / "t.bin"))
    with pytest.raises(DataError, match="hold no window of 201 tokens"):
        TokenStream([str(tmp_path / "t.bin")], 201, "data.train")
    from trainer.data import check_vocab
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        check_vocab(np.array([[1, 300]]), 256, "data")


def test_windows_never_cross_shards(tmp_path):
    write_shard(tmp_path / "s0.bin", np.arange(0, 10))
    write_shard(tmp_path / "s1.bin", np.arange(100, 105))  # one window of 5
    write_shard(tmp_path / "s2.bin", np.arange(200, 203))  # too short: no window
    ts = TokenStream([str(tmp_path / f"s{i}.bin") for i in range(3)], 5, "x")
    assert ts.n_windows == 6 + 1
    w = ts.windows(np.arange(7))
    np.testing.assert_array_equal(w[0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(w[5], [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(w[6], [100, 101, 102, 103, 104])


def test_sampling_is_a_function_of_seed_and_step_and_shards_by_rank():
    a = train_indices(42, 7, 32, 10_000)
    np.testing.assert_array_equal(a, train_indices(42, 7, 32, 10_000))
    assert not np.array_equal(a, train_indices(42, 8, 32, 10_000))
    assert not np.array_equal(a, train_indices(43, 7, 32, 10_000))
    # the ranks' slices tile the global batch: the same data on 1, 2 or 4 processes
    for world in (1, 2, 4):
        parts = [a[rank_slice(32, r, world)] for r in range(world)]
        np.testing.assert_array_equal(np.concatenate(parts), a)
    v = val_indices(64, 5000)
    assert v[0] == 0 and v[-1] == 4999 and np.all(np.diff(v) > 0)


@pytest.mark.parametrize("alias", ["symlink", "hardlink", "dotdot", "copy"])
def test_validation_that_is_training_data_is_refused(tmp_path, alias):
    """The same file under another name, or the same content in another file (issue 14, item 6)."""
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    write_shard(tmp_path / "train" / "shard_000.bin", np.arange(500) % 256)
    write_shard(tmp_path / "train" / "shard_001.bin", np.arange(500, 900) % 256)
    src, dst = tmp_path / "train" / "shard_001.bin", tmp_path / "val" / "shard_000.bin"
    val = str(dst)
    if alias == "symlink":
        dst.symlink_to(src)
    elif alias == "hardlink":
        os.link(src, dst)
    elif alias == "dotdot":
        val = str(tmp_path / "val" / ".." / "train" / "shard_001.bin")
    else:
        dst.write_bytes(src.read_bytes())
    want = "has the same content as data.train shard" if alias == "copy" else "is the same file as data.train file"
    with pytest.raises(DataError, match=want) as ei:
        open_dataset("bin", 8, train=str(tmp_path / "train" / "shard_*.bin"), val=val)
    assert str(src) in str(ei.value)
    # held-out data is fine, and the checksum is of the content, not of the names
    write_shard(tmp_path / "heldout.bin", np.arange(300) % 7)
    a = open_dataset("bin", 8, train=str(tmp_path / "train" / "shard_*.bin"), val=str(tmp_path / "heldout.bin"))
    (tmp_path / "moved").mkdir()
    for p in (tmp_path / "train").glob("shard_*.bin"):
        (tmp_path / "moved" / p.name).write_bytes(p.read_bytes())
    b = open_dataset("bin", 8, train=str(tmp_path / "moved" / "shard_*.bin"), val=str(tmp_path / "heldout.bin"))
    assert a.checksum == b.checksum and len(a.checksum) == 64
    write_shard(tmp_path / "moved" / "shard_001.bin", (np.arange(500, 900) + 1) % 256)  # same size, other tokens
    c = open_dataset("bin", 8, train=str(tmp_path / "moved" / "shard_*.bin"), val=str(tmp_path / "heldout.bin"))
    assert c.checksum != a.checksum
