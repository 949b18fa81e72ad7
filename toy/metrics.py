"""Figure 6's numbers: where the samples land, how well they match P_d, how far the model moved.

- ``share_desirable`` / ``share_undesirable`` / ``share_elsewhere``: a point is in a source's
  region when it lies within 2 standard deviations (0.2) of that source's mean *and* is closer
  to it than to the other source's mean (the two 2-sigma discs overlap: the means are 0.2
  apart). Exact draws of P_d score about 0.75 / 0.16 / 0.10 (``reference_metrics``).
- ``logp_desirable`` / ``logp_undesirable``: mean log-density of the samples under P_d and P_u.
- ``energy_to_desirable``: the energy distance (Szekely & Rizzo) between the samples and fresh
  draws of P_d; 0 iff the distributions are equal, so lower is better.
- ``energy_to_pretrained``: the same, against the pretrained model's samples (how far the
  fine-tuned *distribution* moved); ``param_change``: ``||theta - theta_0|| / ||theta_0||``.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .data import DESIRABLE, UNDESIRABLE, Gaussian2D

Tensor = torch.Tensor

METRICS = (
    "share_desirable", "share_undesirable", "share_elsewhere",
    "logp_desirable", "logp_undesirable", "energy_to_desirable", "energy_to_pretrained", "param_change",
)
REGION_RADIUS_STD = 2.0


def energy_distance(x: Tensor, y: Tensor) -> float:
    """``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` with V-statistics (>= 0, 0 iff equal samples)."""
    x, y = x.double(), y.double()
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def _in_region(x: Tensor, src: Gaussian2D, other: Gaussian2D) -> Tensor:
    d_src = (x - torch.tensor(src.mean)).norm(dim=-1)
    d_other = (x - torch.tensor(other.mean)).norm(dim=-1)
    return (d_src <= REGION_RADIUS_STD * src.std) & (d_src < d_other)


def region_shares(x: Tensor) -> Dict[str, float]:
    des = _in_region(x, DESIRABLE, UNDESIRABLE)
    und = _in_region(x, UNDESIRABLE, DESIRABLE)
    return {
        "share_desirable": des.float().mean().item(),
        "share_undesirable": und.float().mean().item(),
        "share_elsewhere": (~(des | und)).float().mean().item(),
    }


def param_change(model: torch.nn.Module, reference: torch.nn.Module) -> float:
    num = sum((p.detach() - q.detach()).pow(2).sum() for p, q in zip(model.parameters(), reference.parameters()))
    den = sum(q.detach().pow(2).sum() for q in reference.parameters())
    return float((num / den).sqrt())


def sample_metrics(x: Tensor, desirable_draws: Tensor, pretrained_samples: Optional[Tensor] = None) -> Dict[str, float]:
    """Every sample-based metric of ``x`` (n, 2)."""
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{int((~torch.isfinite(x)).any(-1).sum())} of {len(x)} samples are not finite")
    m = region_shares(x)
    m["logp_desirable"] = DESIRABLE.log_prob(x).mean().item()
    m["logp_undesirable"] = UNDESIRABLE.log_prob(x).mean().item()
    m["energy_to_desirable"] = energy_distance(x, desirable_draws)
    if pretrained_samples is not None:
        m["energy_to_pretrained"] = energy_distance(x, pretrained_samples)
    return m
