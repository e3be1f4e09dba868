"""Snakemake script: seed 004's measurements on captured gradients (analysis/distro_measure.py).

    input:
        captures  capture files of the trainer (<run_dir>/captures/step<N>.pt, written when the run spec has
                  `capture: {steps: [...], what: [grad, momentum]}`); one file or a list, from one or more runs.
                  Optional: a rule may instead declare other files as input (e.g. the runs' metrics.json,
                  which the trainer writes after its captures) and name the capture files in
                  params.captures. When input has `captures`, params.captures is ignored.
    params (all optional, except captures when input has none):
        captures      the capture file paths (one path or a list), read when input has no `captures`;
                      every file must exist when the script runs (a missing one is an error that names it)
        topk          fractions of a chunk for Experiments 1, 3, 4 (default [0.01, 0.05, 0.10, 0.25])
        cond_topk     fractions for Experiment 2 (default [0.05, 0.10, 0.25])
        chunk         chunk side (default 64, as the compressed arms)
        orthogonalizer  'polar_express' (default; the seed's) | 'newton_schulz' | 'svd'
        seed          seed of the synthetic matrices (default 0)
        what          which captured tensors: subset of ['grad', 'momentum'] (default both)
        max_per_file  at most this many matrices per capture file and kind, evenly spaced (0: all; default 0)
        ranks         ranks of the low-rank synthetic matrices (default [1, 4, 16, 64])
        title         the section's heading
        device        'auto' (default: the GPU when there is one, else the CPU) | 'cpu' | 'cuda'
    threads: CPU threads for the SVDs and matrix products on the CPU (the rule asks for all cores)
    output:
        tables    long CSV: table, source, tensor, step, rows, cols, topk, orth, target, metric, value
        spectra   CSV: source, tensor, step, rows, cols, i, i_frac, sigma_rel (sigma_i / sigma_1)
        md        the Markdown section (tables with the seed's numbers beside ours, computed findings)
    log: one file

Cost: the matrices are measured in same-shape stacks, on the GPU when there is one (GPT-124M's 96
captured matrices of the real study plus 16 synthetic ones: see docs/examples/distro_measure/), else on
all the job's cores (the SVDs one matrix per thread: LAPACK's own threading is far slower at these sizes).
"""
from pathlib import Path

from _script import logged

from analysis.distro_measure import COND_TOPK, RANKS, REAL, TOPK, run
from analysis.io import as_list

sm = snakemake  # noqa: F821
with logged(sm, "distro_measure") as log:
    p = sm.params
    get = lambda k, d: getattr(p, k, d)  # noqa: E731
    declared = getattr(sm.input, "captures", None)  # a Snakemake Namedlist: attribute per named input
    if declared is not None:
        captures, where = as_list(declared), "input.captures"
    else:
        captures, where = [str(c) for c in as_list(get("captures", None))], "params.captures"
        missing = [c for c in captures if not Path(c).is_file()]
        if missing:
            raise FileNotFoundError(f"params.captures: {len(missing)} of {len(captures)} capture files missing "
                                    f"(does the run spec set capture.steps?): {', '.join(missing)}")
    if not captures:
        raise ValueError("distro_measure: no capture files (give input.captures or params.captures)")
    log.info("%d capture files from %s", len(captures), where)
    import torch

    threads = int(getattr(sm, "threads", 1) or 1)
    torch.set_num_threads(threads)
    tables = run(captures, str(sm.output.tables), str(sm.output.spectra), str(sm.output.md),
                 topk=[float(x) for x in get("topk", TOPK)], cond_topk=[float(x) for x in get("cond_topk", COND_TOPK)],
                 chunk=int(get("chunk", 64)), orthogonalizer=str(get("orthogonalizer", "polar_express")),
                 seed=int(get("seed", 0)), what=list(get("what", REAL)), max_per_file=int(get("max_per_file", 0)),
                 ranks=[int(r) for r in get("ranks", RANKS)], title=str(get("title", "Seed 004 on real gradients")),
                 device=str(get("device", "auto")), workers=threads, log=log)
    log.info("wrote %s (%d rows), %s, %s", sm.output.tables, len(tables), sm.output.spectra, sm.output.md)
