"""The optimizer registry: one declaration per optimizer class, read by every layer (no imports but the stdlib).

Each entry names the class (its module and name), the keyword arguments a study may set with their allowed
values, its behaviour version, which parameters it takes and its traits. The workflow reads this file
without importing torch (study/spec.py loads it from its path; Snakemake may parse the Snakefile where
torch is not installed), and so does trainer/spec.py; optim/factory.py builds the classes from it and
the classes' constructors check their arguments against it (`check_arguments`). A new optimizer is its
module and one entry here (docs/extending.md); tests/test_study_plan.py keeps every entry's arguments
equal to its class's signature.

An argument's kind is one of KINDS ("positive": finite > 0, "momentum": finite in [0, 1), "int1..100", ...),
a tuple of the allowed values, or None (any JSON value: the class itself checks it). A kind ending in "?"
also allows None (the class's "use its own default"). `seed` is never declared: the run's seed sets it.

Behaviour versions: bump an entry's `version` when, and only when, a change can alter the numbers the
class produces (its math, its defaults, its noise draws). The workflow puts the number into every run's
fingerprint, so the runs of that class, and only those, become stale. Refactors, comments and speedups that
keep the results bitwise-identical leave it alone. The noise classes, NOLAH and NorMuon inherit Muon's
step: a change in optim/muon.py, orthogonalize.py or rank.py alters them all. See docs/optim.md.
"""

import math
from dataclasses import dataclass, field

# kind -> (test, what is allowed). The tests see finite numbers only (bool is not a number here).
KINDS = {
    "positive": (lambda v: v > 0, "a finite number > 0"),
    "nonnegative": (lambda v: v >= 0, "a finite number >= 0"),
    "fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "fraction>0": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "int>=0": (lambda v: v >= 0, "an integer >= 0"),
    "int>=1": (lambda v: v >= 1, "an integer >= 1"),
    "int0..100": (lambda v: 0 <= v <= 100, "an integer in [0, 100]"),
    "int1..100": (lambda v: 1 <= v <= 100, "an integer in [1, 100]"),
    "int1..1024": (lambda v: 1 <= v <= 1024, "an integer in [1, 1024]"),
}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def kind_problem(kind, value):
    """None when `value` is allowed by `kind`, else the words for what is allowed."""
    if kind is None:
        return None
    nullable = isinstance(kind, str) and kind.endswith("?")
    if nullable:
        if value is None:
            return None
        kind = kind[:-1]
    if isinstance(kind, tuple):
        ok = value in kind and type(value) in {type(k) for k in kind}
        return None if ok else f"one of {', '.join(map(repr, kind))}"
    if kind == "bool":
        ok, words = isinstance(value, bool), "true or false"
    elif kind == "betas":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(b) and 0 <= b < 1 for b in value)
        words = "two numbers in [0, 1)"
    else:
        test, words = KINDS[kind]
        integer = kind.startswith("int")
        ok = (isinstance(value, int) and not isinstance(value, bool) if integer else _number(value)) and test(value)
    return None if ok else words + (" or null" if nullable else "")


@dataclass(frozen=True)
class Optimizer:
    module: str  # the module that defines the class (imported by optim/factory.py only)
    version: int  # the behaviour version (see above)
    arguments: dict  # keyword argument -> kind (what a study may set under optimizer.muon / arms.NAME.muon)
    # Which parameters the class takes: "matrices" (the >= 2-D hidden weights; AdamW takes the rest, and every
    # name matching optimizer_defaults.adamw_patterns) or "none" (AdamW takes every parameter).
    takes: str = "matrices"
    # "noise": adds noise scaled by alpha (a run needs alpha > 0); "effective_rank": measures and logs the
    # momentum's effective rank (eff_rank_* diagnostics, every rank_every steps); "self_synced": exchanges its own
    # compressed gradients (the trainer leaves them alone, no rank holds the global gradient to clip).
    traits: frozenset = field(default_factory=frozenset)


MUON = {
    "lr": "positive",
    "momentum": "momentum",
    "nesterov": "bool",
    "weight_decay": "nonnegative",
    "cautious_wd": "bool",
    "weight_decay_scale": (None, "lr", "lr_lr_eff"),
    "update": ("euclidean", "geodesic", "geodesic_scaled"),
    "adjust_lr_fn": (None, "original", "match_rms_adamw"),
    "orthogonalizer": ("newton_schulz", "polar_express", "svd"),
    "ns_steps": "int1..100",
    "ns_precision": ("bf16", "fp32"),
    "eps": "positive?",
    "rank_every": "int>=0",
    "shard_across_ranks": "bool",
}

NOISE = {
    "alpha": "nonnegative",
    "schedule": ("constant", "exponential", "linear"),
    "alpha_end": "nonnegative?",
    "schedule_steps": "int>=1",
    "half_life": "positive?",
    "noise_warmup_steps": "int>=0",
    "rank_threshold": "fraction>0?",
    "persist_noise": "bool",
}

MEASURES = frozenset({"effective_rank"})

