"""Every planned run's spec, validated by the trainer's own code before any job (issue 18.5).

A study can pass the schema and the study checks and still make a spec the trainer refuses (a seed of
2**64, an empty wandb entity, a model option the model does not take, a seq_len beyond the model's block
size): then every train job of it would fail, after queueing. So the plan builds the spec of every run
any phase can ask for and reads it with trainer/spec.py's RunSpec.from_dict (torch-free, loaded from its
file like optim/registry.py), and reports each problem once: the spec key, the value, what is allowed, the
study key it comes from, and one run it concerns.
"""

from __future__ import annotations

from pathlib import Path

from study.spec import build_spec, load_file_module, text_data_dir

# Where a spec key's value comes from in the study (a hint in the message; {model}, {arm} of the run).
STUDY_KEY = {
    "seed": "phases.*.seeds",
    "run_id": "the model, arm and variant names",
    "training.steps": "models.{model}.steps",
    "training.global_batch": "models.{model}.global_batch",
    "training.micro_batch": "models.{model}.micro_batch",
    "training.seq_len": "models.{model}.seq_len",
    "training.grad_clip": "training_defaults.grad_clip or arms.{arm}.training.grad_clip",
    "eval.batches": "training_defaults.eval_batches",
    "eval.every": "training_defaults.eval_every",
    "wandb.entity": "wandb.entity",
    "wandb.project": "wandb.project",
    "wandb.tags": "the model, arm and variant names",
}


def _placeholder_text_data(config: dict) -> dict:
    """For data.kind text or hub the shards exist only after the data stage or the download: a bin section
    of the right shape."""
    d = text_data_dir(config)
    return {"kind": "bin", "train": f"{d}/train_*.bin", "val": f"{d}/val_*.bin"}


def _source(key: str, run) -> str:
    if key.startswith("model.options"):
        return f"models.{run.model}.options or arms.{run.arm}.model"
    if key.startswith("optimizer."):
        section, _, rest = key[len("optimizer."):].partition(".")
        return f"arms.{run.arm}.{section}.{rest} or optimizer_defaults.{section}.{rest}" if rest else f"arms.{run.arm}"
    hint = STUDY_KEY.get(key)
    return hint.format(model=run.model, arm=run.arm) if hint else ""


def run_spec_problems(plan, runs) -> list[str]:
    """One line per distinct problem the trainer finds in the specs of `runs` ([] when none)."""
    trainer_spec = load_file_module(Path(plan.root), "trainer/spec.py")
    text = _placeholder_text_data(plan.config) if plan.config["data"]["kind"] in ("text", "hub") else None
    seen: dict[tuple, list] = {}
    for run in runs:
        spec = build_spec(plan.config, run, plan.versions, plan.root, text, plan.tokenizer_vocab)
        if "external" in spec:  # an external trainer's run: its settings are checked by study/external.py
            continue
        try:
            trainer_spec.RunSpec.from_dict(spec)
        except trainer_spec.SpecError as e:
            for key, value, allowed in e.errors:
                shown = trainer_spec._show(value)
                seen.setdefault((key, shown, allowed), []).append(run)
    out = []
    for (key, shown, allowed), bad_runs in seen.items():
        run = bad_runs[0]
        src = _source(key, run)
        more = f" and {len(bad_runs) - 1} more" if len(bad_runs) > 1 else ""
        out.append(f"run spec {key} = {shown}{f' (from {src})' if src else ''}: the trainer allows {allowed} "
                   f"(run {run.key!r}{more})")
    return out
