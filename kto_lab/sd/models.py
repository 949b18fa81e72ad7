"""Load any SD 1.x/2.x, SDXL or SD3 pipeline, with a fine-tuned denoiser or LoRA, and check those fit it.

Real weights load with ``from_pretrained(local_dir_or_hub_id)`` exactly as diffusers does; nothing here
downloads unless the user passes a hub id and is online. Tiny random pipelines for tests and demos come from
each family's ``build_tiny`` (:mod:`kto_lab.sd.families`), and load back through the same code path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch


def check_model_paths(pipeline, denoiser=None, lora=None, prefix: str = "") -> None:
    """Before anything loads: ``pipeline`` is a pipeline directory (or a hub id), ``denoiser`` a local denoiser
    directory (or a pipeline with one), ``lora`` an existing file or directory, and none of their weights files
    is truncated. Errors name ``prefix + field`` (``"--"`` for the command line, ``"models[0]."`` for a config)."""
    from .components import LORA_WEIGHTS, check_denoiser_dir, check_weight_files
    from .hub import check_pipeline_dir

    check_pipeline_dir(pipeline, prefix + "pipeline")
    if denoiser is not None:
        check_denoiser_dir(denoiser, prefix + "denoiser", local=True)
    if lora is not None and not Path(lora).exists():
        raise FileNotFoundError(f"{prefix}lora={str(lora)!r}: no such LoRA weights file or directory")
    check_weight_files(pipeline, prefix + "pipeline")
    if denoiser is not None:
        check_weight_files(denoiser, prefix + "denoiser")
    if lora is not None:
        lora_file = Path(lora) / LORA_WEIGHTS if Path(lora).is_dir() else Path(lora)
        if lora_file.is_file():
            check_weight_files(lora_file, prefix + "lora")


def load_pipeline(
    path_or_id: str | Path,
    *,
    torch_dtype: Optional[torch.dtype] = None,
    denoiser_path: Optional[str | Path] = None,
    lora_path: Optional[str | Path] = None,
    local_files_only: Optional[bool] = None,
    family: str = "auto",
):
    """Load an SD 1.x/2.x, SDXL or SD3 pipeline (local dir or hub id; the family from its ``model_index.json``),
    optionally with a fine-tuned denoiser (SD's UNet, SD3's transformer; diffusers format) or LoRA weights
    (``pytorch_lora_weights.safetensors``).

    A missing local directory gives an error naming it, before anything loads; a denoiser or LoRA of another
    family (an SDXL LoRA for an SD 1.5 pipeline, an SD3 LoRA for SDXL, ...) a one-line
    :class:`~kto_lab.config.ConfigError`. Hub ids are resolved by diffusers, offline when ``HF_HUB_OFFLINE=1``
    (``local_files_only`` defaults to that).
    """
    from .components import load_denoiser, read_lora_state
    from .families import resolve_family
    from .hub import local_only

    check_model_paths(path_or_id, denoiser_path, lora_path)
    fam = resolve_family(path_or_id, family, field="pipeline")
    if local_files_only is None:
        local_files_only = local_only()
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = fam.pipeline_class().from_pretrained(str(path_or_id), local_files_only=local_files_only,
                                                **fam.pipeline_kwargs(), **kwargs)
    if denoiser_path is not None:
        denoiser = load_denoiser(denoiser_path, fam, **kwargs)
        fam.check_denoiser(denoiser.config, f"{fam.denoiser_name} {str(denoiser_path)!r}")
        setattr(pipe, fam.denoiser_subfolder, denoiser)
    if lora_path is not None:
        lora = Path(lora_path)
        directory, name = (lora, None) if lora.is_dir() else (lora.parent, lora.name)
        state = read_lora_state(fam, directory, name)
        check_lora_fits(fam.denoiser_of(pipe), state, f"LoRA {str(lora)!r}", fam)
        # into the denoiser, which is all it holds (the pipeline's load_lora_weights would also look for
        # text-encoder keys and log that it found none)
        fam.denoiser_of(pipe).load_lora_adapter(state, prefix=fam.denoiser_subfolder)
    return pipe


def check_lora_fits(denoiser_model, state: dict, what: str, family) -> None:
    """Every LoRA matrix of ``state`` for the family's denoiser (keys ``<denoiser_subfolder>.*``: ``unet.*``,
    ``transformer.*``) must name a module of ``denoiser_model`` with matching features, and none may be for another
    family's denoiser: a LoRA trained for another model family (SD 1.5 vs SDXL vs SD3) fails here in one line, not
    deep inside peft."""
    from ..config import ConfigError
    from .families import DENOISER_FOLDERS

    prefix = family.denoiser_subfolder + "."
    denoiser = family.denoiser_name
    others = tuple(f"{d}." for d in DENOISER_FOLDERS if d != family.denoiser_subfolder)
    modules = dict(denoiser_model.named_modules())
    for key, weight in state.items():
        if ".lora" not in key:
            continue
        if key.startswith(others):
            raise ConfigError(f"{what} does not fit this {family.pipeline_class_name}'s {denoiser} (it holds LoRA "
                              f"weights of a {key.split('.')[0]}): was it trained for another model family?")
        if not key.startswith(prefix):
            continue
        name, _, kind = key[len(prefix):].partition(".lora")
        module = modules.get(name)
        width = None if module is None else (
            getattr(module, "in_features", None) if kind.startswith(("_A", ".down")) else getattr(module, "out_features", None))
        axis = 1 if kind.startswith(("_A", ".down")) else 0
        if module is None or (width is not None and weight.shape[axis] != width):
            found = "has no module" if module is None else f"has {width} features at"
            raise ConfigError(f"{what} does not fit this {family.pipeline_class_name}'s {denoiser} ({found} {name!r}): "
                              f"was it trained for another model family?")
