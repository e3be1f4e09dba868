"""Data: the stdlib byte corpus, nanoGPT/modded-nanogpt .bin token shards, and deterministic sampling.

Shard format (nanoGPT / llm.c / modded-nanogpt): a header of 256 int32 (little-endian) holding
magic 20240520, version 1 and the token count, then that many uint16 tokens. The stdlib corpus
is written in the same format (one token per byte, vocabulary 256), so one reader serves both.
Vocabularies over 65536 tokens use llm.c's uint32 variant (magic 20240801, version 7, uint32 tokens).

Sampling. A training step draws `global_batch` windows of `seq_len + 1` tokens at uniformly random
positions of the training stream (all shards; a window never crosses a shard boundary), from a
generator seeded by (run seed, step) alone. Rank r of W takes the r-th contiguous block of
global_batch / W windows and cuts it into micro-batches. So the data of step s is a pure function of
(seed, s): the same on 1 or N processes, the same for every optimizer arm with that seed, and a
resumed run needs nothing but the step number to continue the sequence.

Validation uses eval.batches x global_batch windows at evenly spaced positions of the validation
stream: no seed at all, so every run of the same data, seq_len and batch plan is scored on the same
tokens.
"""

from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.records import atomic_write, write_json

MAGIC = 20240520
VERSION = 1
MAGIC_U32, VERSION_U32 = 20240801, 7  # llm.c's header for uint32 tokens (its "llama-3" format)
# (magic, version) -> little-endian token dtype
SHARD_FORMATS = {(MAGIC, VERSION): "<u2", (MAGIC_U32, VERSION_U32): "<u4"}
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
STDLIB_VOCAB = 256
STDLIB_BUILDER_VERSION = 1
STDLIB_VAL_PERCENT = 5  # a file goes to validation when sha256(relative path) % 100 < 5
SEPARATOR = 0  # one NUL byte between files (NUL does not occur in Python source)
_TRAIN_STREAM = 0x7472  # "tr": keeps the training sampler's seed space apart from any other use


class DataError(ValueError):
    """A corpus or shard that cannot be used, with the file and the reason."""


# --------------------------------------------------------------------------- shards
def write_shard(path: str | os.PathLike, tokens, dtype: str = "uint16") -> str:
    """Write tokens as a nanoGPT .bin shard; return the sha256 of the bytes written.

    dtype "uint16" (ids in [0, 65535]: magic 20240520, version 1) or "uint32" (llm.c's format for larger
    vocabularies: magic 20240801, version 7)."""
    if dtype not in ("uint16", "uint32"):
        raise DataError(f"{path}: shard dtype {dtype!r}: one of 'uint16', 'uint32'")
    hi = 65535 if dtype == "uint16" else 2**32 - 1
    toks = np.asarray(tokens)
    if toks.size and (toks.min() < 0 or toks.max() > hi):
        raise DataError(f"{path}: tokens must lie in [0, {hi}] for the {dtype} shard format")
    toks = toks.astype("<u2" if dtype == "uint16" else "<u4", copy=False).ravel()
    if toks.size >= 2**31:
        raise DataError(f"{path}: {toks.size} tokens do not fit one shard (int32 count); split it")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1] = (MAGIC, VERSION) if dtype == "uint16" else (MAGIC_U32, VERSION_U32)
    header[2] = toks.size
    h = hashlib.sha256()

    def write(f):
        for part in (header.tobytes(), toks.tobytes()):
            h.update(part)
            f.write(part)

    atomic_write(path, write, mode="wb")
    return h.hexdigest()


def read_shard_header(path: str | os.PathLike) -> int:
    """Check a shard's header and size; return its token count. Raises DataError with the reason."""
    return shard_info(path)[0]


