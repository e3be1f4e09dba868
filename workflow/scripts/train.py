"""Entry point of the train rule: one training run (docs/DESIGN.md, "Trainer entry point").

    torchrun --standalone --nproc-per-node N workflow/scripts/train.py --spec SPEC --out-dir DIR --checkpoint-dir DIR
    python workflow/scripts/train.py --spec SPEC --out-dir DIR --checkpoint-dir DIR

All logic lives in trainer/ (trainer.cli.main); see docs/trainer.md.
"""
import sys
from pathlib import Path

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: use the repository checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(hold_signals=True))  # a signal after the records are complete exits 0
