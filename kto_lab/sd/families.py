"""Model families: what differs between SD 1.x/2.x, SDXL and SD3, and nothing else (DESIGN.md, "Model families").

A :class:`ModelFamily` knows

* its pipeline class, recognised by ``model_index.json``'s ``_class_name`` (:func:`resolve_family`), and
  its denoiser: a ``UNet2DConditionModel`` in the pipeline's ``unet/`` (SD, SDXL) or SD3's
  ``SD3Transformer2DModel`` in ``transformer/`` (the trainer calls either "the UNet" internally);
* its text towers (tokenizer + text encoder per tower) and how captions become the *text* part of the
  conditioning: SD 1.x/2.x cross-attends to one CLIP encoder's last hidden state; SDXL to both encoders'
  penultimate hidden states concatenated, plus the pooled, projected embedding of the second
  (``text_embeds``) (SDXL paper sec. 2.1; diffusers' ``StableDiffusionXLPipeline.encode_prompt``);
  SD3 to both CLIPs' penultimate states (concatenated, zero-padded to T5's width) followed by T5's
  states along the sequence, plus both CLIPs' pooled projections (``pooled_projections``);
* the per-image part: SDXL's micro-conditioning ``time_ids = (original height, width, crop top, left,
  target height, width)`` (SDXL paper sec. 2.2) from the geometry the data transform records;
* how its denoiser is called with that conditioning, its noise schedule (DDPM, or SD3's rectified flow),
  its default resolution and the precision its VAE is safe in, its pipeline for validation images and
  its LoRA file format.

Conditioning is batch-first: a tensor (SD) or a dict of tensors (SDXL, SD3), so the shared step rolls and
concatenates every part alike. The step, objectives, cache, checkpoints and evaluation call a family
and never branch on it. A new family is a subclass registered in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..config import ConfigError
from .encoding import Denoiser, embed_input_ids, reference_denoiser, tokenize, transformer_denoiser, unet_denoiser
from .speed import REPEATED_BLOCKS

Tensor = torch.Tensor


@dataclass(frozen=True)
class TextTower:
    """One tokenizer + text encoder of a pipeline, by their component names."""

    tokenizer: str  # pipeline component name ("tokenizer", "tokenizer_2")
    encoder: str  # ("text_encoder", "text_encoder_2")
    encoder_class: str  # transformers class of the encoder
    ids_key: str  # batch key of its token ids
    tokenizer_class: str = "CLIPTokenizer"  # transformers class of the tokenizer
    max_length: Optional[int] = None  # tokens per caption; None: the tokenizer's model_max_length


class ModelFamily:
    """SD 1.x/2.x: one CLIP text tower; the UNet cross-attends to its last hidden state."""

    name = "sd"
    pipeline_class_name = "StableDiffusionPipeline"
    default_resolution = 512  # SD 1.5 trains at 512x512 (SD 2.x 768: set data.resolution)
    towers: Tuple[TextTower, ...] = (TextTower("tokenizer", "text_encoder", "CLIPTextModel", "input_ids"),)
    text_keys: Tuple[str, ...] = ("encoder_hidden_states",)  # the text part of the conditioning (cached)
    image_keys: Tuple[str, ...] = ()  # per-image geometry the conditioning needs (recorded by the transform)
    unet_addition_embed_type: Optional[str] = None
    denoiser_class_name = "UNet2DConditionModel"  # the diffusers class of its denoiser
    # its pipeline component, subfolder and LoRA key prefix; where a full fine-tune is saved (OUTPUT_DIR/<this>)
    denoiser_subfolder = "unet"
    flow_matching = False  # True: a rectified-flow model (velocity target; kto_lab.schedule.FlowMatchingSchedule)
    compile_blocks: Tuple[str, ...] = REPEATED_BLOCKS  # model.compile=regional's regions (kto_lab.sd.speed)
    # LoRA files in diffusers' UNet key format (lora.down/up), as its UNet LoRA scripts save them; SD3's script
    # saves peft's (lora_A/B): diffusers' key conversion knows only the UNet's module names, and SD3's loader
    # drops the converted keys of a file that mixes both formats
    lora_diffusers_keys = True
    # Where objective.beta is useful for this family's errors, and where that was measured: outside it a
    # one-line warning (None: no warning; SD 1.5's beta comes from the paper, A.1 and D.3). A flow-matching
    # family gives one (low, high) per objective.flow_error: {flow_error: (low, high)}.
    beta_range: Optional[Any] = None
    beta_range_source = ""

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
            tokenizer_cls = getattr(transformers, tower.tokenizer_class)
            out[tower.tokenizer] = tokenizer_cls.from_pretrained(src, subfolder=tower.tokenizer, **kwargs)
            encoder_cls = getattr(transformers, tower.encoder_class)
            out[tower.encoder] = encoder_cls.from_pretrained(src, subfolder=tower.encoder, **kwargs)
        return out

    def schedule(self, scheduler):
        """The training noise schedule of a diffusers scheduler: DDPM's ``alphas_cumprod`` and prediction
        type for SD and SDXL (the same whichever sampler the pipeline ships)."""
        from ..schedule import NoiseSchedule

        return NoiseSchedule.from_diffusers(scheduler)

    def scheduler_class(self):
        """The diffusers scheduler class that reads the pipeline's scheduler config for training."""
        from diffusers import DDPMScheduler

        return DDPMScheduler

    def load_schedule(self, src: str, **kwargs):
        """``(noise schedule, scheduler config)`` of pipeline ``src``; the config drives validation sampling."""
        scheduler = self.scheduler_class().from_pretrained(src, subfolder="scheduler", **kwargs)
        return self.schedule(scheduler), dict(scheduler.config)

    def sampling_scheduler(self, scheduler_config: Dict[str, Any]):
        """The scheduler of validation images: DPM-Solver++ (25 steps do) for the DDPM families."""
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(scheduler_config)

    def denoiser_class(self):
        import diffusers

        return getattr(diffusers, self.denoiser_class_name)

    def check_denoiser_class(self, config, where: str) -> None:
        """A denoiser of another class (an SD3 transformer for a UNet family, or the reverse) fails here, in
        one line, from its config alone (call it before building the model)."""
        found = config.get("_class_name")
        if found is not None and found != self.denoiser_class_name:
            raise ConfigError(f"{where} is a {found}, not a {self.name} {self.denoiser_class_name}: was it trained "
                              f"for another model family?")

    def check_unet(self, config, where: str) -> None:
        """A UNet of another family (e.g. an SDXL UNet given to an SD 1.5 run) fails here, in one line."""
        self.check_denoiser_class(config, where)
        found = config.get("addition_embed_type")
        if found != self.unet_addition_embed_type:
            raise ConfigError(
                f"{where} is not a {self.name} UNet (its addition_embed_type is {found!r}, a {self.name} UNet has "
                f"{self.unet_addition_embed_type!r}): was it trained for another model family?"
            )

    def denoiser_of(self, holder):
        """The denoiser of ``holder`` (a diffusers pipeline or Components): ``unet``, or SD3's ``transformer``."""
        return getattr(holder, self.denoiser_subfolder)

    def text_encoders(self, holder) -> list:
        """The text encoders of ``holder`` (kto_lab Components or a diffusers pipeline), tower order."""
        return [getattr(holder, t.encoder, None) for t in self.towers]

    def tokenizers(self, holder) -> list:
        """The tokenizers of ``holder``, tower order."""
        return [getattr(holder, t.tokenizer, None) for t in self.towers]

    # --- conditioning ----------------------------------------------------------------
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str]) -> Dict[str, Tensor]:
        """Captions -> token ids per tower, padded to the tower's ``max_length`` (default: the tokenizer's
        ``model_max_length``)."""
        return {t.ids_key: tokenize(tok, captions, t.max_length) for t, tok in zip(self.towers, tokenizers)}

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
        return self.pipeline_class()(vae=holder.vae, scheduler=scheduler, feature_extractor=None,
                                     **{self.denoiser_subfolder: unet}, **parts, **self.pipeline_kwargs())

    def save_lora_weights(self, directory: str | Path, unet_lora_layers: Dict[str, Tensor]) -> None:
        """``directory/pytorch_lora_weights.safetensors`` in the pipeline's own format (its ``save_lora_weights``:
        ``unet_lora_layers``, SD3 ``transformer_lora_layers``)."""
        self.pipeline_class().save_lora_weights(str(directory), safe_serialization=True,
                                                **{f"{self.denoiser_subfolder}_lora_layers": unet_lora_layers})


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


