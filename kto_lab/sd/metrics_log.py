"""Scalar metrics of a run -> ``metrics.jsonl`` + ``metrics.csv`` (+ experiment trackers).

Written by the main process only. Trackers (``logging.report_to``: TensorBoard, Weights & Biases,
MLflow) are accelerate's; each is an optional package, checked when the config is read. Columns (TRL-style names, ``kto_lab.objectives``):

    step, loss, rewards/desirable, rewards/undesirable, rewards/margin, rewards/accuracy
    (share of samples whose implicit reward has the sign of their label), z_ref (reference
    point in reward units, beta * z), kl, err/policy, err/reference, lr, grad_norm, skipped_images

plus objective-specific extras (JSONL has every key; the CSV has a fixed header, so extras
outside it only go to the JSONL). On resume, rows after the resumed step are dropped, so the
files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..data.tables import DataError

# logging.report_to name -> the package it needs (the extra of the same name installs it)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def tracker_installed(name: str) -> bool:
    """Whether the package of tracker ``name`` can be imported (accelerate would drop it silently)."""
    import importlib.util

    return importlib.util.find_spec(TRACKER_PACKAGES[name]) is not None

CSV_COLUMNS = (
    "step", "loss", "rewards/desirable", "rewards/undesirable", "rewards/margin", "rewards/accuracy",
    "rewards/pair_accuracy", "z_ref", "kl", "err/policy", "err/reference", "bce/accuracy", "lr", "grad_norm",
    "skipped_images",
)


class MetricsLogger:
    """Rows to the JSONL/CSV files and to ``trackers`` (accelerate ``GeneralTracker``s, started)."""

    def __init__(self, directory: str | Path, *, resume_step: Optional[int] = None, trackers: Sequence = ()):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path, self.csv_path = self.dir / "metrics.jsonl", self.dir / "metrics.csv"
        if resume_step is None:
            for p in (self.jsonl_path, self.csv_path):
                p.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        new_csv = not self.csv_path.is_file()
        self._jsonl = open(self.jsonl_path, "a")
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if new_csv:
            self._csv.writeheader()
        self.trackers = list(trackers)

    def _truncate(self, step: int) -> None:
        """Keep only rows with ``step <= step`` (a resumed run rewrites what came after). A last line cut
        short by an interruption is dropped, saying so."""
        if self.jsonl_path.is_file():
            rows, cut = _jsonl_rows(self.jsonl_path)
            if cut:
                print(f"kto_lab: dropped the last line of {self.jsonl_path}, cut short when the run was interrupted",
                      file=sys.stderr)
            self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and (None in rows[-1] or None in rows[-1].values()):  # fewer or more fields than the header
                print(f"kto_lab: dropped the last line of {self.csv_path}, cut short when the run was interrupted",
                      file=sys.stderr)
                rows.pop()
            rows = [r for r in rows if int(r["step"]) <= step]
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                      for k, v in row.items()}) + "\n")
        self._jsonl.flush()
        self._csv.writerow(row)
        self._csv_file.flush()
        for tracker in self.trackers:
            tracker.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_images(self, step: int, tag: str, images) -> None:
        """PIL images to the trackers that take images (TensorBoard as one NHWC batch)."""
        import numpy as np

        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: np.stack([np.asarray(im) for im in images])}, step, dataformats="NHWC")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({tag: list(images)}, step)

    def close(self) -> None:
        """Close the files (the trackers are the trainer's: it finishes them when the run ends)."""
        self._jsonl.close()
        self._csv_file.close()


def _jsonl_rows(path: Path) -> Tuple[List[dict], bool]:
    """The rows of a metrics JSONL file, and whether its last line was cut short (dropped: a run killed
    while writing it). Any other line that is not a JSON row is a :class:`DataError` naming it."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    rows = []
    for k, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
        elif k == len(lines) - 1:
            return rows, True
        else:
            raise DataError(f"{path}, line {n}: not a metrics row ({line[:60]!r}); the file was edited or damaged")
    return rows, False


def read_metrics(path: str | Path) -> list:
    """The rows of a ``metrics.jsonl`` (or a run directory holding one), without a last line cut short."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return _jsonl_rows(p)[0]
