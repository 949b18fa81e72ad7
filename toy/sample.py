"""Sampling the toy denoiser, vectorised over all points, with the schedule it was trained on.

- DDPM (:class:`kto_lab.schedule.NoiseSchedule`): ancestral sampling (Ho et al. 2020, alg. 2),
  ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t) + sigma_t z`` with the
  posterior variance ``sigma_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` and no noise at the
  last step; the betas are recovered from the schedule the training step uses.
- Rectified flow (:class:`kto_lab.schedule.FlowMatchingSchedule`): the deterministic ODE
  ``dx/dt = v(x, t)`` integrated with Euler steps from ``t = 1`` (noise) to ``t = 0``,
  ``x <- x + (t_next - t) v``, on the schedule's (shifted) grid.
"""

from __future__ import annotations

from typing import Optional

import torch

from kto_lab.schedule import FlowMatchingSchedule, NoiseSchedule

Tensor = torch.Tensor


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    schedule: NoiseSchedule | FlowMatchingSchedule,
    n: int,
    *,
    cond: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    steps: Optional[int] = None,
) -> Tensor:
    """Draw ``n`` points, shape ``(n, 2)``. ``cond``: class to sample with (CSFT: 1 = "good").
    ``steps``: Euler steps of the flow sampler (default: the schedule's ``num_train_timesteps``);
    DDPM always walks its whole chain."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")
    flow = isinstance(schedule, FlowMatchingSchedule)
    if flow:
        timesteps = schedule.sampling_timesteps(schedule.num_train_timesteps if steps is None else steps)
    elif steps is not None:
        raise ValueError(f"steps={steps!r}: DDPM sampling walks the schedule's {schedule.num_timesteps} steps")
    elif schedule.prediction_type != "epsilon":
        raise ValueError(f"toy sampling supports prediction_type='epsilon', got {schedule.prediction_type!r}")
    was_training = model.training
    model.eval()
    c = None if cond is None else torch.full((n,), int(cond), dtype=torch.long)
    x = torch.randn(n, 2, generator=generator)
    if flow:
        x = _euler_ode(model, schedule, timesteps, x, c)
    else:
        x = _ddpm_ancestral(model, schedule, x, c, generator)
    model.train(was_training)
    return x


def _ddpm_ancestral(model, schedule: NoiseSchedule, x: Tensor, c: Optional[Tensor],
                    generator: Optional[torch.Generator]) -> Tensor:
    abar = schedule.alphas_cumprod.double()
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    betas = 1.0 - abar / abar_prev
    var = betas * (1.0 - abar_prev) / (1.0 - abar)
    n = x.shape[0]
    for t in reversed(range(schedule.num_timesteps)):
        eps = model(x, torch.full((n,), t, dtype=torch.long), c)
        mean = (x - (betas[t] / (1.0 - abar[t]).sqrt()).float() * eps) / (1.0 - betas[t]).sqrt().float()
        if t > 0:
            mean = mean + var[t].sqrt().float() * torch.randn(n, 2, generator=generator)
        x = mean
    return x


def _euler_ode(model, schedule: FlowMatchingSchedule, timesteps: Tensor, x: Tensor, c: Optional[Tensor]) -> Tensor:
    """``x <- x + (t_next - t) v(x, t)`` along ``timesteps`` (model units, from noise to clean)."""
    levels = timesteps / schedule.num_train_timesteps
    n = x.shape[0]
    for i in range(len(timesteps) - 1):
        v = model(x, torch.full((n,), float(timesteps[i])), c)
        x = x + float(levels[i + 1] - levels[i]) * v
    return x
