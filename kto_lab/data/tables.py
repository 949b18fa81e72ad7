"""Table files (CSV / JSONL / Parquet) with lazily read image columns, and a streaming writer.

This is the file layer under :mod:`kto_lab.data.records`; it knows nothing about labels.

Reading keeps every *small* column (captions, labels, scores, ids) in memory and never the
images: an image column is either a column of paths (relative to the table file's directory,
or absolute) or, in Parquet only, a binary column of encoded image bytes. Bytes are read one
Parquet row group at a time (``ParquetFile.read_row_group(k, columns=[col])``) and only the
last row group read is cached, so memory holds at most one row group of one image column.
Write tables with small row groups (:data:`DEFAULT_ROW_GROUP_SIZE` rows, the writer's default)
so random access stays cheap.

Writing streams: rows are buffered up to one row group (Parquet) or written line by line
(CSV / JSONL) into ``<path>.partial``, which is renamed to ``path`` only when all rows are in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..config import UserError

PathLike = Union[str, os.PathLike]

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
DEFAULT_ROW_GROUP_SIZE = 64  # rows per Parquet row group: ~64 images in memory at most per column


class DataError(UserError, ValueError):
    """A table, shard or prompt file that cannot be used as given; the message names the file (and row, column)."""


class ImageLoadError(UserError, OSError):
    """An image that is missing or cannot be decoded; the message names the file, table and row."""


def not_utf8(path: PathLike) -> DataError:
    """The error for a text file that is not UTF-8: it names the file and its first bad line."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return DataError(f"{path}, line {line_no}: not UTF-8 text (byte {line[exc.start]:#04x} at column "
                                 f"{exc.start + 1}); save the file as UTF-8")
    return DataError(f"{path}: not UTF-8 text; save the file as UTF-8")


def read_text(path: PathLike) -> str:
    """A UTF-8 text file's content; any other encoding is a :class:`DataError` naming the file and line."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def table_format(path: PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: unknown table format {suffix!r}; use one of {sorted(FORMATS)}")
    return FORMATS[suffix]


# --- image columns ------------------------------------------------------------------------


# Bounds on an image's size, checked from its header before it is decoded: PIL's own decompression-bomb
# limit (Image.MAX_IMAGE_PIXELS, about 89 MP; PIL only warns below twice that), and an aspect ratio of
# 10:1 (SDXL's widest training bucket is 4:1): resized so its short side is the training resolution, a
# 1 x 20,000 px strip (165 bytes as a PNG) would be 512 x 10,240,000 px, 15 GiB.
MAX_IMAGE_PIXELS = 89_478_485
MAX_ASPECT_RATIO = 10


class ImageTooLarge(ValueError):
    """An image whose header gives a size beyond :data:`MAX_IMAGE_PIXELS` or :data:`MAX_ASPECT_RATIO`."""


def check_image_size(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"it is {width} x {height} pixels, more than {MAX_IMAGE_PIXELS:,} (decoding it would "
                            f"take {3 * width * height / 2**30:.1f} GiB); resize it")
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ImageTooLarge(f"it is {width} x {height} pixels, an aspect ratio beyond {MAX_ASPECT_RATIO}:1 (resized to "
                            f"the training resolution it would take gigabytes); crop it, or leave it out")


def decode_image(data: Union[bytes, str, Path], where: str, *, header_only: bool = False):
    """Decode encoded bytes or a file into an RGB PIL image; any failure -> ImageLoadError naming ``where``.
    Its size is checked from the header first (:func:`check_image_size`), before decoding costs memory.

    ``header_only``: read only the header (format and size) and return None. That takes ~40 us for
    a 768x768 JPEG against ~2.4 ms to decode it (measured on the project's 2-core CPU); bytes that
    are not an image fail, a truncated image passes."""
    from PIL import Image

    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) == 0:
                raise ValueError("empty image bytes")
            image = Image.open(io.BytesIO(bytes(data)))
        else:
            image = Image.open(data)
        check_image_size(*image.size)
        if header_only:
            image.close()
            return None
        image.load()  # decode now, so a truncated file fails here and not in the trainer
        return image.convert("RGB")
    except Exception as exc:  # FileNotFoundError, UnidentifiedImageError, truncated data, ...
        from PIL import UnidentifiedImageError

        if isinstance(exc, ImageTooLarge):
            raise ImageLoadError(f"image {where} is refused: {exc}") from None
        reason = "not an image format PIL knows" if isinstance(exc, UnidentifiedImageError) else exc
        raise ImageLoadError(f"cannot read image {where}: {type(exc).__name__}: {reason}") from exc


class PathImageColumn:
    """Images stored as files; values are paths relative to the table's directory, or absolute."""

    def __init__(self, table: Path, column: str, values: Sequence[Any]):
        self.table, self.column = table, column
        self.values = list(values)
        self._sizes: Optional[List[int]] = None
        for row, value in enumerate(self.values):
            if not isinstance(value, str) or not value:
                raise DataError(f"{table}, row {row}, column {column!r}: image path {value!r} must be a non-empty string")

    def __len__(self) -> int:
        return len(self.values)

    def raw(self, row: int) -> str:
        """The image's absolute path."""
        return str((self.table.parent / self.values[row]).resolve())

    def describe(self, row: int) -> str:
        return self.raw(row)

    def sizes(self) -> List[int]:
        """Each row's image file size in bytes, -1 where there is no file (one stat each, ~2 us; nothing
        is read). Taken once and kept: :meth:`missing_rows` and the fingerprint share it."""
        if self._sizes is None:
            folder = str(self.table.parent)
            self._sizes = [_file_size(os.path.join(folder, value)) for value in self.values]
        return self._sizes

    def missing_rows(self) -> List[int]:
        """Rows whose image file does not exist."""
        return [row for row, size in enumerate(self.sizes()) if size < 0]

    def identity(self) -> list:
        """What the fingerprint covers of this column: the paths as written, and the files' sizes."""
        return [self.values, self.sizes()]

    def open(self, row: int):
        path = self.raw(row)
        return decode_image(path, f"'{path}' (table {self.table}, row {row}, column {self.column!r})")


class ParquetBytesColumn:
    """Encoded image bytes in a Parquet column, read one row group at a time (one cached).

    The file is opened lazily and the handle is dropped when pickled, so a table can be
    sent to DataLoader worker processes; each opens its own handle.
    """

    def __init__(self, table: Path, column: str, row_group_rows: Sequence[int]):
        self.table, self.column = table, column
        self.offsets = np.concatenate([[0], np.cumsum(np.asarray(row_group_rows, dtype=np.int64))])
        self._file = None
        self._cached: Optional[tuple] = None  # (row group index, pyarrow array of that group's images)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_cached"] = None, None
        return state

    def raw(self, row: int) -> Optional[bytes]:
        """The encoded bytes of one image (None where the cell is null)."""
        if not 0 <= row < len(self):
            raise IndexError(f"{self.table}: row {row} out of range (table has {len(self)} rows)")
        group = int(np.searchsorted(self.offsets, row, side="right") - 1)
        if self._cached is None or self._cached[0] != group:
            import pyarrow.parquet as pq

            if self._file is None:
                self._file = pq.ParquetFile(self.table)
            array = self._file.read_row_group(group, columns=[self.column]).column(0).combine_chunks()
            self._cached = (group, array)
        return self._cached[1][row - int(self.offsets[group])].as_py()

    def first_equal_row(self, other: "ParquetBytesColumn") -> Optional[int]:
        """The first row whose bytes equal ``other``'s (a column of the same file), or None: both columns
        read one row group at a time and compared by pyarrow (null cells never match)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        file = pq.ParquetFile(self.table)
        for group in range(file.num_row_groups):
            both = file.read_row_group(group, columns=[self.column, other.column])
            same = pc.fill_null(pc.equal(both.column(0), both.column(1)), False).combine_chunks()
            hits = pc.indices_nonzero(same)
            if len(hits):
                return int(self.offsets[group]) + hits[0].as_py()
        return None

    def describe(self, row: int) -> str:
        return f"<bytes in {self.table}, row {row}, column {self.column!r}>"

    def missing_rows(self) -> List[int]:
        """Nothing is known to be missing without reading the bytes: they are checked when read."""
        return []

    def identity(self) -> list:
        """What the fingerprint covers of this column without reading its bytes: the compressed and
        uncompressed size of each row group's chunk, from the file's footer."""
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(self.table).metadata
        index = meta.schema.names.index(self.column)
        chunks = (meta.row_group(k).column(index) for k in range(meta.num_row_groups))
        return [[c.num_values, c.total_compressed_size, c.total_uncompressed_size] for c in chunks]

    def open(self, row: int):
        where = f"(table {self.table}, row {row}, column {self.column!r})"
        data = self.raw(row)
        if data is None:
            raise ImageLoadError(f"cannot read image {where}: the cell is null")
        return decode_image(data, where)


ImageColumn = Union[PathImageColumn, ParquetBytesColumn]


# --- reading ------------------------------------------------------------------------------


class TableFile:
    """One table file: small columns in memory (``columns``), image columns lazy (``images``)."""

    def __init__(self, path: Path, columns: Dict[str, list], images: Dict[str, ImageColumn], n: int):
        self.path, self.columns, self.images, self.n = path, columns, images, n

    def __len__(self) -> int:
        return self.n

    def fingerprint(self) -> Dict[str, Any]:
        """The file's identity for a latent cache and a resume: its resolved path and a SHA-256 of its
        rows as read (every column the table was read for: captions, labels, scores, ids, image paths
        with their files' sizes; for image bytes in Parquet, each row group's chunk sizes). Nothing
        is decoded and no image is read: 0.09 s for 100k rows once their files are stat'ed (docs/data.md).
        Not covered: an image file replaced by another of the very same size, under the same name."""
        digest = hashlib.sha256()
        for name in sorted(self.columns):
            digest.update(json.dumps([name, self.columns[name]], default=str).encode())
        for name in sorted(self.images):
            digest.update(json.dumps([name, self.images[name].identity()], default=str).encode())
        return {"path": str(self.path.resolve()), "rows": self.n, "sha256": digest.hexdigest()}


def _file_size(path: str) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def fingerprint_changes(before: Sequence[Dict[str, Any]], now: Sequence[Dict[str, Any]]) -> List[str]:
    """What differs between two lists of :meth:`TableFile.fingerprint` (empty: the same data), one
    phrase per file, naming it."""
    if [f["path"] for f in before] != [f["path"] for f in now]:
        return [f"the table files were {[f['path'] for f in before]}, now {[f['path'] for f in now]}"]
    return [f"{b['path']} has changed since ({b['rows']} rows then, {n['rows']} now; its rows' SHA-256 differs)"
            for b, n in zip(before, now) if b["sha256"] != n["sha256"]]


def _check_columns(path: Path, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the table has {list(present)}")


def read_table(
    path: PathLike, *, required: Sequence[str], optional: Sequence[str] = (), image_columns: Sequence[str] = ("image",)
) -> TableFile:
    """Read a table's ``required`` + present ``optional`` columns; image columns become lazy."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"table file not found: {path}")
    if fmt == "parquet":
        return _read_parquet(path, required, optional, image_columns)
    if fmt == "csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except UnicodeDecodeError:
            raise not_utf8(path) from None
        except Exception as exc:
            raise DataError(f"{path}: not a readable CSV table: {exc}") from exc
        present = list(frame.columns)
        data = {c: frame[c].tolist() for c in present}
        n = len(frame)
    else:
        data, present, n = _read_jsonl(path)
    _check_columns(path, present, required)
    wanted = list(required) + [c for c in optional if c in present and c not in required]
    columns = {c: data[c] for c in wanted if c not in image_columns}
    images = {c: PathImageColumn(path, c, data[c]) for c in wanted if c in image_columns}
    return TableFile(path, columns, images, n)


def _read_jsonl(path: Path):
    rows: List[dict] = []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {line_no}: not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {line_no}: each line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    present: List[str] = []
    for row in rows:
        present.extend(k for k in row if k not in present)
    data = {c: [row.get(c) for row in rows] for c in present}
    return data, present, len(rows)


def _read_parquet(path: Path, required, optional, image_columns) -> TableFile:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    schema = file.schema_arrow
    present = list(schema.names)
    _check_columns(path, present, required)
    wanted = list(required) + [c for c in optional if c in present and c not in required]
    images: Dict[str, ImageColumn] = {}
    small = []
    for c in wanted:
        if c not in image_columns:
            small.append(c)
            continue
        kind = schema.field(c).type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            rows = [file.metadata.row_group(k).num_rows for k in range(file.num_row_groups)]
            images[c] = ParquetBytesColumn(path, c, rows)
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            small.append(c)  # paths: small, read with the rest
        else:
            raise DataError(f"{path}: column {c!r} has type {kind}; an image column holds paths (string) or encoded bytes (binary)")
    try:
        table = file.read(columns=small) if small else None
    except Exception as exc:  # corrupt pages, a column of the wrong type
        raise DataError(f"{path}: cannot read columns {small}: {exc}") from exc
    columns = {c: table.column(c).to_pylist() for c in small} if small else {}
    for c in list(columns):
        if c in image_columns:
            images[c] = PathImageColumn(path, c, columns.pop(c))
    return TableFile(path, columns, images, file.metadata.num_rows)


# --- writing ------------------------------------------------------------------------------


def portable_path(value: str, table_dir: Path) -> str:
    """An image path as stored in a table written to ``table_dir``: relative where the image lies
    under that directory (so the folder can be moved as a whole), absolute otherwise."""
    p = Path(value)
    if not p.is_absolute():
        return value
    try:
        return p.resolve().relative_to(table_dir.resolve()).as_posix()
    except ValueError:
        return str(p)


class TableWriter:
    """Stream rows (dicts with the same keys) into a CSV / JSONL / Parquet table.

    Image columns hold paths (str; absolute paths under the table's directory are stored
    relative to it) or encoded bytes (Parquet only). Column types are fixed by the first row
    group; ``types`` pins some (e.g. ``{"label": "int64", "score": "float64"}``).
    """

    def __init__(self, path: PathLike, *, image_columns: Sequence[str] = ("image",),
                 types: Optional[Dict[str, str]] = None, row_group_size: int = DEFAULT_ROW_GROUP_SIZE):
        self.path = Path(path)
        self.format = table_format(self.path)
        self.image_columns = tuple(image_columns)
        self.types = dict(types or {})
        self.row_group_size = int(row_group_size)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.keys: Optional[List[str]] = None
        self.rows_written = 0
        self._buffer: List[dict] = []
        self._file = None
        self._parquet = None
        self._schema = None

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def write(self, row: Dict[str, Any]) -> None:
        where = f"{self.path}, row {self.rows_written + len(self._buffer)}"
        if self.keys is None:
            self.keys = list(row)
            if self.format != "parquet":
                self._file = open(self.partial, "w", encoding="utf-8", newline="")
                if self.format == "csv":
                    self._csv = csv.DictWriter(self._file, fieldnames=self.keys)
                    self._csv.writeheader()
        elif set(row) != set(self.keys):
            raise DataError(f"{where}: columns {sorted(row)} differ from the first row's {sorted(self.keys)}")
        row = dict(row)
        for c in self.image_columns:
            value = row.get(c)
            if isinstance(value, (bytes, bytearray, memoryview)):
                if self.format != "parquet":
                    raise DataError(f"{where}: column {c!r} holds image bytes, which only a .parquet table can store")
                row[c] = bytes(value)
            elif isinstance(value, (str, os.PathLike)) and str(value):
                row[c] = portable_path(str(value), self.path.parent)
            elif c in row:
                raise DataError(f"{where}: column {c!r} must be an image path or encoded bytes, got {value!r}")
        if self.format == "parquet":
            self._buffer.append(row)
            if len(self._buffer) >= self.row_group_size:
                self._flush()
            return
        if self.format == "csv":
            self._csv.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
        else:
            row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}  # NaN -> null
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.rows_written += 1

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._buffer:
            return
        if self._schema is None:
            fields = []
            for c in self.keys:
                if c in self.types:
                    kind = pa.type_for_alias(self.types[c])
                elif c in self.image_columns:
                    kind = pa.binary() if isinstance(self._buffer[0][c], bytes) else pa.string()
                else:
                    kind = pa.array([r[c] for r in self._buffer]).type
                    kind = pa.string() if pa.types.is_null(kind) else kind
                fields.append(pa.field(c, kind))
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(self.partial, self._schema)
        try:
            table = pa.Table.from_pylist(self._buffer, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise DataError(f"{self.path}, rows {self.rows_written}..{self.rows_written + len(self._buffer) - 1}: "
                             f"values do not fit the column types {self._schema}: {exc}") from exc
        self._parquet.write_table(table, row_group_size=self.row_group_size)
        self.rows_written += len(self._buffer)
        self._buffer = []

    def close(self) -> Path:
        """Finish the file and move it into place; a table with no rows is an error."""
        if self.keys is None:
            raise DataError(f"{self.path}: no rows to write")
        if self.format == "parquet":
            self._flush()
            self._parquet.close()
        else:
            self._file.close()
        os.replace(self.partial, self.path)
        return self.path

    def _abort(self) -> None:
        for handle in (self._parquet, self._file):
            try:
                if handle is not None:
                    handle.close()
            except Exception:
                pass
        if self.partial.exists():
            self.partial.unlink()


def write_table(rows: Iterable[Dict[str, Any]], path: PathLike, **kwargs) -> Path:
    with TableWriter(path, **kwargs) as writer:
        for row in rows:
            writer.write(row)
    return writer.path


def table_columns(path: PathLike) -> List[str]:
    """The column names of a table file, read without reading its rows."""
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise FileNotFoundError(f"table file not found: {path}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:  # not Parquet (a CSV renamed, a cut download)
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if fmt == "csv":
                return next(csv.reader(f), [])
            for line in f:
                if line.strip():
                    return list(json.loads(line))
    except UnicodeDecodeError:
        raise not_utf8(path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, first row: not valid JSON: {exc}") from exc
    return []
