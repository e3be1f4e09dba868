"""plots: four PNGs per phase (matplotlib Agg, deterministic).

- val_loss: validation loss against step per arm: mean over ok seeds, band = min..max over ok seeds;
  diverged seeds drawn individually as dotted lines (they never enter the mean or the band).
- early: the same, zoomed on steps <= early_steps (y range fitted to that window).
- alpha: final val loss against alpha per arm (log x), mean with 95% t-CI error bars over ok seeds; the
  baseline's mean as a line and its 95% CI as a band; arms without a positive alpha as dotted lines.
  One panel per model.
- eff_rank: effective rank (eff_rank_mean) against step, mean and band like val_loss.
With many arms only the `max_lines` with the lowest mean final loss (plus the baseline) are drawn; the
title says so. Every function always writes a PNG (a short message when there is nothing to draw).
"""
from __future__ import annotations

import io
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_write_bytes, fmt_alpha, is_num  # noqa: E402
from .stats import baseline_mask, family_of, mean_ci  # noqa: E402

log = logging.getLogger("analysis.plots")

KEY = ["model", "family", "arm", "_ak"]
FIGSIZE = (12.5, 6.0)
# fixed layout (no bbox_inches="tight": that costs a second full draw); the legend sits right of the axes
LAYOUT = dict(left=0.07, right=0.66, top=0.89, bottom=0.1)
DPI = 110
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8, "svg.hashsalt": "ma",
                     "axes.grid": True, "grid.alpha": 0.3})

def _ak(a):
    return round(float(a), 12) if is_num(a) else -1.0  # -1 stands for 'no alpha'

