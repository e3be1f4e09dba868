"""One training run: setup, the loop, evaluation, divergence, preemption, records.

Step numbering: step s (1-based) is the s-th optimizer update; "val loss at step s" is measured after
s updates; step 0 is the initial model (evaluated on fresh starts, written as a history row with only
val_loss). The lr of update s is group["initial_lr"] * lr_scale(s - 1).

Per step: the global batch of (seed, step) is cut into this rank's micro-batches; each micro-batch's
mean loss is divided by the number of micro-batches in the whole global batch (accumulation x world
size) before backward; gradients are summed over ranks (flat buckets, no DDP hooks); so the update is
that of the mean loss over the global batch whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainer import checkpoint as ckpt
from trainer import data as data_mod
from trainer import determinism
from trainer import distributed as dist_mod
from trainer import gpu_share
from trainer.models import build_model, step_hook
from trainer.progress import LineStream
from trainer.records import HISTORY_COLUMNS, write_csv, write_json
from trainer.runlock import RunLock
from trainer.spec import RunSpec, SpecError
from trainer.tracking import Tracker, TrackingError, wandb_available
from trainer.version import TRAINER_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMING_SKIP_STEPS = 2  # steps of each process start left out of tokens_per_s (compile, warm-up)


def lr_scale(step0: int, steps: int, warmup_steps: int, cooldown_frac: float) -> float:
    """Multiplier of initial_lr for update index step0 (0-based): linear warmup from 1/warmup to 1
    over `warmup_steps`, constant, then a linear cooldown over the last round(cooldown_frac * steps)
    updates down to 1/cooldown_steps at the last update (never 0); the smaller factor wins where the
    two overlap."""
    s = 1.0
    if warmup_steps > 0 and step0 < warmup_steps:
        s = (step0 + 1) / warmup_steps
    cd = int(round(cooldown_frac * steps))
    if cd > 0 and step0 >= steps - cd:
        s = min(s, (steps - step0) / cd)
    return s


def eval_steps(spec: RunSpec) -> list[int]:
    steps = spec.training.steps
    e = set(spec.eval.at_steps) | {steps}
    if spec.eval.every > 0:
        e |= set(range(spec.eval.every, steps + 1, spec.eval.every))
    return sorted(e)


def fmt_key(x: float) -> str:
    return format(float(x), "g")


def code_versions(cls: str) -> dict:
    try:
        from optim.registry import ALGORITHM_VERSIONS

        ov = ALGORITHM_VERSIONS.get(cls)
    except ImportError:
        ov = None
    return {"optimizer": ov, "trainer": TRAINER_VERSION}


# --------------------------------------------------------------------------- provenance
def package_version() -> str | None:
    try:
        return importlib.metadata.version("muon-ablations")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        with open(REPO_ROOT / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
    except Exception:
        return None


def git_commit() -> str | None:
    """HEAD of the repository holding this code, '-dirty' appended when tracked files differ."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions(device: torch.device, data_checksum: str | None, model) -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
         "platform": platform.platform(), "trainer": TRAINER_VERSION}
    try:
        from optim.registry import ALGORITHM_VERSIONS

        v["optim"] = dict(ALGORITHM_VERSIONS)
    except ImportError:
        pass
    for pkg in ("wandb", "tqdm", "transformers"):
        try:
            v[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    if device.type == "cuda":
        v["cuda"] = torch.version.cuda
        v["gpu"] = torch.cuda.get_device_name(device)
    if data_checksum:
        v["data_checksum"] = data_checksum
    src = getattr(model, "source", None)
    if src:
        v["hf_model_path"] = src
    return v


# --------------------------------------------------------------------------- the session
@dataclass
class StepResult:
    loss: float
    grad_norm: float
    stop: bool
    diag: dict
    lr_scale: float
    opt_ms: float | None = None


class Session:
    """Model, optimizer, data and the step function of one run, on this process."""

    def __init__(self, spec: RunSpec, info: dist_mod.DistInfo, log: Callable[[str], None] = print,
                 dataset: data_mod.Dataset | None = None):
        self.spec, self.info, self.log = spec, info, log
        t = spec.training
        world = info.world_size
        if t.global_batch % (t.micro_batch * world) != 0:
            raise SpecError([("training.micro_batch", t.micro_batch,
                              f"micro_batch x world size ({t.micro_batch} x {world}) must divide "
                              f"training.global_batch ({t.global_batch})")])
        self.accum = t.global_batch // (t.micro_batch * world)
        self.n_micro_total = t.global_batch // t.micro_batch
        self.device = info.device
        cuda = self.device.type == "cuda"
        dt = spec.runtime.dtype
        self.amp_dtype = torch.bfloat16 if (dt == "bfloat16" or (dt == "auto" and cuda)) else None
        c = spec.runtime.compile
        self.compile = bool(cuda) if c == "auto" else bool(c)
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        # data
        self.data = dataset if dataset is not None else self._open_data()

        # model: init from the run seed only (the same for every optimizer arm)
        torch.manual_seed(spec.seed)
        np.random.seed(spec.seed % 2**32)
        random.seed(spec.seed)
        m = spec.model
        model = build_model(m.arch, m.vocab_size, m.tie_embeddings, m.options, m.revision)
        if t.seq_len > model.block_size:
            raise SpecError([("training.seq_len", t.seq_len, f"at most the model's block size ({model.block_size})")])
        if self.data.vocab_hint is not None and self.data.vocab_hint > model.vocab_size:
            raise SpecError([("model.vocab_size", model.vocab_size,
                              f"at least the data's vocabulary ({self.data.vocab_hint})")])
        self.model = model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.n_params = sum(p.numel() for p in self.params)
        self.flops_per_token = float(self.model.flops_per_token(t.seq_len))

        # optimizer
        import optim

        o = spec.optimizer
        try:
            self.opt = optim.build_optimizer(self.model, cls=o.cls, muon_kwargs=dict(o.muon),
                                             adamw_kwargs=dict(o.adamw), adamw_patterns=list(o.adamw_patterns),
                                             seed=spec.seed)
        except (TypeError, ValueError) as e:
            raise SpecError([("optimizer", {"class": o.cls, "muon": o.muon, "adamw": o.adamw}, str(e))]) from None
        for g in self.opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.projection = step_hook(self.model, m.arch, t)  # the family's (nGPT: the sphere projection), else None
        # an optimizer that exchanges its own gradients (optim.DeMo): all-reduce only the others'
        own = self.opt.self_synced() if hasattr(self.opt, "self_synced") else set()
        self.reduce_params = [p for p in self.params if id(p) not in own]
        if own and t.grad_clip > 0:
            raise SpecError([("training.grad_clip", t.grad_clip, f"0 with optimizer.class {o.cls!r}: it exchanges "
                              "compressed gradients, so no rank ever holds the global gradient to clip")])
        self.capture = None  # trainer.capture.Capture, set by the run when the spec asks for captures
        self.gpu_meter = gpu_share.device_meter(info.device, info.ranks_on_device)  # None on CPU

        self.fwd = torch.compile(self.model, dynamic=False) if self.compile else self.model

        # validation set: evenly spaced windows, independent of the seed
        n_val = spec.eval.batches * t.global_batch
        vidx = data_mod.val_indices(n_val, self.data.val.n_windows)
        self.val_idx = vidx[data_mod.rank_slice(n_val, info.rank, world)]
        self.n_val = n_val

    def _open_data(self) -> data_mod.Dataset:
        d = self.spec.data
        if d.kind == "stdlib" and not (Path(d.path) / "manifest.json").exists():
            if self.info.is_main:
                self.log(f"no stdlib corpus at {d.path}: building it from {sys.version.split()[0]}'s standard library")
                data_mod.build_stdlib_corpus(d.path)
            dist_mod.barrier(self.info)
        return data_mod.open_dataset(d.kind, self.spec.training.seq_len, path=d.path, train=d.train, val=d.val,
                                     verify=self.info.is_main, checksum=d.checksum)

    # ------------------------------------------------------------------ pieces
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, w: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        data_mod.check_vocab(w, self.model.vocab_size, "data")
        t = torch.from_numpy(w)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        return t[:, :-1], t[:, 1:]

    def micro_batches(self, step0: int):
        t = self.spec.training
        idx = data_mod.train_indices(self.spec.seed, step0, t.global_batch, self.data.train.n_windows)
        mine = idx[data_mod.rank_slice(t.global_batch, self.info.rank, self.info.world_size)]
        for m in range(self.accum):
            yield self._to_device(self.data.train.windows(mine[m * t.micro_batch:(m + 1) * t.micro_batch]))

    def set_lr(self, step0: int) -> float:
        t = self.spec.training
        s = lr_scale(step0, t.steps, t.warmup_steps, t.cooldown_frac)
        for g in self.opt.param_groups:
            g["lr"] = g["initial_lr"] * s
        return s

    def train_step(self, step0: int, stop_requested: bool = False, time_optimizer: bool = False) -> StepResult:
        """Update index step0 (0-based). Returns the global-batch mean train loss, the gradient norm
        (all parameters, before clipping), whether any rank asked to stop, and the optimizer's
        diagnostics. Syncs with the device once (to read the loss)."""
        scale = self.set_lr(step0)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for x, y in self.micro_batches(step0):
            with self.autocast():
                loss = self.fwd(x, y)
            (loss / self.n_micro_total).backward()
            loss_sum += loss.detach().float()
        dist_mod.all_reduce_grads(self.reduce_params, self.info)
        if self.capture is not None:
            self.capture.after_grads(step0 + 1)
        grads = [p.grad for p in self.params if p.grad is not None]
        clip = self.spec.training.grad_clip
        if clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            gn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2)), 2)
        ev = None
        if time_optimizer and self.device.type == "cuda":
            ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            ev[0].record()
        self.opt.step()
        if ev is not None:
            ev[1].record()
        wdev = self.projection.after_step(step0 + 1) if self.projection is not None else None
        if self.capture is not None:
            self.capture.after_step(step0 + 1)
        self.opt.zero_grad(set_to_none=True)
        red = torch.stack([loss_sum / self.accum,
                           torch.tensor(1.0 if stop_requested else 0.0, device=self.device)])
        dist_mod.all_reduce_sum_(red, self.info)
        loss_v, stop_v, gn_v = torch.cat([red, gn.detach().float().reshape(1)]).tolist()
        diag = self.opt.diagnostics
        if wdev is not None:  # the device is synced already (tolist above)
            diag = {**diag, "weight_norm_dev": float(wdev)}
        opt_ms = ev[0].elapsed_time(ev[1]) if ev is not None else None
        return StepResult(loss=loss_v / self.info.world_size, grad_norm=gn_v, stop=stop_v > 0, diag=diag,
                          lr_scale=scale, opt_ms=opt_ms)

    def comm_bytes(self) -> dict:
        """Payload bytes per rank per step (optim.MuonWithAdamW.communication); None on one process."""
        if self.info.is_distributed and hasattr(self.opt, "communication"):
            return self.opt.communication()
        return {"bytes_sent_per_step": None, "allreduce_bytes_per_step": None}

    @torch.no_grad()
    def check_replicas(self) -> None:
        """Raise unless every rank holds the same parameters (compares per-tensor float64 sums and sums
        of squares exactly; a no-op on one process)."""
        if not self.info.is_distributed:
            return
        import torch.distributed as tdist

        local = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()]) for p in self.params])
        parts = [torch.empty_like(local) for _ in range(self.info.world_size)]
        tdist.all_gather(parts, local)
        bad = [r for r in range(1, self.info.world_size) if not torch.equal(parts[r], parts[0])]
        if bad:
            raise RuntimeError(f"parameters differ between rank 0 and rank(s) {bad}: replicas diverged")
        self.log(f"parameters identical on all {self.info.world_size} ranks")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows (all ranks together)."""
        mb = self.spec.training.micro_batch
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for i in range(0, len(self.val_idx), mb):
            x, y = self._to_device(self.data.val.windows(self.val_idx[i:i + mb]))
            with self.autocast():
                loss = self.fwd(x, y)
            total += loss.double() * x.size(0)
        dist_mod.all_reduce_sum_(total, self.info)
        return float(total.item()) / self.n_val


# --------------------------------------------------------------------------- the run
class _Log:
    def __init__(self, is_main: bool):
        self.is_main = is_main
        self.pbar = None

    def __call__(self, msg: str) -> None:
        if not self.is_main:
            return
        line = f"[train {time.strftime('%H:%M:%S')}] {msg}"
        if self.pbar is not None:
            self.pbar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)


def _summarise(history: list[dict]) -> dict:
    def vals(key):
        return [r[key] for r in history if r.get(key) is not None and math.isfinite(r[key])]

    def mean(key):
        v = vals(key)
        return sum(v) / len(v) if v else None

    er_min = vals("eff_rank_min")
    out = {"eff_rank_mean": mean("eff_rank_mean"), "eff_rank_min": min(er_min) if er_min else None,
           "noise_fraction_mean": mean("noise_fraction"), "eps_mean": mean("eps"),
           "update_rms_mean": mean("update_rms"), "grad_norm_mean": mean("grad_norm")}
    if vals("weight_norm_dev"):  # nGPT runs: drift of the weight norms before each projection
        out["weight_norm_dev_mean"] = mean("weight_norm_dev")
        out["weight_norm_dev_max"] = max(vals("weight_norm_dev"))
    if vals("bytes_sent_per_step"):  # several ranks: what each sent per step, and what an all-reduce would
        out.update({k: mean(k) for k in ("bytes_sent_per_step", "allreduce_bytes_per_step")})
    return out


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x


def _add_events(ckpt_dir: Path, info, log, reset: bool = False, **new) -> dict:
    """Keep what went wrong (checkpoint fallbacks, lost records) for the run's metrics.json, across restarts."""
    if not info.is_main:
        return {k: [] for k in ckpt.EVENT_KEYS}
    try:
        return ckpt.add_events(ckpt_dir, reset=reset, **new)
    except OSError as e:
        err = {"record": str(ckpt_dir / ckpt.EVENTS_NAME), "error": f"{type(e).__name__}: {e}"}
        log(f"warning: records lost: cannot write {err['record']} ({err['error']})")
        ev = ckpt.read_events(ckpt_dir) if not reset else {k: [] for k in ckpt.EVENT_KEYS}
        for k, v in new.items():
            ev[k].extend(v)
        ev["record_errors"].append(err)
        return ev


