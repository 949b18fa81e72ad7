"""From Stable Diffusion components to what :func:`kto_lab.step.objective_step` consumes.

* :func:`encode_prompts`: captions -> CLIP text embeddings (the UNet's ``encoder_hidden_states``).
* :func:`encode_images`: pixels in [-1, 1] -> VAE latents ``(z - shift_factor) * scaling_factor``
  (the ``x_0`` of latent diffusion, Diffusion-KTO sec. 3.1; only SD3's VAE has a shift).
* :func:`unet_denoiser` / :func:`transformer_denoiser` / :func:`reference_denoiser`: wrap a
  ``UNet2DConditionModel`` or SD3's ``SD3Transformer2DModel`` as a denoiser ``fn(x_t, t, cond) ->
  prediction``; the reference variant runs the same model with its LoRA adapters disabled (an exact,
  free reference for LoRA runs; ``DESIGN.md``).

These are used by the trainer, the latent cache and the evaluation (implicit-reward accuracy).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence, Tuple

import torch

from ..step import Denoiser

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


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, captions: Sequence[str], device=None) -> Tensor:
    """Captions -> ``encoder_hidden_states`` of shape ``(B, max_length, hidden)``, no grad.

    ``device``: where the result goes (default: the text encoder's device).
    """
    if isinstance(captions, str):
        raise TypeError("encode_prompts expects a sequence of captions, not a single string")
    hidden = embed_input_ids(text_encoder, tokenize(tokenizer, captions))
    return hidden if device is None else hidden.to(device)


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


def unet_denoiser(unet) -> Denoiser:
    """``UNet2DConditionModel`` -> ``fn(x_t, t, cond) -> prediction``.

    ``cond``: the ``encoder_hidden_states`` tensor (SD 1.x/2.x), or a dict of them plus the UNet's added
    conditions (SDXL: ``text_embeds``, ``time_ids``; see :mod:`kto_lab.sd.families`). Inputs are cast to
    the UNet's dtype (a bf16 reference takes fp32 latents), except ``time_ids``, which stay exact; the
    prediction keeps the UNet's dtype (errors are computed in fp32 by ``denoising_error``).
    """

    def denoise(x_t: Tensor, t: Tensor, cond) -> Tensor:
        dtype = _dtype_of(unet)
        if isinstance(cond, dict):
            added = {k: v if k == "time_ids" else v.to(dtype) for k, v in cond.items() if k != "encoder_hidden_states"}
            return unet(x_t.to(dtype), t, encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                        added_cond_kwargs=added, return_dict=False)[0]
        cond = None if cond is None else cond.to(dtype)
        return unet(x_t.to(dtype), t, encoder_hidden_states=cond, return_dict=False)[0]

    return denoise


def transformer_denoiser(transformer) -> Denoiser:
    """SD3's ``SD3Transformer2DModel`` -> ``fn(x_t, t, cond) -> velocity``; ``cond``: a dict with
    ``encoder_hidden_states`` and ``pooled_projections``, ``t`` in the model's units (``t * 1000``, as
    the pipeline passes its scheduler's timesteps). Casts as :func:`unet_denoiser`."""

    def denoise(x_t: Tensor, t: Tensor, cond) -> Tensor:
        dtype = _dtype_of(transformer)
        return transformer(hidden_states=x_t.to(dtype), timestep=t,
                           encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                           pooled_projections=cond["pooled_projections"].to(dtype), return_dict=False)[0]

    return denoise


@contextmanager
def adapters_disabled(unet):
    """Run ``unet`` as its base model: LoRA adapters off inside the block, back on after."""
    base = unwrap_model(unet)
    base.disable_adapters()
    try:
        yield unet
    finally:
        base.enable_adapters()


def reference_denoiser(unet, policy: Optional[Denoiser] = None) -> Denoiser:
    """The reference for a LoRA run: the policy UNet (called by ``policy``, default
    :func:`unet_denoiser`) with its adapters disabled (exact)."""
    policy = policy or unet_denoiser(unet)

    def denoise(x_t: Tensor, t: Tensor, cond) -> Tensor:
        with adapters_disabled(unet):
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


def _dtype_of(model) -> torch.dtype:
    base = unwrap_model(model)
    dtype = getattr(base, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(base.parameters()).dtype
