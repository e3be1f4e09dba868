"""The DisTrO study's `measure` stage on the GPU, end to end, on GPT-124M gradients and momenta (issue 24).

1. Captures: 2 seeds x 2 steps of GPT-124M (the trainer's model, Muon on the hidden matrices, AdamW's
   parameters left untrained, bf16 autocast) on real text (byte tokens of the kernel Documentation corpus,
   `--text`, the file in ../shared/data; the study uses a BPE of it), written as trainer/capture.py writes
   them (`captures/step<N>.pt`: grad/<name>, momentum/<name> of every hidden matrix, CPU float32).
2. The cuSOLVER drivers for the float64 singular values (torch.linalg.svdvals(driver=...)) on a stack of
   the captured gradients' R factors (768 x 768), each against LAPACK float64 on the CPU.
3. The stage as the workflow runs it (analysis.distro_measure.run: load, 96 real + 16 synthetic matrices
   with the study's settings, tables, spectra, section), timed by the host clock, per driver asked.
4. The GPU result against the CPU float64 path (the one the twins run) on a subset, with the tolerances of
   tests/test_distro_measure.py.

    python3 benchmarks/distro_measure_gpu.py --text data/kernel_docs.jsonl.xz --out $OUT/distro_measure.json
    python3 benchmarks/distro_measure_gpu.py --smoke --out /tmp/dm.json      # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optim  # noqa: E402
from analysis import distro_measure as M  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.records import write_json  # noqa: E402


def tokens(path: str | None, n: int) -> torch.Tensor:
    if path:
        op = lzma.open if path.endswith(".xz") else open
        with op(path, "rb") as f:
            data = f.read(n)
    else:
        data = (Path(os.__file__).read_bytes() * 50)[:n]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def make_captures(a, root: Path, device) -> list[Path]:
    arch = "tiny" if a.smoke else "gpt-124m"
    toks = tokens(a.text, 4_000_000 if not a.smoke else 200_000)
    B, T = (4, 64) if a.smoke else (a.batch, 1024)
    paths = []
    for seed in (42, 123):
        torch.manual_seed(seed)
        model = build_model(arch).to(device)
        muon, _ = optim.split_parameters(model)
        opt = optim.Muon([p for _, p in muon], lr=0.02, rank_every=0)
        g = torch.Generator().manual_seed(seed)
        for step in range(1, a.steps + 1):
            ix = torch.randint(0, toks.numel() - T - 1, (B,), generator=g)
            x = torch.stack([toks[i:i + T] for i in ix]).to(device)
            y = torch.stack([toks[i + 1:i + T + 1] for i in ix]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(x, y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            grads = {f"grad/{n}": p.grad.detach().float().cpu().clone() for n, p in muon}
            opt.step()
            if step in a.capture_steps:
                d = dict(grads)
                for n, p in muon:
                    d[f"momentum/{n}"] = opt.state[p]["momentum_buffer"].detach().float().cpu().clone()
                path = root / f"seed{seed}" / "captures" / f"step{step}.pt"
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(d, path)
                paths.append(path)
        del model, opt
    return paths


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def drivers(a, paths, device) -> dict:
    """Each driver's time and its error against LAPACK on a stack of R factors of real gradients."""
    d = torch.load(paths[-1], weights_only=True)
    mats = [v for k, v in sorted(d.items()) if k.startswith("grad/") and v.shape[0] != v.shape[1]][:a.driver_stack]
    x = torch.stack([m if m.shape[0] >= m.shape[1] else m.T for m in mats]).double()
    r = torch.linalg.qr(x, mode="r")[1]
    want = torch.from_numpy(np.linalg.svd(r.numpy(), compute_uv=False))
    out = {"stack": list(r.shape)}
    if device.type != "cuda":
        return out
    rg = r.to(device)
    for drv in M.GPU_SVD_DRIVERS:
        name = str(drv)
        try:
            torch.linalg.svdvals(rg, driver=drv)
            sync(device)
            t0 = time.perf_counter()
            s = torch.linalg.svdvals(rg, driver=drv)
            sync(device)
            dt = time.perf_counter() - t0
            s = s.cpu()
            smax = want[:, :1]
            out[name] = {"ms_per_matrix": 1000 * dt / r.shape[0],
                         "max_abs_err_over_smax": float(((s - want).abs() / smax).max()),
                         "smin_rel_err": float(((s[:, -1] - want[:, -1]).abs() / want[:, -1]).max())}
        except Exception as e:  # noqa: BLE001 - a driver that fails is reported, the others still run
            out[name] = {"error": repr(e)[:300]}
    return out


