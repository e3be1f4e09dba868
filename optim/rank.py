"""Effective rank (Roy & Vetterli 2007): exp of the Shannon entropy of the normalised singular values.

The trigger of the noise arms needs the exact spectrum of every momentum matrix every `rank_every`
steps. cuSOLVER's symmetric eigensolver decomposes one matrix at a time and is latency-bound (7.5 ms
per 768 x 768 on an H100, 0.43 s for GPT-124M's 72 matrices, and it does not overlap a GEMM load), so
the spectra are computed on the host instead, off the critical path (`HostRankPool`):

1. on the device, in float64: the smaller Gram matrix of each matrix (a few batched matmuls);
2. an asynchronous copy of the Gram stack into pinned host memory (side stream + event);
3. in a pool of host threads, one LAPACK `dsyevd` (numpy's `eigvalsh`) per matrix, each with a
   single BLAS thread (`openblas_set_num_threads_local(1)`), so that every matrix's value is computed
   the same way whatever the number of workers, the order or the timing: the values are deterministic;
4. the caller collects the result later (`RankJob.result()`, which waits if it is not ready yet).

Muon applies the result of the measurement taken at step k at step k + rank_every (docs/optim.md).
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

RANK_METHODS = ("svd", "gram")
WAITED_S = 0.0  # total seconds RankJob.result() waited for the host, process-wide
ENV_WORKERS = "OPTIM_RANK_WORKERS"


def default_workers() -> int:
    """OPTIM_RANK_WORKERS, else the usable cores less one (for the training thread), at most 16."""
    env = os.environ.get(ENV_WORKERS)
    if env:
        n = int(env)
        if n < 1:
            raise ValueError(f"{ENV_WORKERS}={env!r} is not allowed; use an int >= 1")
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1))


# ---------------------------------------------------------------------------- one BLAS thread per matrix
_blas_local = None
_blas_checked = False


def _openblas_local():
    """numpy's OpenBLAS `openblas_set_num_threads_local` (OpenBLAS >= 0.3.27), or None."""
    global _blas_local, _blas_checked
    if _blas_checked:
        return _blas_local
    _blas_checked = True
    here = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*.so*", ".dylibs/*openblas*", "../numpy.libs/*openblas*.dll"):
        for path in glob.glob(os.path.join(here, pattern)):
            try:
                fn = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local")
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            _blas_local = fn
            return fn
    return None


def _single_blas_thread() -> None:
    """Pool initializer: this thread's BLAS calls use one thread (deterministic, no oversubscription)."""
    fn = _openblas_local()
    if fn is not None:
        fn(1)


def blas_single_threaded() -> bool:
    """Whether the workers can pin their BLAS to one thread (else LAPACK may use its own threads)."""
    return _openblas_local() is not None


# ---------------------------------------------------------------------------- the arithmetic
def erank_from_gram_eigenvalues(lam: np.ndarray) -> float:
    """Effective rank from the eigenvalues of a Gram matrix (singular values squared), in float64."""
    s = np.sqrt(np.clip(np.asarray(lam, dtype=np.float64), 0.0, None))
    total = s.sum()
    if not total > 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.float32(np.exp(-np.dot(p, np.log(p)))))


def gram64(M: Tensor) -> Tensor:
    """The smaller Gram matrix of each matrix of (..., m, n), in float64 (on M's device)."""
    X = M.double()
    return X.mT @ X if X.size(-2) >= X.size(-1) else X @ X.mT


CHUNK = 2  # matrices per host task: fixed, so that the calls do not depend on the number of workers


def _erank_task(arr: np.ndarray, i: int, ready) -> list[float]:
    """Effective ranks of arr[i:i + CHUNK]: one batched eigvalsh (one LAPACK call per matrix, the GIL
    released throughout), so a worker needs the GIL a few times per chunk, not per matrix."""
    if ready is not None:
        ready.synchronize()  # the copy into pinned memory has finished (releases the GIL)
    lam = np.linalg.eigvalsh(arr[i : i + CHUNK])
    return [erank_from_gram_eigenvalues(x) for x in lam]


class RankJob:
    """Effective ranks of one stack, being computed on the host. `result()` waits: (B,) float32 CPU."""

    def __init__(self, futures=None, host=None, done: Tensor | None = None):
        self._futures = futures or []
        self._host = host  # keeps the pinned buffer alive until every task has read it
        self._done = done

    def ready(self) -> bool:
        return self._done is not None or all(f.done() for f in self._futures)

    def result(self) -> Tensor:
        global WAITED_S
        if self._done is None:
            t0 = time.perf_counter()
            vals = [x for f in self._futures for x in f.result()]
            WAITED_S += time.perf_counter() - t0  # how long the training thread was held up (benchmarks)
            self._done = torch.tensor(vals, dtype=torch.float32)
            self._futures, self._host = [], None
        return self._done


class HostRankPool:
    """Threads that compute effective ranks from float64 Gram matrices with host LAPACK."""

    def __init__(self, workers: int | None = None):
        self.workers = default_workers() if workers is None else int(workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="optim-rank", initializer=_single_blas_thread)
        self._streams: dict = {}
        # pinned host buffers by shape, each with the job that last used it: pinning hundreds of MB anew on
        # every rank step (cudaHostAlloc, ~340 MB at GPT-124M) costs more than the whole device side
        self._pinned: dict = {}
        self._slots: dict = {}  # id(buffer) -> its slot [buffer, job]

    def submit(self, M: Tensor) -> RankJob:
        """Start measuring the stack M (B, m, n): Gram on M's device now, eigenvalues on the host later."""
        if M.shape[0] == 0:
            return RankJob(done=torch.zeros(0, dtype=torch.float32))
        G = gram64(M)
        ready = None
        if G.is_cuda:
            dev = G.device
            side = self._streams.get(dev)
            if side is None:
                side = self._streams[dev] = torch.cuda.Stream(dev)
            host = self._pinned_buffer(G.shape, G.dtype)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                host.copy_(G, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(side)
            G.record_stream(side)
        else:
            host = G.contiguous()
        arr = host.numpy()
        futures = [self._pool.submit(_erank_task, arr, i, ready) for i in range(0, arr.shape[0], CHUNK)]
        job = RankJob(futures, host)
        if G.is_cuda:
            self._slots[id(host)][1] = job
        return job

    def _pinned_buffer(self, shape, dtype) -> Tensor:
        """A pinned buffer of this shape whose last job has finished reading it (else a new one)."""
        key = (tuple(shape), dtype)
        slots = self._pinned.setdefault(key, [])
        for slot in slots:
            if slot[1] is None or slot[1].ready():
                slot[1] = None
                return slot[0]
        host = torch.empty(shape, dtype=dtype, pin_memory=True)
        slot = [host, None]
        slots.append(slot)
        self._slots[id(host)] = slot
        return host

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


_default_pool: HostRankPool | None = None
_default_lock = threading.Lock()


def default_pool() -> HostRankPool:
    global _default_pool
    with _default_lock:
        if _default_pool is None:
            _default_pool = HostRankPool()
        return _default_pool


def _forget_pool_in_child() -> None:
    # A forked child has none of the parent's threads: the parent's pool would take jobs and never run them
    # (a DDP test forking its ranks hung here). The child makes its own pool when it first needs one.
    global _default_pool, _default_lock
    _default_pool, _default_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def set_default_workers(n: int) -> HostRankPool:
    """Replace the shared pool by one of n workers (operational: the values do not depend on n)."""
    global _default_pool
    with _default_lock:
        old, _default_pool = _default_pool, HostRankPool(n)
    if old is not None:
        old.shutdown()
    return _default_pool


def submit_effective_rank(M: Tensor, method: str = "gram") -> RankJob:
    """Start measuring the effective ranks of the stack M; 'svd' is computed at once (a reference)."""
    if method == "gram":
        return default_pool().submit(M)
    if method == "svd":
        return RankJob(done=effective_rank(M, "svd").cpu())
    raise ValueError(f"rank method={method!r} is not allowed; use one of {list(RANK_METHODS)}")


# ---------------------------------------------------------------------------- synchronous forms
def singular_values(M: Tensor, method: str = "gram") -> Tensor:
    """Singular values of each matrix of (..., m, n), descending, as float32.

    'gram': sqrt of the eigenvalues of the smaller Gram matrix, formed and decomposed in float64
            (absolute error about 1e-8 * s_max, so tiny singular values stay tiny), decomposed by
            LAPACK on the host as the deferred measurement does.
    'svd':  torch.linalg.svdvals in float32.
    """
    if method == "svd":
        return torch.linalg.svdvals(M.float())
    if method == "gram":
        G = gram64(M).cpu().numpy()
        lam = np.linalg.eigvalsh(G)
        s = np.sqrt(np.clip(lam[..., ::-1], 0.0, None))
        return torch.from_numpy(np.ascontiguousarray(s)).float().to(M.device)
    raise ValueError(f"rank method={method!r} is not allowed; use one of {list(RANK_METHODS)}")


def effective_rank(M: Tensor, method: str = "gram") -> Tensor:
    """Effective rank of a matrix or of each matrix of a stack (..., m, n), as float32.

    p_i = s_i / sum_j s_j over the singular values, erank = exp(-sum_i p_i log p_i) with 0 log 0 = 0,
    so it lies in [1, min(m, n)]; an all-zero matrix has effective rank 0 (it has no direction at all).
    'gram' gives the same values as the deferred measurement (submit_effective_rank), bit for bit.
    """
    if method == "gram":
        lead = M.shape[:-2]
        flat = M.reshape(-1, *M.shape[-2:])
        job = default_pool().submit(flat)
        return job.result().reshape(lead).to(M.device)
    s = singular_values(M, method).double()
    total = s.sum(dim=-1, keepdim=True)
    p = s / total.clamp(min=torch.finfo(s.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy)).float()
