"""`muon-ablations`: a study's runs from the shell.

    muon-ablations runs [--study NAME] [--tiny] [--phase P] [--arm A] [--status S] [--json]
    muon-ablations runs --all-studies
    muon-ablations show RUN            # spec, metrics, log tail, checkpoint of one run (MODEL/ARM/VARIANT/seedN)
    muon-ablations diff RUN RUN        # settings and outcomes side by side
    muon-ablations status [--watch S]  # per phase: done / running / stale / missing, verdicts, ETA

Read-only, no Snakemake lock: safe on a login node while Snakemake runs. Run it in the repository root
(or pass --root); the study is chosen as Snakemake's --config study=NAME tiny=true would.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from cli import commands
from cli.study_view import CliError, open_study, study_names


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=".", help="the workflow's directory (default: here)")
    common.add_argument("--study", help="a study name (config/studies/NAME.yaml) or a study file; default: "
                                        "config/config.yaml's")
    common.add_argument("--tiny", action="store_true", default=None, help="the study's CPU twin (results/NAME-tiny/)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = argparse.ArgumentParser(prog="muon-ablations", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("runs", parents=[common], help="list runs: model, arm, variant, seed, status, loss, time")
    r.add_argument("--phase", action="append", help="only these phases' runs (repeatable)")
    r.add_argument("--arm", action="append", help="only these arms (repeatable)")
    r.add_argument("--model", action="append", help="only these models (repeatable)")
    r.add_argument("--status", action="append", choices=commands.STATUSES, help="only runs with this status "
                   "(repeatable; stale: a record whose spec changed since it ran)")
    r.add_argument("--all-studies", action="store_true", help="every study in config/studies/")
    s = sub.add_parser("show", parents=[common], help="one run: spec, metrics, log tail, checkpoint state")
    s.add_argument("run", help="MODEL/ARM/VARIANT/seedN, its run directory, or a unique part of it")
    s.add_argument("--lines", type=int, default=15, help="log lines to show (default 15)")
    d = sub.add_parser("diff", parents=[common], help="two runs' settings and outcomes side by side")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--all", action="store_true", help="every setting, not only those that differ")
    st = sub.add_parser("status", parents=[common], help="per phase: done / running / stale / missing, verdicts, ETA")
    st.add_argument("--jobs", type=int, help="runs at a time for the ETA (default: as many as run now, at least 1)")
    st.add_argument("--watch", type=float, metavar="SECONDS", help="print the status again every SECONDS")
    return p


def _emit(data, text: str, as_json: bool) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def run(args) -> int:
    if args.command == "runs":
        if args.all_studies:
            names = study_names(args.root)
            views = [open_study(args.root, n, args.tiny) for n in names]
        else:
            views = [open_study(args.root, args.study, args.tiny)]
        if args.phase and not args.all_studies:
            views[0].phases(args.phase)  # an unknown phase is refused with the study's phases
        rows = []
        for v in views:  # across studies, a phase filter keeps the studies that have such a phase
            ph = [p for p in args.phase if p in v.plan.phases] if args.phase else None
            if args.phase and not ph:
                continue
            rows += commands.runs_data([v], ph, args.arm, args.status, args.model)
        _emit(rows, commands.runs_text(rows, len(views) > 1), args.json)
        return 0
    view = open_study(args.root, args.study, args.tiny)
    if args.command == "show":
        d = commands.show_data(view, args.run, args.lines)
        _emit(d, commands.show_text(d), args.json)
    elif args.command == "diff":
        d = commands.diff_data(view, args.a, args.b, args.all)
        _emit(d, commands.diff_text(d), args.json)
    elif args.command == "status":
        while True:
            d = commands.status_data(view, args.jobs)
            _emit(d, commands.status_text(d), args.json)
            if not args.watch:
                break
            sys.stdout.flush()
            time.sleep(args.watch)
            view = open_study(args.root, args.study, args.tiny)  # selections may have appeared
            print(f"--- {time.strftime('%H:%M:%S')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    sys.dont_write_bytecode = True  # read-only: not even a __pycache__ beside the study's optim/registry.py
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except CliError as e:
        print(f"muon-ablations: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `muon-ablations runs | head`
        return 0
