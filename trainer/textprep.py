"""The data stage: the user's text -> nanoGPT .bin shards (trainer/data.py's format) and a manifest.

    prepare(PrepConfig(inputs=["corpus/*.parquet"], out_dir="results/data/fineweb", tokenizer="tiktoken:gpt2"))

Inputs are files or globs of `.txt` (one document per file, per line or per blank-line paragraph:
txt_mode), `.jsonl` (one JSON object per line, the document in text_field) or `.parquet` (the
document in column text_field; pyarrow). Empty documents and null values are skipped and counted; a
file with no document at all, a non-UTF-8 file, a missing key or column is a DataError naming the file
(and line). The input `stdlib` names the embedded corpus: the .py files of this Python's standard library
(trainer/data.py's list; `stdlib:email` one package of it), one document per file (empty and non-UTF-8 files skipped and counted), so a
BPE of the CPU twins needs no download.

Documents. Each document becomes [eot] + tokenizer.encode(text) (no other special tokens), as in
nanoGPT's fineweb.py. A document goes to validation when the first 8 bytes of
sha256(seed as 8 bytes little-endian + its UTF-8 text), read as an integer, fall below
val_fraction * 2**64: a pure function of (seed, text), so the split does not depend on file order,
worker count or batch size, and identical documents never straddle train and validation.
The documents of a split are concatenated in input order (files in the order given, each glob sorted)
and cut into shards of shard_tokens tokens (the last one shorter): `train_000000.bin`, ...,
`val_000000.bin`, ... A document may continue in the next shard (windows never cross shards).

Tokenizers (trainer/tokenizer.py): json:, hf:, tiktoken: (offline), or bpe:N trained first on the
training documents (in input order, up to bpe_train_bytes characters) and written to out_dir/tokenizer.json.
Tokens are uint16 when the vocabulary has at most 65536 ids, else uint32 (llm.c's magic 20240801).

Atomicity. A run first removes the old manifest.json, then the shards of an earlier run; every shard is
written to a temporary file and renamed; manifest.json is written last. So a complete manifest means a
complete shard set, and a killed run leaves no manifest. The manifest's content_checksum
(trainer.data.shards_checksum: the shard names and their sha256) identifies the data: a run spec gives
it as data.checksum, the trainer checks the shards against it, and it enters the run's fingerprint.
"""

from __future__ import annotations

import collections
import glob as _glob
import hashlib
import json
import multiprocessing
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from trainer.data import DataError, _sha256_file, _stdlib_files, shards_checksum, write_shard
from trainer.records import write_json
from trainer.tokenizer import (TokenizerConfig, TokenizerError, check_vocab_fits, load_tokenizer, parse_tokenizer,
                               train_bpe)

TEXTPREP_VERSION = 1
FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
TXT_MODES = ("file", "line", "paragraph")
STDLIB_INPUT = "stdlib"  # an input naming the embedded corpus (the .py files of this Python's standard library)
MANIFEST = "manifest.json"
TRAINED_TOKENIZER = "tokenizer.json"
U16_MAX_VOCAB = 65536
_BATCH_DOCS = 512
_BATCH_CHARS = 1 << 20


@dataclass
class PrepConfig:
    inputs: list[str]  # files or globs
    out_dir: str
    tokenizer: Any  # 'json:PATH' | 'hf:DIR' | 'tiktoken:NAME' | 'bpe:N' (or the object form)
    text_field: str = "text"  # jsonl key / parquet column
    txt_mode: str = "file"  # .txt documents: the whole file, each line, or blank-line paragraphs
    val_fraction: float = 0.01
    seed: int = 1234
    shard_tokens: int = 100_000_000  # modded-nanogpt's shard size
    workers: int = 1
    eot: str | None = None  # the document separator token; None: the tokenizer's end-of-text token
    bpe_train_bytes: int = 1 << 30  # bpe:N trains on at most this many characters of training documents
    model_vocab: int | None = None  # refuse a tokenizer with more ids than this (the model's vocabulary)
    progress: bool = True
    extra: dict = field(default_factory=dict)  # recorded in the manifest as given (e.g. the study's name)


