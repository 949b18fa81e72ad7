"""The trainer's models: load them, attach LoRA, build the reference, save the result.

* :func:`load_components` reads the UNet, VAE, text encoder(s), tokenizer(s) and noise schedule of
  a pipeline (local dir or hub id) with diffusers/transformers ``from_pretrained``; what differs
  between SD 1.x/2.x and SDXL comes from its family (:mod:`kto_lab.sd.families`).
* :func:`add_lora` attaches peft LoRA adapters through diffusers' ``unet.add_adapter``.
* :func:`frozen_reference` makes the frozen low-precision copy kept on the device.
* :func:`save_unet` / :func:`save_lora` write the diffusers UNet format and
  ``pytorch_lora_weights.safetensors`` (loadable by the family pipeline's ``load_lora_weights``).
* :func:`unet_from_config` builds a randomly initialised UNet from a config JSON
  (``kto_lab/configs/sd15_unet.json`` for benchmarks).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..config import CONFIG_DIR
from ..schedule import NoiseSchedule

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class Components:
    """What a training step needs. Only ``unet`` and ``schedule`` are required (a cached run or a
    benchmark feeds latents and text embeddings directly)."""

    unet: Any
    schedule: NoiseSchedule
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    reference_unet: Any = None  # a given reference (e.g. the previous SPIN iteration); None = copy of unet
    scheduler_config: Optional[Dict[str, Any]] = None  # the noise scheduler's config (for validation sampling)
    text_encoder_2: Any = None  # SDXL's second text tower (OpenCLIP ViT-bigG with projection)
    tokenizer_2: Any = None
    family: Any = None  # kto_lab.sd.families.ModelFamily; None = detected from model.pretrained


def local_only() -> bool:
    """Hub look-ups offline when ``HF_HUB_OFFLINE`` is set (diffusers' ``local_files_only``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _looks_local(path: str) -> bool:
    """A local path rather than a hub id (``org/name``)."""
    return Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") > 1


def _named(path: str, field: Optional[str]) -> str:
    return f"{field}={path!r}" if field else repr(path)


def check_pipeline_dir(path: str | Path, field: Optional[str] = None) -> None:
    """A path that looks local must be a diffusers pipeline directory; the error names ``field``."""
    path = str(path)
    p = Path(path)
    if _looks_local(path) and not (p / "model_index.json").is_file():
        raise FileNotFoundError(f"{_named(path, field)} is not a diffusers pipeline directory (expected {p / 'model_index.json'})")


def check_unet_dir(path: str | Path, field: Optional[str] = None, *, local: bool = False) -> None:
    """A UNet directory (config.json) or a pipeline directory (unet/config.json); a path that looks
    like a hub id passes unless ``local``. The error names ``field`` (nothing falls back to the hub)."""
    path = str(path)
    p = Path(path)
    if (p / "config.json").is_file() or (p / "unet" / "config.json").is_file():
        return
    if local or _looks_local(path):
        where = "" if p.exists() else ": no such directory"
        raise FileNotFoundError(f"{_named(path, field)} is neither a UNet directory (config.json) nor a pipeline "
                                f"(unet/config.json){where}")


def check_model_config(model_cfg) -> None:
    """The local paths of a ``ModelConfig`` exist and hold what they should (no model is read)."""
    check_pipeline_dir(model_cfg.pretrained, "model.pretrained")
    for name in ("unet", "reference"):
        if getattr(model_cfg, name):
            check_unet_dir(getattr(model_cfg, name), f"model.{name}")


def _load_model(cls, path: str | Path, subfolder: str, what: str, hub_subfolder: Optional[str], **kwargs):
    """``cls.from_pretrained`` of a model directory (config.json), a pipeline directory (``subfolder``/),
    or a hub id (``hub_subfolder`` of it)."""
    p = Path(path)
    if (p / "config.json").is_file():
        return cls.from_pretrained(p, **kwargs)
    if (p / subfolder / "config.json").is_file():
        return cls.from_pretrained(p, subfolder=subfolder, **kwargs)
    if p.exists() or str(path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{str(path)!r} is neither a {what} directory (config.json) nor a pipeline "
                                f"({subfolder}/config.json)")
    sub = {"subfolder": hub_subfolder} if hub_subfolder else {}
    return cls.from_pretrained(str(path), local_files_only=local_only(), **sub, **kwargs)


def load_unet(path: str | Path, **kwargs):
    """A ``UNet2DConditionModel`` from a UNet directory (config.json) or a pipeline directory (unet/)."""
    from diffusers import UNet2DConditionModel

    check_unet_dir(path)
    return _load_model(UNet2DConditionModel, path, "unet", "UNet", "unet", **kwargs)


def load_vae(path: str | Path, **kwargs):
    """An ``AutoencoderKL`` from a VAE directory or hub repo (e.g. an fp16-safe SDXL VAE) or a pipeline (vae/)."""
    from diffusers import AutoencoderKL

    return _load_model(AutoencoderKL, path, "vae", "VAE", None, **kwargs)


def load_components(model_cfg, *, need_text: bool = True, need_vae: bool = True, family=None) -> Components:
    """Load the parts of ``model_cfg.pretrained`` (optionally another policy UNet, reference or VAE).

    ``family``: a :class:`~kto_lab.sd.families.ModelFamily` (default: ``model_cfg.family``, detected from
    the pipeline's ``model_index.json`` when ``auto``). A UNet of another family is a one-line error.
    """
    from diffusers import AutoencoderKL

    from .families import resolve_family

    src = str(model_cfg.pretrained)
    check_model_config(model_cfg)
    family = family or resolve_family(src, model_cfg.family)
    kw = {"local_files_only": local_only()}
    schedule, scheduler_config = family.load_schedule(src, **kw)
    unet = load_unet(model_cfg.unet) if model_cfg.unet else load_unet(src)
    family.check_unet(unet.config, f"model.unet={model_cfg.unet!r}" if model_cfg.unet else f"model.pretrained={src!r}")
    reference = load_unet(model_cfg.reference) if model_cfg.reference else None
    if reference is not None:
        family.check_unet(reference.config, f"model.reference={model_cfg.reference!r}")
    vae = None
    if need_vae:
        vae = load_vae(model_cfg.vae) if model_cfg.vae else AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
    return Components(
        unet=unet, schedule=schedule, vae=vae, reference_unet=reference, scheduler_config=scheduler_config,
        family=family, **(family.load_text(src, **kw) if need_text else {}),
    )


def unet_from_config(config: str | Path | Dict[str, Any] = "sd15_unet.json", seed: int = 0):
    """A randomly initialised ``UNet2DConditionModel`` from a config dict, a JSON file, or the name
    of a JSON file in ``kto_lab/configs`` (default: SD 1.5's UNet)."""
    from diffusers import UNet2DConditionModel

    if not isinstance(config, dict):
        p = Path(config)
        if not p.is_file():
            p = CONFIG_DIR / str(config)
        if not p.is_file():
            raise FileNotFoundError(f"UNet config {str(config)!r} not found (also looked in {CONFIG_DIR})")
        config = json.loads(p.read_text())
    torch.manual_seed(seed)
    return UNet2DConditionModel.from_config(config)


def add_lora(unet, rank: int, alpha: float, target_modules) -> None:
    """Attach LoRA adapters (peft, via diffusers' ``add_adapter``); only they are trainable.

    ``init_lora_weights="gaussian"`` as diffusers' LoRA script: B = 0, so the policy starts
    equal to the reference (LoRA study sec. 3.1).
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=list(target_modules)))
    if not any(p.requires_grad for p in unet.parameters()):
        raise ValueError(f"lora.target_modules={list(target_modules)} matched no module of the UNet")


def cast_trainable_to_fp32(model) -> None:
    """Trainable parameters in fp32 even when the frozen base is fp16/bf16 (diffusers' cast_training_params)."""
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def move(model, device, dtype: torch.dtype):
    """``model.to(device, dtype)``, casting only if the dtype differs (diffusers warns on no-op casts)."""
    current = next(model.parameters()).dtype
    return model.to(device) if current == dtype else model.to(device=device, dtype=dtype)


def frozen_reference(unet, dtype: torch.dtype, device) -> Any:
    """A frozen copy of ``unet`` in ``dtype`` on ``device``: the reference of a full fine-tune.

    It stays on the device (bf16/fp16 halves its memory); the official Diffusion-DPO script moves
    its reference between CPU and GPU on every step instead.
    """
    ref = copy.deepcopy(unet)
    ref = move(ref, next(ref.parameters()).device, dtype)  # cast where it lies (the host for a fresh load)
    ref = ref.to(device)
    ref.requires_grad_(False)
    ref.eval()
    return ref


def lora_state_dict(unet) -> Dict[str, torch.Tensor]:
    """The LoRA weights of ``unet`` in diffusers' key format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(unet, directory: str | Path, family=None) -> Path:
    """``directory/pytorch_lora_weights.safetensors``, readable by ``pipe.load_lora_weights(directory)``
    of ``family``'s pipeline (default SD 1.x/2.x)."""
    from .families import FAMILIES

    (family or FAMILIES["sd"]).save_lora_weights(directory, lora_state_dict(unet))
    return Path(directory) / LORA_WEIGHTS


def load_lora(unet, directory: str | Path) -> None:
    """Load ``pytorch_lora_weights.safetensors`` from ``directory`` into ``unet``'s (existing) adapter."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state, _ = StableDiffusionPipeline.lora_state_dict(str(directory))
    state = {k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}
    result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA weights in {str(directory)!r} have unexpected keys, e.g. {unexpected[:3]}")


def save_unet(unet, directory: str | Path) -> Path:
    """The UNet in diffusers format (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
    unet.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
