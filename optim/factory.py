"""Split a model's parameters between the Muon family and AdamW, and build the pair as one optimizer.

The split (KellerJordan/Muon, modded-nanogpt): hidden weight matrices (>= 2-D: linear weights, and
conv weights viewed as 2-D) go to the Muon-family optimizer; a parameter goes to AdamW if it is < 2-D
or if any of `adamw_patterns` is a substring of its dotted name (model.named_parameters(); case
sensitive). The defaults catch embeddings (embed, wte, wpe), output heads (lm_head, head), norms
(norm, ln), biases and gains. Parameters with requires_grad=False are left out. Tied weights appear
once, under their first name.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

from .adamw import AdamW
from .muon import DIAGNOSTIC_KEYS, Muon
from .registry import ALGORITHM_VERSIONS, DEFAULT_ADAMW_PATTERNS, OPTIMIZERS as DECLARED, entry_of

# name -> class, in the registry's order (optim/registry.py: one entry per class, its module named there)
OPTIMIZERS = {name: getattr(importlib.import_module(o.module), name) for name, o in DECLARED.items()}
ADAMW_KWARGS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "fused", "foreach", "capturable", "maximize")


def split_parameters(
    model: nn.Module, adamw_patterns: Sequence[str] | None = None
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(muon, adamw): lists of (name, parameter) in model order."""
    patterns = DEFAULT_ADAMW_PATTERNS if adamw_patterns is None else tuple(adamw_patterns)
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise ValueError(f"adamw_patterns: {pat!r} is not allowed; use non-empty strings")
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(pat in name for pat in patterns):
            adamw.append((name, p))
        else:
            muon.append((name, p))
    return muon, adamw


