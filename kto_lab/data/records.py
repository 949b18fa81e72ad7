"""Binary-feedback records: one row per image, ``(image, caption, label[, score][, source_id])``.

Diffusion-KTO trains on per-image binary feedback (paper sec. 4.2): each image is desirable
(label 1) or undesirable (label 0). A record table is a CSV, JSONL or Parquet file with columns

    image      path relative to the table file's directory, or absolute; in Parquet it may
               instead hold the encoded image bytes (binary column)
    caption    str (may be empty)
    label      1 / 0, true / false, or "desirable" / "undesirable" (case-insensitive)
    score      optional float (e.g. an aesthetic score; empty / null allowed)
    source_id  optional str (e.g. the Pick-a-Pic image uid)

A decision log of the labeling tools (:mod:`kto_lab.data.decisions`, JSONL whose lines begin
``{"decision":``) reads as a record table of its likes and dislikes in force.

Diffusion-DPO trains on pairs: a pair table has ``caption``, ``image_w`` (winner),
``image_l`` (loser), both paths or bytes like ``image``.

    table = load_records("records.parquet", on_missing_image="skip")
    table.counts()             # {"desirable": 3, "undesirable": 5}
    image = table.load_image(i)  # PIL RGB, read lazily; None if unreadable under "skip"

Images are never all in memory: :class:`RecordTable` holds captions, labels and scores and
reads one image (one Parquet row group of bytes at most) when asked.

Missing or unreadable images (``on_missing_image``):

* ``"error"`` (default): :meth:`RecordTable.load_image` raises :class:`ImageLoadError`
  (an ``OSError``) naming the file (or the table, row and column for bytes).
* ``"skip"``: ``load_image(i)`` returns ``None``, records ``(i, image, reason)`` once in
  ``table.skipped`` and remembers ``i`` (``table.is_skipped(i)``); the caller draws another
  index (e.g. from the gamma sampler) in its place. :meth:`RecordTable.check_images` reads every
  image once up front, so the bad ones are known (and counted) before training;
  :meth:`RecordTable.check_files` only checks that image files exist (a stat each, no reading).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..config import ConfigError
from .decisions import is_decision_log, read_decision_table
from .tables import (DataError, ImageLoadError, ParquetBytesColumn, PathImageColumn, PathLike, TableFile, read_table,
                     write_table)

__all__ = [
    "ImageLoadError", "RecordTable", "PairTable", "load_records", "load_pairs", "write_records", "write_pairs",
    "parse_label", "ON_MISSING_IMAGE", "check_on_missing_image", "count_labels",
]

ON_MISSING_IMAGE = ("error", "skip")
RECORD_COLUMNS = ("image", "caption", "label")
OPTIONAL_RECORD_COLUMNS = ("score", "source_id")
PAIR_COLUMNS = ("caption", "image_w", "image_l")
_LABEL_WORDS = {"1": 1, "0": 0, "1.0": 1, "0.0": 0, "true": 1, "false": 0, "desirable": 1, "undesirable": 0}


def parse_label(value: Any, where: str = "label") -> int:
    """1 for desirable, 0 for undesirable; anything else is a ValueError naming ``where``."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise DataError(f"{where}: label {value!r} is not one of 1/0, true/false, desirable/undesirable")


