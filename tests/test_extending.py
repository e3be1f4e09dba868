"""docs/extending.md, checked: its example study plans and dry-runs as written, and a small example optimizer and
model family, added to a copy of the code as the document says, are planned, built and trained. Each example
counts the files it needed (the closing table of issue 21)."""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys

import pytest

from study import Plan, PlanError, load_study
from tests.test_trainer_helpers import build_corpus, env, tiny_spec
from tests.workflow_helpers import REPO, WORKFLOW_PARTS, copy_workflow, snakemake

DOC = (REPO / "docs" / "extending.md").read_text()


def block(lang: str, index: int = 0) -> str:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, flags=re.S)[index]


def changed_files(root) -> set[str]:
    """The files of the copy that are new or differ from the repository's (caches left out)."""
    out = set()

    def walk(cmp: filecmp.dircmp, prefix: str):
        out.update(prefix + n for n in cmp.left_only + cmp.diff_files if n != "__pycache__")
        for name, sub in cmp.subdirs.items():
            if name != "__pycache__":
                walk(sub, prefix + name + "/")

    for part in WORKFLOW_PARTS:
        if (root / part).is_dir():
            walk(filecmp.dircmp(root / part, REPO / part), part + "/")
        elif not filecmp.cmp(root / part, REPO / part, shallow=False):
            out.add(part)
    return out


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("extending"))


def test_the_walkthrough_study_is_one_file_that_plans_and_dry_runs(wf):
    study_file = wf / "config" / "studies" / "lrcheck.yaml"
    study_file.write_text(block("yaml"))
    assert changed_files(wf) == {"config/studies/lrcheck.yaml"}
    cfg, _, _ = load_study({"study": "lrcheck"}, wf)
    plan = Plan(cfg, code_root=wf, results="results/lrcheck")
    sweep = plan.phase_runs("sweep")
    assert sorted({pr.run.key.rsplit("/", 1)[0] for pr in sweep}) == [
        "tiny/adamw/default", "tiny/muon/lr0.01", "tiny/muon/lr0.02", "tiny/muon/lr0.05"]
    assert len(sweep) == 8 and len(plan.possible_selections("confirm")) == 3
    # the default parameter split applies although the study leaves it out (issue 21's adamw_patterns trap)
    assert plan.spec(sweep[0].run)["optimizer"]["split"]["adamw_patterns"][:2] == ["embed", "wte"]
    confirm = plan.phase_runs("confirm", {"arm": "muon", "variant": "lr0.02", "param": "muon.lr"})
    assert {pr.run.key for pr in confirm} >= {"tiny/muon/lr0.02/seed3", "tiny/adamw/default/seed5"}
    dry = snakemake(wf, "-n", "all", "--config", "study=lrcheck", timeout=600)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "train" in dry.stdout and "sweep" in dry.stdout


EXAMPLE_FAMILY = '''"""A one-layer MLP language model: the example family of docs/extending.md."""
import torch.nn as nn
import torch.nn.functional as F

from trainer.models.families import ModelError


class MLPLM(nn.Module):
    def __init__(self, vocab_size: int = 256, width: int = 32, block_size: int = 256):
        super().__init__()
        self.vocab_size, self.block_size = vocab_size, block_size
        self.embed = nn.Embedding(vocab_size, width)
        self.fc = nn.Linear(width, width, bias=False)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx, targets):
        logits = self.lm_head(F.relu(self.fc(self.embed(idx))))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def flops_per_token(self, seq_len: int) -> float:
        return 6.0 * (self.fc.weight.numel() + self.lm_head.weight.numel())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build(arch, vocab_size=None, tie_embeddings=False, options=None, revision=None):
    if tie_embeddings or options:
        raise ModelError(f"model.arch {arch!r}: takes no tie_embeddings and no options")
    return MLPLM(vocab_size or 256)
'''
FAMILY_ENTRY = '''    "mlp": Family("trainer.mlp", "MLP presets", presets={"mlp-tiny": 256}),
'''


def add_optimizer_and_family(wf) -> None:
    module, entry = block("python").split("# optim/registry.py, in OPTIMIZERS:\n")
    (wf / "optim" / "warmmuon.py").write_text(module)
    registry = wf / "optim" / "registry.py"
    registry.write_text(registry.read_text().replace("OPTIMIZERS = {\n", "OPTIMIZERS = {\n" + entry, 1))
    (wf / "trainer" / "mlp.py").write_text(EXAMPLE_FAMILY)
    families = wf / "trainer" / "models" / "families.py"
    families.write_text(families.read_text().replace("FAMILIES = {\n", "FAMILIES = {\n" + FAMILY_ENTRY, 1))


