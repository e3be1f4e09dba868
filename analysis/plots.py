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
drawn; the title says so. Legends sit below the axes in columns; configurations are ordered by model, arm
and sweep value as a number (lr1e-3 < lr0.023 < lr0.1 < lr2), and the baseline's label carries its variant
("muon (lr0.02), baseline"). Each configuration keeps one colour and line style in every curve plot of the
phase (`styles`: assigned over all of the phase's configurations, not over the ones a plot draws); baselines
are black/grey in distinct line styles, never two alike.
Every function always writes a PNG (Snakemake declares them); where there is nothing to draw it writes a
placeholder that carries the reason in a PNG text chunk (`omitted_reason`), and the report leaves it out and
prints the reason instead.
"""
from __future__ import annotations

import io
import logging
import math
import re

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
    if g["variant"] not in ("default", "", None):
        s += f" ({g['variant']})" if g["base"] else f" {g['variant']}"
    if g["base"]:
        s += ", baseline"
    return s + f" [n={int(g['n_ok'])}" + (f", {int(g['n_div'])} not ok: dotted" if g["n_div"] else "") + "]"


NUM_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def num_key(v) -> tuple:
    """A sort key that orders sweep values as numbers: "lr0.023" < "lr0.1" < "lr1e0"; "default" first, text
    pieces alphabetically."""
    s = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    if s in ("", "default"):
        return ((0, "", 0.0),)
    out, pos = [], 0
    for m in NUM_RE.finditer(s):
        if m.start() > pos:
            out.append((1, s[pos:m.start()], 0.0))
        try:
            out.append((2, "", float(m.group())))
        except ValueError:
            out.append((1, m.group(), 0.0))
        pos = m.end()
    if pos < len(s):
        out.append((1, s[pos:], 0.0))
    return tuple(out)


def order(df: pd.DataFrame, base_first: bool = False) -> pd.DataFrame:
    """Rows sorted by model, family, arm and then the variant as a number (the baseline first if asked)."""
    if len(df) == 0:
        return df
    keys = [((not bool(r["base"])) if base_first else 0, str(r["model"]), str(r["family"]), str(r["arm"]),
             num_key(r["variant"]), str(r["variant"])) for r in df.to_dict("records")]
    idx = sorted(range(len(df)), key=lambda i: keys[i])
    return df.iloc[idx].reset_index(drop=True)


def _groups(r: pd.DataFrame) -> pd.DataFrame:
    if len(r) == 0:
        return pd.DataFrame(columns=KEY + ["base", "n_ok", "n_div", "mean_final"])
    v = pd.to_numeric(r["final_val_loss"], errors="coerce").where(r["status"] == "ok")
    v = v.where(np.isfinite(v))
    g = r.assign(_v=v, _ok=r["status"] == "ok", _div=r["status"] != "ok").groupby(KEY, sort=True).agg(
        base=("_base", "max"), n_ok=("_ok", "sum"), n_div=("_div", "sum"), mean_final=("_v", "mean")).reset_index()
    return order(g)


def _pick(groups: pd.DataFrame, max_lines: int) -> tuple[pd.DataFrame, str]:
    base = groups[groups["base"]]
    arms = groups[~groups["base"]].sort_values(["mean_final"], na_position="last", kind="mergesort")
    note = ""
    if len(arms) > max_lines:
        note = f"showing {max_lines} of {len(arms)} configurations (lowest final loss)"
        arms = arms.iloc[:max_lines]
    return order(pd.concat([base, arms]), base_first=True), note


def _colors(n: int):
    """n palette colours in order (the Pareto plot's per-arm colours)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


BASE_STYLES = [("black", "-"), ("#7f7f7f", "--"), ("black", "-."), ("#7f7f7f", "-"), ("black", "--"),
               ("#7f7f7f", "-.")]
ARM_LS = ["-", "--", "-."]  # ":" is kept for diverged seeds


def styles(runs: pd.DataFrame, baseline: str) -> dict:
    """(model, family, arm, variant) -> (colour, line style, is_baseline) for every configuration of the
    phase's runs, so that a configuration looks the same in every plot of the phase whatever subset a plot
    draws. Baselines (one per model and family) are black/grey with distinct styles, never alike; arms take
    tab10 (tab20 beyond 10) colours in order, the line style changing each time the palette wraps."""
    g = _groups(_prep(runs, baseline))
    out = {}
    bases, arms = g[g["base"]], g[~g["base"]]
    for i, x in enumerate(bases.to_dict("records")):
        c, ls = BASE_STYLES[i % len(BASE_STYLES)]
        out[tuple(x[k] for k in KEY)] = (c, ls if i < len(BASE_STYLES) else ARM_LS[(i // len(BASE_STYLES)) % 3],
                                         True)
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    for i, x in enumerate(arms.to_dict("records")):
        out[tuple(x[k] for k in KEY)] = (cmap(i % cmap.N), ARM_LS[(i // cmap.N) % len(ARM_LS)], False)
    return out


def baseline_name(runs: pd.DataFrame, baseline: str) -> str:
    """The baseline with its variant(s): "muon (lr0.02)"; the bare name when the variant is the default."""
    if len(runs) == 0:
        return baseline
    r = _prep(runs, baseline)
    b = r[r["_base"]]
    vs = sorted({str(v) for v in b["variant"] if str(v) not in ("default", "")}, key=num_key)
    arms = sorted(set(b["arm"].astype(str))) or [baseline]
    return ", ".join(arms) + (f" ({', '.join(vs)})" if vs else "")


OMITTED_KEY = "muon-ablations-omitted"  # PNG text chunk: why this PNG is a placeholder, not a plot


def _save(fig, path: str, omitted: str | None = None) -> None:
    buf = io.BytesIO()
    meta = {"Software": None}
    if omitted:
        meta[OMITTED_KEY] = omitted
    fig.savefig(buf, format="png", dpi=DPI, metadata=meta)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _empty(path: str, title: str, msg: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.set_title(title)
    ax.text(0.5, 0.5, msg, ha="center", va="center", transform=ax.transAxes, fontsize=11, wrap=True)
    ax.set_axis_off()
    _save(fig, path, omitted=msg)


def omitted_reason(path: str) -> str | None:
    """Why the PNG at `path` is a placeholder (nothing to draw), or None for a real plot. The report leaves
    placeholders out and says why (a Snakemake rule must still write every declared PNG)."""
    from PIL import Image

    with Image.open(path) as im:
        return (getattr(im, "text", None) or im.info or {}).get(OMITTED_KEY)


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
    sty = styles(runs, baseline)
    handles, labels = [], []
    smax = float(agg["step"].max()) if len(agg) else 0.0
    for pi, ax in enumerate(axes):
        lo, hi = math.inf, -math.inf
        for g in chosen.to_dict("records"):
            k = tuple(g[x] for x in KEY)
            color, ls, _ = sty.get(k, ("#999999", "-", False))
            # the baseline thick and underneath, so arms that coincide with it stay visible on top
            lw, z = (2.6, 1.8) if g["base"] else (1.4, 2)
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
        return _empty(path, title, f"only {len(st)} evaluated step{'' if len(st) == 1 else 's'} at or below step "
                                   f"{int(early_steps)} (steps: {', '.join(map(str, st)) or 'none'}); the early-"
                                   "training zoom needs at least 3")
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
    title = (f"{phase}: difference in final validation loss from the baseline, {baseline_name(runs, baseline)}"
             .lstrip(": "))
    r = _prep(runs, baseline)
    sig = significance_table(runs, baseline) if len(r) else pd.DataFrame()
    if len(sig) == 0:
        return _empty(path, title, "no arm-vs-baseline comparison")
    sig = order(sig)
    note = ""
    if len(sig) > max_lines:
        note = f"; showing {max_lines} of {len(sig)} (largest improvement first)"
        sig = order(sig.sort_values("diff_pct", kind="mergesort").iloc[:max_lines])
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
