"""The model-family protocol: everything the trainer, cache, checkpoints and evaluation need to know about a family
of text-to-image pipelines, so that none of them names one (DESIGN.md, "Model families: one file each").

A family is a subclass of :class:`ModelFamily` in a file of its own, registered in
:data:`kto_lab.sd.families.FAMILIES`. It states

* its pipeline (``pipeline_class_name``, matched against ``model_index.json``) and its denoiser
  (``denoiser_class_name``, the pipeline component and folder ``denoiser_subfolder``: where a full fine-tune
  is saved and the prefix of its LoRA keys; ``denoiser_name`` in messages);
* its text towers (:class:`TextTower`) and how captions become the *text* part of the conditioning
  (:meth:`encode_ids`, the tensors ``text_keys``, which the latent cache stores), and how text and the images'
  geometry (``image_keys``, recorded by the data transform) become the denoiser's conditioning (:meth:`cond`): a
  batch-first tensor or dict of tensors, which the shared step rolls and concatenates part by part (a value the
  denoiser needs per sample, e.g. a guidance embedding's, belongs there too);
* how its denoiser is called (:meth:`predict`): latents ``(B, C, h, w)`` in, a prediction of the same shape out;
  a denoiser that takes another layout (packed patches with position ids) packs and unpacks inside it, so the
  step, the cache and the schedule never see it;
* the training schedule it builds from its pipeline's scheduler for a resolution (:meth:`schedule`; its kind,
  ``schedule_type``, decides which ``schedule.*`` options apply; a resolution-dependent shift is computed here)
  and the sampler of its validation images (:meth:`sampling_scheduler`) and of measurements (:meth:`ode_sampler_class`);
* the pipeline-call arguments that make sampling read captions as training does (:meth:`sampling_kwargs`);
* the precision its VAE is safe in (:meth:`vae_dtype`); the latents' shift and scale are the VAE config's own
  (``shift_factor``, ``scaling_factor``: what every diffusers pipeline reads), so no family restates them;
* its LoRA targets and file format (``lora_target_modules``, ``lora_diffusers_keys``, :meth:`save_lora_weights`);
* its defaults (``default_resolution``, ``compile_blocks``, ``validation_guidance_scale``, the useful range of
  beta) and a tiny random pipeline of it for tests and demos (:meth:`build_tiny`).

What every family does alike (loading its text towers, tokenizing, building a validation pipeline, a LoRA
reference with the adapters switched off) is written once here.
"""

from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ...config import ConfigError
from ..encoding import reference_denoiser, tokenize

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