def _parse_score(value: Any, where: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: score {value!r} is not a number") from None


def _parse_caption(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: caption {value!r} must be a string")
    return value


def _parsed_column(files: Sequence[TableFile], name: str, parse, missing: Any = None) -> list:
    """Column ``name`` over all files, each cell through ``parse(value, where)`` (``where`` names the
    file, row and column); files without the column give ``missing``."""
    out: list = []
    for f in files:
        values = f.columns.get(name)
        if values is None:
            out += [missing] * len(f)
        else:
            out += [parse(v, f"{f.path}, row {r}, column {name!r}") for r, v in enumerate(values)]
    return out


def check_on_missing_image(on_missing_image: str) -> str:
    if on_missing_image not in ON_MISSING_IMAGE:
        raise ConfigError(f"on_missing_image={on_missing_image!r} is not allowed; choose one of {list(ON_MISSING_IMAGE)}")
    return on_missing_image


def _as_paths(paths: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ConfigError("no table file given")
    return [Path(p) for p in paths]


class ImageTable:
    """Rows with captions and lazily read images, from one or more table files.

    The common part of :class:`RecordTable` (labels) and :class:`PairTable` (two images a row);
    converters also open unlabelled tables (e.g. images with scores) through it.
    """

    image_columns: Tuple[str, ...] = ("image",)

    def __init__(self, files: Sequence[TableFile], on_missing_image: str = "error"):
        self.on_missing_image = check_on_missing_image(on_missing_image)
        self.files = list(files)
        self.offsets = np.concatenate([[0], np.cumsum([len(f) for f in self.files])]).astype(np.int64)
        self.captions: List[str] = _parsed_column(self.files, "caption", _parse_caption)
        self.skipped: List[Tuple[int, str, str]] = []  # (index, image, reason) of images that failed under "skip"
        self._skipped_index: set = set()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> Tuple[TableFile, int]:
        """The table file and row that hold record ``i``."""
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range: the table has {len(self)} records")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.files[k], i - int(self.offsets[k])

    def column(self, name: str) -> Optional[list]:
        """A small column over all files (None where no file has it; None cells where some lack it)."""
        if not any(name in f.columns for f in self.files):
            return None
        out: list = []
        for f in self.files:
            out += f.columns.get(name, [None] * len(f))
        return out

    def raw_image(self, i: int, column: str = "image") -> Union[str, bytes, None]:
        """Where image ``i`` lives: an absolute path, or its encoded bytes (for converters)."""
        f, row = self.locate(i)
        return f.images[column].raw(row)

    def describe_image(self, i: int, column: str = "image") -> str:
        f, row = self.locate(i)
        return f.images[column].describe(row)

    def fingerprint(self) -> List[Dict[str, Any]]:
        """Each file's :meth:`~kto_lab.data.tables.TableFile.fingerprint` (path, rows, SHA-256 of the rows):
        what a latent cache is keyed on and what a resume compares (:func:`~kto_lab.data.tables.fingerprint_changes`)."""
        return [f.fingerprint() for f in self.files]

    def is_skipped(self, i: int) -> bool:
        return int(i) in self._skipped_index

    def open_image(self, i: int, column: str = "image"):
        """Image ``i`` of ``column`` as an RGB PIL image; ``None`` if unreadable under "skip"."""
        return self._open(i, column)

    def _open(self, i: int, column: str):
        if int(i) in self._skipped_index:
            return None
        f, row = self.locate(i)
        try:
            return f.images[column].open(row)
        except ImageLoadError as exc:
            if self.on_missing_image == "error":
                raise
            self._skip(i, f.images[column].describe(row), str(exc))
            return None

    def _skip(self, i: int, image: str, reason: str) -> None:
        self._skipped_index.add(int(i))
        self.skipped.append((int(i), image, reason))

    def check_files(self) -> int:
        """Check, without reading any image, that every image stored as a file exists (one stat each,
        ~2 us): under "error" a missing one raises :class:`ImageLoadError` naming it; under "skip" the
        missing ones are recorded as skipped now. Image bytes and decoding are checked when an image is
        read (:meth:`check_images` reads them all). Returns how many records are skipped so far."""
        missing = []  # (record index, the image's path, where the table names it)
        for k, f in enumerate(self.files):
            for column, images in f.images.items():
                missing += [(int(self.offsets[k]) + row, images.describe(row),
                             f"table {f.path}, row {row}, column {column!r}") for row in images.missing_rows()]
        if missing and self.on_missing_image == "error":
            i, image, where = missing[0]
            more = f"; {len(missing) - 1} more image file(s) are missing" if len(missing) > 1 else ""
            raise ImageLoadError(f"image file not found: {image!r} ({where}){more}; fix the paths or skip "
                                 "missing images with on_missing_image=skip")
        for i, image, where in missing:
            if not self.is_skipped(i):
                self._skip(i, image, "file not found")
        return len(self._skipped_index)

    def check_images(self, progress: bool = False) -> int:
        """Read every image once; return how many failed (under "error" the first failure raises)."""
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self)), desc="checking images", disable=not progress):
            for column in self.image_columns:
                if self._open(i, column) is None:
                    break
        return len(self._skipped_index)


