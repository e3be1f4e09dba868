"""A tiny external trainer for the tests (not the built-in one): heavy-ball SGD on a noisy quadratic.

    python quadratic.py --spec SPEC --out-dir DIR --checkpoint-dir DIR

It follows docs/external_trainer.md: reads the run's settings from the spec file (optimizer.muon.lr and
momentum, training.steps, eval.at_steps, seed, external.settings), writes history.csv then metrics.json
atomically when done, checkpoints every `checkpoint_every` steps and on SIGTERM/SIGUSR1 (then exits 75),
and resumes from its checkpoint, so that a resumed run writes the same records as an uninterrupted one.
The loss is 1 + 0.5 (x - x*)' A (x - x*) for a fixed random A (settings.problem_seed); the run's seed
draws the start and the gradient noise.

Test hook: with EXT_TEST_HOLD_RUN=<run_id> and EXT_TEST_HOLD_FILE=<path>, that run, when it has not
resumed, stops at settings.hold_step after a checkpoint, writes the file and waits for a signal.
"""
import argparse
import json
import os
import signal
import sys
import time

import numpy as np

PREEMPTED = 75


def atomic_write(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--checkpoint-dir", required=True)
    args = p.parse_args()
    spec = json.load(open(args.spec, encoding="utf-8"))
    settings = spec["external"]["settings"]
    steps, seed = spec["training"]["steps"], spec["seed"]
    lr, momentum = spec["optimizer"]["muon"]["lr"], spec["optimizer"]["muon"]["momentum"]
    eval_steps = set(spec["eval"]["at_steps"]) | set(range(spec["eval"]["every"], steps + 1, spec["eval"]["every"])) | {steps}
    dim, noise = settings["dim"], settings["noise"]

    prng = np.random.default_rng(settings["problem_seed"])  # the same problem for every run
    q, _ = np.linalg.qr(prng.normal(size=(dim, dim)))
    a = q @ np.diag(np.linspace(0.1, 1.0, dim)) @ q.T
    x_star = prng.normal(size=dim)

    def loss(x):
        d = x - x_star
        return float(1.0 + 0.5 * d @ a @ d)

    ckpt = os.path.join(args.checkpoint_dir, "state.json")
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    if os.path.exists(ckpt):
        state = json.load(open(ckpt, encoding="utf-8"))
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        x, v, rows, start = np.array(state["x"]), np.array(state["v"]), state["rows"], state["step"]
        print(f"resuming from {ckpt} at step {start}", file=sys.stderr, flush=True)
    else:
        rng = np.random.default_rng(seed)
        x, v, start = rng.normal(size=dim), np.zeros(dim), 0
        rows = [{"step": 0, "train_loss": loss(x), "val_loss": loss(x)}]
    resumed_from = start or None

    stop = []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, _f: stop.append(signal.Signals(s).name))

    def save(step):
        atomic_write(ckpt, json.dumps({"step": step, "x": x.tolist(), "v": v.tolist(), "rows": rows,
                                       "rng": rng.bit_generator.state}))

    hold = (os.environ.get("EXT_TEST_HOLD_RUN") == spec["run_id"] and start == 0)
    status, diverged_step = "ok", None
    for step in range(start + 1, steps + 1):
        g = a @ (x - x_star) + noise * rng.normal(size=dim)
        v = momentum * v + g
        x = x - lr * v
        train = loss(x)
        rows.append({"step": step, "train_loss": train, "val_loss": train if step in eval_steps else None})
        if not np.isfinite(train) or train > 1.0e6:
            status, diverged_step = "diverged", step
            break
        if step % settings["checkpoint_every"] == 0:
            save(step)
        if hold and step == settings["hold_step"]:
            save(step)
            atomic_write(os.environ["EXT_TEST_HOLD_FILE"], str(os.getpid()))
            while not stop:  # until the test's preemption signal arrives
                time.sleep(0.01)
        if stop:
            save(step)
            print(f"preemption signal {stop[0]} at step {step}: checkpoint written", file=sys.stderr, flush=True)
            return PREEMPTED

    with_val = [r for r in rows if r["val_loss"] is not None]
    lines = ["step,train_loss,val_loss"] + [
        f"{r['step']},{r['train_loss']!r},{'' if r['val_loss'] is None else repr(r['val_loss'])}" for r in rows]
    atomic_write(os.path.join(args.out_dir, "history.csv"), "\n".join(lines) + "\n")
    metrics = {
        "status": status, "diverged_step": diverged_step,
        "steps_completed": diverged_step or steps,
        "final_val_loss": with_val[-1]["val_loss"] if status == "ok" else None,
        "best_val_loss": min(r["val_loss"] for r in with_val),
        "val_loss_at": {str(r["step"]): r["val_loss"] for r in with_val if r["step"] in spec["eval"]["at_steps"]},
        "resumed_from_step": resumed_from,
    }
    atomic_write(os.path.join(args.out_dir, "metrics.json"), json.dumps(metrics, indent=2))
    if os.path.exists(ckpt):
        os.remove(ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
