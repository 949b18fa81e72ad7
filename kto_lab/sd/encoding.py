"""From a batch to what :func:`kto_lab.step.objective_step` consumes, for any model family.

* :class:`BatchEncoder`: a batch dict (``kto_lab.sd.data``'s sources, the latent cache, a benchmark's tensors)
  -> :class:`StepInputs`: latents and the family's conditioning, the losers' too for pairs. The trainer and the
  implicit-reward evaluation both use it, so a step's inputs are made one way.
* :func:`encode_images`: pixels in [-1, 1] -> VAE latents ``(z - shift_factor) * scaling_factor`` (the ``x_0`` of
  latent diffusion, Diffusion-KTO sec. 3.1; SD3's and Flux's VAEs have a shift); :func:`sample_latents` draws
  them from cached posterior moments.
* :func:`tokenize`, :func:`embed_input_ids`: the text towers' common steps.
* :func:`reference_denoiser`: a denoiser run with the model's LoRA adapters disabled (an exact, free reference for
  LoRA runs; ``DESIGN.md``); :func:`unwrap_model`, :func:`model_dtype`.

What differs between families (their text towers, conditioning and denoiser call) is in
:mod:`kto_lab.sd.families`; nothing here names a family.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..step import Cond, Denoiser

Tensor = torch.Tensor

LATENT_MODES = ("sample", "mode")


def tokenize(tokenizer, captions: Sequence[str], max_length: Optional[int] = None) -> Tensor:
    """Captions -> ``input_ids`` padded/truncated to ``max_length`` (default: the tokenizer's ``model_max_length``)."""
    return tokenizer(
        list(captions), padding="max_length", max_length=max_length or tokenizer.model_max_length,
        truncation=True, return_tensors="pt",
    ).input_ids


def embed_input_ids(text_encoder, input_ids: Tensor) -> Tensor:
    """``input_ids`` -> last hidden state of the text encoder (what SD's UNet cross-attends to)."""
    return text_encoder(input_ids.to(text_encoder.device), return_dict=False)[0]


def latent_scale(vae_config) -> Tuple[float, float]:
    """``(shift_factor, scaling_factor)`` of a VAE: the diffusion model's ``x_0 = (z - shift) * scale`` (SD3's
    VAE: 0.0609, 1.5305; SD's and SDXL's have no shift, 0)."""
    return float(getattr(vae_config, "shift_factor", None) or 0.0), float(vae_config.scaling_factor)


@torch.no_grad()
def encode_images(vae, pixel_values: Tensor, mode: str = "sample", generator: Optional[torch.Generator] = None) -> Tensor:
    """Pixels ``(B, 3, H, W)`` in [-1, 1] -> latents ``(z - vae.config.shift_factor) * vae.config.scaling_factor``.

    ``mode="sample"`` draws from the VAE posterior (what diffusers' training scripts and the
    Diffusion-DPO/KTO code do); ``mode="mode"`` takes its mean (deterministic; used by caches
    that want one latent per image).
    """
    if mode not in LATENT_MODES:
        raise ValueError(f"encode_images: mode={mode!r}; choose one of {LATENT_MODES}")
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    dist = vae.encode(pixel_values).latent_dist
    latents = dist.sample(generator=generator) if mode == "sample" else dist.mode()
    shift, scale = latent_scale(vae.config)
    return (latents - shift) * scale if shift else latents * scale


def sample_latents(moments: Tensor, scaling_factor: float, mode: str = "sample",
                   generator: Optional[torch.Generator] = None, shift_factor: float = 0.0) -> Tensor:
    """VAE posterior moments (mean, logvar along channels) -> latents ``(z - shift_factor) * scaling_factor``
    (diffusers' ``DiagonalGaussianDistribution``: logvar clamped to [-30, 20]; only SD3's VAE has a shift)."""
    mean, logvar = torch.chunk(moments.float(), 2, dim=1)
    if mode == "mode":
        z = mean
    else:
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (z - shift_factor) * scaling_factor if shift_factor else z * scaling_factor


# --- a batch -> the step's inputs ---------------------------------------------------------


@dataclass
class StepInputs:
    """A batch as :func:`kto_lab.step.objective_step` takes it."""

    x0: Tensor  # latents (B, C, h, w), fp32
    cond: Cond  # the family's conditioning, batch-first
    x0_loser: Optional[Tensor] = None  # pairs (DPO): the losers' latents
    cond_loser: Cond = None  # the losers' conditioning where it differs from ``cond`` (their own geometry), else None


class BatchEncoder:
    """Turns a batch into :class:`StepInputs` for ``family``.

    Latents come from ``latents`` (ready), ``latent_moments`` (a cache's VAE posterior moments, sampled here)
    or ``pixel_values`` (encoded by ``vae``); the text part of the conditioning from the family's ``text_keys``
    (cached) or from each tower's token ids (encoded by ``text_encoders``); the conditioning adds the images'
    geometry (the family's ``image_keys``). A pair's losers have the same keys with the suffix ``_l``.
    Random draws (posterior samples) come from the ``generator`` of each call, in a fixed order: winners'
    latents, losers', then the text.
    """

    def __init__(self, family, *, device, resolution: int, latent_mode: str = "sample", vae=None,
                 text_encoders: Sequence = (), scaling_factor: Optional[float] = None, shift_factor: float = 0.0):
        self.family, self.device, self.resolution, self.latent_mode = family, device, resolution, latent_mode
        self.vae, self.text_encoders = vae, list(text_encoders)
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor  # of cached moments

    def latents(self, batch: Dict[str, Tensor], suffix: str = "",
                generator: Optional[torch.Generator] = None) -> Optional[Tensor]:
        """The images' latents ``x0`` (``suffix="_l"``: the losers', None when the batch has none)."""
        if "latents" + suffix in batch:
            return batch["latents" + suffix].to(self.device, torch.float32)
        if "latent_moments" + suffix in batch:
            if self.scaling_factor is None:
                raise ValueError("batch has latent_moments but no VAE scaling factor is known (no VAE, no manifest)")
            return sample_latents(batch["latent_moments" + suffix].to(self.device), self.scaling_factor,
                                  self.latent_mode, generator, self.shift_factor)
        if "pixel_values" + suffix in batch:
            if self.vae is None:
                raise ValueError("batch has pixel_values but no VAE was loaded")
            return encode_images(self.vae, batch["pixel_values" + suffix], self.latent_mode, generator).float()
        if suffix:
            return None
        raise KeyError(f"batch needs latents, latent_moments or pixel_values; got keys {sorted(batch)}")

    def text(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The text part of the conditioning: cached, or encoded from the token ids."""
        f = self.family
        if all(k in batch for k in f.text_keys):
            return {k: batch[k].to(self.device) for k in f.text_keys}
        ids = [t.ids_key for t in f.towers]
        if all(k in batch for k in ids):
            if not self.text_encoders or any(e is None for e in self.text_encoders):
                raise ValueError(f"batch has {ids} but no text encoder was loaded")
            with torch.no_grad():
                return f.encode_ids(self.text_encoders, {k: batch[k].to(self.device) for k in ids})
        raise KeyError(f"batch needs {list(f.text_keys)} or {ids}; got keys {sorted(batch)}")

    def cond(self, batch: Dict[str, Tensor], text: Dict[str, Tensor], suffix: str = ""):
        """The family's conditioning of the images ``suffix`` ("" or the losers' "_l") of ``batch``."""
        keys = [k + suffix for k in self.family.image_keys]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"batch needs the images' geometry {missing} ({self.family.name}); got keys {sorted(batch)}")
        geometry = {k: batch[k + suffix].to(self.device) for k in self.family.image_keys}
        return self.family.cond(text, geometry, self.resolution)

    def __call__(self, batch: Dict[str, Tensor], generator: Optional[torch.Generator] = None) -> StepInputs:
        x0 = self.latents(batch, generator=generator)
        x0_loser = self.latents(batch, "_l", generator)
        text = self.text(batch)
        cond = self.cond(batch, text)
        # losers share their winner's caption; only per-image geometry can make their conditioning differ
        cond_loser = self.cond(batch, text, "_l") if x0_loser is not None and self.family.image_keys else None
        return StepInputs(x0, cond, x0_loser, cond_loser)


# --- LoRA reference, wrappers ---------------------------------------------------------------


@contextmanager
def adapters_disabled(model):
    """Run ``model`` as its base model: LoRA adapters off inside the block, back on after."""
    base = unwrap_model(model)
    base.disable_adapters()
    try:
        yield model
    finally:
        base.enable_adapters()


def reference_denoiser(model, policy: Denoiser) -> Denoiser:
    """The reference for a LoRA run: the policy denoiser ``policy`` (which calls ``model``) with ``model``'s adapters
    disabled (exact)."""

    def denoise(x_t: Tensor, t: Tensor, cond) -> Tensor:
        with adapters_disabled(model):
            return policy(x_t, t, cond)

    return denoise


def unwrap_model(model):
    """The bare module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_dtype(model) -> torch.dtype:
    """The dtype of ``model``'s weights (under DDP / torch.compile wrappers): what a family casts its inputs to."""
    base = unwrap_model(model)
    dtype = getattr(base, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(base.parameters()).dtype
