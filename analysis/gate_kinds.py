"""The gate kinds a study can name, and the parameters each takes (no pandas: the config checks read this).

A study names gate instances, each with a kind and settings:

    isotropic_worse: {kind: arm_better_than_arm, better: selected, worse: isotropic}

`GATE_KINDS[kind].params` declares every setting: its type (what the config checks verify before any job
is built), its default (REQUIRED when it has none) and one line of help. A setting typed `arm` or `arms`
names arms of the same phase, or `selected` (the arm the phase took from an earlier one); a `step` is a
training step that the phase's model evaluates.

Each statistical kind also owns what the design check and the gates both read, so they cannot disagree:
`mode` (how its hypotheses combine: "any" passes when one passes, "all" needs every one), `direction`
(the claim's side: "less" for a loss, "greater" for a metric), `boundary(settings)` (the claim's ratio:
H1 mean(arm) < boundary x mean(reference) for "less"), `distance(settings)` (the true difference, beyond
the boundary, that power is computed at), `quantity(settings)` ("loss": the final loss, whose noise the
design check estimates; anything else is a metric or steps with their own prior), and
`hypotheses(settings, arms)` (how many one-sided tests the gate makes: the design check's Holm family
is their sum). `function` names the function in analysis/gates.py that forms the hypotheses (statistical
kinds) or decides (plain kinds).

Adding a kind: one entry here plus its function in analysis/gates.py (tests/test_analysis_gates.py checks
that every entry's function exists); the design check, the config checks and the report read the entry.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

REQUIRED = object()
SELECTED = "selected"  # the arm a phase took from an earlier phase (study `select:`)


def is_selected(x) -> bool:
    """'selected' or 'selected:NAME' (one of several named selections, study/selections.py)."""
    return isinstance(x, str) and (x == SELECTED or x.startswith(SELECTED + ":"))

TYPES = ("number", "fraction", "int", "step", "arm", "arms", "metric", "bool", "model", "text")


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
    function: str = ""        # the name of its function in analysis/gates.py (default k_<kind>)
    mode: str = "all"         # statistical: "any" (one hypothesis suffices) or "all"
    direction: str = "less"   # statistical: "less" (lower is better: a loss, steps) or "greater"
    boundary: Callable[[dict], float] = lambda s: 1.0
    distance: Callable[[dict], float] = lambda s: 0.01
    quantity: Callable[[dict], str] = lambda s: "loss"
    hypotheses: Callable[[dict, "DesignArms"], int] = lambda s, arms: 0


@dataclass(frozen=True)
class DesignArms:
    """What the design check knows of a phase's configurations, for GateKind.hypotheses:
    `main` (model, arm, variant) of the main-family arms, `scratch` those of the scratch arms, `selected`
    the arms 'selected' stands for (None: one configuration, the phase's own pick), and `selected_by`
    ((reference, arms), ...) the arms each named reference ('selected:NAME') stands for."""
    main: tuple = ()
    scratch: tuple = ()
    selected: tuple | None = None
    selected_by: tuple = ()

    def arms_for(self, ref: str) -> tuple | None:
        """The arms a reference stands for (None: unknown before the selection, one configuration)."""
        by = dict(self.selected_by)
        if ref in by:
            return tuple(by[ref]) if by[ref] else None
        return self.selected if ref == SELECTED else None

    def named(self, names, model=None) -> int:
        rows = [a for a in self.main if model is None or a[0] == model]
        if names is None:
            return len(rows)
        n = 0
        for x in names:
            if is_selected(x):
                arms = self.arms_for(x)
                # every variant of the selected arm that the gate judges (a sweep built on the pick)
                n += (sum(1 for a in rows if a[1] in arms) or 1) if arms else 1
            else:
                n += sum(1 for a in rows if a[1] == x)
        return n


def _thr(key: str, zero_default: float):
    """The power distance of a threshold kind: the threshold, else design_effect, else a default."""
    def f(s: dict) -> float:
        m = float(s.get(key) or 0.0)
        return m if m > 0 else float(s.get("design_effect") or zero_default)
    return f


# Settings every statistical gate takes.
STATISTICAL = {
    "level": Param("fraction", 0.05, "family-wise error rate of the gate's tests (Holm within the phase)"),
    "min_n": Param("int", 2, "fewest usable seeds per side; below it the verdict is INSUFFICIENT"),
    "power_floor": Param("fraction", 0.8, "the design check flags a gate whose power at its threshold is "
                                          "below this (the verdict itself never depends on it)"),
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
    "equal_bytes": GateKind(
        "the named arms send the same bytes per rank and step (a claim 'at equal bytes' holds only when "
        "it is measured): each arm's mean of the metric within a relative tolerance of the first arm's",
        {"arms": Param("arms", REQUIRED, "the arms whose bytes must match"),
         "metric": Param("metric", "bytes_sent_per_step", "the runs.csv column of bytes sent"),
         "tolerance": Param("fraction", 0.01, "the largest relative difference allowed")},
        statistical=False),
    "within_baseline": GateKind(
        "each arm's mean final loss is at most the baseline's x (1 + margin) (non-inferiority)",
        {"margin": Param("fraction", 0.05, "the relative margin"),
         "arms": Param("arms", None, "the arms judged (null: every arm of the phase)", nullable=True)},
        boundary=lambda s: 1 + float(s["margin"]), distance=lambda s: float(s["margin"]),
        hypotheses=lambda s, arms: arms.named(s.get("arms"))),
    "beats_baseline": GateKind(
        "some arm lowers the mean final loss by more than min_improvement (a test against the threshold)",
        {"min_improvement": Param("fraction", 0.0, "the relative improvement the arm must exceed"),
         "arms": Param("arms", None, "the candidate arms (null: every arm)", nullable=True),
         "model": Param("model", None, "judge only this model's runs (null: the phase's)", nullable=True),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: the threshold, or 0.01 when it is 0)", nullable=True)},
        mode="any", boundary=lambda s: 1 - float(s["min_improvement"]), distance=_thr("min_improvement", 0.01),
        hypotheses=lambda s, arms: arms.named(s.get("arms"), s.get("model"))),
    "not_worse_than_baseline": GateKind(
        "the named arms are not worse than the baseline by more than a margin, at a step or at the end",
        {"margin": Param("fraction", 0.01, "the non-inferiority margin (relative)"),
         "step": Param("step", None, "the evaluated step (null: the final loss)", nullable=True),
         "arms": Param("arms", None, "the arms judged (null: every arm)", nullable=True)},
        boundary=lambda s: 1 + float(s["margin"]), distance=lambda s: float(s["margin"]),
        quantity=lambda s: "loss" if s.get("step") is None else f"val_loss_at_{int(s['step'])}",
        hypotheses=lambda s, arms: arms.named(s.get("arms"))),
    "arm_better_than_arm": GateKind(
        "one arm has a lower mean final loss than another (matched: only configurations of the same "
        "variant, e.g. the same alpha, are compared)",
        {"better": Param("arm", REQUIRED, "the arm expected to be better"),
         "worse": Param("arm", REQUIRED, "the arm expected to be worse"),
         "margin": Param("fraction", 0.0, "by more than this relative margin"),
         "matched": Param("bool", False, "compare only configurations with the same variant (matched alpha); "
                          "false: the same variant when there is one, else every configuration of 'worse'"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: the margin, or 0.01 when it is 0)", nullable=True)},
        boundary=lambda s: 1 - float(s["margin"]), distance=_thr("margin", 0.01),
        hypotheses=lambda s, arms: _pairs(s, arms)),
    "any_better_than_arm": GateKind(
        "at least one of the named arms has a lower mean final loss than a reference arm (one claim: Holm "
        "over the arms inside the phase's family)",
        {"arms": Param("arms", REQUIRED, "the candidate arms"),
         "worse": Param("arm", REQUIRED, "the reference arm they are compared with"),
         "margin": Param("fraction", 0.0, "by more than this relative margin"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: 0.01)", nullable=True)},
        mode="any", boundary=lambda s: 1 - float(s["margin"]), distance=_thr("margin", 0.01),
        hypotheses=lambda s, arms: arms.named(s.get("arms"))),
    "interaction": GateKind(
        "a difference of differences: the arm's loss rises less than the reference arm's as a setting "
        "changes; per seed, (arm at v / arm at start - 1) - (ref at v / ref at start - 1) < -margin, one "
        "hypothesis per value v both arms ran (variants matched on their last '+'-part)",
        {"arm": Param("arm", REQUIRED, "the arm whose change should be smaller"),
         "ref": Param("arm", REQUIRED, "the arm it is compared with (e.g. adamw)"),
         "start": Param("text", REQUIRED, "the setting both arms' rises are measured from: the last "
                        "'+'-part of a variant label, e.g. projection_every1 (the baseline counts as its arm)"),
         "margin": Param("fraction", 0.0, "the arm's relative rise must be below ref's by more than this"),
         "design_effect": Param("fraction", None, "the difference of relative rises the power check is "
                                "computed at (null: 0.01)", nullable=True)},
        mode="all", boundary=lambda s: -float(s["margin"]), distance=_thr("margin", 0.01),
        hypotheses=lambda s, arms: sum(1 for a in arms.main if a[1] == s.get("arm")
                                       and str(a[2]).split("+")[-1] != s.get("start"))),
    "metric_higher": GateKind(
        "a metric of the named arms is higher than the baseline's",
        {"metric": Param("metric", "eff_rank_mean", "the runs.csv column"),
         "arms": Param("arms", REQUIRED, "the arms judged"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: 0.05)", nullable=True)},
        direction="greater", distance=lambda s: float(s.get("design_effect") or 0.05),
        quantity=lambda s: str(s["metric"]), hypotheses=lambda s, arms: arms.named(s.get("arms"))),
    "reaches_target_sooner": GateKind(
        "the scratch arm reaches the scratch baseline's mean final loss in fewer steps (steps interpolated "
        "linearly between evaluations; an arm seed that never reaches it counts as the worst outcome)",
        {"min_speedup": Param("fraction", 0.0, "in at most (1 - min_speedup) x the baseline's steps"),
         "design_effect": Param("fraction", None, "the relative difference the power check is computed at "
                                "when the threshold is 0 (null: min_speedup, or 0.1 when it is 0)", nullable=True)},
        boundary=lambda s: 1 - float(s["min_speedup"]), distance=_thr("min_speedup", 0.1),
        quantity=lambda s: "steps", hypotheses=lambda s, arms: len(set(arms.scratch))),
}


def _pairs(s: dict, arms: DesignArms) -> int:
    """arm_better_than_arm's hypotheses: one per (better, worse) configuration pair it forms."""
    def keys(name):
        if is_selected(name):
            chosen = arms.arms_for(name)
            sel = [a for a in arms.main if chosen and a[1] in chosen]
            return sel or [("?", name, "?")]
        return [a for a in arms.main if a[1] == name]
    better, worse = keys(s["better"]), keys(s["worse"])
    n = 0
    for b in better:
        same = [w for w in worse if w[0] == b[0] or "?" in (b[0], w[0])]
        shared = [w for w in same if w[2] == b[2]]
        n += len(shared) if (shared or s.get("matched")) else len(same)
    return max(n, 1) if not s.get("matched") else n


def function_name(kind: str) -> str:
    return GATE_KINDS[kind].function or f"k_{kind}"


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
    if p.type in ("arm", "metric", "model", "text"):
        return isinstance(v, str) and bool(v)
    if p.type == "arms":
        return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x for x in v)
    raise AssertionError(p.type)


def _type_words(p: Param) -> str:
    words = {"number": "a finite number", "fraction": "a number between 0 and 1", "int": "an integer >= 0",
             "step": "a training step (integer >= 1)", "arm": "an arm of the phase, 'selected' or 'selected:NAME'",
             "arms": "a non-empty list of arms of the phase (or 'selected', 'selected:NAME')", "metric": "a runs.csv column",
             "bool": "true or false", "model": "a model name", "text": "a non-empty string"}[p.type]
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
