"""runtime.deterministic: the spec field (operational), what configure() switches on, and real runs:
on CPU on == off bit for bit; on a GPU (marked gpu) two same-seed runs and a preempt-resume are bitwise equal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from tests.test_trainer_helpers import (build_corpus, comparable, env, history, metrics, run_train, tiny_spec,
                                        train_cmd, write_spec)
from trainer.checkpoint import PREEMPTED_EXIT_CODE
from trainer.spec import RunSpec, SpecError, example_spec

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_spec_field_is_operational():
    d = example_spec()
    on = RunSpec.from_dict(d)  # the default: on (it cost 8.4% of tokens/s on an H200)
    assert on.runtime.deterministic is True and on.to_dict()["runtime"]["deterministic"] is True
    d["runtime"]["deterministic"] = False
    off = RunSpec.from_dict(d)
    assert off.runtime.deterministic is False
    assert on.fingerprint == off.fingerprint and on.resume_key({}) == off.resume_key({})
    d["runtime"]["deterministic"] = "yes"
    with pytest.raises(SpecError) as e:
        RunSpec.from_dict(d)
    assert e.value.key == "runtime.deterministic" and "true or false" in e.value.allowed


def test_configure_switches_everything_on():
    code = ("import os, torch; from trainer import determinism as d; "
            "assert not d.configure(False) and not torch.are_deterministic_algorithms_enabled(); "
            "assert d.configure(True); import json; print(json.dumps(d.state()))")
    e = env()
    e.pop("CUBLAS_WORKSPACE_CONFIG", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["deterministic_algorithms"] and s["cublas_workspace_config"] == ":4096:8" and s["cudnn_deterministic"]
    assert s["sdpa"]["mem_efficient"] is False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("data") / "stdlib")


NOISY = {"arm": "orthonoise", "class": "MuonOrthoNoise",
         "muon": {"lr": 0.02, "alpha": 0.01, "rank_threshold": 1.0, "rank_every": 3}}


@pytest.mark.slow
def test_cpu_run_is_the_same_with_deterministic_on(corpus, tmp_path):
    base = tiny_spec(corpus, optimizer=NOISY, alpha=0.01, training={"steps": 12},
                     eval={"every": 6, "at_steps": [6, 12]})
    runs = []
    for name, flag in (("off", False), ("on", True)):
        spec = tiny_spec(corpus, **{**base, "runtime": {**base["runtime"], "deterministic": flag}})
        r, out, _ = run_train(spec, tmp_path, name)
        assert r.returncode == 0, r.stderr
        assert f"deterministic {flag}" in r.stderr
        runs.append(out)
    assert history(runs[0]) == history(runs[1])
    m0, m1 = (comparable(metrics(o)) for o in runs)
    assert m0.pop("spec")["runtime"]["deterministic"] is False and m1.pop("spec")["runtime"]["deterministic"]
    assert m0 == m1


def _gpu_spec(corpus, steps=40):
    return tiny_spec(corpus, optimizer=NOISY, alpha=0.01, training={"steps": steps, "global_batch": 16,
                                                                    "micro_batch": 8, "seq_len": 128},
                     eval={"every": 10, "at_steps": [10, steps]}, checkpoint={"every": 7, "keep": True},
                     runtime={"device": "cuda", "compile": False, "dtype": "auto", "deterministic": True})


@pytest.mark.gpu
@pytest.mark.slow
@gpu
def test_gpu_same_seed_twice_and_preempt_resume_are_bitwise(corpus, tmp_path):
    spec = _gpu_spec(corpus)
    a, out_a, ck_a = run_train(spec, tmp_path, "a")
    b, out_b, ck_b = run_train(spec, tmp_path, "b")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert history(out_a) == history(out_b)
    assert comparable(metrics(out_a)) == comparable(metrics(out_b))
    # preempted after a checkpoint, then resumed
    sp = write_spec(spec, tmp_path / "p.json")
    out, ck = tmp_path / "p" / "out", tmp_path / "p" / "ckpt"
    p = subprocess.Popen(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    import time

    t0 = time.time()
    while not (ck / "latest.pt").exists():
        assert p.poll() is None and time.time() - t0 < 300
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == PREEMPTED_EXIT_CODE, err
    r = subprocess.run(train_cmd(sp, out, ck), env=env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert history(out) == history(out_a)
    ma, mp = torch.load(ck_a / "latest.pt", weights_only=False), torch.load(ck / "latest.pt", weights_only=False)
    for k in ma["model"]:
        assert torch.equal(ma["model"][k], mp["model"][k]), k
