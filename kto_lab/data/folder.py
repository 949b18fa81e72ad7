"""A folder of images (+ captions, + likes) -> a records table, and a labeling queue for the rest.

What a folder may hold (every image under it, sub-folders included, hidden names skipped):

* **likes by sub-folder**: an image with a folder named ``liked`` (or ``desirable``) on its path is
  desirable, one under ``disliked`` (or ``undesirable``) is undesirable (:data:`LABEL_FOLDERS`);
* **a sidecar table** at the folder's top, the first of :data:`SIDECARS` found (or one given): CSV or
  JSONL with the image's path relative to the folder in ``file_name`` (the Hugging Face ``imagefolder``
  convention) or ``image``, a caption in ``caption``, ``text`` or ``prompt``, and optionally a ``label``
  (1/0, true/false, desirable/undesirable, like/dislike; empty = not labelled);
* **a caption file per image**, as most fine-tuning scripts read them: ``a.png`` -> ``a.txt`` (or
  ``a.caption``) beside it.

A caption comes from the sidecar, else the image's caption file, else ``default_caption``. A label
from a sub-folder and a different one from the sidecar is an error naming both. Each image's header is
read (about 40 us): an unreadable image is left out and named in ``unreadable``; a truncated image with
a good header is found when it is decoded (by the labeling front or the trainer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .records import parse_label, write_records
from .tables import DataError, ImageLoadError, PathLike, decode_image, read_table, read_text, write_table

__all__ = ["IMAGE_SUFFIXES", "LABEL_FOLDERS", "SIDECARS", "FolderImage", "FolderScan", "scan_folder",
           "folder_to_records"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LABEL_FOLDERS = {"liked": 1, "desirable": 1, "disliked": 0, "undesirable": 0}
SIDECARS = ("metadata.jsonl", "metadata.csv", "captions.jsonl", "captions.csv")
SIDECAR_IMAGE_COLUMNS = ("file_name", "image")
SIDECAR_CAPTION_COLUMNS = ("caption", "text", "prompt")
CAPTION_FILE_SUFFIXES = (".txt", ".caption")
_LIKE_WORDS = {"like": 1, "liked": 1, "dislike": 0, "disliked": 0}


@dataclass(frozen=True)
class FolderImage:
    path: Path  # absolute
    name: str  # relative to the folder (posix)
    caption: str
    label: Optional[int]  # 1 / 0, or None: not labelled yet
    caption_from: str  # "sidecar", "caption file" or "default"


@dataclass
class FolderScan:
    folder: Path
    images: List[FolderImage]  # readable images, in path order
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  # (name, reason), left out
    sidecar: Optional[Path] = None

    @property
    def labeled(self) -> List[FolderImage]:
        return [im for im in self.images if im.label is not None]

    @property
    def unlabeled(self) -> List[FolderImage]:
        return [im for im in self.images if im.label is None]


def _sidecar_label(value, where: str) -> Optional[int]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lower() in _LIKE_WORDS:
        return _LIKE_WORDS[value.strip().lower()]
    return parse_label(value, where)


def _first(columns: Dict[str, list], names, path: Path, what: str, required: bool = True) -> Optional[str]:
    found = [c for c in names if c in columns]
    if len(found) > 1:
        raise DataError(f"{path}: columns {found} all could hold the {what}; keep one")
    if not found and required:
        raise DataError(f"{path}: no {what} column; name it one of {list(names)} (the table has {list(columns)})")
    return found[0] if found else None


def read_sidecar(path: PathLike, folder: Path) -> Dict[str, Tuple[Optional[str], Optional[int], str]]:
    """``{image key: (caption or None, label or None, where)}`` from a sidecar table; keys are resolved paths."""
    path = Path(path)
    names = SIDECAR_IMAGE_COLUMNS + SIDECAR_CAPTION_COLUMNS + ("label",)
    table = read_table(path, required=(), optional=names, image_columns=())
    image_column = _first(table.columns, SIDECAR_IMAGE_COLUMNS, path, "image path")
    caption_column = _first(table.columns, SIDECAR_CAPTION_COLUMNS, path, "caption", required=False)
    out: Dict[str, Tuple[Optional[str], Optional[int], str]] = {}
    for row, value in enumerate(table.columns[image_column]):
        where = f"{path}, row {row}"
        if not isinstance(value, str) or not value:
            raise DataError(f"{where}, column {image_column!r}: image path {value!r} must be a non-empty string")
        image = (folder / value).resolve()
        if not image.is_file():
            raise DataError(f"{where}: image {value!r} is not a file under {folder}")
        key = str(image)
        if key in out:
            raise DataError(f"{where}: image {value!r} is listed twice (also at {out[key][2]})")
        caption = table.columns[caption_column][row] if caption_column else None
        if caption is not None and not isinstance(caption, str):
            raise DataError(f"{where}, column {caption_column!r}: caption {caption!r} must be a string")
        label = _sidecar_label(table.columns["label"][row], f"{where}, column 'label'") if "label" in table.columns else None
        out[key] = (caption, label, where)
    return out


def _folder_label(relative: Path, where: str) -> Optional[int]:
    labels = {LABEL_FOLDERS[part.lower()] for part in relative.parts[:-1] if part.lower() in LABEL_FOLDERS}
    if len(labels) > 1:
        raise DataError(f"{where}: the image lies under both a liked and a disliked folder")
    return labels.pop() if labels else None


def _caption_file(image: Path) -> Optional[str]:
    for suffix in CAPTION_FILE_SUFFIXES:
        candidate = image.with_suffix(suffix)
        if candidate.is_file():
            return read_text(candidate).strip()
    return None


def scan_folder(folder: PathLike, *, sidecar: Optional[PathLike] = None, default_caption: str = "") -> FolderScan:
    """Every image under ``folder`` with its caption and label (None: not labelled), see the module doc."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images")
    folder = folder.resolve()
    if sidecar is None:
        sidecar = next((folder / name for name in SIDECARS if (folder / name).is_file()), None)
    elif not Path(sidecar).is_file():
        raise FileNotFoundError(f"sidecar table not found: {sidecar}")
    listed = read_sidecar(sidecar, folder) if sidecar is not None else {}
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(s.lstrip('.') for s in IMAGE_SUFFIXES)}) in it or its sub-folders")
    scan = FolderScan(folder, [], sidecar=None if sidecar is None else Path(sidecar))
    for path in paths:
        relative = path.relative_to(folder)
        name = relative.as_posix()
        try:
            decode_image(path, f"'{path}'", header_only=True)
        except ImageLoadError as exc:
            scan.unreadable.append((name, str(exc)))
            continue
        label = _folder_label(relative, str(path))
        caption, listed_label, where = listed.get(str(path.resolve()), (None, None, ""))
        if listed_label is not None:
            if label is not None and label != listed_label:
                raise DataError(f"{where}: label {listed_label} for {name!r} contradicts its folder "
                                f"({'liked' if label else 'disliked'}); fix one of them")
            label = listed_label
        caption_from = "sidecar"
        if caption is None:
            caption, caption_from = _caption_file(path), "caption file"
        if caption is None:
            caption, caption_from = default_caption, "default"
        scan.images.append(FolderImage(path, name, caption, label, caption_from))
    return scan


