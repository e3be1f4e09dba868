"""The fraction of its GPU a run had: sampled while it trains, recorded as `gpu_share` in metrics.json.

Several runs can share one GPU (`snakemake --resources gpu_mem_mb=N` lets as many run as its memory
allows). Counted as GPUs held x wall time, each of them would count the whole GPU: six nGPT runs, four at a
time on one H200, reported 0.311 GPU-h for 0.107 h of the GPU. So every rank samples, every
`SAMPLE_EVERY_S` seconds of training, how many processes hold a compute context on its device, through
NVML (the driver's library, `libnvidia-ml.so.1`, read with ctypes: no package, no nvidia-smi), and counts
`own / max(listed, own)` of the device for the time until the next sample (own: the ranks of this run on
the device, more than one only under TRAINER_RANKS_SHARE_GPU=1). The time-weighted mean over the run is its
share; GPU-h by share = GPUs held x wall x share. Four runs side by side count a quarter each while they
overlap, so the runs' GPU-h by share add up to the time the GPU was busy.

What it does not see (docs/trainer.md): how hard each process works (a process that only holds a context
counts as much as a training run; MPS clients and MIG instances are not told apart), and time between two
samples (a neighbour that starts and ends between them). Where NVML cannot be read, or lists fewer
processes than this run has on the device (a container that hides them), the share is not measured:
`gpu_share` is null and the run counts its whole GPUs, as before.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Callable

SAMPLE_EVERY_S = 10.0
EVERY_ENV = "TRAINER_GPU_SHARE_EVERY_S"  # another sampling interval (the tests' short runs)
NVML_SUCCESS, NVML_ERROR_INSUFFICIENT_SIZE = 0, 7


def share_of(own: int, listed: int | None) -> float | None:
    """This run's fraction of a device on which NVML lists `listed` compute processes, `own` of them this
    run's; None when the listing cannot be trusted (unreadable, or fewer than this run's own)."""
    if listed is None or own < 1 or listed < own:
        return None
    return own / listed


class _ProcInfo(ctypes.Structure):  # nvmlProcessInfo_t of the _v2/_v3 calls
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class NvmlCounter:
    """Counts the compute processes NVML lists on one CUDA device (found by UUID, else PCI bus id).
    `why` says why it cannot count (then `count()` is None)."""

    def __init__(self, device_index: int):
        self.why, self.handle, self._fn = "", None, None
        try:
            import torch

            props = torch.cuda.get_device_properties(device_index)
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != NVML_SUCCESS:
                raise OSError("nvmlInit_v2 failed")
            handle = ctypes.c_void_p()
            ok = False
            uuid = str(getattr(props, "uuid", "") or "")
            if uuid:
                ok = lib.nvmlDeviceGetHandleByUUID(("GPU-" + uuid).encode() if not uuid.startswith(("GPU-", "MIG-"))
                                                   else uuid.encode(), ctypes.byref(handle)) == NVML_SUCCESS
            if not ok and hasattr(props, "pci_bus_id"):
                bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
                ok = lib.nvmlDeviceGetHandleByPciBusId_v2(bus.encode(), ctypes.byref(handle)) == NVML_SUCCESS
            if not ok:
                raise OSError(f"NVML does not know CUDA device {device_index} (uuid {uuid or '?'})")
            for name in ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2"):
                if hasattr(lib, name):
                    self._fn = getattr(lib, name)
                    break
            if self._fn is None:
                raise OSError("this NVML has no nvmlDeviceGetComputeRunningProcesses_v2/_v3")
            self.handle = handle
        except Exception as e:  # no driver library, a CPU-only torch, an old driver: not measured
            self.why = f"NVML unavailable ({type(e).__name__}: {e})"

    def count(self) -> int | None:
        if self._fn is None:
            return None
        n = ctypes.c_uint(0)
        for _ in range(4):  # processes may start between the two calls: ask again with more room
            arr = (_ProcInfo * max(1, n.value + 8))()
            n = ctypes.c_uint(len(arr))
            ret = self._fn(self.handle, ctypes.byref(n), arr)
            if ret == NVML_SUCCESS:
                return len({arr[i].pid for i in range(n.value)})
            if ret != NVML_ERROR_INSUFFICIENT_SIZE:
                self.why = f"nvmlDeviceGetComputeRunningProcesses returned {ret}"
                return None
        return None


class ShareMeter:
    """The time-weighted share of one rank's device over this process: each sample's share holds until the
    next sample (a sample NVML could not answer leaves that time unmeasured). `counter()` gives the
    processes listed on the device (None: unreadable). The mean stands for the whole wall time of the run,
    start-up included."""

    def __init__(self, own: int, counter: Callable[[], int | None], clock: Callable[[], float] = time.time,
                 every_s: float = SAMPLE_EVERY_S, why: str = ""):
        self.own, self.counter, self.clock, self.every_s = int(own), counter, clock, float(every_s)
        self.last_t: float | None = None
        self.last_share: float | None = None
        self.weighted = 0.0  # share x seconds, over the measured time
        self.measured_s = 0.0
        self.samples = 0  # samples that measured a share
        self.unmeasured = 0  # samples that could not
        self.max_listed = 0
        self.why = why

    def _close(self, now: float) -> None:
        if self.last_share is not None and self.last_t is not None:
            self.weighted += self.last_share * (now - self.last_t)
            self.measured_s += now - self.last_t
        self.last_t = now

    def sample(self) -> None:
        self._close(self.clock())
        listed = self.counter()
        s = share_of(self.own, listed)
        if s is None:
            self.unmeasured += 1
            if listed is not None and not self.why:
                self.why = f"NVML listed {listed} process(es) on the device, fewer than this run's {self.own}"
        else:
            self.samples += 1
            self.max_listed = max(self.max_listed, int(listed))
        self.last_share = s

    def maybe_sample(self) -> None:
        if self.last_t is None or self.clock() - self.last_t >= self.every_s:
            self.sample()

    def fraction(self) -> float | None:
        """The mean share over the measured time so far (None: nothing measured); closes the current interval."""
        if self.last_t is not None:
            self._close(self.clock())
        return self.weighted / self.measured_s if self.measured_s > 0 else None


def device_meter(device, own: int) -> ShareMeter | None:
    """A ShareMeter for a CUDA torch.device (None on CPU: CPU runs count no GPU-hours)."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    raw = os.environ.get(EVERY_ENV, "")
    try:
        every = float(raw) if raw else SAMPLE_EVERY_S
    except ValueError:
        every = -1.0
    if not every > 0:
        raise ValueError(f"{EVERY_ENV}={raw!r} is not allowed (seconds between samples, a number > 0)")
    c = NvmlCounter(device.index or 0)
    return ShareMeter(own, c.count, every_s=every, why=c.why)
