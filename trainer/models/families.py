"""The model families: one declaration each, read by the trainer's spec without torch (stdlib only).

A family is a module that builds its models (its `build(arch, vocab_size, tie_embeddings, options, revision)`)
and this entry: its presets with their block sizes (or the arch prefix it answers to), the model.options it
takes with their kinds and defaults, and its traits. trainer/spec.py checks a run's model section with it,
trainer/models/__init__.py builds the model with the module it names and asks the module for its per-step
hook (`step_hook(model, training)`: nGPT's projection back onto the sphere). The parameter split and the
sphere axes are the model's own (`named_parameters()` names the split's patterns match; `sphere_dims()` for
a family whose weights live on the sphere, read by optim/factory.py). A new family: its module and one
entry here (docs/extending.md).
"""

from dataclasses import dataclass, field


class ModelError(ValueError):
    """A model that cannot be built as asked."""


@dataclass(frozen=True)
class Option:
    kind: str  # a trainer/spec.py _Checker kind: "choice", "float", "int", "bool"
    default: object
    choices: tuple = ()
    lo: object = None
    lo_open: bool = False
    only_with: tuple = ()  # (other option, value): the option exists only when the other one has that value


@dataclass(frozen=True)
class Family:
    module: str  # the module that builds the models (imported by trainer/models/__init__.py only)
    title: str  # how messages name it
    presets: dict = field(default_factory=dict)  # preset name -> block size (the longest sequence)
    prefix: str = ""  # an arch of the form PREFIX<path or Hub id> (hf:), instead of presets
    options: dict = field(default_factory=dict)  # model.options key -> Option, in the order they resolve
    # "sphere": keeps its weights on the unit sphere (training.projection_every, the geodesic Muon updates);
    # "own_config": its config comes with the weights (no vocab_size / tie_embeddings; a Hub id's revision)
    traits: frozenset = field(default_factory=frozenset)


FAMILIES = {
    "gpt": Family("trainer.model", "GPT presets",
                  presets={"tiny": 1024, "gpt-124m": 4096, "gpt-350m": 4096, "gpt-1b": 4096}),
    "ngpt": Family("trainer.ngpt", "nGPT presets (ngpt-*)",
                   presets={"ngpt-tiny": 1024, "ngpt-124m": 4096, "ngpt-350m": 4096},
                   options={"residual": Option("choice", "reference", choices=("reference", "gated")),
                            "gate_alpha": Option("float", 0.15, lo=0.0, lo_open=True, only_with=("residual", "gated"))},
                   traits=frozenset({"sphere"})),
    "hf": Family("trainer.hf", "Hugging Face causal LMs (hf:<local path> or hf:<Hub id>)", prefix="hf:",
                 traits=frozenset({"own_config"})),
}

PRESETS = {name: fam for fam in FAMILIES.values() for name in fam.presets}  # preset name -> its family


def family_of(arch) -> Family | None:
    """The family of model.arch (a preset's, or the one whose prefix it starts with), else None."""
    if not isinstance(arch, str):
        return None
    if arch in PRESETS:
        return PRESETS[arch]
    for fam in FAMILIES.values():
        if fam.prefix and arch.startswith(fam.prefix) and len(arch) > len(fam.prefix):
            return fam
    return None


def titles(trait: str = "", takes_options: bool = False) -> str:
    """The families with `trait` (or that take options), named for a message."""
    return ", ".join(f.title for f in FAMILIES.values()
                     if (not trait or trait in f.traits) and (not takes_options or f.options))
