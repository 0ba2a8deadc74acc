"""Conditioning as a structure of tensors: one tensor (the prompt embeddings), or a mapping of
named tensors for models that take several (SDXL and SD3: prompt embeddings and pooled
embeddings). Every tensor has the batch as its first dimension; a batch of 1 is shared by the
whole batch. The prompt embeddings, the `primary` tensor, are what `wrt="cond"`
differentiates; the others stay fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

Cond = torch.Tensor | Mapping[str, torch.Tensor]
PRIMARY = "embeddings"


def _map(function: Callable[[torch.Tensor], torch.Tensor], cond: Cond) -> Cond:
    if isinstance(cond, torch.Tensor):
        return function(cond)
    return {name: function(tensor) for name, tensor in cond.items()}


def primary(cond: Cond) -> torch.Tensor:
    """The prompt embeddings: the tensor itself, or the mapping's `embeddings`."""
    return cond if isinstance(cond, torch.Tensor) else cond[PRIMARY]


def with_primary(cond: Cond, embeddings: torch.Tensor) -> Cond:
    """`cond` with its prompt embeddings replaced."""
    return embeddings if isinstance(cond, torch.Tensor) else {**cond, PRIMARY: embeddings}


def batch_size(cond: Cond) -> int:
    return primary(cond).shape[0]


def expand(cond: Cond, batch: int) -> Cond:
    """Every tensor broadcast to `batch` along its first dimension (a view where it is 1)."""
    return _map(lambda t: t if t.shape[0] == batch else t.expand(batch, *t.shape[1:]), cond)


def cat(first: Cond, second: Cond) -> Cond:
    """Concatenation along the batch, tensor by tensor."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, second])
    return {name: torch.cat([first[name], second[name]]) for name in first}


def repeat(cond: Cond, times: int) -> Cond:
    """The batch repeated `times` times (the batches of several states in one call)."""
    return _map(lambda t: t.repeat(times, *[1] * (t.dim() - 1)), cond)


def select(cond: Cond, index) -> Cond:
    """Rows `index` of every tensor (a batch of 1 stays as it is)."""
    return _map(lambda t: t if t.shape[0] == 1 else t[index], cond)


def detach(cond: Cond, differentiate: bool = False) -> Cond:
    """Detached leaves; the prompt embeddings require grad when `differentiate`."""
    detached = _map(lambda t: t.detach(), cond)
    primary(detached).requires_grad_(differentiate)
    return detached


def to(cond: Cond, *args, **kwargs) -> Cond:
    return _map(lambda t: t.to(*args, **kwargs), cond)