class ModelFamily(abc.ABC):
    """A family of text-to-image pipelines (see the module docstring). Subclasses state the attributes of
    :attr:`REQUIRED` and implement the abstract methods; one instance of each is registered."""

    name: str  # the family's name: model.family, the cache manifest
    pipeline_class_name: str  # the diffusers pipeline class (model_index.json's _class_name)
    denoiser_class_name: str  # the diffusers class of its denoiser
    denoiser_subfolder: str  # its pipeline component and folder, LoRA key prefix; OUTPUT_DIR/<this> of a full fine-tune
    denoiser_name: str  # what messages and model cards call it ("UNet", "transformer")
    towers: Tuple[TextTower, ...]  # its text towers, in the pipeline's order
    text_keys: Tuple[str, ...]  # the text part of the conditioning (cached)
    schedule_type: type  # the kind of schedule it trains with (kto_lab.schedule): which schedule.* options apply
    default_resolution: int  # pixels, when data.resolution is unset
    compile_blocks: Tuple[str, ...]  # model.compile=regional's regions (kto_lab.sd.speed)
    lora_target_modules: Tuple[str, ...]  # lora.target_modules when unset
    lora_diffusers_keys: bool  # LoRA files in diffusers' UNet key format (lora.down/up) rather than peft's (lora_A/B)
    validation_guidance_scale: float  # logging.validation_guidance_scale when unset
    image_keys: Tuple[str, ...] = ()  # per-image geometry the conditioning needs (recorded by the data transform)
    # Where objective.beta is useful for this family's errors, and where that was measured: outside it a
    # one-line warning (None: no warning). A family whose range depends on objective.flow_error overrides
    # :meth:`beta_range_for` instead.
    beta_range: Optional[Tuple[float, float]] = None
    beta_range_source: str = ""

    REQUIRED = ("name", "pipeline_class_name", "denoiser_class_name", "denoiser_subfolder", "denoiser_name", "towers",
                "text_keys", "schedule_type", "default_resolution", "compile_blocks", "lora_target_modules",
                "lora_diffusers_keys", "validation_guidance_scale")

    def __init__(self):
        missing = [a for a in self.REQUIRED if not hasattr(self, a)]
        if missing:
            raise TypeError(f"model family {type(self).__name__} does not state {missing}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}: {self.pipeline_class_name})"

    def beta_range_for(self, flow_error: Optional[str]) -> Optional[Tuple[float, float, str]]:
        """``(low, high, where it comes from)``: KTO's and DPO's useful ``objective.beta`` for this family's errors
        of kind ``flow_error`` (the resolved ``objective.flow_error``; None for a DDPM family); None: no warning."""
        return None if self.beta_range is None else (*self.beta_range, self.beta_range_source)

    # --- what each family says ---------------------------------------------------------
    @abc.abstractmethod
    def encode_ids(self, text_encoders: Sequence[Any], ids: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Token ids (by tower ``ids_key``) -> the text part of the conditioning, ``text_keys`` (call under
        ``no_grad``)."""

    @abc.abstractmethod
    def cond(self, text: Dict[str, Tensor], geometry: Dict[str, Tensor], resolution: int):
        """The denoiser's conditioning from the text part and the images' geometry (``image_keys``), batch-first."""

    @abc.abstractmethod
    def predict(self, model, x_t: Tensor, t: Tensor, cond) -> Tensor:
        """``model``'s prediction for latents ``x_t`` at timesteps ``t`` (the schedule's units) under ``cond``,
        shaped like ``x_t``. Inputs are cast to the model's dtype; the prediction keeps it (the errors are
        computed in fp32 by ``denoising_error``)."""

    @abc.abstractmethod
    def scheduler_class(self):
        """The diffusers scheduler class that reads the pipeline's scheduler config for training."""

    @abc.abstractmethod
    def schedule(self, scheduler, resolution: int):
        """The training schedule (a ``schedule_type``) from the pipeline's diffusers ``scheduler``, for images of
        ``resolution`` pixels."""

    @abc.abstractmethod
    def build_tiny(self, path: str | Path, *, image_size: int = 32, words: Sequence[str] = (), seed: int = 0,
                   **sizes) -> Path:
        """A tiny pipeline of this family (random weights, a vocabulary made from ``words``) saved to ``path``,
        loadable with ``from_pretrained`` like a real one: the family's model in tests and demos."""

    # --- components ----------------------------------------------------------------------
    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def pipeline_kwargs(self) -> Dict[str, Any]:
        """Extra ``from_pretrained``/constructor arguments of the pipeline."""
        return {}

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

    def load_schedule(self, src: str, resolution: int, **kwargs):
        """``(training schedule, scheduler config)`` of pipeline ``src``; the config drives validation sampling."""
        scheduler = self.scheduler_class().from_pretrained(src, subfolder="scheduler", **kwargs)
        return self.schedule(scheduler, resolution), dict(scheduler.config)

    def sampling_scheduler(self, scheduler_config: Dict[str, Any]):
        """The scheduler of validation images (default: the pipeline's own kind)."""
        return self.scheduler_class().from_config(scheduler_config)

    def ode_sampler_class(self):
        """The deterministic sampler of the family's probability-flow ODE, for measurements at few steps (the
        shapes world's 20): a flow-matching family's own Euler scheduler (the ODE it trains, SD3 sec. 2), a DDPM
        family's DDIM with eta 0 (Song et al. 2021, sec. 4.1). Built with ``.from_config`` of the pipeline's
        scheduler config."""
        if self.schedule_type.FLOW_MATCHING:
            return self.scheduler_class()
        from diffusers import DDIMScheduler

        return DDIMScheduler

    def sampling_kwargs(self) -> Dict[str, Any]:
        """Extra keyword arguments of the pipeline's ``__call__`` so that it samples with the inputs the family
        trains with (default: none)."""
        return {}

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

    def check_denoiser(self, config, where: str) -> None:
        """A denoiser of another family fails here, in one line, from its config (default: by its class)."""
        self.check_denoiser_class(config, where)

    def denoiser_of(self, pipe):
        """The denoiser of a diffusers pipeline (its ``unet``, ``transformer``, ...)."""
        return getattr(pipe, self.denoiser_subfolder)

    def text_encoders(self, holder) -> list:
        """The text encoders of ``holder`` (kto_lab Components or a diffusers pipeline), tower order."""
        return [getattr(holder, t.encoder, None) for t in self.towers]

    def tokenizers(self, holder) -> list:
        """The tokenizers of ``holder``, tower order."""
        return [getattr(holder, t.tokenizer, None) for t in self.towers]

    # --- conditioning --------------------------------------------------------------------
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str]) -> Dict[str, Tensor]:
        """Captions -> token ids per tower, padded to the tower's ``max_length`` (default: the tokenizer's
        ``model_max_length``)."""
        return {t.ids_key: tokenize(tok, captions, t.max_length) for t, tok in zip(self.towers, tokenizers)}

    @torch.no_grad()
    def encode_captions(self, holder, captions: Sequence[str]) -> Dict[str, Tensor]:
        """Captions -> text conditioning with ``holder``'s tokenizers and encoders (Components or a pipeline)."""
        if isinstance(captions, str):
            raise TypeError("encode_captions expects a sequence of captions, not a single string")
        return self.encode_ids(self.text_encoders(holder), self.tokenize(self.tokenizers(holder), captions))

    # --- the denoiser ----------------------------------------------------------------------
    def denoiser(self, model):
        """``model`` as the step's denoiser ``fn(x_t, t, cond) -> prediction`` (:meth:`predict`)."""
        return functools.partial(self.predict, model)

    def adapters_disabled_denoiser(self, model):
        """The LoRA run's exact reference: ``model`` as this family's denoiser with its adapters switched off."""
        return reference_denoiser(model, self.denoiser(model))

    # --- VAE, pipelines, LoRA files ----------------------------------------------------------
    def vae_dtype(self, vae, dtype: torch.dtype) -> torch.dtype:
        """The dtype the VAE may run in when asked for ``dtype`` (``model.vae_dtype=auto``)."""
        return dtype

    def pipeline(self, holder, denoiser, scheduler):
        """A pipeline over ``holder``'s VAE and text towers and ``denoiser`` (validation images)."""
        parts = {name: getattr(holder, name) for t in self.towers for name in (t.tokenizer, t.encoder)}
        return self.pipeline_class()(vae=holder.vae, scheduler=scheduler, feature_extractor=None,
                                     **{self.denoiser_subfolder: denoiser}, **parts, **self.pipeline_kwargs())

    def save_lora_weights(self, directory: str | Path, denoiser_lora_layers: Dict[str, Tensor]) -> None:
        """``directory/pytorch_lora_weights.safetensors`` in the pipeline's own format (its ``save_lora_weights``:
        ``unet_lora_layers``, ``transformer_lora_layers``, by ``denoiser_subfolder``)."""
        self.pipeline_class().save_lora_weights(str(directory), safe_serialization=True,
                                                **{f"{self.denoiser_subfolder}_lora_layers": denoiser_lora_layers})