def compare(new, ref) -> dict:
    """Largest deviations of the GPU's tables from the CPU's, grouped as the tests' tolerances are."""
    (t, s), (tr, sr) = new, ref
    key = ["table", "source", "tensor", "step", "rows", "cols", "topk", "orth", "target", "metric"]
    same_rows = bool(t[key].reset_index(drop=True).equals(tr[key].reset_index(drop=True)))
    v, vr = t["value"].to_numpy(), tr["value"].to_numpy()
    pre = (tr.orth == "pre").to_numpy()
    cond = tr.metric.isin(["cond", "cond_recon"]).to_numpy()
    x_rows = ~pre & ~cond & (tr.table != "condition").to_numpy()
    # allclose(rtol=1e-9, atol=1e-12) holds where |v - vr| - 1e-9 |vr| <= 1e-12
    excess = np.abs(v[x_rows] - vr[x_rows]) - 1e-9 * np.abs(vr[x_rows])
    sign = (tr.metric == "sign_agree").to_numpy()
    smin = (tr.metric == "smin_rel_recon").to_numpy()
    dead = (tr.metric == "dead_frac_recon").to_numpy()
    fin = cond & np.isfinite(vr) & (vr < 1e10)  # sigma_min above the floor the tests use (1e-10)
    out = {"same_rows": same_rows, "rows": int(len(tr)),
           "x_rows_max_excess_over_rtol1e-9": float(np.nanmax(excess)) if excess.size else 0.0,
           "pre_rows_max_abs": float(np.nanmax(np.abs(v[pre & ~sign] - vr[pre & ~sign]))) if pre.any() else 0.0,
           "pre_sign_agree_max_abs": float(np.nanmax(np.abs(v[pre & sign] - vr[pre & sign]))) if pre.any() else 0.0,
           "smin_rel_recon_max_abs": float(np.nanmax(np.abs(v[smin] - vr[smin]))) if smin.any() else 0.0,
           "dead_frac_equal": bool(np.array_equal(v[dead], vr[dead])),
           "cond_max_rel_above_floor": float(np.nanmax(np.abs(v[fin] - vr[fin]) / vr[fin])) if fin.any() else 0.0,
           "spectra_max_abs": float(np.nanmax(np.abs(s.sigma_rel.to_numpy() - sr.sigma_rel.to_numpy())))}
    out["within_test_tolerances"] = bool(same_rows and out["x_rows_max_excess_over_rtol1e-9"] <= 1e-12
                                         and out["pre_rows_max_abs"] <= 1e-4 and out["pre_sign_agree_max_abs"] <= 1e-3
                                         and out["smin_rel_recon_max_abs"] <= 1e-12 and out["dead_frac_equal"]
                                         and out["cond_max_rel_above_floor"] <= 1e-5 and out["spectra_max_abs"] <= 1e-12)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=None, help="text corpus (.jsonl or .jsonl.xz); default: this Python's os.py")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--capture-steps", type=int, nargs="+", default=[20, 40])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--driver-stack", type=int, default=8)
    p.add_argument("--stage-drivers", default="best", help="comma list of drivers for the whole stage ('None' = "
                   "torch's), or 'best' (the fastest one within 1e-12 of LAPACK in part 2)")
    p.add_argument("--check-items", type=int, default=10, help="matrices of the GPU/CPU comparison")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.smoke:
        a.steps, a.capture_steps, a.driver_stack, a.check_items = 4, [2, 4], 2, 6
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    res = {"benchmark": "distro_measure_gpu", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
           "settings": vars(a), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save = (lambda: write_json(a.out, res)) if a.out else (lambda: None)
    root = Path(tempfile.mkdtemp(prefix="dm_"))
    t0 = time.perf_counter()
    paths = make_captures(a, root, device)
    res["captures"] = {"files": len(paths), "seconds": time.perf_counter() - t0,
                       "bytes": sum(p.stat().st_size for p in paths)}
    print(f"captures: {len(paths)} files in {res['captures']['seconds']:.1f} s", file=sys.stderr, flush=True)
    res["drivers"] = drivers(a, paths, device)
    print(json.dumps(res["drivers"]), file=sys.stderr, flush=True)
    save()
    cfg = dict(topk=M.TOPK, cond_topk=M.COND_TOPK, chunk=64, max_per_file=24)  # the study's (config/studies/distro.yaml)
    if a.stage_drivers == "best":
        ok = {k: v for k, v in res["drivers"].items() if isinstance(v, dict) and "ms_per_matrix" in v
              and v["max_abs_err_over_smax"] <= 1e-12}
        names = [min(ok, key=lambda k: ok[k]["ms_per_matrix"])] if ok else ["None"]
    else:
        names = a.stage_drivers.split(",")
    res["stage"] = {}
    for name in names:
        drv = None if name == "None" else name
        out = root / f"stage_{name}"
        out.mkdir()
        sync(device)
        t0 = time.perf_counter()
        tables = M.run([str(p) for p in paths], str(out / "measure.csv"), str(out / "spectra.csv"), str(out / "measure.md"),
                       device="auto" if not a.smoke else "cpu", svd_driver=drv, **cfg)
        sync(device)
        dt = time.perf_counter() - t0
        res["stage"][name] = {"seconds": dt, "rows": int(len(tables)),
                              "matrices": int(tables.drop_duplicates(["source", "tensor", "step"]).shape[0])}
        print(f"stage with driver {name}: {dt:.1f} s, {res['stage'][name]['matrices']} matrices", file=sys.stderr, flush=True)
        save()
    res["target_s"] = 60.0
    best = min(res["stage"].values(), key=lambda r: r["seconds"])
    res["meets_target"] = best["seconds"] <= 60.0
    # the GPU against the CPU float64 path on a subset: real matrices of every shape and the synthetic ones
    real = M.load_captures([str(p) for p in paths], max_per_file=24)
    by_shape: dict = {}
    for it in real:
        by_shape.setdefault(tuple(it["x"].shape), []).append(it)
    items = [v[0] for v in by_shape.values()] + [v[1] for v in by_shape.values() if len(v) > 1]
    synth = M.synthetic_like([tuple(it["x"].shape) for it in real], 0)
    items = (items + synth)[:a.check_items] if a.smoke else items + [s for s in synth if s["x"].shape[0] <= 768][:4]
    kw = dict(topk=M.TOPK, cond_topk=M.COND_TOPK, chunk=64)
    t0 = time.perf_counter()
    ref = M.measure(items, device="cpu", workers=0, **kw)
    t_cpu = time.perf_counter() - t0
    if device.type == "cuda":
        drv = None if names[0] == "None" else names[0]
        t0 = time.perf_counter()
        new = M.measure(items, device="cuda", svd_driver=drv, **kw)
        t_gpu = time.perf_counter() - t0
        res["check"] = {"items": len(items), "cpu_s": t_cpu, "gpu_s": t_gpu, "driver": names[0], **compare(new, ref)}
    else:
        res["check"] = {"items": len(items), "cpu_s": t_cpu}
    print(json.dumps(res["check"]), file=sys.stderr, flush=True)
    save()
    print(f"DisTrO measure stage: {best['seconds']:.1f} s (target <= 60 s): {'met' if res['meets_target'] else 'missed'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
