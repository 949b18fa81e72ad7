"""A procedural captioned-image world: coloured shapes on coloured backgrounds, drawn by code.

Every image is a flat-coloured shape (circle, square, triangle) of some size at some position
on a flat background, e.g. ``"a small red circle on a blue background at the left"``. Shape and
colour are always named; size, background and position are named only sometimes, and what the
caption leaves out is drawn at random. So a text-conditioned model must read the caption to
draw the right image, and :mod:`kto_lab.synthetic.fidelity` can check programmatically that it
did (only what the caption names is checked).

Images are float32 arrays ``(3, H, W)`` in ``[0, 1]`` (``H = W = 16`` by default), the layout of
``torch`` image batches; :func:`kto_lab.images.to_pil` turns one into a PIL image for files and pipelines.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

# The palette: saturated, far apart in RGB, so nearest-colour classification is robust.
COLORS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.15),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.90, 0.10),
    "white": (0.95, 0.95, 0.95),
    "black": (0.05, 0.05, 0.05),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")

# Side of the shape's bounding box as a fraction of the image side.
SIZE_FRACTION = {"small": 0.375, "large": 0.625}
# Offset of the shape's centre from the image centre, as a fraction of the free margin.
POSITION_OFFSET = {"center": (0.0, 0.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "top": (0.0, -1.0), "bottom": (0.0, 1.0)}

# Probability that the caption names each optional attribute.
DEFAULT_MENTION = {"size": 0.7, "background": 0.7, "position": 0.5}

# Every word a caption can use, plus CSFT's "good image, " / "bad image, " prefixes
# (the tokenizer gives each its own token).
VOCABULARY = tuple(
    sorted({"a", "on", "background", "at", "the", "good", "bad", "image", *COLORS, *SHAPES, *SIZES, *POSITIONS})
)
MAX_TOKENS = 20  # the longest caption with a CSFT prefix is 15 words + "," + 2 special tokens

_CAPTION_RE = re.compile(
    r"^a (?:(?P<size>small|large) )?(?P<color>\w+) (?P<shape>\w+)"
    r"(?: on a (?P<background>\w+) background)?(?: at the (?P<position>\w+))?$"
)


@dataclass(frozen=True)
class Scene:
    """What one image shows. ``mentioned`` lists the attributes its caption names."""

    shape: str
    color: str
    background: str
    size: str
    position: str
    mentioned: Tuple[str, ...] = ("shape", "color", "size", "background", "position")

    def __post_init__(self):
        _check("shape", self.shape, SHAPES)
        _check("color", self.color, COLORS)
        _check("background", self.background, COLORS)
        _check("size", self.size, SIZES)
        _check("position", self.position, POSITIONS)
        if self.color == self.background:
            raise ValueError(f"scene: shape colour and background are both {self.color!r}")

    @property
    def caption(self) -> str:
        return caption_of(self)

    def requested(self) -> Dict[str, str]:
        """The attributes the caption asks for (what the fidelity checker verifies)."""
        d = asdict(self)
        return {k: d[k] for k in self.mentioned}


def _check(field: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; known: {', '.join(allowed)}")


def caption_of(scene: Scene) -> str:
    m = set(scene.mentioned)
    words = ["a"]
    if "size" in m:
        words.append(scene.size)
    words += [scene.color, scene.shape]
    if "background" in m:
        words += ["on", "a", scene.background, "background"]
    if "position" in m:
        words += ["at", "the", scene.position]
    return " ".join(words)


def parse_caption(caption: str) -> Dict[str, str]:
    """``"a small red circle on a blue background"`` -> ``{"size": "small", "color": "red", ...}``.

    Only the attributes the caption names are returned. Captions of other forms raise, naming
    the caption, so an evaluation never silently checks nothing.
    """
    m = _CAPTION_RE.match(caption.strip().lower())
    if m is None:
        raise ValueError(
            f"caption {caption!r} is not of the shapes grammar "
            "'a [small|large] COLOR SHAPE [on a COLOR background] [at the POSITION]'"
        )
    out = {k: v for k, v in m.groupdict().items() if v is not None}
    for field, allowed in (("color", COLORS), ("shape", SHAPES), ("background", COLORS), ("position", POSITIONS)):
        if field in out:
            _check(field, out[field], allowed)
    return out


def random_scene(rng: np.random.Generator, mention: Optional[Dict[str, float]] = None, **fixed: str) -> Scene:
    """A scene with random attributes (``fixed`` ones kept) and a random choice of what to name."""
    mention = {**DEFAULT_MENTION, **(mention or {})}
    shape = fixed.get("shape") or SHAPES[rng.integers(len(SHAPES))]
    color = fixed.get("color") or list(COLORS)[rng.integers(len(COLORS))]
    backgrounds = [c for c in COLORS if c != color]
    background = fixed.get("background") or backgrounds[rng.integers(len(backgrounds))]
    size = fixed.get("size") or SIZES[rng.integers(len(SIZES))]
    position = fixed.get("position") or POSITIONS[rng.integers(len(POSITIONS))]
    mentioned = ["shape", "color"] + [k for k in ("size", "background", "position") if rng.random() < mention[k]]
    return Scene(shape, color, background, size, position, tuple(mentioned))


def scene_from_caption(caption: str, rng: np.random.Generator) -> Scene:
    """A scene that satisfies ``caption``; what the caption leaves out is drawn at random."""
    req = parse_caption(caption)
    fixed = dict(req)
    if fixed.get("background") == fixed["color"]:
        raise ValueError(f"caption {caption!r}: shape and background have the same colour")
    s = random_scene(rng, **fixed)
    return Scene(s.shape, s.color, s.background, s.size, s.position, tuple(["shape", "color"] + [
        k for k in ("size", "background", "position") if k in req]))


# --------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------


def shape_side(size: str, image_size: int = 16) -> int:
    """Side of the shape's bounding box in pixels: even, so the shape sits on the pixel grid."""
    _check("size", size, SIZES)
    return max(4, 2 * int(round(SIZE_FRACTION[size] * image_size / 2)))


