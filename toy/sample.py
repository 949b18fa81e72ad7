"""Ancestral DDPM sampling of the toy denoiser, vectorised over all points (Ho et al. 2020, alg. 2).

``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sigma_t z`` with the
posterior variance ``sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` and no noise at the
last step. The betas are recovered from :class:`kto_lab.schedule.NoiseSchedule`, the same
schedule the training step uses.
"""

from __future__ import annotations

from typing import Optional

import torch

from kto_lab.schedule import NoiseSchedule

Tensor = torch.Tensor


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    schedule: NoiseSchedule,
    n: int,
    *,
    cond: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Draw ``n`` points, shape ``(n, 2)``. ``cond``: class to sample with (CSFT: 1 = "good")."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")
    if schedule.prediction_type != "epsilon":
        raise ValueError(f"toy sampling supports prediction_type='epsilon', got {schedule.prediction_type!r}")
    abar = schedule.alphas_cumprod.double()
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    betas = 1.0 - abar / abar_prev
    var = betas * (1.0 - abar_prev) / (1.0 - abar)
    was_training = model.training
    model.eval()
    c = None if cond is None else torch.full((n,), int(cond), dtype=torch.long)
    x = torch.randn(n, 2, generator=generator)
    for t in reversed(range(schedule.num_timesteps)):
        eps = model(x, torch.full((n,), t, dtype=torch.long), c)
        mean = (x - (betas[t] / (1.0 - abar[t]).sqrt()).float() * eps) / (1.0 - betas[t]).sqrt().float()
        if t > 0:
            mean = mean + var[t].sqrt().float() * torch.randn(n, 2, generator=generator)
        x = mean
    model.train(was_training)
    return x
