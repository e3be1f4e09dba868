"""Session D's tables from the records kept in docs/examples (no training; CPU), where the workflow cannot
rebuild them: the run directories of session C were not kept, so Snakemake's aggregate cannot see them.

  PYTHONPATH=. python benchmarks/device/session_d_tables.py ngpt     # nGPT infra + lr_sweep on all 24 runs
  PYTHONPATH=. python benchmarks/device/session_d_tables.py distro   # DisTrO topk: Pareto of what finished

ngpt: the phases' runs.csv with all three seeds, assembled from (1) session C's runs.csv rows (seeds 42 and
7, full precision), (2) session C's seed-123 final losses and the two rates 0.023 and 0.1 that its
runs.csv left out, as the example's README printed them (4 decimals: a rounding of at most 5e-5, 0.001% of
the loss, against a seed sd of 0.16%), (3) session D's three runs from their metrics.json (kept in
docs/examples/ngpt_lr_sweep/records/), through analysis.aggregate. Then the workflow's own functions:
analysis.stats.significance_table, analysis.gates.evaluate_gates with the study's gates, and
analysis.selection.select_arm with the geodesic phase's rule. Outputs *_all_seeds.* beside the session-C
files.

distro: the topk phase's runs that finished (seed 1), with the compress phase's runs (seeds 42 and 123) as
its top-k 5% points and the references, through analysis.pareto.make_pareto.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.aggregate import CURVE_COLS, aggregate, read_runs
from analysis.gates import evaluate_gates, gates_markdown
from analysis.selection import select_arm
from analysis.stats import significance_table

NG = Path("docs/examples/ngpt_lr_sweep")
DI = Path("docs/examples/distro_compress")

# session C's seed-123 runs and the rates 0.023 / 0.1, as printed in docs/examples/ngpt_lr_sweep/README.md
README_ONLY = [  # (phase(s), arm, variant, value, seed, final val loss)
    (("infra",), "muon", "default", None, 123, 5.2666),
    (("lr_sweep",), "muon", "lr0.001", 0.001, 123, 5.9060),
    (("lr_sweep",), "muon", "lr0.003", 0.003, 123, 5.6780),
    (("lr_sweep",), "muon", "lr0.01", 0.01, 123, 5.4399),
    (("lr_sweep",), "muon", "lr0.023", 0.023, 42, 5.2569),
    (("lr_sweep",), "muon", "lr0.023", 0.023, 123, 5.2498),
    (("lr_sweep",), "muon", "lr0.05", 0.05, 123, 5.2200),
    (("lr_sweep",), "muon", "lr0.1", 0.1, 42, 5.2848),
    (("lr_sweep",), "muon", "lr0.1", 0.1, 123, 5.2873),
]
# session D's runs: (phases, role, arm, variant, value, seed)
SESSION_D = [
    (("infra", "lr_sweep"), "baseline", "adamw", "default", None, 123),
    (("lr_sweep",), "arm", "muon", "lr0.023", 0.023, 7),
    (("lr_sweep",), "arm", "muon", "lr0.1", 0.1, 7),
]
GATES = {
    "infra": {"baseline_trains": {"kind": "baseline_sane", "max_ratio_to_start": 0.9},
              "no_crashes": {"kind": "no_crashes"},
              "muon_not_worse": {"kind": "not_worse_than_baseline", "margin": 0.01, "arms": ["muon"]}},
    "lr_sweep": {"no_crashes": {"kind": "no_crashes"},
                 "muon_beats_adamw": {"kind": "beats_baseline", "min_improvement": 0.0, "arms": ["muon"]}},
}


def _meta(phase, role, arm, variant, value, seed, model="ngpt-124m", study="ngpt"):
    return {"phase": phase, "role": role, "model": model, "arm": arm, "variant": variant,
            "param": "muon.lr" if value is not None else "", "value": value, "alpha": 0.0, "seed": seed,
            "run_dir": f"results/{study}/runs/{model}/{arm}/{variant}/seed{seed}"}


def pooled_sd(runs: pd.DataFrame) -> tuple[float, int]:
    """Seed-to-seed sd of the final loss relative to its mean, pooled over the configurations (df-weighted)."""
    num, dof = 0.0, 0
    for _, g in runs.groupby(["arm", "variant"]):
        x = g["final_val_loss"].astype(float).to_numpy()
        if len(x) > 1:
            num += ((x / x.mean() - 1.0) ** 2).sum()
            dof += len(x) - 1
    return float(np.sqrt(num / dof)), dof


def ngpt() -> None:
    frames = {}
    for phase in ("infra", "lr_sweep"):
        old = read_runs(NG / f"{phase}_runs.csv").assign(source="session C runs.csv")
        cols = list(old.columns)
        rows = []
        for phases, arm, variant, value, seed, loss in README_ONLY:
            if phase in phases:
                rows.append({**_meta(phase, "arm", arm, variant, value, seed), "status": "ok",
                             "steps_completed": 400, "final_val_loss": loss, "world_size": 1,
                             "source": "session C, README (4 decimals)"})
        metas = [_meta(phase, role, arm, variant, value, seed)
                 for phases, role, arm, variant, value, seed in SESSION_D if phase in phases]
        paths = [str(NG / "records" / m["run_dir"].split("/runs/")[1] / "metrics.json") for m in metas]
        new, _ = aggregate(paths, [p.replace("metrics.json", "history.csv") for p in paths], metas, phase)
        new = new.assign(source="session D records")
        df = pd.concat([old, pd.DataFrame(rows), new], ignore_index=True)[cols]
        df = df.sort_values(["role", "arm", "value", "seed"], key=lambda s: s.astype(str)).reset_index(drop=True)
        frames[phase] = df
    sd, dof = pooled_sd(pd.concat([frames["lr_sweep"], frames["infra"][frames["infra"]["arm"] == "muon"]]))
    print(f"pooled seed-to-seed sd: {100 * sd:.3f}% of the loss ({dof} df)")
    out = {"pooled_sd_rel": sd, "pooled_sd_dof": dof}
    for phase, df in frames.items():
        df.to_csv(NG / f"{phase}_runs_all_seeds.csv", index=False)
        sig = significance_table(df, "adamw", noise_sd=sd)
        sig.to_csv(NG / f"{phase}_significance_all_seeds.csv", index=False)
        gates = evaluate_gates(df, None, pd.DataFrame(columns=CURVE_COLS), GATES[phase], "adamw", phase,
                               noise_sd=sd, power_floor=0.8)
        (NG / f"{phase}_gates_all_seeds.md").write_text(gates_markdown(gates), encoding="utf-8")
        out[phase] = {"passed": gates["passed"], "n_runs": len(df)}
        cols = ["variant", "n_arm", "n_base", "mean_arm", "mean_base", "diff_pct", "ci_low", "ci_high", "p_holm",
                "verdict"]
        print(phase, "gates passed:", gates["passed"])
        print(sig[cols].to_string(index=False))
        if phase == "lr_sweep":
            sel = select_arm(sig, gates, False, ["muon"], rule="lowest_mean", gate="no_crashes",
                             seeds_used=df["seed"].tolist())
            out["selection"] = {k: sel[k] for k in ("arm", "variant", "value", "reason", "winners_curse")}
            print("selection:", sel["reason"])
            table = (df.groupby(["arm", "variant"])["final_val_loss"]
                     .agg(["count", "mean", "std"]).assign(sd_pct=lambda t: 100 * t["std"] / t["mean"]))
            print(table.to_string())
            # neighbours of the pick, Welch over seeds (the table's 'how sure')
            from scipy import stats
            best = df[df["variant"] == sel["variant"]]["final_val_loss"].astype(float)
            for v in ("lr0.023", "lr0.1"):
                other = df[df["variant"] == v]["final_val_loss"].astype(float)
                t = stats.ttest_ind(best, other, equal_var=False)
                print(f"{sel['variant']} vs {v}: {100 * (best.mean() / other.mean() - 1):+.2f}%, Welch p = {t.pvalue:.4f}")
                out[f"{sel['variant']}_vs_{v}"] = {"diff_pct": 100 * (best.mean() / other.mean() - 1),
                                                  "welch_p": float(t.pvalue)}
    (NG / "all_seeds_summary.json").write_text(json.dumps(out, indent=1, default=float) + "\n", encoding="utf-8")


def distro() -> None:
    from analysis.pareto import make_pareto

    comp = read_runs(DI / "compress_runs.csv")
    metas, paths = [], []
    for m in sorted((DI / "records" / "gpt-124m-dp2").glob("*/topk*/seed1/metrics.json")):
        arm, variant = m.parts[-4], m.parts[-3]
        metas.append({"phase": "topk", "role": "arm", "model": "gpt-124m-dp2", "arm": arm, "variant": variant,
                      "param": "muon.topk", "value": float(variant[4:]), "alpha": 0.0, "seed": 1,
                      "run_dir": f"results/distro/runs/gpt-124m-dp2/{arm}/{variant}/seed1"})
        paths.append(str(m))
    topk, _ = aggregate(paths, [p.replace("metrics.json", "history.csv") for p in paths], metas, "topk")
    five = comp[comp["arm"].isin(["demo", "demo-muon-post"])].assign(variant="topk0.05", param="muon.topk",
                                                                     value=0.05)
    refs = comp[comp["arm"].isin(["muon-ddp", "adamw-ddp"])]
    runs = pd.concat([topk, five, refs], ignore_index=True).assign(phase="topk")
    runs.to_csv(DI / "topk_runs_partial.csv", index=False)
    title = ("topk (partial; 250 steps, 2 ranks on 1 GPU): final val loss vs bytes sent per step per rank\n"
             "1%/10%/25%: seed 1; 5% and references: compress seeds 42, 123")
    s = make_pareto(runs, str(DI / "pareto.png"), str(DI / "pareto.md"), "muon-ddp", phase="topk", title=title)
    print(s.to_string())


if __name__ == "__main__":
    {"ngpt": ngpt, "distro": distro}[sys.argv[1]]()
