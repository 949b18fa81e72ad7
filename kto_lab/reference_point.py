"""KTO's reference point ``z_ref``, all of it in one place (Diffusion-KTO sec. 4.1; KTO, Ethayarajh et al. 2024,
sec. 4.2; DESIGN.md, "Reference point").

    z_ref = max(0, mean(err_ref - err_policy))   over a batch of *unrelated* pairs (x', c'), detached

The unrelated pairs are the batch's images under other samples' captions: the captions rolled by one position
inside the batch (KTO's convention), with their own noise and timestep, run through the policy and the reference
under ``no_grad``. With several processes each process's mean is averaged across processes *before* the clamp,
so every process uses the same ``z_ref``: TRL's ``KTOTrainer`` gathers every process's mean and averages the
gathered values before clamping; accelerate's ``reduce(t, "mean")`` used here is that mean. The options
(:data:`REFERENCE_POINTS`): ``unrelated`` (the paper), ``batch`` (the matched batch's own errors: no extra
forwards), ``none`` (``z_ref = 0``).

Here: the options, how many unrelated pairs (:func:`unrelated_pair_count`) and whose captions
(:func:`unrelated_cond`; a one-sample batch has no neighbour: :func:`needs_other_captions` says when its caller
must pass some, :func:`next_process_cond` gives the next process's), the cross-process mean
(:func:`cross_process_mean`) and the estimate (:func:`reference_point`). :func:`kto_lab.step.objective_step` runs
the forward passes (one reference forward for the matched and the unrelated samples) and calls these; the toy
and the SD trainer (and through it the synthetic world) both train through it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .cond import Cond, cond_batch_size, map_cond, roll_cond

Tensor = torch.Tensor

REFERENCE_POINTS = ("unrelated", "batch", "none")


def reference_point(
    err_policy: Tensor,
    err_ref: Tensor,
    reduce_mean: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """Reference point ``z_ref = max(0, mean(err_ref - err_policy))``, detached (sec. 4.1).

    The paper evaluates it on a batch of *unrelated* pairs (``(x', c')`` with the captions
    rolled by one position, KTO's convention): pass the errors of those forward passes.
    The cheaper variant passes the matched batch's own errors. ``reduce_mean`` averages the
    per-process mean across processes (e.g. ``lambda t: accelerator.reduce(t, "mean")``)
    *before* the clamp, so every rank uses the same ``z_ref``.

    Returns a 0-dim tensor in units of ``g`` (multiply by ``beta`` for reward units).
    """
    with torch.no_grad():
        z = (err_ref.detach().float() - err_policy.detach().float()).mean()
        if reduce_mean is not None:
            z = reduce_mean(z)
        return z.clamp_min(0.0)


def cross_process_mean(accelerator) -> Optional[Callable[[Tensor], Tensor]]:
    """The cross-process mean that :func:`reference_point` applies before the clamp: accelerate's mean over
    processes, or None on one process (nothing to average)."""
    if accelerator.num_processes <= 1:
        return None
    return lambda t: accelerator.reduce(t, "mean")


def unrelated_cond(cond: Cond, given: Cond = None) -> Cond:
    """The conditioning of the unrelated batch (sec. 4.1): ``given`` when the caller has other captions
    (the SD trainer with one sample per device: another process's, or the previous micro-batch's),
    else the batch's own rolled by one position (KTO's convention). A conditioned batch of one sample
    has no other caption to roll to: that is an error, not a silent matched-batch estimate."""
    if given is not None:
        return given
    if cond is not None and cond_batch_size(cond) < 2:
        raise ValueError(
            "reference_point='unrelated' pairs each sample with another sample's caption, but this batch has one "
            "sample: rolling would pair it with its own caption. Pass cond_unrelated (e.g. the previous "
            "micro-batch's conditioning), use a batch of at least 2, or reference_point='batch'."
        )
    return roll_cond(cond)


def unrelated_pair_count(batch_size: int, fraction: float) -> int:
    """How many unrelated pairs estimate z_ref: ``fraction`` of the batch, rounded, at least one."""
    return min(batch_size, max(1, round(fraction * batch_size)))


def needs_other_captions(objective_cfg, cond: Cond) -> bool:
    """Whether the step needs captions from outside the batch for its unrelated pairs: Diffusion-KTO with the
    paper's reference point on a conditioned batch of one sample (rolling would pair it with its own caption)."""
    return (objective_cfg.objective == "kto" and objective_cfg.reference_point == "unrelated"
            and cond_batch_size(cond) == 1)


def next_process_cond(cond: Cond, accelerator) -> Cond:
    """A one-sample batch's unrelated captions with several processes: the next process's (every process gathers
    the same global batch and takes the row after its own)."""
    every = roll_cond(map_cond(lambda c: accelerator.gather(c.contiguous()), cond), shifts=-1)
    i = accelerator.process_index
    return map_cond(lambda c: c[i:i + 1], every)