def _attach_rank_state(state: dict, ckpt_dir: Path, info, key: str, log, fallbacks: list) -> dict | None:
    """The resumed state with this rank's own optimizer state (DeMo's residuals; collective). When the rank
    files of latest.pt cannot be used, the consistent pair before it (previous.pt and its rank files) is
    tried, latest.pt is set aside as latest.pt.bad, and the fallback is recorded like an unreadable file's."""
    used = fallbacks[-1]["fallback"] if fallbacks else ckpt.CKPT_NAME
    attached, why = ckpt.attach_rank_state(state, ckpt_dir, info, key, log, used)
    if attached is not None or why == "world size" or used != ckpt.CKPT_NAME:
        if attached is None and why != "world size":
            log(f"warning: {why}: starting fresh")
            for ev in fallbacks:
                ev["fallback"] = "fresh start"
            fallbacks.append({"file": ckpt.CKPT_NAME if used == ckpt.CKPT_NAME else used, "size": None,
                              "error": why[:300], "fallback": "fresh start"})
        return attached
    ev = {"file": ckpt.CKPT_NAME, "size": None, "error": why[:300]}
    prev_path = ckpt.previous_of(ckpt_dir)
    try:
        prev = ckpt.read(prev_path) if prev_path.exists() else None
    except ckpt.CheckpointUnsafeError:
        raise
    except Exception:
        prev = None
    missing = torch.tensor([0.0 if prev is not None and prev.get("resume_key") == key else 1.0], device=info.device)
    dist_mod.all_reduce_max_(missing, info)
    attached = None
    if missing.item() == 0:
        attached, _ = ckpt.attach_rank_state(prev, ckpt_dir, info, key, log, ckpt.PREVIOUS_NAME)
    ev["fallback"] = ckpt.PREVIOUS_NAME if attached is not None else "fresh start"
    log(f"warning: checkpoint {ckpt.path_of(ckpt_dir)}: {why}: falling back to {ev['fallback']}")
    if info.is_main:  # never rotated into previous.pt by the next save
        try:
            os.replace(ckpt.path_of(ckpt_dir), ckpt.path_of(ckpt_dir).with_name(ckpt.CKPT_NAME + ckpt.BAD_SUFFIX))
        except OSError:
            pass
    fallbacks.append(ev)
    return attached


def run(spec: RunSpec, out_dir: str | os.PathLike, ckpt_dir: str | os.PathLike, hold_signals: bool = False) -> int:
    """Train; write spec.json, history.csv and metrics.json (last) into out_dir. Returns the exit code:
    0 for ok and diverged, PREEMPTED_EXIT_CODE after a preemption signal (checkpoint saved).

    hold_signals (the command line, which exits right after): once the records are complete the signal
    handlers stay, and a SIGTERM/SIGINT/SIGUSR1 until the process ends exits 0 instead of -15. With the
    default handlers back, a signal in that window killed a complete run, and Snakemake deleted it."""
    flag = ckpt.PreemptionFlag().install()
    info = None
    try:
        if spec.wandb.mode != "disabled" and spec.wandb.mode_given and not wandb_available():
            raise TrackingError(f"wandb.mode is {spec.wandb.mode!r} but the wandb package is not installed here; "
                                f"install it (pip install wandb) or set wandb.mode: disabled in the spec")
        determinism.configure(spec.runtime.deterministic)  # before the first CUDA call
        info = dist_mod.setup(spec.runtime.device)
        with RunLock(ckpt_dir) if info.is_main else contextlib.nullcontext():  # one writer per run
            return _run(spec, Path(out_dir), Path(ckpt_dir), info, flag)
    finally:
        if not (hold_signals and flag.finished):
            flag.restore()
        if info is not None:
            dist_mod.cleanup(info)


