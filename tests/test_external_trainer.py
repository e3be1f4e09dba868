"""External trainers without Snakemake: the choice per model and arm, the fingerprint, the checks before
any job, and the contract on what the command writes (the workflow run is tests/test_external_workflow.py)."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import sys

import pytest

from study import Plan, PlanError, load_study
from study.external import trainer_name
from tests.workflow_helpers import REPO, bump_version, copy_workflow
from trainer.external import CONTRACT_EXIT_CODE, PREEMPTED_EXIT_CODE, contract_problems, run_external

STUDY = "tests/external_trainer/study.yaml"
SCRIPT = "tests/external_trainer/quadratic.py"


def quad_study(root=REPO, tiny=True):
    return load_study({"study": STUDY, "tiny": tiny}, root)[0]


@pytest.fixture
def wf(tmp_path):
    """A copy of the workflow with the test trainer, whose script a test may edit."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "tests" / "external_trainer").mkdir(parents=True)
    for name in ("study.yaml", "quadratic.py"):
        shutil.copy2(REPO / "tests" / "external_trainer" / name, wf / "tests" / "external_trainer" / name)
    return wf


def fingerprints(cfg, root):
    plan = Plan(cfg, code_root=root)
    return {r.key: plan.fingerprint(r) for r in plan.all_runs()}


def test_the_arm_choice_wins_over_the_model_and_builtin_is_the_default():
    cfg = quad_study()
    assert trainer_name(cfg, "quad", "sgd") == "quad"       # the model's trainer
    assert trainer_name(cfg, "tiny", "muon") is None         # the built-in trainer
    cfg["arms"]["sgd"]["trainer"] = "builtin"
    cfg["arms"]["muon"]["trainer"] = "quad"
    assert trainer_name(cfg, "quad", "sgd") is None and trainer_name(cfg, "tiny", "muon") == "quad"


def test_builtin_runs_keep_their_fingerprints_byte_for_byte():
    """Adding trainers, and external arms that use them, changes no built-in run's fingerprint."""
    base = load_study({"study": "orthonoise", "tiny": True}, REPO)[0]
    before = fingerprints(base, REPO)
    cfg = copy.deepcopy(base)
    cfg["trainers"] = quad_study()["trainers"]
    cfg["arms"]["quad-muon"] = {"class": "Muon", "trainer": "quad"}
    cfg["phases"]["phase1"]["runs"].append({"arm": "quad-muon"})
    after = fingerprints(cfg, REPO)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {f"tiny/quad-muon/alpha0/seed{s}" for s in (42, 123)}
    plan = Plan(cfg, code_root=REPO)
    external = plan.spec(plan.make_run("tiny", "quad-muon", "alpha0", 42))["external"]
    assert external["trainer"] == "quad" and list(external["files"]) == [SCRIPT]
    assert "external" not in plan.spec(plan.make_run("tiny", "muon", "alpha0", 42))


def test_the_fingerprint_follows_the_declared_files_command_and_settings_only(wf):
    cfg = quad_study(wf)
    before = fingerprints(cfg, wf)
    quad = {k for k in before if k.startswith("quad/")}
    assert len(quad) == 4 and len(before) == 6

    def changed(after):
        return {k for k in before if after[k] != before[k]}

    script = wf / SCRIPT
    original = script.read_text()
    script.write_text(original + "# an edit\n")
    assert changed(fingerprints(cfg, wf)) == quad
    script.write_text(original)  # the same content again: the same fingerprints
    assert changed(fingerprints(cfg, wf)) == set()
    other = copy.deepcopy(cfg)
    other["trainers"]["quad"]["settings"]["noise"] = 0.2
    assert changed(fingerprints(other, wf)) == quad
    other = copy.deepcopy(cfg)
    other["trainers"]["quad"]["command"].append("--verbose")
    assert changed(fingerprints(other, wf)) == quad
    # the built-in trainer's and optimizers' behaviour versions are not the external trainer's
    bump_version(wf, "Muon")
    assert changed(fingerprints(cfg, wf)) == {"tiny/muon/default/seed1", "tiny/muon/lr0.01/seed1"}