class RecordTable(ImageTable):
    """Per-image binary feedback: ``captions``, ``labels`` (int64 1/0), ``scores`` (float or None)."""

    def __init__(self, files: Sequence[TableFile], on_missing_image: str = "error"):
        super().__init__(files, on_missing_image)
        self.labels = np.asarray(_parsed_column(self.files, "label", parse_label), dtype=np.int64)
        self.scores: Optional[np.ndarray] = None
        if any("score" in f.columns for f in self.files):  # files without the column get NaN
            self.scores = np.asarray(_parsed_column(self.files, "score", _parse_score, math.nan), dtype=np.float64)
        ids = self.column("source_id")
        self.source_ids: Optional[List[Optional[str]]] = None if ids is None else [None if v is None else str(v) for v in ids]

    def load_image(self, i: int):
        """Image ``i`` as an RGB PIL image, read now; ``None`` if unreadable under ``on_missing_image="skip"``."""
        return self._open(i, "image")

    def counts(self) -> Dict[str, int]:
        n_desirable = int(self.labels.sum())
        return {"desirable": n_desirable, "undesirable": len(self) - n_desirable}

    def iter_rows(self) -> Iterator[Dict[str, Any]]:
        """Rows as dicts for :func:`write_records` (image = absolute path or bytes); streams images."""
        for i in range(len(self)):
            row = {"image": self.raw_image(i), "caption": self.captions[i], "label": int(self.labels[i])}
            if self.scores is not None:
                row["score"] = float(self.scores[i])
            if self.source_ids is not None:
                row["source_id"] = self.source_ids[i]
            yield row

    def __repr__(self) -> str:
        return f"RecordTable({len(self)} records, {self.counts()}, files={[str(f.path) for f in self.files]})"


class PairTable(ImageTable):
    """Pairwise preferences for Diffusion-DPO: ``captions`` and ``load_pair(i) -> (winner, loser)``."""

    image_columns = ("image_w", "image_l")

    def check_distinct(self) -> None:
        """Training needs two images a pair (on one image twice Diffusion-DPO's loss stays at ln 2, whatever
        the model): a row naming the same file twice, or of equal image bytes in both Parquet columns, is a
        :class:`DataError` naming it. Paths are compared as written (no file is touched); Parquet bytes are
        read once, one row group at a time (docs/data.md). (Evaluation may pair an image with itself
        on purpose: an exact tie.)"""
        for f in self.files:
            w, l = f.images["image_w"], f.images["image_l"]
            if isinstance(w, PathImageColumn) and isinstance(l, PathImageColumn):
                folder = str(f.path.parent)
                for row, (a, b) in enumerate(zip(w.values, l.values)):
                    if os.path.normpath(os.path.join(folder, a)) == os.path.normpath(os.path.join(folder, b)):
                        raise _same_image(f, row, repr(a))
            elif isinstance(w, ParquetBytesColumn) and isinstance(l, ParquetBytesColumn):
                row = w.first_equal_row(l)
                if row is not None:
                    raise _same_image(f, row, "equal bytes")

    def load_pair(self, i: int):
        """``(winner, loser)`` RGB PIL images; ``None`` if either is unreadable under "skip"."""
        winner = self._open(i, "image_w")
        loser = self._open(i, "image_l") if winner is not None else None
        return None if winner is None or loser is None else (winner, loser)

    def __repr__(self) -> str:
        return f"PairTable({len(self)} pairs, files={[str(f.path) for f in self.files]})"


