"""The notebook front: one image at a time, with buttons and keyboard keys (ipywidgets + ipyevents).

    from kto_lab.label.widget import label_widget
    label_widget("shots/", "shots/decisions.jsonl")        # the last expression of a cell shows it

Keys (with the mouse over the widget, as ipyevents delivers them): ``L`` or right arrow = like, ``D``
or left arrow = dislike, ``S`` or down arrow = skip, ``U`` or Backspace = undo (:data:`KEYS`). Each
click or key goes through :meth:`LabelSession.act`, exactly as on the web page. Install with
``pip install "kto-lab[label]"``; without ipyevents the buttons still work.
"""

from __future__ import annotations

import html
from typing import Optional, Union

from ..config import UserError
from ..data.tables import PathLike
from .queue import Queue
from .session import ACTIONS, KEYS, LabelSession

__all__ = ["LabelWidget", "label_widget"]

LABELS = {"like": "Like (L)", "dislike": "Dislike (D)", "skip": "Skip (S)", "undo": "Undo (U)"}
STYLES = {"like": "success", "dislike": "danger", "skip": "", "undo": "warning"}


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError:
        raise UserError("the labeling widget needs ipywidgets: pip install \"kto-lab[label]\"") from None
    return ipywidgets


class LabelWidget:
    """Shows ``session``'s next image; ``buttons[action].click()`` and :meth:`key` drive it from Python too."""

    def __init__(self, session: LabelSession, *, size: int = 384):
        w = _ipywidgets()
        self.session = session
        self.shown: Optional[int] = None  # the queue index on screen
        self.status = w.HTML()
        self.image = w.Image(format="png", layout=w.Layout(width=f"{size}px", height=f"{size}px", object_fit="contain"))
        self.caption = w.HTML()
        self.message = w.HTML()
        self.buttons = {a: w.Button(description=LABELS[a], button_style=STYLES[a]) for a in ACTIONS}
        for action, button in self.buttons.items():
            button.on_click(lambda _button, action=action: self.press(action))
        self.box = w.VBox([self.status, self.image, self.caption, w.HBox(list(self.buttons.values())), self.message])
        try:
            from ipyevents import Event
        except ImportError:  # keys need ipyevents; the buttons work without it
            self.events = None
        else:
            self.events = Event(source=self.box, watched_events=["keydown"], prevent_default_action=True)
            self.events.on_dom_event(self.key)
        self.render()

    def press(self, action: str) -> None:
        """What a button does: act on the image shown, then show the next one."""
        self.render(self.session.act(action, self.shown))

    def key(self, event: dict) -> None:
        """A keydown event as ipyevents sends it (``{"type": "keydown", "key": "l", ...}``)."""
        if event.get("ctrlKey") or event.get("metaKey") or event.get("altKey"):
            return
        action = KEYS.get(event.get("key", ""))
        if action is None and len(event.get("key", "")) == 1:
            action = KEYS.get(event["key"].lower())  # L as well as l
        if action is not None and (action == "undo" or self.shown is not None):
            self.press(action)

    def render(self, message: str = "") -> None:
        view = self.session.view()
        item = view["item"]
        self.shown = None if item is None else item["index"]
        self.status.value = f"<b>{html.escape(view['progress'])}</b>"
        if item is None:
            self.image.value = b""
            self.image.layout.display = "none"
            self.caption.value = "<i>Every image is labelled.</i>"
        else:
            data, mime = self.session.preview(item["index"])
            self.image.format = mime.split("/")[1]
            self.image.value = data
            self.image.layout.display = None
            self.caption.value = f"{html.escape(item['caption'] or '(no caption)')} <small>({html.escape(item['name'])})</small>"
        for action in ("like", "dislike", "skip"):
            self.buttons[action].disabled = item is None
        notes = [message] if message else []
        if view["unreadable"]:
            notes.append("skipped as unreadable: " + ", ".join(view["unreadable"]))
        self.message.value = "<br>".join(html.escape(n) for n in notes)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.box)


def label_widget(queue: Union[Queue, PathLike], decisions: PathLike, labeler: Optional[str] = None, *,
                 size: int = 384) -> LabelWidget:
    """A :class:`LabelWidget` on ``queue`` (a :class:`Queue`, a folder or a table) writing to ``decisions``."""
    if not isinstance(queue, Queue):
        queue = Queue.from_source(queue)
    return LabelWidget(LabelSession(queue, decisions, labeler), size=size)
