"""section (one phase's Markdown) and report (all sections + header + summary, also ABLATION_RESULTS.md).

Image links in a section are relative to the results root (`results/`), e.g. `phase1/plots/val_loss.png`.
The report writes the same text to `results/reports/{phase}.md` and to `results/ABLATION_RESULTS.md`,
except that image links are rebased to stay valid from each file's own directory.
Each section starts with a machine-readable `<!-- phase-summary {...} -->` line the report's summary
table reads.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .gates import gates_markdown, passed_word
from .io import atomic_write_text, fmt, fmt_p, is_num, md_escape, md_table, md_text
from .stats import with_family

SUMMARY_RE = re.compile(r"<!-- phase-summary (\{.*?\}) -->")
IMG_RE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")

HOW_TO_READ = """\
How to read the verdicts:
- **Significance** compares each configuration with the baseline of the same model (lower loss is better;
  `diff %` < 0 means the arm is better): a paired t-test over seeds when both sides ran the same seeds,
  else Welch's t-test, two-sided; `p (Holm)` is Holm-corrected over all comparisons of the phase.
  **better** / **worse**: Holm p < 0.05 in that direction (and, for better, no diverged seed). The MDE is
  the true difference this test would detect with 80% power at the Holm level, from a noise estimate, not
  from the comparison's own two or three seeds.
- **Gates** test exactly their claim, one-sided, Holm over all of the phase's gate hypotheses: a threshold
  gate ("beats by more than 1%") tests against the threshold, a "not worse" gate is a non-inferiority test
  with its margin. **PASS**: shown. **FAIL**: the data say no (the opposite is significant, a run of the
  judged arm diverged, or the design had the power to show the claim and did not). **INSUFFICIENT**: too
  few seeds, or too little power at the threshold to tell: not a "no".
