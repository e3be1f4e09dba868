"""Entry point of the stdlib_corpus rule: the embedded byte corpus from this Python's standard library.

    python workflow/scripts/build_corpus.py --out-dir results/data/stdlib [--force]

Writes train.bin, val.bin (nanoGPT shard format, one token per byte) and manifest.json (last).
"""
import argparse
import sys
from pathlib import Path

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: use the repository checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.data import build_stdlib_corpus


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--force", action="store_true", help="rebuild even if a complete corpus is there")
    a = p.parse_args(argv)
    m = build_stdlib_corpus(a.out_dir, force=a.force)
    print(f"stdlib corpus in {a.out_dir}: {m['tokens']['train']:,} train / {m['tokens']['val']:,} val tokens "
          f"from {m['n_files']['train']} + {m['n_files']['val']} files of {m['stdlib_dir']} "
          f"(Python {m['python_version']}), sha256 {m['corpus_sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
