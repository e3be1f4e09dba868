"""Data and models from the Hub (trainer/hub.py, workflow/scripts/fetch_hub.py), with the real huggingface_hub
client against a local stand-in of the Hub (tests/hub_server.py, HF_ENDPOINT=http://127.0.0.1:PORT): no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import hub_assets as A
from tests.hub_server import FakeHub, etag_of

pytest.importorskip("huggingface_hub")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    pytest.importorskip("transformers")
    return A.model_files(tmp_path_factory.mktemp("model"))


@pytest.fixture
def hub():
    with FakeHub() as h:
        h.add("dataset", A.SHARDS_REPO, A.shard_files())
        h.add("dataset", A.TEXT_REPO, A.text_files())
        yield h


def hub_env(hub: FakeHub, cache: Path, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(cache), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_ETAG_TIMEOUT="30", HF_HUB_DOWNLOAD_TIMEOUT="30", PYTHONPATH=str(ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def fetch(hub, cache, out, *args, offline=False):
    r = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/fetch_hub.py"), "--out-dir", str(out), *args],
                       env=hub_env(hub, cache, offline), capture_output=True, text=True, timeout=300)
    return r


def test_shard_set_is_fetched_at_one_commit_and_read_by_the_trainer(hub, tmp_path):
    from trainer.data import open_dataset

    out = tmp_path / "fineweb10B"
    r = fetch(hub, tmp_path / "hf", out, "--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "2")
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["commit"] == hub.repos[("dataset", A.SHARDS_REPO)]["refs"]["main"] and m["revision"] == "main"
    assert [f["name"] for f in m["files"]] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin",
                                               "fineweb_val_000000.bin"]  # shard 3 not asked for
    src = A.shard_files()
    for f in m["files"]:
        assert (out / f["name"]).read_bytes() == src[f["name"]]
        assert f["sha256"] == etag_of(f["name"], src[f["name"]])
    ds = open_dataset("bin", 16, train=m["train"], val=m["val"], checksum=m["content_checksum"])
    want = sum((len(src[n]) - 1024) // 2 for n in ("fineweb_train_000001.bin", "fineweb_train_000002.bin"))
    assert ds.train.n_tokens == want
    assert ds.checksum == m["content_checksum"]
    # the files live in the Hub cache (out_dir holds links), by commit
    assert os.path.islink(out / "fineweb_val_000000.bin")
    assert f"/snapshots/{m['commit']}/" in os.readlink(out / "fineweb_val_000000.bin")


def test_a_download_cut_midway_resumes_with_a_range_request(hub, tmp_path):
    """The connection drops after 11 MiB of a 12 MiB shard (past the client's 10 MiB write chunk, so the first
    part is on disk): the client continues with a Range request for the rest, and the file is whole."""
    name = "fineweb_train_000001.bin"
    files = A.shard_files()
    files[name] = A.shard_bytes(120_000, 5)[: 1024 + 2 * 6_000_000]
    files[name] = np.int32([20240520, 1, 6_000_000]).tobytes() + files[name][12:]
    hub.add("dataset", A.SHARDS_REPO, files)
    hub.cut_once[name] = 11 << 20
    out = tmp_path / "d"
    r = fetch(hub, tmp_path / "hf", out, "--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "1")
    assert r.returncode == 0, r.stderr
    gets = [rng for method, rng in hub.downloads(name) if method == "GET"]
    assert gets[0] is None and len(gets) == 2, gets
    start = int(gets[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 11 << 20, gets  # resumed after what was written, not from the start
    assert (out / name).read_bytes() == files[name]


def test_a_fetch_stopped_midway_fetches_only_the_rest(hub, tmp_path):
    """A fetch that stopped after some files (a failure, a killed job) downloads only the missing ones the
    next time: the complete files are in the cache by commit. (Within a file, the client itself resumes a
    dropped connection, above; this client version restarts a file that a killed process left half done.)"""
    hub.corrupt.add("fineweb_val_000000.bin")  # the last file fails
    args = ["--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "2"]
    assert fetch(hub, tmp_path / "hf", tmp_path / "d", *args).returncode == 2
    hub.corrupt.clear()
    r = fetch(hub, tmp_path / "hf", tmp_path / "d", *args)
    assert r.returncode == 0, r.stderr
    for name, gets in (("fineweb_train_000001.bin", 1), ("fineweb_train_000002.bin", 1), ("fineweb_val_000000.bin", 2)):
        assert [m for m, _ in hub.downloads(name)].count("GET") == gets, (name, hub.downloads(name))


def test_a_wrong_checksum_is_refused_and_removed_from_the_cache(hub, tmp_path):
    hub.corrupt.add("fineweb_val_000000.bin")
    out = tmp_path / "d"
    r = fetch(hub, tmp_path / "hf", out, "--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "1")
    assert r.returncode == 2
    assert "fineweb_val_000000.bin" in r.stderr and "does not match the Hub's sha256" in r.stderr, r.stderr
    assert not (out / "manifest.json").exists()
    blobs = list((tmp_path / "hf" / "hub").rglob("blobs/*"))
    assert etag_of("fineweb_val_000000.bin", A.shard_files()["fineweb_val_000000.bin"]) not in {b.name for b in blobs}
    hub.corrupt.clear()  # the next fetch downloads it again and passes
    assert fetch(hub, tmp_path / "hf", out, "--what", "shards", "--repo", A.SHARDS_REPO,
                 "--train-shards", "1").returncode == 0


def test_offline_with_a_warm_cache_contacts_nothing(hub, tmp_path):
    cache = tmp_path / "hf"
    args = ["--what", "files", "--repo", A.TEXT_REPO, "--file", "sample/10BT/*.parquet"]
    assert fetch(hub, cache, tmp_path / "a", *args).returncode == 0
    n = len(hub.requests)
    r = fetch(hub, cache, tmp_path / "b", *args, offline=True)
    assert r.returncode == 0, r.stderr
    assert len(hub.requests) == n  # not one request
    a, b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in "ab")
    assert a["commit"] == b["commit"] and a["files"] == b["files"]
    assert [f["name"] for f in a["files"]] == [A.TEXT_FILE, "sample/10BT/001_00000.parquet"]
    # a cold cache offline: the message says where to fetch
    r = fetch(hub, tmp_path / "cold", tmp_path / "c", *args, offline=True)
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stderr and "no ref 'main'" in r.stderr


def test_the_manifest_pins_the_commit_a_branch_named(hub, tmp_path):
    """A new commit on main is another data set: its commit and checksum differ; an old commit stays
    fetchable by its hash."""
    cache = tmp_path / "hf"
    args = ["--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "1"]
    assert fetch(hub, cache, tmp_path / "a", *args).returncode == 0
    first = json.loads((tmp_path / "a" / "manifest.json").read_text())
    files = A.shard_files()
    files["fineweb_train_000001.bin"] = A.shard_bytes(40, 999)
    hub.add("dataset", A.SHARDS_REPO, files)
    assert fetch(hub, cache, tmp_path / "b", *args).returncode == 0
    second = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert second["commit"] != first["commit"] and second["content_checksum"] != first["content_checksum"]
    assert fetch(hub, cache, tmp_path / "c", *args, "--revision", first["commit"]).returncode == 0
    again = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert again["content_checksum"] == first["content_checksum"]


def test_errors_name_the_repo_and_file(hub, tmp_path):
    r = fetch(hub, tmp_path / "hf", tmp_path / "d", "--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "9")
    assert r.returncode == 2 and "fineweb_train_000004.bin" in r.stderr, r.stderr
    r = fetch(hub, tmp_path / "hf", tmp_path / "d", "--what", "files", "--repo", "nobody/nothing", "--file", "x")
    assert r.returncode == 2 and "nobody/nothing" in r.stderr and "no such repository" in r.stderr, r.stderr
    r = fetch(hub, tmp_path / "hf", tmp_path / "d", "--what", "files", "--repo", A.TEXT_REPO, "--file", "*.jsonl")
    assert r.returncode == 2 and "no file matches '*.jsonl'" in r.stderr, r.stderr


def test_a_bad_shard_header_is_refused(hub, tmp_path):
    files = A.shard_files()
    bad = bytearray(files["fineweb_val_000000.bin"])
    bad[0:4] = np.int32(12345).tobytes()
    files["fineweb_val_000000.bin"] = bytes(bad)
    hub.add("dataset", A.SHARDS_REPO, files)
    r = fetch(hub, tmp_path / "hf", tmp_path / "d", "--what", "shards", "--repo", A.SHARDS_REPO, "--train-shards", "1")
    assert r.returncode == 2 and "bad magic number 12345" in r.stderr, r.stderr


def test_a_model_is_fetched_and_loaded_from_the_cache_by_commit(hub, tmp_path, model_bytes):
    commit = hub.add("model", A.MODEL_REPO, model_bytes)
    cache = tmp_path / "hf"
    r = fetch(hub, cache, tmp_path / "m", "--what", "model", "--repo", A.MODEL_REPO)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert m["commit"] == commit and m["vocab_size"] == 320 and m["model_type"] == "granitemoehybrid"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f["name"] for f in m["files"]}
    # the trainer, offline (a compute node): the model by its Hub id and commit, from the cache
    code = ("from trainer.hf import HFCausalLM; import torch; "
            f"m = HFCausalLM({A.MODEL_REPO!r}, revision={commit!r}); "
            "print(m.vocab_size, m.source.endswith('/snapshots/' + " + repr(commit) + "), "
            "float(m(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))) > 0)")
    r = subprocess.run([sys.executable, "-c", code], env=hub_env(hub, cache, offline=True), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["320", "True", "True"], r.stdout


def test_pins_carry_commits_and_checksum_and_refuse_a_model_too_small_for_the_data(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"kind": "hub-shards", "train": "d/fineweb_train_*.bin", "val": "d/fineweb_val_*.bin",
                                "content_checksum": "c" * 64}))
    script = str(ROOT / "workflow/scripts/pin_hub.py")
    for vocab, rc in ((50304, 0), (320, 2)):
        model = tmp_path / f"model{vocab}.json"
        model.write_text(json.dumps({"repo": "o/m", "commit": "a" * 40, "vocab_size": vocab}))
        r = subprocess.run([sys.executable, script, "--data", str(data), f"--model=m={model}", "--out",
                            str(tmp_path / f"pins{vocab}.json")], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == rc, r.stderr
    assert json.loads((tmp_path / "pins50304.json").read_text()) == {
        "data": {"kind": "bin", "train": "d/fineweb_train_*.bin", "val": "d/fineweb_val_*.bin", "checksum": "c" * 64},
        "models": {"m": "a" * 40}}
    assert "models.m (o/m@aaaaaaaaaaaa) has 320 token ids, fewer than the data's 50257" in r.stderr
    assert not (tmp_path / "pins320.json").exists()