def shard_info(path: str | os.PathLike) -> tuple[int, str]:
    """Check a shard's header and size; return (token count, numpy dtype of its tokens)."""
    path = str(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read shard ({e.strerror})") from None
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated shard: {size} bytes, less than the {HEADER_BYTES}-byte header "
                        f"(256 int32)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version = int(header[0]), int(header[1])
    if magic not in (MAGIC, MAGIC_U32):
        raise DataError(f"{path}: bad magic number {magic} (expected {MAGIC}): not a nanoGPT/"
                        f"modded-nanogpt token shard (256 int32 header, then uint16 tokens)")
    dtype = SHARD_FORMATS.get((magic, version))
    if dtype is None:
        want_v = VERSION if magic == MAGIC else VERSION_U32
        raise DataError(f"{path}: unsupported shard version {version} for magic {magic} (expected {want_v}; "
                        f"known: magic {MAGIC} version {VERSION} uint16, magic {MAGIC_U32} version {VERSION_U32} "
                        f"uint32)")
    width = np.dtype(dtype).itemsize
    ntok = int(header[2])
    if ntok < 0:
        raise DataError(f"{path}: corrupt header: negative token count {ntok}")
    want = HEADER_BYTES + width * ntok
    if size < want:
        raise DataError(f"{path}: truncated shard: the header says {ntok} tokens ({want} bytes in all) but the "
                        f"file has {size} bytes ({(size - HEADER_BYTES) // width} tokens)")
    if size > want:
        raise DataError(f"{path}: the header says {ntok} tokens ({want} bytes in all) but the file has {size} "
                        f"bytes: trailing data, or a wrong count in the header")
    return ntok, dtype


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """Validated, memory-mapped tokens of one shard (uint16, or uint32; no copy into RAM)."""
    ntok, dtype = shard_info(path)
    if ntok == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(ntok,))


def shards_checksum(train: list[str], val: list[str], sha256: dict | None = None) -> str:
    """The content checksum of a shard set: sha256 over one line "split<TAB>file name<TAB>sha256 of the
    file" per shard, train shards then val shards, each in the order given (sorted by the callers).
    Names enter too, so that a renamed shard set is a different one. sha256: {path: hex} already known
    (the writer hashes while it writes); the others are read."""
    h = hashlib.sha256()
    for split, paths in (("train", train), ("val", val)):
        for p in paths:
            digest = (sha256 or {}).get(str(p)) or _sha256_file(p)
            h.update(f"{split}\t{os.path.basename(p)}\t{digest}\n".encode())
    return h.hexdigest()