@dataclass
class RunState:
    """What a run carries from step to step and across a resume: the training part of its checkpoint."""

    step: int = 0  # optimizer steps done
    history: list = field(default_factory=list)  # history.csv's rows so far
    evals: dict = field(default_factory=dict)  # step -> validation loss
    ref_loss: float | None = None  # the first finite train loss (the divergence test's reference)
    wall_before: float = 0.0  # wall seconds of the earlier processes of this run
    # the earlier processes' GPU-seconds counted by share, and the part of them counted whole (not measured)
    gpu_s_by_share_before: float = 0.0
    gpu_s_unmeasured_before: float = 0.0
    share_samples_before: int = 0
    timed_tokens: int = 0  # tokens and seconds of the timed steps (tokens_per_s)
    timed_time: float = 0.0
    wandb_id: str | None = None

    @classmethod
    def from_checkpoint(cls, state: dict) -> "RunState":
        # a checkpoint from before the share was measured: its time counts whole GPUs, unmeasured
        held = float(state.get("devices_held") or state.get("world_size") or 1)
        whole = held * state["wall_time_s"]
        return cls(step=state["step"], history=state["history"], evals={int(k): v for k, v in state["evals"].items()},
                   ref_loss=state["ref_loss"], wall_before=state["wall_time_s"], timed_tokens=state["timed_tokens"],
                   timed_time=state["timed_time"], wandb_id=state.get("wandb_id"),
                   gpu_s_by_share_before=float(state.get("gpu_s_by_share", whole)),
                   gpu_s_unmeasured_before=float(state.get("gpu_s_unmeasured", whole)),
                   share_samples_before=int(state.get("share_samples", 0)))

    def checkpoint_part(self, wall_time_s: float, share: dict | None = None) -> dict:
        part = {"history": self.history, "evals": self.evals, "ref_loss": self.ref_loss, "wall_time_s": wall_time_s,
                "timed_tokens": self.timed_tokens, "timed_time": self.timed_time}
        if share is not None:
            part.update(gpu_s_by_share=share["gpu_s_by_share"], gpu_s_unmeasured=share["gpu_s_unmeasured"],
                        share_samples=share["samples"], devices_held=share["devices_held"])
        return part