# --------------------------------------------------------------------------- inputs
def resolve_inputs(patterns: list[str]) -> list[tuple[str, str]]:
    """[(path, format)]: each pattern a file or a glob (sorted), in the order given, duplicates dropped."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise DataError("inputs: no input files or globs given")
    out, seen = [], set()
    for pat in patterns:
        if pat == STDLIB_INPUT or str(pat).startswith(STDLIB_INPUT + ":"):
            # the embedded corpus: this Python's standard library (or one package of it: stdlib:email)
            src = Path(sysconfig.get_paths()["stdlib"]).resolve()
            sub = src / str(pat)[len(STDLIB_INPUT) + 1:] if ":" in str(pat) else src
            found = [str(sub / rel) for rel in _stdlib_files(sub)] if sub.is_dir() else []
            if not found:
                raise DataError(f"inputs: {pat!r}: no .py files under {sub}")
            out.extend((f, "stdlib") for f in found if f not in seen)
            seen.update(found)
            continue
        pat = os.path.expanduser(str(pat))
        if os.path.isdir(pat):
            raise DataError(f"inputs: {pat} is a directory; name its files with a glob, e.g. {pat}/*.parquet")
        paths = [pat] if os.path.isfile(pat) else sorted(p for p in _glob.glob(pat, recursive=True) if os.path.isfile(p))
        if not paths:
            raise DataError(f"inputs: no files match {pat!r} (cwd {os.getcwd()})")
        for p in paths:
            fmt = FORMATS.get(Path(p).suffix.lower())
            if fmt is None:
                raise DataError(f"{p}: unknown input format {Path(p).suffix!r}; one of {sorted(FORMATS)}")
            if os.path.realpath(p) not in seen:
                seen.add(os.path.realpath(p))
                out.append((p, fmt))
    return out


def _decode(raw: bytes, path: str, line: int | None, base: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line if line is not None else raw.count(b"\n", 0, e.start) + 1
        where = f"line {line}, "
        raise DataError(f"{path}: not UTF-8 text ({where}byte offset {base + e.start}: {e.reason}); convert it, "
                        f"e.g. iconv -f latin1 -t utf-8, or leave it out") from None


def iter_documents(path: str, fmt: str, text_field: str = "text", txt_mode: str = "file",
                   counts: dict | None = None) -> Iterator[str]:
    """The documents of one input file, in order; empty ones (and nulls) skipped and counted in counts."""
    counts = counts if counts is not None else {}
    counts.setdefault("empty_skipped", 0)
    counts.setdefault("null_skipped", 0)
    n = 0
    if fmt == "txt":
        if txt_mode not in TXT_MODES:
            raise DataError(f"txt_mode = {txt_mode!r}: one of {list(TXT_MODES)}")
        if txt_mode == "file":
            with open(path, "rb") as f:
                text = _decode(f.read(), path, None)
            docs = [text]
        else:
            docs = _txt_units(path, txt_mode)
        for d in docs:
            if d.strip():
                n += 1
                yield d
            elif d:
                counts["empty_skipped"] += 1
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, 1):
                line = _decode(raw, path, lineno, offset)
                offset += len(raw)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {lineno}: not JSON ({e.msg}); .jsonl holds one JSON object "
                                    f"per line") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}: line {lineno}: a JSON {type(obj).__name__}, not an object with "
                                    f"the key {text_field!r}")
                if text_field not in obj:
                    raise DataError(f"{path}: line {lineno}: no key {text_field!r} (keys: {sorted(obj)[:20]}); "
                                    f"name the text key with text_field (--text-field)")
                v = obj[text_field]
                if v is None:
                    counts["null_skipped"] += 1
                    continue
                if not isinstance(v, str):
                    raise DataError(f"{path}: line {lineno}: key {text_field!r} holds a {type(v).__name__}, "
                                    f"not a string")
                if not v:
                    counts["empty_skipped"] += 1
                    continue
                n += 1
                yield v
    elif fmt == "stdlib":  # a standard-library file: skipped (and counted) when empty or not UTF-8
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            counts["non_utf8_skipped"] = counts.get("non_utf8_skipped", 0) + 1
            return
        if text.strip():
            yield text
        else:
            counts["empty_skipped"] += 1
        return
    elif fmt == "parquet":
        for v in _parquet_texts(path, text_field):
            if v is None:
                counts["null_skipped"] += 1
            elif not v:
                counts["empty_skipped"] += 1
            else:
                n += 1
                yield v
    else:
        raise DataError(f"{path}: unknown format {fmt!r}; one of {sorted(set(FORMATS.values()))}")
    if n == 0:
        size = os.path.getsize(path)
        raise DataError(f"{path}: empty: no document in it ({size} bytes"
                        + (f"; {counts['empty_skipped']} empty / {counts['null_skipped']} null skipped so far"
                           if size else "") + "); remove it from the inputs")


def _txt_units(path: str, mode: str) -> Iterator[str]:
    para: list[str] = []
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, lineno, offset)
            offset += len(raw)
            if mode == "line":
                yield line.rstrip("\r\n")
            elif line.strip():
                para.append(line)
            elif para:
                yield "".join(para).rstrip("\r\n")
                para = []
    if para:
        yield "".join(para).rstrip("\r\n")


def _parquet_texts(path: str, column: str) -> Iterator[str | None]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(f"{path}: no column {column!r} (columns: {names[:20]}); name the text column with "
                        f"text_field (--text-field)")
    typ = pf.schema_arrow.field(column).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or
            getattr(pa.types, "is_string_view", lambda t: False)(typ)):
        raise DataError(f"{path}: column {column!r} has type {typ}, not a string column")
    for batch in pf.iter_batches(columns=[column], batch_size=4096):
        yield from batch.column(0).to_pylist()


# --------------------------------------------------------------------------- split and encoding
def is_val(text: str, seed: int, val_fraction: float) -> bool:
    """The split rule (module doc): a pure function of (seed, text)."""
    h = hashlib.sha256(int(seed).to_bytes(8, "little", signed=False) + text.encode("utf-8", "surrogatepass"))
    return int.from_bytes(h.digest()[:8], "little") < val_fraction * 2.0 ** 64


_WORKER: dict = {}


def _init_worker(tok: TokenizerConfig, eot: str | None, seed: int, val_fraction: float, dtype: str,
                 pooled: bool = True) -> None:
    if pooled:  # one process per core already: no tokenizers thread pool inside each
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER.update(tok=load_tokenizer(tok, eot), seed=seed, val_fraction=val_fraction,
                   dtype=np.uint16 if dtype == "uint16" else np.uint32)


def _encode(batch: tuple[str, int, list[str]]):
    """One batch of documents of one file -> (lengths, val mask, all tokens concatenated)."""
    path, first, texts = batch
    w = _WORKER
    tok = w["tok"]
    try:
        ids = tok.encode_batch(texts)
    except Exception as e:  # a tokenizer's own error, with where it happened
        raise DataError(f"{path}: documents {first}..{first + len(texts) - 1}: the tokenizer failed: {e}") from None
    lens = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
    flat = np.empty(int(lens.sum()), dtype=w["dtype"])
    pos = 0
    for x in ids:
        flat[pos] = tok.eot_id
        flat[pos + 1:pos + 1 + len(x)] = x
        pos += 1 + len(x)
    val = np.fromiter((is_val(t, w["seed"], w["val_fraction"]) for t in texts), dtype=bool, count=len(texts))
    return lens, val, flat


class _ShardWriter:
    """Fills shards of exactly `cap` tokens of one split (the last one shorter)."""

    def __init__(self, out_dir: Path, split: str, cap: int, dtype: str):
        self.out_dir, self.split, self.cap, self.dtype = out_dir, split, cap, dtype
        self.buf = np.empty(cap, dtype=np.uint16 if dtype == "uint16" else np.uint32)  # pages touched lazily
        self.n, self.shards, self.tokens, self.docs = 0, [], 0, 0

    def add(self, toks: np.ndarray) -> None:
        self.tokens += int(toks.size)
        while toks.size:
            k = min(int(toks.size), self.cap - self.n)
            self.buf[self.n:self.n + k] = toks[:k]
            self.n += k
            toks = toks[k:]
            if self.n == self.cap:
                self.flush()

    def flush(self) -> None:
        if self.n == 0:
            return
        path = self.out_dir / f"{self.split}_{len(self.shards):06d}.bin"
        sha = write_shard(path, self.buf[:self.n], self.dtype)
        self.shards.append({"file": path.name, "path": str(path), "tokens": self.n, "sha256": sha})
        self.n = 0


def _batches(files: list[tuple[str, str]], cfg: PrepConfig, counts: dict, per_file: list[dict]):
    for i, (path, fmt) in enumerate(files):
        c = {}
        texts, chars, first, n = [], 0, 0, 0
        for text in iter_documents(path, fmt, cfg.text_field, cfg.txt_mode, c):
            texts.append(text)
            chars += len(text)
            n += 1
            if len(texts) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
                yield i, (path, first, texts)
                texts, chars, first = [], 0, n
        if texts:
            yield i, (path, first, texts)
        per_file[i].update(documents=n, **c)
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v


def _clear_old(out: Path) -> None:
    """Remove what an earlier run left: first the manifest (so nothing looks complete), then shards."""
    (out / MANIFEST).unlink(missing_ok=True)
    for pat in ("train_*.bin", "val_*.bin", f".tmp-{MANIFEST}.*", ".tmp-train_*.bin.*", ".tmp-val_*.bin.*",
                f".tmp-{TRAINED_TOKENIZER}.*"):
        for p in out.glob(pat):
            p.unlink(missing_ok=True)


def _log(msg: str) -> None:
    print(f"[prepare_text] {msg}", file=sys.stderr, flush=True)


def prepare(cfg: PrepConfig) -> dict:
    """Run the data stage (module doc); return the manifest (also written to out_dir/manifest.json)."""
    t0 = time.time()
    if not 0.0 < cfg.val_fraction < 1.0:
        raise DataError(f"val_fraction = {cfg.val_fraction!r}: a number between 0 and 1 (exclusive)")
    if not (isinstance(cfg.shard_tokens, int) and cfg.shard_tokens >= 1 and cfg.shard_tokens < 2**31):
        raise DataError(f"shard_tokens = {cfg.shard_tokens!r}: an integer between 1 and 2**31 - 1")
    if not (isinstance(cfg.workers, int) and cfg.workers >= 1):
        raise DataError(f"workers = {cfg.workers!r}: an integer >= 1")
    if not (isinstance(cfg.seed, int) and 0 <= cfg.seed < 2**64):
        raise DataError(f"seed = {cfg.seed!r}: an integer in [0, 2**64)")
    if cfg.txt_mode not in TXT_MODES:
        raise DataError(f"txt_mode = {cfg.txt_mode!r}: one of {list(TXT_MODES)}")
    tcfg = parse_tokenizer(cfg.tokenizer)
    files = resolve_inputs(cfg.inputs)
    out = Path(cfg.out_dir)
    # Refuse a vocabulary mismatch before reading any text (bpe:N: N is the bound).
    if cfg.model_vocab is not None and tcfg.kind == "bpe":
        check_vocab_fits(tcfg.vocab_size, cfg.model_vocab)
    tok = load_tokenizer(tcfg, cfg.eot) if tcfg.kind != "bpe" else None
    if tok is not None and cfg.model_vocab is not None:
        check_vocab_fits(tok.vocab_size, cfg.model_vocab)
    out.mkdir(parents=True, exist_ok=True)
    _clear_old(out)
    inputs = [{"path": p, "format": f, "bytes": os.path.getsize(p), "sha256": _sha256_file(p)} for p, f in files]

    bpe_seconds = None
    if tcfg.kind == "bpe":
        if cfg.eot not in (None, "<|endoftext|>"):
            raise TokenizerError(f"eot = {cfg.eot!r}: a trained BPE's separator is <|endoftext|>")
        t1 = time.time()
        tok = train_bpe(_bpe_texts(files, cfg), tcfg.vocab_size, out / TRAINED_TOKENIZER)
        bpe_seconds = round(time.time() - t1, 3)
        _log(f"trained bpe:{tcfg.vocab_size} on the training documents in {bpe_seconds} s: "
             f"{tok.vocab_size} tokens -> {out / TRAINED_TOKENIZER}")
        worker_tok = TokenizerConfig("json", path=str(out / TRAINED_TOKENIZER))
        eot = tok.eot_token
    else:
        worker_tok, eot = tcfg, cfg.eot
    dtype = "uint16" if tok.vocab_size <= U16_MAX_VOCAB else "uint32"
    writers = {s: _ShardWriter(out, s, cfg.shard_tokens, dtype) for s in ("train", "val")}
    counts: dict = {}
    per_file = [dict(x) for x in inputs]

    t2 = time.time()
    init = (worker_tok, eot, cfg.seed, cfg.val_fraction, dtype)
    from tqdm import tqdm

    bar = tqdm(total=len(files), unit="file", desc="tokenizing", file=sys.stderr, disable=not cfg.progress,
               dynamic_ncols=True)
    done_files = 0

    def consume(fi: int, result) -> None:
        nonlocal done_files
        lens, val, flat = result
        ends = np.cumsum(lens)
        starts = ends - lens
        for split, mask in (("val", val), ("train", ~val)):
            if mask.any():
                w = writers[split]
                w.docs += int(mask.sum())
                w.add(flat if mask.all() else np.concatenate([flat[a:b] for a, b in zip(starts[mask], ends[mask])]))
        if fi > done_files:
            bar.update(fi - done_files)
            done_files = fi
        bar.set_postfix(tokens=f"{writers['train'].tokens + writers['val'].tokens:,}", refresh=False)

    try:
        if cfg.workers == 1:
            _init_worker(*init, pooled=False)
            for fi, batch in _batches(files, cfg, counts, per_file):
                consume(fi, _encode(batch))
        else:
            # spawn: safe with the threads of tokenizers and tqdm; bounded in-flight batches keep memory flat
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=init) as pool:
                pending: collections.deque = collections.deque()
                for fi, batch in _batches(files, cfg, counts, per_file):
                    pending.append((fi, pool.apply_async(_encode, (batch,))))
                    while len(pending) >= 4 * cfg.workers:
                        f, r = pending.popleft()
                        consume(f, r.get())
                while pending:
                    f, r = pending.popleft()
                    consume(f, r.get())
        bar.update(len(files) - done_files)
    finally:
        bar.close()
    for w in writers.values():
        w.flush()
    encode_seconds = round(time.time() - t2, 3)
    ndocs = {s: writers[s].docs for s in writers}
    for split in ("train", "val"):
        if not writers[split].shards:
            raise DataError(f"no {'validation' if split == 'val' else 'training'} documents: the split put all "
                            f"{sum(ndocs.values())} documents in {'train' if split == 'val' else 'val'} "
                            f"(val_fraction {cfg.val_fraction}, seed {cfg.seed}); use more documents "
                            f"(txt_mode line/paragraph splits .txt files) or another val_fraction")
    shards = {s: [{k: v for k, v in sh.items() if k != "path"} for sh in writers[s].shards] for s in writers}
    sha = {sh["path"]: sh["sha256"] for w in writers.values() for sh in w.shards}
    checksum = shards_checksum([sh["path"] for sh in writers["train"].shards],
                               [sh["path"] for sh in writers["val"].shards], sha)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("inputs", "out_dir", "progress", "extra", "tokenizer")}
    manifest = {
        "kind": "text",
        "textprep_version": TEXTPREP_VERSION,
        "format": ("nanoGPT .bin shards: 256 int32 header (magic 20240520, version 1, count), uint16 tokens"
                   if dtype == "uint16" else
                   "llm.c .bin shards: 256 int32 header (magic 20240801, version 7, count), uint32 tokens"),
        "dtype": dtype,
        "tokenizer_setting": tcfg.label(),
        "tokenizer": tok.identity,
        "vocab_size": tok.vocab_size,
        "separator": f"{tok.eot_token} (id {tok.eot_id}) before each document",
        "split_rule": f"val when int(sha256(seed 8 bytes LE + text UTF-8)[:8] LE) < val_fraction * 2**64",
        "params": params,
        "documents": {**ndocs, **{k: counts.get(k, 0) for k in ("empty_skipped", "null_skipped",
                                                                 "non_utf8_skipped")}},
        "tokens": {s: writers[s].tokens for s in writers},
        "shards": shards,
        "train": str(out / "train_*.bin"),
        "val": str(out / "val_*.bin"),
        "content_checksum": checksum,
        "inputs": per_file,
        "seconds": {"bpe_train": bpe_seconds, "tokenize": encode_seconds, "total": round(time.time() - t0, 3)},
        "versions": _versions(),
        "extra": dict(cfg.extra),
    }
    write_json(out / MANIFEST, manifest)  # last: its presence means a complete shard set
    _log(f"{ndocs['train']:,} + {ndocs['val']:,} documents -> {manifest['tokens']['train']:,} train / "
         f"{manifest['tokens']['val']:,} val tokens in {len(shards['train'])} + {len(shards['val'])} {dtype} shard(s), "
         f"{encode_seconds} s; content checksum {checksum[:16]}")
    return manifest


def _versions() -> dict:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0], "numpy": np.__version__}
    for pkg in ("tokenizers", "tiktoken", "pyarrow"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


def _bpe_texts(files, cfg: PrepConfig) -> Iterator[str]:
    budget = cfg.bpe_train_bytes
    for path, fmt in files:
        for text in iter_documents(path, fmt, cfg.text_field, cfg.txt_mode):
            if is_val(text, cfg.seed, cfg.val_fraction):
                continue  # the tokenizer never sees the validation documents
            yield text
            budget -= len(text)
            if budget <= 0:
                return


# --------------------------------------------------------------------------- for the workflow
# A study's `data: {kind: text, ...}` keys (besides kind) -> PrepConfig fields; the workers come from the rule.
TEXT_DATA_KEYS = ("inputs", "tokenizer", "text_field", "txt_mode", "val_fraction", "seed", "shard_tokens", "eot",
                  "bpe_train_bytes")


def prep_config(d: dict, out_dir: str, workers: int = 1, key: str = "data") -> PrepConfig:
    """A PrepConfig from a study's `data: {kind: text, inputs: [...], tokenizer: ..., ...}` section, checked
    without reading any text: unknown keys, missing inputs/tokenizer, bad values and unparsable tokenizer
    settings are one DataError naming `data.<key>`."""
    errors = [f"{key}.{k} = {v!r}: an unknown key; allowed: {sorted(TEXT_DATA_KEYS)}"
              for k, v in d.items() if k != "kind" and k not in TEXT_DATA_KEYS]
    for k in ("inputs", "tokenizer"):
        if k not in d:
            errors.append(f"{key}.{k}: required")
    inputs = d.get("inputs", [])
    if isinstance(inputs, str):
        inputs = [inputs]
    if not (isinstance(inputs, list) and inputs and all(isinstance(x, str) and x for x in inputs)):
        errors.append(f"{key}.inputs = {d.get('inputs')!r}: a file, glob or 'stdlib', or a list of them")
    try:
        parse_tokenizer(d.get("tokenizer", "bpe:4096"), f"{key}.tokenizer")
    except TokenizerError as e:
        errors.append(str(e))
    cfg = PrepConfig(inputs=list(inputs) if isinstance(inputs, list) else [], out_dir=out_dir,
                     tokenizer=d.get("tokenizer"), workers=workers, progress=False)
    checks = {"text_field": lambda v: isinstance(v, str) and v, "txt_mode": lambda v: v in TXT_MODES,
              "val_fraction": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
              "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64,
              "shard_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**31,
              "eot": lambda v: v is None or (isinstance(v, str) and v),
              "bpe_train_bytes": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0}
    allowed = {"text_field": "a non-empty string", "txt_mode": f"one of {list(TXT_MODES)}",
               "val_fraction": "a number between 0 and 1 (exclusive)", "seed": "an integer in [0, 2**64)",
               "shard_tokens": "an integer between 1 and 2**31 - 1", "eot": "a token (string)",
               "bpe_train_bytes": "an integer > 0"}
    for k, ok in checks.items():
        if k in d:
            if not ok(d[k]):
                errors.append(f"{key}.{k} = {d[k]!r}: {allowed[k]}")
            else:
                setattr(cfg, k, float(d[k]) if k == "val_fraction" else d[k])
    if errors:
        raise DataError("; ".join(errors))
    return cfg


def cli_args(cfg: PrepConfig) -> list[str]:
    """The prepare_text.py arguments that reproduce cfg (for a rule's shell command; quote each)."""
    tok = cfg.tokenizer if isinstance(cfg.tokenizer, str) else parse_tokenizer(cfg.tokenizer).label()
    args = ["--out-dir", cfg.out_dir, "--tokenizer", tok]
    for i in cfg.inputs:
        args += ["--input", i]
    args += ["--text-field", cfg.text_field, "--txt-mode", cfg.txt_mode, "--val-fraction", repr(cfg.val_fraction),
             "--seed", str(cfg.seed), "--shard-tokens", str(cfg.shard_tokens), "--workers", str(cfg.workers),
             "--bpe-train-bytes", str(cfg.bpe_train_bytes)]
    if cfg.eot is not None:
        args += ["--eot", cfg.eot]
    if cfg.model_vocab is not None:
        args += ["--model-vocab-size", str(cfg.model_vocab)]
    if not cfg.progress:
        args.append("--no-progress")
    return args


def load_manifest(path: str | os.PathLike) -> dict:
    """A prepared corpus's manifest (the file, or the directory holding manifest.json)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: no manifest: the data preparation has not finished there "
                        f"(run workflow/scripts/prepare_text.py)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: unreadable manifest ({e})") from None
    if m.get("kind") != "text" or "content_checksum" not in m:
        raise DataError(f"{p}: not a manifest of the text data stage (kind {m.get('kind')!r})")
    return m


def data_checksum(manifest_path: str | os.PathLike) -> str:
    """The content checksum of a prepared corpus (what data.checksum and the run fingerprint carry)."""
    return load_manifest(manifest_path)["content_checksum"]


def spec_data(manifest_path: str | os.PathLike) -> dict:
    """The run spec's data section for a prepared corpus: {kind: bin, train, val, checksum}."""
    m = load_manifest(manifest_path)
    return {"kind": "bin", "train": m["train"], "val": m["val"], "checksum": m["content_checksum"]}


def verify_manifest(manifest_path: str | os.PathLike) -> dict:
    """Re-hash the shards a manifest lists (and only those exist under its globs); return the manifest."""
    m = load_manifest(manifest_path)
    listed = {s: [str(Path(m[s]).parent / sh["file"]) for sh in m["shards"][s]] for s in ("train", "val")}
    for s in ("train", "val"):
        found = sorted(_glob.glob(m[s]))
        if found != sorted(listed[s]):
            raise DataError(f"{manifest_path}: the files matching {m[s]} ({len(found)}) are not the {len(listed[s])} "
                            f"{s} shards the manifest lists: re-run the data preparation")
    got = shards_checksum(listed["train"], listed["val"])
    if got != m["content_checksum"]:
        raise DataError(f"{manifest_path}: the shards' content checksum is {got[:16]}..., not the manifest's "
                        f"{m['content_checksum'][:16]}...: the shards changed; re-run the data preparation")
    return m


def tokenizer_file_identity(setting) -> dict:
    """What a tokenizer setting reads from disk, by content: {file: sha256} (json: its file; hf: the model
    directory's tokenizer files; tiktoken: a local .tiktoken file). bpe:N and registered tiktoken names
    read nothing of the user's (a bpe is trained by the stage itself; a tiktoken name's file is checked by
    its sha256 when loaded)."""
    cfg = parse_tokenizer(setting)
    if cfg.kind == "bpe" or (cfg.kind == "tiktoken" and cfg.name):
        return {}
    p = Path(cfg.path)
    if cfg.kind == "hf":
        files = [p / n for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    else:
        files = [p]
    return {str(f): (_sha256_file(f) if f.is_file() else "missing") for f in files}


def stage_settings(cfg: PrepConfig) -> str:
    """Every setting that shapes the stage's shards, as one canonical string (the rule's tracked param, so a
    changed tokenizer, tokenizer file, val_fraction, seed, ... re-runs the stage; issue 28). Inputs enter by
    their patterns here and by their files' mtimes as the rule's inputs; workers and progress shape nothing."""
    params = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "workers", "progress", "extra")}
    tok = cfg.tokenizer if isinstance(cfg.tokenizer, str) else parse_tokenizer(cfg.tokenizer).label()
    params["tokenizer"] = tok
    params["tokenizer_files"] = tokenizer_file_identity(cfg.tokenizer)
    params["textprep_version"] = TEXTPREP_VERSION
    return json.dumps(params, sort_keys=True, separators=(",", ":"))