def test_an_optimizer_and_a_model_family_are_two_files_each_and_train(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    add_optimizer_and_family(wf)
    assert changed_files(wf) == {"optim/warmmuon.py", "optim/registry.py", "trainer/mlp.py",
                                 "trainer/models/families.py"}
    # planned: a study's arm takes the new class and its argument, on the new family's preset
    cfg, _, _ = load_study({"study": "orthonoise", "tiny": True}, REPO)
    cfg["arms"]["warm"] = {"class": "MuonWarm", "muon": {"momentum_warmup_steps": 10}}
    cfg["models"]["tiny"]["arch"] = "mlp-tiny"
    cfg["phases"]["phase1"]["runs"].append({"arm": "warm"})
    plan = Plan(cfg, code_root=wf)
    spec = plan.spec(plan.make_run("tiny", "warm", "alpha0", 42))
    assert spec["optimizer"]["class"] == "MuonWarm" and spec["optimizer"]["muon"]["momentum_warmup_steps"] == 10
    cfg["arms"]["warm"]["muon"]["momentum_warmup_steps"] = 0
    with pytest.raises(PlanError, match=r"arms.warm.muon.momentum_warmup_steps: 0 is not allowed \(an integer >= 1\)"):
        Plan(cfg, code_root=wf)
    # trained: the copy's trainer builds both from their declarations and runs 6 steps
    corpus = build_corpus(tmp_path / "stdlib")
    run = tiny_spec(corpus, model={"name": "mlp", "arch": "mlp-tiny"},
                    optimizer={"arm": "warm", "class": "MuonWarm",
                               "muon": {"lr": 0.02, "momentum_warmup_steps": 3, "rank_every": 2},
                               "adamw": {"lr": 0.003, "betas": [0.9, 0.95]}},
                    training={"steps": 6, "global_batch": 4, "micro_batch": 4, "seq_len": 16, "warmup_steps": 0},
                    eval={"every": 3, "batches": 1, "at_steps": [3, 6], "target_losses": []})
    (tmp_path / "spec.json").write_text(json.dumps(run))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(wf / "workflow" / "scripts" / "train.py"), "--spec", str(tmp_path / "spec.json"),
                        "--out-dir", str(out), "--checkpoint-dir", str(tmp_path / "ck")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env(PYTHONPATH=str(wf)))
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "ok" and m["steps_completed"] == 6
    assert m["diagnostics"]["eff_rank_mean"] is not None  # the Muon half ran on the MLP's matrix
    bad = subprocess.run([sys.executable, "-c", "import torch, optim; from trainer.models import build_model; "
                          "optim.build_optimizer(build_model('mlp-tiny'), 'MuonWarm', {'momentum_warmup_steps': 0})"],
                         capture_output=True, text=True, cwd=tmp_path, env=env(PYTHONPATH=str(wf)))
    assert "MuonWarm: momentum_warmup_steps=0 is not allowed; use an integer >= 1" in bad.stderr


EXAMPLE_EXTRA_SCRIPT = '''"""Snakemake script: a phase's runs.csv -> a Markdown table of its final losses (the example extra)."""
import csv

sm = snakemake  # noqa: F821
with open(sm.input.runs, newline="") as f:
    rows = list(csv.DictReader(f))
lines = ["| run | final loss |", "| --- | --- |"] + [f"| {r['run_dir']} | {r['final_val_loss']} |" for r in rows]
with open(sm.output.md, "w") as f:
    f.write(f"### {sm.params.phase}: final losses\\n\\n" + "\\n".join(lines) + "\\n")
'''
EXTRA_ENTRY = '''    "loss_table": Extra(
        rule="loss_table", key="loss_table", script="loss_table.py", env="analysis", log="loss_table.log",
        outputs={"md": "loss_table.md"}, section="md",
        inputs=lambda x: {"runs": f"{x.results}/{x.phase}/runs.csv"}, params={"phase": lambda x: x.phase}),
'''


