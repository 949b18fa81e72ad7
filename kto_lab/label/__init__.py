"""Collect a person's likes and dislikes: one labeling core, two fronts.

    from kto_lab.label import Queue, LabelSession
    session = LabelSession(Queue.from_folder("shots/"), "shots/decisions.jsonl")

* :mod:`kto_lab.label.queue`: the images to label (a folder, a table, or a round's images);
* :mod:`kto_lab.label.session`: the core (next, decide, undo, progress, wait) over the append-only
  decision log of :mod:`kto_lab.data.decisions`, which ``kto-lab train`` reads as records;
* :mod:`kto_lab.label.widget`: the notebook front (ipywidgets; ``pip install kto-lab[label]``);
* :mod:`kto_lab.label.server`: the web page front (``kto-lab label serve``; the standard library).

See docs/labeling.md.
"""

from .queue import Item, Queue
from .session import ACTIONS, KEYS, LabelSession, Progress

__all__ = ["Item", "Queue", "LabelSession", "Progress", "ACTIONS", "KEYS"]
