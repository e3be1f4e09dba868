"""Every run spec and fingerprint of the three studies (real and CPU twin) against a committed snapshot.

A refactor of the plan, the optimizer declarations or the trainer's spec reading must change no run: a
run's fingerprint decides whether it re-runs, and its spec is what it trains. The snapshot
(tests/data/fingerprints.json) was written by the code of main at 81fa63f, before issue 21's refactor;
`python -m tests.test_study_fingerprints --write` rewrites it, which only a change that re-runs runs on
purpose may do (and says so).

What cannot be computed offline is pinned, as the Snakefile's pin_hub checkpoint would: the real studies'
data are fetched Hub shards or text tokenized from fetched files, whose data section (with its content
checksum) exists only after the download, and an hf:<Hub id> model's commit is known only once fetched.
The pins are fixed placeholders (PINNED_DATA, a commit of 40 'a's), so the snapshot covers everything
the code derives from the study; what the download adds is the pin_hub stage's own (tests/test_hub*.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from study import Plan, load_study
from study.hub import hub_model_id
from study.spec import canonical_json, load_file_module

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = REPO / "tests" / "data" / "fingerprints.json"
STUDIES = ("orthonoise", "ngpt", "distro")
PINNED_DATA = {"kind": "bin", "train": "results/hub/pinned/train_*.bin", "val": "results/hub/pinned/val_*.bin",
               "checksum": "c" * 64}
PINNED_COMMIT = "a" * 40


def _digest(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def study_plan(name: str, tiny: bool) -> Plan:
    """The plan the Snakefile builds for `--config study=NAME tiny=...`, with the Hub's pins fixed."""
    cfg, _, _ = load_study({"study": name, "tiny": tiny}, REPO)
    results = f"results/{name}{'-tiny' if tiny else ''}"
    plan = Plan(cfg, code_root=REPO, results=results, twin=tiny)
    if cfg["data"]["kind"] in ("text", "hub"):
        plan.text_data_source = lambda: dict(PINNED_DATA)
    plan.model_revision_source = lambda model: (PINNED_COMMIT if hub_model_id(cfg["models"][model]["arch"])
                                                else None)
    return plan


def snapshot_of(plan: Plan) -> dict:
    """run key -> [fingerprint, digest of the study's spec, digest of the trainer's resolved spec]; and per
    phase and possible selection, the digest of its (role, run) list."""
    trainer_spec = load_file_module(REPO, "trainer/spec.py")
    runs = {}
    for run in plan.all_runs():
        spec = plan.spec(run)
        resolved = trainer_spec.RunSpec.from_dict(spec).to_dict() if "external" not in spec else None
        runs[run.key] = [spec["fingerprint"], _digest(spec), _digest(resolved)]
    phases = {}
    for phase in plan.phases:
        for sel in plan.possible_selections(phase):
            key = f"{phase} {canonical_json(sel)}"
            phases[key] = _digest([[pr.role, pr.run.key, pr.run_dir, list(pr.run.settings)]
                                   for pr in plan.phase_runs(phase, sel)])
    return {"runs": runs, "phases": phases}


def current() -> dict:
    return {f"{name}{'-tiny' if tiny else ''}": snapshot_of(study_plan(name, tiny))
            for name in STUDIES for tiny in (False, True)}


@pytest.fixture(scope="module")
def now():
    return current()


@pytest.mark.parametrize("study", [f"{n}{t}" for n in STUDIES for t in ("", "-tiny")])
def test_every_run_spec_and_fingerprint_is_the_snapshots(now, study):
    want = json.loads(SNAPSHOT.read_text())[study]
    got = now[study]
    assert sorted(got["runs"]) == sorted(want["runs"]), "the study plans other runs than the snapshot"
    changed = {k: (want["runs"][k], v) for k, v in got["runs"].items() if v != want["runs"][k]}
    what = ("fingerprint", "study spec", "trainer's resolved spec")
    assert not changed, (f"{len(changed)} of {len(got['runs'])} runs changed; e.g. "
                         + "; ".join(f"{k}: {[w for w, a, b in zip(what, *ab) if a != b]}"
                                     for k, ab in list(changed.items())[:5]))
    assert got["phases"] == want["phases"], "a phase lists other runs, roles or directories than the snapshot"


def test_the_snapshot_covers_every_study():
    snap = json.loads(SNAPSHOT.read_text())
    assert sorted(snap) == sorted(f"{n}{t}" for n in STUDIES for t in ("", "-tiny"))
    assert sum(len(s["runs"]) for s in snap.values()) > 600  # 704 runs when written


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_study_fingerprints --write   (rewrites tests/data/fingerprints.json)")
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    tmp = SNAPSHOT.with_suffix(".tmp")
    tmp.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    tmp.replace(SNAPSHOT)
    print(f"wrote {SNAPSHOT}")
