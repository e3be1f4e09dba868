"""The text data stage (trainer/textprep.py, trainer/tokenizer.py, workflow/scripts/prepare_text.py):
inputs, tokenizers, the split, the shards read back by trainer/data.py, the manifest and its errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data import DataError, MAGIC_U32, open_dataset, open_shard, shard_info, shards_checksum, write_shard
from trainer.spec import RunSpec, SpecError
from trainer.textprep import (PrepConfig, data_checksum, is_val, load_manifest, prepare, spec_data,
                              verify_manifest)
from trainer.tokenizer import (TokenizerError, check_vocab_fits, load_tokenizer, model_vocab_size, parse_tokenizer,
                               tiktoken_cache_name, tokenizer_vocab_size)

tokenizers = pytest.importorskip("tokenizers")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the quick brown fox jumps over the lazy dog while a muon optimizer orthogonalizes its momentum "
         "and the model learns from text that the data stage tokenizes into shards").split()
R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"


def docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 20)))) + f" é{i}." for i in range(n)]


def write_jsonl(path: Path, texts, key="text") -> Path:
    path.write_text("".join(json.dumps({key: t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def write_parquet(path: Path, texts, column="text") -> Path:
    pq.write_table(pa.table({column: list(texts), "n": list(range(len(texts)))}), path, row_group_size=7)
    return path


@pytest.fixture(scope="module")
def tok_json(tmp_path_factory) -> Path:
    """A small BPE tokenizer.json trained here with `tokenizers` itself (not through the code under test)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(docs(200, 1), trainer=tr)
    p = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(str(p))
    return p


def expected_streams(texts, encode, eot: int, seed: int, val_fraction: float):
    """[eot] + ids per document, routed by the split rule, concatenated in input order."""
    out = {"train": [], "val": []}
    for t in texts:
        out["val" if is_val(t, seed, val_fraction) else "train"].extend([eot] + list(encode(t)))
    return out


def read_split(manifest: dict, split: str) -> np.ndarray:
    d = Path(manifest[split]).parent
    return np.concatenate([np.asarray(open_shard(d / s["file"])) for s in manifest["shards"][split]])


def prep(tmp_path, inputs, tokenizer, name="out", **kw) -> dict:
    kw.setdefault("val_fraction", 0.2)
    kw.setdefault("progress", False)
    return prepare(PrepConfig(inputs=[str(i) for i in inputs], out_dir=str(tmp_path / name), tokenizer=tokenizer,
                              **kw))


# --------------------------------------------------------------------------- formats x tokenizer
@pytest.mark.parametrize("fmt", ["txt-file", "txt-line", "txt-paragraph", "jsonl", "parquet"])
def test_each_format_reads_back_to_the_tokenizers_ids(tmp_path, tok_json, fmt):
    from tokenizers import Tokenizer

    texts = docs(60)
    if fmt == "txt-file":
        inputs = []
        for i, t in enumerate(texts):
            (tmp_path / f"d{i:03d}.txt").write_text(t, encoding="utf-8")
        inputs, kw = [tmp_path / "d*.txt"], {"txt_mode": "file"}
    elif fmt == "txt-line":
        (tmp_path / "a.txt").write_text("\n".join(texts[:30]) + "\n\n", encoding="utf-8")  # a blank line: skipped
        (tmp_path / "b.txt").write_text("\n".join(texts[30:]), encoding="utf-8")
        inputs, kw = [tmp_path / "a.txt", tmp_path / "b.txt"], {"txt_mode": "line"}
    elif fmt == "txt-paragraph":
        # paragraphs of two lines each
        paras = [texts[i] + "\n" + texts[i + 1] for i in range(0, 60, 2)]
        (tmp_path / "p.txt").write_text("\n\n\n".join(paras) + "\n", encoding="utf-8")
        texts, inputs, kw = paras, [tmp_path / "p.txt"], {"txt_mode": "paragraph"}
    elif fmt == "jsonl":
        inputs = [write_jsonl(tmp_path / "a.jsonl", texts[:25]), write_jsonl(tmp_path / "b.jsonl", texts[25:])]
        kw = {}
    else:
        inputs, kw = [write_parquet(tmp_path / "a.parquet", texts)], {}
    m = prep(tmp_path, inputs, f"json:{tok_json}", shard_tokens=97, **kw)
    tok = Tokenizer.from_file(str(tok_json))
    eot = tok.token_to_id("<|endoftext|>")
    want = expected_streams(texts, lambda t: tok.encode(t, add_special_tokens=False).ids, eot, 1234, 0.2)
    for split in ("train", "val"):
        got = read_split(m, split)
        np.testing.assert_array_equal(got, np.array(want[split]))
        assert m["tokens"][split] == len(want[split])
        assert all(s["tokens"] == 97 for s in m["shards"][split][:-1]) and 0 < m["shards"][split][-1]["tokens"] <= 97
    assert m["documents"]["train"] + m["documents"]["val"] == len(texts)
    assert m["documents"]["val"] == sum(is_val(t, 1234, 0.2) for t in texts) > 0
    assert m["vocab_size"] == max(tok.get_vocab().values()) + 1 and m["dtype"] == "uint16"
    assert m["tokenizer"]["sha256"] == hashlib.sha256(tok_json.read_bytes()).hexdigest()
    # the trainer's reader takes the manifest's globs, and its checksum check passes
    ds = open_dataset("bin", 8, train=m["train"], val=m["val"], checksum=m["content_checksum"])
    assert ds.checksum == m["content_checksum"] and ds.train.n_tokens == m["tokens"]["train"]


