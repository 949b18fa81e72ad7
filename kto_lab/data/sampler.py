"""Gamma sampling of binary feedback (Diffusion-KTO sec. 4.2 and appendix D.2).

Each training sample is drawn uniformly from the desirable set with probability ``gamma``
and uniformly from the undesirable set otherwise (paper: gamma = 0.8). Used by the toy and
the SD trainer alike. The sampler's state (its generator) goes into checkpoints, so a
resumed run draws the same indices as an uninterrupted one.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..config import ConfigError
from .tables import DataError


def check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0.0 < gamma <= 1.0):
        raise ConfigError(f"gamma={gamma!r} must be in (0, 1] (share of desirable samples; paper: 0.8)")
    return float(gamma)


def sampling_gamma(objective: str, gamma: float) -> float:
    """The gamma an objective samples with: 1 for ``sft`` (desirable records only, the paper's
    SFT baseline, sec. 5), the configured ``gamma`` for every other objective. The one place
    this rule lives; the toy and every SD source (tables and the latent cache) call it."""
    return 1.0 if objective == "sft" else gamma


def check_classes(labels: Sequence[int] | torch.Tensor, gamma: float, where: str = "") -> None:
    """Gamma sampling needs a desirable record, and an undesirable one when gamma < 1 (sec. 4.2);
    else a :class:`DataError` naming ``where`` (e.g. the table) and the class counts."""
    labels = torch.as_tensor(labels)
    n_desirable = int((labels > 0).sum())
    where = f"{where}: " if where else ""
    if n_desirable == 0:
        raise DataError(f"{where}no desirable record among {len(labels)}: gamma sampling needs at least one")
    if gamma < 1.0 and n_desirable == len(labels):
        raise DataError(f"{where}no undesirable record among {len(labels)} but gamma={gamma} < 1: "
                        "add undesirable records or set gamma=1")


class GammaSampler:
    """Draw record indices: desirable with probability ``gamma``, else undesirable."""

    def __init__(self, labels: Sequence[int] | torch.Tensor, gamma: float = 0.8, seed: int = 0):
        self.gamma = check_gamma(gamma)
        labels = torch.as_tensor(labels)
        check_classes(labels, self.gamma)
        self.desirable = torch.nonzero(labels > 0).flatten()
        self.undesirable = torch.nonzero(labels <= 0).flatten()
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, n: int) -> torch.Tensor:
        """``n`` indices into the record table (with replacement, as in the paper)."""
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        g = self.generator
        take_desirable = torch.rand(n, generator=g) < self.gamma
        d = self.desirable[torch.randint(len(self.desirable), (n,), generator=g)]
        if len(self.undesirable) == 0:
            return d
        u = self.undesirable[torch.randint(len(self.undesirable), (n,), generator=g)]
        return torch.where(take_desirable, d, u)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved draw sequence. Resuming continues the same run, so a different gamma is
        an error (start a new run from the saved weights to change it)."""
        saved = state.get("gamma", self.gamma)
        if saved != self.gamma:
            raise ConfigError(f"gamma={self.gamma} differs from the resumed checkpoint's gamma={saved}: "
                              "a resumed run continues the same run; start a new run from its weights instead")
        self.generator.set_state(state["generator"])
