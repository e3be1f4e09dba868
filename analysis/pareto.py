"""pareto: final validation loss against communication for the DisTrO study's top-k phase (one PNG, one
Markdown table).

One point per configuration (model, arm, variant) of runs.csv:
- y: final validation loss, mean over the configuration's ok seeds; the bar spans min..max over those seeds.
- x: bytes sent per step per rank (runs.csv `bytes_sent_per_step`, the trainer's mean over steps; mean over
  the configuration's runs), log scale, in kB / MB / GB (decimal) as the data's size asks.
- references: the baseline arm and every configuration that sends all its gradients
  (bytes_sent_per_step == allreduce_bytes_per_step) are drawn as diamonds; compressed configurations as
  circles labelled with their top-k (variant `topk0.05` -> "top-k 5%"; other variants by their name).
- failures: a run whose status is not "ok" (diverged) is a failure. A configuration with a failure is
  drawn hollow (mean over its ok seeds, if any; with no ok seed an x at the top of the axes) and is never on
  the Pareto front.
- Pareto front (per model): the configurations without failures that no other such configuration beats,
  i.e. none has at most their bytes and at most their mean loss with one of the two strictly lower. Drawn as
  a step line: the best mean loss attainable within a byte budget.
- the baseline's mean final loss as a dashed horizontal line.
Configurations without recorded bytes (one-process runs) cannot be placed: the table lists them, the plot
says how many. The Markdown table: (model,) arm, variant, n (ok seeds / runs), failures, mean final loss,
bytes/step/rank, ratio to the all-reduce bytes, on the front.
"""
from __future__ import annotations

import logging
import math
import re

import numpy as np
import pandas as pd

from .io import atomic_write_text, fmt, md_table
from .plots import _colors, _empty, _save, plt  # one style (Agg backend, rcParams) for every PNG

log = logging.getLogger("analysis.pareto")

KEY = ["model", "arm", "variant"]
REL_TOL = 1e-3  # bytes_sent == allreduce bytes within 0.1%: an uncompressed reference


def topk_label(variant: str) -> str:
    """'topk0.05' -> 'top-k 5%', 'topk0.0078125' -> 'top-k 0.78%'; any other variant unchanged."""
    m = re.fullmatch(r"topk([0-9.eE+-]+)", str(variant))
    if not m:
        return str(variant)
    try:
        f = float(m.group(1))
    except ValueError:
        return str(variant)
    return f"top-k {format(100 * f, '.3g')}%"


def _num(s: pd.Series) -> pd.Series:
    v = pd.to_numeric(s, errors="coerce").astype(float)
    return v.where(np.isfinite(v))


