"""Model families: what differs between SD 1.x/2.x and SDXL, and nothing else (DESIGN.md, "Model families").

A :class:`ModelFamily` knows

* its pipeline class, recognised by ``model_index.json``'s ``_class_name`` (:func:`resolve_family`);
* its text towers (tokenizer + text encoder per tower) and how captions become the *text* part of the
  conditioning: SD 1.x/2.x cross-attends to one CLIP encoder's last hidden state; SDXL to both encoders'
  penultimate hidden states concatenated, plus the pooled, projected embedding of the second
  (``text_embeds``) (SDXL paper sec. 2.1; diffusers' ``StableDiffusionXLPipeline.encode_prompt``);
* the per-image part: SDXL's micro-conditioning ``time_ids = (original height, width, crop top, left,
  target height, width)`` (SDXL paper sec. 2.2) from the geometry the data transform records;
* how its denoiser is called with that conditioning, its noise schedule, its default resolution and the
  precision its VAE is safe in, its pipeline for validation images and its LoRA file format.

Conditioning is batch-first: a tensor (SD) or a dict of tensors (SDXL), so the shared step rolls and
concatenates every part alike. The step, objectives, cache, checkpoints and evaluation call a family
and never branch on it. A new family (e.g. a flow-matching model) is a subclass registered in
:data:`FAMILIES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..config import ConfigError
from .encoding import Denoiser, embed_input_ids, reference_denoiser, tokenize, unet_denoiser

Tensor = torch.Tensor


@dataclass(frozen=True)
class TextTower:
    """One tokenizer + text encoder of a pipeline, by their component names."""

    tokenizer: str  # pipeline component name ("tokenizer", "tokenizer_2")
    encoder: str  # ("text_encoder", "text_encoder_2")
    encoder_class: str  # transformers class of the encoder
    ids_key: str  # batch key of its token ids


class ModelFamily:
    """SD 1.x/2.x: one CLIP text tower; the UNet cross-attends to its last hidden state."""

    name = "sd"
    pipeline_class_name = "StableDiffusionPipeline"
    default_resolution = 512  # SD 1.5 trains at 512x512 (SD 2.x 768: set data.resolution)
    towers: Tuple[TextTower, ...] = (TextTower("tokenizer", "text_encoder", "CLIPTextModel", "input_ids"),)
    text_keys: Tuple[str, ...] = ("encoder_hidden_states",)  # the text part of the conditioning (cached)
    image_keys: Tuple[str, ...] = ()  # per-image geometry the conditioning needs (recorded by the transform)
    unet_addition_embed_type: Optional[str] = None

    def __repr__(self) -> str:
        return f"ModelFamily({self.name!r}: {self.pipeline_class_name})"

    # --- components ------------------------------------------------------------------
    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def pipeline_kwargs(self) -> Dict[str, Any]:
        """Extra ``from_pretrained``/constructor arguments of the pipeline (no safety checker: evaluation
        counts NSFW images with its own checker)."""
        return {"safety_checker": None, "requires_safety_checker": False}

    def load_text(self, src: str, **kwargs) -> Dict[str, Any]:
        """Tokenizers and text encoders of pipeline ``src``, by component name."""
        import transformers

        out: Dict[str, Any] = {}
        for tower in self.towers:
            out[tower.tokenizer] = transformers.CLIPTokenizer.from_pretrained(src, subfolder=tower.tokenizer, **kwargs)
            encoder_cls = getattr(transformers, tower.encoder_class)
            out[tower.encoder] = encoder_cls.from_pretrained(src, subfolder=tower.encoder, **kwargs)
        return out

    def schedule(self, scheduler):
        """The training noise schedule of a diffusers scheduler: DDPM's ``alphas_cumprod`` and prediction
        type for SD and SDXL (the same whichever sampler the pipeline ships)."""
        from ..schedule import NoiseSchedule

        return NoiseSchedule.from_diffusers(scheduler)

    def load_schedule(self, src: str, **kwargs):
        """``(noise schedule, scheduler config)`` of pipeline ``src``; the config drives validation sampling."""
        from diffusers import DDPMScheduler

        scheduler = DDPMScheduler.from_pretrained(src, subfolder="scheduler", **kwargs)
        return self.schedule(scheduler), dict(scheduler.config)

    def check_unet(self, config, where: str) -> None:
        """A UNet of another family (e.g. an SDXL UNet given to an SD 1.5 run) fails here, in one line."""
        found = config.get("addition_embed_type")
        if found != self.unet_addition_embed_type:
            raise ConfigError(
                f"{where} is not a {self.name} UNet (its addition_embed_type is {found!r}, a {self.name} UNet has "
                f"{self.unet_addition_embed_type!r}): was it trained for another model family?"
            )

    def text_encoders(self, holder) -> list:
        """The text encoders of ``holder`` (kto_lab Components or a diffusers pipeline), tower order."""
        return [getattr(holder, t.encoder, None) for t in self.towers]

    def tokenizers(self, holder) -> list:
        """The tokenizers of ``holder``, tower order."""
        return [getattr(holder, t.tokenizer, None) for t in self.towers]

    # --- conditioning ----------------------------------------------------------------
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str]) -> Dict[str, Tensor]:
        """Captions -> token ids per tower, padded to each tokenizer's ``model_max_length``."""
        return {t.ids_key: tokenize(tok, captions) for t, tok in zip(self.towers, tokenizers)}

    def encode_ids(self, text_encoders: Sequence[Any], ids: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Token ids -> the text part of the conditioning (call under ``no_grad``)."""
        return {"encoder_hidden_states": embed_input_ids(text_encoders[0], ids[self.towers[0].ids_key])}

    @torch.no_grad()
    def encode_captions(self, holder, captions: Sequence[str]) -> Dict[str, Tensor]:
        """Captions -> text conditioning with ``holder``'s tokenizers and encoders (Components or a pipeline)."""
        if isinstance(captions, str):
            raise TypeError("encode_captions expects a sequence of captions, not a single string")
        return self.encode_ids(self.text_encoders(holder), self.tokenize(self.tokenizers(holder), captions))

    def cond(self, text: Dict[str, Tensor], geometry: Dict[str, Tensor], resolution: int):
        """The denoiser's conditioning from the text part and the images' geometry."""
        return text["encoder_hidden_states"]

    def denoiser(self, unet) -> Denoiser:
        return unet_denoiser(unet)

    def adapters_disabled_denoiser(self, unet) -> Denoiser:
        """The LoRA run's exact reference: this family's denoiser with the adapters switched off."""
        return reference_denoiser(unet, self.denoiser(unet))

    # --- VAE, pipelines, LoRA files ----------------------------------------------------
    def vae_dtype(self, vae, dtype: torch.dtype) -> torch.dtype:
        """The dtype the VAE may run in when asked for ``dtype`` (``model.vae_dtype=auto``)."""
        return dtype

    def pipeline(self, holder, unet, scheduler):
        """A pipeline over ``holder``'s VAE and text towers and ``unet`` (validation images)."""
        parts = {name: getattr(holder, name) for t in self.towers for name in (t.tokenizer, t.encoder)}
        return self.pipeline_class()(vae=holder.vae, unet=unet, scheduler=scheduler, feature_extractor=None, **parts,
                                     **self.pipeline_kwargs())

    def save_lora_weights(self, directory: str | Path, unet_lora_layers: Dict[str, Tensor]) -> None:
        self.pipeline_class().save_lora_weights(str(directory), unet_lora_layers=unet_lora_layers,
                                                safe_serialization=True)


class SDXLFamily(ModelFamily):
    """SDXL: two text towers (CLIP ViT-L, OpenCLIP ViT-bigG with projection) and micro-conditioning."""

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

    def vae_dtype(self, vae, dtype: torch.dtype) -> torch.dtype:
        """SDXL's own VAE overflows in fp16: it says so with ``force_upcast`` (the SDXL pipeline's rule);
        an fp16-safe VAE (``model.vae``) does not."""
        if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            return torch.float32
        return dtype


FAMILIES: Dict[str, ModelFamily] = {f.name: f for f in (ModelFamily(), SDXLFamily())}
FAMILY_CHOICES = ("auto",) + tuple(FAMILIES)


def pipeline_class_name(pretrained: str | Path) -> Optional[str]:
    """``_class_name`` of ``model_index.json`` of a local pipeline dir (or a hub id diffusers can resolve);
    None when it cannot be read."""
    p = Path(str(pretrained)).expanduser()
    if (p / "model_index.json").is_file():
        return json.loads((p / "model_index.json").read_text()).get("_class_name")
    if p.exists() or str(pretrained).startswith((".", "/", "~")):
        return None
    try:
        from diffusers import DiffusionPipeline

        from .components import local_only

        return DiffusionPipeline.load_config(str(pretrained), local_files_only=local_only()).get("_class_name")
    except Exception:  # offline and not cached, or not a pipeline: the caller says what to do
        return None


def resolve_family(pretrained: str | Path, family: str = "auto", field: str = "model.pretrained") -> ModelFamily:
    """The family of pipeline ``pretrained``: from its ``model_index.json`` (``family="auto"``) or named.

    Reads one JSON file, loads no model; an unsupported pipeline class (SD3, Flux, ...) or a named family
    that contradicts the pipeline is a one-line :class:`ConfigError`.
    """
    if family != "auto" and family not in FAMILIES:
        raise ConfigError(f"model.family={family!r} is not allowed; choose one of {list(FAMILY_CHOICES)}")
    found = pipeline_class_name(pretrained)
    by_class = {f.pipeline_class_name: f for f in FAMILIES.values()}
    supported = ", ".join(f"{f.name} ({f.pipeline_class_name})" for f in FAMILIES.values())
    if found is not None and found not in by_class:
        raise ConfigError(f"{field}={str(pretrained)!r} is a {found} pipeline, which kto_lab does not train; "
                          f"supported families: {supported}")
    if family == "auto":
        if found is None:
            raise ConfigError(f"cannot read the pipeline class of {field}={str(pretrained)!r} (model_index.json); "
                              f"set model.family to one of {list(FAMILIES)}")
        return by_class[found]
    if found is not None and by_class[found].name != family:
        raise ConfigError(f"model.family={family} but {field}={str(pretrained)!r} is a {found} pipeline "
                          f"(family {by_class[found].name})")
    return FAMILIES[family]


def family_of_pipeline(pipe) -> ModelFamily:
    """The family of a loaded diffusers pipeline object."""
    for f in FAMILIES.values():
        if type(pipe).__name__ == f.pipeline_class_name:
            return f
    raise ConfigError(f"a {type(pipe).__name__} is not a pipeline of a supported family ({list(FAMILIES)})")