def test_bad_trainer_settings_are_refused_before_any_job_naming_the_key():
    cfg = quad_study()
    cfg["trainers"]["quad"]["command"][1] = "{script}"
    cfg["trainers"]["quad"]["files"].append("tests/external_trainer/nothing-*.py")
    cfg["trainers"]["builtin"] = {"command": ["true"], "files": [SCRIPT]}
    cfg["arms"]["heavy"]["trainer"] = "quadd"
    cfg["arms"]["heavy"]["capture"] = {"steps": [10]}
    cfg["trainers"]["quad"]["settings"]["lr"] = "1e-3"  # what YAML makes of 1e-3
    with pytest.raises(PlanError) as err:
        Plan(cfg, code_root=REPO)
    msg = str(err.value)
    for needle in ("trainers.quad.command: placeholder {script} is not allowed (allowed: {python}, {spec}",
                   "trainers.quad.files[1]: 'tests/external_trainer/nothing-*.py' matches no file",
                   "trainers.builtin: 'builtin' is the built-in trainer's name",
                   "arms.heavy.trainer: 'quadd' is not a trainer of the study (known: builtin, quad)",
                   "arms.heavy.capture: only the built-in trainer writes captures",
                   "trainers.quad.settings.lr: '1e-3' is a string, not a number"):
        assert needle in msg, msg
    cfg = quad_study()
    cfg["trainers"]["quad"]["command"] = "python train_gpt.py"  # a string, not an argv
    del cfg["trainers"]["quad"]["files"]
    with pytest.raises(PlanError) as err:
        Plan(cfg, code_root=REPO)
    assert "trainers.quad.command" in str(err.value) and "trainers.quad" in str(err.value)
    assert "files" in str(err.value), str(err.value)
    # an arch that is no preset is fine where only the external trainer reads it, not where the built-in does
    cfg = quad_study()
    cfg["arms"]["heavy"]["trainer"] = "builtin"
    with pytest.raises(PlanError, match=r"models.quad.arch: 'quadratic' is not allowed"):
        Plan(cfg, code_root=REPO)


def spec_of(tmp_path, command, steps=4):
    cfg = quad_study()
    cfg["trainers"]["quad"]["command"] = command
    plan = Plan(cfg, code_root=REPO)
    spec = copy.deepcopy(plan.spec(plan.make_run("quad", "sgd", "default", 1)))
    spec["training"]["steps"] = steps
    spec["eval"]["at_steps"] = [2, 4]
    return spec


def writer(metrics: dict, history: str = "step,val_loss\n0,2.0\n4,1.5\n", rc: int = 0) -> list[str]:
    """A one-line external command that writes these records into {out_dir} and exits rc."""
    code = (f"import json,pathlib,sys; d=pathlib.Path(sys.argv[1]); (d/'history.csv').write_text({history!r}); "
            f"(d/'metrics.json').write_text(json.dumps({metrics!r})); sys.exit({rc})")
    # a literal brace in a command is written doubled (the placeholders are str.format fields)
    return ["{python}", "-c", code.replace("{", "{{").replace("}", "}}"), "{out_dir}"]


GOOD = {"status": "ok", "final_val_loss": 1.5, "steps_completed": 4, "val_loss_at": {"2": 1.7, "4": 1.5}}


def test_records_that_keep_the_contract_are_completed_for_the_analysis(tmp_path):
    spec = spec_of(tmp_path, writer(GOOD))
    out = tmp_path / "out"
    assert run_external(spec, out, tmp_path / "ck") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["final_val_loss"] == 1.5 and m["trainer"] == "external:quad"
    assert m["fingerprint"] == spec["fingerprint"] and m["spec"] == spec
    assert json.loads((out / "spec.json").read_text()) == spec  # what the command read


@pytest.mark.parametrize("metrics, history, needle", [
    ({**GOOD, "status": "done"}, None, "status 'done' is not allowed (one of ok, diverged)"),
    ({k: v for k, v in GOOD.items() if k != "final_val_loss"}, None, "final_val_loss None is not allowed"),
    ({**GOOD, "steps_completed": 3}, None, "steps_completed 3 is not the spec's training.steps (4)"),
    ({**GOOD, "val_loss_at": {"4": 1.5}}, None, "val_loss_at lacks a number for the spec's eval.at_steps [2]"),
    ({"status": "diverged", "diverged_step": None}, None, "diverged_step None is not allowed"),
    (GOOD, "iteration,loss\n0,2.0\n", "history.csv: header ['iteration', 'loss'] lacks step, val_loss"),
])
def test_records_that_break_the_contract_fail_the_run_naming_the_file(tmp_path, capsys, metrics, history, needle):
    spec = spec_of(tmp_path, writer(metrics, history or "step,val_loss\n0,2.0\n"))
    out = tmp_path / "out"
    assert run_external(spec, out, tmp_path / "ck") == CONTRACT_EXIT_CODE
    err = capsys.readouterr().err
    assert needle in err and str(out) in err and "docs/external_trainer.md" in err, err
    # nothing that looks like a finished run is left
    assert not (out / "metrics.json").exists() and (out / "metrics.json.invalid").exists()


