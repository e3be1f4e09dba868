"""plots: four PNGs per phase (matplotlib Agg, deterministic: the same data gives the same bytes).

- val_loss: validation loss against step per configuration: mean over ok seeds with a marker at every
  evaluated step, band = min..max over ok seeds; diverged seeds drawn individually as dotted lines (never
  in the mean or the band). Left panel: the whole curve (y from the lowest to the highest mean); right
  panel: the last 40% of training, where the arms differ.
- early: the same, zoomed on steps <= early_steps, drawn only when at least 3 steps were evaluated there
  (else a PNG that says so and lists the evaluated steps).
- forest: each configuration's difference from the baseline of its model in % of the baseline's mean final
  loss: the mean (paired over seeds when the seeds pair, else Welch) with its 95% CI from the significance
  table, the per-seed differences as points, 0 and the gate thresholds (beats_baseline's -min_improvement,
  within_baseline's +margin) as vertical lines; colour = the significance verdict. It replaces "final loss
  vs alpha", whose unpaired bars contradicted the paired table.
- eff_rank: the effective rank of the momentum (mean over matrices, eff_rank_mean) against step.
With many configurations only the `max_lines` with the lowest mean final loss (plus the baseline) are
drawn; the title says so. Legends sit below the axes in columns. Every function always writes a PNG.
"""
from __future__ import annotations

import io
import logging
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_write_bytes, is_num  # noqa: E402
from .stats import baseline_mask, significance_table, with_family  # noqa: E402

log = logging.getLogger("analysis.plots")

KEY = ["model", "family", "arm", "variant"]
DPI = 110
plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "legend.fontsize": 8, "svg.hashsalt": "ma",
                     "axes.grid": True, "grid.alpha": 0.3})
VERDICT_COLORS = {"better": "#1a9850", "worse": "#d73027", "no significant difference": "#4575b4",
                  "insufficient": "#999999"}


def _prep(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    if len(runs) == 0:
        return runs.assign(family=[], variant=[], _base=[])
    r = with_family(runs)
    r["_base"] = baseline_mask(r, baseline)
    return r


def _label(g: dict, multi_model: bool) -> str:
    s = (f"{g['model']}: " if multi_model else "") + ("scratch " if g["family"] == "scratch" else "") + g["arm"]
    if not g["base"] and g["variant"] not in ("default", "", None):
        s += f" {g['variant']}"
    if g["base"]:
        s += " (baseline)"
    return s + f" [n={int(g['n_ok'])}" + (f", {int(g['n_div'])} not ok: dotted" if g["n_div"] else "") + "]"


def _groups(r: pd.DataFrame) -> pd.DataFrame:
    if len(r) == 0:
        return pd.DataFrame(columns=KEY + ["base", "n_ok", "n_div", "mean_final"])
    v = pd.to_numeric(r["final_val_loss"], errors="coerce").where(r["status"] == "ok")
    v = v.where(np.isfinite(v))
    return r.assign(_v=v, _ok=r["status"] == "ok", _div=r["status"] != "ok").groupby(KEY, sort=True).agg(
        base=("_base", "max"), n_ok=("_ok", "sum"), n_div=("_div", "sum"), mean_final=("_v", "mean")).reset_index()


def _pick(groups: pd.DataFrame, max_lines: int) -> tuple[pd.DataFrame, str]:
    base = groups[groups["base"]]
    arms = groups[~groups["base"]].sort_values(["mean_final"] + KEY, na_position="last", kind="mergesort")
    note = ""
    if len(arms) > max_lines:
        note = f"showing {max_lines} of {len(arms)} configurations (lowest final loss)"
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
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.set_title(title)
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=11, wrap=True)
    ax.set_axis_off()
    _save(fig, path)


def _legend_below(fig, handles, labels, n_axes_rows: int = 1) -> None:
    ncol = 3 if len(labels) > 4 else max(len(labels), 1)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))


def _fig_with_legend(n_entries: int, ncols_axes: int, width: float = 12.0, height: float = 4.6):
    rows = math.ceil(n_entries / 3) if n_entries > 4 else 1
    leg_h = 0.22 * rows + 0.25
    fig, axes = plt.subplots(1, ncols_axes, figsize=(width, height + leg_h), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.75 / (height + leg_h), bottom=(leg_h + 0.55) / (height + leg_h),
                        wspace=0.22)
    return fig, axes[0]