def summarize(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """One row per (model, arm, variant): n_runs, n_ok, n_failed, statuses of the failures, mean/min/max
    final loss over ok seeds, bytes (mean bytes_sent_per_step), allreduce (mean allreduce_bytes_per_step),
    ratio, reference, failed, on_front. Sorted by model, bytes, arm, variant."""
    cols = KEY + ["n_runs", "n_ok", "n_failed", "failures", "mean_loss", "min_loss", "max_loss", "bytes",
                  "allreduce", "ratio", "reference", "failed", "on_front"]
    if len(runs) == 0:
        return pd.DataFrame(columns=cols)
    r = runs.copy()
    for c in ("bytes_sent_per_step", "allreduce_bytes_per_step"):
        if c not in r:
            r[c] = math.nan
    r["variant"] = r["variant"].fillna("default").astype(str) if "variant" in r else "default"
    ok = r["status"].astype(str) == "ok"
    r["_loss"] = _num(r["final_val_loss"]).where(ok)
    r["_ok"] = ok
    r["_bytes"] = _num(r["bytes_sent_per_step"])
    r["_ar"] = _num(r["allreduce_bytes_per_step"])
    rows = []
    for key, g in r.groupby(KEY, sort=True):
        bad = g.loc[~g["_ok"], "status"].astype(str)
        counts = bad.value_counts().sort_index()
        b, ar = g["_bytes"].mean(), g["_ar"].mean()
        rows.append(dict(zip(KEY, key), n_runs=len(g), n_ok=int(g["_ok"].sum()), n_failed=len(bad),
                         failures=", ".join(f"{n} {s}" for s, n in counts.items()),
                         mean_loss=g["_loss"].mean(), min_loss=g["_loss"].min(), max_loss=g["_loss"].max(),
                         bytes=b, allreduce=ar, ratio=b / ar if ar and ar > 0 else math.nan,
                         reference=bool(key[1] == baseline or (math.isfinite(b) and math.isfinite(ar)
                                                              and abs(b - ar) <= REL_TOL * ar))))
    s = pd.DataFrame(rows)
    s["failed"] = s["n_failed"] > 0
    s["on_front"] = pareto_front(s)
    return s.sort_values(["model", "bytes", "arm", "variant"], na_position="last",
                         kind="mergesort").reset_index(drop=True)[cols]


def pareto_front(s: pd.DataFrame) -> pd.Series:
    """True for the rows on the front of their model: finite bytes and mean_loss, no failure, and no other
    such row with bytes <= and mean_loss <= and one of them strictly lower. Equal points are both on it."""
    on = pd.Series(False, index=s.index)
    cand = s[np.isfinite(s["bytes"].astype(float)) & np.isfinite(s["mean_loss"].astype(float)) & ~s["failed"]]
    for _, g in cand.groupby("model"):
        b, y = g["bytes"].to_numpy(float), g["mean_loss"].to_numpy(float)
        for i, idx in enumerate(g.index):
            dominated = ((b <= b[i]) & (y <= y[i]) & ((b < b[i]) | (y < y[i]))).any()
            on[idx] = not dominated
    return on


def _unit(max_bytes: float) -> tuple[float, str]:
    for scale, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_bytes >= scale:
            return scale, name
    return 1.0, "B"


def _spread(ys: list[float], min_gap: float) -> list[float]:
    """Label positions (display units) at least min_gap apart, as close to ys as possible, order kept."""
    order = np.argsort(ys, kind="mergesort")
    out = np.array(ys, dtype=float)
    for j in range(1, len(order)):
        a, b = order[j - 1], order[j]
        if out[b] - out[a] < min_gap:
            out[b] = out[a] + min_gap
    shift = (np.mean(out) - np.mean(ys)) if len(ys) else 0.0  # centre the block on the points
    return list(out - shift)


def plot_pareto(s: pd.DataFrame, path: str, baseline: str, phase: str = "", title: str | None = None) -> None:
    """The PNG of summarize()'s table (see the module docstring)."""
    ttl = title or (f"{phase}: " if phase else "") + "final validation loss vs bytes sent per step per rank"
    placed = s[np.isfinite(s["bytes"].astype(float))]
    if len(placed) == 0:
        _empty(path, ttl, "no run recorded bytes_sent_per_step (one-process runs?): nothing to place")
        return
    scale, unit = _unit(float(placed["bytes"].max()))
    arms = sorted(s["arm"].unique(), key=lambda a: (a != baseline, a))
    color = dict(zip(arms, _colors(len(arms))))
    multi_model = s["model"].nunique() > 1
    models = sorted(s["model"].unique())
    fig, ax = plt.subplots(figsize=(10.5, 5.6))
    fig.subplots_adjust(left=0.08, right=0.70, top=0.86, bottom=0.11)
    ax.set_xscale("log")
    finite = placed[np.isfinite(placed["mean_loss"].astype(float))]
    lo = float(np.nanmin(finite["min_loss"])) if len(finite) else 0.0
    hi = float(np.nanmax(finite["max_loss"])) if len(finite) else 1.0
    pad = max(0.06 * (hi - lo), 0.005 * max(abs(hi), 1.0))
    all_failed = placed[~np.isfinite(placed["mean_loss"].astype(float))]
    top = hi + (4.0 * pad if len(all_failed) else pad)
    ax.set_ylim(lo - pad, top)
    if len(all_failed):  # a band above the data for the configurations without any ok seed
        ax.axhspan(hi + 2.0 * pad, top, color="0.92", zorder=0, lw=0)
        ax.text(0.995, (hi + 3.75 * pad - (lo - pad)) / (top - (lo - pad)), "no ok seed: no loss",
                transform=ax.transAxes, ha="right", va="top", fontsize=7.5, color="0.35")
    xs = placed["bytes"].to_numpy(float) / scale
    xlo, xhi = xs.min(), xs.max()
    span = max(math.log10(xhi / xlo), 0.15)
    ax.set_xlim(xlo / 10 ** (0.22 * span), xhi * 10 ** (0.06 * span))  # room left of the points for the labels
    handles, labels = [], []

    # Pareto front per model: the best mean loss attainable within a byte budget
    for mi, m in enumerate(models):
        f = s[(s["model"] == m) & s["on_front"]].sort_values("bytes")
        if len(f) == 0:
            continue
        fx = list(f["bytes"].to_numpy(float) / scale) + [ax.get_xlim()[1]]
        fy = list(f["mean_loss"].to_numpy(float)) + [float(f["mean_loss"].iloc[-1])]
        h, = ax.step(fx, fy, where="post", color="0.35", lw=1.4, ls=["-", "--", ":", "-."][mi % 4], zorder=1)
        handles.append(h)
        labels.append("Pareto front (no failures)" + (f": {m}" if multi_model else ""))
    # baseline level
    for m in models:
        b = s[(s["model"] == m) & (s["arm"] == baseline) & np.isfinite(s["mean_loss"].astype(float))]
        if len(b):
            h = ax.axhline(float(b["mean_loss"].mean()), color=color.get(baseline, "k"), lw=0.9, ls="--",
                           alpha=0.6, zorder=0)
            if m == models[0]:
                handles.append(h)
                labels.append(f"{baseline} mean final loss")

    # points
    ytop = hi + 3.0 * pad
    annot = []  # (x, y, text, color)
    for _, g in placed.iterrows():
        x = float(g["bytes"]) / scale
        c = color[g["arm"]]
        mk = "D" if g["reference"] else "o"
        if np.isfinite(g["mean_loss"]):
            y = float(g["mean_loss"])
            err = [[y - float(g["min_loss"])], [float(g["max_loss"]) - y]] if g["n_ok"] > 1 else None
            ax.errorbar([x], [y], yerr=err, fmt="none", ecolor=c, elinewidth=1.1, capsize=3, zorder=2)
            ax.plot([x], [y], marker=mk, ms=8 if mk == "o" else 7, mec=c, mew=1.6,
                    mfc="white" if g["failed"] else c, ls="none", zorder=3)
        else:  # every seed failed: no loss to show
            y = ytop
            ax.plot([x], [y], marker="x", ms=9, mew=2, color=c, ls="none", zorder=3)
        txt = ("all-reduce" if g["reference"] else topk_label(g["variant"]))
        if multi_model:
            txt = f"{g['model']}: {txt}"
        if g["failed"]:
            txt += f" ({g['failures']} of {g['n_runs']})"
        annot.append((x, y, txt, c))

    # labels left of their points (the front's horizontal runs right of a point, its vertical drop above
    # it); points at one x (the arms of one top-k send the same bytes) pushed apart vertically
    fig.canvas.draw()
    tr, inv = ax.transData, ax.transData.inverted()
    disp = [tr.transform((x, y)) for x, y, _, _ in annot]
    cols: list[list[int]] = []
    for i in sorted(range(len(annot)), key=lambda i: disp[i][0]):
        if cols and disp[i][0] - disp[cols[-1][0]][0] < 3:
            cols[-1].append(i)
        else:
            cols.append([i])
    for col in cols:
        ys = _spread([disp[i][1] for i in col], 11.0)
        xd = min(disp[j][0] for j in col)
        for i, yd in zip(col, ys):
            _, _, txt, c = annot[i]
            ax.text(*inv.transform((xd - 10, yd)), txt, fontsize=7.5, color=c, va="center", ha="right", zorder=4)

    # legend: one entry per arm (filled circle / diamond), then the encodings, outside the axes
    from matplotlib.lines import Line2D
    arm_h = []
    for a in arms:
        ref = bool(s.loc[s["arm"] == a, "reference"].all())
        arm_h.append(Line2D([], [], marker="D" if ref else "o", color=color[a], ls="none", ms=7))
    enc = [Line2D([], [], marker="o", mec="0.3", mfc="white", mew=1.6, ls="none", ms=8),
           Line2D([], [], marker="x", color="0.3", mew=2, ls="none", ms=8),
           Line2D([], [], marker="D", mec="0.3", mfc="0.3", ls="none", ms=7)]
    enc_l = ["hollow: >= 1 seed failed (diverged);\nmean of the ok seeds, not on the front",
             "every seed failed (no loss)", "uncompressed reference\n(all-reduce of every gradient)"]
    leg = ax.legend(arm_h + handles + enc, [a + (" (baseline)" if a == baseline else "") for a in arms] + labels
                    + enc_l, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                    borderaxespad=0.0, labelspacing=0.8)
    leg.set_title("arm", prop={"size": 8})
    leg._legend_box.align = "left"
    n_missing = int((~np.isfinite(s["bytes"].astype(float))).sum())
    note = ("points: mean final loss over ok seeds; bars: min..max over ok seeds"
            + (f"; {n_missing} configuration(s) without recorded bytes not drawn" if n_missing else ""))
    ax.set_title(ttl + "\n" + note, fontsize=10)
    ax.set_xlabel(f"bytes sent per step per rank ({unit}, log scale)")
    ax.set_ylabel("final validation loss")
    ax.grid(True, which="both", alpha=0.25)
    from matplotlib.ticker import FuncFormatter, LogLocator
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10)))
    fmt_tick = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(fmt_tick)
    if span < 1.2:  # less than ~a decade: label the minor ticks too
        ax.xaxis.set_minor_formatter(fmt_tick)
        ax.tick_params(axis="x", which="minor", labelsize=8)
    _save(fig, path)


