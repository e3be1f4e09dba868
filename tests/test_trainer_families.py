"""trainer/models/: one declaration per model family, read by the trainer's spec without torch; the model
modules build their models and import nothing of the package that dispatches to them (issue 21)."""

from __future__ import annotations

import ast

import pytest

from tests.workflow_helpers import REPO
from trainer.models import FAMILIES, ModelError, build_model, family_of, step_hook
from trainer.spec import PRESET_BLOCK_SIZE, RunSpec, SpecError, example_spec


def test_every_preset_builds_with_its_declared_block_size():
    for fam in FAMILIES.values():
        for preset, block in fam.presets.items():
            if preset.endswith("tiny"):  # the large ones are built by the model tests' own fixtures
                assert build_model(preset).block_size == block == PRESET_BLOCK_SIZE[preset]
    with pytest.raises(ModelError, match="one of"):
        build_model("gpt-7b")


def test_the_per_step_hook_is_the_familys():
    spec = RunSpec.from_dict(example_spec())
    assert step_hook(build_model("tiny"), "tiny", spec.training) is None
    assert step_hook(build_model("ngpt-tiny"), "ngpt-tiny", spec.training) is not None
    assert family_of("hf:some/dir") is FAMILIES["hf"] and family_of("hf:") is None


def test_options_resolve_from_the_declaration():
    d = example_spec()
    d["model"] = {"name": "n", "arch": "ngpt-tiny", "options": {"residual": "gated"}}
    assert RunSpec.from_dict(d).model.options == {"residual": "gated", "gate_alpha": 0.15}
    d["model"]["options"] = {"gate_alpha": 0.2}
    with pytest.raises(SpecError, match="only with model.options.residual 'gated'"):
        RunSpec.from_dict(d)
    d["model"] = {"name": "t", "arch": "tiny", "options": {"residual": "gated"}}
    with pytest.raises(SpecError, match=r"only for the nGPT presets \(ngpt-\*\)"):
        RunSpec.from_dict(d)


def _imports(path, inside_functions: bool) -> set[str]:
    """The modules a file imports (relative imports resolved within its package), at module level or inside
    functions."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = set()
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    in_functions = {id(n) for f in funcs for n in ast.walk(f)}
    nodes = [n for n in ast.walk(tree) if (id(n) in in_functions) == inside_functions]
    for n in nodes:
        if isinstance(n, ast.ImportFrom):
            out.add(f"{package}.{n.module}" if n.level else n.module)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
    return out


@pytest.mark.parametrize("module, partner", [
    ("trainer/model.py", "trainer.ngpt"), ("trainer/model.py", "trainer.hf"),
    ("optim/sphere.py", "optim.muon"), ("study/checks.py", "study.plan")])
def test_the_three_import_circles_are_gone_not_dodged(module, partner):
    """Issue 21: trainer/model.py <-> ngpt.py/hf.py, optim/muon.py <-> sphere.py and study/checks.py <-> plan.py
    were each dodged by an import inside a function; none of those imports is left, at any level."""
    path = REPO / module
    assert partner not in _imports(path, inside_functions=True) | _imports(path, inside_functions=False)
