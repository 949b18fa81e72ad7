"""Pick-a-Pic v2 (pairwise preferences) -> per-image binary feedback, or pairs for Diffusion-DPO.

Pick-a-Pic v2 parquet shards have one row per comparison, in this schema (as on the hub):
``caption``, ``jpg_0`` / ``jpg_1`` (JPEG bytes), ``label_0`` / ``label_1`` (1.0 / 0.0 for a
decision, 0.5 / 0.5 for a tie), ``image_0_uid`` / ``image_1_uid``, ``has_label``,
``are_different``, ``best_image_uid``, ``ranking_id``, ``user_id``, ``model_0/1``,
``image_0/1_url``, ``created_at``, ``num_example_per_prompt``.

Which comparisons count (shared by both converters):

* ``has_label`` false: no judgement, dropped (``rows_unlabelled``).
* ``are_different`` false, or the same uid on both sides: nothing to prefer, dropped (``rows_same_image``).
* ties (0.5 / 0.5) are dropped as comparisons, as Diffusion-DPO does ("After excluding the
  ~12% of pairs with ties, we end up with 851,293 pairs", Diffusion-DPO sec. 5.1) (``ties_dropped``).
* a decisive row whose ``ranking_id`` was seen before is counted (``repeated_ranking_ids``) and
  kept by default, since Diffusion-DPO's 851,293 pairs exclude only ties and the dataset's
  authors do not document ``ranking_id`` as unique per row; ``drop_repeated_rankings=True``
  counts such a row once.
* any other label pair, or a kept row whose caption is not a string (null), is an error naming
  the shard and row.
* an image without bytes, or whose bytes are not an image (its header is read while converting),
  stops the conversion naming shard, row and column (``on_missing_image="error"``) or is skipped
  and counted (``"skip"``: ``missing_images``, ``unreadable_images``).

Per-image labels (Diffusion-KTO sec. 5 "Implementation Details", appendix A.1 and D.1, Fig. 8):
every image that appears in at least one kept comparison is one record (deduplicated by uid
across all shards), with ``wins`` and ``losses`` counted over the kept comparisons:

* ``partition="at_least_once"`` (the paper's choice): desirable iff ``wins >= 1``, i.e. "labelled as
  preferred at least once"; the rest (images that only lost) are undesirable.
* ``partition="win_only"`` (appendix D.1, the ablation): desirable iff ``wins >= 1`` and
  ``losses == 0``, i.e. "always preferred across all pairwise comparisons"; images that
  both won and lost (Fig. 8's "intermediate") become undesirable.

Ties neither help nor hurt an image, because tied comparisons are dropped before counting; an
image seen only in ties (or unlabelled rows) has no feedback and is left out
(``images_without_decisive_comparison``). The paper reports 237,530 desirable and 690,538
undesirable images for the full v2 training set with "at least once".

Streaming: pass 1 reads only the small columns (labels, uids, captions) to count wins and
losses per uid; pass 2 reads ``image_*_uid`` + ``jpg_*`` in batches of ``batch_rows`` rows with
``ParquetFile.iter_batches`` (Arrow reads one row group at a time under it) and writes each
labelled uid's bytes the first time it is seen (the same uid in several shards is the same
image: yuvalkirstain/PickScore issue #29). No shard is ever read whole; memory holds the
per-uid counters and at most one row group's image column chunks.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

from ..config import ConfigError
from ..paths import check_not_input, safe_name
from .records import check_on_missing_image, count_labels, write_pairs, write_records
from .tables import DataError, ImageLoadError, PathLike, decode_image, table_format

PARTITIONS = ("at_least_once", "win_only")
REQUIRED_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid")
OPTIONAL_COLUMNS = ("has_label", "are_different", "ranking_id")
BATCH_ROWS = 32  # rows decoded at a time in the image pass (two images each)


def expand_shards(shards: Union[PathLike, Sequence[PathLike]]) -> List[Path]:
    """Shard files from paths, directories (their ``*.parquet``) and glob patterns, in order."""
    shards = [shards] if isinstance(shards, (str, Path)) else list(shards)
    out: List[Path] = []
    for s in shards:
        s = str(s)
        if any(ch in s for ch in "*?["):
            matches = sorted(glob.glob(s))
            if not matches:
                raise FileNotFoundError(f"no shard matches {s!r}")
            out += [Path(m) for m in matches]
        elif Path(s).is_dir():
            matches = sorted(Path(s).glob("*.parquet"))
            if not matches:
                raise FileNotFoundError(f"no *.parquet shard in directory {s}")
            out += matches
        elif Path(s).is_file():
            out.append(Path(s))
        else:
            raise FileNotFoundError(f"shard not found: {s}")
    if not out:
        raise ConfigError("no Pick-a-Pic shard given")
    return out


def _check_shards(shards: Sequence[Path]) -> Dict[Path, List[str]]:
    """Fail before any work if a shard is unreadable or lacks a required column; return the
    optional columns each shard has."""
    import pyarrow.parquet as pq

    present = {}
    for shard in shards:
        try:
            names = pq.read_schema(shard).names
        except Exception as exc:
            raise DataError(f"{shard}: not a readable Parquet shard: {exc}") from exc
        missing = [c for c in REQUIRED_COLUMNS if c not in names]
        if missing:
            raise DataError(f"{shard}: missing Pick-a-Pic column(s) {missing}; expected at least {list(REQUIRED_COLUMNS)}, "
                            f"the shard has {names}")
        present[shard] = [c for c in OPTIONAL_COLUMNS if c in names]
    return present


def _batches(shard: Path, columns: Sequence[str], batch_rows: int) -> Iterator[Dict[str, list]]:
    """The only way this module reads a shard: ``columns`` only, ``batch_rows`` rows at a time."""
    import pyarrow.parquet as pq

    # pre_buffer=False + a read buffer: Arrow then reads pages as it decodes, instead of whole
    # column chunks ahead of time (measured: ~2.5x less peak memory on 100-row groups of JPEGs)
    file = pq.ParquetFile(shard, pre_buffer=False, buffer_size=1 << 20)
    for batch in file.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=False):
        yield batch.to_pydict()


def classify(label_0, label_1, has_label=True, are_different=True, uid_0=None, uid_1=None, where: str = "") -> Union[str, int]:
    """What one Pick-a-Pic row is: ``"unlabelled"``, ``"same_image"``, ``"tie"``, or the winner's side (0 or 1)."""
    if has_label is False:
        return "unlabelled"
    if are_different is False or (uid_0 is not None and uid_0 == uid_1):
        return "same_image"
    pair = (label_0, label_1)
    if pair == (0.5, 0.5):
        return "tie"
    if pair == (1.0, 0.0):
        return 0
    if pair == (0.0, 1.0):
        return 1
    raise DataError(f"{where}: label_0={label_0!r}, label_1={label_1!r} is neither a decision (1/0), "
                    f"a tie (0.5/0.5) nor marked has_label=false")


