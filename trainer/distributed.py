"""Process group and device from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK).

One process (plain `python`, or torchrun with one process) needs no process group. Several use NCCL
when the device is CUDA and gloo on CPU. Device `auto` is CUDA when torch can use it, else CPU: a
node that sets CUDA_VISIBLE_DEVICES without a working CUDA (a fake-GPU Slurm node) falls back to
CPU cleanly.

More processes on a node than it has GPUs is an error, unless TRAINER_RANKS_SHARE_GPU=1 is set: then
local rank r uses GPU r % n and the group is gloo (NCCL refuses two ranks on one device). That runs a
data-parallel study on a machine with fewer GPUs than its ranks (two ranks on one H200): it measures
the optimizer and what each rank sends, not the network. `devices` counts the GPUs the world holds, so
a run's GPU-hours are not doubled by two ranks on one GPU.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


SHARE_ENV = "TRAINER_RANKS_SHARE_GPU"


class DeviceError(RuntimeError):
    pass


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    devices: int = 0  # GPUs (or CPU processes) the whole world holds; 0: one per rank
    ranks_on_device: int = 1  # this run's ranks on this rank's GPU (> 1 only under TRAINER_RANKS_SHARE_GPU=1)

    @property
    def devices_held(self) -> int:
        return self.devices or self.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def cuda_usable() -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return bool(torch.cuda.is_available()) and torch.cuda.device_count() > 0
    except Exception:  # a broken driver can raise instead of answering False
        return False


def resolve_device(pref: str) -> str:
    if pref == "cpu":
        return "cpu"
    ok = cuda_usable()
    if pref == "cuda" and not ok:
        raise DeviceError("runtime.device is 'cuda' but torch cannot use CUDA here "
                          f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    return "cuda" if ok else "cpu"


def share_requested() -> bool:
    v = os.environ.get(SHARE_ENV, "")
    if v not in ("", "0", "1"):
        raise DeviceError(f"{SHARE_ENV}={v!r} is not allowed (1: ranks may share a GPU, 0 or unset: they may not)")
    return v == "1"


def placement(local_rank: int, local_world: int, n_devices: int, share: bool) -> tuple[int, int]:
    """(the CUDA device index of this local rank, how many local ranks share each device at most)."""
    if local_world <= n_devices:
        return local_rank, 1
    if not share:
        raise DeviceError(f"{local_world} processes on this node but only {n_devices} CUDA device(s) visible "
                          f"(LOCAL_RANK {local_rank}); set {SHARE_ENV}=1 to run several ranks on one GPU "
                          "(gloo: measures the optimizer, not the network)")
    return local_rank % n_devices, -(-local_world // n_devices)


def setup(device_pref: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    kind = resolve_device(device_pref)
    per_device, on_device = 1, 1
    if kind == "cuda":
        n_dev = torch.cuda.device_count()
        index, per_device = placement(local_rank, local_world, n_dev, share_requested())
        on_device = sum(1 for r in range(local_world) if r % n_dev == index) if per_device > 1 else 1
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = None
    if world > 1:
        backend = "nccl" if kind == "cuda" and per_device == 1 else "gloo"
        if not dist.is_initialized():
            if backend == "nccl":
                dist.init_process_group(backend=backend, device_id=device)
            else:
                dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend,
                    devices=-(-world // per_device), ranks_on_device=on_device)


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_sum_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.is_distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.is_distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj, info: DistInfo):
    if not info.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def all_reduce_grads(params: list[torch.nn.Parameter], info: DistInfo, bucket_bytes: int = 256 << 20) -> None:
    """Sum gradients over ranks in flat buckets (deterministic order; no DDP hooks)."""
    if not info.is_distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0

    def flush():
        if not bucket:
            return
        if len(bucket) == 1:
            dist.all_reduce(bucket[0], op=dist.ReduceOp.SUM)
        else:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            off = 0
            for g in bucket:
                n = g.numel()
                g.copy_(flat[off:off + n].view_as(g))
                off += n
        bucket.clear()

    for g in grads:
        if size + g.numel() * g.element_size() > bucket_bytes and bucket:
            flush()
            size = 0
        bucket.append(g)
        size += g.numel() * g.element_size()
    flush()


def cleanup(info: DistInfo) -> None:
    if info.is_distributed and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass
