"""The study plan: a validated study expanded into runs, per phase.

A run is one training job, identified by (model, arm, variant, seed). The variant is the path label of
the value the run sweeps (`lr0.003`, `alpha0.001`) or the study's unswept label; it maps to exactly one
(param, value) in the study, so the value trained is the value written in the path. A phase lists
runs; a run that several phases list is one run, trained once. Nothing here imports torch: the
Snakefile builds a Plan on every invocation, including inside each cluster job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from study.checks import PlanError, check, run_entries, variant_table
from study.labels import fmt_value, variant_label
from study.run_specs import run_spec_problems
from study import selections as sels
from study.spec import build_spec, load_code_versions, run_settings

SELECTED = "selected"


@dataclass(frozen=True, order=True)
class Run:
    model: str
    arm: str
    variant: str  # "lr0.003"; "lr0.003+projection_every3" for a selected value and a sweep together
    seed: int
    settings: tuple = ()  # the (param, value) pairs the variant stands for, in the order they apply

    @property
    def key(self) -> str:
        return f"{self.model}/{self.arm}/{self.variant}/seed{self.seed}"

    @property
    def param(self) -> str:
        """The setting this run varies in its phase, e.g. "muon.lr" ("" when the run sweeps nothing)."""
        return self.settings[-1][0] if self.settings else ""

    @property
    def value(self):
        return self.settings[-1][1] if self.settings else None


@dataclass(frozen=True)
class PhaseRun:
    """A run as one phase sees it: with its role in that phase's comparisons."""

    phase: str
    role: str  # baseline | arm | scratch_baseline | scratch_arm
    run: Run
    run_dir: str

    def as_record(self, alpha: float) -> dict:
        r = self.run
        return {"phase": self.phase, "role": self.role, "model": r.model, "arm": r.arm, "variant": r.variant,
                "param": r.param, "value": r.value if isinstance(r.value, (int, float)) else None,
                "alpha": alpha, "seed": r.seed, "run_dir": self.run_dir}


