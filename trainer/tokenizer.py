"""Tokenizers for the data stage (trainer/textprep.py): what a tokenizer setting names, how it loads
offline, its vocabulary size and identity, and the BPE trained on the corpus itself.

A tokenizer setting is a string (CLI, study YAML) or the equivalent object:

    json:PATH/tokenizer.json    {kind: json, path: PATH}      a Hugging Face tokenizer.json (`tokenizers`)
    hf:DIR                      {kind: hf, path: DIR}         the tokenizer.json of a local HF model directory
                                                              (the same `hf:` path as model.arch)
    tiktoken:NAME               {kind: tiktoken, name: NAME}  a tiktoken encoding (cl100k_base, gpt2, ...) whose
                                                              file is in the local tiktoken cache: nothing is
                                                              downloaded
    tiktoken:PATH.tiktoken      {kind: tiktoken, path: PATH}  a GPT-2-style encoding file of your own (the GPT-2
                                                              split pattern, <|endoftext|> after the ranks)
    bpe:N                       {kind: bpe, vocab_size: N}    a byte-level BPE of at most N tokens trained on the
                                                              corpus's training documents

Every kind encodes text without adding special tokens; the data stage puts one end-of-text token (its
`eot`) before each document itself, as nanoGPT's fineweb.py does. Errors are `TokenizerError`s that name the
setting, the file and what to do.

No torch import here: the plan can check vocabularies (`tokenizer_vocab_size`, `model_vocab_size`,
`check_vocab_fits`) before any job.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainer.data import _sha256_file

KINDS = ("json", "hf", "tiktoken", "bpe")
BPE_SPECIAL = "<|endoftext|>"  # id 0 of every BPE trained here
BPE_MIN_VOCAB = 257  # the 256 byte symbols and the end-of-text token
# End-of-text tokens looked for in a tokenizer.json (first found wins) when no eot is named.
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


class TokenizerError(ValueError):
    """A tokenizer setting that cannot be used, with the setting, file and reason."""


@dataclass(frozen=True)
class TokenizerConfig:
    kind: str  # one of KINDS
    path: str | None = None  # json: the file; hf: the model directory; tiktoken: a local .tiktoken file
    name: str | None = None  # tiktoken: a registered encoding name
    vocab_size: int | None = None  # bpe: the target vocabulary size

    def label(self) -> str:
        if self.kind == "bpe":
            return f"bpe:{self.vocab_size}"
        return f"{self.kind}:{self.name or self.path}"


def parse_tokenizer(value, key: str = "tokenizer") -> TokenizerConfig:
    """A TokenizerConfig from 'kind:value' or {kind: ..., path/name/vocab_size: ...} (see the module doc)."""
    allowed = "'json:PATH', 'hf:DIR', 'tiktoken:NAME', 'tiktoken:PATH.tiktoken' or 'bpe:N'"
    if isinstance(value, TokenizerConfig):
        return value
    if isinstance(value, str):
        kind, sep, rest = value.partition(":")
        if not sep or not rest or kind not in KINDS:
            raise TokenizerError(f"{key} = {value!r}: {allowed}")
        if kind == "bpe":
            try:
                value = {"kind": "bpe", "vocab_size": int(rest)}
            except ValueError:
                raise TokenizerError(f"{key} = {value!r}: bpe:N with N an integer (the vocabulary size)") from None
        elif kind == "tiktoken":
            local = rest.endswith(".tiktoken") or "/" in rest or os.sep in rest
            value = {"kind": "tiktoken", ("path" if local else "name"): rest}
        else:
            value = {"kind": kind, "path": rest}
    if not isinstance(value, dict):
        raise TokenizerError(f"{key} = {value!r}: {allowed}, or an object with 'kind'")
    kind = value.get("kind")
    fields = {"json": {"path"}, "hf": {"path"}, "tiktoken": {"name", "path"}, "bpe": {"vocab_size"}}
    if kind not in fields:
        raise TokenizerError(f"{key}.kind = {kind!r}: one of {list(KINDS)}")
    extra = set(value) - fields[kind] - {"kind"}
    if extra:
        raise TokenizerError(f"{key}: unknown key(s) {sorted(extra)} for kind {kind!r}; allowed: {sorted(fields[kind])}")
    if kind == "bpe":
        n = value.get("vocab_size")
        if not isinstance(n, int) or isinstance(n, bool) or not BPE_MIN_VOCAB <= n <= 2**32:
            raise TokenizerError(f"{key}.vocab_size = {n!r}: an integer >= {BPE_MIN_VOCAB} (256 bytes + <|endoftext|>)")
        return TokenizerConfig("bpe", vocab_size=n)
    if kind == "tiktoken":
        if ("name" in value) == ("path" in value):
            raise TokenizerError(f"{key}: a tiktoken tokenizer takes exactly one of 'name' (a registered encoding) "
                                 f"or 'path' (a .tiktoken file); got {value!r}")
    path, name = value.get("path"), value.get("name")
    for k, v in (("path", path), ("name", name)):
        if k in value and not (isinstance(v, str) and v):
            raise TokenizerError(f"{key}.{k} = {v!r}: a non-empty string")
    return TokenizerConfig(kind, path=path, name=name)


# --------------------------------------------------------------------------- vocabulary checks
def model_vocab_size(hf_dir: str | os.PathLike) -> int:
    """The vocabulary size in a local HF model directory's config.json (`hf:` prefix allowed); no
    transformers import."""
    d = Path(str(hf_dir)[3:] if str(hf_dir).startswith("hf:") else hf_dir)
    cfg_path = d / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{cfg_path}: missing: not a Hugging Face model directory") from None
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{cfg_path}: cannot read it as JSON ({e})") from None
    for where in (cfg, cfg.get("text_config") or {}):  # multimodal configs keep it under text_config
        v = where.get("vocab_size")
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    raise TokenizerError(f"{cfg_path}: no positive integer 'vocab_size' (nor text_config.vocab_size)")


def tokenizer_vocab_size(value) -> int:
    """The vocabulary size (largest token id + 1) of a tokenizer setting, without any text. For bpe:N it is
    N, an upper bound of what training gives (a small corpus may give fewer tokens)."""
    cfg = parse_tokenizer(value)
    if cfg.kind == "bpe":
        return cfg.vocab_size
    return load_tokenizer(cfg).vocab_size


def check_vocab_fits(tokenizer, model_vocab: int, model_key: str = "model.vocab_size") -> None:
    """Refuse a tokenizer whose ids reach past the model's vocabulary (a model larger than the tokenizer,
    e.g. padded to a multiple of 64, is fine). tokenizer: a setting or a vocabulary size."""
    n = tokenizer if isinstance(tokenizer, int) else tokenizer_vocab_size(tokenizer)
    label = f"{n}" if isinstance(tokenizer, int) else f"{parse_tokenizer(tokenizer).label()} ({n})"
    if n > model_vocab:
        raise TokenizerError(f"vocabulary mismatch: the data's tokenizer {label} has ids up to {n - 1}, beyond "
                             f"{model_key} = {model_vocab}; use the model's own tokenizer (hf:<model dir>) or a "
                             f"model with at least {n} tokens")


# --------------------------------------------------------------------------- loaded tokenizers
class Tokenizer:
    """A loaded tokenizer: encode_batch(texts) -> lists of ids (no special tokens added), vocab_size
    (largest id + 1), eot_id/eot_token, and identity (what the manifest records)."""

    kind: str
    vocab_size: int
    eot_id: int
    eot_token: str
    identity: dict

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]


class HFTokenizer(Tokenizer):
    def __init__(self, path: str | os.PathLike, kind: str, eot: str | None = None, source: str | None = None,
                 default_eot: str | None = None):
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise TokenizerError("the tokenizers package is missing: pip install tokenizers") from None
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: no such tokenizer file")
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as e:  # tokenizers raises its own Exception type
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({e})") from None
        self.kind, self.path = kind, str(path)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        if eot is None:
            tried = ([default_eot] if default_eot else []) + list(EOT_CANDIDATES)
            eot = next((t for t in tried if t in vocab), None)
            if eot is None:
                raise TokenizerError(f"{path}: no end-of-text token found (looked for {tried}); name one with "
                                     f"--eot TOKEN (a token of this vocabulary)")
        elif eot not in vocab:
            raise TokenizerError(f"eot = {eot!r}: not a token of {path}")
        self.eot_token, self.eot_id = eot, int(vocab[eot])
        self.identity = {"kind": kind, "source": source or str(path), "file": str(path),
                         "sha256": _sha256_file(path), "vocab_size": self.vocab_size,
                         "eot": {"token": eot, "id": self.eot_id}}

    def encode_batch(self, texts):
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]


def _hf_dir_eos(d: Path) -> str | None:
    """The eos token a model directory declares (tokenizer_config.json), if any."""
    try:
        tc = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    eos = tc.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if isinstance(eos, str) and eos else None


# ------------------------------------------------------------------ tiktoken, offline only
def tiktoken_cache_dir() -> str:
    """Where tiktoken looks for its files: TIKTOKEN_CACHE_DIR, else DATA_GYM_CACHE_DIR, else
    <tmp>/data-gym-cache (tiktoken.load.read_file_cached's rule)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def tiktoken_cache_name(url: str) -> str:
    """The file name tiktoken gives a URL in its cache: the sha1 of the URL."""
    return hashlib.sha1(url.encode()).hexdigest()


class _CacheOnly:
    """Replaces tiktoken.load.read_file_cached while an encoding is built: files come from the cache only
    (a missing one is a TokenizerError that says where to put it) and a cached file with the wrong hash
    is refused, not deleted and fetched again as tiktoken would."""

    def __init__(self, encoding: str):
        self.encoding, self.files = encoding, []

    def __call__(self, blobpath: str, expected_hash: str | None = None) -> bytes:
        cache = tiktoken_cache_dir()
        name = tiktoken_cache_name(blobpath)
        target = os.path.join(cache, name) if cache else None
        if not target or not os.path.exists(target):
            why = ("TIKTOKEN_CACHE_DIR is empty, which turns tiktoken's cache off" if not cache
                   else f"{target} does not exist")
            raise TokenizerError(
                f"tiktoken encoding {self.encoding!r} needs the file {blobpath} in the local tiktoken cache, and "
                f"nothing is downloaded here ({why}). Place it there: the cache directory is {cache or '(none)'} "
                f"(set TIKTOKEN_CACHE_DIR to choose it) and the file name tiktoken expects is {name} (the sha1 of "
                f"the URL), "
                f"e.g. on a machine with network: curl -o {name} {blobpath}; then copy it to "
                f"$TIKTOKEN_CACHE_DIR/{name}" + (f" (its sha256 must be {expected_hash})" if expected_hash else ""))
        with open(target, "rb") as f:
            data = f.read()
        if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
            raise TokenizerError(f"{target}: the tiktoken cache file for {blobpath} (encoding {self.encoding!r}) has "
                                 f"sha256 {hashlib.sha256(data).hexdigest()}, not the expected {expected_hash}: "
                                 f"a damaged or different file; replace it with the file from that URL")
        self.files.append({"url": blobpath, "cache_file": target, "sha256": hashlib.sha256(data).hexdigest()})
        return data


@contextlib.contextmanager
def _tiktoken_cache_only(encoding: str):
    import tiktoken.load as tl

    reader = _CacheOnly(encoding)
    saved = tl.read_file_cached
    tl.read_file_cached = reader
    try:
        yield reader
    finally:
        tl.read_file_cached = saved


class TiktokenTokenizer(Tokenizer):
    def __init__(self, cfg: TokenizerConfig, eot: str | None = None):
        try:
            import tiktoken
            import tiktoken.load as tl
        except ImportError:
            raise TokenizerError("the tiktoken package is missing: pip install tiktoken") from None
        self.kind = "tiktoken"
        if cfg.name:
            from tiktoken import registry

            names = registry.list_encoding_names()  # also fills registry.ENCODING_CONSTRUCTORS
            ctor = (registry.ENCODING_CONSTRUCTORS or {}).get(cfg.name)
            if ctor is None:
                raise TokenizerError(f"tokenizer tiktoken:{cfg.name}: not a tiktoken encoding; known: "
                                     f"{sorted(names)}")
            with _tiktoken_cache_only(cfg.name) as reader:
                self._enc = tiktoken.Encoding(**ctor())
            files = reader.files
            source = f"tiktoken:{cfg.name}"
        else:
            p = Path(cfg.path)
            if not p.is_file():
                raise TokenizerError(f"{p}: no such .tiktoken file (tokenizer tiktoken:{cfg.path})")
            try:
                ranks = tl.load_tiktoken_bpe(str(p))
            except (ValueError, OSError) as e:
                raise TokenizerError(f"{p}: not a .tiktoken file (lines 'base64-token rank'): {e}") from None
            from tiktoken_ext.openai_public import r50k_pat_str

            self._enc = tiktoken.Encoding(name=p.stem, pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                          special_tokens={BPE_SPECIAL: len(ranks)})
            files = [{"file": str(p), "sha256": _sha256_file(p)}]
            source = f"tiktoken:{p}"
        specials = self._enc._special_tokens
        eot = eot or BPE_SPECIAL
        if eot not in specials:
            raise TokenizerError(f"eot = {eot!r}: not a special token of tiktoken encoding {self._enc.name!r} "
                                 f"(its special tokens: {sorted(specials)})")
        self.eot_token, self.eot_id = eot, int(specials[eot])
        self.vocab_size = int(self._enc.n_vocab)
        self.identity = {"kind": "tiktoken", "source": source, "encoding": self._enc.name, "files": files,
                         "vocab_size": self.vocab_size, "eot": {"token": eot, "id": self.eot_id},
                         "tiktoken_version": getattr(tiktoken, "__version__", None)}

    def encode_batch(self, texts):
        # encode_ordinary: special-token text in documents is plain text, never a control token
        return [self._enc.encode_ordinary(t) for t in texts]


def load_tokenizer(value, eot: str | None = None) -> Tokenizer:
    """Load a tokenizer setting offline. bpe:N is not loadable: train it (train_bpe), then load its file."""
    cfg = parse_tokenizer(value)
    if cfg.kind == "json":
        return HFTokenizer(cfg.path, "json", eot)
    if cfg.kind == "hf":
        d = Path(cfg.path)
        if not (d / "tokenizer.json").is_file():
            what = "no such directory" if not d.is_dir() else "no tokenizer.json in it"
            raise TokenizerError(f"tokenizer hf:{cfg.path}: {what}; the data stage needs the model's fast "
                                 f"tokenizer file {d / 'tokenizer.json'} (save it with "
                                 f"AutoTokenizer.from_pretrained(...).save_pretrained(DIR))")
        return HFTokenizer(d / "tokenizer.json", "hf", eot, source=f"hf:{cfg.path}", default_eot=_hf_dir_eos(d))
    if cfg.kind == "tiktoken":
        return TiktokenTokenizer(cfg, eot)
    raise TokenizerError(f"tokenizer bpe:{cfg.vocab_size} is trained on the corpus first (train_bpe), then loaded "
                         f"from its tokenizer.json")


# --------------------------------------------------------------------------- BPE on the corpus
def train_bpe(texts, vocab_size: int, out_path: str | os.PathLike, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style: byte alphabet, GPT-2 split pattern, <|endoftext|> = id 0) of at
    most vocab_size tokens on the iterable of texts; write its tokenizer.json atomically to out_path.

    Deterministic: the same texts in the same order give the same file (the trainer has no randomness;
    ties between equally frequent pairs are broken by the pair itself). Which texts, and their order, is
    the caller's (the data stage passes the training documents, picked by its seeded split)."""
    try:
        from tokenizers import Tokenizer as _Tok, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise TokenizerError("the tokenizers package is missing: pip install tokenizers") from None
    if vocab_size < BPE_MIN_VOCAB:
        raise TokenizerError(f"tokenizer bpe:{vocab_size}: at least {BPE_MIN_VOCAB} (256 bytes + <|endoftext|>)")
    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[BPE_SPECIAL], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    from trainer.records import atomic_write

    text = tok.to_str(pretty=False)
    atomic_write(out_path, lambda f: f.write(text))
    t = HFTokenizer(out_path, "bpe", BPE_SPECIAL, source=f"bpe:{vocab_size} trained on the corpus")
    t.identity["requested_vocab_size"] = vocab_size
    t.identity["min_frequency"] = min_frequency
    return t