def test_hf_model_dir_uses_its_tokenizer_and_eos(tmp_path, tok_json):
    from tokenizers import Tokenizer

    d = tmp_path / "granite"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(tok_json.read_bytes())
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 384}))
    tok = Tokenizer.from_file(str(tok_json))
    eos = tok.id_to_token(5)  # a model may name any token its eos: it wins over the <|endoftext|> guess
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": eos}}))
    texts = docs(40)
    m = prep(tmp_path, [write_jsonl(tmp_path / "a.jsonl", texts)], f"hf:{d}", model_vocab=model_vocab_size(f"hf:{d}"))
    assert m["tokenizer"]["kind"] == "hf" and m["tokenizer"]["eot"] == {"token": eos, "id": 5}
    want = expected_streams(texts, lambda t: tok.encode(t, add_special_tokens=False).ids, 5, 1234, 0.2)
    np.testing.assert_array_equal(read_split(m, "train"), want["train"])
    assert model_vocab_size(d) == 384 and tokenizer_vocab_size(f"hf:{d}") == m["vocab_size"]


def test_bpe_trained_on_the_corpus_is_reproducible_and_never_sees_validation(tmp_path):
    texts = docs(120)
    inp = [write_parquet(tmp_path / "a.parquet", texts)]
    m1 = prep(tmp_path, inp, "bpe:300", name="one")
    m2 = prep(tmp_path, inp, "bpe:300", name="two")
    assert m1["tokenizer"]["sha256"] == m2["tokenizer"]["sha256"]
    assert m1["content_checksum"] == m2["content_checksum"]
    assert 257 < m1["vocab_size"] <= 300 and m1["tokenizer"]["eot"] == {"token": "<|endoftext|>", "id": 0}
    tok = load_tokenizer(f"json:{tmp_path / 'one' / 'tokenizer.json'}")
    want = expected_streams(texts, tok.encode, 0, 1234, 0.2)
    np.testing.assert_array_equal(read_split(m1, "val"), want["val"])
    # the BPE is trained on the training documents only: adding validation documents' text does not change it
    val_docs = [t for t in texts if is_val(t, 1234, 0.2)]
    extra = [t + " zyzzyva" * 5 for t in val_docs]
    extra = [t for t in extra if is_val(t, 1234, 0.2)]
    assert extra
    m3 = prep(tmp_path, [write_parquet(tmp_path / "b.parquet", texts + extra)], "bpe:300", name="three")
    assert m3["tokenizer"]["sha256"] == m1["tokenizer"]["sha256"]
    with pytest.raises(TokenizerError, match="tokenizer.vocab_size = 100: an integer >= 257"):
        parse_tokenizer("bpe:100")


# --------------------------------------------------------------------------- tiktoken, offline
def _tiktoken_file(path: Path) -> Path:
    import base64

    ranks = [bytes([b]) for b in range(256)] + [b"th", b"the", b" the", b" t", b"he"]
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(ranks)))
    return path