def markdown(s: pd.DataFrame, baseline: str, title: str | None = None) -> str:
    multi_model = s["model"].nunique() > 1
    head = (["model"] if multi_model else []) + ["arm", "variant", "n", "failures", "mean final loss",
                                                 "bytes/step/rank", "ratio to all-reduce", "on the front"]
    rows = []
    fb = s["bytes"].astype(float)
    scale, unit = _unit(float(fb[np.isfinite(fb)].max())) if np.isfinite(fb).any() else (1.0, "B")
    for _, g in s.iterrows():
        b = float(g["bytes"])
        rows.append(([g["model"]] if multi_model else []) + [
            g["arm"] + (" (baseline)" if g["arm"] == baseline else ""),
            g["variant"],
            f"{int(g['n_ok'])}/{int(g['n_runs'])}",
            g["failures"] or "-",
            fmt(g["mean_loss"], 4) or "-",
            f"{b / scale:.1f} {unit}" if math.isfinite(b) else "not recorded",
            fmt(g["ratio"], 3) or "-",
            "yes" if g["on_front"] else ("no (failed)" if g["failed"] else "no"),
        ])
    out = (f"### {title}\n\n" if title else "") + md_table(head, rows)
    out += ("\nn: ok seeds / runs. Mean final loss over the ok seeds. Bytes: payload each rank sends per step "
            "(mean over steps and runs; kB/MB = 10^3/10^6 bytes); ratio = bytes / bytes of an all-reduce of every "
            "gradient. A configuration with a failed (diverged) run is never on the Pareto front.\n")
    return out


def make_pareto(runs: pd.DataFrame, png: str, md: str | None, baseline: str, phase: str = "",
                title: str | None = None) -> pd.DataFrame:
    """Write the PNG (and the Markdown table when md is given); returns summarize()'s table."""
    if "phase" in runs and phase and (runs["phase"].astype(str) == phase).any():
        runs = runs[runs["phase"].astype(str) == phase]
    s = summarize(runs, baseline)
    ttl = title or (f"{phase}: " if phase else "") + "final validation loss vs bytes sent per step per rank"
    if len(s) == 0:
        _empty(png, ttl, "no runs")
    else:
        plot_pareto(s, png, baseline, phase, title)
    if md:
        atomic_write_text(md, markdown(s, baseline, title) if len(s) else "No runs.\n")
    log.info("pareto: %d configurations, %d on the front, %d with failures", len(s),
             int(s["on_front"].sum()) if len(s) else 0, int(s["failed"].sum()) if len(s) else 0)
    return s