def shape_mask(shape: str, size: str, position: str, image_size: int = 16, jitter: Tuple[int, int] = (0, 0)) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the shape. ``jitter = (dx, dy)`` shifts it by whole pixels."""
    _check("shape", shape, SHAPES)
    _check("position", position, POSITIONS)
    n = image_size
    side = shape_side(size, n)
    margin = (n - side) / 2.0
    ox, oy = POSITION_OFFSET[position]
    cx = n / 2.0 + ox * margin + jitter[0]
    cy = n / 2.0 + oy * margin + jitter[1]
    cx = float(np.clip(cx, side / 2, n - side / 2))
    cy = float(np.clip(cy, side / 2, n - side / 2))
    ys, xs = np.mgrid[0:n, 0:n] + 0.5  # pixel centres
    dx, dy = xs - cx, ys - cy
    half = side / 2.0
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # triangle: apex up, base at the bottom of the box
    inside_y = (dy >= -half) & (dy <= half)
    width_at_y = 1.0 + (dy + half) / (2 * half) * (half - 1.0)  # half-width: 1 px at the apex, half at the base
    return inside_y & (np.abs(dx) <= width_at_y)


def render(scene: Scene, image_size: int = 16, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Draw ``scene`` as a float32 ``(3, H, W)`` array in [0, 1]. ``rng`` adds a +-1 px shift."""
    jitter = (0, 0) if rng is None else tuple(int(v) for v in rng.integers(-1, 2, size=2))
    mask = shape_mask(scene.shape, scene.size, scene.position, image_size, jitter)
    img = np.empty((3, image_size, image_size), dtype=np.float32)
    img[:] = np.asarray(COLORS[scene.background], dtype=np.float32)[:, None, None]
    img[:, mask] = np.asarray(COLORS[scene.color], dtype=np.float32)[:, None]
    return img


@dataclass
class ShapesDataset:
    """``n_captions`` random captions, each drawn ``renders_per_caption`` times (attributes the
    caption leaves out and the pixel jitter vary between renders)."""

    images: np.ndarray  # (N, 3, H, W) float32
    captions: List[str]
    scenes: List[Scene]
    group: np.ndarray  # (N,) index of the caption each image was drawn for

    def __len__(self) -> int:
        return len(self.captions)


def make_dataset(
    n_captions: int, *, renders_per_caption: int = 1, image_size: int = 16, seed: int = 0,
    mention: Optional[Dict[str, float]] = None,
) -> ShapesDataset:
    if n_captions < 1 or renders_per_caption < 1:
        raise ValueError(f"need n_captions >= 1 and renders_per_caption >= 1, got {n_captions}, {renders_per_caption}")
    rng = np.random.default_rng(seed)
    images, captions, scenes, group = [], [], [], []
    for i in range(n_captions):
        caption = random_scene(rng, mention).caption
        for _ in range(renders_per_caption):
            scene = scene_from_caption(caption, rng)
            images.append(render(scene, image_size, rng))
            captions.append(caption)
            scenes.append(scene)
            group.append(i)
    return ShapesDataset(np.stack(images), captions, scenes, np.asarray(group))


def eval_captions(n: int, seed: int = 1234) -> List[str]:
    """Evaluation prompts: ``n`` distinct captions of the grammar (a fixed set per seed)."""
    rng = np.random.default_rng(seed)
    out: List[str] = []
    seen = set()
    for _ in range(100 * n):
        c = random_scene(rng).caption
        if c not in seen:
            seen.add(c)
            out.append(c)
        if len(out) == n:
            return out
    raise ValueError(f"could not draw {n} distinct captions")
