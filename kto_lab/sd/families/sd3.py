"""Stable Diffusion 3 / 3.5: an MMDiT transformer trained as a rectified flow (SD3 paper, Esser et al. 2024), three
text towers (CLIP ViT-L and OpenCLIP ViT-bigG, both with projection, and T5-XXL).

The transformer attends jointly to the latents' 2x2 patches and the text tokens: both CLIPs' penultimate states
(concatenated, zero-padded to T5's width) followed by T5's states along the sequence, plus both CLIPs' pooled
projections (``pooled_projections``); diffusers' ``StableDiffusion3Pipeline.encode_prompt``. The schedule is the
pipeline's flow-matching scheduler's (``num_train_timesteps``, a fixed ``shift``) with logit-normal timesteps
(SD3 sec. 3.1); the transformer predicts the velocity ``eps - x0``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ...config import ConfigError
from ...schedule import DEFAULT_FLOW_ERROR, FlowMatchingSchedule
from ..encoding import model_dtype
from .base import ModelFamily, TextTower

Tensor = torch.Tensor

# objective.beta's useful range for SD3, per objective.flow_error: an ESTIMATE, not measured on SD3. SD 1.5's
# useful beta is 2000-5000 (Diffusion-KTO D.3; Diffusion-DPO); the same change to a model gives implicit rewards
# a factor larger with SD3's errors, which benchmarks/flow_beta_scale.py bounds per flow_error (exact denoisers
# of Gaussian latents under SD3's timesteps, and that model corrected by the 2-D toy's measured beta sweeps where
# a factor fits them: velocity and epsilon; the toy's x0 curve fits none, so x0's range is the model's alone);
# a beta 10x beyond that band on either side gets a one-line warning (docs/training.md, "SD3"). Recompute with
# `python benchmarks/flow_beta_scale.py` ("sd3_beta_ranges"; tests/test_benchmarks.py checks this table).
SD3_BETA_RANGES = {"velocity": (20.0, 50000.0), "epsilon": (200.0, 91000.0), "x0": (36.0, 50000.0)}


class SD3Family(ModelFamily):
    """SD3 medium and SD 3.5 (``StableDiffusion3Pipeline``, ``SD3Transformer2DModel``)."""

    name = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    denoiser_class_name = "SD3Transformer2DModel"
    denoiser_subfolder = "transformer"
    denoiser_name = "transformer"
    default_resolution = 1024  # SD3 trains and samples at 1024x1024 px (its sec. 5.3)
    towers = (
        TextTower("tokenizer", "text_encoder", "CLIPTextModelWithProjection", "input_ids"),
        TextTower("tokenizer_2", "text_encoder_2", "CLIPTextModelWithProjection", "input_ids_2"),
        # 77 T5 tokens: diffusers' SD3 training scripts' --max_sequence_length (its pipeline samples with 256)
        TextTower("tokenizer_3", "text_encoder_3", "T5EncoderModel", "input_ids_3", "T5TokenizerFast", 77),
    )
    text_keys = ("encoder_hidden_states", "pooled_projections")
    schedule_type = FlowMatchingSchedule
    compile_blocks = ("JointTransformerBlock",)  # the MMDiT's 24 repeated blocks (SD3 medium)
    # the attention projections of the image stream, as for the UNets; diffusers' SD3 LoRA script also adapts the
    # text stream's (add_q/k/v_proj, to_add_out: kto_lab/configs/sd3_kto_lora.yaml names them)
    lora_target_modules = ("to_k", "to_q", "to_v", "to_out.0")
    # peft's LoRA keys (lora_A/B), as diffusers' SD3 script saves them: its key conversion knows only the UNet's
    # module names, and SD3's loader drops the converted keys of a file that mixes both formats
    lora_diffusers_keys = False
    validation_guidance_scale = 7.5  # classifier-free guidance (the SD3 pipeline's own default is 7.0)
    beta_range_source = ("for SD3's {flow_error} errors by an estimate, not on SD3 (SD 1.5's 2000-5000 over the "
                         "estimated reward scale, with a 10x margin; benchmarks/flow_beta_scale.py, docs/training.md)")

    def beta_range_for(self, flow_error: Optional[str]) -> Tuple[float, float, str]:
        """One range per ``objective.flow_error`` (:data:`SD3_BETA_RANGES`); unset: the default error's."""
        flow_error = flow_error or DEFAULT_FLOW_ERROR
        return (*SD3_BETA_RANGES[flow_error], self.beta_range_source.format(flow_error=flow_error))

    def sampling_kwargs(self) -> Dict[str, Any]:
        """The T5 length SD3 trains with (its tower's ``max_length``, 77): the pipeline's own default is 256, and the
        MMDiT attends to every text token, padding included, so another length is another input."""
        return {"max_sequence_length": self.towers[2].max_length}

    def scheduler_class(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler

    def schedule(self, scheduler, resolution: int):
        """SD3's rectified flow (``num_train_timesteps`` and the fixed ``shift`` of its
        ``FlowMatchEulerDiscreteScheduler``), logit-normal timesteps (SD3 sec. 3.1); ``schedule.*`` of the training
        config may change the density. SD3 trains at every resolution with its config's shift."""
        if scheduler.config.get("use_dynamic_shifting"):
            raise ConfigError(f"{type(scheduler).__name__} uses use_dynamic_shifting (a shift that depends on the "
                              f"image size), which SD3's pipelines do not; SD3 trains with its config's fixed shift")
        return FlowMatchingSchedule.from_diffusers(scheduler)

    def encode_ids(self, text_encoders: Sequence[Any], ids: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """diffusers' ``StableDiffusion3Pipeline.encode_prompt`` (no clip skip): both CLIPs' penultimate hidden
        states concatenated along features and zero-padded to T5's width, then T5's last hidden state appended
        along the sequence; the pooled projections of both CLIPs concatenated."""
        clip_states, pooled = [], []
        for tower, encoder in zip(self.towers[:2], text_encoders[:2]):
            out = encoder(ids[tower.ids_key].to(encoder.device), output_hidden_states=True)
            clip_states.append(out.hidden_states[-2])
            pooled.append(out.text_embeds)
        t5 = text_encoders[2]
        t5_states = t5(ids[self.towers[2].ids_key].to(t5.device))[0]
        clip = torch.cat(clip_states, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1])).to(t5_states.device)
        return {"encoder_hidden_states": torch.cat([clip.to(t5_states.dtype), t5_states], dim=-2),
                "pooled_projections": torch.cat(pooled, dim=-1)}

    def cond(self, text: Dict[str, Tensor], geometry: Dict[str, Tensor], resolution: int):
        """``{"encoder_hidden_states", "pooled_projections"}``: SD3 has no per-image conditioning."""
        return {k: text[k] for k in self.text_keys}

    def predict(self, model, x_t: Tensor, t: Tensor, cond) -> Tensor:
        """The velocity; ``t`` in the model's units (``t * 1000``, as the pipeline passes its scheduler's timesteps)."""
        dtype = model_dtype(model)
        return model(hidden_states=x_t.to(dtype), timestep=t,
                     encoder_hidden_states=cond["encoder_hidden_states"].to(dtype),
                     pooled_projections=cond["pooled_projections"].to(dtype), return_dict=False)[0]

    def build_tiny(self, path: str | Path, *, image_size: int = 32, words: Sequence[str] = (), seed: int = 0,
                   hidden_size: int = 32, layers: int = 2, text_hidden_size: int = 32, text_layers: int = 2,
                   max_text_length: int = 16) -> Path:
        """A tiny Stable Diffusion 3 pipeline built from config and ``save_pretrained`` to ``path``.

        SD3's architecture in miniature (SD3 paper sec. 4; SD3-medium's configs): an ``SD3Transformer2DModel``
        (MMDiT: joint attention over 2x2 latent patches and the text tokens, the last block context-pre-only) fed
        ``joint_attention_dim``-wide text states and a pooled projection of both CLIP towers; two
        ``CLIPTextModelWithProjection`` towers and a ``T5EncoderModel`` whose width is both CLIPs' together (SD3:
        768 + 1280 padded to T5's 4096); a VAE with 16 latent channels, no quant convs and SD3's
        ``shift_factor``/``scaling_factor``; ``FlowMatchEulerDiscreteScheduler(shift=3.0)``. The CLIP tokenizers
        and the T5 tokenizer (a Unigram ``tokenizer.json``, what ``T5TokenizerFast`` reads) get vocabularies made
        here. Random weights; load it back with :func:`kto_lab.sd.models.load_pipeline` or
        ``StableDiffusion3Pipeline.from_pretrained``.
        """
        from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

        from ..tiny import save_pipeline, tiny_text_encoder, tiny_vae, write_clip_tokenizer, write_t5_tokenizer

        path = Path(path)
        torch.manual_seed(seed)
        tok_dir = write_clip_tokenizer(path / "_tokenizer_src", words, model_max_length=max_text_length)
        tokenizer, tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir), CLIPTokenizer.from_pretrained(tok_dir)
        t5_dir = write_t5_tokenizer(path / "_tokenizer_src" / "t5", words)
        tokenizer_3 = T5TokenizerFast.from_pretrained(t5_dir)
        text_encoder = tiny_text_encoder(tokenizer, text_hidden_size, text_layers, max_text_length, with_projection=True)
        text_encoder_2 = tiny_text_encoder(tokenizer_2, text_hidden_size, text_layers, max_text_length,
                                           with_projection=True)
        joint = 2 * text_hidden_size  # T5's width: the CLIP states are zero-padded to it (SD3: 2048 -> 4096)
        text_encoder_3 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_3), d_model=joint, d_kv=8, d_ff=2 * joint, num_layers=text_layers, num_heads=4,
            feed_forward_proj="gated-gelu", pad_token_id=tokenizer_3.pad_token_id,
            eos_token_id=tokenizer_3.eos_token_id,
        ))
        latent_size = image_size // 2
        transformer = SD3Transformer2DModel(
            sample_size=latent_size, patch_size=2, in_channels=16, out_channels=16, num_layers=layers,
            attention_head_dim=8, num_attention_heads=hidden_size // 8, joint_attention_dim=joint,
            caption_projection_dim=hidden_size, pooled_projection_dim=2 * text_hidden_size,
            pos_embed_max_size=latent_size // 2,
        )
        groups = min(8, hidden_size)
        vae = tiny_vae(image_size, hidden_size, 16, groups, shift_factor=0.0609, scaling_factor=1.5305,
                       use_quant_conv=False, use_post_quant_conv=False)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
        return save_pipeline(pipe, path, tok_dir)
