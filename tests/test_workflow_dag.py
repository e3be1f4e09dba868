"""The DAG as Snakemake builds it: dry-run counts, config rejection, lint, environments."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from tests.workflow_helpers import REPO, copy_workflow, job_counts, snakemake, write_config


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.mark.parametrize("target, configs, expected", [
    # the CPU twin: corpus + 8 runs + aggregate/significance/gates/plots/section + report + target
    ("phase1", ["config/tiny.yaml"], {"train": 8, "stdlib_corpus": 1, "aggregate": 1, "report": 1,
                                      "total": 16}),
    # phase 2's 32 distinct runs include all 8 of phase 1; its report holds phases 1 and 2
    ("phase2", ["config/tiny.yaml"], {"train": 32, "aggregate": 2, "section": 2, "total": 45}),
    # phase 3 waits for phase 2's checkpoint: its own runs are unknown until then
    ("phase3", ["config/tiny.yaml"], {"train": 32, "select_arm": 1}),
    ("phase1", [], {"train": 8, "total": 16}),
    ("phase2", [], {"train": 32, "total": 45}),
])
def test_dry_run_counts_per_phase(wf, target, configs, expected):
    args = [target, "-n"] + (["--configfile", *configs] if configs else [])
    result = snakemake(wf, *args)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout + result.stderr)
    for rule, n in expected.items():
        assert counts.get(rule) == n, (rule, counts)


def test_run_paths_show_the_four_factors(wf):
    result = snakemake(wf, "phase1", "-n", "--configfile", "config/tiny.yaml")
    outs = set(re.findall(r"results/runs/(\S+?)/metrics\.json", result.stdout))
    assert "tiny/muon/alpha0/seed42" in outs
    assert "tiny/orthonoise/alpha0.001/seed123" in outs
    assert "tiny/orthonoise-anneal/alpha0.01/seed42" in outs
    assert len(outs) == 8


def test_lint_is_clean(wf):
    result = snakemake(wf, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


# Each bad config is merged over the tiny twin; the error must name the key and the value, and no job
# may start (nothing under results/ or logs/).
BAD_CONFIGS = [
    ({"surprise": 1}, "unknown key(s) 'surprise'"),
    ({"arms": {"orthonoise": {"muon": {"alhpa": 1.0e-3}}}}, "arms.orthonoise.muon: unknown key(s) 'alhpa'"),
    ({"arms": {"orthonoise": {"class": "Adam"}}}, "arms.orthonoise.class: 'Adam' is not allowed"),
    ({"phases": {"phase2": {"runs": [{"arm": "orthonoise", "alphas": ["1e-3"]}]}}},
     "phases.phase2.runs[0].alphas[0]: '1e-3' is a string, not a number"),
    ({"phases": {"phase1": {"seeds": [1, 1]}}}, "phases.phase1.seeds: [1, 1] has non-unique elements"),
    ({"phases": {"phase1": {"runs": [{"arm": "orthonoise", "alphas": [-1.0e-3]}]}}},
     "phases.phase1.runs[0].alphas[0]: -0.001 is less than the minimum of 0"),
    ({"wandb": {"mode": "sometimes"}}, "wandb.mode: 'sometimes' is not allowed"),
    ({"phases": {"phase1": {"model": "gpt-9b"}}}, "phases.phase1.model: 'gpt-9b' is not in models"),
    ({"phases": {"phase1": {"runs": [{"arm": "ghost", "alphas": [1.0e-3]}]}}},
     "phases.phase1.runs[0].arm: 'ghost' is not in arms"),
    ({"phases": {"phase1": {"gates": {"vibes_good": {}}}}}, "phases.phase1.gates: unknown key(s) 'vibes_good'"),
    ({"phases": {"phase1": {"gates": {"loss_within_baseline": {"max_rel_diff": "5%"}}}}},
     "phases.phase1.gates.loss_within_baseline.max_rel_diff: '5%' is not of type 'number'"),
    ({"models": {"tiny": {"global_batch": 12}}}, "models.tiny: global_batch 12 is not a multiple of micro_batch 16"),
    ({"arms": {"muon": {"muon": {"rank_threshold": 0.5}}}}, "arms.muon.muon.rank_threshold: not a setting of class Muon"),
    ({"data": {"kind": "bin"}}, "data: 'train' is a required property"),
    ({"models": {"tiny": {"arch": "gpt-7b"}}}, "models.tiny.arch: 'gpt-7b' does not match"),
    ({"arms": {"orthonoise": {"muon": {"schedule": "cosine"}}}}, "arms.orthonoise.muon.schedule: 'cosine' is not allowed"),
]


@pytest.mark.parametrize("override, message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_config_is_rejected_before_any_job(wf, tmp_path, override, message):
    bad = write_config(tmp_path / "bad.yaml", override)
    result = snakemake(wf, "phase1", "--configfile", "config/tiny.yaml", str(bad), "--cores", "1")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in out, out[-2000:]
    assert not (wf / "results").exists() and not (wf / "logs").exists()


def test_envs_match_pyproject():
    """Every pip requirement of envs/*.yaml is a requirement of pyproject.toml, with the same bounds."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower(): req.replace(" ", "") for req in project}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
        assert pip, env_file
        for req in pip:
            name = re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower()
            assert name in declared, f"{env_file.name}: {name} is not a dependency in pyproject.toml"
            assert req.replace(" ", "") == declared[name], f"{env_file.name}: {req} != {declared[name]}"
    rules = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    for env_file in (REPO / "envs").glob("*.yaml"):
        assert f"../envs/{env_file.name}" in rules, f"{env_file.name} is used by no rule"