def test_tiktoken_local_file_encodes_with_its_merges(tmp_path):
    f = _tiktoken_file(tmp_path / "mini.tiktoken")
    tok = load_tokenizer(f"tiktoken:{f}")
    assert tok.vocab_size == 262 and tok.eot_id == 261  # <|endoftext|> after the 261 ranks
    assert tok.encode("the") == [257] and tok.encode(" the") == [258] and tok.encode("ab") == [97, 98]
    assert tok.encode("<|endoftext|>")[0] == ord("<")  # special-token text in a document is plain text
    texts = docs(30)
    m = prep(tmp_path, [write_jsonl(tmp_path / "a.jsonl", texts)], f"tiktoken:{f}")
    want = expected_streams(texts, tok.encode, 261, 1234, 0.2)
    np.testing.assert_array_equal(read_split(m, "train"), want["train"])
    np.testing.assert_array_equal(read_split(m, "val"), want["val"])


def test_tiktoken_named_encoding_comes_from_the_cache_only(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    name = hashlib.sha1(R50K_URL.encode()).hexdigest()
    assert tiktoken_cache_name(R50K_URL) == name
    with pytest.raises(TokenizerError) as e:
        load_tokenizer("tiktoken:r50k_base")
    msg = str(e.value)
    assert "TIKTOKEN_CACHE_DIR" in msg and name in msg and R50K_URL in msg and "nothing is downloaded" in msg
    # a file in the cache format at the name tiktoken expects is found; a wrong one is refused and kept
    cache.mkdir()
    _tiktoken_file(cache / name)
    with pytest.raises(TokenizerError, match=f"{cache / name}: the tiktoken cache file .* not the expected"):
        load_tokenizer("tiktoken:r50k_base")
    assert (cache / name).exists()
    with pytest.raises(TokenizerError, match="not a tiktoken encoding; known: .*cl100k_base"):
        load_tokenizer("tiktoken:no_such_encoding")


# --------------------------------------------------------------------------- errors, one clear message each
def test_parquet_without_the_column(tmp_path, tok_json):
    p = write_parquet(tmp_path / "a.parquet", docs(5), column="content")
    with pytest.raises(DataError, match=r"a\.parquet: no column 'text' \(columns: \['content', 'n'\]\)"):
        prep(tmp_path, [p], f"json:{tok_json}")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match="b.parquet: column 'text' has type int64, not a string column"):
        prep(tmp_path, [tmp_path / "b.parquet"], f"json:{tok_json}")


