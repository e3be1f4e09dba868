"""optim/registry.py: one declaration per optimizer class, the same one the study checks, the trainer's spec,
the factory and the constructors read (issue 21)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import optim
from optim import registry
from optim.muon import ADJUST_LR_FNS
from optim.noise import NOISE_METHODS
from optim.orthogonalize import ORTHOGONALIZERS, PRECISIONS
from optim.schedules import SCHEDULES
from optim.sphere import UPDATES, WEIGHT_DECAY_SCALES
from tests.workflow_helpers import REPO


def _signature_defaults(cls) -> dict:
    out = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass) and klass.__module__.startswith("optim."):
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if p.default is not p.empty:
                    out[name] = p.default
    return out


def test_every_class_is_declared_once_and_built_from_its_declaration():
    assert list(optim.OPTIMIZERS) == list(registry.OPTIMIZERS)
    for name, entry in registry.OPTIMIZERS.items():
        cls = optim.OPTIMIZERS[name]
        assert cls.__name__ == name and cls.__module__ == entry.module
        assert registry.ALGORITHM_VERSIONS[name] == entry.version >= 1
        assert entry.takes in ("matrices", "none")
        assert entry.traits <= {"noise", "effective_rank", "self_synced"}, name


def test_each_declared_kind_accepts_the_classes_own_default():
    for name, entry in registry.OPTIMIZERS.items():
        defaults = _signature_defaults(optim.OPTIMIZERS[name])
        for key, kind in entry.arguments.items():
            assert registry.kind_problem(kind, defaults[key]) is None, (name, key, kind, defaults[key])


def test_the_declared_choices_are_the_codes_own():
    muon = registry.OPTIMIZERS["Muon"].arguments
    assert set(muon["orthogonalizer"]) == set(ORTHOGONALIZERS)
    assert set(muon["ns_precision"]) == set(PRECISIONS)
    assert set(muon["adjust_lr_fn"]) == set(ADJUST_LR_FNS)
    assert set(muon["update"]) == set(UPDATES)
    assert set(muon["weight_decay_scale"]) == {None, *WEIGHT_DECAY_SCALES}
    assert set(registry.OPTIMIZERS["MuonOrthoNoise"].arguments["noise_method"]) == set(NOISE_METHODS)
    assert set(registry.OPTIMIZERS["MuonOrthoNoise"].arguments["schedule"]) == set(SCHEDULES)
    demo = registry.OPTIMIZERS["DeMo"].arguments
    from optim import dct, demo as demo_module

    assert set(demo["value_dtype"]) == set(dct.VALUE_DTYPES)
    assert set(demo["orthogonalize"]) == set(demo_module.ORTHOGONALIZE_MODES)
    assert set(demo["pre_update"]) == set(demo_module.PRE_UPDATES)


@pytest.mark.parametrize("cls,key,bad", [
    ("Muon", "momentum", 1.0), ("Muon", "ns_steps", 0), ("Muon", "eps", 0.0), ("Muon", "nesterov", 1),
    ("MuonOrthoNoise", "rank_threshold", 0.0), ("MuonOrthoNoise", "noise_method", "svd"),
    ("MuonIsotropic", "reortho_steps", 101), ("MuonNOLAH", "percentile", 0.0), ("NorMuon", "beta2", 1.0),
    ("DeMo", "topk", 0.0), ("DeMo", "chunk", 1025), ("DeMo", "orthogonalize", "both"),
])
def test_the_constructors_refuse_what_the_declaration_refuses_naming_the_key(cls, key, bad):
    kind = registry.OPTIMIZERS[cls].arguments[key]
    what = registry.kind_problem(kind, bad)
    assert what is not None
    with pytest.raises(ValueError, match=rf"^{cls}: {key}=.* is not allowed; use {what.replace('(', '.').replace(')', '.').replace('[', '.').replace(']', '.')}"):
        optim.OPTIMIZERS[cls]([torch.nn.Parameter(torch.zeros(4, 4))], **{key: bad})


def test_a_subclass_is_checked_as_its_registered_parent():
    class Warm(optim.Muon):  # a user's variant, not registered: Muon's declarations apply
        pass

    with pytest.raises(ValueError, match="Warm: momentum=1.5"):
        Warm([torch.nn.Parameter(torch.zeros(4, 4))], momentum=1.5)


def test_one_default_parameter_split_for_the_factory_the_trainer_and_the_schema():
    import yaml

    from trainer.spec import DEFAULT_ADAMW_PATTERNS

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    declared = schema["properties"]["optimizer_defaults"]["properties"]["adamw_patterns"]["default"]
    assert tuple(declared) == tuple(DEFAULT_ADAMW_PATTERNS) == registry.DEFAULT_ADAMW_PATTERNS


def test_the_registry_and_the_trainer_spec_are_read_without_torch():
    code = ("import sys; from study.spec import optimizer_registry, load_file_module; "
            "r = optimizer_registry(); s = load_file_module('.', 'trainer/spec.py'); "
            "assert s.OPTIMIZER_CLASSES == tuple(r.OPTIMIZERS); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
