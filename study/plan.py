"""The study plan: a validated config expanded into runs, per phase.

A run is one training job, identified by (model, arm, alpha, seed). A phase lists runs; a run that
several phases list is one run, trained once. Nothing here imports torch: the Snakefile builds a
Plan on every invocation, including inside each cluster job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from study.spec import build_spec, load_code_versions

PHASES = ("phase1", "phase2", "phase3")
RUNS_DIR = "results/runs"
CHECKPOINTS_DIR = "results/checkpoints"

NOISE_CLASSES = {"MuonOrthoNoise", "MuonIsotropic"}
MUON_KEYS = {"lr", "momentum", "nesterov", "weight_decay", "adjust_lr_fn", "orthogonalizer",
             "ns_steps", "ns_precision", "rank_every", "shard_across_ranks"}
NOISE_KEYS = {"schedule", "alpha_end_ratio", "schedule_steps", "half_life", "noise_warmup_steps",
              "rank_threshold", "noise_method", "persist_noise", "reortho_steps"}
NOLAH_KEYS = {"gating", "percentile", "percentile_scale", "sigmoid_projection"}
ALLOWED_KEYS = {
    "Muon": MUON_KEYS,
    "MuonOrthoNoise": MUON_KEYS | NOISE_KEYS,
    "MuonIsotropic": MUON_KEYS | NOISE_KEYS - {"noise_method", "reortho_steps"},
    "MuonNOLAH": MUON_KEYS | NOLAH_KEYS,
}


class PlanError(ValueError):
    """A config that passes the schema but does not make a coherent study."""


def fmt_alpha(alpha: float) -> str:
    """The alpha as written in run paths: 1.0e-3 -> '0.001', 5.0e-2 -> '0.05', 0 -> '0'."""
    return format(float(alpha), "g")


@dataclass(frozen=True, order=True)
class Run:
    model: str
    arm: str
    alpha: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.model}/{self.arm}/alpha{fmt_alpha(self.alpha)}/seed{self.seed}"

    @property
    def run_dir(self) -> str:
        return f"{RUNS_DIR}/{self.key}"

    @property
    def checkpoint_dir(self) -> str:
        return f"{CHECKPOINTS_DIR}/{self.key}"

    @property
    def metrics(self) -> str:
        return f"{self.run_dir}/metrics.json"

    @property
    def history(self) -> str:
        return f"{self.run_dir}/history.csv"


@dataclass(frozen=True)
class PhaseRun:
    """A run as one phase sees it: with its role in that phase's comparisons."""

    phase: str
    role: str  # baseline | arm | scratch_baseline | scratch_arm
    run: Run

    def as_record(self) -> dict:
        return {"phase": self.phase, "role": self.role, **asdict(self.run), "run_dir": self.run.run_dir}


class Plan:
    def __init__(self, config: dict, code_root: str | Path | None = None):
        self.config = config
        # Where optim/versions.py and trainer/version.py are read: the workflow's own copy of the code.
        root = Path(code_root) if code_root else Path(__file__).resolve().parent.parent
        self.versions = load_code_versions(root)
        check(config)
        self._specs: dict[Run, dict] = {}

    # -- phases ---------------------------------------------------------------------------------
    @property
    def phases(self) -> list[str]:
        return [p for p in PHASES if p in self.config["phases"]]

    def phase(self, name: str) -> dict:
        return self.config["phases"][name]

    def needs_selection(self, phase: str) -> bool:
        return "select_from" in self.phase(phase)

    def phase_runs(self, phase: str, selection: dict | None = None) -> list[PhaseRun]:
        """Every run of the phase, once, in a stable order. Phase 3 needs phase 2's selection."""
        cfg = self.phase(phase)
        model, seeds, baseline = cfg["model"], cfg["seeds"], cfg["baseline"]
        groups = [(baseline, [0.0])] + [(g["arm"], g["alphas"]) for g in cfg.get("runs", [])]
        scratch = []
        if self.needs_selection(phase):
            if selection is None or selection.get("arm") is None:
                raise PlanError(f"{phase} needs the arm selected from {cfg['select_from']}")
            chosen = (selection["arm"], [float(selection["alpha"])])
            groups.insert(1, chosen)
            if "scratch" in cfg:
                sc = cfg["scratch"]
                scratch = [PhaseRun(phase, "scratch_baseline" if arm == baseline else "scratch_arm",
                                    Run(sc["model"], arm, self._alpha(arm, a), seed))
                           for arm, alphas in [(baseline, [0.0]), chosen]
                           for a in alphas for seed in sc["seeds"]]
        out, seen = [], set()
        for arm, alphas in groups:
            for alpha in alphas:
                for seed in seeds:
                    run = Run(model, arm, self._alpha(arm, alpha), seed)
                    if run not in seen:
                        seen.add(run)
                        out.append(PhaseRun(phase, "baseline" if arm == baseline else "arm", run))
        return out + scratch

    def _alpha(self, arm: str, alpha: float) -> float:
        # Arms without noise ignore alpha; one directory (alpha0) keeps them from being trained twice.
        return float(alpha) if self.arm_class(arm) in NOISE_CLASSES else 0.0

    # -- runs -----------------------------------------------------------------------------------
    def arm_class(self, arm: str) -> str:
        return self.config["arms"][arm]["class"]

    def run_from_wildcards(self, wildcards) -> Run:
        for name in ("model", "optimizer"):
            pool = self.config["models"] if name == "model" else self.config["arms"]
            if wildcards[name] not in pool:
                raise PlanError(f"no {name} named {wildcards[name]!r} in the config "
                                f"(known: {', '.join(sorted(pool))})")
        return Run(wildcards["model"], wildcards["optimizer"], float(wildcards["alpha"]),
                   int(wildcards["seed"]))

    def spec(self, run: Run) -> dict:
        if run not in self._specs:
            self._specs[run] = build_spec(self.config, run, self.versions)
        return self._specs[run]

    def fingerprint(self, run: Run) -> str:
        return self.spec(run)["fingerprint"]

    def resources(self, run: Run) -> dict:
        return dict(self.config["models"][run.model]["resources"])

    def arm_settings(self, phase_runs: list[PhaseRun]) -> dict:
        """The exact optimizer settings of each arm of a phase, as the runs use them."""
        settings = {}
        for pr in phase_runs:
            opt = self.spec(pr.run)["optimizer"]
            settings.setdefault(pr.run.arm, {"class": opt["class"], "muon": opt["muon"],
                                             "adamw": opt["adamw"]})
        return settings