def folder_to_records(
    folder: PathLike,
    out: Optional[PathLike] = None,
    *,
    queue: Optional[PathLike] = None,
    sidecar: Optional[PathLike] = None,
    default_caption: str = "",
) -> Dict[str, object]:
    """Write the folder's labelled images to the records table ``out`` and its unlabelled ones to the
    queue table ``queue`` (``image``, ``caption``: what ``kto-lab label serve`` labels). Images of a
    kind with no file to go to are an error naming the first one, before anything is written.
    Returns stats: counts, where captions came from, the unreadable images left out."""
    scan = scan_folder(folder, sidecar=sidecar, default_caption=default_caption)
    labeled, unlabeled = scan.labeled, scan.unlabeled
    if out is None and queue is None:
        raise DataError("give --out (a records table for the labelled images) or --queue (the unlabelled ones, to label)")
    if labeled and out is None:
        raise DataError(f"{len(labeled)} image(s) in {scan.folder} are labelled (first: {labeled[0].name!r}); "
                        "give --out to write them as records")
    if unlabeled and queue is None:
        hint = (f"put them in liked/ or disliked/, give them a label in the sidecar {scan.sidecar.name}, "
                if scan.sidecar else "put them in liked/ or disliked/, or give a sidecar with a label column, ")
        raise DataError(f"{len(unlabeled)} image(s) in {scan.folder} have no like or dislike (first: "
                        f"{unlabeled[0].name!r}); {hint}or write them to a labeling queue with --queue queue.csv")
    stats: Dict[str, object] = {"folder": str(scan.folder), "sidecar": None if scan.sidecar is None else str(scan.sidecar),
                                "images": len(scan.images), "desirable": sum(im.label == 1 for im in labeled),
                                "undesirable": sum(im.label == 0 for im in labeled), "unlabeled": len(unlabeled)}
    for source in ("sidecar", "caption file", "default"):
        stats[f"captions from {source}"] = sum(im.caption_from == source for im in scan.images)
    if labeled:
        write_records(({"image": str(im.path), "caption": im.caption, "label": im.label} for im in labeled), out)
        stats["out"] = str(out)
    if unlabeled:
        write_table(({"image": str(im.path), "caption": im.caption} for im in unlabeled), queue,
                    types={"caption": "string"})
        stats["queue"] = str(queue)
    stats["unreadable"] = [{"image": name, "reason": reason} for name, reason in scan.unreadable]
    return stats