def _curve_plot(curves: pd.DataFrame, runs: pd.DataFrame, path: str, *, col: str, baseline: str, title: str,
                ylabel: str, sub: str = "", xmax: float | None = None, max_lines: int = 12,
                zoom_tail: float | None = None) -> None:
    r = _prep(runs, baseline)
    if len(curves) == 0 or col not in curves or len(r) == 0:
        return _empty(path, title, f"no {col} recorded")
    c = with_family(curves)
    c[col] = pd.to_numeric(c[col], errors="coerce").astype(float)
    c = c[np.isfinite(c[col])]
    if xmax is not None:
        c = c[c["step"] <= xmax]
    join = ["model", "family", "arm", "variant", "seed"]
    c = c.merge(r[join + ["status"]].drop_duplicates(join), on=join, how="left")
    c["status"] = c["status"].fillna("ok")
    if len(c) == 0:
        return _empty(path, title, f"no {col} values" + (f" at steps <= {xmax:g}" if xmax is not None else ""))
    chosen, note = _pick(_groups(r).merge(c[KEY].drop_duplicates(), on=KEY, how="inner"), max_lines)
    multi = r["model"].nunique() > 1
    ok = c[c["status"] == "ok"]
    agg = ok.groupby(KEY + ["step"], sort=True)[col].agg(["mean", "min", "max"]).reset_index()
    agg_g = {k: g for k, g in agg.groupby(KEY, sort=False)}
    div_g = {k: g for k, g in c[c["status"] != "ok"].groupby(KEY, sort=False)}
    n_panels = 2 if zoom_tail else 1
    fig, axes = _fig_with_legend(len(chosen), n_panels)
    cols = _colors(int((~chosen["base"]).sum()))
    handles, labels = [], []
    smax = float(agg["step"].max()) if len(agg) else 0.0
    for pi, ax in enumerate(axes):
        ci = 0
        lo, hi = math.inf, -math.inf
        for g in chosen.to_dict("records"):
            k = tuple(g[x] for x in KEY)
            # the baseline thick and underneath, so arms that coincide with it stay visible on top
            color, lw, z = ("black", 2.6, 1.8) if g["base"] else (cols[ci], 1.4, 2)
            if not g["base"]:
                ci += 1
            ls = "-" if (ci <= 10 or g["base"]) else "--"
            a = agg_g.get(k)
            h = None
            if a is not None and len(a):
                if pi == 1:
                    a = a[a["step"] >= (1 - zoom_tail) * smax]
                h, = ax.plot(a["step"], a["mean"], color=color, lw=lw, ls=ls, marker="o", ms=3.2, zorder=z)
                if (a["max"] > a["min"]).any():
                    ax.fill_between(a["step"], a["min"], a["max"], color=color, alpha=0.15, lw=0, zorder=1)
                if len(a):
                    lo, hi = min(lo, float(a["min"].min())), max(hi, float(a["max"].max()))
            d = div_g.get(k)
            if d is not None and pi == 0:
                for _, dd in d.groupby("seed", sort=True):
                    hh, = ax.plot(dd["step"], dd[col], color=color, lw=1.0, ls=":", marker=".", zorder=z)
                    h = h or hh
            if pi == 0 and h is not None:
                handles.append(h)
                labels.append(_label(g, multi))
        if math.isfinite(lo):  # the ok runs' whole range (a diverged curve must not flatten the rest)
            pad = 0.04 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
            ax.set_ylim(lo - pad, hi + pad)
        if xmax is not None:
            ax.set_xlim(0, xmax)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel if pi == 0 else "")
        ax.set_title("whole run" if pi == 0 and zoom_tail else
                     (f"last {zoom_tail:.0%} of training (zoom)" if zoom_tail else ""), fontsize=10)
    fig.suptitle(title + ("\n" + "; ".join(x for x in (sub, note) if x) if (sub or note) else ""), fontsize=10.5)
    _legend_below(fig, handles, labels)
    _save(fig, path)


