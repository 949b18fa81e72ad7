"""Scalar metrics of a run -> ``metrics.jsonl`` + ``metrics.csv`` (+ TensorBoard, optional).

Written by the main process only. Columns (TRL-style names, ``kto_lab.objectives``):

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
from pathlib import Path
from typing import Dict, Optional

CSV_COLUMNS = (
    "step", "loss", "rewards/desirable", "rewards/undesirable", "rewards/margin", "rewards/accuracy",
    "rewards/pair_accuracy", "z_ref", "kl", "err/policy", "err/reference", "bce/accuracy", "lr", "grad_norm",
    "skipped_images",
)


class MetricsLogger:
    def __init__(self, directory: str | Path, *, tensorboard: bool = False, resume_step: Optional[int] = None):
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
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def _truncate(self, step: int) -> None:
        """Keep only rows with ``step <= step`` (a resumed run rewrites what came after)."""
        if self.jsonl_path.is_file():
            rows = [line for line in self.jsonl_path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= step]
            self.jsonl_path.write_text("".join(r + "\n" for r in rows))
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
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
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)

    def log_images(self, step: int, tag: str, images) -> None:
        if self.tb is not None:
            import numpy as np

            self.tb.add_images(tag, np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list:
    """The rows of a ``metrics.jsonl`` (or a run directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