def test_a_studys_own_analysis_stage_is_two_files_and_one_generic_rule(wf):
    (wf / "workflow" / "scripts" / "loss_table.py").write_text(EXAMPLE_EXTRA_SCRIPT)
    extras = wf / "study" / "extras.py"
    original = extras.read_text()
    extras.write_text(original.replace("EXTRAS = {\n", "EXTRAS = {\n" + EXTRA_ENTRY, 1))
    study = block("yaml").replace("name: lrcheck", "name: lrtable").replace(
        "    gates:\n      no_crashes: {kind: no_crashes}\n", "    loss_table: true\n    gates:\n      no_crashes: {kind: no_crashes}\n", 1)
    (wf / "config" / "studies" / "lrtable.yaml").write_text(study)
    try:
        assert changed_files(wf) - {"config/studies/lrcheck.yaml"} == {
            "workflow/scripts/loss_table.py", "study/extras.py", "config/studies/lrtable.yaml"}
        dry = snakemake(wf, "-n", "results/lrtable/sweep/section.md", "--config", "study=lrtable", timeout=600)
        assert dry.returncode == 0, dry.stderr[-3000:]
        assert "rule loss_table:" in dry.stdout and "results/lrtable/sweep/loss_table.md" in dry.stdout
        section = dry.stdout[dry.stdout.index("rule section:"):]
        assert "results/lrtable/sweep/loss_table.md" in section.split("\n", 2)[1]  # the section appends it
        (wf / "bad.yaml").write_text("phases: {sweep: {loss_table: 3}}\n")
        bad = snakemake(wf, "-n", "all", "--config", "study=lrtable", "--configfile", "bad.yaml", timeout=600)
        assert bad.returncode != 0 and "phases.sweep.loss_table: 3" in bad.stdout + bad.stderr  # its schema (a boolean) is checked at planning
    finally:
        extras.write_text(original)
        (wf / "bad.yaml").unlink(missing_ok=True)


EXAMPLE_GATE_ENTRY = '''    "beats_baseline_everywhere": GateKind(
        "every named arm lowers the mean final loss by more than min_improvement",
        {"min_improvement": Param("fraction", 0.0, "the relative improvement each arm must exceed"),
         "arms": Param("arms", None, "the arms judged (null: every arm)", nullable=True)},
        mode="all", boundary=lambda s: 1 - float(s["min_improvement"]), distance=_thr("min_improvement", 0.01),
        hypotheses=lambda s, arms: arms.named(s.get("arms"))),
'''

EXAMPLE_GATE_FUNCTION = '''

def k_beats_baseline_everywhere(c: Ctx, s: dict) -> tuple[list, str]:
    m = float(s["min_improvement"])
    claim = f"mean final loss < baseline x (1 - {m:.1%}) for every arm"
    return [_arm_vs_base(c, k, c.metric, s, claim) for k in c.arm_keys(s["arms"])], claim
'''


def test_a_gate_kind_is_one_entry_and_its_function_and_the_design_counts_it(wf):
    kinds, gates = wf / "analysis" / "gate_kinds.py", wf / "analysis" / "gates.py"
    originals, before = (kinds.read_text(), gates.read_text()), changed_files(wf)  # the other examples' files
    kinds.write_text(originals[0].replace("GATE_KINDS: dict[str, GateKind] = {\n",
                                          "GATE_KINDS: dict[str, GateKind] = {\n" + EXAMPLE_GATE_ENTRY, 1))
    gates.write_text(originals[1] + EXAMPLE_GATE_FUNCTION)
    study = block("yaml").replace("name: lrcheck", "name: lrgate").replace(
        "    gates:\n      no_crashes: {kind: no_crashes}\n",
        "    gates:\n      no_crashes: {kind: no_crashes}\n      all_beat: {kind: beats_baseline_everywhere}\n", 1)
    assert "all_beat" in study
    (wf / "config" / "studies" / "lrgate.yaml").write_text(study)
    try:
        assert changed_files(wf) - before == {"analysis/gate_kinds.py", "analysis/gates.py", "config/studies/lrgate.yaml"}
        # the copy's analysis/ must be the one the design job imports (not the installed checkout's)
        r = subprocess.run([sys.executable, "-m", "snakemake", "results/lrgate/design.json", "--config", "study=lrgate",
                            "-j1"], cwd=wf, capture_output=True, text=True, timeout=600, env=env(PYTHONPATH=str(wf)))
        assert r.returncode == 0, r.stderr[-3000:]
        rows = [g for g in json.loads((wf / "results" / "lrgate" / "design.json").read_text())["rows"]
                if g["gate"] == "all_beat"]
        # the design check counts one hypothesis per arm the gate judges (the new entry's `hypotheses`)
        assert rows and rows[0]["kind"] == "beats_baseline_everywhere" and rows[0]["hypotheses"] >= 1, rows
    finally:
        kinds.write_text(originals[0])
        gates.write_text(originals[1])