def test_empty_file(tmp_path, tok_json):
    write_jsonl(tmp_path / "a.jsonl", docs(20))
    (tmp_path / "b.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"b\.txt: empty: no document in it \(0 bytes\)"):
        prep(tmp_path, [tmp_path / "a.jsonl", tmp_path / "b.txt"], f"json:{tok_json}")
    write_jsonl(tmp_path / "c.jsonl", ["", ""])
    with pytest.raises(DataError, match=r"c\.jsonl: empty: no document"):
        prep(tmp_path, [tmp_path / "c.jsonl"], f"json:{tok_json}")


def test_non_utf8_file(tmp_path, tok_json):
    (tmp_path / "a.txt").write_bytes("caf\u00e9 ok\n".encode() + "na\u00efve\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.txt: not UTF-8 text \(line 2, byte offset 11"):
        prep(tmp_path, [tmp_path / "a.txt"], f"json:{tok_json}", txt_mode="line")
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl: not UTF-8 text \(line 2"):
        prep(tmp_path, [tmp_path / "b.jsonl"], f"json:{tok_json}")


def test_jsonl_without_the_key(tmp_path, tok_json):
    p = write_jsonl(tmp_path / "a.jsonl", docs(3), key="body")
    with pytest.raises(DataError, match=r"a\.jsonl: line 1: no key 'text' \(keys: \['body', 'id'\]\)"):
        prep(tmp_path, [p], f"json:{tok_json}")


def test_vocabulary_mismatch_is_refused_before_any_text(tmp_path, tok_json):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"vocab_size": 300}))
    n = tokenizer_vocab_size(f"json:{tok_json}")
    assert n > 300
    with pytest.raises(TokenizerError, match=rf"vocabulary mismatch: .*json:.*tokenizer.json \({n}\).*model.vocab_size "
                                             rf"= 300"):
        check_vocab_fits(f"json:{tok_json}", model_vocab_size(d))
    check_vocab_fits(f"json:{tok_json}", n)  # equal is fine, larger is fine
    with pytest.raises(TokenizerError, match="vocabulary mismatch"):
        prep(tmp_path, [write_jsonl(tmp_path / "a.jsonl", docs(5))], f"json:{tok_json}", model_vocab=300)
    assert not (tmp_path / "out").exists()  # refused before anything was written
    (d / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(TokenizerError, match=r"config\.json: no positive integer 'vocab_size'"):
        model_vocab_size(f"hf:{d}")


def test_cli_reports_a_bad_input_with_exit_code_2(tmp_path, tok_json):
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe")
    r = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/prepare_text.py"), "--input",
                        str(tmp_path / "a.txt"), "--out-dir", str(tmp_path / "o"), "--tokenizer", f"json:{tok_json}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "a.txt: not UTF-8 text" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


# --------------------------------------------------------------------------- split, checksum, atomicity
def test_split_is_deterministic_and_independent_of_workers(tmp_path, tok_json):
    texts = docs(200)
    inp = [write_jsonl(tmp_path / "a.jsonl", texts[:120]), write_parquet(tmp_path / "b.parquet", texts[120:])]
    m1 = prep(tmp_path, inp, f"json:{tok_json}", name="w1", shard_tokens=500)
    m2 = prep(tmp_path, inp, f"json:{tok_json}", name="w2", shard_tokens=500, workers=2)
    assert m1["content_checksum"] == m2["content_checksum"] and m1["shards"] == m2["shards"]
    assert m1["documents"] == m2["documents"]
    m3 = prep(tmp_path, inp, f"json:{tok_json}", name="s7", shard_tokens=500, seed=7)
    assert m3["content_checksum"] != m1["content_checksum"]
    assert 20 <= m1["documents"]["val"] <= 60  # about 0.2 of 200
    # the same text lands in the same split whatever its position or file
    assert [is_val(t, 1234, 0.2) for t in texts] == [is_val(t, 1234, 0.2) for t in list(texts)]


def test_rerun_same_checksum_stale_shards_removed_and_failed_run_leaves_no_manifest(tmp_path, tok_json):
    inp = [write_jsonl(tmp_path / "a.jsonl", docs(80))]
    m1 = prep(tmp_path, inp, f"json:{tok_json}", shard_tokens=50)
    assert len(m1["shards"]["train"]) > 3
    m2 = prep(tmp_path, inp, f"json:{tok_json}", shard_tokens=50)
    assert m2["content_checksum"] == m1["content_checksum"] == data_checksum(tmp_path / "out" / "manifest.json")
    m3 = prep(tmp_path, inp, f"json:{tok_json}", shard_tokens=10_000)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.bin")) == ["train_000000.bin", "val_000000.bin"]
    assert verify_manifest(tmp_path / "out")["content_checksum"] == m3["content_checksum"] != m1["content_checksum"]
    assert spec_data(tmp_path / "out") == {"kind": "bin", "train": str(tmp_path / "out" / "train_*.bin"),
                                           "val": str(tmp_path / "out" / "val_*.bin"),
                                           "checksum": m3["content_checksum"]}
    # a run that fails midway (a bad second file) leaves no manifest, and no old shards under the globs
    (tmp_path / "bad.txt").write_bytes(b"\xff")
    with pytest.raises(DataError, match="bad.txt: not UTF-8"):
        prep(tmp_path, inp + [tmp_path / "bad.txt"], f"json:{tok_json}", shard_tokens=50)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(DataError, match="no manifest"):
        load_manifest(tmp_path / "out")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_changed_shards_are_refused(tmp_path, tok_json):
    m = prep(tmp_path, [write_jsonl(tmp_path / "a.jsonl", docs(40))], f"json:{tok_json}")
    train = tmp_path / "out" / "train_000000.bin"
    raw = bytearray(train.read_bytes())
    raw[-2:] = b"\x01\x00"
    train.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"data.checksum: the shards matching .* not the spec's"):
        open_dataset("bin", 8, train=m["train"], val=m["val"], checksum=m["content_checksum"])
    with pytest.raises(DataError, match="the shards changed"):
        verify_manifest(tmp_path / "out")
    # without a checksum in the spec the bin kind works as before (names and sizes only)
    assert open_dataset("bin", 8, train=m["train"], val=m["val"]).checksum != m["content_checksum"]