def test_a_preempted_or_failed_command_leaves_no_record(tmp_path, capsys):
    spec = spec_of(tmp_path, writer(GOOD, rc=PREEMPTED_EXIT_CODE))
    out = tmp_path / "out"
    assert run_external(spec, out, tmp_path / "ck") == PREEMPTED_EXIT_CODE
    assert "preempted" in capsys.readouterr().err and not (out / "metrics.json").exists()
    spec = spec_of(tmp_path, ["/nonexistent/train_gpt"])
    assert run_external(spec, out, tmp_path / "ck") == 2
    assert "trainers.quad.command: cannot start '/nonexistent/train_gpt'" in capsys.readouterr().err
    assert contract_problems(tmp_path / "nowhere", spec) == [
        f"{tmp_path / 'nowhere' / 'metrics.json'}: missing (the command must write metrics.json last, when the "
        "run is done)"]


def test_the_quadratic_trainer_honours_the_seed_and_resumes_exactly(tmp_path):
    """The test trainer itself (a plain subprocess; the workflow test preempts it under torchrun)."""
    import subprocess

    cfg = quad_study()
    plan = Plan(cfg, code_root=REPO)

    def train(seed, name, hold=False):
        spec = plan.spec(plan.make_run("quad", "heavy", "default", seed))
        out = tmp_path / name
        out.mkdir()
        (out / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        if hold:
            env.update(EXT_TEST_HOLD_RUN=spec["run_id"], EXT_TEST_HOLD_FILE=str(tmp_path / "held"))
        cmd = [sys.executable, str(REPO / SCRIPT), "--spec", str(out / "spec.json"), "--out-dir", str(out),
               "--checkpoint-dir", str(tmp_path / f"{name}-ck")]
        return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True), out

    runs = {}
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        p, out = train(seed, name)
        assert p.wait(timeout=120) == 0, p.stderr.read()
        runs[name] = ((out / "history.csv").read_text(), json.loads((out / "metrics.json").read_text()))
    assert runs["a"] == runs["b"] and runs["a"][1]["final_val_loss"] != runs["c"][1]["final_val_loss"]
    p, out = train(1, "d", hold=True)
    import signal
    import time

    while not (tmp_path / "held").exists():
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.01)
    p.send_signal(signal.SIGUSR1)
    assert p.wait(timeout=120) == PREEMPTED_EXIT_CODE
    assert "preemption signal SIGUSR1 at step 10" in p.stderr.read()
    assert not (out / "metrics.json").exists()
    p = subprocess.Popen(p.args, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    assert p.wait(timeout=120) == 0
    assert "at step 10" in p.stderr.read()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics.pop("resumed_from_step") == 10 and runs["a"][1].pop("resumed_from_step") is None
    assert (out / "history.csv").read_text() == runs["a"][0] and metrics == runs["a"][1]


@pytest.mark.slow
def test_under_torchrun_every_rank_gets_the_workers_environment_and_rank_0_checks(tmp_path):
    """Two torchrun workers, as the train rule starts them: each starts the command with RANK, WORLD_SIZE and
    the rendezvous address; rank 0 alone writes and checks the records."""
    import subprocess

    from study.launch import launcher

    code = ("import json,os,pathlib,sys; d=pathlib.Path(sys.argv[1]); r=os.environ['RANK']; "
            "(d/f'rank{r}').write_text(json.dumps({k: os.environ[k] for k in ('WORLD_SIZE', 'LOCAL_RANK', "
            "'MASTER_ADDR', 'MASTER_PORT', 'ABLATION_SEED', 'ABLATION_RUN_ID')})); "
            "r == '0' and (d/'history.csv').write_text('step,val_loss\\n4,1.5\\n'); "
            "r == '0' and (d/'metrics.json').write_text(json.dumps({'status': 'ok', 'final_val_loss': 1.5, "
            "'steps_completed': 4, 'val_loss_at': {'2': 1.7, '4': 1.5}}))")
    spec = spec_of(tmp_path, ["{python}", "-c", code.replace("{", "{{").replace("}", "}}"), "{out_dir}"])
    out = tmp_path / "out"
    cmd = (f"{launcher(2)} {REPO / 'workflow' / 'scripts' / 'train.py'} --spec-json {shlex.quote(json.dumps(spec))} "
           f"--out-dir {out} --checkpoint-dir {tmp_path / 'ck'}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = {p.name: json.loads(p.read_text()) for p in out.glob("rank*")}
    assert set(ranks) == {"rank0", "rank1"}
    assert {e["WORLD_SIZE"] for e in ranks.values()} == {"2"} and {e["LOCAL_RANK"] for e in ranks.values()} == {"0", "1"}
    assert all(e["MASTER_ADDR"] and e["ABLATION_SEED"] == "1" and e["ABLATION_RUN_ID"] == "quad/sgd/default/seed1"
               for e in ranks.values())
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["fingerprint"] == spec["fingerprint"]
