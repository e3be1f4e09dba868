"""Where one optim.Muon step over GPT hidden matrices spends its GPU time (torch.profiler, CUDA).

    python3 benchmarks/profile_muon_step.py --size 124m [--cls Muon] [--torch-path]

Prints the kernels by total device time over --steps steps and the device-busy vs wall time per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optim  # noqa: E402
from optimizer_step import SIZES, layer_shapes, make_tensors  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="124m")
    ap.add_argument("--cls", default="Muon")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rank-every", type=int, default=0)
    ap.add_argument("--torch-path", action="store_true", help="OPTIM_TRITON=0")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args(argv)
    if args.torch_path:
        os.environ["OPTIM_TRITON"] = "0"
    layers, d = SIZES[args.size]
    params, grads = make_tensors(layer_shapes(layers, d), torch.device("cuda"))
    for p, g in zip(params, grads):
        p.grad = g
    kw = dict(lr=0.02, rank_every=args.rank_every)
    if args.cls != "Muon":
        kw.update(alpha=1e-3, rank_threshold=None)
    opt = getattr(optim, args.cls)(params, **kw)
    for _ in range(5):
        opt.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            opt.step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / args.steps * 1e3
    ka = prof.key_averages()
    dev = sum(e.self_device_time_total for e in ka if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3 / args.steps
    print(f"{args.cls} {args.size} torch_path={args.torch_path}: wall {wall:.2f} ms/step (profiled), device busy {dev:.2f} ms/step")
    try:
        print(ka.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=70))
    except Exception:  # older torch
        print(ka.table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
