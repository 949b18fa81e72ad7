"""Who says like or dislike in a round: a person, a scorer with a threshold or a quantile, a synthetic user, a function.

Every labeler writes into the round's decision log through a :class:`~kto_lab.label.LabelSession`, one
decision per image (:mod:`kto_lab.data.decisions`), so a round's labels are one format whoever made them,
``kto-lab train`` reads them unchanged, and an interrupted round labels only what has no decision yet:

* :class:`PersonLabeler`: serves the labeling page (``kto-lab label serve``'s, from this process) and waits
  (:meth:`LabelSession.wait`) until every image has a decision, from the page, the notebook widget, or
  ``kto-lab label serve`` in another shell; a restart waits for the rest;
* :class:`ScorerLabeler`: any of :mod:`kto_lab.eval`'s scorers; like when the score is >= a threshold, or
  above a quantile of round 1's scores (the bar the base model's images set, kept for later rounds); the
  synthetic users of :mod:`kto_lab.synthetic.users` are scorer labelers with their scorer and quantile;
* :class:`CallableLabeler`: ``fn(images, captions) -> like / dislike / skip`` (or True / False / None) per image.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..config import ConfigError, UserError
from ..label.session import LabelSession

__all__ = ["LabelsPending", "PersonLabeler", "ScorerLabeler", "CallableLabeler", "make_labeler", "as_decision"]

CHUNK = 64  # images scored or judged at once (decisions are written after each chunk: a kill loses one chunk)


class LabelsPending(Exception):
    """A round's labels are not all in (a person's timeout, or a notebook asking before the widget is done).
    Nothing is lost: the next call waits for the rest."""


def _images(session: LabelSession, indices: Sequence[int]):
    from PIL import Image

    out = []
    for i in indices:
        with Image.open(session.queue[i].image) as im:
            out.append(im.convert("RGB"))
    return out


def as_decision(value: Any, where: str) -> str:
    """A labeling function's answer as a decision: like / dislike / skip, True / False / None, 1 / 0."""
    if isinstance(value, str) and value in ("like", "dislike", "skip"):
        return value
    if value is None:
        return "skip"
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return "like" if bool(value) else "dislike"
    raise UserError(f"{where}: the labeler returned {value!r}; return like, dislike or skip "
                    "(or True, False, None) for each image")


class PersonLabeler:
    """A person labels the round's images at the page (served here) or in the widget; the round waits."""

    automatic = False

    def __init__(self, name: Optional[str] = None, *, serve: bool = True, host: str = "127.0.0.1", port: int = 8765,
                 timeout: Optional[float] = None, poll: float = 1.0, log: Callable[[str], None] = print):
        from ..label.session import default_labeler

        self.name = name or default_labeler()
        self.serve, self.host, self.port, self.timeout, self.poll, self.log = serve, host, port, timeout, poll, log

    def label(self, session: LabelSession, round_index: int, *, queue_table: Path, rounds=None) -> Dict[str, Any]:
        progress = session.progress()
        if progress.complete:
            return {}
        server = None
        if self.serve:
            from ..label.server import LabelServer, announce

            server = LabelServer(session, self.host, self.port).start()
            announce(server)
        self.log(f"round {round_index}: waiting for {progress.remaining} label(s); another front works too: "
                 f"kto-lab label serve {queue_table} --decisions {session.log.path} --port 0")
        try:
            progress = session.wait(self.timeout, self.poll, on_progress=lambda p: self.log(f"round {round_index}: {p}"))
        finally:
            if server is not None:
                server.stop()
        if not progress.complete:
            raise LabelsPending(f"round {round_index}: {progress} after waiting {self.timeout:g} s; run again to wait "
                                "for the rest (the labels so far are kept)")
        return {}


