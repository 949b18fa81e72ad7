"""Image array helpers shared by the algorithms and the synthetic world (below both).

``(3, H, W)`` float arrays in [0, 1] are the layout the synthetic world draws and
:func:`kto_lab.spin.spin`'s ``generate`` returns; this converts one to a PIL image, and measures how far images moved from reference images.
"""

from __future__ import annotations

import numpy as np


def to_pil(image: np.ndarray):
    """``(3, H, W)`` float array in [0, 1] -> RGB PIL image."""
    from PIL import Image

    arr = (np.clip(np.asarray(image), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(arr, "RGB")



def image_distance(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image, the RMS pixel difference (in [0, 1] units) from the reference image drawn for the
    same caption and seed: how far a fine-tuned model's outputs moved from the base model's."""
    images, reference = np.asarray(images, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if images.shape != reference.shape:
        raise ValueError(f"image_distance: shapes differ, {images.shape} vs {reference.shape}")
    return np.sqrt(((images - reference) ** 2).reshape(len(images), -1).mean(axis=1))
