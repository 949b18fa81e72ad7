"""SD 1.x/2.x: one CLIP text tower; a ``UNet2DConditionModel`` cross-attends to its last hidden state; DDPM.

The conditioning is that hidden state itself, ``(B, L, D)`` (diffusers' ``StableDiffusionPipeline.encode_prompt``,
no clip skip); the schedule is the pipeline's DDPM ``alphas_cumprod`` with its prediction type (epsilon, or v for
SD 2.x 768), whichever sampler the pipeline ships; validation images use DPM-Solver++.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from ...config import ConfigError
from ...schedule import NoiseSchedule
from ..encoding import embed_input_ids, model_dtype
from ..speed import REPEATED_BLOCKS
from .base import ModelFamily, TextTower

Tensor = torch.Tensor


class SDFamily(ModelFamily):
    """SD 1.x/2.x (the Diffusion-KTO paper's SD v1-5)."""

    name = "sd"
    pipeline_class_name = "StableDiffusionPipeline"
    denoiser_class_name = "UNet2DConditionModel"
    denoiser_subfolder = "unet"
    denoiser_name = "UNet"
    default_resolution = 512  # SD 1.5 trains at 512x512 (SD 2.x 768: set data.resolution)
    towers = (TextTower("tokenizer", "text_encoder", "CLIPTextModel", "input_ids"),)
    text_keys = ("encoder_hidden_states",)
    schedule_type = NoiseSchedule
    compile_blocks = REPEATED_BLOCKS
    lora_target_modules = ("to_k", "to_q", "to_v", "to_out.0")  # the UNet's attention projections (LoRA study 3.1)
    # LoRA files in diffusers' UNet key format (lora.down/up), as its UNet LoRA scripts save them
    lora_diffusers_keys = True
    validation_guidance_scale = 7.5  # classifier-free guidance, the SD pipelines' usual value
    unet_addition_embed_type = None  # the UNet's added conditioning (SDXL: "text_time"), checked on load

    def pipeline_kwargs(self) -> Dict[str, Any]:
        """No safety checker: evaluation counts NSFW images with its own checker."""
        return {"safety_checker": None, "requires_safety_checker": False}

    def scheduler_class(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler

    def schedule(self, scheduler, resolution: int):
        """DDPM's ``alphas_cumprod`` and prediction type of the pipeline's scheduler (any resolution)."""
        return NoiseSchedule.from_diffusers(scheduler)

    def sampling_scheduler(self, scheduler_config: Dict[str, Any]):
        """DPM-Solver++ (25 steps do) for validation images."""
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(scheduler_config)

    def check_denoiser(self, config, where: str) -> None:
        """A UNet of another family (e.g. an SDXL UNet given to an SD 1.5 run) fails here, in one line."""
        self.check_denoiser_class(config, where)
        found = config.get("addition_embed_type")
        if found != self.unet_addition_embed_type:
            raise ConfigError(
                f"{where} is not a {self.name} UNet (its addition_embed_type is {found!r}, a {self.name} UNet has "
                f"{self.unet_addition_embed_type!r}): was it trained for another model family?"
            )

    def encode_ids(self, text_encoders: Sequence[Any], ids: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The text encoder's last hidden state."""
        return {"encoder_hidden_states": embed_input_ids(text_encoders[0], ids[self.towers[0].ids_key])}

    def cond(self, text: Dict[str, Tensor], geometry: Dict[str, Tensor], resolution: int):
        """``encoder_hidden_states``, a tensor: SD has no other conditioning."""
        return text["encoder_hidden_states"]

    def predict(self, model, x_t: Tensor, t: Tensor, cond) -> Tensor:
        dtype = model_dtype(model)
        cond = None if cond is None else cond.to(dtype)
        return model(x_t.to(dtype), t, encoder_hidden_states=cond, return_dict=False)[0]

    def build_tiny(self, path: str | Path, *, image_size: int = 32, words: Sequence[str] = (), seed: int = 0,
                   block_out_channels: Sequence[int] = (32, 64), text_hidden_size: int = 32, text_layers: int = 2,
                   max_text_length: int = 16, latent_channels: int = 4, prediction_type: str = "epsilon") -> Path:
        """A tiny Stable Diffusion pipeline built from config and ``save_pretrained`` to ``path``.

        Same architecture families as SD 1.5 (``UNet2DConditionModel`` with cross-attention, ``AutoencoderKL``
        with a 2x down-sampling, ``CLIPTextModel``), a few hundred thousand parameters, random weights. Load it
        back with :func:`kto_lab.sd.models.load_pipeline` or any diffusers ``from_pretrained``.
        """
        from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTokenizer

        from ..tiny import save_pipeline, tiny_text_encoder, tiny_vae, write_clip_tokenizer

        path = Path(path)
        torch.manual_seed(seed)
        tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        text_encoder = tiny_text_encoder(tokenizer, text_hidden_size, text_layers, max_text_length)
        groups = min(8, block_out_channels[0])
        unet = UNet2DConditionModel(
            sample_size=image_size // 2, in_channels=latent_channels, out_channels=latent_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (len(block_out_channels) - 1),
            up_block_types=("UpBlock2D",) * (len(block_out_channels) - 1) + ("CrossAttnUpBlock2D",),
            cross_attention_dim=text_hidden_size, attention_head_dim=8, norm_num_groups=groups,
        )
        vae = tiny_vae(image_size, block_out_channels[0], latent_channels, groups)
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            prediction_type=prediction_type, clip_sample=False, steps_offset=1,
        )
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        return save_pipeline(pipe, path, tok_dir)
