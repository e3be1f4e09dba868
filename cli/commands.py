"""The CLI's commands: each builds plain data (what --json prints) and a text rendering of it."""

from __future__ import annotations

import json
import statistics
import time

from cli.records import log_tail, read_json, run_state
from cli.study_view import StudyView
from cli.tables import bar, duration, flatten, fmt, table

STATUSES = ("done", "diverged", "stale", "running", "interrupted", "failed", "missing")
OUTCOME_KEYS = ("status", "final_val_loss", "best_val_loss", "steps_completed", "tokens_per_s", "wall_time_s",
                "gpu_hours", "gpu_share", "world_size", "device", "diverged_step")


def states(view: StudyView, phases: list[str] | None = None, with_checkpoint: bool = False) -> list:
    now = time.time()
    return [run_state(view, run, [pr.phase for pr in prs], view.planned_fingerprint(run), now, with_checkpoint)
            for run, prs in view.runs(phases).items()]


# -- runs -------------------------------------------------------------------------------------------
def runs_data(views: list[StudyView], phases=None, arms=None, statuses=None, models=None) -> list[dict]:
    rows = []
    for view in views:
        for st in states(view, phases if phases else None):
            if arms and st.arm not in arms:
                continue
            if models and st.model not in models:
                continue
            if statuses and st.status not in statuses and st.counted_as not in statuses:
                continue
            rows.append({"study": view.label, **st.to_dict()})
    return rows


def by_share(gpu_hours, share):
    """GPU-h counted by share (held x the fraction of the GPU the run had); held where no share was measured."""
    if gpu_hours is None or share is None:
        return gpu_hours
    return gpu_hours * share


def runs_text(rows: list[dict], several_studies: bool) -> str:
    if not rows:
        return "no runs match"
    headers = (["study"] if several_studies else []) + ["phase", "model", "arm", "variant", "seed", "status",
                                                        "stale", "final loss", "wall", "GPU-h"]
    body = []
    for r in rows:
        status = r["status"]
        if status == "running" and r.get("progress"):
            p = r["progress"]
            status = f"running {p['step']}/{p['total']}"
        body.append(([r["study"]] if several_studies else []) + [
            ",".join(r["phases"]), r["model"], r["arm"], r["variant"], str(r["seed"]), status,
            fmt(r["stale"]), fmt(r["final_val_loss"], "loss"), fmt(r["wall_time_s"], "duration"),
            fmt(by_share(r["gpu_hours"], r.get("gpu_share")), "hours")])
    n = len(headers)
    return table(headers, body, right={n - 1, n - 2, n - 3, n - 6}) + f"\n{len(rows)} runs"


# -- show -------------------------------------------------------------------------------------------
def show_data(view: StudyView, name: str, lines: int = 15) -> dict:
    run = view.find_run(name)
    phases = [p for p, prs in ((p, view.phase_runs(p).runs or []) for p in view.plan.phases)
              if any(pr.run == run for pr in prs)]
    st = run_state(view, run, phases, view.planned_fingerprint(run), with_checkpoint=True)
    metrics = read_json(view.path(st.run_dir) / "metrics.json") or {}
    planned = _planned_spec(view, run)
    recorded = metrics.get("spec") or read_json(view.path(st.run_dir) / "spec.json")
    changed = []
    if planned and recorded:
        a, b = flatten(recorded), flatten(planned)
        changed = [{"key": k, "recorded": a.get(k), "planned": b.get(k)} for k in sorted(set(a) | set(b))
                   if a.get(k) != b.get(k) and not k.startswith(("wandb.", "checkpoint.", "runtime."))]
    tail = log_tail(view.path(st.log)).splitlines()[-lines:] if lines else []
    return {"study": view.label, "run": st.to_dict(), "spec": recorded or planned, "spec_source":
            "recorded" if recorded else "planned", "changed_since_recorded": changed,
            "metrics": {k: metrics.get(k) for k in OUTCOME_KEYS if k in metrics},
            "diagnostics": metrics.get("diagnostics"), "val_loss_at": metrics.get("val_loss_at"),
            "log_tail": tail}


def _planned_spec(view: StudyView, run) -> dict | None:
    try:
        return view.plan.spec(run)
    except Exception:  # noqa: BLE001 - the text corpus not prepared yet
        return None


