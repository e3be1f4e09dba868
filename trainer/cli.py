"""Command line of the trainer (workflow/scripts/train.py is a thin wrapper around main()).

    python workflow/scripts/train.py --spec SPEC.json --out-dir DIR --checkpoint-dir DIR [--set KEY=VALUE ...]
    python workflow/scripts/train.py --spec-json '{"run_id": ...}' --out-dir DIR --checkpoint-dir DIR
    python workflow/scripts/train.py --spec-json @SPEC.json --out-dir DIR ...   # what the train rule passes
    torchrun --standalone --nproc-per-node N workflow/scripts/train.py --spec ... (same flags)
    python workflow/scripts/train.py --build-stdlib-corpus DIR
    python workflow/scripts/train.py --print-example-spec > spec.json
    python workflow/scripts/train.py --spec SPEC.json --check     # validate only

Exit codes: 0 done (status ok or diverged), 75 preempted (SIGTERM, SIGINT or SIGUSR1: checkpoint saved;
run again to resume), 2 a bad spec or input (the message names the field / file), a run another trainer is
writing, a checkpoint that is not plain data, or data that changed under a checkpoint; 1 anything else.
A torchrun worker dies with torchrun (trainer.runlock.die_with_parent). A spec with an `external` section
runs the study's own command instead (trainer/external.py; 65 when its records break the contract).
"""

from __future__ import annotations

import argparse
import json
import sys

USAGE_EXIT_CODE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train one run of the Muon ablation study.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--spec", help="run spec file (JSON, or YAML by extension); see docs/DESIGN.md")
    src.add_argument("--spec-json", help="the run spec itself, as one JSON string, or @FILE: the JSON in FILE (what the train rule "
                     "passes: the spec file beside the run's log)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set training.steps=20 (VALUE parsed as JSON if it parses)")
    p.add_argument("--out-dir", help="the run's output directory (spec.json, history.csv, metrics.json)")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (not the output directory)")
    p.add_argument("--check", action="store_true", help="validate the spec, print it resolved, and exit")
    p.add_argument("--build-stdlib-corpus", metavar="DIR", help="build the stdlib byte corpus into DIR and exit")
    p.add_argument("--print-example-spec", action="store_true", help="print a tiny CPU example spec and exit")
    return p


def main(argv: list[str] | None = None, hold_signals: bool = False) -> int:
    """hold_signals: the process exits after main returns (workflow/scripts/train.py); see trainer.loop.run."""
    from trainer.runlock import die_with_parent, started_by_torchrun

    if started_by_torchrun():  # first, so that the window in which torchrun can die unnoticed is short
        die_with_parent()
    args = _parser().parse_args(argv)
    # imports after argparse so that --help is instant
    from trainer.spec import RunSpec, SpecError, apply_overrides, example_spec, load_spec_file

    if args.print_example_spec:
        print(json.dumps(example_spec(), indent=2))
        return 0
    if args.build_stdlib_corpus:
        from trainer.data import build_stdlib_corpus

        m = build_stdlib_corpus(args.build_stdlib_corpus)
        print(f"stdlib corpus in {args.build_stdlib_corpus}: {m['tokens']['train']:,} train / {m['tokens']['val']:,} "
              f"val tokens from {m['n_files']['train']} + {m['n_files']['val']} files (Python {m['python_version']}), "
              f"sha256 {m['corpus_sha256'][:16]}")
        return 0

    from trainer.checkpoint import CheckpointUnsafeError
    from trainer.data import DataError
    from trainer.distributed import DeviceError
    from trainer.model import ModelError
    from trainer.runlock import RunLockError
    from trainer.tracking import TrackingError

    try:
        if not args.spec and not args.spec_json and not args.overrides:
            raise SpecError([("--spec", None, "a spec file, --spec-json, or --set KEY=VALUE flags for every field")])
        if args.spec_json and args.spec_json.startswith("@"):
            raw = load_spec_file(args.spec_json[1:])
        elif args.spec_json:
            try:
                raw = json.loads(args.spec_json)
            except json.JSONDecodeError as e:
                raise SpecError([("--spec-json", args.spec_json, f"valid JSON ({e})")]) from None
        else:
            raw = load_spec_file(args.spec) if args.spec else {}
        raw = apply_overrides(raw, args.overrides)
        if isinstance(raw, dict) and "external" in raw and not args.check:  # a study's own command
            if not args.out_dir or not args.checkpoint_dir:
                raise SpecError([("--out-dir/--checkpoint-dir", [args.out_dir, args.checkpoint_dir],
                                  "both directories are required to train")])
            from trainer.external import run_external

            return run_external(raw, args.out_dir, args.checkpoint_dir)
        spec = RunSpec.from_dict(raw)
        if args.check:
            print(json.dumps(spec.to_dict(), indent=2))
            return 0
        if not args.out_dir or not args.checkpoint_dir:
            raise SpecError([("--out-dir/--checkpoint-dir", [args.out_dir, args.checkpoint_dir],
                              "both directories are required to train")])
        from trainer.loop import run

        return run(spec, args.out_dir, args.checkpoint_dir, hold_signals=hold_signals)
    except (SpecError, DataError, ModelError, TrackingError, DeviceError, FileNotFoundError, RunLockError,
            CheckpointUnsafeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main(hold_signals=True))