def _prep_runs(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    r = runs.copy()
    if len(r) == 0:
        return r.assign(family=[], _ak=[], _base=[])
    r["family"] = r["role"].map(family_of) if "role" in r else "main"
    r["_ak"] = r["alpha"].map(_ak)
    r["_base"] = baseline_mask(r, baseline)
    return r

def _label(model, family, arm, ak, is_base, multi_model, n_ok, n_div) -> str:
    s = f"{model}: " if multi_model else ""
    s += "scratch " if family == "scratch" else ""
    s += arm
    if not is_base and ak > 0:
        s += f" α={fmt_alpha(ak)}"
    if is_base:
        s += " (baseline)"
    s += f" [n={n_ok}" + (f", {n_div} diverged, dotted" if n_div else "") + "]"
    return s

def _group_table(r: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, family, arm, alpha): baseline flag, n ok/diverged, mean final loss."""
    if len(r) == 0:
        return pd.DataFrame(columns=KEY + ["base", "n_ok", "n_div", "mean_final"])
    v = pd.to_numeric(r["final_val_loss"], errors="coerce").where(r["status"] == "ok")
    v = v.where(np.isfinite(v))
    g = r.assign(_v=v, _ok=r["status"] == "ok", _div=r["status"] != "ok").groupby(KEY, sort=True).agg(
        base=("_base", "max"), n_ok=("_ok", "sum"), n_div=("_div", "sum"), mean_final=("_v", "mean"))
    return g.reset_index()

def _pick(groups: pd.DataFrame, max_lines: int) -> tuple[pd.DataFrame, str]:
    base = groups[groups["base"]]
    arms = groups[~groups["base"]].sort_values(["mean_final"] + KEY, na_position="last", kind="mergesort")
    note = ""
    if len(arms) > max_lines:
        note = f"showing {max_lines} of {len(arms)} arms (lowest final loss)"
        arms = arms.iloc[:max_lines]
    return pd.concat([base, arms]).sort_values(["base"] + KEY, ascending=[False] + [True] * len(KEY),
                                               kind="mergesort"), note

def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]

def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

def _empty(path: str, title: str, msg: str) -> None:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.set_title(title)
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_axis_off()
    _save(fig, path)

def _curve_plot(curves: pd.DataFrame, runs: pd.DataFrame, path: str, *, col: str, baseline: str, title: str,
                ylabel: str, sub: str = "", xmax: float | None = None, max_lines: int = 20, clip_start: bool = False) -> None:
    r = _prep_runs(runs, baseline)
    if len(curves) == 0 or col not in curves or len(r) == 0:
        return _empty(path, title, f"no {col} recorded")
    c = curves.copy()
    c["family"] = c["role"].map(family_of) if "role" in c else "main"
    c["_ak"] = c["alpha"].map(_ak)
    c[col] = pd.to_numeric(c[col], errors="coerce").astype(float)
    c = c[np.isfinite(c[col])]
    if xmax is not None:
        c = c[c["step"] <= xmax]
    join = ["model", "family", "arm", "_ak", "seed"]
    st = r[join + ["status"]].drop_duplicates(join)
    c = c.merge(st, on=join, how="left")
    c["status"] = c["status"].fillna("ok")
    if len(c) == 0:
        return _empty(path, title, f"no {col} values" + (f" at steps <= {xmax:g}" if xmax is not None else ""))
    groups = _group_table(r)
    groups = groups.merge(c[KEY].drop_duplicates(), on=KEY, how="inner")
    chosen, note = _pick(groups, max_lines)
    multi_model = r["model"].nunique() > 1
    ok = c[c["status"] == "ok"]
    agg = ok.groupby(KEY + ["step"], sort=True)[col].agg(["mean", "min", "max"]).reset_index()
    agg_g = {k: g for k, g in agg.groupby(KEY, sort=False)}
    div = c[c["status"] != "ok"]
    div_g = {k: g for k, g in div.groupby(KEY, sort=False)}
    fig, ax = plt.subplots(figsize=FIGSIZE)
    fig.subplots_adjust(**LAYOUT)
    agg_g_chosen = {tuple(g[x] for x in KEY) for g in chosen.to_dict("records")}
    cols = _colors(int((~chosen["base"]).sum()))
    ci = 0
    ys = []
    for g in chosen.to_dict("records"):
        k = tuple(g[x] for x in KEY)
        if g["base"]:
            color, lw, z = "black", 2.2, 3
        else:
            color, lw, z = cols[ci], 1.5, 2
            ci += 1
        ls = "-" if ci <= 10 or g["base"] else "--"
        lab = _label(g["model"], g["family"], g["arm"], g["_ak"], g["base"], multi_model, int(g["n_ok"]),
                     int(g["n_div"]))
        a = agg_g.get(k)
        drew = False
        if a is not None and len(a):
            ax.plot(a["step"], a["mean"], color=color, lw=lw, ls=ls, label=lab, zorder=z)
            if (a["max"] > a["min"]).any():
                ax.fill_between(a["step"], a["min"], a["max"], color=color, alpha=0.15, lw=0, zorder=1)
            ys.extend([a["min"].min(), a["max"].max()])
            drew = True
        d = div_g.get(k)
        if d is not None:
            for _, dd in d.groupby("seed", sort=True):
                ax.plot(dd["step"], dd[col], color=color, lw=1.0, ls=":", label=None if drew else lab, zorder=z)
                drew = True
    if ys:  # fit y to the ok runs: a diverged curve must not flatten the rest
        lo, hi = float(np.nanmin(ys)), float(np.nanmax(ys))
        if clip_start and len(agg):
            # full-length loss plot: leave the first 10% of steps to the 'early' plot, so the differences
            # near the end are visible
            s0 = agg["step"].min() + 0.1 * (agg["step"].max() - agg["step"].min())
            late = agg[(agg["step"] >= s0) & agg.set_index(KEY).index.isin(list(agg_g_chosen))]
            if len(late):
                hi = min(hi, float(late["max"].max()))
        pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
        ax.set_ylim(lo - pad, hi + pad)
    if xmax is not None:
        ax.set_xlim(0, xmax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title + "\n" + "; ".join(x for x in (sub, note) if x), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _save(fig, path)

def plot_val_loss(curves, runs, path, baseline, phase="", max_lines=20):
    _curve_plot(curves, runs, path, col="val_loss", baseline=baseline, max_lines=max_lines, clip_start=True,
                title=f"{phase}: validation loss vs step".lstrip(": "),
                sub="mean over ok seeds, band = min..max; y axis from 10% of training on",
                ylabel="validation loss")

def plot_early(curves, runs, path, baseline, early_steps, phase="", max_lines=20):
    _curve_plot(curves, runs, path, col="val_loss", baseline=baseline, xmax=float(early_steps),
                max_lines=max_lines,
                title=f"{phase}: early training, steps <= {int(early_steps)}".lstrip(": "),
                sub="mean over ok seeds, band = min..max",
                ylabel="validation loss")

def plot_eff_rank(curves, runs, path, baseline, phase="", max_lines=20):
    _curve_plot(curves, runs, path, col="eff_rank_mean", baseline=baseline, max_lines=max_lines,
                title=f"{phase}: effective rank vs step".lstrip(": "),
                sub="eff_rank_mean, mean over ok seeds, band = min..max",
                ylabel="effective rank (eff_rank_mean)")

def plot_alpha(runs, path, baseline, phase="", max_lines=20, confidence=0.95):
    title = f"{phase}: final val loss vs alpha".lstrip(": ") + f"\nmean and {confidence:.0%} t-CI over ok seeds"
    r = _prep_runs(runs, baseline)
    if len(r) == 0:
        return _empty(path, title, "no runs")
    r = r[r["family"] == "main"]
    r = r.assign(_v=pd.to_numeric(r["final_val_loss"], errors="coerce").where(r["status"] == "ok"))
    r["_v"] = r["_v"].where(np.isfinite(r["_v"]))
    models = sorted(r["model"].unique())
    if not models:
        return _empty(path, title, "no runs")
    multi = len(models) > 1
    fig, axes = plt.subplots(1, len(models), figsize=(FIGSIZE[0] if not multi else 6.0 * len(models),
                                                      FIGSIZE[1]), squeeze=False)
    fig.subplots_adjust(**(LAYOUT if not multi else dict(left=0.06, right=0.98, top=0.88, bottom=0.1,
                                                         wspace=0.25)))
    notes = []
    for ax, model in zip(axes[0], models):
        rm = r[r["model"] == model]
        base = rm[rm["_base"]]
        bm, blo, bhi = mean_ci(base["_v"].to_numpy(), confidence)
        if is_num(bm):
            ax.axhline(bm, color="black", lw=1.8, label=f"{baseline} baseline [n={int(base['_v'].notna().sum())}]")
            if is_num(blo):
                ax.axhspan(blo, bhi, color="black", alpha=0.12, lw=0, label=f"baseline {confidence:.0%} CI")
        arms = rm[~rm["_base"]]
        fam = arms.groupby("arm")["_v"].mean().sort_values(kind="mergesort")
        fam_names = list(fam.index[fam.notna()]) + sorted(set(arms["arm"]) - set(fam.index[fam.notna()]))
        if len(fam_names) > max_lines:
            notes.append(f"{model}: {max_lines} of {len(fam_names)} arms (lowest mean loss)")
            fam_names = fam_names[:max_lines]
        fam_names = sorted(fam_names)
        cols = _colors(len(fam_names))
        have_x = False
        for i, arm in enumerate(fam_names):
            ga = arms[arms["arm"] == arm]
            pts = []
            for ak, gg in ga.groupby("_ak", sort=True):
                m, lo, hi = mean_ci(gg["_v"].to_numpy(), confidence)
                ndiv = int((gg["status"] != "ok").sum())
                pts.append((ak, m, lo, hi, ndiv))
            pos = [p for p in pts if p[0] > 0 and is_num(p[1])]
            nopos = [p for p in pts if p[0] <= 0 and is_num(p[1])]
            ndiv = sum(p[4] for p in pts)
            lab = arm + (f" ({ndiv} diverged)" if ndiv else "")
            if pos:
                jitter = 1.0 + 0.03 * (i - (len(fam_names) - 1) / 2)
                x = np.array([p[0] for p in pos]) * jitter
                y = np.array([p[1] for p in pos])
                err = np.array([[p[1] - p[2] if is_num(p[2]) else 0.0 for p in pos],
                                [p[3] - p[1] if is_num(p[3]) else 0.0 for p in pos]])
                ax.errorbar(x, y, yerr=err, color=cols[i], marker="o", ms=5, lw=1.3, capsize=3, label=lab)
                have_x = True
            for p in nopos:
                ax.axhline(p[1], color=cols[i], ls=":", lw=1.3, label=lab + " (no alpha)")
            if not pos and not nopos:
                ax.plot([], [], color=cols[i], marker="x", ls="none", label=lab + ": no finite loss")
        if have_x:
            ax.set_xscale("log")
        else:
            ax.set_xticks([])
        ax.set_xlabel("alpha (noise scale)")
        ax.set_ylabel("final validation loss")
        ax.set_title(model if multi else "")
        if multi:  # one panel per model: legends inside their panel
            ax.legend(loc="best", fontsize=7, framealpha=0.8)
        else:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(title + (f"; showing {'; '.join(notes)}" if notes else ""), fontsize=10)
    _save(fig, path)

def make_plots(runs: pd.DataFrame, curves: pd.DataFrame, out: dict, baseline: str, early_steps: int,
               phase: str = "", max_lines: int = 20) -> None:
    """out: {"val_loss": path, "early": path, "alpha": path, "eff_rank": path}."""
    plot_val_loss(curves, runs, out["val_loss"], baseline, phase, max_lines)
    plot_early(curves, runs, out["early"], baseline, early_steps, phase, max_lines)
    plot_alpha(runs, out["alpha"], baseline, phase, max_lines)
    plot_eff_rank(curves, runs, out["eff_rank"], baseline, phase, max_lines)
