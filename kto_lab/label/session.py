"""The labeling core: a queue, a decision log, and the labeler working through them.

    session = LabelSession(Queue.from_folder("shots/"), "shots/decisions.jsonl", labeler="ana")
    i = session.next()                  # the first image with no decision yet (None: all done)
    session.decide(i, "like")           # like / dislike / skip, on disk when it returns
    session.undo()                      # take back ana's last decision
    print(session.progress())           # "37 of 200 done: 21 liked, 14 disliked, 2 skipped"
    session.wait()                      # block until every image has a decision (from any front)

The notebook widget (:mod:`kto_lab.label.widget`) and the web page (:mod:`kto_lab.label.server`) are
two fronts on this class: both call :meth:`LabelSession.view` to show and :meth:`LabelSession.act` to
act, so they behave alike. Any number of sessions (tabs, processes, labelers) may share one decision
log; :class:`kto_lab.data.decisions.DecisionLog` keeps them from writing twice for one image.

Waiting for a person (what a round does): build the queue from the generated images, start a front
in another process (``kto-lab label serve queue.csv --decisions D``) or in a thread of this one
(:func:`kto_lab.label.server.LabelServer.start`), then ``session.wait()``. Do not wait in the same
notebook kernel that shows the widget: the kernel cannot run the widget's clicks while a cell blocks;
check ``session.complete`` (or ``session.remaining``) in a later cell instead.
"""

from __future__ import annotations

import getpass
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..data.decisions import DECISIONS, AlreadyDecided, Decision, DecisionLog
from ..data.tables import ImageLoadError, PathLike
from .queue import PREVIEW_MAX_SIDE, Item, Queue, preview_image

__all__ = ["ACTIONS", "KEYS", "Progress", "LabelSession", "default_labeler"]

ACTIONS = ("like", "dislike", "skip", "undo")
# Keyboard keys of both fronts (KeyboardEvent.key values) -> action.
KEYS = {"l": "like", "ArrowRight": "like", "d": "dislike", "ArrowLeft": "dislike",
        "s": "skip", "ArrowDown": "skip", "u": "undo", "Backspace": "undo"}


