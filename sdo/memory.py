"""Memory: bytes kept by autograd (counted exactly with saved-tensor hooks, outside every timed
region), the device's own peak and current use, and a run's budget.

The hooks run Python for every tensor autograd saves: full backpropagation saves thousands
per gradient, the shortcut a handful, so timing a gradient under them would slow `full` far
more than the method under study. `saved_bytes` therefore
measures on its own call, which callers make once per run configuration and never time.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import functools
import os
import resource
import sys
import weakref
from pathlib import Path

import torch


class _Held:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class SavedTensors:
    """Context manager tracking live and peak bytes of tensors saved for backward.

    Each storage counts once however many graph nodes or views hold it, and stops counting
    when the last of them is released (after backward, or when the graph is dropped). The
    count is independent of the allocator and the device; it includes weights saved by
    layers, which are held anyway.
    """

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._holders: dict[tuple, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> _Held:
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.device)
        if self._holders.get(key, 0) == 0:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._holders[key] = self._holders.get(key, 0) + 1
        held = _Held(tensor)
        weakref.finalize(held, self._release, key, storage.nbytes())
        return held

    @staticmethod
    def _unpack(held: _Held) -> torch.Tensor:
        return held.tensor

    def _release(self, key: tuple, nbytes: int) -> None:
        self._holders[key] -= 1
        if self._holders[key] == 0:
            del self._holders[key]
            self.live -= nbytes

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_bytes(estimator, problem, loss) -> int:
    """Peak bytes autograd holds during one gradient of `estimator` on `problem`, counted on a
    copy of the estimator so its random draws and kept trajectory stay as they were. Costs one
    gradient under the hooks; never call it inside a timed region."""
    probe = copy.deepcopy(estimator)
    with SavedTensors() as saved:
        probe(problem, loss)
    return saved.peak


_MEASURED: dict = {}


def measured_once(key: tuple, measure) -> int:
    """`measure()` the first time `key` is asked in this process, the remembered number after.
    For autograd's bytes, which depend on the graph and the shapes, not on the values: the seeds
    of one job share one measurement."""
    if key not in _MEASURED:
        _MEASURED[key] = measure()
    return _MEASURED[key]


def hooks_active() -> bool:
    """Whether saved-tensor hooks are installed right now (what a timed region must not have)."""
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


@functools.lru_cache(maxsize=1)
def default_budget_mb() -> int:
    """Half the memory available when first asked in this process (MemAvailable on Linux, else
    half the physical memory), in MiB: the budget a command takes when given none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2


def budget_bytes(mem_mb: int | None, device: torch.device | str = "cpu") -> int | None:
    """The budget in bytes: `mem_mb`, or where none is given the default budget on a CPU (the
    process's resident memory) and none on a GPU (whose allocator refuses past the card)."""
    if mem_mb is not None:
        return int(mem_mb) * 2**20
    return default_budget_mb() * 2**20 if torch.device(device).type == "cpu" else None


class OverBudget(MemoryError):
    """A run would not fit its memory budget: it ends as `out_of_memory` before allocating."""


def predicted_saved_bytes(estimator, problem, loss) -> int:
    """Autograd's bytes at the problem's batch B, predicted from gradients of its first one and
    two samples: s(1) + (B - 1) (s(2) - s(1)) (weights saved by layers count once, activations
    grow with the batch). Two gradients at batch 1 and 2, untimed."""
    batch = problem.latent.shape[0]
    one = saved_bytes(estimator, problem.subset(1), loss)
    if batch == 1:
        return one
    two = saved_bytes(estimator, problem.subset(2), loss)
    return one + (batch - 1) * max(two - one, 0)


def check_budget(estimator, problem, loss, budget_bytes: int, predicted: int | None = None) -> int:
    """The predicted autograd bytes of one gradient (`predicted` where already known); OverBudget
    when they and what the process (or the GPU) already holds exceed `budget_bytes`."""
    predicted = predicted_saved_bytes(estimator, problem, loss) if predicted is None else predicted
    used = used_bytes(problem.latent.device)
    if used + predicted > budget_bytes:
        raise OverBudget(
            f"a gradient of {estimator.name} at batch {problem.latent.shape[0]} would keep "
            f"{predicted / 2**20:.0f} MiB for autograd beside the {used / 2**20:.0f} MiB in use, over the budget of "
            f"{budget_bytes / 2**20:.0f} MiB (predicted from batches 1 and 2); lower the batch or raise the budget "
            "(mem_mb)"
        )
    return predicted


def _linux() -> bool:
    return sys.platform.startswith("linux")


def reset_peak(device: torch.device) -> None:
    """Forget the peak so far. On CPU (Linux) free the heap's slack first (glibc's malloc_trim)
    and reset the kernel's high-water mark, so the next peak is this work's own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    if _linux():
        _trim_heap()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _trim_heap() -> None:
    """Hand the heap's free slack back to the kernel (glibc's malloc_trim), so the resident set
    counts what is live, not what an earlier gradient freed."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def peak_bytes(device: torch.device) -> int:
    """Peak bytes since the last `reset_peak`: allocated CUDA memory, or peak RSS on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    if _linux():
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def used_bytes(device: torch.device) -> int:
    """Bytes in use now: memory held by live CUDA tensors (the caching allocator's free blocks,
    such as a probe gradient's, are reusable and do not count), or the resident set on CPU once
    the heap's free slack is returned (an earlier seed's freed graph is not in use)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if _linux():
        _trim_heap()
        return _status_kib("VmRSS") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


@contextlib.contextmanager
def enforce_budget(budget_bytes: int | None, device: torch.device):
    """Hold the process to `budget_bytes` while the block runs (None: no budget): on CPU (Linux)
    a soft limit on the data segment, so an allocation past it fails at once with the
    allocator's "can't allocate memory" instead of swelling into swap; on CUDA the caching
    allocator's per-process fraction of the GPU, so it raises OutOfMemoryError past it. Both
    are lifted afterwards (the CPU limit restored, the GPU fraction back to the whole card).
    OverBudget when the process already holds more."""
    if budget_bytes is None:
        yield
        return
    held = used_bytes(device) if device.type == "cuda" else (_status_kib("VmData") * 1024 if _linux() else 0)
    if held > budget_bytes:
        raise OverBudget(
            f"the process already holds {held / 2**20:.0f} MiB, over the budget of {budget_bytes / 2**20:.0f} MiB"
        )
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        return
    if not _linux():
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (budget_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
