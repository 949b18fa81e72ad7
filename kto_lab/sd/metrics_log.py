"""Scalar metrics of a run -> ``metrics.jsonl`` + ``metrics.csv`` (+ experiment trackers).

Written by the main process only. Trackers (``logging.report_to``: TensorBoard, Weights & Biases,
MLflow) are accelerate's; each is an optional package, checked when the config is read (MLflow's
tracking store too). Images go to TensorBoard and W&B through accelerate, to MLflow as artifacts
(accelerate's MLflow tracker has no ``log_images``). Columns (TRL-style names, ``kto_lab.objectives``):

    step, loss, rewards/desirable, rewards/undesirable, rewards/margin, rewards/accuracy
    (share of samples whose implicit reward has the sign of their label), z_ref (reference
    point in reward units, beta * z), kl, err/policy, err/reference, lr, grad_norm, skipped_images

plus objective-specific extras (KTO's ``saturated``, ...). Both files carry every key: the CSV's
header is these columns, then any other key in the order it first appears; a key that appears
mid-run rewrites the CSV with the wider header (atomically: a temp file renamed over it). On
resume, rows after the resumed step are dropped and the CSV is rebuilt from the JSONL, so the
files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from ..config import ConfigError, warn_once
from ..data.tables import DataError

# logging.report_to name -> the package it needs (the extra of the same name installs it)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def tracker_installed(name: str) -> bool:
    """Whether the package of tracker ``name`` can be imported (accelerate would drop it silently)."""
    return importlib.util.find_spec(TRACKER_PACKAGES[name]) is not None


def check_tracker(name: str) -> None:
    """Refuse, in one line, a tracker that would only fail when it starts, after the models load."""
    if name == "mlflow":
        check_mlflow_store()


def check_mlflow_store() -> None:
    """MLflow's tracking store (``MLFLOW_TRACKING_URI``, else MLflow's default) must open: MLflow 3.x
    refuses a file store (a path, ``file:``) unless ``MLFLOW_ALLOW_FILE_STORE=true``, and a database
    (MLflow 3's default ``sqlite:///mlflow.db``) needs SQLAlchemy, which ``mlflow-skinny`` lacks."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    scheme = urlparse(uri).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a Windows drive letter parses as a scheme)
        try:
            from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
        except ImportError:  # MLflow 2.x: a file store needs no opt-in
            return
        if not MLFLOW_ALLOW_FILE_STORE.get():
            raise ConfigError(f"logging.report_to: mlflow {mlflow.__version__} refuses the file store {uri} unless "
                              "MLFLOW_ALLOW_FILE_STORE=true; set it, or set MLFLOW_TRACKING_URI to a database "
                              "(sqlite:///mlflow.db) or a tracking server")
    elif scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql") and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError(f"logging.report_to: mlflow's tracking store {uri} is a database, which needs the full "
                          "mlflow package (mlflow-skinny has no SQLAlchemy): pip install 'kto-lab[mlflow]', or "
                          "set MLFLOW_TRACKING_URI=file:DIR and MLFLOW_ALLOW_FILE_STORE=true")


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
        self.columns = list(CSV_COLUMNS)  # the CSV's header: CSV_COLUMNS, then other keys as they appear
        if resume_step is None:
            self.jsonl_path.unlink(missing_ok=True)
            self._rewrite_csv([])
        else:
            self._truncate(resume_step)
        self._jsonl = open(self.jsonl_path, "a")
        self._open_csv()
        self.trackers = list(trackers)

    def _truncate(self, step: int) -> None:
        """Keep only rows with ``step <= step`` (a resumed run rewrites what came after); the CSV
        is rebuilt from the kept JSONL rows. A last JSONL line cut short by an interruption is dropped,
        saying so (a cut CSV line goes with the rebuild)."""
        rows = []
        if self.jsonl_path.is_file():
            rows, cut = _jsonl_rows(self.jsonl_path)
            if cut:
                print(f"kto_lab: dropped the last line of {self.jsonl_path}, cut short when the run was interrupted",
                      file=sys.stderr)
            rows = [r for r in rows if r["step"] <= step]
            self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in rows:
            self.columns += [k for k in r if k not in self.columns]
        self._rewrite_csv(rows)

    def _open_csv(self) -> None:
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.columns)

    def _rewrite_csv(self, rows) -> None:
        """``metrics.csv`` := header :attr:`columns` + ``rows``, written to a temp file and renamed over it."""
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.csv_path)

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
                                      for k, v in row.items()}) + "\n")
        self._jsonl.flush()
        new = [k for k in row if k not in self.columns]
        if new:  # a key first seen now: the CSV gets the wider header, its rows kept
            self._csv_file.close()
            with open(self.csv_path, newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += new
            self._rewrite_csv(rows)
            self._open_csv()
        self._csv.writerow(row)
        self._csv_file.flush()
        for tracker in self.trackers:
            tracker.log({k: float(v) for k, v in metrics.items()}, step=int(step))

    def log_images(self, step: int, tag: str, images) -> None:
        """PIL images to every tracker: TensorBoard as one NHWC batch, MLflow as artifacts
        ``TAG/step-NNNNNNN/II.png`` (as in ``OUTPUT_DIR/validation/``), others through their
        ``log_images``; a tracker without one is named in a warning (once), not skipped in silence."""
        import numpy as np

        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({tag: np.stack([np.asarray(im) for im in images])}, step, dataformats="NHWC")
            elif tracker.name == "mlflow":  # accelerate's MLflowTracker has no log_images
                import mlflow

                for i, image in enumerate(images):
                    mlflow.log_image(image, artifact_file=f"{tag}/step-{step:07d}/{i:02d}.png")
            elif hasattr(tracker, "log_images"):
                tracker.log_images({tag: list(images)}, step)
            else:
                warn_once(f"tracker {tracker.name!r} has no log_images: the {tag} images are only in the run "
                          "directory")

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


def plot_metrics(path: str | Path, keys: Sequence[str] = ("loss", "rewards/accuracy", "z_ref")):
    """One panel per metric of a run (``metrics.jsonl`` or its directory) against the optimizer step,
    titled and labelled with :func:`kto_lab.plotting.label`. Returns the figure (a notebook shows it)."""
    from ..plotting import label, new_figure

    rows = read_metrics(path)
    fig = new_figure(figsize=(4 * len(keys), 3.2), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        points = [(r["step"], float(r[key])) for r in rows if key in r]
        ax.plot(*zip(*points) if points else ([], []), marker="o", ms=3)
        ax.set(xlabel="optimizer step", ylabel=label(key))
        if not points:
            ax.set_title("not logged by this run", fontsize=9)
    return fig