def read_selection(path: str | Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


# -- checks the schema cannot express ------------------------------------------------------------
def check(config: dict) -> None:
    models, arms = config["models"], config["arms"]
    problems = []
    for arm, a in arms.items():
        allowed = ALLOWED_KEYS[a["class"]]
        for key in a.get("muon", {}):
            if key not in allowed:
                problems.append(f"arms.{arm}.muon.{key}: not a setting of class {a['class']} "
                                f"(allowed: {', '.join(sorted(allowed))})")
        if a["class"] in NOISE_CLASSES:
            muon = {**config["optimizer_defaults"]["muon"], **a.get("muon", {})}
            if muon.get("schedule") in ("exponential", "linear") and not (
                    "alpha_end_ratio" in muon or "half_life" in muon):
                problems.append(f"arms.{arm}.muon.schedule: {muon['schedule']!r} needs "
                                "alpha_end_ratio (or half_life for exponential)")
            if muon.get("schedule") == "exponential" and "alpha_end_ratio" in muon and "half_life" in muon:
                problems.append(f"arms.{arm}.muon: give alpha_end_ratio or half_life, not both")
    for key in config["optimizer_defaults"]["muon"]:
        if key not in MUON_KEYS:
            problems.append(f"optimizer_defaults.muon.{key}: not a setting every Muon class takes "
                            f"(allowed: {', '.join(sorted(MUON_KEYS))}); set it on the arm")
    for name, m in models.items():
        if m["global_batch"] % m["micro_batch"]:
            problems.append(f"models.{name}: global_batch {m['global_batch']} is not a multiple of "
                            f"micro_batch {m['micro_batch']}")
        gpus = m["resources"]["gpus"] * m["resources"]["nodes"]
        if m["global_batch"] % (m["micro_batch"] * gpus):
            problems.append(f"models.{name}: global_batch {m['global_batch']} is not a multiple of "
                            f"micro_batch x GPUs = {m['micro_batch'] * gpus}")
    for pname, p in config["phases"].items():
        where = f"phases.{pname}"
        if p["model"] not in models:
            problems.append(f"{where}.model: {p['model']!r} is not in models "
                            f"(known: {', '.join(sorted(models))})")
        if p["baseline"] not in arms:
            problems.append(f"{where}.baseline: {p['baseline']!r} is not in arms")
        for i, g in enumerate(p.get("runs", [])):
            if g["arm"] not in arms:
                problems.append(f"{where}.runs[{i}].arm: {g['arm']!r} is not in arms "
                                f"(known: {', '.join(sorted(arms))})")
            elif arms[g["arm"]]["class"] in NOISE_CLASSES and any(a == 0 for a in g["alphas"]):
                problems.append(f"{where}.runs[{i}].alphas: a noise arm ({g['arm']}) needs alpha > 0")
        if "scratch" in p:
            if "select_from" not in p:
                problems.append(f"{where}.scratch: needs select_from (the scratch pair uses the selected arm)")
            if p["scratch"]["model"] not in models:
                problems.append(f"{where}.scratch.model: {p['scratch']['model']!r} is not in models")
            elif p["scratch"]["model"] == p["model"]:
                problems.append(f"{where}.scratch.model: {p['model']!r} is the phase's model too; the scratch "
                                "pair needs a model entry of its own (its runs would be counted twice)")
        if "select_from" in p:
            if pname != "phase3":
                problems.append(f"{where}.select_from: only phase3 selects its arm from an earlier phase")
            elif p["select_from"] not in config["phases"]:
                problems.append(f"{where}.select_from: {p['select_from']!r} is not a configured phase")
        if "force" in p and "select_from" not in p:
            problems.append(f"{where}.force: only meaningful with select_from")
        for gname, g in p["gates"].items():
            for arm in g.get("arms") or []:
                if arm not in arms:
                    problems.append(f"{where}.gates.{gname}.arms: {arm!r} is not in arms")
            for key in ("orthonoise", "isotropic"):
                if key in g and g[key] not in arms:
                    problems.append(f"{where}.gates.{gname}.{key}: {g[key]!r} is not in arms")
            if gname in ("advantage_replicates", "scratch_faster") and "select_from" not in p:
                problems.append(f"{where}.gates.{gname}: needs a selected arm (select_from)")
            if gname == "scratch_faster" and "scratch" not in p:
                problems.append(f"{where}.gates.scratch_faster: needs a scratch pair ({where}.scratch)")
    if problems:
        raise PlanError("invalid study config:\n  - " + "\n  - ".join(problems))