def share_totals(sess: "Session", run: RunState, info: dist_mod.DistInfo, seconds: float) -> dict | None:
    """The run's GPU-seconds so far counted by share (collective on CUDA; None on CPU): this process's
    `seconds` at the ranks' measured shares (trainer/gpu_share.py), a rank that could not measure counting its
    whole GPU, plus the earlier processes'. Over the ranks, sum of share / (this run's ranks on its device)
    is the number of GPUs' worth the run held."""
    if info.device.type != "cuda":
        return None
    m = sess.gpu_meter
    f = m.fraction() if m is not None else None
    own = max(1, info.ranks_on_device)
    v = torch.tensor([(1.0 if f is None else f) / own, (1.0 if f is None else 0.0) / own,
                      float(m.samples if m is not None else 0)], dtype=torch.float64, device=info.device)
    dist_mod.all_reduce_sum_(v, info)
    gpus_by_share, gpus_unmeasured, samples = (float(x) for x in v.tolist())
    return {"gpu_s_by_share": run.gpu_s_by_share_before + gpus_by_share * seconds,
            "gpu_s_unmeasured": run.gpu_s_unmeasured_before + gpus_unmeasured * seconds,
            "samples": run.share_samples_before + int(samples), "devices_held": info.devices_held,
            "max_listed": m.max_listed if m is not None else 0, "why": (m.why if m is not None else "")}


def share_record(share: dict | None, wall: float, info: dist_mod.DistInfo) -> dict:
    """metrics.json's gpu_share (GPU-h by share / GPU-h held; null when nothing was measured) and
    gpu_share_source (how it was measured, or why not)."""
    if share is None:
        return {"gpu_share": None, "gpu_share_source": f"{info.device.type}: no GPU"}
    held_s = info.devices_held * wall
    if held_s <= 0:
        return {"gpu_share": None, "gpu_share_source": "no wall time"}
    unmeasured = share["gpu_s_unmeasured"] / held_s
    if share["samples"] == 0 or unmeasured >= 1 - 1e-9:
        return {"gpu_share": None, "gpu_share_source": "not measured: " + (share["why"] or "no NVML sample")
                + " (counted as whole GPUs)"}
    src = (f"NVML compute processes on the device, {share['samples']} samples over the ranks, up to "
           f"{share['max_listed']} process(es) listed on rank 0's device")
    if unmeasured > 1e-9:
        src += f"; {unmeasured:.0%} of the GPU time not measured, counted as whole GPUs"
    return {"gpu_share": share["gpu_s_by_share"] / held_s, "gpu_share_source": src}


