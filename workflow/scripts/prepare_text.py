"""Entry point of the text data stage (trainer/textprep.py): text files -> .bin shards + manifest.json.

    python workflow/scripts/prepare_text.py --out-dir results/data/NAME --tokenizer bpe:4096 \\
        --input 'corpus/*.parquet' [--input more.jsonl ...] [--text-field text] [--txt-mode file|line|paragraph] \\
        [--val-fraction 0.01] [--seed 1234] [--shard-tokens 100000000] [--workers N] [--eot TOKEN] \\
        [--bpe-train-bytes N] [--model-vocab-size N | --model hf:DIR] [--no-progress]

Tokenizers: json:PATH/tokenizer.json, hf:MODEL_DIR, tiktoken:NAME (from the local tiktoken cache; nothing is
downloaded), tiktoken:FILE.tiktoken, bpe:N (trained on the training documents, written to OUT/tokenizer.json).
Writes OUT/train_000000.bin ..., OUT/val_000000.bin ... and OUT/manifest.json last. Exit codes: 0 done,
2 a bad input or setting (the message names the file or key), 1 anything else.
"""
import argparse
import sys
from pathlib import Path

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: use the repository checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare_text.py", description=__doc__.splitlines()[0])
    p.add_argument("--input", dest="inputs", action="append", required=True, metavar="FILE_OR_GLOB",
                   help="a .txt, .jsonl or .parquet file, or a glob of them (quote it); repeatable")
    p.add_argument("--out-dir", required=True, help="where the shards and manifest.json go")
    p.add_argument("--tokenizer", required=True, help="json:PATH | hf:DIR | tiktoken:NAME | tiktoken:FILE | bpe:N")
    p.add_argument("--text-field", default="text", help="the .jsonl key / .parquet column of the text (default text)")
    p.add_argument("--txt-mode", default="file", choices=["file", "line", "paragraph"],
                   help="a .txt document is the whole file (default), each line, or each blank-line paragraph")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of documents for validation (0.01)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the train/validation split (1234)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard (100000000)")
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes (the rule's threads)")
    p.add_argument("--eot", default=None, help="the separator token before each document (default: the "
                                                "tokenizer's end-of-text token)")
    p.add_argument("--bpe-train-bytes", type=int, default=1 << 30,
                   help="bpe:N trains on at most this many characters of training documents (2**30)")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--model-vocab-size", type=int, default=None,
                       help="refuse a tokenizer with more ids than the model's vocabulary")
    vocab.add_argument("--model", default=None, metavar="hf:DIR",
                       help="refuse a tokenizer with more ids than this HF model's config.json vocab_size")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    from trainer.data import DataError
    from trainer.textprep import PrepConfig, prepare
    from trainer.tokenizer import TokenizerError, model_vocab_size

    try:
        model_vocab = a.model_vocab_size
        if a.model is not None:
            model_vocab = model_vocab_size(a.model)
        m = prepare(PrepConfig(inputs=a.inputs, out_dir=a.out_dir, tokenizer=a.tokenizer, text_field=a.text_field,
                               txt_mode=a.txt_mode, val_fraction=a.val_fraction, seed=a.seed,
                               shard_tokens=a.shard_tokens, workers=a.workers, eot=a.eot,
                               bpe_train_bytes=a.bpe_train_bytes, model_vocab=model_vocab,
                               progress=not a.no_progress))
    except (DataError, TokenizerError) as e:
        print(f"prepare_text.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{a.out_dir}: {m['tokens']['train']:,} train / {m['tokens']['val']:,} val tokens "
          f"({m['documents']['train']:,} + {m['documents']['val']:,} documents), {m['tokenizer_setting']} "
          f"vocabulary {m['vocab_size']}, {m['dtype']}, content checksum {m['content_checksum']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
