"""Image scorers behind one interface: ``scorer.score(images, prompts) -> float64 array``.

A scorer maps a batch of images (a list of PIL images, or a uint8 / float array of shape
(N, H, W, 3)) and their prompts to one score per image; higher is better. The paper's
automatic metrics (Diffusion-KTO sec. 5 and appendix A.2: LAION aesthetic, CLIP, PickScore,
HPS v2, ImageReward) load from local directories in :mod:`kto_lab.eval.model_scorers`;
this module holds the interface, the registry and the programmatic scorers that need no
weights (appendix C: redness; plus saturation, brightness, contrast for synthetic users).

    from kto_lab.eval.scorers import get_scorer
    redness = get_scorer("redness")
    pick = get_scorer("pickscore", path="/models/PickScore_v1", processor_path="/models/CLIP-ViT-H-14")
    scores = pick.score(images, prompts)
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Union, runtime_checkable

import numpy as np

ImageBatch = Union[Sequence["PIL.Image.Image"], np.ndarray]  # noqa: F821


@runtime_checkable
class Scorer(Protocol):
    """Anything with a ``name`` and ``score(images, prompts)`` returning one float64 per image."""

    name: str

    def score(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> np.ndarray: ...


# --- image batches -> float arrays in [0, 1] ----------------------------------------------


def to_float_array(images: ImageBatch) -> np.ndarray:
    """A batch of RGB images as a float64 array (N, H, W, 3) in [0, 1].

    Accepts a list of PIL images (converted to RGB), a uint8 array (divided by 255), or a
    float array already in [0, 1]. A single image (H, W, 3) is treated as a batch of one.
    """
    if isinstance(images, np.ndarray):
        arr = images
    elif hasattr(images, "detach") and hasattr(images, "cpu"):  # a torch tensor (N, H, W, 3)
        arr = images.detach().cpu().numpy()
    else:
        images = list(images)
        if not images:
            return np.zeros((0, 1, 1, 3), dtype=np.float64)
        arrays = []
        for i, im in enumerate(images):
            if hasattr(im, "convert"):
                arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            elif isinstance(im, np.ndarray):
                arrays.append(im)
            else:
                raise TypeError(f"image {i} is a {type(im).__name__}; expected a PIL image or an (H, W, 3) array")
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"images in one batch must share a size; got shapes {sorted(shapes)}")
        arr = np.stack(arrays)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must have shape (N, H, W, 3), got {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    arr = arr.astype(np.float64)
    if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise ValueError(
            f"float images must lie in [0, 1], got values in [{arr.min():.3g}, {arr.max():.3g}]; "
            "pass uint8 arrays for 0-255 data"
        )
    return np.clip(arr, 0.0, 1.0)


def to_pil_list(images: ImageBatch) -> List["PIL.Image.Image"]:  # noqa: F821
    """A batch as a list of RGB PIL images (what CLIP processors take)."""
    from PIL import Image

    if not isinstance(images, np.ndarray) and not hasattr(images, "detach"):
        images = list(images)
        if all(hasattr(im, "convert") for im in images):  # RGB images pass as they are (no copy)
            return [im if getattr(im, "mode", None) == "RGB" else im.convert("RGB") for im in images]
    arr = to_float_array(images)
    return [Image.fromarray(np.round(a * 255).astype(np.uint8)) for a in arr]


def luminance(images: ImageBatch) -> np.ndarray:
    """Per-pixel luma (ITU-R BT.601 weights 0.299, 0.587, 0.114), shape (N, H, W), in [0, 1]."""
    arr = to_float_array(images)
    return arr @ np.array([0.299, 0.587, 0.114])


# --- programmatic scorers (no weights) ----------------------------------------------------


def redness(images: ImageBatch) -> np.ndarray:
    """The paper's redness (Diffusion-KTO, Figure 7 / appendix C): the mean of the red channel
    minus the mean over all channels, per image. In [-1/3, 2/3] for [0, 1] images."""
    arr = to_float_array(images)
    return arr[..., 0].mean(axis=(1, 2)) - arr.mean(axis=(1, 2, 3))


def saturation(images: ImageBatch) -> np.ndarray:
    """Mean HSV saturation ``(max - min) / max`` per image (0 where a pixel is black)."""
    arr = to_float_array(images)
    hi, lo = arr.max(axis=-1), arr.min(axis=-1)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return sat.mean(axis=(1, 2))


def brightness(images: ImageBatch) -> np.ndarray:
    """Mean luma (BT.601) per image, in [0, 1]."""
    return luminance(images).mean(axis=(1, 2))


def contrast(images: ImageBatch) -> np.ndarray:
    """RMS contrast: the standard deviation of luma (BT.601) per image, in [0, 0.5]."""
    return luminance(images).std(axis=(1, 2))


@dataclass
class FunctionScorer:
    """Wraps a prompt-free function ``fn(images) -> (N,)`` as a :class:`Scorer`."""

    name: str
    fn: Callable[[ImageBatch], np.ndarray]

    def score(self, images: ImageBatch, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        out = np.asarray(self.fn(images), dtype=np.float64)
        if prompts is not None and len(prompts) != len(out):
            raise ValueError(f"{self.name}: got {len(out)} images but {len(prompts)} prompts")
        return out


# --- registry ------------------------------------------------------------------------------

# name -> factory(**kwargs) -> Scorer. Model scorers are imported lazily (transformers is heavy).
SCORERS: Dict[str, Callable[..., Scorer]] = {
    "redness": lambda: FunctionScorer("redness", redness),
    "saturation": lambda: FunctionScorer("saturation", saturation),
    "brightness": lambda: FunctionScorer("brightness", brightness),
    "contrast": lambda: FunctionScorer("contrast", contrast),
}

# model scorers: name -> "module:factory" (loaded from local weights the user downloads)
MODEL_SCORERS: Dict[str, str] = {
    "pickscore": "kto_lab.eval.model_scorers:PickScoreScorer",
    "clip": "kto_lab.eval.model_scorers:CLIPScoreScorer",
    "aesthetic": "kto_lab.eval.model_scorers:AestheticScorer",
    "hpsv2": "kto_lab.eval.model_scorers:HPSv2Scorer",
    "imagereward": "kto_lab.eval.model_scorers:ImageRewardScorer",
}

PROGRAMMATIC = ("redness", "saturation", "brightness", "contrast")

# The smallest score difference each scorer resolves: two median images closer than this are a TIE in a
# win rate (kto_lab.eval.stats.outcomes). Justified in docs/evaluation.md ("Ties"):
# * pixel statistics of 8-bit images: half of one 8-bit level (0.5 / 255). The smallest change of a
#   whole 8-bit image is one level; a smaller difference is a few pixels' rounding (a LoRA that changed
#   98 of 61,440 pixel values by one level moved redness by ~1e-5 and was counted a win, issue 21);
# * model scorers: the spacing of float16 numbers at the score's typical size (what a half-precision run of
#   the scorer cannot tell apart): a cosine in [0.25, 0.5) has spacing 2**-12 = 2.4e-4, so 2.5e-4 for HPS v2
#   (the cosine) and 0.025 for PickScore and CLIP score (100 x the cosine); aesthetic scores lie in [4, 8)
#   (spacing 2**-8 = 0.0039): 0.004; ImageReward's standardised scores in [1, 2) (2**-10): 0.001.
TIE_TOLERANCE: Dict[str, float] = {
    "redness": 0.5 / 255, "saturation": 0.5 / 255, "brightness": 0.5 / 255, "contrast": 0.5 / 255,
    "pickscore": 0.025, "clip": 0.025, "hpsv2": 2.5e-4, "aesthetic": 0.004, "imagereward": 0.001,
}


def tie_tolerance(metric: str, overrides: Optional[Dict[str, float]] = None) -> float:
    """The tie tolerance of ``metric`` (``overrides`` first, then :data:`TIE_TOLERANCE`; 0 = exact ties for a
    metric not known here, e.g. a discrete score)."""
    if overrides and metric in overrides:
        return float(overrides[metric])
    return TIE_TOLERANCE.get(metric, 0.0)


def register_scorer(name: str, factory: Callable[..., Scorer], tie_tolerance: float = 0.0) -> None:
    """Add a scorer (e.g. ``register_scorer("blueness", lambda: FunctionScorer("blueness", fn), 0.5 / 255)``);
    ``tie_tolerance``: the smallest score difference it resolves (0: only equal scores tie)."""
    if name in SCORERS or name in MODEL_SCORERS:
        raise ValueError(f"scorer {name!r} is already registered")
    if not tie_tolerance >= 0:
        raise ValueError(f"tie_tolerance={tie_tolerance!r} must be >= 0")
    SCORERS[name] = factory
    TIE_TOLERANCE[name] = float(tie_tolerance)


def known_scorers() -> List[str]:
    return sorted(set(SCORERS) | set(MODEL_SCORERS))


def check_scorer_options(name: str, options: Sequence[str], where: str = "") -> None:
    """A registered (weightless) scorer's factory must accept every option given, e.g. ``redness`` takes
    none; model scorers check their own (``path`` and the like) when built."""
    if name not in SCORERS:
        return
    params = inspect.signature(SCORERS[name]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [o for o in options if o not in params]
    if unknown:
        from kto_lab.config import ConfigError

        takes = f"takes only {sorted(params)}" if params else "takes no options (it needs no weights)"
        raise ConfigError(f"{where + ': ' if where else 'scorer '}{name!r} {takes}; got {unknown}")


def get_scorer(name: str, **kwargs) -> Scorer:
    """Build the scorer called ``name``; model scorers take ``path=`` (and their own options)."""
    if name in SCORERS:
        check_scorer_options(name, list(kwargs))
        return SCORERS[name](**kwargs)
    if name in MODEL_SCORERS:
        module, attr = MODEL_SCORERS[name].split(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)
    raise KeyError(f"unknown scorer {name!r}; known scorers: {known_scorers()}")