def _resume(spec: RunSpec, sess: Session, ckpt_dir: Path, info: dist_mod.DistInfo, log: _Log, key: str) -> RunState:
    """The run's state from its checkpoint (model, optimizer and RNG loaded into the session) when one of this
    spec and code is there, else a fresh one; records the checkpoint fallbacks met on the way."""
    run = RunState()
    # RNG states stay CPU tensors; load_state_dict moves. Unreadable files fall back to the one before.
    state, fallbacks = ckpt.load(ckpt_dir, map_location="cpu", move_bad=info.is_main)
    for ev in fallbacks:
        log(f"warning: checkpoint {ckpt_dir / ev['file']} ({ev['size']} bytes) cannot be read ({ev['error']}): "
            f"falling back to {ev['fallback']}")
    if state is not None and getattr(sess.opt, "has_rank_local_state", False) and state.get("resume_key") == key:
        state = _attach_rank_state(state, ckpt_dir, info, key, log, fallbacks)
    if state is not None:
        if state.get("resume_key") != key:
            log(f"checkpoint {ckpt.path_of(ckpt_dir)} was written for a different spec or code (resume key "
                f"{state.get('resume_key')} != {key}, fingerprint {state.get('fingerprint')} vs {spec.fingerprint}): "
                f"not resuming; starting fresh")
        elif info.is_main and state.get("data_checksum") != sess.data.checksum:
            raise data_mod.DataError(
                f"the data changed since checkpoint {ckpt_dir} was written at step {state['step']} (data checksum "
                f"{str(state.get('data_checksum'))[:16]}... then, {sess.data.checksum[:16]}... now; "
                f"{sess.data.description}): resuming would train on other data. Restore the data, or delete "
                f"{ckpt_dir} to start this run over")
        else:
            sess.model.load_state_dict(state["model"])
            sess.opt.load_state_dict(state["optimizer"])
            ckpt.set_rng_state(state["rng"], info.device)
            run = RunState.from_checkpoint(state)
            src = ckpt_dir / fallbacks[-1]["fallback"] if fallbacks else ckpt.path_of(ckpt_dir)
            log(f"resuming from {src} at step {run.step} (world size then {state['world_size']}, "
                f"now {info.world_size})")
    for ev in fallbacks:
        ev["resumed_at_step"] = run.step
    _add_events(ckpt_dir, info, log, reset=run.step == 0, checkpoint_fallbacks=fallbacks)
    return run


class _Checkpointer:
    """Saves the run's checkpoint (every rank calls save; rank-local optimizer state first, then rank 0's file)."""

    def __init__(self, spec: RunSpec, sess: Session, ckpt_dir: Path, info: dist_mod.DistInfo, log: _Log, key: str,
                 run: RunState, tracker: Tracker, t_process: float):
        self.spec, self.sess, self.dir, self.info, self.log, self.key = spec, sess, ckpt_dir, info, log, key
        self.run, self.tracker, self.t_process = run, tracker, t_process
        self.rank_local = getattr(sess.opt, "has_rank_local_state", False)  # optim.DeMo: per-rank residuals
        self.previous_step = run.step  # the step previous.pt holds after the next save (its rank files are kept)

    def save(self, step: int, reason: str) -> None:
        sess, info, ckpt_dir, key = self.sess, self.info, self.dir, self.key
        seconds = time.time() - self.t_process
        wall = self.run.wall_before + seconds
        share = share_totals(sess, self.run, info, seconds)  # collective (every rank saves)
        settle = getattr(sess.opt, "settle_measurements", None)
        if settle is not None:  # on every rank: sharded rank measurements are all-gathered here
            settle()
        if self.rank_local:  # each rank's residual first; latest.pt (rank 0, below) then names the step
            if not info.is_main:
                ckpt.save_rank(ckpt_dir, info.rank, step, {"resume_key": key, "step": step,
                                                           "optimizer": sess.opt.state_dict()})
            dist_mod.barrier(info)
        if info.is_main:
            p = ckpt.save(ckpt_dir, {
                "resume_key": key, "fingerprint": self.spec.fingerprint, "step": step,
                "model": sess.model.state_dict(), "optimizer": sess.opt.state_dict(),
                "rng": ckpt.rng_state(info.device),
                **self.run.checkpoint_part(wall, share),
                "wandb_id": self.tracker.id, "world_size": info.world_size,
                "torch": torch.__version__, "data_checksum": sess.data.checksum,
                # the rank files this checkpoint goes with (a resume refuses any other)
                **({"rank_files": ckpt.rank_checksums(ckpt_dir, step, info.world_size)} if self.rank_local else {})})
            self.log(f"checkpoint at step {step} ({reason}): {p}")
            if self.rank_local:
                ckpt.prune_ranks(ckpt_dir, keep_steps=(step, self.previous_step))
                self.previous_step = step
        dist_mod.barrier(info)


def _progress_bar(spec: RunSpec, start: int, info: dist_mod.DistInfo, log: _Log):
    if not info.is_main:
        return None
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    pbar = tqdm(total=spec.training.steps, initial=start, file=sys.stderr if tty else LineStream(sys.stderr),
                desc=spec.run_id[-40:], unit="step", dynamic_ncols=tty, ncols=None if tty else 100,
                ascii=None if tty else True, mininterval=0.5 if tty else 30.0, disable=False)
    log.pbar = pbar
    return pbar


