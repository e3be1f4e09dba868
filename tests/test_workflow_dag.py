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


_DRY: dict = {}


def dry_run(wf, *args):
    """`snakemake ARGS -n` in the module's workflow copy, once per ARGS (a dry run writes nothing it reads)."""
    if (wf, args) not in _DRY:
        _DRY[wf, args] = snakemake(wf, *args, "-n")
    return _DRY[wf, args]


@pytest.mark.parametrize("target, args, expected", [
    # the CPU twin: corpus + 8 runs + design (study, phase) + aggregate/significance/gates/plots/section +
    # report + target
    ("phase1", ["--config", "tiny=true"], {"train": 8, "stdlib_corpus": 1, "design": 1, "design_phase": 1,
                                          "aggregate": 1, "report": 1, "total": 18}),
    # phase 2's 34 distinct runs include all 8 of phase 1; its report holds phases 1 and 2
    ("phase2", ["--config", "tiny=true"], {"train": 34, "aggregate": 2, "section": 2, "design_phase": 2, "total": 50}),
    # phase 3 waits for phase 2's checkpoint: its own runs are unknown until then
    ("phase3", ["--config", "tiny=true"], {"train": 34, "select": 1}),
    # the real study: Granite 350M and 1B and FineWeb-Edu fetched (3 local jobs), tokenized, pinned
    ("phase1", [], {"train": 8, "fetch_hub": 3, "prepare_text": 1, "pin_hub": 1, "total": 22}),
    ("phase2", ["--config", "study=orthonoise"], {"train": 34, "fetch_hub": 3, "total": 54}),
])
def test_dry_run_counts_per_phase(wf, target, args, expected):
    result = dry_run(wf, target, *args)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout + result.stderr)
    for rule, n in expected.items():
        assert counts.get(rule) == n, (rule, counts)


@pytest.mark.parametrize("study, fetches", [("orthonoise", 3), ("ngpt", 1)])  # distro: as ngpt
def test_real_studies_plan_their_hub_downloads_without_contacting_the_hub(wf, study, fetches, monkeypatch):
    """Each real study's dry run lists its downloads as jobs (data, and the Granite models for OrthoNoise),
    with the Hub's address pointing at a local server that records every request: none is made."""
    from tests.hub_server import FakeHub

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = snakemake(wf, "all", "-n", "--config", f"study={study}")
        assert result.returncode == 0, result.stderr + result.stdout
        assert hub.requests == []
    counts = job_counts(result.stdout + result.stderr)
    assert counts.get("fetch_hub") == fetches and counts.get("pin_hub") == 1, counts
    assert counts.get("stdlib_corpus") is None, counts
    out = result.stdout + result.stderr
    if study == "orthonoise":
        assert "--repo ibm-granite/granite-4.0-h-1b-base" in out and "--repo HuggingFaceFW/fineweb-edu" in out
    else:
        assert "--repo kjj0/fineweb10B-gpt2" in out


def test_run_paths_show_the_four_factors(wf):
    result = dry_run(wf, "phase1", "--config", "tiny=true")  # the first count's dry run
    outs = set(re.findall(r"results/orthonoise-tiny/runs/(\S+?)/metrics\.json", result.stdout))
    assert "tiny/muon/alpha0/seed42" in outs
    assert "tiny/orthonoise/alpha0.001/seed123" in outs
    assert "tiny/orthonoise-anneal/alpha0.01/seed42" in outs
    assert len(outs) == 8