- A **diverged** run is a failure: excluded from means, counted, and its arm can never pass a claim.
- A phase PASSED when every gate passes, FAILED when any fails, and is INCONCLUSIVE otherwise.
"""


def _rel(path: str, root: str) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root))).as_posix()


def _dur(s: Any) -> str:
    if not is_num(s):
        return ""
    s = int(round(float(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"


def _role_order(role: str) -> int:
    return {"baseline": 0, "arm": 1, "scratch_baseline": 2, "scratch_arm": 3}.get(role, 4)


def _cfg(x: Mapping) -> str:
    v = x.get("variant")
    return f"{x.get('arm')}" + ("" if v in (None, "", "default") or (isinstance(v, float) and math.isnan(v))
                                else f" {v}")


def runs_markdown(runs: pd.DataFrame, usd_per_gpu_hour: float) -> tuple[str, dict]:
    """The runs table and its totals. GPU-h is counted by share (GPUs held x wall x the fraction of the GPU
    the run had: analysis/costs.py); where a run shared its GPU the cell gives the unshared figure beside."""
    from .costs import by_share

    if len(runs) == 0:
        return "_No runs._\n", {"n": 0, "gpu_hours": 0.0, "gpu_hours_unshared": 0.0, "cost": 0.0, "wall_s": 0.0,
                                "n_diverged": 0, "n_shared": 0}
    runs = with_family(runs)
    bs, held, share = by_share(runs)
    runs = runs.assign(_bs=bs, _held=held, _share=share)
    r = runs.assign(_ro=runs["role"].map(_role_order)).sort_values(
        ["_ro", "model", "arm", "variant", "seed"], kind="mergesort", na_position="first")
    rows = []
    for x in r.to_dict("records"):
        st = str(x["status"])
        if st == "diverged" and is_num(x.get("diverged_step")):
            st += f" @ {int(x['diverged_step'])}"
        gh = float(x["_bs"]) if is_num(x.get("_bs")) else math.nan
        cell = fmt(gh, 3)
        if is_num(x.get("_share")) and x["_share"] < 1 - 1e-9 and is_num(x.get("_held")):
            cell += f" ({fmt(x['_held'], 3)} unshared, share {fmt(100 * x['_share'], 0)}%)"
        rows.append([x["model"], x["role"], x["arm"], x["variant"], int(x["seed"]), st,
                     fmt(x.get("final_val_loss"), 4), _dur(x.get("wall_time_s")), cell,
                     fmt(gh * usd_per_gpu_hour, 2) if is_num(gh) else "", x.get("wandb_id") or ""])
    wall = pd.to_numeric(runs["wall_time_s"], errors="coerce")
    n_shared = int((share < 1 - 1e-9).sum())
    tot = {"n": len(runs), "gpu_hours": float(bs.sum()), "gpu_hours_unshared": float(held.sum()),
           "cost": float(bs.sum() * usd_per_gpu_hour), "wall_s": float(wall.sum()),
           "n_diverged": int((runs["status"] == "diverged").sum()), "n_shared": n_shared}
    total_cell = fmt(tot["gpu_hours"], 3) + (f" ({fmt(tot['gpu_hours_unshared'], 3)} unshared)" if n_shared else "")
    rows.append([f"**total: {len(runs)} runs**", "", "", "", "", f"{tot['n_diverged']} diverged", "",
                 _dur(tot["wall_s"]), total_cell, fmt(tot["cost"], 2), ""])
    md = md_table(["model", "role", "arm", "variant", "seed", "status", "final val loss", "wall time",
                   "GPU-h (by share)", f"cost (USD @ {usd_per_gpu_hour:g}/GPU-h)", "wandb id"], rows)
    return md, tot


def significance_markdown(sig: pd.DataFrame) -> str:
    if len(sig) == 0:
        return "_No arm-vs-baseline comparisons in this phase._\n"
    fam = "family" in sig and (sig["family"] != "main").any()
    rows = []
    for x in sig.to_dict("records"):
        mb = x.get("mean_base")
        ci = (f"[{fmt(100 * x['ci_low'] / mb, 2, pct=True)}, {fmt(100 * x['ci_high'] / mb, 2, pct=True)}]"
              if is_num(x.get("ci_low")) and is_num(mb) else "")
        mde = f"{fmt(x['mde_pct'], 2)}%" if is_num(x.get("mde_pct")) else ""
        es = f"{fmt(x['effect_size'], 2)} ({x['effect_size_kind']})" if is_num(x.get("effect_size")) else ""
        row = [x["model"]] + ([x["family"]] if fam else []) + [
            _cfg(x), x["test"] if x["test"] != "none" else "",
            f"{int(x['n_arm'])}/{int(x['n_base'])}" + (f" ({int(x['n_diverged_arm'])} div)"
                                                      if x.get("n_diverged_arm") else ""),
            fmt(x["mean_arm"], 4), fmt(x["mean_base"], 4), fmt(x["diff_pct"], 2, pct=True), ci,
            fmt_p(x["p"]) if is_num(x.get("p")) else "", fmt_p(x["p_holm"]) if is_num(x.get("p_holm")) else "",
            es, mde, f"**{x['verdict']}**" + (f" ({x['note']})" if x.get("note") else "")]
        rows.append(row)
    head = ["model"] + (["family"] if fam else []) + [
        "configuration", "test", "n arm/base", "mean arm", "mean base", "diff %", "95% CI of diff (%)", "p",
        "p (Holm)", "effect size", "MDE (80%, Holm)", "verdict"]
    return md_table(head, rows)


TRIGGER_KEYS = ("rank_threshold", "threshold", "trigger", "rank_every")


def trigger_rates(runs: pd.DataFrame, arms: Mapping[str, Any] | None = None, tol: float = 0.005) -> tuple[str, list]:
    """(Markdown table of each configuration's trigger rate, lines flagging configurations whose noise
    schedule was identical in practice). The trigger rate is noise_fraction_mean: the fraction of
    matrix-steps that received noise, mean over ok seeds. Configurations of one model and variant whose
    rates are all >= 1 - tol (or all <= tol) and whose settings differ only in trigger settings
    (rank_threshold, ...) ran the same schedule: the trigger never changed what happened."""
    if len(runs) == 0 or "noise_fraction_mean" not in runs:
        return "", []
    r = with_family(runs)
    r = r[(r["status"] == "ok")].assign(_t=pd.to_numeric(r["noise_fraction_mean"], errors="coerce"))
    g = r.groupby(["model", "role", "arm", "variant"], sort=True)["_t"].agg(["mean", "min", "max", "count"])
    g = g[g["count"] > 0].reset_index()
    if len(g) == 0 or g["mean"].isna().all():
        return "", []
    rows = [[x["model"], x["role"], _cfg(x), fmt(100 * x["mean"], 1) + "%" if is_num(x["mean"]) else "",
             f"{fmt(100 * x['min'], 1)}% to {fmt(100 * x['max'], 1)}%" if is_num(x["min"]) else "",
             int(x["count"])] for x in g.to_dict("records")]
    md = md_table(["model", "role", "configuration", "trigger rate (matrix-steps noised)", "seed range", "seeds"],
                  rows)
    flags = []
    noisy = g[g["mean"].notna()]
    for (model, variant), gg in noisy.groupby(["model", "variant"], sort=True):
        for lo_hi, name in (((1 - tol, 1.0 + 1e-9), "fired on every matrix-step"), ((-1e-9, tol), "never fired")):
            hit = gg[(gg["mean"] >= lo_hi[0]) & (gg["mean"] <= lo_hi[1])]
            if name == "never fired":
                hit = hit[hit["role"] != "baseline"]
            arms_hit = sorted(set(hit["arm"]))
            if len(arms_hit) < 2:
                if len(arms_hit) == 1 and name.startswith("fired") and _has_trigger(arms, arms_hit[0]):
                    flags.append(f"{model} {arms_hit[0]} {variant}: the trigger {name}: its threshold had no effect")
                continue
            same = _differ_only_in_trigger(arms, arms_hit)
            if same is not False:
                flags.append(f"{model} {variant}: {', '.join(arms_hit)} {name}"
                             + (" and differ only in trigger settings" if same else "")
                             + ": their noise schedule was identical in practice (one arm under several names)")
    return md, flags


def _noise_classes() -> set[str]:
    """The optimizer classes with the 'noise' trait, read from optim/registry.py without importing optim
    (which imports torch)."""
    from study.spec import load_file_module

    return set(load_file_module(Path(__file__).resolve().parents[1], "optim/registry.py").with_trait("noise"))


def has_noise_arms(runs: pd.DataFrame, arms: Mapping[str, Any] | None) -> bool:
    """Whether the phase ran a noise arm: an arm whose class takes noise settings, or (for an arm whose
    settings the report was not given) one whose runs noised some matrix-step. The trigger-rate table is
    only shown then: for Muon-only studies it is a column of zeros."""
    if len(runs) == 0:
        return False
    noisy = _noise_classes()
    used = sorted(set(runs["arm"].astype(str)))
    for a in used:
        st = (arms or {}).get(a)
        if isinstance(st, Mapping) and "class" in st:
            if str(st["class"]) in noisy:
                return True
            continue
        if "noise_fraction_mean" in runs:
            t = pd.to_numeric(runs.loc[runs["arm"].astype(str) == a, "noise_fraction_mean"], errors="coerce")
            if (t > 0).any():
                return True
    return False


def _omitted(path: str) -> str | None:
    try:
        from .plots import omitted_reason

        return omitted_reason(path)
    except (OSError, ValueError):  # not written yet or not a PNG: link it as before
        return None


def _has_trigger(arms: Mapping | None, arm: str) -> bool:
    st = (arms or {}).get(arm) or {}
    return any(k in TRIGGER_KEYS for k in (st.get("muon") or {}))


def _differ_only_in_trigger(arms: Mapping | None, names: list[str]):
    """True / False when the settings are known, None when they are not given."""
    if not arms or any(n not in arms for n in names):
        return None

    def strip(st):
        st = json.loads(json.dumps(st, default=str))
        for k in list((st.get("muon") or {})):
            if k in TRIGGER_KEYS:
                del st["muon"][k]
        return json.dumps(st, sort_keys=True)
    return len({strip(arms[n]) for n in names}) == 1


def caveats(runs: pd.DataFrame, sig: pd.DataFrame, power: float, alpha_level: float,
            selection: Mapping | None, gates: Mapping | None = None) -> list[str]:
    out: list[str] = []
    if len(sig):
        k = int(sig["p"].notna().sum())
        for (na, nb), g in sig.groupby(["n_arm", "n_base"], sort=True):
            na, nb = int(na), int(nb)
            if na < 2 or nb < 2:
                out.append(f"{len(g)} comparison(s) have fewer than 2 usable seeds on a side (arm {na}, "
                           f"baseline {nb}): no test is possible, verdict 'insufficient'.")
                continue
            m = pd.to_numeric(g["mde_pct"], errors="coerce").dropna()
            seeds = f"n={na} seeds per side" if na == nb else f"n={na} arm / {nb} baseline seeds"
            if len(m):
                src = str(g["sd_source"].iloc[0]) if "sd_source" in g else ""
                sd = g["sd_rel"].iloc[0] if "sd_rel" in g else math.nan
                out.append(f"With {seeds} and {k} Holm-corrected comparisons, the significance test detects "
                           f"with {power:.0%} power only true differences larger than {m.median():.2f}% of the "
                           f"baseline loss (two-sided, level {alpha_level:g}/{k}, seed sd "
                           f"{fmt(100 * sd, 2)}% from {src}); smaller true effects will usually read "
                           f"'no significant difference'.")
        tests = sig["test"].value_counts().to_dict()
        if tests.get("paired t"):
            out.append(f"{tests['paired t']} comparison(s) used a paired t-test: both sides ran the same seeds, so "
                       "the test is on the per-seed differences, which removes what the two runs of a seed share "
                       "(initialisation, data order) and leaves n - 1 degrees of freedom.")
        if tests.get("welch"):
            out.append(f"{tests['welch']} comparison(s) used Welch's t-test: the seed sets differ (e.g. after a "
                       "divergence), so the runs are compared as two independent samples.")
        if k > 1:
            out.append(f"p-values are Holm-corrected over the {k} comparisons of this phase: a raw p < "
                       f"{alpha_level:g} is not by itself significant.")
    if len(runs):
        div = runs[runs["status"] == "diverged"]
        if len(div):
            items = ", ".join(f"{x['model']}/{_cfg(x)} seed {int(x['seed'])}"
                              + (f" (step {int(x['diverged_step'])})" if is_num(x.get("diverged_step")) else "")
                              for x in with_family(div).to_dict("records"))
            out.append(f"{len(div)} run(s) diverged: {items}. Diverged runs are excluded from means and tests, "
                       f"counted as failures, and their arm cannot pass a claim.")
        other = runs[~runs["status"].isin(["ok", "diverged"])]
        if len(other):
            out.append(f"{len(other)} run(s) have an unexpected status: "
                       + ", ".join(sorted(set(other["status"].astype(str)))) + ".")
        seeds = with_family(runs).groupby(["model", "arm", "variant"], dropna=False)["seed"].nunique()
        if len(seeds):
            span = str(int(seeds.min())) if seeds.min() == seeds.max() else f"{int(seeds.min())} to {int(seeds.max())}"
            out.append(f"Seeds per configuration (runs, diverged included): {span} "
                       f"({len(seeds)} model/arm/variant groups, {len(runs)} runs); one model size per "
                       f"comparison, so nothing here speaks for other scales or step budgets.")
        from .costs import by_share

        bs, gh, share = by_share(runs)
        if (gh.fillna(0) == 0).all():
            out.append("GPU-hours and cost are 0: these runs used no CUDA device (GPU-hours are world size x "
                       "wall hours only on CUDA).")
        else:
            shared = share < 1 - 1e-9
            if shared.any():
                out.append(f"{int(shared.sum())} run(s) shared their GPU with other processes (share "
                           f"{fmt(100 * share[shared].min(), 0)}% to {fmt(100 * share[shared].max(), 0)}%): "
                           f"GPU-hours are counted by share (wall x GPUs x share), {fmt(float(bs.sum()), 3)} "
                           f"instead of {fmt(float(gh.sum()), 3)} as held.")
            unmeasured = (gh > 0) & share.isna()
            if unmeasured.any():
                out.append(f"{int(unmeasured.sum())} GPU run(s) have no measured share (an older record, or NVML "
                           "unreadable): each counts its whole GPUs.")
    for name, one in _selection_records(selection):
        out += _selection_caveats(runs, one, name)
    if gates and gates.get("k_family"):
        out.append(f"The gates' {gates['k_family']} statistical hypotheses form one Holm family (one-sided).")
    return out


def _selection_records(selection: Mapping | None) -> list[tuple]:
    """[(name or None, record)] of a selection.json (several named selections: one per name)."""
    if not selection:
        return []
    if isinstance(selection.get("selections"), Mapping):
        return [(str(k), v) for k, v in selection["selections"].items()]
    return [(None, selection)]


def _selection_caveats(runs: pd.DataFrame, selection: Mapping, name: str | None) -> list[str]:
    out: list[str] = []
    if selection:
        if selection.get("forced") and selection.get("gate_passed") is not True:
            out.append("This phase was FORCED by the configuration although the earlier phase's gate did not "
                       "pass: treat its results as exploratory.")
        wc = selection.get("winners_curse") or {}
        if wc.get("note"):
            out.append(f"Winner's curse: the selected arm was {wc['note']}.")
        for flag in selection.get("baseline_flags") or []:
            out.append(f"**Warning carried on:** the phase this one selected from flagged its baseline ({flag}); "
                       "a comparison with that baseline here may be against a broken or untuned one.")
        used = set(selection.get("selection_seeds") or [])
        if used and len(runs):
            again = sorted(used & {int(x) for x in runs["seed"]})
            if again:
                out.append(f"Seeds {', '.join(map(str, again))} were also used to select the arm: on those seeds "
                           "this phase is not an independent confirmation.")
    if not name:
        return out
    return [x.replace("**Warning carried on:**", f"**Warning carried on (selection {name}):**")
            if x.startswith("**") else f"Selection {name}: {x}" for x in out]


def selection_markdown(sel: Mapping) -> str:
    wc = sel.get("winners_curse") or {}
    lines = [f"- selected: **{md_escape(sel.get('arm'))}** {md_escape(sel.get('variant') or '')}"
             + (f" ({md_escape(sel.get('param'))} = {sel.get('value'):g})" if is_num(sel.get("value")) and
                sel.get("param") else "") + f", from {md_escape(sel.get('model'))}",
             f"- rule: {sel.get('rule', '')}; gate passed: {sel.get('gate_passed')}; forced: {sel.get('forced')}",
             f"- reason: {md_escape(sel.get('reason', ''))}"]
    if wc.get("note"):
        lines.append(f"- winner's curse: {md_escape(wc['note'])}")
    return "\n".join(lines) + "\n"


def design_lines(design: Mapping | None, phase: str) -> list[str]:
    if not design:
        return []
    rows = [r for r in design.get("rows", []) if r.get("phase") == phase]
    out = []
    for r in rows:
        pw_ = r.get("power")
        gp = r.get("gate_power")
        out.append(f"{md_escape(r['gate'])} ({r['kind']}): {r['hypotheses']} of {r['k_family']} hypotheses, "
                   f"{r['seeds']} seeds, power per hypothesis {fmt(100 * pw_, 1) + '%' if is_num(pw_) else 'n/a'}"
                   + (f" (P(gate passes) {fmt(100 * gp, 1)}%, simulated)" if is_num(gp) else "") + " at the "
                   f"threshold {fmt(100 * r['threshold'], 1)}% (sd {fmt(100 * r['sd'], 2)}%, {r['sd_source']})"
                   + (f"; **underpowered**: {r['seeds_for_target']} seeds would give 80%"
                      if r.get("underpowered") and r.get("seeds_for_target") else
                      ("; **underpowered**" if r.get("underpowered") else "")))
    return out


def section_markdown(*, phase: str, question: str, runs: pd.DataFrame, significance: pd.DataFrame, gates: dict,
                     plots: Sequence[str], results_root: str, arms: Mapping[str, Any], usd_per_gpu_hour: float,
                     baseline: str, selection: Mapping | None = None, power: float = 0.8,
                     alpha_level: float = 0.05, design: Mapping | None = None, tiny: bool = False) -> str:
    runs_md, tot = runs_markdown(runs, float(usd_per_gpu_hour))
    ng = len(gates.get("gates", []))
    npass = sum(g["verdict"] == "PASS" for g in gates.get("gates", []))
    summary = {"phase": phase, "question": question, "passed": gates.get("passed"), "n_pass": npass,
               "n_gates": ng, "n_runs": tot["n"], "n_diverged": tot["n_diverged"],
               "gpu_hours": round(tot["gpu_hours"], 6), "gpu_hours_unshared": round(tot["gpu_hours_unshared"], 6),
               "cost": round(tot["cost"], 4), "tiny": bool(tiny)}
    if selection and not isinstance(selection.get("selections"), Mapping):
        summary["selected"] = {"arm": selection.get("arm"), "variant": selection.get("variant")}
    elif selection:
        summary["selected"] = {n: {"arm": r.get("arm"), "variant": r.get("variant")}
                               for n, r in selection["selections"].items()}
    # the summary is JSON inside an HTML comment: no '--' or '>' may close it early
    js = (json.dumps(summary, sort_keys=True).replace("--", "\\u002d\\u002d").replace(">", "\\u003e")
          .replace("<", "\\u003c"))
    parts = [f"<!-- phase-summary {js} -->", f"## {md_text(phase)}", ""]
    if tiny:
        parts += ["_CPU twin (tiny): a smoke test of the workflow, not the study's result._", ""]
    parts += [f"**Question.** {md_text(question)}", "",
              f"**Outcome: {passed_word(gates.get('passed'))}** ({npass}/{ng} gates PASS; {tot['n']} runs, "
              f"{tot['n_diverged']} diverged, {tot['gpu_hours']:.3f} GPU-hours by share"
              + (f" ({tot['gpu_hours_unshared']:.3f} unshared: {tot['n_shared']} run(s) shared a GPU)"
                 if tot["n_shared"] else "") + f", USD {tot['cost']:.2f}).", ""]
    sane = [g for g in gates.get("gates", []) if g.get("kind") == "baseline_sane"]
    for g in sane:
        parts += [f"**Baseline sanity ({md_escape(g['name'])}): {g['verdict']}.** {md_escape(g['detail'])}", ""]
    if not sane:
        parts += ["_No baseline sanity check is configured for this phase (gate kind `baseline_sane`)._", ""]
    dl = design_lines(design, phase)
    if dl:
        parts += ["### Design check (before the runs)", ""] + [f"- {x}" for x in dl] + [""]
    for name, one in _selection_records(selection):
        # one section per selection: chosen value, re-pick rate, flat sweep, winner's curse (its winners_curse)
        parts += [f"### Selection {md_escape(name)}" + (f" (from {md_escape(one.get('from'))})" if one.get("from") else "")
                  if name else "### Arm selected from an earlier phase", "", selection_markdown(one)]
    parts += ["### Gates", "", gates_markdown(gates, short=True),
              f"### Significance against the baseline ({md_escape(baseline)})", "", significance_markdown(significance)]
    trig, flags = trigger_rates(runs, arms) if has_noise_arms(runs, arms) else ("", [])
    if trig:
        parts += ["### Noise trigger rate per configuration", "", trig]
        parts += [f"- **{md_escape(f)}**" for f in flags] + ([""] if flags else [])
    parts += ["### Caveats", ""]
    cav = caveats(runs, significance, power, alpha_level, selection, gates)
    if flags:
        cav.append("Some configurations ran an identical noise schedule in practice (see the trigger rates): "
                   "their comparisons are not separate evidence.")
    parts += [("\n".join(f"- {c}" for c in cav) + "\n") if cav else "- none recorded\n"]
    parts += ["### Plots", ""]
    captions = {"val_loss": "Validation loss vs step", "early": "Early training (zoomed)",
                "forest": "Difference from the baseline per configuration (forest plot)",
                "eff_rank": "Effective rank of the momentum vs step",
                "pareto": "Final validation loss against the bytes each rank sends per step (Pareto front)"}
    for p in plots:
        stem = Path(p).stem
        why = _omitted(p)
        if why:  # a placeholder PNG (nothing to draw, as on the tiny twin): left out, and why
            parts += [f"_{captions.get(stem, stem)}: left out, {md_escape(why.rstrip('.'))}._", ""]
        else:
            parts += [f"![{captions.get(stem, stem)}]({_rel(p, results_root)})", ""]
    parts += ["### Runs", "", runs_md, "### Optimizer settings (as used)", ""]
    used = sorted(set(runs["arm"].astype(str))) if len(runs) else []
    for arm in used:
        if arm in arms:
            parts += [f"`{md_escape(arm)}`:", "", "```json",
                      json.dumps(arms[arm], indent=2, default=str).replace("```", "` ` `"), "```", ""]
        else:
            parts += [f"`{md_escape(arm)}`: settings not given to the report", ""]
    return "\n".join(parts).rstrip() + "\n"


def parse_summary(section_text: str) -> dict | None:
    m = SUMMARY_RE.search(section_text)
    return json.loads(m.group(1)) if m else None


def rebase_images(text: str, results_root: str, out_dir: str) -> str:
    """Image links are relative to results_root; make them relative to out_dir."""
    if os.path.abspath(results_root) == os.path.abspath(out_dir):
        return text

    def sub(m: re.Match) -> str:
        link = m.group(2)
        if re.match(r"^[a-z]+://", link) or link.startswith("/"):
            return m.group(0)
        new = os.path.relpath(os.path.join(os.path.abspath(results_root), link), os.path.abspath(out_dir))
        return m.group(1) + Path(new).as_posix() + m.group(3)
    return IMG_RE.sub(sub, text)


def report_markdown(sections: Sequence[str], title: str, phases: Sequence[str],
                    generated: str | None = None, tiny: bool = False, description: str = "",
                    design_md: str = "", cost_md: str = "") -> str:
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sums = [parse_summary(s) or {} for s in sections]
    tiny = tiny or any(s.get("tiny") for s in sums)
    rows = []
    for i, s in enumerate(sums):
        ph = s.get("phase") or (phases[i] if i < len(phases) else f"section {i + 1}")
        rows.append([ph, s.get("question", ""), f"**{passed_word(s.get('passed'))}**",
                     f"{s.get('n_pass', '')}/{s.get('n_gates', '')}", s.get("n_runs", ""), s.get("n_diverged", ""),
                     fmt(s.get("gpu_hours"), 3), fmt(s.get("cost"), 2)])
    parts = [f"# {md_text(title)}", ""]
    if tiny:
        parts += ["> **CPU twin.** This report comes from the tiny CPU twin of the study (small models, few "
                  "steps): it tests the workflow, and its numbers say nothing about the optimizers.", ""]
    parts += [f"_Generated {generated} by the workflow from the files under `results/`; "
              "regenerate instead of editing._", ""]
    if description:
        parts += [md_text(description), ""]
    parts += [HOW_TO_READ, "## Summary", "",
              md_table(["phase", "question", "gates", "gates PASS", "runs", "diverged", "GPU-h (by share)",
                        "cost (USD)"], rows)]
    missing = [p for p in phases if p not in {s.get("phase") for s in sums}]
    if missing:
        parts += [f"_Phases not in this report (not run yet): {', '.join(missing)}._", ""]
    if design_md:
        parts += [design_md.rstrip(), ""]
    if cost_md:  # what the runs measured, beside the design's plan (analysis/costs.py)
        parts += [cost_md.rstrip(), ""]
    body = "\n".join(parts) + "\n" + "\n".join(s.rstrip() + "\n" for s in sections)
    return body


def write_report(sections_paths: Sequence[str], out_path: str, latest_path: str | None, title: str,
                 phases: Sequence[str], results_root: str | None = None, tiny: bool = False,
                 description: str = "", design_md: str = "", cost_md: str = "") -> str:
    texts = [Path(p).read_text(encoding="utf-8") for p in sections_paths]
    text = report_markdown(texts, title, phases, tiny=tiny, description=description, design_md=design_md,
                           cost_md=cost_md)
    root = results_root or (os.path.dirname(latest_path) if latest_path else os.path.dirname(
        os.path.dirname(out_path)))
    atomic_write_text(out_path, rebase_images(text, root, os.path.dirname(out_path) or "."))
    if latest_path:
        atomic_write_text(latest_path, rebase_images(text, root, os.path.dirname(latest_path) or "."))
    return text