def _train(spec: RunSpec, sess: Session, run: RunState, tracker: Tracker, saver: _Checkpointer,
           flag: ckpt.PreemptionFlag, info: dist_mod.DistInfo, log: _Log) -> tuple[str, int | None, bool]:
    """The training loop from run.step to the last step: (status, diverged_step, preempted)."""
    t = spec.training
    start = run.step

    def do_eval(step: int) -> float:
        v = sess.evaluate()
        run.evals[step] = v
        log(f"step {step}: val_loss {v:.4f}")
        return v

    tokens_per_step = t.global_batch * t.seq_len
    esteps = set(eval_steps(spec))
    status, diverged_step, preempted = "ok", None, False
    pbar = _progress_bar(spec, start, info, log)
    try:
        if start == 0:
            v0 = do_eval(0)
            row0 = {c: None for c in HISTORY_COLUMNS}
            row0.update(step=0, val_loss=v0)
            run.history.append(row0)
            tracker.log({"val_loss": v0}, step=0)
        seg_steps = 0
        for step0 in range(start, t.steps):
            step = step0 + 1
            t0 = time.perf_counter()
            r = sess.train_step(step0, stop_requested=flag.requested)
            dt = time.perf_counter() - t0
            if sess.gpu_meter is not None:
                sess.gpu_meter.maybe_sample()  # every SAMPLE_EVERY_S: who else holds this GPU
            seg_steps += 1
            if seg_steps > TIMING_SKIP_STEPS or t.steps - start <= TIMING_SKIP_STEPS:
                run.timed_tokens += tokens_per_step
                run.timed_time += dt
            tps = tokens_per_step / dt if dt > 0 else None
            d = r.diag
            row = {"step": step, "train_loss": r.loss, "val_loss": None, "lr_scale": r.lr_scale,
                   "grad_norm": r.grad_norm, "update_rms": _num(d.get("update_rms")),
                   "eff_rank_mean": _num(d.get("eff_rank_mean")), "eff_rank_min": _num(d.get("eff_rank_min")),
                   "noise_fraction": _num(d.get("noise_fraction")), "eps": _num(d.get("eps_mean")),
                   "tokens_per_s": tps, "weight_norm_dev": _num(d.get("weight_norm_dev")), **sess.comm_bytes()}
            if run.ref_loss is None and math.isfinite(r.loss):
                run.ref_loss = r.loss
            bad = not math.isfinite(r.loss) or (run.ref_loss is not None and r.loss > t.divergence_factor
                                                 * run.ref_loss)
            if not bad and step in esteps:
                row["val_loss"] = do_eval(step)
                bad = not math.isfinite(row["val_loss"])
            run.history.append(row)
            run.step = step
            tracker.log(row, step=step)
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(loss=f"{r.loss:.4f}", tok_s=f"{tps:,.0f}" if tps else "-", refresh=False)
            if bad:
                status, diverged_step = "diverged", step
                log(f"diverged at step {step}: train loss {r.loss} (start {run.ref_loss}, limit "
                    f"{t.divergence_factor} x start){'' if row['val_loss'] is None else ', val loss ' + str(row['val_loss'])}")
                break
            if r.stop:
                preempted = True
                saver.save(step, f"preemption signal {flag.name() or 'on another rank'}")
                break
            if spec.checkpoint.every and step % spec.checkpoint.every == 0 and step < t.steps:
                saver.save(step, "periodic")
    finally:
        if pbar is not None:
            pbar.close()
            log.pbar = None
    return status, diverged_step, preempted


def _metrics(spec: RunSpec, spec_dict: dict, sess: Session, run: RunState, status: str, diverged_step: int | None,
             wall: float, tracker: Tracker, info: dist_mod.DistInfo, share: dict | None = None) -> dict[str, Any]:
    """metrics.json (docs/DESIGN.md), but for the events the caller adds."""
    steps = spec.training.steps
    finite = {s: v for s, v in run.evals.items() if v is not None and math.isfinite(v)}
    return {
        "status": status,
        "diverged_step": diverged_step,
        "final_val_loss": run.evals.get(steps) if status == "ok" else None,
        "best_val_loss": min(finite.values()) if finite else None,
        "val_loss_at": {str(s): finite[s] for s in spec.eval.at_steps if s in finite},
        "steps_to_loss": {fmt_key(x): next((s for s in sorted(finite) if finite[s] <= x), None)
                          for x in spec.eval.target_losses},
        "steps_completed": run.history[-1]["step"] if run.history else 0,
        "tokens_per_s": run.timed_tokens / run.timed_time if run.timed_time > 0 else None,
        "wall_time_s": wall,
        # GPUs held x wall time: two ranks sharing one GPU (TRAINER_RANKS_SHARE_GPU) count it once
        "gpu_hours": info.devices_held * wall / 3600.0 if info.device.type == "cuda" else 0.0,
        # the fraction of those GPUs the run had (other processes on them sampled by NVML): GPU-h by share =
        # gpu_hours x gpu_share; null where not measured (trainer/gpu_share.py)
        **share_record(share, wall, info),
        "world_size": info.world_size,
        "device": info.device.type,
        "backend": info.backend,
        "diagnostics": _summarise([r for r in run.history if r["step"] > 0]),
        "wandb": tracker.record(),
        "spec": spec_dict,
        "fingerprint": spec.fingerprint,
        "package_version": package_version(),
        "git_commit": git_commit(),
        "versions": library_versions(info.device, sess.data.checksum, sess.model),
    }


