"""A labeling queue: the images a person is asked about, in order, each with its caption.

    Queue.from_folder("shots/")          # a folder's images not labelled yet (kto_lab.data.folder)
    Queue.from_table("queue.csv")        # a table of image, caption (any label column is ignored)
    Queue([("a.png", "a red car"), {"image": "b.png", "caption": "a cat", "seed": 3}])   # e.g. a round's images

An item's identity is its image's resolved path, so a queue rebuilt after a restart matches the
decisions already made. Keys of a dict item beyond ``image`` and ``caption`` travel into its
decision (and so into the records: ``score``, ``source_id``, or a round's own ``prompt_id``, ``seed``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from ..data.decisions import RESERVED, image_key, is_decision_log
from ..data.tables import DataError, FORMATS, PathImageColumn, PathLike, decode_image

__all__ = ["Item", "Queue", "preview_image"]

ItemLike = Union["Item", PathLike, Tuple[PathLike, str], Dict[str, Any]]


@dataclass(frozen=True)
class Item:
    image: Path  # absolute, symlinks resolved: the item's identity
    caption: str = ""
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return str(self.image)

    @property
    def name(self) -> str:
        return self.image.name


def _as_item(value: ItemLike, n: int) -> Item:
    if isinstance(value, Item):
        return value
    if isinstance(value, dict):
        if "image" not in value:
            raise DataError(f"queue item {n}: {value!r} has no 'image'")
        extra = {k: v for k, v in value.items() if k not in ("image", "caption")}
        clash = sorted(set(extra) & set(RESERVED))
        if clash:
            raise DataError(f"queue item {n}: keys {clash} are the decision log's own; rename them")
        image, caption = value["image"], value.get("caption", "")
    elif isinstance(value, tuple) and len(value) == 2:
        (image, caption), extra = value, {}
    else:
        image, caption, extra = value, "", {}
    if not isinstance(caption, str):
        raise DataError(f"queue item {n}: caption {caption!r} must be a string")
    if not isinstance(image, (str, Path)) or not str(image):
        raise DataError(f"queue item {n}: image {image!r} must be a path to an image file")
    return Item(Path(image_key(image)), caption, extra)


class Queue:
    """Images to label, in order (each image once)."""

    def __init__(self, items: Iterable[ItemLike], *, source: str = "items"):
        self.items: List[Item] = [_as_item(v, n) for n, v in enumerate(items)]
        self.source = source
        self.already_labeled = 0  # a folder's images that its sub-folders or sidecar label already
        self.unreadable: List[Tuple[str, str]] = []  # (name, reason): a folder's images left out, unreadable
        self._index: Dict[str, int] = {}
        for i, item in enumerate(self.items):
            if item.key in self._index:
                raise DataError(f"{source}: image {item.key} is in the queue twice (items {self._index[item.key]} and {i})")
            self._index[item.key] = i

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Item:
        return self.items[i]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def index(self, key: str) -> Optional[int]:
        """The position of the item whose image key is ``key``, or None."""
        return self._index.get(key)

    def __repr__(self) -> str:
        return f"Queue({len(self)} images from {self.source})"

    @classmethod
    def from_folder(cls, folder: PathLike, *, sidecar: Optional[PathLike] = None, default_caption: str = "") -> "Queue":
        """The images of ``folder`` that its sub-folders or sidecar do not label yet (:func:`kto_lab.data.folder.scan_folder`)."""
        from ..data.folder import scan_folder

        scan = scan_folder(folder, sidecar=sidecar, default_caption=default_caption)
        queue = cls([Item(im.path.resolve(), im.caption) for im in scan.unlabeled], source=str(scan.folder))
        queue.already_labeled = len(scan.labeled)
        queue.unreadable = scan.unreadable
        return queue

    @classmethod
    def from_table(cls, path: PathLike) -> "Queue":
        """The rows of a table with ``image`` (files) and ``caption``; ``score`` and ``source_id`` are kept."""
        from ..data.records import open_image_table

        if is_decision_log(path):
            raise DataError(f"{path} is a decision log, not a queue; give the folder or table its images came from")
        table = open_image_table(path, optional=("score", "source_id"))
        if any(not isinstance(f.images["image"], PathImageColumn) for f in table.files):
            raise DataError(f"{path} holds its images as bytes; a labeling queue shows image files: write them out "
                            "as files (e.g. kto-lab data pickapic --image-dir DIR) and give that table")
        extras = {name: table.column(name) for name in ("score", "source_id") if table.column(name) is not None}
        items = [{"image": table.raw_image(i), "caption": table.captions[i],
                  **{k: v[i] for k, v in extras.items() if v[i] is not None}} for i in range(len(table))]
        return cls(items, source=str(path))

    @classmethod
    def from_source(cls, source: PathLike, *, default_caption: str = "") -> "Queue":
        """A folder (:meth:`from_folder`) or a table file (:meth:`from_table`): what ``kto-lab label serve`` takes."""
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"no such folder or table: {source}")
        if path.is_dir():
            return cls.from_folder(path, default_caption=default_caption)
        if path.suffix.lower() in FORMATS:
            return cls.from_table(path)
        raise DataError(f"{source}: give a folder of images or a table ({', '.join(sorted(FORMATS))}) of image, caption")


PREVIEW_MAX_SIDE = 768  # pixels: enough to judge an image, small enough for a remote browser


def preview_image(path: PathLike, max_side: int = PREVIEW_MAX_SIDE) -> Tuple[bytes, str]:
    """An image decoded (an unreadable one raises :class:`~kto_lab.data.tables.ImageLoadError` naming it),
    shrunk to ``max_side`` and encoded for a browser: ``(bytes, mime type)``, JPEG for JPEG files, else PNG."""
    image = decode_image(path, f"'{path}'")
    image.thumbnail((max_side, max_side))
    jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if jpeg else "PNG", **({"quality": 90} if jpeg else {}))
    return buffer.getvalue(), "image/jpeg" if jpeg else "image/png"
