"""Building a run's model from its family (trainer/models/families.py), and the family's per-step hook.

The families' modules (trainer/model.py: the GPT presets, trainer/ngpt.py, trainer/hf.py) import nothing
from here; this package imports them by the name their declaration gives, when a model is built.
"""

from __future__ import annotations

import importlib

from trainer.models.families import FAMILIES, PRESETS, Family, ModelError, family_of


def family_module(arch: str):
    fam = family_of(arch)
    if fam is None:
        known = sorted(PRESETS) + [f"{f.prefix}<...>" for f in FAMILIES.values() if f.prefix]
        raise ModelError(f"model.arch {arch!r}: one of {known}")
    return importlib.import_module(fam.module)


def build_model(arch: str, vocab_size: int | None = None, tie_embeddings: bool = False,
                options: dict | None = None, revision: str | None = None):
    """The model of `arch`, built by its family's module. Every model has forward(idx, targets) -> mean
    cross-entropy, .vocab_size, .block_size, .flops_per_token(T), .num_params()."""
    return family_module(arch).build(arch, vocab_size, tie_embeddings, options, revision)


def step_hook(model, arch: str, training):
    """The family's hook run after each optimizer step (`after_step(step)`), or None (most families)."""
    hook = getattr(family_module(arch), "step_hook", None)
    return hook(model, training) if hook is not None else None


__all__ = ["FAMILIES", "Family", "ModelError", "build_model", "family_of", "step_hook"]
