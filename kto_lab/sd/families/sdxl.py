"""SDXL: SD's UNet family with two text towers (CLIP ViT-L, OpenCLIP ViT-bigG with projection) and micro-conditioning.

The UNet cross-attends to both encoders' penultimate hidden states concatenated, and adds the pooled, projected
embedding of the second (``text_embeds``; SDXL paper sec. 2.1; diffusers' ``StableDiffusionXLPipeline.encode_prompt``)
and the per-image ``time_ids = (original height, width, crop top, left, target height, width)`` (SDXL paper
sec. 2.2) from the geometry the data transform records. DDPM, as SD; its own VAE asks for fp32 under fp16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from ..encoding import model_dtype
from .base import TextTower
from .sd import SDFamily

Tensor = torch.Tensor


class SDXLFamily(SDFamily):
    """SDXL base (and its fine-tunes): SD's UNet, schedule and sampler, with SDXL's text towers and time ids."""

    name = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    default_resolution = 1024  # SDXL base trains and samples around 1024x1024 px (multi-aspect training, SDXL paper sec. 2.3)
    towers = (
        TextTower("tokenizer", "text_encoder", "CLIPTextModel", "input_ids"),
        TextTower("tokenizer_2", "text_encoder_2", "CLIPTextModelWithProjection", "input_ids_2"),
    )
    text_keys = ("encoder_hidden_states", "text_embeds")
    image_keys = ("original_size", "crop_top_left")
    unet_addition_embed_type = "text_time"

    def pipeline_kwargs(self) -> Dict[str, Any]:
        return {"add_watermarker": False}

    def encode_ids(self, text_encoders: Sequence[Any], ids: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Both encoders' penultimate hidden states, concatenated along features, and the pooled projected
        embedding of the second (diffusers' ``StableDiffusionXLPipeline.encode_prompt``, no clip skip)."""
        hidden = []
        for tower, encoder in zip(self.towers, text_encoders):
            out = encoder(ids[tower.ids_key].to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": out.text_embeds}

    def cond(self, text: Dict[str, Tensor], geometry: Dict[str, Tensor], resolution: int):
        """``{"encoder_hidden_states", "text_embeds", "time_ids"}``; time ids in fp32, so sizes like 1023 stay
        exact (bf16 would round them)."""
        size, crop = geometry["original_size"], geometry["crop_top_left"]
        target = torch.full_like(size, int(resolution))
        time_ids = torch.cat([size, crop, target], dim=1).to(device=text["text_embeds"].device, dtype=torch.float32)
        return {"encoder_hidden_states": text["encoder_hidden_states"], "text_embeds": text["text_embeds"],
                "time_ids": time_ids}

    def predict(self, model, x_t: Tensor, t: Tensor, cond) -> Tensor:
        """The UNet with its added conditions (``text_embeds``, ``time_ids``), as the pipeline calls it; the time
        ids stay exact (not cast to the UNet's dtype)."""
        dtype = model_dtype(model)
        added = {k: v if k == "time_ids" else v.to(dtype) for k, v in cond.items() if k != "encoder_hidden_states"}
        return model(x_t.to(dtype), t, encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                     added_cond_kwargs=added, return_dict=False)[0]

    def vae_dtype(self, vae, dtype: torch.dtype) -> torch.dtype:
        """SDXL's own VAE overflows in fp16: it says so with ``force_upcast`` (the SDXL pipeline's rule);
        an fp16-safe VAE (``model.vae``) does not."""
        if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            return torch.float32
        return dtype

    def build_tiny(self, path: str | Path, *, image_size: int = 32, words: Sequence[str] = (), seed: int = 0,
                   block_out_channels: Sequence[int] = (32, 64), text_hidden_size: int = 32, text_layers: int = 2,
                   max_text_length: int = 16, time_embed_dim: int = 8) -> Path:
        """A tiny SDXL pipeline built from config and ``save_pretrained`` to ``path``.

        SDXL's architecture in miniature: a ``UNet2DConditionModel`` with ``addition_embed_type="text_time"``
        (pooled text + size/crop time ids), no attention in its first block and two transformer layers in
        its last (SDXL: 0, 2, 10), linear attention projections; two text towers, the second a
        ``CLIPTextModelWithProjection`` whose pooled projection feeds the UNet, their hidden states
        concatenated for cross-attention; a VAE that asks to be upcast from fp16 (``force_upcast``) with
        SDXL's ``scaling_factor`` 0.13025; SDXL's Euler scheduler config. Random weights; load it back with
        :func:`kto_lab.sd.models.load_pipeline` or ``StableDiffusionXLPipeline.from_pretrained``.
        """
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from transformers import CLIPTokenizer

        from ..tiny import save_pipeline, tiny_text_encoder, tiny_vae, write_clip_tokenizer

        path = Path(path)
        torch.manual_seed(seed)
        tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir)
        text_encoder = tiny_text_encoder(tokenizer, text_hidden_size, text_layers, max_text_length)
        text_encoder_2 = tiny_text_encoder(tokenizer_2, text_hidden_size, text_layers, max_text_length,
                                           with_projection=True)
        groups = min(8, block_out_channels[0])
        n = len(block_out_channels)
        unet = UNet2DConditionModel(
            sample_size=image_size // 2, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels),
            layers_per_block=1, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            transformer_layers_per_block=(1,) * (n - 1) + (2,),
            attention_head_dim=tuple(c // 8 for c in block_out_channels),
            cross_attention_dim=2 * text_hidden_size, use_linear_projection=True, norm_num_groups=groups,
            addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=text_hidden_size + 6 * time_embed_dim,
        )
        vae = tiny_vae(image_size, block_out_channels[0], 4, groups, scaling_factor=0.13025, force_upcast=True)
        scheduler = EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            prediction_type="epsilon", timestep_spacing="leading", steps_offset=1,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
        return save_pipeline(pipe, path, tok_dir)