def _rows(shard: Path, optional: Sequence[str], extra: Sequence[str], batch_rows: int):
    """Yield ``(row index, row dict, what)`` for every row of a shard (``what`` from :func:`classify`)."""
    columns = ["label_0", "label_1", "image_0_uid", "image_1_uid", *optional, *extra]
    row = 0
    for batch in _batches(shard, columns, batch_rows):
        for j in range(len(batch["label_0"])):
            r = {c: batch[c][j] for c in columns}
            what = classify(r["label_0"], r["label_1"], r.get("has_label", True), r.get("are_different", True),
                            r["image_0_uid"], r["image_1_uid"], where=f"{shard}, row {row}")
            yield row, r, what
            row += 1


class _Comparisons:
    """Counts rows by kind, and repeated ranking ids (dropped if asked); shared by both converters."""

    def __init__(self, drop_repeated_rankings: bool = False):
        self.drop_repeated_rankings = drop_repeated_rankings
        self.stats = {"rows": 0, "rows_unlabelled": 0, "rows_same_image": 0, "ties_dropped": 0,
                      "repeated_ranking_ids": 0, "comparisons": 0}
        self._rankings: set = set()

    def keep(self, r: dict, what) -> bool:
        self.stats["rows"] += 1
        if isinstance(what, str):
            self.stats["ties_dropped" if what == "tie" else "rows_" + what] += 1
            return False
        ranking = r.get("ranking_id")
        if ranking is not None:
            if ranking in self._rankings:
                self.stats["repeated_ranking_ids"] += 1
                if self.drop_repeated_rankings:
                    return False
            self._rankings.add(ranking)
        self.stats["comparisons"] += 1
        return True