def plot_val_loss(curves, runs, path, baseline, phase="", max_lines=12):
    _curve_plot(curves, runs, path, col="val_loss", baseline=baseline, max_lines=max_lines, zoom_tail=0.4,
                title=f"{phase}: validation loss vs step".lstrip(": "),
                sub="mean over ok seeds (markers: evaluated steps), band = min..max over seeds",
                ylabel="validation loss (cross-entropy)")


def plot_early(curves, runs, path, baseline, early_steps, phase="", max_lines=12):
    title = f"{phase}: early training, steps <= {int(early_steps)}".lstrip(": ")
    st = sorted({int(s) for s in pd.to_numeric(curves.get("step", pd.Series(dtype=float)), errors="coerce").dropna()
                 if s <= early_steps}) if len(curves) and "val_loss" in curves else []
    if len(curves) and "val_loss" in curves:
        ev = curves[pd.to_numeric(curves["val_loss"], errors="coerce").notna()]
        st = sorted({int(s) for s in ev["step"] if s <= early_steps})
    if len(st) < 3:
        return _empty(path, title, f"only {len(st)} evaluated step(s) at or below step {int(early_steps)} "
                                   f"({', '.join(map(str, st)) or 'none'}): no early-training zoom")
    _curve_plot(curves, runs, path, col="val_loss", baseline=baseline, xmax=float(early_steps),
                max_lines=max_lines, title=title,
                sub="mean over ok seeds (markers: evaluated steps), band = min..max over seeds",
                ylabel="validation loss (cross-entropy)")


def plot_eff_rank(curves, runs, path, baseline, phase="", max_lines=12):
    _curve_plot(curves, runs, path, col="eff_rank_mean", baseline=baseline, max_lines=max_lines,
                title=f"{phase}: effective rank of the momentum vs step".lstrip(": "),
                sub="effective rank of each Muon matrix's momentum, mean over matrices; mean over ok seeds",
                ylabel="effective rank (mean over matrices)")


def _thresholds(gates: dict | None) -> list[tuple[float, str]]:
    out = []
    for name, g in (gates or {}).items():
        if not isinstance(g, dict):
            continue
        if g.get("kind") == "beats_baseline" and float(g.get("min_improvement") or 0) > 0:
            out.append((-100 * float(g["min_improvement"]), f"{name}: -{float(g['min_improvement']):.1%}"))
        if g.get("kind") == "within_baseline":
            out.append((100 * float(g.get("margin", 0.05)), f"{name}: +{float(g.get('margin', 0.05)):.1%}"))
    return out


