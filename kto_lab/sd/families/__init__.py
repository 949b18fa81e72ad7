"""Model families: what differs between SD 1.x/2.x, SDXL and SD3, and nothing else (DESIGN.md, "Model families").

One file per family (``sd.py``, ``sdxl.py``, ``sd3.py``), each a :class:`~kto_lab.sd.families.base.ModelFamily`
(the protocol, ``base.py``); the registry below holds one of each. The step, objectives, trainer, cache,
checkpoints and evaluation call a family and never name one: a new family is a file here, one line in
:data:`FAMILIES`, its configs and a test id (docs/training.md, "Adding a model family").

:func:`resolve_family` reads a pipeline's family from its ``model_index.json`` (or checks a named one);
:func:`family_of_pipeline` gives a loaded pipeline's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from ...config import ConfigError
from ..hub import pipeline_class_name
from .base import ModelFamily, TextTower
from .sd import SDFamily
from .sd3 import SD3Family
from .sdxl import SDXLFamily

FAMILIES: Dict[str, ModelFamily] = {f.name: f for f in (SDFamily(), SDXLFamily(), SD3Family())}
FAMILY_CHOICES = ("auto",) + tuple(FAMILIES)
# where the families' denoisers live in a pipeline, and a full fine-tune's weights in a run directory
DENOISER_FOLDERS = tuple(dict.fromkeys(f.denoiser_subfolder for f in FAMILIES.values()))

__all__ = ["DENOISER_FOLDERS", "FAMILIES", "FAMILY_CHOICES", "ModelFamily", "TextTower", "family_of_pipeline",
           "resolve_family"]


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