class Plan:
    def __init__(self, config: dict, code_root: str | Path | None = None, results: str = "results/orthonoise",
                 twin: bool = False):
        self.config = config
        # Where optim/, trainer/ and analysis/ declarations are read: the workflow's own copy of the code.
        self.root = Path(code_root) if code_root else Path(__file__).resolve().parent.parent
        self.versions = load_code_versions(self.root)
        self.tokenizer_vocab = check(config, self.root)["tokenizer_vocab"]
        # kind text: the prepared corpus's data section, known once the data stage ran (the Snakefile sets this)
        self.text_data_source = None
        # hf:<Hub id> models: model name -> the commit fetched (the Snakefile sets this; None for other models)
        self.model_revision_source = None
        self.twin = twin  # the CPU twin: its W&B runs tagged and grouped apart
        self.results = results.rstrip("/")
        self.arm_variants = variant_table(config)  # arm -> {label -> (param, value)}
        self.variants = sorted({label for table in self.arm_variants.values() for label in table})  # every label
        self._specs: dict[Run, dict] = {}
        # every run's spec as the trainer reads it, before any job (a refused spec would fail every job)
        problems = run_spec_problems(self, self.all_runs())
        if problems:
            raise PlanError("invalid study (the trainer would refuse these run specs):\n  - " + "\n  - ".join(problems))

    # -- paths ----------------------------------------------------------------------------------
    def run_dir(self, run: Run) -> str:
        return f"{self.results}/runs/{run.key}"

    def checkpoint_dir(self, run: Run) -> str:
        return f"{self.results}/checkpoints/{run.key}"

    def metrics(self, run: Run) -> str:
        return f"{self.run_dir(run)}/metrics.json"

    # -- phases ---------------------------------------------------------------------------------
    @property
    def phases(self) -> list[str]:
        return list(self.config["phases"])  # the file's order is the study's order

    def phase(self, name: str) -> dict:
        if name not in self.config["phases"]:
            raise PlanError(f"{name!r} is not a phase of study {self.config['study']['name']} "
                            f"(phases: {', '.join(self.phases)}; or all)")
        return self.config["phases"][name]

    def phases_through(self, phase: str) -> list[str]:
        self.phase(phase)
        return self.phases[: self.phases.index(phase) + 1]

    def needs_selection(self, phase: str) -> bool:
        return "select" in self.phase(phase)

    def selection_refs(self, phase: str, selection: dict | None) -> dict[str, dict]:
        """{'selected' / 'selected:NAME': that selection's record} (study/selections.py)."""
        return sels.by_ref(self.phase(phase), selection)

    def _sel(self, phase: str, ref: str, selection: dict | None) -> dict:
        by = self.selection_refs(phase, selection)
        if ref not in by or by[ref].get("arm") is None:
            decl = sels.refs(self.phase(phase)).get(ref)
            src = decl["from"] if decl else "an earlier phase"
            raise PlanError(f"{phase} needs the arm selected from {src} ({ref})")
        return by[ref]

    def phase_runs(self, phase: str, selection: dict | None = None) -> list[PhaseRun]:
        """Every run of the phase, once, in a stable order; a selecting phase needs its selection (a
        list-form phase: {"selections": {NAME: record}}, study/selections.py)."""
        cfg = self.phase(phase)
        for ref in sels.refs(cfg):
            self._sel(phase, ref, selection)  # every selection the phase declares, before any run is named
        out, seen = [], set()

        def add(role, model, seeds, arm, variants):
            for variant in variants:
                for seed in seeds:
                    run = self.make_run(model, arm, variant, seed)
                    if run not in seen:
                        seen.add(run)
                        out.append(PhaseRun(phase, role, run, self.run_dir(run)))

        base_arm, base_variants = self.baseline_of(phase, selection)
        add("baseline", cfg["model"], cfg["seeds"], base_arm, base_variants)
        for arm, variants in self._groups(phase, selection):
            add("arm", cfg["model"], cfg["seeds"], arm, variants)
        if "scratch" in cfg:  # the baseline and the selected arm again, trained from scratch
            sc = cfg["scratch"]
            chosen = self._sel(phase, sels.ref_of(sc.get("selection")), selection)
            add("scratch_baseline", sc["model"], sc["seeds"], base_arm, base_variants)
            add("scratch_arm", sc["model"], sc["seeds"], chosen["arm"], [chosen["variant"]])
        return out

    def baseline_of(self, phase: str, selection: dict | None = None) -> tuple[str, list[str]]:
        entry = self.phase(phase)["baseline"]
        if isinstance(entry, str):
            entry = {"arm": entry}
        return next(iter(self._entry_variants(phase, entry, selection)))

    def baseline_arm(self, phase: str) -> str:
        entry = self.phase(phase)["baseline"]
        return entry if isinstance(entry, str) else entry["arm"]

    def _groups(self, phase: str, selection: dict | None):
        for entry in self.phase(phase)["runs"]:
            yield from self._entry_variants(phase, entry, selection)

    def _entry_variants(self, phase: str, entry: dict, selection: dict | None):
        arm_ref = sels.is_ref(entry["arm"])
        if arm_ref and "sweep" not in entry:
            chosen = self._sel(phase, entry["arm"], selection)
            yield chosen["arm"], [chosen["variant"]]
            return
        arm = self._sel(phase, entry["arm"], selection)["arm"] if arm_ref else entry["arm"]
        # a selected value and a sweep together make compound labels: lr0.01+projection_every3
        value_ref = entry["arm"] if arm_ref else (entry.get("value") if sels.is_ref(entry.get("value")) else None)
        chosen = self._sel(phase, value_ref, selection) if value_ref else None
        prefix = [chosen["variant"]] if chosen and chosen.get("param") else []
        if "sweep" in entry:
            labels = [variant_label(entry["sweep"]["param"], v) for v in entry["sweep"]["values"]]
            yield arm, ["+".join(prefix + [label]) for label in labels]
        else:
            yield arm, ["+".join(prefix) if prefix else self.unswept]

    @property
    def unswept(self) -> str:
        return self.config["study"]["unswept_variant"]

    # -- runs -----------------------------------------------------------------------------------
    def make_run(self, model: str, arm: str, variant: str, seed: int) -> Run:
        table = self.arm_variants.get(arm, {})
        settings = () if variant == self.unswept else tuple(table[part] for part in variant.split("+"))
        return Run(model, arm, variant, int(seed), settings)

    def all_runs(self) -> list[Run]:
        """Every run any phase can ask for, whatever an earlier phase selects (for the wildcards)."""
        runs = set()
        for phase in self.phases:
            for sel in self.possible_selections(phase):
                runs.update(pr.run for pr in self.phase_runs(phase, sel))
        return sorted(runs)

    def possible_selections(self, phase: str) -> list[dict | None]:
        """Every selection the phase could receive: each candidate (arm, variant) of the phase it selects from
        (a list-form phase: every combination of its selections' candidates)."""
        if not self.needs_selection(phase):
            return [None]
        cfg = self.phase(phase)
        if not sels.is_list_form(cfg):
            return self._choices(cfg["select"])
        combos: list[dict] = [{}]
        for decl in sels.declared(cfg):
            combos = [{**c, decl["name"]: choice} for c in combos for choice in self._choices(decl)]
        return [{"selections": c} for c in combos]

    def _choices(self, decl: dict) -> list[dict]:
        """The (arm, variant) choices one selection can make among its phase's candidates."""
        candidates = set(decl.get("arms") or [])
        out = []
        for upstream in self.possible_selections(decl["from"]):
            for arm, variants in self._groups(decl["from"], upstream):
                if candidates and arm not in candidates:
                    continue
                for v in variants:
                    choice = {"arm": arm, "variant": v, "param": self.make_run("", arm, v, 0).param}
                    if choice not in out:
                        out.append(choice)
        return out

    def run_from_wildcards(self, wildcards) -> Run:
        for name, pool in (("model", self.config["models"]), ("arm", self.config["arms"])):
            if wildcards[name] not in pool:
                raise PlanError(f"no {name} named {wildcards[name]!r} in the study "
                                f"(known: {', '.join(sorted(pool))})")
        variant = wildcards["variant"]
        table = self.arm_variants.get(wildcards["arm"], {})
        if variant != self.unswept and not all(part in table for part in variant.split("+")):
            raise PlanError(f"no swept value makes the path label {variant!r} for arm {wildcards['arm']} in this study")
        return self.make_run(wildcards["model"], wildcards["arm"], variant, int(wildcards["seed"]))

    def spec(self, run: Run) -> dict:
        if run not in self._specs:
            text = self.text_data_source() if self.config["data"]["kind"] in ("text", "hub") else None
            revision = self.model_revision_source(run.model) if self.model_revision_source else None
            self._specs[run] = build_spec(self.config, run, self.versions, self.root, text, self.tokenizer_vocab,
                                          revision, self.results, self.twin)
        return self._specs[run]

    def fingerprint(self, run: Run) -> str:
        return self.spec(run)["fingerprint"]

    def optimizer(self, run: Run) -> dict:
        """The run spec's optimizer section (known before the data stage ran, unlike the whole spec)."""
        return run_settings(self.config, run, self.root)[1]

    def alpha(self, run: Run) -> float:
        return float(self.optimizer(run)["muon"].get("alpha", 0.0))

    def resources(self, run: Run) -> dict:
        return dict(self.config["models"][run.model]["resources"])

    def arm_settings(self, phase_runs: list[PhaseRun]) -> dict:
        """The exact optimizer settings of each arm of a phase, as its runs use them."""
        settings = {}
        for pr in phase_runs:
            opt = self.optimizer(pr.run)
            settings.setdefault(pr.run.arm, {"class": opt["class"], "muon": opt["muon"], "adamw": opt["adamw"]})
        return settings

    def records(self, phase_runs: list[PhaseRun]) -> list[dict]:
        return [pr.as_record(self.alpha(pr.run)) for pr in phase_runs]


def read_selection(path: str | Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


__all__ = ["Plan", "PlanError", "PhaseRun", "Run", "SELECTED", "fmt_value", "read_selection", "variant_label"]