def _run(spec: RunSpec, out: Path, ckpt_dir: Path, info: dist_mod.DistInfo, flag: ckpt.PreemptionFlag) -> int:
    t_process = time.time()
    log = _Log(info.is_main)
    if out.resolve() == ckpt_dir.resolve():
        raise SpecError([("--checkpoint-dir", str(ckpt_dir), "a directory other than --out-dir")])
    spec_dict = spec.to_dict()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)  # a stale one must not look like this run's result
        write_json(out / "spec.json", spec_dict)
        for name in ckpt.clean_temporaries(ckpt_dir):  # safe: the run lock is ours
            log(f"removed {ckpt_dir / name}, left by a save that a kill interrupted")
    t = spec.training
    log(f"run {spec.run_id}: {spec.model.arch} with {spec.optimizer.cls} (arm {spec.optimizer.arm}, alpha "
        f"{fmt_key(spec.alpha)}), seed {spec.seed}, {t.steps} steps, fingerprint {spec.fingerprint}")
    sess = Session(spec, info, log)
    if spec.capture.steps:
        from trainer.capture import Capture

        sess.capture = Capture(spec.capture.steps, spec.capture.what, out, info.is_main, sess.model, sess.opt)
    log(f"device {info.device} x {info.world_size} ({info.backend or 'single process'}), "
        f"dtype {'bf16 autocast' if sess.amp_dtype else 'float32'}, compile {sess.compile}, deterministic "
        f"{spec.runtime.deterministic}; "
        f"{sess.n_params:,} parameters; global batch {t.global_batch} x {t.seq_len} tokens = "
        f"{sess.accum} micro-batch(es) of {t.micro_batch} per rank")
    log(f"data: {sess.data.description}; validation: {sess.n_val} fixed windows")
    asg = sess.opt.assignment
    log(f"optimizer split: {len(asg['muon'])} tensors to {spec.optimizer.cls}, {len(asg['adamw'])} to AdamW "
        f"({', '.join(asg['adamw'][:6])}{', ...' if len(asg['adamw']) > 6 else ''})")

    key = spec.resume_key(code_versions(spec.optimizer.cls))
    run = _resume(spec, sess, ckpt_dir, info, log, key)
    tracker = Tracker(spec.wandb, spec.run_id, spec_dict, info.is_main, resume_id=run.wandb_id, log=log)
    if tracker.active:
        log(f"wandb {tracker.mode}: run id {tracker.id}, dir {tracker.dir}")
    saver = _Checkpointer(spec, sess, ckpt_dir, info, log, key, run, tracker, t_process)
    status, diverged_step, preempted = _train(spec, sess, run, tracker, saver, flag, info, log)

    if preempted:
        if info.is_main:
            write_csv(out / "history.csv", HISTORY_COLUMNS, run.history)
        tracker.finish(exit_code=ckpt.PREEMPTED_EXIT_CODE, preempted=True)
        _add_events(ckpt_dir, info, log, record_errors=tracker.errors)
        log(f"preempted: exiting with code {ckpt.PREEMPTED_EXIT_CODE} so that the job is retried; the next start "
            f"resumes from the checkpoint")
        return ckpt.PREEMPTED_EXIT_CODE

    # ------------------------------------------------------------------ records
    sess.check_replicas()
    seconds = time.time() - t_process
    wall = run.wall_before + seconds
    share = share_totals(sess, run, info, seconds)  # collective
    metrics = _metrics(spec, spec_dict, sess, run, status, diverged_step, wall, tracker, info, share)
    tracker.summary(metrics)
    tracker.finish(exit_code=0)
    events = _add_events(ckpt_dir, info, log, record_errors=tracker.errors)
    metrics.update(events)  # record_errors, checkpoint_fallbacks: of every process of this run
    if spec.checkpoint.keep and status == "ok":
        saver.save(metrics["steps_completed"], "final (checkpoint.keep)")
    if info.is_main:
        # spec.json again: another invocation's refused job deletes the outputs it would have made (Snakemake
        # removes them before the job starts), the spec.json this run wrote at its start among them
        write_json(out / "spec.json", spec_dict)
        write_csv(out / "history.csv", HISTORY_COLUMNS, run.history)
        write_json(out / "metrics.json", metrics)  # last: its presence means the run is done
        if not spec.checkpoint.keep:
            ckpt.remove(ckpt_dir)
    dist_mod.barrier(info)
    flag.finished = True  # from here a signal cannot lose anything (run(hold_signals=True))
    log(f"done: status {status}, final val loss {metrics['final_val_loss']}, best {metrics['best_val_loss']}, "
        f"{metrics['tokens_per_s'] or 0:,.0f} tokens/s, {wall:.1f} s -> {out / 'metrics.json'}")
    return 0