OPTIMIZERS = {
    # 2 (issue 15): the effective rank is measured on the host (float64 Gram, LAPACK) and the measurement of
    # step k is applied at step k + rank_every (the noise trigger, and the eff_rank diagnostics of all four);
    # bf16/fp16 parameters: decay and step computed in float32 and rounded once.
    # 3 (issue 24), the Muon family (NorMuon 2): on CUDA the bf16 Newton-Schulz / Polar Express iterations run
    # through optim/triton_ns.py (another bf16 rounding of the same iteration) and the update W + s*O is one
    # pass; the CPU path is bitwise unchanged (its runs re-run once for nothing: the number names the code).
    "Muon": Optimizer("optim.muon", version=3, arguments=MUON, traits=MEASURES),
    "MuonOrthoNoise": Optimizer("optim.orthonoise", version=3, traits=MEASURES | {"noise"},
                                arguments={**MUON, **NOISE, "noise_method": ("qr", "polar"), "reortho_steps": "int0..100"}),
    "MuonIsotropic": Optimizer("optim.orthonoise", version=3, traits=MEASURES | {"noise"},
                               arguments={**MUON, **NOISE, "reortho_steps": "int0..100"}),
    "MuonNOLAH": Optimizer("optim.nolah", version=3, traits=MEASURES,
                           arguments={**MUON, "gating": "bool", "percentile": "fraction>0",
                                      "percentile_scale": "nonnegative", "sigmoid_projection": "bool"}),
    # inherits Muon's step (a change there alters it too)
    "NorMuon": Optimizer("optim.normuon", version=2, arguments={**MUON, "beta2": "momentum"}, traits=MEASURES),
    # torch.optim.AdamW for every parameter (its settings are optimizer.adamw)
    "AdamW": Optimizer("optim.adamw", version=1, arguments={}, takes="none"),
    # compressed data-parallel (optim/demo.py): DCT top-k of each rank's momentum, exchanged by all_gather.
    # 2 (issue 20): delta accumulates lr * g, and a coefficient is the mean over the ranks that sent it
    # (bloc97/DeMo); Polar Express's epsilon as above for 'pre'/'post'.
    "DeMo": Optimizer("optim.demo", version=2, traits=frozenset({"self_synced"}), arguments={
        "lr": "nonnegative", "compression_decay": "momentum", "chunk": "int1..1024", "topk": "fraction>0",
        "sign": "bool", "value_dtype": ("float32", "bfloat16"), "orthogonalize": ("none", "pre", "post"),
        "pre_update": ("sign", "rescale", "raw"), "weight_decay": "nonnegative",
        "lr_scaled_delta": "bool", "mean_over_senders": "bool",
        "adjust_lr_fn": (None, "original", "match_rms_adamw"),
        "orthogonalizer": ("newton_schulz", "polar_express", "svd"), "ns_steps": "int1..100",
        "ns_precision": ("bf16", "fp32"), "eps": "positive?",
    }),
}

# The parameters that go to AdamW although they are matrices: those whose dotted name contains one of these
# (embeddings, output heads, norms, biases, gains). The one default: the trainer's spec (optimizer.split), the
# factory's and the study schema's (optimizer_defaults.adamw_patterns; a test keeps that one equal).
DEFAULT_ADAMW_PATTERNS = ("embed", "wte", "wpe", "lm_head", "head", "norm", "ln", "bias", "gain")

# The AdamW beside every class (and the whole AdamW arm): what a study may set under optimizer.adamw.
ADAMW_ARGUMENTS = {
    "lr": "positive",
    "betas": "betas",
    "eps": "positive",
    "weight_decay": "nonnegative",
}

# Behaviour versions of features a run may or may not use, so that a change to one re-runs only the runs
# that use it (a class-wide bump would re-run every OrthoNoise run for a change to Polar Express).
# name: (version, the optimizer.muon settings that select it: a run uses the feature when its resolved
# settings hold all of them). A feature's number enters the fingerprint of the runs that use it only.
FEATURE_VERSIONS = {
    # issue 20: Polar Express normalises by ||X|| * 1.02 + 1e-6 (modded-nanogpt's; 1e-7 before)
    "polar_express": (2, {"orthogonalizer": "polar_express"}),
    # issue 20: cautious decay removes wd * lr * lr_eff of W where it applies (modded-nanogpt's; lr * wd
    # before, still there as weight_decay_scale: lr)
    "cautious_wd": (2, {"cautious_wd": True}),
}

ALGORITHM_VERSIONS = {name: o.version for name, o in OPTIMIZERS.items()}
OPTIMIZER_ARGUMENTS = {name: o.arguments for name, o in OPTIMIZERS.items()}


def with_trait(trait: str) -> tuple:
    """The classes that have `trait`, in registry order."""
    return tuple(name for name, o in OPTIMIZERS.items() if trait in o.traits)


def entry_of(cls) -> tuple:
    """(name, entry) of the nearest registered class along `cls`'s MRO (a subclass of a registered class,
    e.g. in a test, is checked as its registered parent)."""
    for klass in cls.__mro__:
        if klass.__name__ in OPTIMIZERS and klass.__module__ == OPTIMIZERS[klass.__name__].module:
            return klass.__name__, OPTIMIZERS[klass.__name__]
    raise KeyError(f"{cls.__name__} is not in optim/registry.py OPTIMIZERS (nor is any class it derives from)")


def check_arguments(obj, given: dict) -> None:
    """ValueError naming the first argument of `given` (a constructor's locals()) that its class's entry
    refuses: "NAME: key=value is not allowed; use <what is allowed>". Keys the entry does not declare (self,
    params, seed, **kwargs) are left to the constructor."""
    name, entry = entry_of(type(obj))
    for key, value in given.items():
        if key in entry.arguments:
            what = kind_problem(entry.arguments[key], value)
            if what:
                raise ValueError(f"{type(obj).__name__}: {key}={value!r} is not allowed; use {what}")
