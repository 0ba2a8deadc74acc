"""Bytes kept by autograd, counted exactly with saved-tensor hooks, outside every timed region.

The hooks run Python for every tensor autograd saves: full backpropagation saves thousands
per gradient, the shortcut a handful, so timing a gradient under them would slow `full` far
more than the method under study (by 16-18% on the embedded model). `saved_bytes` therefore
measures on its own call, which callers make once per run configuration and never time.
"""

from __future__ import annotations

import copy
import weakref

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

    def __enter__(self) -> "SavedTensors":
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


def hooks_active() -> bool:
    """Whether saved-tensor hooks are installed right now (what a timed region must not have)."""
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
