"""The tiny repos the local Hub serves in the tests: a modded-nanogpt shard set, a parquet dataset and a
randomly initialized Granite-4.0-H (GraniteMoeHybrid) with its own small tokenizer, each built here from its
format's definition (numpy, pyarrow, transformers' save_pretrained), not through the code under test."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

SHARDS_REPO = "kjj0/fineweb10B-gpt2"
TEXT_REPO = "HuggingFaceFW/fineweb-edu"
TEXT_FILE = "sample/10BT/000_00000.parquet"
MODEL_REPO = "ibm-granite/granite-4.0-h-tiny-test"
EOT = 50256
WORDS = ("muon orthogonalizes the momentum of every hidden matrix while adamw keeps the embeddings norms "
         "and the head the hybrid model mixes mamba state space layers with attention").split()


def shard_bytes(n_docs: int, seed: int) -> bytes:
    """modded-nanogpt's format: 256 int32 header (magic 20240520, version 1, token count), uint16 GPT-2 tokens,
    EOT 50256 before each document."""
    rng = np.random.default_rng(seed)
    toks = []
    for _ in range(n_docs):
        toks += [EOT] + rng.integers(0, 50000, size=int(rng.integers(20, 80))).tolist()
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(toks))
    return header.tobytes() + np.asarray(toks, dtype="<u2").tobytes()


def shard_files(train: int = 3) -> dict[str, bytes]:
    files = {f"fineweb_train_{i:06d}.bin": shard_bytes(40, i) for i in range(1, train + 1)}
    files["fineweb_val_000000.bin"] = shard_bytes(20, 100)
    files["README.md"] = b"# tiny FineWeb10B GPT-2 shards (test)\n"
    return files


def documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 40)))) + f" {i}." for i in range(n)]


def parquet_bytes(texts) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": list(texts), "id": [f"doc{i}" for i in range(len(texts))]}), buf)
    return buf.getvalue()


def text_files() -> dict[str, bytes]:
    return {TEXT_FILE: parquet_bytes(documents(400)), "sample/10BT/001_00000.parquet": parquet_bytes(documents(50, 1)),
            "README.md": b"# tiny FineWeb-Edu (test)\n"}


def granite_config(vocab_size: int = 320):
    from transformers import GraniteMoeHybridConfig

    return GraniteMoeHybridConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, shared_intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_local_experts=0,
        num_experts_per_tok=0, layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=16,
        mamba_d_state=8, mamba_n_groups=1, mamba_chunk_size=16, max_position_embeddings=256,
        position_embedding_type="nope", tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)


def model_files(tmp: Path) -> dict[str, bytes]:
    """A randomly initialized tiny Granite-4.0-H saved with save_pretrained, and a 300-token BPE of its own."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GraniteMoeHybridForCausalLM

    torch.manual_seed(0)
    out = tmp / "granite"
    GraniteMoeHybridForCausalLM(granite_config()).save_pretrained(out)
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(documents(300, 7), trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                           "tokenizer_class": "PreTrainedTokenizerFast"}))
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
