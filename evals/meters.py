"""Peak memory of the measured work: CUDA's allocator peak on GPU, resident set on CPU."""

from __future__ import annotations

import ctypes
import resource
import sys
from pathlib import Path

import torch


def reset_peak(device: torch.device) -> None:
    """Forget the peak so far. On CPU (Linux) free the heap's slack first (glibc's malloc_trim)
    and reset the kernel's high-water mark, so the next peak is this work's own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_bytes(device: torch.device) -> int:
    """Peak bytes since the last `reset_peak`: allocated CUDA memory, or peak RSS on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    if sys.platform.startswith("linux"):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