# --------------------------------------------------------------------------- large vocabularies: uint32 shards
def test_large_vocabulary_writes_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    t = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2, "<|endoftext|>": 69_999, "big": 70_000},
                                   unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.save(str(tmp_path / "w.json"))
    texts = [" ".join(["a", "big", "b", "zz"][: 1 + i % 4] * (1 + i % 3)) + f" w{i}" for i in range(60)]
    m = prep(tmp_path, [write_jsonl(tmp_path / "a.jsonl", texts)], f"json:{tmp_path / 'w.json'}")
    assert m["dtype"] == "uint32" and m["vocab_size"] == 70_001
    shard = tmp_path / "out" / "train_000000.bin"
    assert int(np.fromfile(shard, dtype="<i4", count=1)[0]) == MAGIC_U32 and shard_info(shard)[1] == "<u4"
    want = expected_streams(texts, lambda s: t.encode(s).ids, 69_999, 1234, 0.2)
    np.testing.assert_array_equal(read_split(m, "train"), want["train"])
    assert read_split(m, "train").max() == 70_000
    ds = open_dataset("bin", 4, train=m["train"], val=m["val"], checksum=m["content_checksum"])
    assert ds.train.windows(np.array([0]))[0].max() <= 70_000
    with pytest.raises(DataError, match=r"tokens must lie in \[0, 65535\] for the uint16"):
        write_shard(tmp_path / "x.bin", [70_000])


def test_shards_checksum_covers_names_and_bytes(tmp_path):
    a, b = tmp_path / "train_000000.bin", tmp_path / "val_000000.bin"
    sa, sb = write_shard(a, [1, 2, 3]), write_shard(b, [4])
    assert sa == hashlib.sha256(a.read_bytes()).hexdigest()
    c = shards_checksum([str(a)], [str(b)])
    lines = f"train\ttrain_000000.bin\t{sa}\nval\tval_000000.bin\t{sb}\n"
    assert c == hashlib.sha256(lines.encode()).hexdigest()
    assert shards_checksum([str(b)], [str(a)]) != c


# --------------------------------------------------------------------------- the run spec
def test_spec_data_checksum_field():
    from tests.test_trainer_helpers import tiny_spec

    s = tiny_spec(Path("x"))
    s["data"] = {"kind": "bin", "train": "d/train_*.bin", "val": "d/val_*.bin"}
    plain = RunSpec.from_dict(s)
    assert "checksum" not in plain.to_dict()["data"]  # specs without it keep their fingerprints
    s["data"]["checksum"] = "ab" * 32
    with_sum = RunSpec.from_dict(s)
    assert with_sum.data.checksum == "ab" * 32 and with_sum.to_dict()["data"]["checksum"] == "ab" * 32
    assert with_sum.local_fingerprint() != plain.local_fingerprint()
    s["data"]["checksum"] = "xyz"
    with pytest.raises(SpecError, match="data.checksum = 'xyz': 64 lowercase hex digits"):
        RunSpec.from_dict(s)
    s["data"] = {"kind": "stdlib", "path": "p", "checksum": "ab" * 32}
    with pytest.raises(SpecError, match="data.checksum .*only for data.kind 'bin'"):
        RunSpec.from_dict(s)


def test_stdlib_input_offline_bpe(tmp_path):
    import sysconfig

    src = Path(sysconfig.get_paths()["stdlib"]) / "json"
    files = sorted(p for p in src.glob("*.py"))
    m = prep(tmp_path, ["stdlib:json"], "bpe:400", val_fraction=0.5)
    tok = load_tokenizer(f"json:{tmp_path / 'out' / 'tokenizer.json'}")
    texts = [p.read_text(encoding="utf-8") for p in files]
    want = expected_streams([t for t in texts if t.strip()], tok.encode, 0, 1234, 0.5)
    np.testing.assert_array_equal(read_split(m, "train"), want["train"])
    assert m["documents"]["train"] + m["documents"]["val"] == len(files)
    with pytest.raises(DataError, match="'stdlib:no_such_pkg': no .py files under"):
        prep(tmp_path, ["stdlib:no_such_pkg"], "bpe:400")