def show_text(d: dict) -> str:
    r = d["run"]
    out = [f"run {r['key']}  ({d['study']}; phases: {', '.join(r['phases']) or 'none now'})",
           f"  status       {r['status']}" + (f"  (step {r['progress']['step']}/{r['progress']['total']}, "
                                              f"ETA {duration(r['progress']['eta_s'])})" if r.get("progress") else ""),
           f"  stale        {fmt(r['stale'])}  (planned fingerprint {r['fingerprint']}, recorded "
           f"{r['recorded_fingerprint'] or '-'})",
           f"  run dir      {r['run_dir']}", f"  log          {r['log']}"]
    if d["changed_since_recorded"]:
        out.append("  changed since it ran (what makes it stale):")
        out += [f"    {c['key']}: {c['recorded']!r} -> {c['planned']!r}" for c in d["changed_since_recorded"]]
    if d["metrics"]:
        out.append("metrics")
        out += [f"  {k:<16} {fmt(v)}" for k, v in d["metrics"].items()]
        if d.get("val_loss_at"):
            out.append("  val loss at    " + ", ".join(f"{s}: {v:.4f}" for s, v in d["val_loss_at"].items()))
    ck = r.get("checkpoint") or {}
    out.append("checkpoint")
    if not ck:
        out.append("  none (no checkpoint directory)")
    else:
        out.append(f"  dir          {ck['dir']}")
        for f in ck.get("files", []):
            out.append(f"  {f['file']:<12} {f['bytes']:,} bytes, written {f['written']}")
        if "lock" in ck:
            alive = ck.get("holder_alive")
            out.append(f"  lock         {ck['lock']}" + ("" if alive is None else (" (alive)" if alive else " (gone)")))
    if d["spec"]:
        out.append(f"spec ({d['spec_source']})")
        out += ["  " + line for line in json.dumps(d["spec"], indent=2, sort_keys=True).splitlines()]
    out.append("log tail" + ("" if d["log_tail"] else " (no log)"))
    out += ["  " + line for line in d["log_tail"]]
    return "\n".join(out)


# -- diff -------------------------------------------------------------------------------------------
def diff_data(view: StudyView, a: str, b: str, everything: bool = False) -> dict:
    ra, rb = view.find_run(a), view.find_run(b)
    sides = []
    for run in (ra, rb):
        st = run_state(view, run, [], view.planned_fingerprint(run))
        metrics = read_json(view.path(st.run_dir) / "metrics.json") or {}
        spec = metrics.get("spec") or _planned_spec(view, run) or {}
        sides.append((st, spec, metrics))
    fa, fb = flatten(sides[0][1]), flatten(sides[1][1])
    skip = ("run_id", "fingerprint", "wandb.tags", "wandb.group")
    settings = [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb))
                if k not in skip and (everything or fa.get(k) != fb.get(k))]
    outcomes = [{"key": k, "a": sides[0][2].get(k), "b": sides[1][2].get(k)} for k in OUTCOME_KEYS]
    outcomes.append({"key": "stale", "a": sides[0][0].stale, "b": sides[1][0].stale})
    return {"study": view.label, "a": ra.key, "b": rb.key, "settings": settings, "outcomes": outcomes}


def diff_text(d: dict) -> str:
    def cell(v):
        return json.dumps(v) if isinstance(v, (list, dict)) else fmt(v)

    out = [f"A = {d['a']}", f"B = {d['b']}", "", "settings" + ("" if d["settings"] else ": identical")]
    if d["settings"]:
        out.append(table(["key", "A", "B"], [[s["key"], cell(s["a"]), cell(s["b"])] for s in d["settings"]]))
    out += ["", "outcomes", table(["", "A", "B"], [[o["key"], cell(o["a"]), cell(o["b"])] for o in d["outcomes"]])]
    return "\n".join(out)


# -- status -----------------------------------------------------------------------------------------
def _typical_seconds(all_states) -> dict:
    """Median measured wall time of a finished run, per model (what the ETA is made of)."""
    by_model: dict[str, list[float]] = {}
    for st in all_states:
        if st.status in ("done", "diverged") and st.wall_time_s:
            by_model.setdefault(st.model, []).append(float(st.wall_time_s))
    return {m: statistics.median(v) for m, v in by_model.items()}


