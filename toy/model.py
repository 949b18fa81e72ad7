"""The toy denoiser: a time-conditioned residual MLP in the style of tiny-diffusion.

Each input coordinate and the timestep get a sinusoidal embedding (the coordinates with a
large frequency scale, which is what makes 2-D diffusion sharp), then a few residual
``Linear -> GELU`` blocks predict the noise. An optional class input (CSFT's "good" = 1 /
"bad" = 0 label, the toy's stand-in for the caption prefix) is an embedding added after the
first layer; it is initialised to zero, so a model with a class input starts out computing
exactly the function of the pretrained unconditional model, and ``cond=None`` ignores it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

Tensor = torch.Tensor


class SinusoidalEmbedding(nn.Module):
    """``[sin(s x w_k), cos(s x w_k)]`` with geometric frequencies ``w_k`` (Vaswani et al.)."""

    def __init__(self, size: int, scale: float = 1.0):
        super().__init__()
        half = size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs * scale, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        arg = x.float().unsqueeze(-1) * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.act = nn.GELU()

    def forward(self, h: Tensor) -> Tensor:
        return h + self.act(self.linear(h))


class ToyDenoiser(nn.Module):
    """``eps_theta(x_t, t, class)`` for 2-D points; ``forward(x_t, t, cond=None)``.

    The signature matches :func:`kto_lab.step.objective_step`'s denoiser contract, so the
    module itself is the denoiser callable.
    """

    def __init__(self, hidden: int = 128, num_blocks: int = 3, emb_size: int = 64,
                 input_scale: float = 25.0, num_classes: int = 2):
        super().__init__()
        self.x_emb = SinusoidalEmbedding(emb_size, scale=input_scale)
        self.y_emb = SinusoidalEmbedding(emb_size, scale=input_scale)
        self.t_emb = SinusoidalEmbedding(emb_size)
        self.inp = nn.Sequential(nn.Linear(3 * (emb_size // 2) * 2, hidden), nn.GELU())
        self.class_emb = nn.Embedding(num_classes, hidden)
        nn.init.zeros_(self.class_emb.weight)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden) for _ in range(num_blocks)])
        self.out = nn.Linear(hidden, 2)

    def forward(self, x_t: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        h = torch.cat([self.x_emb(x_t[:, 0]), self.y_emb(x_t[:, 1]), self.t_emb(t)], dim=-1)
        h = self.inp(h)
        if cond is not None:
            h = h + self.class_emb(cond.long())
        return self.out(self.blocks(h))
