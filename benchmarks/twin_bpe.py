"""The CPU twin on bytes vs on a BPE trained on the same stdlib corpus: data preparation time, and the time
and loss of a tiny-model run (config/tiny.yaml's `tiny`: 200 steps, global_batch 16, seq_len 64).

    python3 benchmarks/twin_bpe.py --out $OUT/twin_bpe.json [--vocab 4096] [--repeats 2] [--workers 1]
    python3 benchmarks/twin_bpe.py --smoke --out /tmp/twin_bpe.json      # tiny sizes: proves it runs

Measures (wall and CPU seconds, the CPU of child processes included): building the byte corpus
(trainer/data.py), preparing `--input stdlib --tokenizer bpe:V` (trainer/textprep.py: BPE training and
tokenization separately), and `repeats` runs of the tiny model per data kind, interleaved (bytes, bpe, bytes,
...) so that a change in machine load hits both. Loss is compared per byte of text too
(bits per byte = val loss / ln 2 x tokens per byte of the validation text), the only unit the two share;
the two validation sets are different 5% samples of the standard library (by path for bytes, by content for
the BPE), so that comparison is approximate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.data import build_stdlib_corpus, open_shard  # noqa: E402
from trainer.textprep import PrepConfig, prepare, spec_data  # noqa: E402
from trainer.tokenizer import load_tokenizer  # noqa: E402


def _cpu() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn):
    w, c = time.perf_counter(), _cpu()
    r = fn()
    return r, {"wall_s": round(time.perf_counter() - w, 3), "cpu_s": round(_cpu() - c, 3)}


def tiny_spec(data: dict, vocab: int | None, steps: int) -> dict:
    model = {"name": "tiny", "arch": "tiny"}
    if vocab is not None:
        model["vocab_size"] = vocab
    return {
        "run_id": f"bench/tiny/{data['kind']}/seed42", "model": model,
        "optimizer": {"arm": "muon", "class": "Muon", "muon": {"lr": 0.02}, "adamw": {"lr": 3.0e-3}},
        "alpha": 0.0, "seed": 42,
        "training": {"steps": steps, "global_batch": 16, "micro_batch": 16, "seq_len": 64,
                     "warmup_steps": min(10, steps - 1), "cooldown_frac": 0.2},
        "eval": {"every": max(1, steps // 8), "batches": 8},
        "data": data, "checkpoint": {"every": 0}, "wandb": {"mode": "disabled"},
        "runtime": {"device": "auto", "compile": False, "dtype": "auto"},
    }


def run_tiny(spec: dict, out: Path, threads: int) -> dict:
    cmd = [sys.executable, str(ROOT / "workflow/scripts/train.py"), "--spec-json", json.dumps(spec),
           "--out-dir", str(out), "--checkpoint-dir", str(out.parent / (out.name + "-ckpt"))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # as the workflow's twin: threads = cpus_per_gpu (1)
    r, t = timed(lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env))
    if r.returncode != 0:
        raise RuntimeError(f"training failed ({r.returncode}):\n{r.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {**t, "trainer_wall_s": round(m["wall_time_s"], 3), "tokens_per_s": round(m["tokens_per_s"] or 0, 1),
            "final_val_loss": m["final_val_loss"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="tokenizing processes of the data stage")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the training runs (the twin's 1)")
    p.add_argument("--work-dir", default=None, help="keep the corpora here (default: a temporary directory)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: the stdlib's email package, vocabulary 512, 20 steps, 1 repeat")
    a = p.parse_args(argv)
    if a.smoke:
        a.vocab, a.steps, a.repeats = min(a.vocab, 512), 20, 1
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="twin_bpe-"))
    res: dict = {"benchmark": "twin_bpe", "smoke": a.smoke, "vocab": a.vocab, "steps": a.steps,
                 "workers": a.workers, "threads": a.threads, "python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}

    # smoke: one package of the standard library (email: 29 files, 0.4 MB) instead of all of it
    sub = "email" if a.smoke else None
    byte_dir = work / "stdlib"
    src = Path(sysconfig.get_paths()["stdlib"]) / sub if sub else None
    man_b, res["prepare_bytes"] = timed(lambda: build_stdlib_corpus(byte_dir, stdlib_dir=src, force=True))
    bpe_dir = work / f"stdlib-bpe{a.vocab}"
    cfg = PrepConfig(inputs=[f"stdlib:{sub}" if sub else "stdlib"], out_dir=str(bpe_dir), tokenizer=f"bpe:{a.vocab}",
                     val_fraction=0.05, workers=a.workers, progress=False)
    man, t = timed(lambda: prepare(cfg))
    res["prepare_bpe"] = {**t, "bpe_train_wall_s": man["seconds"]["bpe_train"],
                          "tokenize_wall_s": man["seconds"]["tokenize"]}
    tok = load_tokenizer(f"json:{bpe_dir / 'tokenizer.json'}")
    val = open_shard(bpe_dir / "val_000000.bin")
    val_bytes = len(tok._tok.decode([int(x) for x in val if x != tok.eot_id]).encode())
    res["corpus"] = {
        "bytes": {"train_tokens": man_b["tokens"]["train"], "val_tokens": man_b["tokens"]["val"]},
        "bpe": {"train_tokens": man["tokens"]["train"], "val_tokens": man["tokens"]["val"],
                "vocab_size": man["vocab_size"], "val_bytes_per_token": round(val_bytes / len(val), 4),
                "documents": man["documents"], "content_checksum": man["content_checksum"]},
    }
    bpt = val_bytes / len(val)
    runs = {"bytes": [], "bpe": []}
    specs = {"bytes": tiny_spec({"kind": "stdlib", "path": str(byte_dir)}, None, a.steps),
             "bpe": tiny_spec(spec_data(bpe_dir), man["vocab_size"], a.steps)}
    for i in range(a.repeats):
        for kind in ("bytes", "bpe"):
            r = run_tiny(specs[kind], work / "runs" / f"{kind}{i}", a.threads)
            loss = r["final_val_loss"]
            r["val_bits_per_byte"] = (round(loss / math.log(2) / (1.0 if kind == "bytes" else bpt), 4)
                                      if loss is not None else None)
            runs[kind].append(r)
    res["runs"] = runs
    med = {k: sorted(x["trainer_wall_s"] for x in v)[len(v) // 2] for k, v in runs.items()}
    res["summary"] = {"run_wall_s_median": med, "bpe_over_bytes_wall": round(med["bpe"] / med["bytes"], 3),
                      "load_avg_end": os.getloadavg()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["summary"]), json.dumps(res["prepare_bpe"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