def status_data(view: StudyView, jobs: int | None = None) -> dict:
    all_states = {st.key: st for st in states(view)}
    typical = _typical_seconds(all_states.values())
    limits = {m: r["resources"]["runtime_min"] * 60.0 for m, r in view.config["models"].items()}
    running_now = sum(st.status == "running" for st in all_states.values())
    parallel = jobs or max(1, running_now)
    phases, counted, total_left, unmeasured = [], set(), 0.0, set()

    def left_of(model, fraction_done=0.0):
        if model in typical:
            return typical[model] * (1.0 - fraction_done)
        unmeasured.add(model)
        return limits[model] * (1.0 - fraction_done)  # an upper bound: the run's time limit

    for phase in view.plan.phases:
        pr = view.phase_runs(phase)
        counts = dict.fromkeys(STATUSES, 0)
        running, left = [], 0.0
        model = view.plan.phase(phase)["model"]
        if pr.runs is None:
            counts["missing"] = pr.planned
            left = pr.planned * left_of(model)
        else:
            for p in pr.runs:
                st = all_states[p.run.key]
                counts[st.counted_as] += 1
                if st.status == "running":
                    running.append({"key": st.key, "progress": st.progress})
                if p.run.key in counted:
                    continue  # an earlier phase's run: its time is counted there
                counted.add(p.run.key)
                if st.counted_as in ("done", "diverged"):
                    continue
                prog = st.progress
                if st.status == "running" and prog and prog.get("eta_s") is not None:
                    left += prog["eta_s"]
                else:
                    frac = prog["step"] / prog["total"] if prog and prog.get("total") else 0.0
                    left += left_of(p.run.model, frac if st.status in ("running", "interrupted") else 0.0)
        gates = read_json(view.path(f"{view.results}/{phase}/gates.json"))
        selection = read_json(view.path(f"{view.results}/{phase}/selection.json")) if view.plan.needs_selection(phase) else None
        finished = counts["done"] + counts["diverged"]
        total_left += left
        phases.append({
            "phase": phase, "planned": pr.planned, "known": pr.runs is not None, "note": pr.note,
            "counts": counts, "finished": finished, "running": running,
            "verdict": None if gates is None else gates.get("passed"),
            "gates": None if gates is None else [{"name": g.get("name"), "verdict": g.get("verdict")}
                                                 for g in gates.get("gates", [])],
            "selection": None if selection is None else _selection_summary(selection),
            "remaining_run_s": left})
    eta = total_left / parallel
    return {"study": view.label, "phases": phases, "parallel_runs": parallel, "eta_s": eta,
            "measured_run_s": typical, "eta_upper_bound_models": sorted(unmeasured),
            "eta_basis": ("median measured wall time of finished runs per model" +
                          (f"; the time limit for {', '.join(sorted(unmeasured))} (nothing measured yet)"
                           if unmeasured else "")) + f", {parallel} run(s) at a time"}


def _selection_summary(selection: dict) -> dict:
    """arm, variant, gate_passed of a selection.json; with several named selections, each one's under
    'selections' (study/selections.py)."""
    keys = ("arm", "variant", "gate_passed")
    out = {k: selection.get(k) for k in keys}
    if isinstance(selection.get("selections"), dict):
        out["selections"] = {n: {k: r.get(k) for k in keys} for n, r in selection["selections"].items()}
    return out


def verdict_word(v) -> str:
    return {True: "PASS", False: "FAIL", None: "no verdict"}.get(v, str(v))


def phase_line(p: dict) -> str:
    """One line per phase; its total is the planned count (known before a selection), so it never shrinks."""
    c = p["counts"]
    parts = [f"{p['finished']}/{p['planned']} done"]
    parts += [f"{c[k]} {k}" for k in ("running", "stale", "interrupted", "failed") if c[k]]
    if c["diverged"]:
        parts.append(f"({c['diverged']} diverged)")
    if not p["known"]:
        parts.append(f"({p['note']})")
    elif c["missing"]:
        parts.append(f"{c['missing']} to run")
    gates = p["gates"]
    verdict = "gates: not evaluated yet" if gates is None else (
        f"gates: {verdict_word(p['verdict'])} ({sum(g['verdict'] == 'PASS' for g in gates)}/{len(gates)} pass)")
    left = "" if p["remaining_run_s"] <= 0 else f" | {duration(p['remaining_run_s'])} of runs left"
    return f"{p['phase']:<12} {bar(p['finished'], p['planned'])} {', '.join(parts)} | {verdict}{left}"


def status_text(d: dict) -> str:
    out = [f"study {d['study']}"]
    for p in d["phases"]:
        out.append(phase_line(p))
        if p["selection"] and p["selection"].get("arm"):
            out.append(f"{'':<12}   selected: {p['selection']['arm']} {p['selection']['variant']}")
        for name, s in ((p["selection"] or {}).get("selections") or {}).items():
            if s.get("arm"):
                out.append(f"{'':<12}   selected ({name}): {s['arm']} {s['variant']}")
        for r in p["running"]:
            prog = r["progress"]
            extra = "" if not prog else (f" step {prog['step']}/{prog['total']}, ETA {duration(prog['eta_s'])}")
            out.append(f"{'':<12}   running {r['key']}{extra}")
    out.append(f"ETA {duration(d['eta_s']) if d['eta_s'] > 0 else 'nothing left to run'}"
               + (f"  ({d['eta_basis']})" if d["eta_s"] > 0 else ""))
    return "\n".join(out)