def _same_image(f: TableFile, row: int, what: str) -> DataError:
    return DataError(f"{f.path}, row {row}: image_w and image_l are the same image ({what}); a pair needs two images "
                     f"(Diffusion-DPO's loss would stay at ln 2 on it); fix or drop the row")


def open_image_table(paths, *, extra_columns: Sequence[str] = (), optional: Sequence[str] = (),
                     on_missing_image: str = "error") -> ImageTable:
    """An unlabelled table (``image``, ``caption`` + ``extra_columns``), e.g. the input of a converter."""
    check_on_missing_image(on_missing_image)
    files = [read_table(p, required=("image", "caption", *extra_columns), optional=optional) for p in _as_paths(paths)]
    return ImageTable(files, on_missing_image)


def load_records(paths: Union[PathLike, Sequence[PathLike]], *, on_missing_image: str = "error") -> RecordTable:
    """Read one or more record tables (CSV / JSONL / Parquet) into one :class:`RecordTable`.

    Columns and values are checked now (an error names the file, row and column); images are
    read only by ``load_image``. A decision log (:mod:`kto_lab.data.decisions`) reads as its likes
    and dislikes in force.
    """
    check_on_missing_image(on_missing_image)
    files = [read_decision_table(p, optional=OPTIONAL_RECORD_COLUMNS) if is_decision_log(p)
             else read_table(p, required=RECORD_COLUMNS, optional=OPTIONAL_RECORD_COLUMNS) for p in _as_paths(paths)]
    return RecordTable(files, on_missing_image)


def load_pairs(paths: Union[PathLike, Sequence[PathLike]], *, on_missing_image: str = "error") -> PairTable:
    """Read one or more pair tables (``caption``, ``image_w``, ``image_l``) for Diffusion-DPO."""
    check_on_missing_image(on_missing_image)
    files = [read_table(p, required=PAIR_COLUMNS, optional=("source_id_w", "source_id_l"), image_columns=PAIR_COLUMNS[1:])
             for p in _as_paths(paths)]
    return PairTable(files, on_missing_image)


def _normalized_records(rows) -> Iterator[Dict[str, Any]]:
    for n, row in enumerate(rows):
        missing = [c for c in RECORD_COLUMNS if c not in row]
        if missing:
            raise DataError(f"record {n}: missing {missing} (a record needs {list(RECORD_COLUMNS)})")
        row = dict(row)
        row["caption"] = _parse_caption(row["caption"], f"record {n}")
        row["label"] = parse_label(row["label"], f"record {n}")
        if "score" in row:
            row["score"] = _parse_score(row["score"], f"record {n}")
        if row.get("source_id") is not None:
            row["source_id"] = str(row["source_id"])
        yield row


def count_labels(rows, counts: Dict[str, int]) -> Iterator[Dict[str, Any]]:
    """Pass record dicts through, adding each to ``counts["desirable"]`` / ``counts["undesirable"]``."""
    for row in rows:
        counts["desirable" if row["label"] else "undesirable"] += 1
        yield row


def write_records(rows, path: PathLike, **kwargs) -> Path:
    """Write record dicts (``image`` path or bytes, ``caption``, ``label``, optional ``score``,
    ``source_id``; extra keys are kept) to a table; the format follows the extension. Streams."""
    return write_table(_normalized_records(rows), path, image_columns=("image",),
                       types={"label": "int64", "score": "float64", "caption": "string", "source_id": "string"}, **kwargs)


def write_pairs(rows, path: PathLike, **kwargs) -> Path:
    """Write pair dicts (``caption``, ``image_w``, ``image_l`` + optional extras) to a table. Streams."""
    def checked(rows):
        for n, row in enumerate(rows):
            missing = [c for c in PAIR_COLUMNS if c not in row]
            if missing:
                raise DataError(f"pair {n}: missing {missing} (a pair needs {list(PAIR_COLUMNS)})")
            yield row

    return write_table(checked(rows), path, image_columns=PAIR_COLUMNS[1:],
                       types={"caption": "string", "source_id_w": "string", "source_id_l": "string"}, **kwargs)
