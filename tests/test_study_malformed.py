"""Malformed study settings that used to pass planning and fail in every train job, or hang, or fail without
naming the key (issues 18.5 and 28.6-28.9). Each is refused by the planning code itself (fast, no Snakemake),
in a line naming the key and the value; the table is the set the fault suite tried: 0 accepted, 0 unnamed.
Two go through the real `snakemake -n` (tests/test_workflow_hostile.py has the CLI cases)."""

from __future__ import annotations

import copy

import pytest

from study import Plan, PlanError, StudyFileError, load_study
from tests.workflow_helpers import REPO, put

_TWINS: dict = {}


def twin(name: str) -> dict:
    if name not in _TWINS:
        _TWINS[name] = load_study({"study": name, "tiny": True}, REPO)[0]
    return copy.deepcopy(_TWINS[name])


def rename_arm(old, new):
    def mutate(c):
        c["arms"][new] = c["arms"].pop(old)
        for p in c["phases"].values():
            for e in p["runs"]:
                if e["arm"] == old:
                    e["arm"] = new
    return mutate


# (study twin, mutation, words the one-line error must hold: the key and the value)
MALFORMED = [
    ("orthonoise", put("models", "tiny", "global_batch", 2**40), ["global_batch", str(2**40)]),
    ("orthonoise", put("training_defaults", "eval_batches", 10**9), ["eval.batches", str(10**9), "eval_batches"]),
    ("orthonoise", put("models", "tiny", "seq_len", 10**7), ["training.seq_len", str(10**7)]),
    ("orthonoise", put("models", "tiny", "seq_len", 2048), ["training.seq_len", "2048", "models.tiny.seq_len"]),
    ("orthonoise", put("models", "tiny", "steps", 10**15), ["models.tiny.steps", str(10**15)]),
    ("orthonoise", put("training_defaults", "eval_every", 1), None),  # a valid setting (control)
    ("orthonoise", put("optimizer_defaults", "muon", "ns_steps", 10**6), ["ns_steps", str(10**6), "[1, 100]"]),
    ("orthonoise", put("phases", "phase1", "seeds", [42, 2**64]), ["seed", str(2**64), "phases.*.seeds"]),
    ("orthonoise", put("phases", "phase1", "seeds", [2**63]), ["seed", str(2**63)]),
    ("orthonoise", put("wandb", "entity", ""), ["wandb.entity", "''"]),
    ("orthonoise", put("models", "tiny", "options", {"residual": "gated"}), ["model.options", "nGPT"]),
    ("orthonoise", rename_arm("nolah", "nolah\n"), ["'nolah\\n'"]),
    ("orthonoise", lambda c: c["models"].__setitem__("tiny\n", c["models"].pop("tiny-scratch")), ["'tiny\\n'"]),
    ("distro", put("arms", "demo", "muon", "topk", 0.0), ["arms.demo.muon.topk", "0.0", "(0, 1]"]),
    ("distro", put("arms", "demo", "muon", "chunk", 4096), ["arms.demo.muon.chunk", "4096", "[1, 1024]"]),
    ("distro", put("training_defaults", "grad_clip", 1.0), ["training.grad_clip", "1.0", "DeMo"]),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name, mutate, words", MALFORMED, ids=[f"{i}" for i in range(len(MALFORMED))])
def test_a_malformed_setting_is_refused_at_planning_naming_key_and_value(name, mutate, words):
    cfg = twin(name)
    mutate(cfg)
    if words is None:
        Plan(cfg)
        return
    with pytest.raises(PlanError) as err:
        Plan(cfg)
    msg = str(err.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"{missing} not in: {msg}"


def test_each_problem_is_reported_once_with_one_run():
    cfg = twin("orthonoise")
    cfg["wandb"]["entity"] = ""
    with pytest.raises(PlanError) as err:
        Plan(cfg)
    lines = [line for line in str(err.value).splitlines() if "wandb.entity" in line]
    assert len(lines) == 1 and "more)" in lines[0]  # every run has it: one line, not one per run


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9))


@pytest.mark.timeout(120)
def test_a_yaml_alias_bomb_is_refused_naming_the_file(tmp_path):
    """Issue 28.6: ten levels of ten aliases expand to 10**10 values; walking them never ended."""
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    with pytest.raises(StudyFileError) as err:
        load_study({"study": str(path)}, REPO)
    assert str(path) in str(err.value) and "aliases" in str(err.value)


def test_the_bounds_planning_checks_are_the_code_s_own():
    """trainer/spec.py's block sizes are the models' own, and optim/registry.py's ranges are the classes':
    at each bound the class accepts, one past it the class refuses (what planning refuses instead)."""
    import torch

    import optim
    from optim.registry import OPTIMIZER_ARGUMENTS
    from study.checks import kind_problem
    from trainer.model import PRESETS
    from trainer.ngpt import NGPT_PRESETS
    from trainer.spec import PRESET_BLOCK_SIZE

    assert PRESET_BLOCK_SIZE == {k: v.block_size for k, v in {**PRESETS, **NGPT_PRESETS}.items()}
    params = [torch.nn.Parameter(torch.zeros(4, 4))]
    for cls, key, ok, bad in (("Muon", "ns_steps", 100, 101), ("DeMo", "ns_steps", 100, 101),
                              ("DeMo", "chunk", 1024, 1025), ("DeMo", "topk", 1.0, 0.0)):
        kind = OPTIMIZER_ARGUMENTS[cls][key]
        assert kind_problem(kind, ok) is None and kind_problem(kind, bad) is not None, (cls, key)
        optim.OPTIMIZERS[cls](params, **{key: ok})
        with pytest.raises(ValueError, match=key):
            optim.OPTIMIZERS[cls](params, **{key: bad})
