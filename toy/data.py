"""The 2-D Gaussian world of Diffusion-KTO section 6.

Pretraining data ``N((0.5, 0.8), 0.04 I)``; desirable samples from ``P_d = N((0.3, 0.8), 0.01 I)``;
undesirable samples from ``P_u = N((0.3, 0.6), 0.01 I)`` (the numbers are variances, so the
standard deviations are 0.2 and 0.1). Binary feedback is a finite table of points with a
label (1 desirable, 0 undesirable), drawn once per seed, as a real feedback data set would be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Gaussian2D:
    """An isotropic 2-D Gaussian ``N(mean, var * I)``."""

    mean: Tuple[float, float]
    var: float

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        return torch.tensor(self.mean) + self.std * torch.randn(n, 2, generator=generator)

    def log_prob(self, x: Tensor) -> Tensor:
        """Per-point log-density, shape ``(n,)``."""
        d2 = (x - torch.tensor(self.mean, dtype=x.dtype)).pow(2).sum(-1)
        return -0.5 * d2 / self.var - math.log(2 * math.pi * self.var)


# Diffusion-KTO sec. 6.
PRETRAIN = Gaussian2D((0.5, 0.8), 0.04)
DESIRABLE = Gaussian2D((0.3, 0.8), 0.01)
UNDESIRABLE = Gaussian2D((0.3, 0.6), 0.01)


@dataclass
class FeedbackSet:
    """Per-sample binary feedback: points ``x`` (n, 2) and labels (n,) with 1 = desirable."""

    x: Tensor
    labels: Tensor

    @property
    def desirable(self) -> Tensor:
        return self.x[self.labels > 0]

    @property
    def undesirable(self) -> Tensor:
        return self.x[self.labels <= 0]


def make_feedback(n_desirable: int, n_undesirable: int, generator: Optional[torch.Generator] = None) -> FeedbackSet:
    """Draw a feedback table: ``n_desirable`` points of ``P_d``, ``n_undesirable`` of ``P_u``."""
    x = torch.cat([DESIRABLE.sample(n_desirable, generator), UNDESIRABLE.sample(n_undesirable, generator)])
    labels = torch.cat([torch.ones(n_desirable, dtype=torch.long), torch.zeros(n_undesirable, dtype=torch.long)])
    return FeedbackSet(x, labels)