class MuonWithAdamW:
    """A Muon-family optimizer and an AdamW stepped together, seen as one optimizer.

    param_groups lists the Muon groups first, then the AdamW groups; every group has "initial_lr"
    and "kind" ("muon" or "adamw"). The trainer scales group["lr"] from group["initial_lr"].
    """

    def __init__(self, muon: Muon | None, adamw: torch.optim.AdamW | None, assignment: dict):
        self.muon = muon
        self.adamw = adamw
        self.assignment = assignment
        self.optimizers = [o for o in (muon, adamw) if o is not None]
        for kind, opt in (("muon", muon), ("adamw", adamw)):
            if opt is not None:
                for g in opt.param_groups:
                    g.setdefault("initial_lr", g["lr"])
                    g["kind"] = kind

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self):
        merged = {}
        for opt in self.optimizers:
            merged.update(opt.state)
        return merged

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def settle_measurements(self) -> None:
        """Wait for the Muon half's effective-rank measurements in flight (every rank must call it when
        they are sharded); a checkpoint calls it before state_dict()."""
        settle = getattr(self.muon, "settle_measurements", None)  # the Muon family; DeMo measures nothing
        if settle is not None:
            settle()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    @property
    def diagnostics(self) -> dict:
        if self.muon is None:
            return {k: None for k in DIAGNOSTIC_KEYS}
        return self.muon.diagnostics

    @property
    def step_count(self) -> int:
        return self.muon.step_count if self.muon is not None else 0

    # compressed data-parallel (optim/demo.py): the Muon part may exchange its own gradients
    @property
    def has_rank_local_state(self) -> bool:
        return bool(getattr(self.muon, "has_rank_local_state", False))

    def self_synced(self) -> set[int]:
        """ids of the parameters whose gradients the optimizer exchanges itself (the trainer must not
        all-reduce them)."""
        if self.muon is None or not getattr(self.muon, "communicates_itself", False):
            return set()
        return {id(p) for g in self.muon.param_groups for p in g["params"]}

    def communication(self) -> dict:
        """Payload bytes per rank per step: bytes_sent_per_step (what this rank sends: the compressed
        buffer of a self-communicating Muon part, plus the dense gradients of every other parameter,
        all-reduced by the trainer) and allreduce_bytes_per_step (an all-reduce of all gradients)."""
        own = self.self_synced()
        params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
        dense = sum(p.numel() * p.element_size() for p in params)
        rest = sum(p.numel() * p.element_size() for p in params if id(p) not in own)
        sent = rest
        if own:
            b = self.muon.diagnostics.get("bytes_sent_per_step")
            sent += b if b is not None else self.muon.bytes_per_step()[0]
        return {"bytes_sent_per_step": sent, "allreduce_bytes_per_step": dense}

    def state_dict(self) -> dict:
        return {
            "muon": self.muon.state_dict() if self.muon is not None else None,
            "adamw": self.adamw.state_dict() if self.adamw is not None else None,
            "assignment": self.assignment,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("assignment") != self.assignment:
            raise ValueError("state_dict was saved with a different parameter split (assignment differs)")
        for key, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if opt is not None:
                opt.load_state_dict(state_dict[key])
        for kind, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if opt is not None:
                for g in opt.param_groups:
                    g["kind"] = kind


def _allowed_kwargs(cls) -> list[str]:
    """The keyword arguments `cls` (a class or its name) takes from muon_kwargs: its registry entry's, and the
    run's seed."""
    declared = DECLARED[cls] if isinstance(cls, str) else entry_of(cls)[1]
    return [] if declared.takes == "none" else list(declared.arguments) + ["seed"]


def build_optimizer(
    model: nn.Module,
    cls: str = "Muon",
    muon_kwargs: dict | None = None,
    adamw_kwargs: dict | None = None,
    adamw_patterns: Sequence[str] | None = None,
    seed: int = 0,
) -> MuonWithAdamW:
    """Split `model`'s parameters and build `cls` (a name in OPTIMIZERS) with AdamW beside it.

    muon_kwargs go to the Muon-family class (its `seed` is `seed`); adamw_kwargs to torch.optim.AdamW
    (lists are turned into tuples; fused=True when every AdamW parameter is a floating CUDA tensor,
    unless adamw_kwargs says otherwise). cls="AdamW": every parameter to AdamW, muon_kwargs must be empty.
    A model with `sphere_dims()` (nGPT) tells the Muon-family optimizer along which dim each matrix is
    normalized (its geodesic updates need it).
    """
    if cls not in OPTIMIZERS:
        raise ValueError(f"cls={cls!r} is not allowed; use one of {list(OPTIMIZERS)}")
    klass = OPTIMIZERS[cls]
    muon_kwargs = dict(muon_kwargs or {})
    adamw_kwargs = dict(adamw_kwargs or {})
    if "seed" in muon_kwargs and muon_kwargs["seed"] != seed:
        raise ValueError(f"muon_kwargs['seed']={muon_kwargs['seed']!r} differs from seed={seed!r}")
    muon_kwargs["seed"] = seed
    takes_none = DECLARED[cls].takes == "none"  # the AdamW arm: every parameter to AdamW
    if takes_none:
        muon_kwargs.pop("seed")
        if muon_kwargs:
            raise ValueError(f"AdamW: takes no Muon-family settings (got {sorted(muon_kwargs)}); every parameter "
                             f"goes to AdamW, whose settings are adamw_kwargs (optimizer.adamw)")
    allowed = _allowed_kwargs(cls)
    unknown = sorted(set(muon_kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{cls}: unknown keyword argument(s) {unknown}; allowed: {allowed}")
    bad = sorted(set(adamw_kwargs) - set(ADAMW_KWARGS))
    if bad:
        raise ValueError(f"adamw_kwargs: unknown keyword argument(s) {bad}; allowed: {list(ADAMW_KWARGS)}")
    for k, v in list(adamw_kwargs.items()):
        if isinstance(v, list):
            adamw_kwargs[k] = tuple(v)

    if takes_none:
        muon_named, adamw_named = [], [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    else:
        muon_named, adamw_named = split_parameters(model, adamw_patterns)
    assignment = {"muon": [n for n, _ in muon_named], "adamw": [n for n, _ in adamw_named]}
    if takes_none:
        muon = None
    elif muon_named:
        muon = klass([p for _, p in muon_named], **muon_kwargs)
        dims = model.sphere_dims() if callable(getattr(model, "sphere_dims", None)) else {}
        if hasattr(muon, "set_sphere_dims"):  # the Muon family; DeMo updates the sphere's weights like any
            muon.set_sphere_dims({p: dims[n] for n, p in muon_named if n in dims})
    else:  # still check the settings, so that a bad config fails here and not at the next model
        klass([nn.Parameter(torch.zeros(2, 2))], **muon_kwargs)
        muon = None
    adamw = None
    if adamw_named:
        ps = [p for _, p in adamw_named]
        if "fused" not in adamw_kwargs and "foreach" not in adamw_kwargs:
            if all(p.is_cuda and p.is_floating_point() for p in ps):
                adamw_kwargs["fused"] = True
        adamw = AdamW(ps, **adamw_kwargs)
    return MuonWithAdamW(muon, adamw, assignment)


__all__ = ["ALGORITHM_VERSIONS", "DEFAULT_ADAMW_PATTERNS", "MuonWithAdamW", "OPTIMIZERS", "build_optimizer", "split_parameters"]
