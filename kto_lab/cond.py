"""A denoiser's conditioning, batch-first: ``None``, a tensor (class ids for the toy, text embeddings for SD
1.x/2.x), or a small structure of tensors, a tuple or a dict (SDXL: text states, pooled embedding and time ids).
The step and the reference point only ever map, roll and concatenate it, treating every part alike, so an
unrelated pair moves a caption's text, pooled embedding and time ids together."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import torch

Tensor = torch.Tensor
Cond = Union[None, Tensor, Tuple["Cond", ...], Dict[str, "Cond"]]  # batch-first conditioning


def map_cond(fn: Callable[..., Tensor], *conds: Cond) -> Cond:
    """Apply ``fn`` to the matching tensors of one or more conditionings of the same structure."""
    first = conds[0]
    if first is None:
        return None
    if isinstance(first, Tensor):
        return fn(*conds)
    if isinstance(first, dict):
        return {k: map_cond(fn, *(c[k] for c in conds)) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(map_cond(fn, *parts) for parts in zip(*conds))
    raise TypeError(f"cond must be None, a tensor, a tuple or a dict of tensors; got {type(first).__name__}")


def roll_cond(cond: Cond, shifts: int = 1) -> Cond:
    """Pair every sample with its neighbour's conditioning (every part rolled alike, dim 0)."""
    return map_cond(lambda c: torch.roll(c, shifts=shifts, dims=0), cond)


def cat_cond(*conds: Cond) -> Cond:
    """Concatenate conditionings along the batch (every part alike)."""
    return map_cond(lambda *cs: torch.cat(cs, dim=0), *conds)


def cond_batch_size(cond: Cond) -> Optional[int]:
    """The batch size of a conditioning (its first tensor's dim 0); None for ``None``."""
    if cond is None or isinstance(cond, Tensor):
        return None if cond is None else cond.shape[0]
    parts = cond.values() if isinstance(cond, dict) else cond
    return next((n for n in map(cond_batch_size, parts) if n is not None), None)
