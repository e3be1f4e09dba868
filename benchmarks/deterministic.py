"""runtime.deterministic on a GPU: its throughput cost, and bitwise reproducibility of real trainer runs.

Real runs of workflow/scripts/train.py (subprocesses, as the workflow starts them), GPT-124M by
default (sequence 1024, 32 sequences per step, bf16 autocast, torch.compile), MuonOrthoNoise with the
study's trigger (alpha 1e-3, rank check every 10 steps), on the stdlib corpus:

1. deterministic off: tokens/s (the trainer's own figure: steps after the first two of the process);
2. deterministic on: tokens/s; the cost is 1 - on/off;
3. deterministic on again, the same seed: history.csv (losses, grad norms, diagnostics) and the final
   model must be bitwise identical to run 2;
4. deterministic on, preempted by SIGTERM after its first checkpoint, then restarted: it resumes and
   must end bitwise identical to run 2.
   (Without determinism, two same-seed GPU runs differ: run 1 is repeated when --repeat-off is given.)

    python benchmarks/deterministic.py --out benchmarks/results/deterministic_h100.json   (about 6 minutes)
    python benchmarks/deterministic.py --smoke                                          (CPU, tiny, a minute)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRAIN = ROOT / "workflow" / "scripts" / "train.py"


def make_spec(a, corpus: str, deterministic: bool, keep: bool = True) -> dict:
    muon = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0, "adjust_lr_fn": "original",
            "orthogonalizer": "newton_schulz", "ns_steps": 5, "rank_every": a.rank_every, "alpha": a.alpha,
            "schedule": "constant", "rank_threshold": 0.5}
    return {
        "run_id": f"bench/deterministic/{a.model}",
        "model": {"name": a.model, "arch": a.model},
        "optimizer": {"arm": "orthonoise", "class": "MuonOrthoNoise", "muon": muon,
                      "adamw": {"lr": 3.0e-3, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.0}},
        "alpha": a.alpha,
        "seed": 42,
        "training": {"steps": a.steps, "global_batch": a.global_batch, "micro_batch": a.micro_batch,
                     "seq_len": a.seq_len, "warmup_steps": 5, "cooldown_frac": 0.2},
        "eval": {"every": a.steps // 2, "batches": 2},
        "data": {"kind": "stdlib", "path": corpus},
        "checkpoint": {"every": a.checkpoint_every, "keep": keep},
        "wandb": {"mode": "disabled"},
        "runtime": {"device": a.device, "compile": a.compile, "dtype": "auto", "deterministic": deterministic},
    }


def child_env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    e.update(PYTHONUNBUFFERED="1", WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    return e


def cmd(spec_path: Path, out: Path, ck: Path) -> list[str]:
    return [sys.executable, str(TRAIN), "--spec", str(spec_path), "--out-dir", str(out), "--checkpoint-dir", str(ck)]


def run(spec: dict, work: Path, name: str, preempt: bool = False) -> dict:
    sp = work / f"{name}.json"
    sp.write_text(json.dumps(spec))
    out, ck = work / name / "out", work / name / "ckpt"
    t0 = time.time()
    res = {"name": name}
    if preempt:
        p = subprocess.Popen(cmd(sp, out, ck), env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        while not (ck / "latest.pt").exists():
            if p.poll() is not None:
                raise RuntimeError(f"{name}: ended before its first checkpoint:\n{p.stderr.read()[-3000:]}")
            time.sleep(0.01)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=900)
        res["first_exit_code"] = p.returncode
        res["preempted_at"] = next((ln.split("checkpoint at step ")[1].split()[0] for ln in err.splitlines()[::-1]
                                    if "checkpoint at step" in ln), None)
    r = subprocess.run(cmd(sp, out, ck), env=child_env(), capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: exit {r.returncode}\n{r.stderr[-3000:]}")
    res["resumed"] = "resuming from" in r.stderr
    m = json.loads((out / "metrics.json").read_text())
    res.update(tokens_per_s=m["tokens_per_s"], final_val_loss=m["final_val_loss"], wall_s=time.time() - t0)
    res["_out"], res["_ck"] = str(out), str(ck)
    return res


def history(out: str) -> list[dict]:
    with open(Path(out) / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in csv.DictReader(f)]


def same(a: dict, b: dict) -> dict:
    """Bitwise comparison of two runs: history rows (all but tokens/s) and the final model."""
    import torch

    ha, hb = history(a["_out"]), history(b["_out"])
    diff_rows = [r1["step"] for r1, r2 in zip(ha, hb) if r1 != r2]
    ma = torch.load(Path(a["_ck"]) / "latest.pt", map_location="cpu", weights_only=False)["model"]
    mb = torch.load(Path(b["_ck"]) / "latest.pt", map_location="cpu", weights_only=False)["model"]
    diff_t = [k for k in ma if not torch.equal(ma[k], mb[k])]
    return {"history_equal": ha == hb and len(ha) == len(hb), "first_differing_step": diff_rows[0] if diff_rows else None,
            "model_equal": not diff_t, "differing_tensors": len(diff_t),
            "final_val_loss_diff": abs((a["final_val_loss"] or 0) - (b["final_val_loss"] or 0))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="gpt-124m")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--rank-every", type=int, default=10)
    p.add_argument("--alpha", type=float, default=1e-3)
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--repeat-off", action="store_true", help="also repeat the run without determinism")
    p.add_argument("--data", default=None, help="stdlib corpus dir (built if missing)")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, a few steps")
    p.add_argument("--out", default="-")
    a = p.parse_args(argv)
    a.compile = {"auto": "auto", "true": True, "false": False}[a.compile]
    if a.smoke:
        a.model, a.steps, a.global_batch, a.micro_batch, a.seq_len = "tiny", 12, 8, 4, 64
        a.device, a.compile, a.checkpoint_every, a.rank_every = "cpu", False, 5, 3
    from trainer.data import build_stdlib_corpus

    corpus = a.data or os.path.join(tempfile.gettempdir(), "muon-ablations-bench-stdlib")
    if not (Path(corpus) / "manifest.json").exists():
        build_stdlib_corpus(corpus)
    import torch

    result = {"model": a.model, "steps": a.steps, "tokens_per_step": a.global_batch * a.seq_len,
              "device": torch.cuda.get_device_name() if a.device == "cuda" and torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "optimizer": "MuonOrthoNoise", "alpha": a.alpha, "rank_every": a.rank_every}
    with tempfile.TemporaryDirectory(prefix="bench-det-") as tmp:
        work = Path(tmp)
        runs = {}
        plan = [("off", False, False), ("on", True, False), ("on_again", True, False), ("on_preempted", True, True)]
        if a.repeat_off:
            plan.insert(1, ("off_again", False, False))
        for name, det, preempt in plan:
            runs[name] = run(make_spec(a, corpus, det), work, name, preempt=preempt)
            print(f"{name}: {runs[name]['tokens_per_s']:,.0f} tok/s, final val loss {runs[name]['final_val_loss']}",
                  file=sys.stderr, flush=True)
        result["runs"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in runs.items()}
        result["cost"] = 1 - runs["on"]["tokens_per_s"] / runs["off"]["tokens_per_s"]
        result["same_seed_on"] = same(runs["on"], runs["on_again"])
        result["preempt_resume_on"] = same(runs["on"], runs["on_preempted"])
        if a.repeat_off:
            result["same_seed_off"] = same(runs["off"], runs["off_again"])
    ok = result["same_seed_on"]["history_equal"] and result["same_seed_on"]["model_equal"] and \
        result["preempt_resume_on"]["history_equal"] and result["preempt_resume_on"]["model_equal"] and \
        result["runs"]["on_preempted"].get("resumed")
    result["bitwise_ok"] = bool(ok)
    text = json.dumps(result, indent=1)
    if a.out == "-":
        print(text)
    else:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(f"deterministic cost {100 * result['cost']:.1f}% of tokens/s; bitwise same seed and preempt/resume: {ok}",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
