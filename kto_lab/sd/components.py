"""The trainer's models: load them, attach LoRA, build the reference, save the result.

* :func:`load_components` reads the denoiser (SD's UNet, SD3's transformer, ...), VAE, text encoder(s),
  tokenizer(s) and training schedule of a pipeline (local dir or hub id) with diffusers/transformers
  ``from_pretrained``; what differs between families comes from the family (:mod:`kto_lab.sd.families`).
* :func:`add_lora` attaches peft LoRA adapters through diffusers' ``add_adapter``.
* :func:`frozen_reference` makes the frozen low-precision copy kept on the device.
* :func:`save_denoiser` / :func:`save_lora` write the diffusers model format and
  ``pytorch_lora_weights.safetensors`` (loadable by the family pipeline's ``load_lora_weights``).
* :func:`denoiser_from_config` builds a randomly initialised denoiser from a config JSON
  (``kto_lab/configs/sd15_unet.json``, ``sd3_transformer.json``, ... for benchmarks).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..config import CONFIG_DIR, ConfigError
from .families import DENOISER_FOLDERS, resolve_family
from .hub import check_pipeline_dir, local_only, looks_local, named

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class Components:
    """What a training step needs. Only the ``denoiser`` and ``schedule`` are required (a cached run or a
    benchmark feeds latents and text embeddings directly)."""

    denoiser: Any  # the family's denoiser: SD's UNet, SD3's transformer, ...
    schedule: Any  # the family's training schedule (kto_lab.schedule: NoiseSchedule, FlowMatchingSchedule)
    vae: Any = None
    text_encoder: Any = None
    tokenizer: Any = None
    reference_denoiser: Any = None  # a given reference (e.g. the previous SPIN iteration); None = a copy of denoiser
    scheduler_config: Optional[Dict[str, Any]] = None  # the noise scheduler's config (for validation sampling)
    text_encoder_2: Any = None  # SDXL's second text tower (OpenCLIP ViT-bigG with projection)
    tokenizer_2: Any = None
    text_encoder_3: Any = None  # SD3's T5 encoder
    tokenizer_3: Any = None
    family: Any = None  # kto_lab.sd.families.ModelFamily; None = detected from model.pretrained


def check_denoiser_dir(path: str | Path, field: Optional[str] = None, *, local: bool = False) -> None:
    """A denoiser directory (config.json) or a pipeline directory (its denoiser's folder, e.g. unet/ or
    transformer/, with a config.json); a path that looks like a hub id passes unless ``local``. The error names
    ``field`` (nothing falls back to the hub). Which class it holds is checked when it loads (:func:`load_denoiser`)."""
    path = str(path)
    p = Path(path)
    if any((p / sub / "config.json").is_file() for sub in ("",) + DENOISER_FOLDERS):
        return
    if local or looks_local(path):
        where = "" if p.exists() else ": no such directory"
        folders = " or ".join(f"{sub}/config.json" for sub in DENOISER_FOLDERS)
        raise FileNotFoundError(f"{named(path, field)} is neither a denoiser directory (config.json) nor a pipeline "
                                f"({folders}){where}")


def weights_problem(path: Path) -> Optional[str]:
    """Why a weights file cannot be complete, or None: a ``.safetensors`` file whose header is unreadable or
    promises more bytes than the file holds (a cut copy or download), or a torch zip (``.bin``, ``.pt``)
    without its end record. Reads the header only (microseconds), so it runs before anything loads."""
    import struct
    import zipfile

    size = path.stat().st_size
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            try:
                header = json.loads(f.read(n)) if 0 <= n <= size - 8 else None
            except ValueError:
                header = None
        if not isinstance(header, dict):
            return f"{path} is not a complete safetensors file (its header cannot be read)"
        end = max([t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"] or [0])
        if size < 8 + n + end:
            return f"{path} is truncated ({size} bytes; its header describes {8 + n + end})"
    elif path.suffix in (".bin", ".pt", ".pth") and size >= 4:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip and not zipfile.is_zipfile(path):
            return f"{path} is truncated (a torch zip file without its end record)"
    return None


def check_weight_files(path: str | Path, field: Optional[str] = None) -> None:
    """Every weights file of the model at ``path`` (a file, a model folder, a pipeline's components; see
    :func:`kto_lab.fingerprint.model_files`) is complete (:func:`weights_problem`); else one ConfigError
    naming ``field`` and the file. A path that does not exist (a hub id) passes."""
    from ..config import ConfigError
    from ..fingerprint import model_files

    if not Path(path).exists():
        return
    for f in model_files(path).values():
        why = weights_problem(f)
        if why is not None:
            where = field if Path(path) == f else named(str(path), field)
            raise ConfigError(f"{where}: {why}; copy or download it again")


def check_model_config(model_cfg, family=None):
    """The local paths of a ``ModelConfig`` exist and hold what they should, and a local ``model.denoiser`` /
    ``model.reference`` is of the pipeline's family (from its config.json; no model is read). Returns the
    family (``family``, or the one of ``model.pretrained``'s model_index.json)."""
    check_pipeline_dir(model_cfg.pretrained, "model.pretrained")
    family = family or resolve_family(model_cfg.pretrained, model_cfg.family)
    check_weights(model_cfg.pretrained, "model.pretrained")
    for name in ("denoiser", "reference"):
        path = getattr(model_cfg, name)
        if path:
            check_denoiser_dir(path, f"model.{name}")
            found = _local_model(path, family.denoiser_subfolder)
            if found is not None:
                family.check_denoiser(json.loads((Path(path) / found / "config.json").read_text()),
                                      f"model.{name}={path!r}")
                check_weights(Path(path) / found, f"model.{name}")
            elif looks_local(path):  # a pipeline of another family: its denoiser lives in another folder
                raise ConfigError(f"model.{name}={path!r} holds no {family.name} {family.denoiser_class_name} (neither "
                                  f"config.json nor {family.denoiser_subfolder}/config.json): was it trained for "
                                  f"another model family?")
    return family


def check_weights(path: str | Path, field: str) -> None:
    """Each safetensors file of a local model or pipeline directory (and its sub-folders) has a whole header
    and the length it declares: a cut download or copy fails here, in one line naming the file, before any
    model loads (from_pretrained's own error is a traceback). Reads the headers only."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_dir():
        return  # a hub id: diffusers checks what it downloads
    for f in sorted([*p.glob("*.safetensors"), *p.glob("*/*.safetensors")]):
        try:
            with safe_open(str(f), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{field}={str(path)!r}: {f} cannot be read ({exc}): it is truncated or damaged; "
                              "copy or download it again") from None


def _local_model(path: str | Path, subfolder: str) -> Optional[str]:
    """Where under ``path`` a model's config.json is: "" (a model directory), ``subfolder`` (a pipeline), or None."""
    p = Path(path)
    return next((sub for sub in ("", subfolder) if (p / sub / "config.json").is_file()), None)


def _load_model(cls, path: str | Path, subfolder: str, what: str, hub_subfolder: Optional[str],
                check_config=None, **kwargs):
    """``cls.from_pretrained`` of a model directory (config.json), a pipeline directory (``subfolder``/),
    or a hub id (``hub_subfolder`` of it). ``check_config(config_dict)`` sees a local config before the model
    is built."""
    p = Path(path)
    found = _local_model(p, subfolder)
    if found is not None:
        if check_config is not None:
            check_config(json.loads((p / found / "config.json").read_text()))
        return cls.from_pretrained(p, **({"subfolder": found} if found else {}), **kwargs)
    if p.exists() or str(path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{str(path)!r} is neither a {what} directory (config.json) nor a pipeline "
                                f"({subfolder}/config.json)")
    sub = {"subfolder": hub_subfolder} if hub_subfolder else {}
    return cls.from_pretrained(str(path), local_files_only=local_only(), **sub, **kwargs)


def load_denoiser(path: str | Path, family, **kwargs):
    """The denoiser of ``family`` (SD's ``UNet2DConditionModel``, SD3's ``SD3Transformer2DModel``, ...) from its
    directory (config.json) or a pipeline directory (the family's denoiser folder). A local model of another
    class fails in one line before it is built."""
    check_denoiser_dir(path)

    def check(config):
        family.check_denoiser_class(config, repr(str(path)))

    sub = family.denoiser_subfolder
    return _load_model(family.denoiser_class(), path, sub, family.denoiser_class_name, sub, check, **kwargs)


def load_vae(path: str | Path, **kwargs):
    """An ``AutoencoderKL`` from a VAE directory or hub repo (e.g. an fp16-safe SDXL VAE) or a pipeline (vae/)."""
    from diffusers import AutoencoderKL

    return _load_model(AutoencoderKL, path, "vae", "VAE", None, **kwargs)


def load_components(model_cfg, *, need_text: bool = True, need_vae: bool = True, family=None,
                    resolution: Optional[int] = None) -> Components:
    """Load the parts of ``model_cfg.pretrained`` (optionally another policy denoiser, reference or VAE).

    ``family``: a :class:`~kto_lab.sd.families.ModelFamily` (default: ``model_cfg.family``, detected from
    the pipeline's ``model_index.json`` when ``auto``). A denoiser of another family is a one-line error.
    ``resolution``: of the training images, for the schedule (default: the family's).
    """
    from diffusers import AutoencoderKL

    src = str(model_cfg.pretrained)
    family = check_model_config(model_cfg, family)
    kw = {"local_files_only": local_only()}
    schedule, scheduler_config = family.load_schedule(src, resolution or family.default_resolution, **kw)
    denoiser = load_denoiser(model_cfg.denoiser or src, family)
    family.check_denoiser(denoiser.config, f"model.denoiser={model_cfg.denoiser!r}" if model_cfg.denoiser
                          else f"model.pretrained={src!r}")
    reference = load_denoiser(model_cfg.reference, family) if model_cfg.reference else None
    if reference is not None:
        family.check_denoiser(reference.config, f"model.reference={model_cfg.reference!r}")
    vae = None
    if need_vae:
        vae = load_vae(model_cfg.vae) if model_cfg.vae else AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
    return Components(
        denoiser=denoiser, schedule=schedule, vae=vae, reference_denoiser=reference,
        scheduler_config=scheduler_config, family=family, **(family.load_text(src, **kw) if need_text else {}),
    )


def denoiser_from_config(config: str | Path | Dict[str, Any], seed: int = 0):
    """A randomly initialised denoiser of the config's ``_class_name`` (``UNet2DConditionModel``,
    ``SD3Transformer2DModel``, ...) from a config dict, a JSON file, or the name of a JSON file in
    ``kto_lab/configs`` (``sd15_unet.json``, ``sdxl_unet.json``, ``sd3_transformer.json``)."""
    import diffusers

    if not isinstance(config, dict):
        p = Path(config)
        if not p.is_file():
            p = CONFIG_DIR / str(config)
        if not p.is_file():
            raise FileNotFoundError(f"denoiser config {str(config)!r} not found (also looked in {CONFIG_DIR})")
        config = json.loads(p.read_text())
    if "_class_name" not in config:
        raise ValueError("a denoiser config must name its diffusers model class (_class_name)")
    torch.manual_seed(seed)
    return getattr(diffusers, config["_class_name"]).from_config(config)


def add_lora(denoiser, rank: int, alpha: float, target_modules) -> None:
    """Attach LoRA adapters (peft, via diffusers' ``add_adapter``); only they are trainable.

    ``init_lora_weights="gaussian"`` as diffusers' LoRA script: B = 0, so the policy starts
    equal to the reference (LoRA study sec. 3.1).
    """
    from peft import LoraConfig

    names = [n for n, _ in denoiser.named_modules()]
    unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n in names)]  # peft's rule
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ConfigError(f"lora.target_modules: {unmatched} match no module of the {type(denoiser).__name__}; its "
                          f"linear layers are named {linear[:16]}{' ...' if len(linear) > 16 else ''}")
    denoiser.requires_grad_(False)
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                    target_modules=list(target_modules)))