def plot_forest(runs: pd.DataFrame, path: str, baseline: str, phase: str = "", gates: dict | None = None,
                max_lines: int = 30) -> None:
    title = f"{phase}: difference from the baseline ({baseline}) in final validation loss".lstrip(": ")
    r = _prep(runs, baseline)
    sig = significance_table(runs, baseline) if len(r) else pd.DataFrame()
    if len(sig) == 0:
        return _empty(path, title, "no arm-vs-baseline comparison")
    sig = sig.sort_values(["model", "family", "arm", "variant"], kind="mergesort").reset_index(drop=True)
    note = ""
    if len(sig) > max_lines:
        note = f"; showing {max_lines} of {len(sig)} (largest improvement first)"
        sig = sig.sort_values("diff_pct", kind="mergesort").iloc[:max_lines].sort_values(
            ["model", "family", "arm", "variant"], kind="mergesort").reset_index(drop=True)
    multi = sig["model"].nunique() > 1
    h = 1.2 + 0.34 * len(sig)
    longest = max(len(f"{m}: {a} {v}  (n=10/10, 1 div)") if multi else len(f"{a} {v}  (n=10/10, 1 div)")
                  for m, a, v in zip(sig["model"], sig["arm"], sig["variant"]))
    fig, ax = plt.subplots(figsize=(10.5, h + 1.1))
    fig.subplots_adjust(left=min(0.45, 0.03 + 0.0072 * longest), right=0.97, top=1 - 0.75 / (h + 1.1),
                        bottom=0.75 / (h + 1.1))
    y = np.arange(len(sig))[::-1]
    rr = r.assign(_v=pd.to_numeric(r["final_val_loss"], errors="coerce"))
    rr = rr[(rr["status"] == "ok") & np.isfinite(rr["_v"])]
    xs = []
    for yi, s in zip(y, sig.to_dict("records")):
        col = VERDICT_COLORS.get(s["verdict"], "#999999")
        mb = s["mean_base"]
        b = rr[rr["_base"] & (rr["model"] == s["model"]) & (rr["family"] == s["family"])]
        a = rr[~rr["_base"] & (rr["model"] == s["model"]) & (rr["family"] == s["family"]) & (rr["arm"] == s["arm"])
               & (rr["variant"] == s["variant"])]
        if is_num(mb) and len(a):
            bmap = dict(zip(b["seed"], b["_v"]))
            if s["test"] == "paired t":
                pts = [100 * (v - bmap[sd]) / mb for sd, v in zip(a["seed"], a["_v"])]
            else:
                pts = [100 * (v - mb) / mb for v in a["_v"]]
            ax.scatter(pts, [yi] * len(pts), s=14, color=col, alpha=0.55, zorder=3, lw=0)
            xs += pts
        if is_num(s["diff_pct"]):
            ax.plot([s["diff_pct"]], [yi], "D", color=col, ms=6, zorder=4)
            xs.append(s["diff_pct"])
        if is_num(s["ci_low"]) and is_num(mb):
            lo, hi = 100 * s["ci_low"] / mb, 100 * s["ci_high"] / mb
            ax.plot([lo, hi], [yi, yi], color=col, lw=2.0, zorder=2)
            xs += [lo, hi]
    ax.axvline(0, color="black", lw=1.0)
    for x, lbl in _thresholds(gates):
        ax.axvline(x, color="#b2182b", lw=1.1, ls="--")
        ax.text(x, len(sig) - 0.45, " " + lbl, color="#b2182b", fontsize=7.5, va="bottom", ha="left", rotation=0)
    labels = [(f"{s['model']}: " if multi else "") + ("scratch " if s["family"] == "scratch" else "") + s["arm"]
              + ("" if s["variant"] in ("default", "") else f" {s['variant']}")
              + f"  (n={int(s['n_arm'])}/{int(s['n_base'])}" + (f", {int(s['n_diverged_arm'])} div" if
                                                                 s["n_diverged_arm"] else "") + ")"
              for s in sig.to_dict("records")]
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.7, len(sig) - 0.1)
    if xs:
        lo, hi = min(xs + [0.0] + [x for x, _ in _thresholds(gates)]), max(xs + [0.0] + [x for x, _ in _thresholds(gates)])
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("arm - baseline, % of the baseline's mean final val loss (< 0: arm better)")
    handles = [plt.Line2D([], [], marker="D", color=c, ls="-", lw=2, label=v) for v, c in VERDICT_COLORS.items()]
    handles += [plt.Line2D([], [], marker="o", color="grey", ls="none", alpha=0.6, label="a seed (paired: arm - its "
                           "baseline seed)")]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.4, -0.55 / h * 1.0 - 0.06), ncol=3,
              frameon=False, fontsize=7.5)
    fig.subplots_adjust(bottom=min(0.45, (1.25) / (h + 1.1)))
    ax.set_title(title + f"\nmean and 95% CI (paired t where seeds pair, else Welch); colour: Holm verdict{note}",
                 fontsize=10)
    _save(fig, path)


def make_plots(runs: pd.DataFrame, curves: pd.DataFrame, out: dict, baseline: str, early_steps: int,
               phase: str = "", max_lines: int = 12, gates: dict | None = None) -> None:
    """out: {"val_loss", "early", "forest" (or the old key "alpha"), "eff_rank"}: paths."""
    plot_val_loss(curves, runs, out["val_loss"], baseline, phase, max_lines)
    plot_early(curves, runs, out["early"], baseline, early_steps, phase, max_lines)
    forest = out.get("forest") or out.get("alpha")
    if forest:
        plot_forest(runs, forest, baseline, phase, gates)
    plot_eff_rank(curves, runs, out["eff_rank"], baseline, phase, max_lines)
