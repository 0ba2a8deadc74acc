"""Seconds of a piece of work alone: the wall clock on a CPU; on a GPU, CUDA events recorded on
the device's current stream before and after the work and read once it has finished (the work's queued
kernels count, whatever the host did meanwhile). Nothing else runs between the two marks: no
meter, no hook, no logging."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def timed(call: Callable[[], T], device: torch.device | str = "cpu") -> tuple[float, T]:
    """(seconds, result) of `call()` on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        stream = torch.cuda.current_stream(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        result = call()
        end.record(stream)
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000, result
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result
