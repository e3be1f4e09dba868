"""A phase's selections: what `select:` declares and what `selected` / `selected:NAME` refer to.

Two forms (config/schema.yaml):
- one mapping, `select: {from: lr_sweep, arms: [muon], rule: lowest_mean}`: one selection, referred to as
  `selected` (and as `selected:NAME` when it has a `name:`); its record is results/PHASE/selection.json
  as select_arm writes it;
- a list of named selections, each tuned on its own (e.g. "tuned AdamW vs tuned Muon on fresh seeds"):
      select:
        - {name: muon_lr, from: lr_sweep, arms: [muon], rule: lowest_mean}
        - {name: adamw_lr, from: lr_sweep, arms: [adamw], rule: lowest_mean}
  referred to as `selected:muon_lr`, `selected:adamw_lr` (plain `selected` only when the list has one
  entry); the phase's selection.json then holds {"selections": {NAME: record, ...}}.
A reference appears as a run entry's `arm:` (the selected arm at its value) or `value:` (the selected
value, for another arm), and in a gate's arm settings (the configurations the selection's pick stands for).

In a phase that selects nothing itself, a gate's `selected[:NAME]` is the pick a LATER phase's selection
from this phase would take (the same rule over the same candidates); with no later selection from the phase
there is nothing it could mean and the pre-run check refuses it (docs/analysis.md).

Nothing here imports anything beyond the standard library: study/checks.py and study/plan.py both read it.
"""

from __future__ import annotations

from typing import Mapping

SELECTED = "selected"
PREFIX = SELECTED + ":"


def is_ref(x) -> bool:
    """Whether a run entry's arm/value or a gate's arm is a reference to a selection."""
    return isinstance(x, str) and (x == SELECTED or x.startswith(PREFIX))


def ref_name(ref: str) -> str | None:
    """'selected' -> None, 'selected:muon_lr' -> 'muon_lr'."""
    return None if ref == SELECTED else ref[len(PREFIX):]


def ref_of(name: str | None) -> str:
    return SELECTED if name is None else PREFIX + name


def is_list_form(phase: Mapping) -> bool:
    return isinstance(phase.get("select"), list)


def declared(phase: Mapping) -> list[dict]:
    """The phase's selections in order, each a dict with 'name' (None for an unnamed single mapping)."""
    sel = phase.get("select")
    if not sel:
        return []
    if isinstance(sel, list):
        return [dict(s, name=s.get("name")) for s in sel if isinstance(s, Mapping)]
    return [dict(sel, name=sel.get("name"))] if isinstance(sel, Mapping) else []


def refs(phase: Mapping) -> dict[str, dict]:
    """{reference: declaration} of the references the phase's selections allow: 'selected:NAME' for every
    named one, and plain 'selected' when the phase declares exactly one."""
    decl = declared(phase)
    out = {ref_of(d["name"]): d for d in decl if d["name"] is not None}
    if len(decl) == 1:
        out[SELECTED] = decl[0]
    return out


def key_of(phase: Mapping, i: int) -> str:
    """The dotted config key of the i-th declaration (for error messages)."""
    return "select" if not is_list_form(phase) else f"select[{i}]"


def by_ref(phase: Mapping | None, record: Mapping | None) -> dict[str, dict]:
    """{reference: that selection's record} from a phase's selection record (selection.json): a single
    record (select_arm's dict) or {"selections": {NAME: record}}. Without the phase's config, a single
    record is 'selected' and a named one 'selected:NAME' (plain 'selected' too when it is the only one)."""
    if not record:
        return {}
    if "selections" in record and isinstance(record["selections"], Mapping):
        named = {PREFIX + str(k): dict(v) for k, v in record["selections"].items()}
        if len(named) == 1:
            named[SELECTED] = next(iter(named.values()))
        return named
    out = {SELECTED: dict(record)}
    decl = declared(phase) if phase else []
    if len(decl) == 1 and decl[0]["name"] is not None:
        out[ref_of(decl[0]["name"])] = dict(record)
    return out


def records(record: Mapping | None) -> list[tuple[str | None, dict]]:
    """[(name or None, record)] of a selection.json, one per selection it holds."""
    if not record:
        return []
    if "selections" in record and isinstance(record["selections"], Mapping):
        return [(str(k), dict(v)) for k, v in record["selections"].items()]
    return [(None, dict(record))]


def stop_reason(record: Mapping, force: bool) -> tuple[str, str] | None:
    """Why a selecting phase cannot run with this selection.json: ('gate', reason) when a selection's gate
    did not pass (and the phase is not forced), ('none', reason) when a selection picked nothing; None when
    the phase may run."""
    recs = records(record)
    for name, r in recs:
        if r.get("gate_passed") is not True and not force:
            return "gate", (f"selection {name}: " if name else "") + str(r.get("reason", "no reason recorded"))
    for name, r in recs:
        if r.get("arm") is None:
            return "none", (f"selection {name}: " if name else "") + str(r.get("reason", "no reason recorded"))
    return None


def carries_baseline(config: Mapping, phase: str, decl: Mapping) -> bool:
    """Whether the phase compares with the very baseline of the phase the selection `decl` takes from: the
    same baseline entry, not re-tuned (an entry that takes a selected value is another configuration)."""
    phases = config.get("phases", {})
    src = phases.get(decl.get("from"), {})
    if not src:
        return False

    def norm(b):
        return dict(b) if isinstance(b, Mapping) else {"arm": b}
    mine, theirs = norm(phases[phase].get("baseline")), norm(src.get("baseline"))
    return mine == theirs and not is_ref(mine.get("value")) and not is_ref(mine.get("arm"))
