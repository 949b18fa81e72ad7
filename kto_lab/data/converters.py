"""Converters that turn feedback of any kind into per-image binary records.

* Pick-a-Pic pairwise preferences: :func:`pickapic_to_records` / :func:`pickapic_to_pairs`
  (in :mod:`kto_lab.data.pickapic`, re-exported here).
* A scalar score with a threshold: :func:`threshold_records`. Diffusion-KTO appendix C uses
  "images with an aesthetics score >= 7 as desirable samples and ... the remaining images as
  undesirable"; the LoRA study (sec. 3) derives its labels from LAION aesthetic scores the same way.
* Per-image labels -> Diffusion-DPO pairs within a caption: :func:`pairs_from_labels` (what the
  shapes world's regimes and :mod:`kto_lab.rounds` train DPO on).
* A user-supplied labelling function ``fn(image, caption) -> bool``: :func:`label_with_function`
  (appendix C's synthetic users, e.g. "redder is better" with a threshold on
  :func:`kto_lab.eval.scorers` redness; this module takes any callable and implements no scorer).

Each reads its input lazily (one image / one Parquet row group at a time) and streams its
output through :func:`kto_lab.data.records.write_records`; each returns a stats dict with the
class counts. Images pass through unchanged: paths stay paths (stored relative to the output
table's directory where they lie under it, absolute otherwise), bytes stay bytes (Parquet output).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

from ..paths import check_not_input
from .pickapic import pickapic_to_pairs, pickapic_to_records  # noqa: F401  (re-exported)
from .records import ImageTable, RecordTable, check_on_missing_image, count_labels, open_image_table, write_records
from ..config import ConfigError
from .tables import DataError, PathLike

__all__ = ["pickapic_to_records", "pickapic_to_pairs", "threshold_records", "label_with_function", "pairs_from_labels"]

AESTHETIC_THRESHOLD = 7.0  # Diffusion-KTO appendix C: LAION aesthetic score >= 7 is desirable


def _where(table: ImageTable, i: int, column: str) -> str:
    f, row = table.locate(i)
    return f"{f.path}, row {row}, column {column!r}"


def threshold_records(
    table_or_path: Union[ImageTable, PathLike],
    out_path: PathLike,
    score_column: str = "score",
    threshold: float = AESTHETIC_THRESHOLD,
) -> Dict[str, object]:
    """Label each image desirable iff ``score >= threshold``; the input needs ``image``,
    ``caption`` and ``score_column`` (any existing ``label`` is replaced). The output keeps the
    score as ``score`` (and ``source_id`` if present). A missing or non-numeric score is an error."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ConfigError(f"threshold={threshold!r} must be a finite number (--threshold)")
    check_not_input(out_path, {"table": None if isinstance(table_or_path, ImageTable) else table_or_path}, "out")
    if isinstance(table_or_path, ImageTable):
        table = table_or_path
        if isinstance(table, RecordTable) and score_column == "score":
            raw_scores = None if table.scores is None else list(table.scores)
        else:
            raw_scores = table.column(score_column)
        if raw_scores is None:
            raise DataError(f"the table has no column {score_column!r} to threshold")
    else:
        table = open_image_table(table_or_path, extra_columns=(score_column,), optional=("source_id",))
        raw_scores = table.column(score_column)
    scores = np.empty(len(table), dtype=np.float64)
    for i, value in enumerate(raw_scores):  # check every score before writing anything
        try:
            scores[i] = float(value)
        except (TypeError, ValueError):
            scores[i] = math.nan
        if not math.isfinite(scores[i]):
            raise DataError(f"{_where(table, i, score_column)}: score {value!r} is not a finite number")
    ids = table.source_ids if isinstance(table, RecordTable) else table.column("source_id")

    def rows():
        for i in range(len(table)):
            row = {"image": table.raw_image(i), "caption": table.captions[i],
                   "label": int(scores[i] >= threshold), "score": float(scores[i])}
            if ids is not None:
                row["source_id"] = ids[i]
            yield row

    counts = {"desirable": 0, "undesirable": 0}
    write_records(count_labels(rows(), counts), out_path)
    return {"out": str(out_path), "score_column": score_column, "threshold": float(threshold),
            "records": len(table), **counts}


def _as_bool(value, fn, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    name = getattr(fn, "__name__", repr(fn))
    raise TypeError(f"{where}: labelling function {name} returned {value!r}; it must return a bool "
                    "(wrap a scorer with a threshold, e.g. lambda im, c: redness(im) > 0.05)")


def label_with_function(
    table_or_path: Union[ImageTable, PathLike],
    out_path: PathLike,
    fn: Callable[["PIL.Image.Image", str], bool],  # noqa: F821
    *,
    on_missing_image: str = "error",
    progress: bool = True,
) -> Dict[str, object]:
    """Label each image with ``fn(image, caption) -> bool`` (True = desirable), reading one image
    at a time. The input needs ``image`` and ``caption`` (``score`` and ``source_id`` are kept).
    Unreadable images stop the run (``on_missing_image="error"``) or are left out and counted
    (``"skip"``)."""
    from tqdm.auto import tqdm

    if not callable(fn):
        raise TypeError(f"fn must be a callable fn(image, caption) -> bool, got {fn!r}")
    check_on_missing_image(on_missing_image)
    check_not_input(out_path, {"table": None if isinstance(table_or_path, ImageTable) else table_or_path}, "out")
    if isinstance(table_or_path, ImageTable):
        table = copy.copy(table_or_path)  # this run's own mode and skip list; the caller's table is untouched
        table.on_missing_image, table.skipped, table._skipped_index = on_missing_image, [], set()
    else:
        table = open_image_table(table_or_path, optional=("score", "source_id"), on_missing_image=on_missing_image)
    scores = table.scores if isinstance(table, RecordTable) else table.column("score")
    ids = table.source_ids if isinstance(table, RecordTable) else table.column("source_id")

    def rows():
        for i in tqdm(range(len(table)), desc="labelling", disable=not progress):
            image = table.open_image(i)
            if image is None:
                continue
            row = {"image": table.raw_image(i), "caption": table.captions[i],
                   "label": int(_as_bool(fn(image, table.captions[i]), fn, _where(table, i, "image")))}
            if scores is not None:
                row["score"] = scores[i]
            if ids is not None:
                row["source_id"] = ids[i]
            yield row

    counts = {"desirable": 0, "undesirable": 0}
    write_records(count_labels(rows(), counts), out_path)
    return {"out": str(out_path), "records": sum(counts.values()), "images_skipped": len(table.skipped), **counts}


def pairs_from_labels(group: Sequence, labels: Sequence[int]) -> List[Tuple[int, int]]:
    """Same-caption (liked, disliked) index pairs for Diffusion-DPO from per-image labels: within each
    ``group`` (a caption; groups in sorted order), the i-th liked image is paired with the i-th disliked
    one, in input order, so each image is in at most one pair (labels only: no score decides who wins)."""
    group, labels = np.asarray(group), np.asarray(labels)
    pairs = []
    for g in np.unique(group):
        idx = np.nonzero(group == g)[0]
        liked, disliked = idx[labels[idx] == 1], idx[labels[idx] == 0]
        pairs += [(int(w), int(l)) for w, l in zip(liked, disliked)]
    return pairs
