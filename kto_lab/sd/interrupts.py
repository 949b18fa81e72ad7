"""Ctrl-C and SIGTERM: a run stops with one line naming its last checkpoint, and frees its output_dir.

* Ctrl-C (SIGINT, ``KeyboardInterrupt``): the run stops where it is (the current step is lost; the last
  checkpoint is intact, being written atomically) and :class:`TrainingInterrupted` says which one to resume.
* SIGTERM (what SLURM, Kubernetes and ``kill`` send before SIGKILL): Python's default is to die at once,
  leaving ``run.lock`` behind. Inside :func:`on_sigterm` it is caught instead. During :meth:`Trainer.fit
  <kto_lab.sd.trainer.Trainer.fit>` on one process, the run finishes its current optimizer step and, when
  steps were trained since the last checkpoint, writes one first *if it fits*: if the last checkpoint
  write of this process took at most :data:`SAVE_BUDGET_S` seconds, or, before any, if the state to write
  (trainable weights and two Adam moments, in fp32) takes at most that long at :data:`ASSUMED_WRITE_SPEED`.
  10 s is a third of the 30 s that SLURM (``KillWait``) and Kubernetes (``terminationGracePeriodSeconds``)
  wait by default before SIGKILL: a LoRA checkpoint fits (milliseconds), a full SD 1.5 one (about 10 GB)
  does not, and is not started, since a SIGKILL mid-write would leave the lock behind. Elsewhere (model
  loading, several processes, whose steps cannot agree on a stop without a collective per step) the run
  stops at once. Either way the lock is released and the last complete checkpoint named.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

SAVE_BUDGET_S = 10.0
ASSUMED_WRITE_SPEED = 200e6  # bytes/s: a slow network disk; local NVMe writes 10x faster
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report them


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; the message names the last checkpoint. ``kto-lab`` prints it as
    one line and exits with ``exit_code`` (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.exit_code = EXIT_CODES.get(signum, 130)


@contextlib.contextmanager
def on_sigterm(handler: Callable[[], None]) -> Iterator[None]:
    """Call ``handler()`` on SIGTERM while inside (it may raise, or note the request); the previous handler
    is restored on leaving. Only the main thread can install one: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: handler())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
