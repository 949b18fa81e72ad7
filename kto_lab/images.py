"""Image array helpers shared by the algorithms and the synthetic world (below both).

``(3, H, W)`` float arrays in [0, 1] are the layout the synthetic world draws and
:func:`kto_lab.spin.spin`'s ``generate`` returns; this converts one to a PIL image.
"""

from __future__ import annotations

import numpy as np


def to_pil(image: np.ndarray):
    """``(3, H, W)`` float array in [0, 1] -> RGB PIL image."""
    from PIL import Image

    arr = (np.clip(np.asarray(image), 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0)
    return Image.fromarray(arr, "RGB")

