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
from .io import atomic_write_text, fmt, fmt_alpha, is_num, md_table

SUMMARY_RE = re.compile(r"<!-- phase-summary (\{.*?\}) -->")
IMG_RE = re.compile(r"(!\[[^\]]*\]\()([^)\s]+)(\))")

STUDY_BLURB = (
    "An ablation study of **OrthoNoise**: a small orthogonal perturbation (QR of Gaussian noise, scaled by "
    "alpha x the gradient norm) added to Muon's momentum before orthogonalisation, against plain **Muon**, "
    "with an isotropic-noise control. Three phases: **phase1** sanity (does it train, is the effective rank "
    "logged), **phase2** signal hunt (alpha sweep with and without annealing, schedules, rank thresholds), "
    "**phase3** validation of the best phase-2 arm at the larger model plus a from-scratch pair.")

HOW_TO_READ = """\
How to read the verdicts:
- **Significance** compares each arm with the baseline of the same model (lower loss is better; `diff %` < 0
  means the arm is better). The test is a paired t-test over seeds when both sides ran the same seeds (same
  init and data order), else Welch's t-test; `p_holm` is Holm-corrected over all comparisons of the phase.
  **better** / **worse**: `p_holm` < 0.05 in that direction (and, for better, no diverged seed).
  **no significant difference**: not shown to differ; differences smaller than the MDE (minimum detectable
  effect at 80% power) would usually be missed. **insufficient**: fewer than 2 usable seeds on a side: no test.
- A **diverged** run is a failure: excluded from means, counted, and its arm can never be "better".
- **Gates** are the study plan's success criteria: PASS / FAIL / INSUFFICIENT (not enough data to decide).
  A phase PASSED when every gate passes, FAILED when any fails, and is INCONCLUSIVE otherwise.
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


def runs_markdown(runs: pd.DataFrame, usd_per_gpu_hour: float) -> tuple[str, dict]:
    if len(runs) == 0:
        return "_No runs._\n", {"n": 0, "gpu_hours": 0.0, "cost": 0.0, "wall_s": 0.0, "n_diverged": 0}
    r = runs.assign(_ro=runs["role"].map(_role_order)).sort_values(
        ["_ro", "model", "arm", "alpha", "seed"], kind="mergesort", na_position="first")
    rows = []
    for x in r.to_dict("records"):
        st = str(x["status"])
        if st == "diverged" and is_num(x.get("diverged_step")):
            st += f" @ {int(x['diverged_step'])}"
        gh = float(x["gpu_hours"]) if is_num(x.get("gpu_hours")) else math.nan
        rows.append([x["model"], x["role"], x["arm"], fmt_alpha(x.get("alpha")), int(x["seed"]), st,
                     fmt(x.get("final_val_loss"), 4), _dur(x.get("wall_time_s")), fmt(gh, 3),
                     fmt(gh * usd_per_gpu_hour, 2) if is_num(gh) else "", x.get("wandb_id") or ""])
    gh = pd.to_numeric(runs["gpu_hours"], errors="coerce")
    wall = pd.to_numeric(runs["wall_time_s"], errors="coerce")
    tot = {"n": len(runs), "gpu_hours": float(gh.sum()), "cost": float(gh.sum() * usd_per_gpu_hour),
           "wall_s": float(wall.sum()), "n_diverged": int((runs["status"] == "diverged").sum())}
    rows.append([f"**total: {len(runs)} runs**", "", "", "", "", f"{tot['n_diverged']} diverged", "",
                 _dur(tot["wall_s"]), fmt(tot["gpu_hours"], 3), fmt(tot["cost"], 2), ""])
    md = md_table(["model", "role", "arm", "alpha", "seed", "status", "final val loss", "wall time",
                   "GPU-h", f"cost (USD @ {usd_per_gpu_hour:g}/GPU-h)", "wandb id"], rows)
    return md, tot


def significance_markdown(sig: pd.DataFrame) -> str:
    if len(sig) == 0:
        return "_No arm-vs-baseline comparisons in this phase._\n"
    fam = "family" in sig and (sig["family"] != "main").any()
    rows = []
    for x in sig.to_dict("records"):
        ci = f"[{fmt(x['ci_low'], 4)}, {fmt(x['ci_high'], 4)}]" if is_num(x.get("ci_low")) else ""
        mde = f"{fmt(x['mde'], 4)} ({fmt(x['mde_pct'], 2)}%)" if is_num(x.get("mde")) else ""
        es = f"{fmt(x['effect_size'], 2)} ({x['effect_size_kind']})" if is_num(x.get("effect_size")) else ""
        row = [x["model"]] + ([x["family"]] if fam else []) + [
            x["arm"], fmt_alpha(x.get("alpha")), x["test"] if x["test"] != "none" else "",
            f"{int(x['n_arm'])}/{int(x['n_base'])}" + (f" ({int(x['n_diverged_arm'])} div)"
                                                      if x.get("n_diverged_arm") else ""),
            fmt(x["mean_arm"], 4), fmt(x["mean_base"], 4), fmt(x["diff_pct"], 2, pct=True), ci,
            fmt(x["p"], 3, sig=True), fmt(x["p_holm"], 3, sig=True), es, mde,
            f"**{x['verdict']}**" + (f" ({x['note']})" if x.get("note") else "")]
        rows.append(row)
    head = ["model"] + (["family"] if fam else []) + [
        "arm", "alpha", "test", "n arm/base", "mean arm", "mean base", "diff %", "95% CI of diff", "p",
        "p (Holm)", "effect size", "MDE (80% power)", "verdict"]
    return md_table(head, rows)


def caveats(runs: pd.DataFrame, sig: pd.DataFrame, power: float, alpha_level: float,
            selection: Mapping | None) -> list[str]:
    out: list[str] = []
    if len(sig):
        groups = sig.groupby(["n_arm", "n_base"], sort=True)
        for (na, nb), g in groups:
            na, nb = int(na), int(nb)
            if na < 2 or nb < 2:
                out.append(f"{len(g)} comparison(s) have fewer than 2 usable seeds on a side (arm {na}, "
                           f"baseline {nb}): no test is possible, verdict 'insufficient'.")
                continue
            m = pd.to_numeric(g["mde_pct"], errors="coerce").abs().dropna()
            m = m[m > 0]  # zero spread between seeds: no meaningful MDE
            seeds = f"n={na} seeds per side" if na == nb else f"n={na} arm / {nb} baseline seeds"
            if len(m):
                rng = f" (median of {len(m)} comparisons; range {m.min():.2f}% to {m.max():.2f}%)" \
                    if len(m) > 1 else ""
                out.append(f"With {seeds} this test can only detect differences larger than "
                           f"{m.median():.2f}% of the baseline loss{rng} at {power:.0%} power and "
                           f"alpha={alpha_level:g}; smaller true effects will usually read 'no significant "
                           f"difference'.")
        tests = sig["test"].value_counts().to_dict()
        if tests.get("paired t"):
            out.append(f"{tests['paired t']} comparison(s) used a paired t-test (both sides ran the same seeds, "
                       f"so seed-to-seed noise cancels).")
        if tests.get("welch"):
            out.append(f"{tests['welch']} comparison(s) used Welch's t-test (the seed sets differ, e.g. after a "
                       f"divergence), which is less sensitive than the paired test.")
        k = int(sig["p"].notna().sum())
        if k > 1:
            out.append(f"p-values are Holm-corrected over the {k} comparisons of this phase: a raw p < "
                       f"{alpha_level:g} is not by itself significant.")
    if len(runs):
        div = runs[runs["status"] == "diverged"]
        if len(div):
            items = ", ".join(f"{x['model']}/{x['arm']} alpha={fmt_alpha(x['alpha'])} seed {int(x['seed'])}"
                              + (f" (step {int(x['diverged_step'])})" if is_num(x.get("diverged_step")) else "")
                              for x in div.to_dict("records"))
            out.append(f"{len(div)} run(s) diverged: {items}. Diverged runs are excluded from means and tests, "
                       f"counted as failures, and their arm cannot be called better.")
        other = runs[~runs["status"].isin(["ok", "diverged"])]
        if len(other):
            out.append(f"{len(other)} run(s) have an unexpected status: "
                       + ", ".join(sorted(set(other["status"].astype(str)))) + ".")
        seeds = runs.groupby(["model", "arm", "alpha"], dropna=False)["seed"].nunique()
        if len(seeds):
            span = str(int(seeds.min())) if seeds.min() == seeds.max() else f"{int(seeds.min())} to {int(seeds.max())}"
            out.append(f"Seeds per arm (runs, diverged included): {span} "
                       f"({len(seeds)} model/arm/alpha groups, {len(runs)} runs); one model size per "
                       f"comparison, so nothing here speaks for other scales or step budgets.")
        gh = pd.to_numeric(runs["gpu_hours"], errors="coerce")
        if (gh.fillna(0) == 0).all():
            out.append("GPU-hours and cost are 0: these runs used no CUDA device (GPU-hours are world size x "
                       "wall hours only on CUDA).")
    if selection:
        if selection.get("forced") and selection.get("gate_passed") is not True:
            out.append("Phase 3 was FORCED by the configuration although the phase-2 gate did not pass: treat "
                       "its results as exploratory.")
    return out


def selection_markdown(sel: Mapping) -> str:
    a = sel.get("alpha")
    lines = [f"- selected arm: **{sel.get('arm')}**" + (f", alpha = {a:g}" if is_num(a) else ""),
             f"- rule: {sel.get('rule', '')}; phase-2 gate passed: {sel.get('gate_passed')}; "
             f"forced: {sel.get('forced')}",
             f"- reason: {sel.get('reason', '')}"]
    return "\n".join(lines) + "\n"


def section_markdown(*, phase: str, question: str, runs: pd.DataFrame, significance: pd.DataFrame, gates: dict,
                     plots: Sequence[str], results_root: str, arms: Mapping[str, Any], usd_per_gpu_hour: float,
                     baseline: str, selection: Mapping | None = None, power: float = 0.8,
                     alpha_level: float = 0.05) -> str:
    runs_md, tot = runs_markdown(runs, float(usd_per_gpu_hour))
    ng = len(gates.get("gates", []))
    npass = sum(g["verdict"] == "PASS" for g in gates.get("gates", []))
    summary = {"phase": phase, "question": question, "passed": gates.get("passed"), "n_pass": npass,
               "n_gates": ng, "n_runs": tot["n"], "n_diverged": tot["n_diverged"],
               "gpu_hours": round(tot["gpu_hours"], 6), "cost": round(tot["cost"], 4)}
    if selection:
        summary["selected"] = {"arm": selection.get("arm"), "alpha": selection.get("alpha")}
    parts = [f"<!-- phase-summary {json.dumps(summary, sort_keys=True)} -->",
             f"## {phase}", "", f"**Question.** {question}", "",
             f"**Outcome: {passed_word(gates.get('passed'))}** ({npass}/{ng} gates PASS; {tot['n']} runs, "
             f"{tot['n_diverged']} diverged, {tot['gpu_hours']:.3f} GPU-hours, USD {tot['cost']:.2f}).", ""]
    if selection:
        parts += ["### Arm selected from phase 2", "", selection_markdown(selection)]
    parts += ["### Gates", "", gates_markdown(gates),
              f"### Significance against the baseline ({baseline})", "", significance_markdown(significance),
              "### Caveats", ""]
    cav = caveats(runs, significance, power, alpha_level, selection)
    parts += [("\n".join(f"- {c}" for c in cav) + "\n") if cav else "- none recorded\n"]
    parts += ["### Plots", ""]
    captions = {"val_loss": "Validation loss vs step", "early": "Early training (zoomed)",
                "alpha": "Final loss vs alpha", "final_vs_alpha": "Final loss vs alpha",
                "eff_rank": "Effective rank vs step"}
    for p in plots:
        stem = Path(p).stem
        cap = captions.get(stem, stem)
        parts += [f"![{cap}]({_rel(p, results_root)})", ""]
    parts += ["### Runs", "", runs_md, "### Optimizer settings (as used)", ""]
    used = sorted(set(runs["arm"].astype(str))) if len(runs) else []
    for arm in used:
        if arm in arms:
            parts += [f"`{arm}`:", "", "```json", json.dumps(arms[arm], indent=2, default=str), "```", ""]
        else:
            parts += [f"`{arm}`: settings not given to the report", ""]
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
                    generated: str | None = None) -> str:
    generated = generated or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sums = [parse_summary(s) or {} for s in sections]
    rows = []
    for i, s in enumerate(sums):
        ph = s.get("phase") or (phases[i] if i < len(phases) else f"section {i + 1}")
        rows.append([ph, s.get("question", ""), f"**{passed_word(s.get('passed'))}**",
                     f"{s.get('n_pass', '')}/{s.get('n_gates', '')}", s.get("n_runs", ""), s.get("n_diverged", ""),
                     fmt(s.get("gpu_hours"), 3), fmt(s.get("cost"), 2)])
    parts = [f"# {title}", "", f"_Generated {generated} by the workflow from the files under `results/`; "
             "regenerate instead of editing._", "", STUDY_BLURB, "", HOW_TO_READ, "## Summary", "",
             md_table(["phase", "question", "gates", "gates PASS", "runs", "diverged", "GPU-h", "cost (USD)"],
                      rows)]
    missing = [p for p in phases if p not in {s.get("phase") for s in sums}]
    if missing:
        parts += [f"_Phases not in this report (not run yet): {', '.join(missing)}._", ""]
    body = "\n".join(parts) + "\n" + "\n".join(s.rstrip() + "\n" for s in sections)
    return body


def write_report(sections_paths: Sequence[str], out_path: str, latest_path: str | None, title: str,
                 phases: Sequence[str], results_root: str | None = None) -> str:
    texts = [Path(p).read_text(encoding="utf-8") for p in sections_paths]
    text = report_markdown(texts, title, phases)
    root = results_root or (os.path.dirname(latest_path) if latest_path else os.path.dirname(
        os.path.dirname(out_path)))
    atomic_write_text(out_path, rebase_images(text, root, os.path.dirname(out_path) or "."))
    if latest_path:
        atomic_write_text(latest_path, rebase_images(text, root, os.path.dirname(latest_path) or "."))
    return text