class TokenStream:
    """Several shards seen as one set of windows of `window` tokens (windows never cross shards)."""

    def __init__(self, paths: list[str], window: int, what: str):
        if not paths:
            raise DataError(f"{what}: no shards")
        self.paths = list(paths)
        self.shards = [open_shard(p) for p in self.paths]
        self.window = window
        counts = np.array([max(0, len(s) - window + 1) for s in self.shards], dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(counts)])
        self.n_windows = int(self.cum[-1])
        self.n_tokens = int(sum(len(s) for s in self.shards))
        if self.n_windows == 0:
            raise DataError(f"{what}: {self.n_tokens} tokens in {len(self.paths)} shard(s) hold no window of "
                            f"{window} tokens (seq_len + 1); use more data or a shorter seq_len")

    def windows(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), window) int64 tokens for global window indices idx."""
        idx = np.asarray(idx, dtype=np.int64)
        which = np.searchsorted(self.cum, idx, side="right") - 1
        out = np.empty((len(idx), self.window), dtype=np.int64)
        ar = np.arange(self.window, dtype=np.int64)
        for w in np.unique(which).tolist():
            rows = np.nonzero(which == w)[0]
            offs = idx[rows] - self.cum[w]
            out[rows] = self.shards[w][offs[:, None] + ar[None, :]]
        return out


# --------------------------------------------------------------------------- stdlib corpus
def _stdlib_files(stdlib_dir: Path) -> list[str]:
    rels = []
    for root, dirs, files in os.walk(stdlib_dir):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        for fn in files:
            if fn.endswith(".py"):
                p = Path(root, fn)
                if p.is_file():
                    rels.append(p.relative_to(stdlib_dir).as_posix())
    return sorted(rels)


def _is_val(rel: str) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 100 < STDLIB_VAL_PERCENT


def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def build_stdlib_corpus(out_dir: str | os.PathLike, stdlib_dir: str | os.PathLike | None = None,
                        force: bool = False) -> dict:
    """Build train.bin, val.bin and manifest.json in out_dir from this Python's standard library.

    Deterministic: files in sorted relative-path order, each file's bytes followed by one NUL byte;
    a file goes to validation when sha256(its relative path) % 100 < 5. Each file is written
    atomically and manifest.json last, so a complete manifest means a complete corpus. An existing
    complete corpus from the same source is kept (returns its manifest) unless force.
    """
    out = Path(out_dir)
    src = Path(stdlib_dir or sysconfig.get_paths()["stdlib"]).resolve()
    man_path = out / "manifest.json"
    if man_path.exists() and not force:
        try:
            old = json.loads(man_path.read_text())
            if old.get("builder_version") == STDLIB_BUILDER_VERSION and old.get("stdlib_dir") == str(src) and \
                    old.get("python_version") == _py_version():
                return old
        except (OSError, json.JSONDecodeError):
            pass
    rels = _stdlib_files(src)
    if not rels:
        raise DataError(f"no .py files under {src}: is this the standard library?")
    parts = {"train": [], "val": []}
    lists = {"train": [], "val": []}
    for rel in rels:
        data = (src / rel).read_bytes()
        split = "val" if _is_val(rel) else "train"
        parts[split].append(data)
        parts[split].append(bytes([SEPARATOR]))
        lists[split].append(rel)
    out.mkdir(parents=True, exist_ok=True)
    sha, ntok = {}, {}
    for split in ("train", "val"):
        buf = np.frombuffer(b"".join(parts[split]), dtype=np.uint8)
        write_shard(out / f"{split}.bin", buf)
        sha[f"{split}.bin"] = _sha256_file(out / f"{split}.bin")
        ntok[split] = int(buf.size)
    manifest = {
        "kind": "stdlib",
        "format": f"nanoGPT .bin shards: 256 int32 header (magic {MAGIC}, version {VERSION}, count), uint16 tokens",
        "vocab_size": STDLIB_VOCAB,
        "tokenizer": "bytes (token = byte value); files separated by one NUL byte",
        "builder_version": STDLIB_BUILDER_VERSION,
        "python_version": _py_version(),
        "python": sys.version,
        "stdlib_dir": str(src),
        "val_rule": f"sha256(relative path) % 100 < {STDLIB_VAL_PERCENT}",
        "tokens": ntok,
        "n_files": {k: len(v) for k, v in lists.items()},
        "sha256": sha,
        "corpus_sha256": hashlib.sha256(f"{sha['train.bin']}{sha['val.bin']}".encode()).hexdigest(),
        "files": lists,
    }
    write_json(man_path, manifest)
    return manifest


def _py_version() -> str:
    return ".".join(map(str, sys.version_info[:3]))


def load_stdlib_manifest(path: str | os.PathLike, verify: bool = True) -> dict:
    d = Path(path)
    man = d / "manifest.json"
    if not man.exists():
        raise DataError(f"no stdlib corpus at {d} (manifest.json missing): build it with "
                        f"`python workflow/scripts/build_corpus.py --out-dir {d}`")
    manifest = json.loads(man.read_text())
    for name in ("train.bin", "val.bin"):
        f = d / name
        if not f.exists():
            raise DataError(f"{f}: missing although manifest.json exists; rebuild the corpus")
        if verify:
            got = _sha256_file(f)
            if got != manifest["sha256"][name]:
                raise DataError(f"{f}: sha256 {got[:16]}... differs from the manifest's "
                                f"{manifest['sha256'][name][:16]}...: the corpus changed; rebuild it")
    return manifest


# --------------------------------------------------------------------------- datasets
@dataclass
class Dataset:
    train: TokenStream
    val: TokenStream
    vocab_hint: int | None  # 256 for the stdlib corpus, None for shards (unknown)
    checksum: str  # identifies the data by content: the corpus sha256, or a hash of every shard's sha256
    #                (bin: computed where verify, i.e. on rank 0; "" elsewhere)
    description: str


def _expand(pattern: str, what: str) -> list[str]:
    paths = sorted(_glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise DataError(f"data.{what}: no files match {pattern!r} (cwd {os.getcwd()})")
    return paths


def check_disjoint(train: list[str], val: list[str], sums: dict[str, str] | None = None) -> None:
    """Refuse validation data that is training data: the same file under another name (symlink, hard
    link, `..`) or, given sums (path -> sha256), the same content in another file."""
    def ident(p):
        st = os.stat(p)
        return st.st_dev, st.st_ino

    seen = {ident(p): p for p in train}
    for v in val:
        t = seen.get(ident(v))
        if t is not None:
            raise DataError(f"data.val file {v} is the same file as data.train file {t} (real paths "
                            f"{os.path.realpath(v)} and {os.path.realpath(t)}): validation would score "
                            f"training data; point data.val at held-out shards")
    if sums:
        by_sum = {sums[p]: p for p in train}
        for v in val:
            t = by_sum.get(sums[v])
            if t is not None:
                raise DataError(f"data.val shard {v} has the same content as data.train shard {t} (sha256 "
                                f"{sums[v][:16]}...): validation would score training data; point data.val at "
                                f"held-out shards")


def open_dataset(kind: str, seq_len: int, path: str | None = None, train: str | None = None,
                 val: str | None = None, verify: bool = True, checksum: str | None = None) -> Dataset:
    window = seq_len + 1
    if kind == "stdlib":
        manifest = load_stdlib_manifest(path, verify=verify)
        d = Path(path)
        check_disjoint([str(d / "train.bin")], [str(d / "val.bin")],
                       {str(d / n): manifest["sha256"][n] for n in ("train.bin", "val.bin")} if verify else None)
        return Dataset(TokenStream([str(d / "train.bin")], window, f"{d}/train.bin"),
                       TokenStream([str(d / "val.bin")], window, f"{d}/val.bin"),
                       STDLIB_VOCAB, manifest["corpus_sha256"],
                       f"stdlib corpus {d} (Python {manifest['python_version']}, "
                       f"{manifest['tokens']['train']:,} train / {manifest['tokens']['val']:,} val tokens)")
    if kind == "bin":
        tr, va = _expand(train, "train"), _expand(val, "val")
        check_disjoint(tr, va)
        ts, vs = TokenStream(tr, window, "data.train"), TokenStream(va, window, "data.val")
        got = ""
        if verify:  # rank 0: the content of every shard (what a resumed run must find unchanged)
            sums = {p: _sha256_file(p) for p in dict.fromkeys(tr + va)}
            check_disjoint(tr, va, sums)
            got = shards_checksum(tr, va, sums)
        if checksum:  # the spec names the content (a prepared corpus's manifest checksum): check it
            if verify and got != checksum:
                raise DataError(f"data.checksum: the shards matching data.train={train!r} and data.val={val!r} "
                                f"({len(tr)} + {len(va)} files) have content checksum {got[:16]}..., not the "
                                f"spec's {checksum[:16]}...: the shards changed since their manifest was written, "
                                f"or the globs match other files; re-run the data preparation")
            got = checksum
        return Dataset(ts, vs, None, got,
                       f"{len(tr)} train shard(s) ({ts.n_tokens:,} tokens), {len(va)} val shard(s) "
                       f"({vs.n_tokens:,} tokens)")
    raise DataError(f"unknown data kind {kind!r}")


def train_indices(seed: int, step: int, global_batch: int, n_windows: int) -> np.ndarray:
    """The global batch of step `step` (0-based): global_batch window indices, a pure function of
    (seed, step)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(step), _TRAIN_STREAM])))
    return rng.integers(0, n_windows, size=global_batch, dtype=np.int64)


def rank_slice(global_batch: int, rank: int, world: int) -> slice:
    per = global_batch // world
    return slice(rank * per, (rank + 1) * per)


def val_indices(n_val: int, n_windows: int) -> np.ndarray:
    """n_val evenly spaced window indices over the validation stream (no randomness)."""
    if n_val <= 1:
        return np.zeros(max(n_val, 0), dtype=np.int64)
    return np.floor(np.linspace(0, n_windows - 1, n_val)).astype(np.int64)


def check_vocab(batch: np.ndarray, vocab_size: int, what: str) -> None:
    m = int(batch.max()) if batch.size else 0
    if m >= vocab_size:
        raise DataError(f"{what}: token id {m} is outside the model's vocabulary ({vocab_size}); the shards were "
                        f"tokenized for a larger vocabulary than model.arch has (set model.vocab_size, or use "
                        f"shards made with the model's tokenizer)")
