"""The decision log: an append-only JSONL file of a person's (or any labeler's) likes and dislikes.

Per-image binary feedback is cheap to collect (Diffusion-KTO, appendix C); this file is where it is
kept. Every line is one decision, written once and never rewritten:

    {"decision": "like", "image": "shots/a.png", "caption": "a red car", "label": 1, "labeler": "ana", "time": "2026-11-02T10:31:07.412+00:00"}
    {"decision": "skip", "image": "shots/b.png", "caption": "a red car", "label": null, "labeler": "ana", "time": "..."}
    {"decision": "undo", "image": "shots/a.png", "caption": "a red car", "label": null, "labeler": "ana", "time": "..."}

``decision`` is one of :data:`DECISIONS`: ``like`` (label 1, desirable), ``dislike`` (label 0),
``skip`` (no label: not trained on), ``unreadable`` (written by the labeling core for an image it
cannot decode; the ``reason`` key says why), or ``undo`` (takes back the decision in force for that
image). ``image`` is relative to the log's directory where the image lies under it, else absolute;
keys beyond these (``score``, ``source_id``, a round's ``seed`` ...) are the queue item's and are kept.

Replaying the lines in order gives the decisions *in force*: an image's latest decision not taken back.
The ``like``/``dislike`` ones are a record table (:func:`read_decision_table`), so
``kto_lab.data.records.load_records`` and hence ``kto-lab train`` read a decision log as they read
any records table. A decision log is recognised by its first bytes, ``{"decision":``.

Guarantees (:class:`DecisionLog`):

* a decision is on disk when :meth:`DecisionLog.decide` returns: one ``write`` of the whole line,
  then ``fsync``; a crash or kill loses at most the decision being written. Its cut last line is
  ignored by readers, and dropped (with a warning) by the next writer before it appends;
* writers take an exclusive ``flock`` on the file for each decision and first read what others
  appended, so two tabs, two processes or two labelers never write two decisions in force for one
  image (the second gets :class:`AlreadyDecided`) and never lose one;
* undo appends an ``undo`` line; nothing is rewritten. Each labeler undoes their own decisions,
  last first.

Locking is POSIX ``flock`` (Linux, macOS) on a local disk; network file systems may not honour it.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from ..config import UserError
from .tables import DataError, PathImageColumn, PathLike, TableFile, portable_path

__all__ = ["DECISIONS", "LABEL_OF", "Decision", "DecisionLog", "AlreadyDecided", "is_decision_log",
           "read_decision_table"]

LABEL_OF = {"like": 1, "dislike": 0, "skip": None, "unreadable": None}  # decision -> records label
DECISIONS = tuple(LABEL_OF)  # what may be in force for an image
UNDO = "undo"
MAGIC = b'{"decision":'  # every line starts so (the key is written first): how a log is recognised
RESERVED = ("decision", "image", "caption", "label", "labeler", "time")


class AlreadyDecided(UserError):
    """The image has a decision in force (from another tab or labeler, or an earlier click): undo it first."""

    def __init__(self, existing: "Decision"):
        self.existing = existing
        super().__init__(f"{existing.image} is already labelled {existing.decision!r} by {existing.labeler} at "
                         f"{existing.time}; undo that decision first to change it")


@dataclass(frozen=True)
class Decision:
    """One line of the log, replayed: ``image`` is the absolute, resolved path (the image's identity)."""

    decision: str
    image: str
    caption: str
    labeler: str
    time: str
    line: int  # 1-based line number in the log
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> Optional[int]:
        return LABEL_OF.get(self.decision)


def is_decision_log(path: PathLike) -> bool:
    """Whether ``path`` is a ``.jsonl`` file whose first line begins ``{"decision":``."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def image_key(image: PathLike) -> str:
    """An image's identity in a log: its absolute path with symlinks resolved."""
    return str(Path(image).resolve())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _json_value(value: Any) -> Any:
    """JSON has no NaN: a missing score (NaN) is written as null."""
    return None if isinstance(value, float) and math.isnan(value) else value


class DecisionLog:
    """The decisions of one log file, replayed, and the only way to append to it.

    ``active`` maps each image key (:func:`image_key`) to its :class:`Decision` in force, in the order
    they were made. :meth:`refresh` reads what other writers appended since; :meth:`decide` and
    :meth:`undo` do so under the file lock before they write. Safe to share between threads.
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if self.path.suffix.lower() != ".jsonl":
            raise DataError(f"decision log {self.path}: must be a .jsonl file")
        if self.path.is_dir():
            raise DataError(f"decision log {self.path} is a directory; give a .jsonl file")
        if self.path.is_file() and self.path.stat().st_size and not is_decision_log(self.path):
            raise DataError(f"{self.path} exists and is not a decision log (its lines would begin "
                            f"{MAGIC.decode()}); choose a new file for the decisions")
        self.directory = self.path.parent
        self.active: Dict[str, Decision] = {}
        self.cut_tail = 0  # bytes of a cut last line (a write that did not finish) seen by the last read
        self._stacks: Dict[str, List[str]] = {}  # labeler -> their images in force, oldest first
        self._offset = 0  # bytes replayed: all complete lines so far
        self._lines = 0
        self._lock = threading.RLock()
        self.refresh()

    # --- reading ------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Replay the lines appended since the last read; return whether any were. A cut last line
        is left for later (it is either being written now or was cut by a crash)."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    return self._read_from(f)
            except FileNotFoundError:
                return False

    def _read_from(self, f) -> bool:
        size = os.fstat(f.fileno()).st_size
        if size < self._offset:  # the file was replaced or truncated under us: replay from the start
            self.active, self._stacks, self._offset, self._lines = {}, {}, 0, 0
        if size == self._offset:
            self.cut_tail = 0
            return False
        f.seek(self._offset)
        data = f.read(size - self._offset)
        end = data.rfind(b"\n") + 1
        self.cut_tail = len(data) - end
        for line in data[:end].splitlines():
            self._lines += 1
            if line.strip():
                self._apply(self._parse(line, self._lines))
        self._offset += end
        return end > 0

    def _parse(self, line: bytes, number: int) -> dict:
        where = f"{self.path}, line {number}"
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{where}: not valid JSON ({exc}); only a cut last line is tolerated") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: each line must be a JSON object")
        decision, image, labeler = row.get("decision"), row.get("image"), row.get("labeler")
        if decision not in DECISIONS + (UNDO,):
            raise DataError(f"{where}: decision {decision!r} is not one of {list(DECISIONS + (UNDO,))}")
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: image {image!r} must be a non-empty path")
        if not isinstance(labeler, str) or not isinstance(row.get("caption", ""), str):
            raise DataError(f"{where}: labeler and caption must be strings")
        return row

    def _apply(self, row: dict) -> None:
        key = image_key(self.directory / row["image"])
        previous = self.active.pop(key, None)
        if previous is not None and key in self._stacks.get(previous.labeler, ()):
            self._stacks[previous.labeler].remove(key)  # an undo, or (never written here) a second decision: the later wins
        if row["decision"] == UNDO:
            return
        extra = {k: v for k, v in row.items() if k not in RESERVED}
        decision = Decision(row["decision"], key, row.get("caption", ""), row["labeler"], str(row.get("time", "")),
                            self._lines, extra)
        self.active[key] = decision
        if decision.decision != "unreadable":  # the core's own note, not a labeler's to undo
            self._stacks.setdefault(decision.labeler, []).append(key)

    def last(self, labeler: str) -> Optional[Decision]:
        """``labeler``'s latest decision in force (what :meth:`undo` would take back)."""
        with self._lock:
            stack = self._stacks.get(labeler)
            return self.active[stack[-1]] if stack else None

    def records(self) -> List[Dict[str, Any]]:
        """The likes and dislikes in force as record dicts (absolute image paths), in decision order."""
        with self._lock:
            return [{"image": d.image, "caption": d.caption, "label": d.label, **d.extra}
                    for d in self.active.values() if d.label is not None]

    # --- writing ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """The log open for appending under an exclusive flock, caught up with other writers."""
        with self._lock:
            created = not self.path.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if created:  # the new file's name is durable too
                    _fsync_directory(self.directory)
                with os.fdopen(os.dup(fd), "rb") as f:
                    self._read_from(f)
                if self.cut_tail:  # under the lock no one is writing: a writer died mid-line
                    warnings.warn(f"{self.path}: dropped a cut last line ({self.cut_tail} bytes) left by a write "
                                  "that did not finish; that decision was not recorded", UserWarning, stacklevel=3)
                    os.ftruncate(fd, self._offset)
                    self.cut_tail = 0
                yield fd
            finally:
                os.close(fd)  # releases the flock

    def _append(self, fd: int, row: Dict[str, Any]) -> Decision:
        data = (json.dumps({k: _json_value(v) for k, v in row.items()}, ensure_ascii=False) + "\n").encode("utf-8")
        assert data.startswith(MAGIC)
        written = os.write(fd, data)
        while written < len(data):  # a short write (rare, on a regular file): finish the line
            written += os.write(fd, data[written:])
        os.fsync(fd)
        with os.fdopen(os.dup(fd), "rb") as f:
            self._read_from(f)  # replays exactly the line just written (the lock is still held)
        return self.active.get(image_key(self.directory / row["image"]))

    def _row(self, decision: str, image: str, caption: str, labeler: str, extra: Dict[str, Any]) -> Dict[str, Any]:
        clash = sorted(set(extra) & set(RESERVED))
        if clash:
            raise ValueError(f"extra keys {clash} are reserved in a decision log")
        return {"decision": decision, "image": portable_path(image, self.directory), "caption": caption,
                "label": LABEL_OF.get(decision), "labeler": labeler, "time": _now(), **extra}

    def decide(self, image: PathLike, caption: str, decision: str, labeler: str, **extra) -> Decision:
        """Append ``decision`` for ``image`` (fsynced before returning) and return it. An image with a
        decision in force (from anyone) raises :class:`AlreadyDecided`: :meth:`undo` it first."""
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {list(DECISIONS)}")
        if not isinstance(labeler, str) or not labeler.strip():
            raise ValueError(f"labeler {labeler!r} must be a non-empty name")
        key = image_key(image)
        with self._locked() as fd:
            if key in self.active:
                raise AlreadyDecided(self.active[key])
            return self._append(fd, self._row(decision, key, caption, labeler, extra))

    def undo(self, labeler: str) -> Optional[Decision]:
        """Take back ``labeler``'s latest decision in force by appending an ``undo`` line; return the
        decision taken back, or None when they have none."""
        with self._locked() as fd:
            last = self.last(labeler)
            if last is None:
                return None
            self._append(fd, self._row(UNDO, last.image, last.caption, labeler, {}))
            return last


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_decision_table(path: PathLike, optional: Sequence[str] = ()) -> TableFile:
    """The likes and dislikes in force in a decision log, as a records table file (``image``,
    ``caption``, ``label`` and those of ``optional`` that some decision carries)."""
    log = DecisionLog(path)
    rows = log.records()
    columns: Dict[str, list] = {"caption": [r["caption"] for r in rows], "label": [r["label"] for r in rows]}
    for name in optional:
        if any(name in r for r in rows):
            columns[name] = [r.get(name) for r in rows]
    images = {"image": PathImageColumn(log.path, "image", [r["image"] for r in rows])}
    return TableFile(log.path, columns, images, len(rows))
