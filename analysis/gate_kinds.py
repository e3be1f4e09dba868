"""The gate kinds a study can name, and the parameters each takes (no pandas: the config checks read this).

A study names gate instances, each with a kind and settings:

    isotropic_worse: {kind: arm_better_than_arm, better: selected, worse: isotropic}

`GATE_KINDS[kind].params` declares every setting: its type (what the config checks verify before any job
is built), its default (REQUIRED when it has none) and one line of help. A setting typed `arm` or `arms`
names arms of the same phase, or `selected` (the arm the phase took from an earlier one); a `step` is a
training step that the phase's model evaluates. Adding a kind: declare it here and implement it in
analysis/gates.py under the same name; nothing else changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

REQUIRED = object()
SELECTED = "selected"  # the arm a phase took from an earlier phase (study `select:`)

TYPES = ("number", "fraction", "int", "step", "arm", "arms", "metric", "bool", "model")


@dataclass(frozen=True)
class Param:
    type: str
    default: object = REQUIRED
    help: str = ""
    nullable: bool = False  # null is allowed (and then means "every" / "none", see help)


@dataclass(frozen=True)
class GateKind:
    doc: str
    params: dict = field(default_factory=dict)
    statistical: bool = True  # has a minimum n, a level and a power floor


# Settings every statistical gate takes.
STATISTICAL = {
    "level": Param("fraction", 0.05, "family-wise error rate of the gate's tests (Holm within the phase)"),
    "min_n": Param("int", 2, "fewest usable seeds per side; below it the verdict is INSUFFICIENT"),
    "power_floor": Param("fraction", 0.8, "below this power at the gate's threshold an undecided result is "
                                          "INSUFFICIENT, not FAIL"),
}

GATE_KINDS: dict[str, GateKind] = {
    "no_crashes": GateKind("every run finished with status ok (a diverged or failed run fails it)",
                           statistical=False),
    "metric_logged": GateKind(
        "every run logged a finite value of a metric within a range",
        {"metric": Param("metric", "eff_rank_mean", "the runs.csv column"),
         "min_value": Param("number", 1.0, "smallest allowed value"),
         "max_value": Param("number", 1.0e6, "largest allowed value")},
        statistical=False),
    "baseline_sane": GateKind(
        "the baseline trained: every baseline run finished, its final loss is below its own start by a "
        "factor, below a ceiling, and not far behind the best arm (a broken baseline is not 'beaten')",
        {"max_ratio_to_start": Param("fraction", 0.9, "final val loss / first evaluated val loss, at most"),
         "max_final_loss": Param("number", None, "an absolute ceiling on the final val loss", nullable=True),
         "max_gap_to_best_arm": Param("fraction", 0.1, "the baseline's mean final loss may exceed the best "
                                      "arm's by at most this fraction (null: no check)", nullable=True)},
        statistical=False),
    "within_baseline": GateKind(
        "each arm's mean final loss is at most the baseline's x (1 + margin) (non-inferiority)",
        {"margin": Param("fraction", 0.05, "the relative margin"),
         "arms": Param("arms", None, "the arms judged (null: every arm of the phase)", nullable=True)}),
    "beats_baseline": GateKind(
        "some arm lowers the mean final loss by more than min_improvement (a test against the threshold)",
        {"min_improvement": Param("fraction", 0.0, "the relative improvement the arm must exceed"),
         "arms": Param("arms", None, "the candidate arms (null: every arm)", nullable=True),
         "model": Param("model", None, "judge only this model's runs (null: the phase's)", nullable=True),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: the threshold, or 0.01 when it is 0)", nullable=True)}),
    "not_worse_than_baseline": GateKind(
        "the named arms are not worse than the baseline by more than a margin, at a step or at the end",
        {"margin": Param("fraction", 0.01, "the non-inferiority margin (relative)"),
         "step": Param("step", None, "the evaluated step (null: the final loss)", nullable=True),
         "arms": Param("arms", None, "the arms judged (null: every arm)", nullable=True)}),
    "arm_better_than_arm": GateKind(
        "one arm has a lower mean final loss than another",
        {"better": Param("arm", REQUIRED, "the arm expected to be better"),
         "worse": Param("arm", REQUIRED, "the arm expected to be worse"),
         "margin": Param("fraction", 0.0, "by more than this relative margin"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: the margin, or 0.01 when it is 0)", nullable=True)}),
    "metric_higher": GateKind(
        "a metric of the named arms is higher than the baseline's",
        {"metric": Param("metric", "eff_rank_mean", "the runs.csv column"),
         "arms": Param("arms", REQUIRED, "the arms judged"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: 0.05)", nullable=True)}),
    "reaches_target_sooner": GateKind(
        "the scratch arm reaches the scratch baseline's mean final loss in fewer steps",
        {"min_speedup": Param("fraction", 0.0, "in at most (1 - min_speedup) x the baseline's steps"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: min_speedup, or 0.1 when it is 0)", nullable=True)}),
}


def _type_ok(p: Param, v) -> bool:
    if v is None:
        return p.nullable
    if p.type in ("number", "fraction"):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return ok and (p.type == "number" or 0.0 <= v <= 1.0)
    if p.type in ("int", "step"):
        return isinstance(v, int) and not isinstance(v, bool) and v >= (1 if p.type == "step" else 0)
    if p.type == "bool":
        return isinstance(v, bool)
    if p.type in ("arm", "metric", "model"):
        return isinstance(v, str) and bool(v)
    if p.type == "arms":
        return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)
    raise AssertionError(p.type)


def _type_words(p: Param) -> str:
    words = {"number": "a finite number", "fraction": "a number between 0 and 1", "int": "an integer >= 0",
             "step": "a training step (integer >= 1)", "arm": "an arm of the phase, or 'selected'",
             "arms": "a non-empty list of arms of the phase (or 'selected')", "metric": "a runs.csv column",
             "bool": "true or false", "model": "a model name"}[p.type]
    return words + (" or null" if p.nullable else "")


def params_of(kind: str) -> dict[str, Param]:
    gk = GATE_KINDS[kind]
    return {**(STATISTICAL if gk.statistical else {}), **gk.params}


def resolve(where: str, settings: dict) -> tuple[dict, list[str]]:
    """(kind and every setting with defaults filled in, problems). `where` is the dotted config key."""
    problems: list[str] = []
    if not isinstance(settings, dict):
        return {}, [f"{where}: {settings!r} is not a gate (write {{kind: KIND, ...settings}})"]
    kind = settings.get("kind")
    if kind not in GATE_KINDS:
        return {}, [f"{where}.kind: {kind!r} is not a gate kind (known: {', '.join(sorted(GATE_KINDS))})"]
    params = params_of(kind)
    out = {"kind": kind}
    for key, value in settings.items():
        if key in ("kind", "description"):
            continue
        if key not in params:
            problems.append(f"{where}.{key}: not a setting of gate kind {kind} "
                            f"(allowed: {', '.join(sorted(params)) or 'none'})")
        elif not _type_ok(params[key], value):
            problems.append(f"{where}.{key}: {value!r} is not allowed ({_type_words(params[key])})")
    for key, p in params.items():
        if key in settings:
            out[key] = settings[key]
        elif p.default is REQUIRED:
            problems.append(f"{where}.{key}: required by gate kind {kind} ({p.help})")
        else:
            out[key] = p.default
    return out, problems


def arm_references(resolved: dict) -> list[tuple[str, str]]:
    """(setting, arm name) for every arm a resolved gate names."""
    refs = []
    for key, p in params_of(resolved["kind"]).items():
        v = resolved.get(key)
        if p.type == "arm" and isinstance(v, str):
            refs.append((key, v))
        elif p.type == "arms" and isinstance(v, list):
            refs.extend((key, x) for x in v)
    return refs


def step_references(resolved: dict) -> list[tuple[str, int]]:
    return [(k, resolved[k]) for k, p in params_of(resolved["kind"]).items()
            if p.type == "step" and isinstance(resolved.get(k), int)]