def default_labeler() -> str:
    """The labeler's name when none is given: the login name."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return "labeler"


@dataclass(frozen=True)
class Progress:
    """How far a queue is labelled; ``done`` counts every decision in force (skips and unreadable too)."""

    total: int
    liked: int
    disliked: int
    skipped: int
    unreadable: int

    @property
    def done(self) -> int:
        return self.liked + self.disliked + self.skipped + self.unreadable

    @property
    def remaining(self) -> int:
        return self.total - self.done

    @property
    def complete(self) -> bool:
        return self.remaining == 0

    def as_dict(self) -> Dict[str, int]:
        return {"total": self.total, "done": self.done, "remaining": self.remaining, "liked": self.liked,
                "disliked": self.disliked, "skipped": self.skipped, "unreadable": self.unreadable}

    def __str__(self) -> str:
        text = f"{self.done} of {self.total} done: {self.liked} liked, {self.disliked} disliked, {self.skipped} skipped"
        return text + (f", {self.unreadable} unreadable" if self.unreadable else "")


class LabelSession:
    """A labeler working through ``queue``, writing to the decision log ``decisions``.

    Items are addressed by their index in the queue. Every query first reads what other writers
    appended to the log, so two sessions on one log see each other's decisions.
    """

    def __init__(self, queue: Union[Queue, list], decisions: Union[PathLike, DecisionLog], labeler: Optional[str] = None,
                 *, preview_size: int = PREVIEW_MAX_SIDE):
        self.queue = queue if isinstance(queue, Queue) else Queue(queue)
        self.log = decisions if isinstance(decisions, DecisionLog) else DecisionLog(decisions)
        self.labeler = labeler or default_labeler()
        self.preview_size = int(preview_size)
        self._previews: "OrderedDict[int, Tuple[bytes, str]]" = OrderedDict()  # a few decoded images, for the fronts
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LabelSession({self.queue!r}, log={str(self.log.path)!r}, labeler={self.labeler!r}: {self.progress()})"

    # --- where things stand ---------------------------------------------------------------------

    def refresh(self) -> None:
        self.log.refresh()

    def decision(self, i: int) -> Optional[Decision]:
        """The decision in force for item ``i`` (as last read; :meth:`refresh` reads new ones)."""
        return self.log.active.get(self.queue[i].key)

    def pending(self) -> List[int]:
        """Indices of the items with no decision in force, in queue order."""
        with self._lock:
            self.refresh()
            return [i for i, item in enumerate(self.queue) if item.key not in self.log.active]

    def progress(self) -> Progress:
        with self._lock:
            self.refresh()
            counts = dict.fromkeys(DECISIONS, 0)
            for item in self.queue:
                d = self.log.active.get(item.key)
                if d is not None:
                    counts[d.decision] += 1
            return Progress(len(self.queue), counts["like"], counts["dislike"], counts["skip"], counts["unreadable"])

    @property
    def remaining(self) -> int:
        """How many items still need a decision."""
        return self.progress().remaining

    @property
    def complete(self) -> bool:
        """Whether every item has a decision in force (like, dislike, skip, or unreadable)."""
        return self.progress().complete

    def unreadable(self) -> List[Tuple[str, str]]:
        """``(name, reason)`` of the images skipped as unreadable: a folder's left out, and those found since."""
        with self._lock:
            found = [(item.name, d.extra.get("reason", "")) for item in self.queue
                     if (d := self.log.active.get(item.key)) is not None and d.decision == "unreadable"]
            return list(self.queue.unreadable) + found

    def records(self) -> List[Dict[str, Any]]:
        """This queue's likes and dislikes in force, as record dicts (what training reads from the log)."""
        with self._lock:
            self.refresh()
            keys = {item.key for item in self.queue}
            return [r for r in self.log.records() if r["image"] in keys]

    def wait(self, timeout: Optional[float] = None, poll: float = 1.0,
             on_progress: Optional[Callable[[Progress], None]] = None) -> Progress:
        """Block until every item has a decision (written by any front, in any process) or ``timeout``
        seconds pass; return the progress (check ``.complete``). ``on_progress(progress)`` is called
        at the start and whenever it changes. Polls the log's size every ``poll`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            progress = self.progress()
            if on_progress is not None and progress != last:
                on_progress(progress)
            last = progress
            now = time.monotonic()
            if progress.complete or (deadline is not None and now >= deadline):
                return progress
            time.sleep(poll if deadline is None else max(0.0, min(poll, deadline - now)))

    # --- acting ---------------------------------------------------------------------------------

    def preview(self, i: int) -> Tuple[bytes, str]:
        """Item ``i``'s image for a front: ``(bytes, mime)``, shrunk to ``preview_size``; an unreadable
        image raises :class:`~kto_lab.data.tables.ImageLoadError`."""
        with self._lock:
            if i not in self._previews:
                self._previews[i] = preview_image(self.queue[i].image, self.preview_size)
                while len(self._previews) > 8:
                    self._previews.popitem(last=False)
            return self._previews[i]

    def next(self) -> Optional[int]:
        """The first item with no decision in force whose image decodes, or None when none is left.
        An image that does not decode gets an ``unreadable`` decision (with the reason), so every
        session, and a round waiting on this queue, counts it as done."""
        with self._lock:
            for i in self.pending():
                try:
                    self.preview(i)
                    return i
                except ImageLoadError as exc:
                    try:
                        self.log.decide(self.queue[i].image, self.queue[i].caption, "unreadable", self.labeler,
                                        **{**self.queue[i].extra, "reason": str(exc)})
                    except AlreadyDecided:
                        pass  # another session decided it meanwhile
            return None

    def decide(self, i: Union[int, Item], decision: str, labeler: Optional[str] = None) -> Decision:
        """Record ``decision`` (like / dislike / skip) for item ``i``; :class:`AlreadyDecided` if it has
        one in force (from any session): :meth:`undo` first to change it."""
        if decision not in ("like", "dislike", "skip"):
            raise ValueError(f"decision {decision!r} is not one of like, dislike, skip")
        if isinstance(i, Item):
            if self.queue.index(i.key) is None:
                raise ValueError(f"{i.image} is not in this session's queue")
            i = self.queue.index(i.key)
        item = self.queue[i]
        with self._lock:
            return self.log.decide(item.image, item.caption, decision, labeler or self.labeler, **item.extra)

    def undo(self, labeler: Optional[str] = None) -> Optional[Decision]:
        """Take back the labeler's latest decision in force (appending an undo); None if there is none."""
        with self._lock:
            return self.log.undo(labeler or self.labeler)

    # --- what the fronts call -------------------------------------------------------------------

    def act(self, action: str, index: Optional[int] = None, labeler: Optional[str] = None) -> str:
        """One click or key of a front: ``like``/``dislike``/``skip`` item ``index`` (the one the front
        shows, so a stale tab never labels another image), or ``undo``. Returns the message to show."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} is not one of {list(ACTIONS)}")
        if action == "undo":
            undone = self.undo(labeler)
            return "nothing to undo" if undone is None else f"undid {undone.decision} of {_name(undone.image)}"
        if index is None or not 0 <= index < len(self.queue):
            raise ValueError(f"{action} needs the index of a queue item (0..{len(self.queue) - 1}), got {index!r}")
        try:
            done = self.decide(index, action, labeler)
        except AlreadyDecided as exc:
            by = exc.existing
            return f"{self.queue[index].name} was already labelled {by.decision} by {by.labeler}; showing the next"
        return f"{done.decision} {self.queue[index].name}"

    def view(self) -> Dict[str, Any]:
        """What a front shows now: progress, the next item (or None when all are done), unreadable images."""
        with self._lock:
            i = self.next()
            progress = self.progress()
            item = None if i is None else {"index": i, "name": self.queue[i].name, "caption": self.queue[i].caption}
            return {"progress": str(progress), "counts": progress.as_dict(), "complete": progress.complete,
                    "item": item, "unreadable": [name for name, _ in self.unreadable()]}


def _name(key: str) -> str:
    return Path(key).name
