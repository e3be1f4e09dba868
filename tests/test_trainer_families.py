"""trainer/models/: one declaration per model family, read by the trainer's spec without torch; the model
modules build their models and import nothing of the package that dispatches to them (issue 21)."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_model_modules_do_not_import_the_dispatching_package_back():
    """The circle trainer/model.py <-> ngpt.py / hf.py is gone: each family module imports only downwards."""
    code = ("import sys; import trainer.ngpt, trainer.hf; "
            "assert 'trainer.models' in sys.modules; import trainer.models.families as f; "
            "src = [open(m.__file__).read() for m in (trainer.ngpt, trainer.hf)]; "
            "assert all('from trainer.models import' not in s and 'import trainer.models\\n' not in s for s in src)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