@pytest.mark.slow
def test_trainer_runs_on_prepared_shards_and_refuses_changed_ones(tmp_path, tok_json):
    """A real (2-step) run: data.checksum reaches the trainer, is recorded, and a changed shard stops it."""
    from tests.test_trainer_helpers import metrics, run_train, tiny_spec

    m = prep(tmp_path, [write_jsonl(tmp_path / "a.jsonl", docs(300))], f"json:{tok_json}")
    spec = tiny_spec(tmp_path, model={"vocab_size": m["vocab_size"]}, training={"steps": 2, "warmup_steps": 0},
                     eval={"every": 2, "batches": 1, "at_steps": [2], "target_losses": []})
    spec["data"] = spec_data(tmp_path / "out")
    r, out, _ = run_train(spec, tmp_path, "ok")
    assert r.returncode == 0, r.stderr[-2000:]
    assert metrics(out)["versions"]["data_checksum"] == m["content_checksum"]
    with open(tmp_path / "out" / "val_000000.bin", "r+b") as f:  # a valid shard with other content
        f.seek(-2, 2)
        f.write(b"\x07\x00")
    r, out, _ = run_train(spec, tmp_path, "bad")
    assert r.returncode == 2 and "data.checksum: the shards matching" in r.stderr, r.stderr[-2000:]
    assert not (out / "metrics.json").exists()


def test_study_data_section_to_config_and_cli(tmp_path, tok_json):
    from trainer.textprep import cli_args, prep_config

    d = {"kind": "text", "inputs": [str(tmp_path / "*.jsonl")], "tokenizer": f"json:{tok_json}",
         "val_fraction": 0.25, "seed": 3, "shard_tokens": 64}
    cfg = prep_config(d, str(tmp_path / "o"), workers=1)
    assert (cfg.val_fraction, cfg.seed, cfg.shard_tokens, cfg.text_field) == (0.25, 3, 64, "text")
    write_jsonl(tmp_path / "a.jsonl", docs(50))
    r = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/prepare_text.py"), *cli_args(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from_cli = data_checksum(tmp_path / "o")
    assert from_cli in r.stdout and prepare(cfg)["content_checksum"] == from_cli  # the CLI and the API agree
    with pytest.raises(DataError) as e:
        prep_config({"kind": "text", "input": "x", "tokenizer": "bpe:10", "val_fraction": 1.5}, "o")
    msg = str(e.value)
    assert "data.input = 'x': an unknown key" in msg and "data.inputs: required" in msg
    assert "data.val_fraction = 1.5: a number between 0 and 1" in msg and "data.tokenizer.vocab_size = 10" in msg


def test_the_stage_reruns_when_any_of_its_settings_changes(tmp_path, tok_json):
    """Issue 28 item 3: under a fixed data.name the rule re-ran only when its text files changed, so a new
    tokenizer.json, bpe:300 -> bpe:400 or another val_fraction trained on the old shards. Every setting
    is tracked now; the dry run names the stage for each change and nothing for a change of workers."""
    from tests.workflow_helpers import copy_workflow, snakemake, write_config

    wf = copy_workflow(tmp_path / "wf")
    write_jsonl(wf / "docs.jsonl", docs(120))
    tok = wf / "tok.json"
    tok.write_bytes(Path(tok_json).read_bytes())
    base = {"data": {"kind": "text", "name": "fixed", "inputs": "docs.jsonl", "tokenizer": "bpe:300",
                     "val_fraction": 0.2}}
    manifest = "results/data/fixed/manifest.json"

    def plan(data: dict) -> str:
        cfg = write_config(wf / "over.yaml", {"data": {**base["data"], **data}})
        r = snakemake(wf, manifest, "-n", "--config", "tiny=true", "--configfile", str(cfg))
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr

    cfg = write_config(wf / "over.yaml", base)
    r = snakemake(wf, manifest, "--cores", "1", "--config", "tiny=true", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in plan({})
    for change in ({"tokenizer": "bpe:400"}, {"val_fraction": 0.3}, {"seed": 7}, {"text_field": "text", "shard_tokens": 5000}):
        assert "prepare_text" in plan(change), change
    # a json tokenizer: the file's content is tracked, not only its path
    cfg = write_config(wf / "over.yaml", {"data": {**base["data"], "tokenizer": "json:tok.json"}})
    r = snakemake(wf, manifest, "--cores", "1", "--config", "tiny=true", "--configfile", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in plan({"tokenizer": "json:tok.json"})
    info = json.loads(tok.read_text())
    info["model"]["vocab"]["zzzq"] = max(info["model"]["vocab"].values()) + 1  # a new token: another file
    tok.write_text(json.dumps(info))
    assert "prepare_text" in plan({"tokenizer": "json:tok.json"})
