"""How much larger are velocity errors' implicit rewards than epsilon errors'? Where SD3's beta range comes from.

    python benchmarks/flow_beta_scale.py            # seconds on a CPU

Diffusion-KTO's implicit reward is ``beta * g`` with ``g = err_ref - err_policy`` (DESIGN.md), so the beta that
makes a fine-tune's rewards a given size scales inversely with the size of ``g``. Velocity errors (SD3) and
epsilon errors (SD 1.5) of the same change to a model differ in size, and by how much depends on the noise
level. A closed form, for a model family that is exact on Gaussian data: per latent element, data
``x0 ~ N(m, 1)`` (SD latents are scaled to unit variance), ``x_t = a x0 + b eps``; the reference is the optimal
denoiser of ``m = 0``, the policy the optimal denoiser of ``m = delta`` (it prefers images shifted by delta).
Then, averaged over the noise ``eps``,

    E[g | x0, t] = w(t) * delta * (2 x0 - delta)      with
    w(t) = a^2 b^2 / (a^2 + b^2)^2  for epsilon errors   (DDPM: a^2 = abar, b^2 = 1 - abar, so abar (1 - abar))
    w(t) = b^2 / (a^2 + b^2)^2      for velocity errors  (rectified flow: a = 1 - t, b = t; velocity error =
                                                          epsilon error / a^2)

so the family changes only the weight ``w(t)``, averaged over the training timestep density: the ratio of
``E_t[w]`` between two families is the factor between their betas *under this model*. This script samples
each schedule's training timesteps with the library's own samplers (``kto_lab.schedule``) and prints
``E_t[w]`` and the ratios. It also does so for the 2-D toy's two schedules, where the beta sweeps of both
families were MEASURED to coincide (docs/toy.md, "Flow matching"): the model's prediction there is a check
of the model itself. Nothing here runs SD3: its useful beta is not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, Optional, Sequence

import torch

from kto_lab.schedule import FlowMatchingSchedule, NoiseSchedule


def epsilon_weight(schedule: NoiseSchedule, t: torch.Tensor) -> torch.Tensor:
    abar = schedule.alphas_cumprod[t].double()
    return abar * (1.0 - abar)


def velocity_weight(schedule: FlowMatchingSchedule, t: torch.Tensor) -> torch.Tensor:
    sigma = t.double() / schedule.num_train_timesteps
    a, b = 1.0 - sigma, sigma
    return b**2 / (a**2 + b**2) ** 2


SCHEDULES = {
    # name: (schedule, weight); the SD ones as their pipelines' scheduler configs give them
    "sd15_epsilon": (NoiseSchedule.scaled_linear(1000), epsilon_weight),  # SD 1.x/2.x and SDXL: scaled_linear
    "sd3_velocity": (FlowMatchingSchedule(shift=3.0), velocity_weight),  # SD3: logit-normal (0, 1), shift 3
    "toy_epsilon": (NoiseSchedule.linear(50, 1e-4, 0.2), epsilon_weight),  # toy/train.py ToyConfig defaults
    "toy_velocity": (FlowMatchingSchedule(num_train_timesteps=50, density="uniform"), velocity_weight),
}


def mean_weights(n: int = 1_000_000, seed: int = 0) -> Dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    return {name: float(weight(s, s.sample_timesteps(n, generator=g)).mean()) for name, (s, weight) in SCHEDULES.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000, help="timesteps drawn per schedule")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    w = mean_weights(args.samples, args.seed)
    out = {"mean_weight": w,
           "sd3_over_sd15": w["sd3_velocity"] / w["sd15_epsilon"],
           "toy_velocity_over_epsilon_predicted": w["toy_velocity"] / w["toy_epsilon"],
           "toy_velocity_over_epsilon_measured": 1.0}  # docs/toy.md: the two families' beta sweeps coincide
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
