"""Where a model comes from: a local directory or a Hugging Face Hub id, and what it holds.

* :func:`local_only`: hub look-ups offline when ``HF_HUB_OFFLINE`` is set (diffusers' ``local_files_only``).
* :func:`looks_local` / :func:`check_pipeline_dir`: a path that looks local must exist and be a pipeline.
* :func:`pipeline_class_name`: a pipeline's ``_class_name`` (its ``model_index.json``), which names its family.

A module of its own so that the model families and the component loaders both read it and neither imports the other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..config import ConfigError


def local_only() -> bool:
    """Hub look-ups offline when ``HF_HUB_OFFLINE`` is set (diffusers' ``local_files_only``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def looks_local(path: str) -> bool:
    """A local path rather than a hub id (``org/name``)."""
    return Path(path).exists() or path.startswith((".", "/", "~")) or path.count("/") > 1


def named(path: str, field: Optional[str]) -> str:
    """``field='path'`` for an error message (or the bare path)."""
    return f"{field}={path!r}" if field else repr(path)


def check_pipeline_dir(path: str | Path, field: Optional[str] = None) -> None:
    """A path that looks local must be a diffusers pipeline directory; the error names ``field``."""
    path = str(path)
    p = Path(path)
    if looks_local(path) and not (p / "model_index.json").is_file():
        raise FileNotFoundError(f"{named(path, field)} is not a diffusers pipeline directory (expected {p / 'model_index.json'})")


def pipeline_class_name(pretrained: str | Path) -> Optional[str]:
    """``_class_name`` of ``model_index.json`` of a local pipeline dir (or a hub id diffusers can resolve);
    None when it cannot be read."""
    p = Path(str(pretrained)).expanduser()
    if (p / "model_index.json").is_file():
        try:
            index = json.loads((p / "model_index.json").read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p / 'model_index.json'} is not valid JSON ({exc}): the pipeline's download or copy "
                              "is damaged; fetch it again") from None
        return index.get("_class_name") if isinstance(index, dict) else None
    if p.exists() or str(pretrained).startswith((".", "/", "~")):
        return None
    try:
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(str(pretrained), local_files_only=local_only()).get("_class_name")
    except Exception:  # offline and not cached, or not a pipeline: the caller says what to do
        return None