def test_a_phase_the_study_lacks_names_the_studys_phases(wf):
    result = snakemake(wf, "lr_sweep", "-n")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'lr_sweep' is not a phase of study orthonoise (its phases: phase1, phase2, phase3" in out


@pytest.mark.parametrize("name", ["orthonoise", "ngpt", "distro"])
def test_each_study_dry_runs_all(wf, name):
    if not (REPO / "config" / "studies" / f"{name}.yaml").exists():
        pytest.skip(f"study {name} not written yet")
    for args in ([], ["tiny=true"]):
        result = snakemake(wf, "all", "-n", "--config", f"study={name}", *args)
        assert result.returncode == 0, (args, (result.stdout + result.stderr)[-3000:])
        assert job_counts(result.stdout + result.stderr).get("train", 0) > 0


def test_lint_is_clean(wf):
    result = snakemake(wf, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


# Through the real CLI, as a user types it: each bad study is refused with one line that names the key and
# the value, and no job starts (nothing under results/ or logs/). tests/test_study_plan.py has one case
# per class of error; these show the refusal happens before any job.
BAD_CONFIGS = [
    ({"surprise": 1}, "unknown key(s) 'surprise'"),
    ({"arms": {"orthonoise": {"muon": {"alhpa": 1.0e-3}}}}, "arms.orthonoise.muon.alhpa: not a setting of arm"),
    ({"phases": {"phase2": {"runs": [{"arm": "orthonoise", "sweep": {"param": "muon.alpha", "values": ["1e-3"]}}]}}},
     "phases.phase2.runs[0].sweep.values[0]: '1e-3' is not allowed for muon.alpha (it is a string, not a number"),
    ({"phases": {"phase1": {"runs": [{"arm": "muon", "sweep": {"param": "muon.bogus", "values": [1]}}]}}},
     "phases.phase1.runs[0].sweep.param: 'muon.bogus' is not a setting of arm muon"),
    ({"phases": {"phase1": {"gates": {"g": {"kind": "vibes_good"}}}}}, "phases.phase1.gates.g.kind: 'vibes_good' is not a gate kind"),
    ({"phases": {"phase3": {"select": {"from": "phase9"}}}}, "phases.phase3.select.from: 'phase9' is not a phase before phase3"),
    ({"phases": {"phase1": {"runs": []}}}, "phases.phase1.runs: [] should be non-empty"),
    ({"data": {"kind": "bin"}}, "data: 'train' is a required property"),
]


# Two through the CLI, one refused by the schema and one by the plan (the message is the planning code's own);
# every one by that code in this process, as the Snakefile calls it.
BAD_CONFIGS_CLI = [BAD_CONFIGS[0], BAD_CONFIGS[2]]


@pytest.mark.parametrize("override, message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_config_is_refused_by_the_planning_code(tmp_path, override, message):
    from study import Plan, PlanError, StudyFileError, load_study

    bad = write_config(tmp_path / "bad.yaml", override)
    with pytest.raises((StudyFileError, PlanError)) as err:  # the Snakefile turns either into a WorkflowError
        study, tiny, _ = load_study({"study": "orthonoise", "tiny": True, **override}, REPO, overlays=[bad])
        Plan(study, code_root=REPO, results="results/orthonoise-tiny", twin=tiny)
    assert message in str(err.value)


@pytest.mark.parametrize("override, message", BAD_CONFIGS_CLI, ids=[m.split(":")[0] for _, m in BAD_CONFIGS_CLI])
def test_bad_config_is_rejected_before_any_job(wf, tmp_path, override, message):
    bad = write_config(tmp_path / "bad.yaml", override)
    result = snakemake(wf, "phase1", "--config", "tiny=true", "--configfile", str(bad), "--cores", "1")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in out, out[-2000:]
    assert not (wf / "results").exists() and not (wf / "logs").exists()


def test_unreadable_study_file_is_one_line(wf, tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("study: {name: a}\nstudy: {name: b}\n")
    result = snakemake(wf, "phase1", "-n", "--config", f"study={bad}")
    assert result.returncode != 0
    assert f"{bad}: line 2, column 1: duplicate key 'study' (first at line 1)" in result.stdout + result.stderr


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


@pytest.mark.parametrize("text, message", [
    # issue 28.8: Snakemake's own reader kept the last of duplicate keys without a word
    ("wandb:\n  mode: disabled\nwandb:\n  mode: offline\n", "overlay.yaml: line 3, column 1: duplicate key 'wandb'"),
    # issue 18.5: a seed the trainer refuses used to pass planning and fail in every train job
    ("phases:\n  phase1:\n    seeds: [42, 18446744073709551616]\n",
     "run spec seed = 18446744073709551616 (from phases.*.seeds): the trainer allows an integer >= 0 and <="),
], ids=["duplicate key", "seed 2**64"])
def test_a_bad_configfile_overlay_is_refused_by_the_dry_run_naming_it(wf, tmp_path, text, message):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text)
    result = snakemake(wf, "phase1", "-n", "--config", "tiny=true", "--configfile", str(overlay))
    out = result.stdout + result.stderr
    assert result.returncode != 0 and message in out, out[-2000:]
    assert "train" not in job_counts(out)