def is_desirable(wins: int, losses: int, partition: str = "at_least_once") -> bool:
    """An image's label from its decisive comparisons (module docstring): ``at_least_once`` (the
    paper's) = won at least once; ``win_only`` (appendix D.1) = won and never lost."""
    return wins >= 1 and (partition == "at_least_once" or losses == 0)


def _safe_name(uid) -> str:
    return safe_name(re.sub(r"[^A-Za-z0-9._-]", "_", str(uid)), "image uid")


def _image_suffix(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _caption(r: dict, where: str) -> str:
    if not isinstance(r["caption"], str):
        raise DataError(f"{where}: caption {r['caption']!r} is not a string; fix the shard or drop the row")
    return r["caption"]


class _ImageSink:
    """Where image bytes go: kept as bytes (Parquet output) or written once per uid under ``image_dir``.

    Missing bytes and bytes that are not an image (their header is read: ~40 us, against ~2.4 ms to
    decode a 768x768 JPEG) stop the conversion (``on_missing_image="error"``) or are skipped and
    counted (``"skip"``: ``unreadable`` holds the uids whose bytes are not an image). A truncated
    image with a valid header is found when read (``kto-lab data stats --check-images``, training)."""

    def __init__(self, out_path: Path, image_dir: Optional[PathLike], on_missing_image: str):
        self.on_missing_image = check_on_missing_image(on_missing_image)
        self.image_dir = None if image_dir is None else Path(image_dir)
        if self.image_dir is None and table_format(out_path) != "parquet":
            raise ConfigError(f"{out_path}: CSV/JSONL tables hold image paths, not bytes; pass image_dir or write .parquet")
        if self.image_dir is not None:
            self.image_dir.mkdir(parents=True, exist_ok=True)
        self.files: Dict[str, str] = {}
        self.unreadable: set = set()

    def put(self, uid, data: Optional[bytes], where: str):
        """The image value for a record (bytes or absolute path), or None if missing or unreadable under "skip"."""
        hint = "(set on_missing_image='skip' to skip it)"
        if data is None or len(data) == 0:
            if self.on_missing_image == "error":
                raise DataError(f"{where}: image {uid!r} has no bytes {hint}")
            return None
        try:
            decode_image(data, f"{uid!r} ({where})", header_only=True)
        except ImageLoadError as exc:
            if self.on_missing_image == "error":
                raise ImageLoadError(f"{exc} {hint}") from exc.__cause__
            self.unreadable.add(uid)
            return None
        if self.image_dir is None:
            return data
        if uid not in self.files:
            path = (self.image_dir / (_safe_name(uid) + _image_suffix(data))).resolve()
            path.write_bytes(data)
            self.files[uid] = str(path)
        return self.files[uid]


def _setup(shards, out_path, image_dir, on_missing_image: str, drop_repeated_rankings: bool):
    """What both converters check and build before reading a row: the output path, the shard
    list (each checked for its columns), their optional columns, the image sink, the row counter."""
    out_path = Path(out_path)
    shards = expand_shards(shards)
    check_not_input(out_path, {"shards": shards}, "out")
    optional = _check_shards(shards)
    sink = _ImageSink(out_path, image_dir, on_missing_image)
    return out_path, shards, optional, sink, _Comparisons(drop_repeated_rankings)


def _progress(shards, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(shards, desc=desc, unit="shard", disable=not progress)


def pickapic_to_records(
    shards: Union[PathLike, Sequence[PathLike]],
    out_path: PathLike,
    partition: str = "at_least_once",
    image_dir: Optional[PathLike] = None,
    *,
    on_missing_image: str = "error",
    drop_repeated_rankings: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
) -> Dict[str, object]:
    """Convert Pick-a-Pic v2 shards to a per-image record table; return stats incl. class counts.

    Records are ``image`` (bytes, or a path under ``image_dir``), ``caption``, ``label``,
    ``source_id`` (the uid), ``wins``, ``losses``. See the module docstring for the rules.
    """
    if partition not in PARTITIONS:
        raise ConfigError(f"partition={partition!r} is not allowed; choose one of {list(PARTITIONS)}")
    out_path, shards, optional, sink, comparisons = _setup(shards, out_path, image_dir, on_missing_image,
                                                            drop_repeated_rankings)

    # pass 1: wins and losses per uid, from the small columns only
    tally: Dict[str, list] = {}  # uid -> [wins, losses, caption]
    seen = set()
    for shard in _progress(shards, "pick-a-pic labels", progress):
        for row, r, what in _rows(shard, optional[shard], ["caption"], batch_rows=65536):
            seen.update((r["image_0_uid"], r["image_1_uid"]))
            if not comparisons.keep(r, what):
                continue
            caption = _caption(r, f"{shard}, row {row}")
            for side in (0, 1):
                entry = tally.setdefault(r[f"image_{side}_uid"], [0, 0, caption])
                entry[0 if side == what else 1] += 1

    # pass 2: each labelled uid's bytes, the first time it appears
    def records():
        done = set()
        for shard in _progress(shards, "pick-a-pic images", progress):
            row = 0
            for batch in _batches(shard, ["image_0_uid", "image_1_uid", "jpg_0", "jpg_1"], batch_rows):
                for j in range(len(batch["jpg_0"])):
                    for side in (0, 1):
                        uid = batch[f"image_{side}_uid"][j]
                        if uid in done or uid not in tally:
                            continue
                        image = sink.put(uid, batch[f"jpg_{side}"][j], f"{shard}, row {row}, column 'jpg_{side}'")
                        if image is None:
                            continue
                        done.add(uid)
                        wins, losses, caption = tally[uid]
                        yield {"image": image, "caption": caption, "label": int(is_desirable(wins, losses, partition)),
                               "source_id": str(uid), "wins": wins, "losses": losses}
                    row += 1
                if len(done) == len(tally):
                    return
        n_missing = len(tally) - len(done)
        if n_missing and on_missing_image == "error":
            raise DataError(f"{n_missing} labelled image(s) never had bytes in {[str(s) for s in shards]}")

    counts = {"desirable": 0, "undesirable": 0}
    write_records(count_labels(records(), counts), out_path)
    wl = list(tally.values())
    return {
        "partition": partition, "out": str(out_path), "shards": len(shards), **comparisons.stats,
        "images_in_comparisons": len(tally),
        "duplicate_images_removed": 2 * comparisons.stats["comparisons"] - len(tally),
        "images_without_decisive_comparison": len(seen - tally.keys()),
        "always_won": sum(1 for w, l, _ in wl if w and not l),
        "won_and_lost": sum(1 for w, l, _ in wl if w and l),
        "always_lost": sum(1 for w, l, _ in wl if l and not w),
        "missing_images": len(tally) - sum(counts.values()),  # no bytes, or bytes that are not an image (skipped)
        "unreadable_images": len(sink.unreadable),
        "records": sum(counts.values()), **counts,
    }


def pickapic_to_pairs(
    shards: Union[PathLike, Sequence[PathLike]],
    out_path: PathLike,
    image_dir: Optional[PathLike] = None,
    *,
    on_missing_image: str = "error",
    drop_repeated_rankings: bool = False,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
) -> Dict[str, object]:
    """Convert Pick-a-Pic v2 shards to a pair table (``caption``, ``image_w``, ``image_l``,
    ``source_id_w``, ``source_id_l``) for Diffusion-DPO: one pair per kept comparison (ties,
    unlabelled and same-image rows dropped; see the module docstring). One streaming pass."""
    out_path, shards, optional, sink, comparisons = _setup(shards, out_path, image_dir, on_missing_image,
                                                            drop_repeated_rankings)
    skipped = [0]

    def pairs():
        for shard in _progress(shards, "pick-a-pic pairs", progress):
            for row, r, what in _rows(shard, optional[shard], ["caption", "jpg_0", "jpg_1"], batch_rows):
                if not comparisons.keep(r, what):
                    continue
                caption = _caption(r, f"{shard}, row {row}")
                w, l = what, 1 - what
                where = f"{shard}, row {row}, column 'jpg_%d'"
                image_w = sink.put(r[f"image_{w}_uid"], r[f"jpg_{w}"], where % w)
                image_l = sink.put(r[f"image_{l}_uid"], r[f"jpg_{l}"], where % l) if image_w is not None else None
                if image_w is None or image_l is None:
                    skipped[0] += 1
                    continue
                yield {"caption": caption, "image_w": image_w, "image_l": image_l,
                       "source_id_w": str(r[f"image_{w}_uid"]), "source_id_l": str(r[f"image_{l}_uid"])}

    path = write_pairs(pairs(), out_path)
    return {"out": str(path), "shards": len(shards), **comparisons.stats,
            "pairs_skipped_missing_image": skipped[0], "unreadable_images": len(sink.unreadable),
            "pairs": comparisons.stats["comparisons"] - skipped[0]}
