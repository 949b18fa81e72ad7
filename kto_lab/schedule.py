"""The DDPM noise schedule and the forward (noising) process, shared by the toy and SD.

``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020; Diffusion-KTO sec. 3.1).
For SD the schedule is read from the pipeline's diffusers scheduler config
(:meth:`NoiseSchedule.from_diffusers`), so ``abar_t`` is bit-identical to what diffusers uses;
the toy builds one directly (tiny-diffusion style, ~50 steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

Tensor = torch.Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class NoiseSchedule:
    alphas_cumprod: Tensor  # (T,), float32
    prediction_type: str = "epsilon"

    def __post_init__(self):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}"
            )
        self.alphas_cumprod = self.alphas_cumprod.detach().float()
        self._on_device = {}  # device -> alphas_cumprod there: no host-to-device copy per step

    # --- construction -----------------------------------------------------------------
    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
        prediction_type: str = "epsilon",
    ) -> "NoiseSchedule":
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, 0).float(), prediction_type)

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
        prediction_type: str = "epsilon",
    ) -> "NoiseSchedule":
        """The Stable Diffusion 1.x/2.x schedule."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, 0).float(), prediction_type)

    @classmethod
    def from_diffusers(cls, scheduler) -> "NoiseSchedule":
        """Take ``alphas_cumprod`` and ``prediction_type`` from a diffusers scheduler."""
        return cls(
            torch.as_tensor(scheduler.alphas_cumprod).float(),
            scheduler.config.get("prediction_type", "epsilon"),
        )

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    # --- the forward process ------------------------------------------------------------
    def sample_timesteps(self, n: int, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``t ~ Uniform{0..T-1}`` (eq. 7)."""
        return torch.randint(0, self.num_timesteps, (n,), device=device, generator=generator)

    def _coefs(self, t: Tensor, like: Tensor):
        table = self._on_device.get(like.device)
        if table is None:
            table = self._on_device[like.device] = self.alphas_cumprod.to(like.device)
        abar = table[t].to(like.dtype)
        shape = (-1,) + (1,) * (like.dim() - 1)
        return abar.sqrt().view(shape), (1.0 - abar).sqrt().view(shape)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        a, s = self._coefs(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network predicts: eps, v = sqrt(abar) eps - sqrt(1-abar) x0, or x0."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            a, s = self._coefs(t, x0)
            return a * noise - s * x0
        return x0
