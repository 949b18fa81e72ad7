"""Small image tables for the SD tests (written here by hand, in the records format)."""

import csv
from pathlib import Path

import numpy as np

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def write_png(path: Path, value: int = 100, size=(16, 16)) -> Path:
    """A solid grey PNG at ``path`` (folders made)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def write_records(directory: Path, n_per_color: int = 2, desirable=("red",), missing=()) -> Path:
    """``records.csv`` with solid-colour images; ``label = colour in desirable``; names in
    ``missing`` are listed but never written (to test the missing-image policy)."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for color, rgb in COLORS.items():
        for k in range(n_per_color):
            name = f"{color}{k}.png"
            if name not in missing:
                a = (np.array(rgb, np.int64) + rng.integers(0, 25, (40, 48, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(a).save(directory / name)
            rows.append({"image": name, "caption": f"a {color} square", "label": int(color in desirable)})
    path = directory / "records.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["image", "caption", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def write_pairs(directory: Path) -> Path:
    write_records(directory)
    path = directory / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["caption", "image_w", "image_l"])
        w.writeheader()
        w.writerow({"caption": "a red square", "image_w": "red0.png", "image_l": "blue0.png"})
        w.writerow({"caption": "a red square", "image_w": "red1.png", "image_l": "green1.png"})
    return path
