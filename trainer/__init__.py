"""One training run: model, data, loop, records, checkpoints, wandb (docs/trainer.md, docs/DESIGN.md).

Importing the package is cheap (no torch): the submodules import what they need.
"""

from trainer.version import TRAINER_VERSION

__all__ = ["TRAINER_VERSION"]