# objective.beta's useful range for SD3, per objective.flow_error: an ESTIMATE, not measured on SD3. SD 1.5's
# useful beta is 2000-5000 (Diffusion-KTO D.3; Diffusion-DPO); the same change to a model gives implicit rewards
# a factor larger with SD3's errors, which benchmarks/flow_beta_scale.py bounds per flow_error (exact denoisers
# of Gaussian latents under SD3's timesteps, and that model corrected by the 2-D toy's measured beta sweeps where
# a factor fits them: velocity and epsilon; the toy's x0 curve fits none, so x0's range is the model's alone);
# a beta 10x beyond that band on either side gets a one-line warning (docs/training.md, "SD3"). Recompute with
# `python benchmarks/flow_beta_scale.py` ("sd3_beta_ranges"; tests/test_benchmarks.py checks this table).
SD3_BETA_RANGES = {"velocity": (20.0, 50000.0), "epsilon": (200.0, 91000.0), "x0": (36.0, 50000.0)}


class SD3Family(ModelFamily):
    """Stable Diffusion 3 / 3.5: an MMDiT transformer trained as a rectified flow (SD3 paper, Esser et al. 2024),
    three text towers (CLIP ViT-L and OpenCLIP ViT-bigG, both with projection, and T5-XXL)."""

    name = "sd3"
    pipeline_class_name = "StableDiffusion3Pipeline"
    default_resolution = 1024  # SD3 trains and samples at 1024x1024 px (its sec. 5.3)
    towers = (
        TextTower("tokenizer", "text_encoder", "CLIPTextModelWithProjection", "input_ids"),
        TextTower("tokenizer_2", "text_encoder_2", "CLIPTextModelWithProjection", "input_ids_2"),
        # 77 T5 tokens: diffusers' SD3 training scripts' --max_sequence_length (its pipeline samples with 256)
        TextTower("tokenizer_3", "text_encoder_3", "T5EncoderModel", "input_ids_3", "T5TokenizerFast", 77),
    )
    text_keys = ("encoder_hidden_states", "pooled_projections")
    denoiser_class_name = "SD3Transformer2DModel"
    denoiser_subfolder = "transformer"
    flow_matching = True
    compile_blocks = ("JointTransformerBlock",)  # the MMDiT's 24 repeated blocks (SD3 medium)
    lora_diffusers_keys = False
    beta_range = SD3_BETA_RANGES  # one range per objective.flow_error
    beta_range_source = ("for SD3's {flow_error} errors by an estimate, not on SD3 (SD 1.5's 2000-5000 over the "
                         "estimated reward scale, with a 10x margin; benchmarks/flow_beta_scale.py, docs/training.md)")

    def pipeline_kwargs(self) -> Dict[str, Any]:
        return {}

    def scheduler_class(self):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler

    def schedule(self, scheduler):
        """SD3's rectified flow (``num_train_timesteps`` and ``shift`` of its ``FlowMatchEulerDiscreteScheduler``),
        logit-normal timesteps (SD3 sec. 3.1); ``schedule.*`` of the training config may change the density."""
        from ..schedule import FlowMatchingSchedule

        return FlowMatchingSchedule.from_diffusers(scheduler)

    def sampling_scheduler(self, scheduler_config: Dict[str, Any]):
        """The pipeline's own flow-matching Euler sampler."""
        return self.scheduler_class().from_config(scheduler_config)

    def check_unet(self, config, where: str) -> None:
        self.check_denoiser_class(config, where)

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

    def denoiser(self, unet) -> Denoiser:
        return transformer_denoiser(unet)


FAMILIES: Dict[str, ModelFamily] = {f.name: f for f in (ModelFamily(), SDXLFamily(), SD3Family())}
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

    Reads one JSON file, loads no model; an unsupported pipeline class (Flux, PixArt, ...) or a named family
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