class ScorerLabeler:
    """Like an image whose ``scorer`` score is >= ``threshold``, or above ``quantile`` of round 1's scores
    (``each_round``: of each round's own). Each decision carries its ``score``."""

    automatic = True

    def __init__(self, scorer, *, name: Optional[str] = None, threshold: Optional[float] = None,
                 quantile: Optional[float] = None, each_round: bool = False, batch_size: int = CHUNK):
        if (threshold is None) == (quantile is None):
            raise ConfigError("a scorer labeler needs a threshold or a quantile (one of them)")
        self.scorer, self.threshold, self.quantile, self.each_round = scorer, threshold, quantile, each_round
        self.name = name or f"scorer:{scorer.name}"
        self.batch_size = batch_size

    def scores(self, session: LabelSession, indices: Sequence[int]) -> np.ndarray:
        out = []
        for start in range(0, len(indices), self.batch_size):
            chunk = list(indices[start:start + self.batch_size])
            out.append(np.asarray(self.scorer.score(_images(session, chunk), [session.queue[i].caption for i in chunk]),
                                  dtype=np.float64))
        return np.concatenate(out) if out else np.zeros(0)

    def bar(self, session: LabelSession, round_index: int, rounds=None) -> Dict[str, Any]:
        """The threshold of this round: given, or the quantile of round 1's (or this round's) scores."""
        if self.threshold is not None:
            return {"threshold": float(self.threshold), "rule": "score >= threshold"}
        first = round_index == 1 or self.each_round
        if not first and rounds is not None:
            saved = rounds.round_dir(1) / "labels.json"
            if saved.is_file():
                return {k: v for k, v in json.loads(saved.read_text()).items() if k in ("threshold", "rule")}
        source = session if first or rounds is None else rounds.session(1)
        scores = self.scores(source, range(len(source.queue)))
        of = "this round's" if self.each_round else "round 1's"
        return {"threshold": float(np.quantile(scores, self.quantile)),
                "rule": f"score > the {self.quantile:g} quantile of {of} scores"}

    def label(self, session: LabelSession, round_index: int, *, queue_table: Path = None, rounds=None) -> Dict[str, Any]:
        bar = self.bar(session, round_index, rounds)
        t, strict = bar["threshold"], self.threshold is None
        pending = session.pending()
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            for i, s in zip(chunk, self.scores(session, chunk)):
                liked = s > t if strict else s >= t
                session.log.decide(session.queue[i].image, session.queue[i].caption, "like" if liked else "dislike",
                                   self.name, **{**session.queue[i].extra, "score": float(s)})
        return bar


class CallableLabeler:
    """``fn(images, captions)`` (PIL images, their captions) -> one decision per image (see :func:`as_decision`)."""

    automatic = True

    def __init__(self, fn: Callable, *, name: Optional[str] = None, batch_size: int = CHUNK):
        if not callable(fn):
            raise ConfigError(f"the labeler must be callable as fn(images, captions), got {fn!r}")
        self.fn, self.batch_size = fn, batch_size
        self.name = name or f"function:{getattr(fn, '__name__', type(fn).__name__)}"

    def label(self, session: LabelSession, round_index: int, *, queue_table: Path = None, rounds=None) -> Dict[str, Any]:
        pending = session.pending()
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            answers = list(self.fn(_images(session, chunk), [session.queue[i].caption for i in chunk]))
            if len(answers) != len(chunk):
                raise UserError(f"round {round_index}: the labeler {self.name} returned {len(answers)} answers for "
                                f"{len(chunk)} images")
            for i, answer in zip(chunk, answers):
                decision = as_decision(answer, f"round {round_index}, {session.queue[i].name}")
                session.log.decide(session.queue[i].image, session.queue[i].caption, decision, self.name,
                                   **session.queue[i].extra)
        return {}


def load_function(spec: str) -> Callable:
    """``"package.module:function"`` -> the function (a one-line error if it is not there)."""
    module, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"labeler.function={spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise ConfigError(f"labeler.function={spec!r} is not callable")
    return fn


def make_labeler(cfg, *, function: Optional[Callable] = None, scorers: Optional[Dict[str, Any]] = None,
                 log: Callable[[str], None] = print):
    """The labeler of ``cfg.labeler`` (a :class:`~kto_lab.rounds.config.LabelerConfig`); ``function`` is a Python
    callable for ``kind=callable``, ``scorers`` scorer objects by name (else built from the registry)."""
    lab = cfg.labeler
    if lab.kind == "person":
        return PersonLabeler(lab.name, serve=lab.serve, host=lab.host, port=lab.port, timeout=lab.timeout,
                             poll=lab.poll, log=log)
    if lab.kind == "callable":
        if function is None and lab.function is None:
            raise ConfigError("labeler.kind=callable needs labeler.function='package.module:function' "
                              "(or kto_lab.rounds(..., labeler=fn))")
        return CallableLabeler(function or load_function(lab.function), name=lab.name)
    from ..eval.scorers import get_scorer

    scorers = scorers or {}
    if lab.kind == "user":
        from ..synthetic.users import get_user

        user = get_user(lab.user)
        scorer = scorers.get(user.scorer) or get_scorer(user.scorer)
        quantile = lab.quantile if lab.quantile is not None or lab.threshold is not None else user.quantile
        return ScorerLabeler(scorer, name=lab.name or f"user:{user.name}", threshold=lab.threshold, quantile=quantile,
                             each_round=lab.quantile_each_round)
    scorer = scorers.get(lab.scorer.name) or get_scorer(lab.scorer.name, **lab.scorer.kwargs())
    return ScorerLabeler(scorer, name=lab.name, threshold=lab.threshold, quantile=lab.quantile,
                         each_round=lab.quantile_each_round)