def cast_trainable_to_fp32(model) -> None:
    """Trainable parameters in fp32 even when the frozen base is fp16/bf16 (diffusers' cast_training_params)."""
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()


def move(model, device, dtype: torch.dtype):
    """``model.to(device, dtype)``, casting only if the dtype differs (diffusers warns on no-op casts)."""
    current = next(model.parameters()).dtype
    return model.to(device) if current == dtype else model.to(device=device, dtype=dtype)


def frozen_reference(denoiser, dtype: torch.dtype, device) -> Any:
    """A frozen copy of ``denoiser`` in ``dtype`` on ``device``: the reference of a full fine-tune.

    It stays on the device (bf16/fp16 halves its memory); the official Diffusion-DPO script moves
    its reference between CPU and GPU on every step instead.
    """
    ref = copy.deepcopy(denoiser)
    ref = move(ref, next(ref.parameters()).device, dtype)  # cast where it lies (the host for a fresh load)
    ref = ref.to(device)
    ref.requires_grad_(False)
    ref.eval()
    return ref


def lora_state_dict(denoiser, diffusers_keys: bool = True) -> Dict[str, torch.Tensor]:
    """The LoRA weights of ``denoiser``: in diffusers' key format (``lora.down``/``lora.up``, what its UNet LoRA
    scripts save) or, ``diffusers_keys=False``, in peft's (``lora_A``/``lora_B``, what its SD3 LoRA script saves)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(denoiser)
    return convert_state_dict_to_diffusers(state) if diffusers_keys else state


def save_lora(denoiser, directory: str | Path, family) -> Path:
    """``directory/pytorch_lora_weights.safetensors``, readable by ``pipe.load_lora_weights(directory)``
    of ``family``'s pipeline."""
    family.save_lora_weights(directory, lora_state_dict(denoiser, family.lora_diffusers_keys))
    return Path(directory) / LORA_WEIGHTS


def read_lora_state(family, directory: str | Path, weight_name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """The LoRA state dict in ``directory`` (``weight_name`` in it; default ``pytorch_lora_weights.safetensors``),
    read by ``family``'s pipeline class (SD/SDXL's loaders return it with network alphas, SD3's alone)."""
    out = family.pipeline_class().lora_state_dict(str(directory), **({"weight_name": weight_name} if weight_name else {}))
    return out[0] if isinstance(out, tuple) else out


def load_lora(denoiser, directory: str | Path, family) -> None:
    """Load ``pytorch_lora_weights.safetensors`` from ``directory`` (saved by :func:`save_lora` for ``family``)
    into ``denoiser``'s (existing) adapter."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from peft.utils import set_peft_model_state_dict

    state = read_lora_state(family, directory)
    prefix = family.denoiser_subfolder + "."
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    result = set_peft_model_state_dict(denoiser, convert_unet_state_dict_to_peft(state), adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"LoRA weights in {str(directory)!r} have unexpected keys, e.g. {unexpected[:3]}")


def save_denoiser(denoiser, directory: str | Path) -> Path:
    """The denoiser in diffusers format (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
    denoiser.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
