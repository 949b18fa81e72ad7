"""An output directory belongs to one run: claimed before any model loads, locked while it runs.

:func:`claim_output_dir` decides, on the main process, what a new :class:`~kto_lab.sd.trainer.Trainer`
may do with ``cfg.output_dir``:

* a directory without a run's files: a new run (a fresh run id);
* a used one (config, metrics, checkpoints or weights of an earlier run): refused, unless
  ``checkpoint.resume`` continues that run or ``overwrite=True`` (``kto-lab train --overwrite``)
  deletes its files first: only what a run wrote, and nothing before every check has passed
  (:mod:`kto_lab.sd.run_files`: the ledger, the user's files, links, inputs);
* a resume continues the same run or is refused: the run-defining fields of the config
  (everything but :data:`MAY_CHANGE_ON_RESUME`) are compared with the ones saved in the
  checkpoint, and every difference is listed with its old and new value;
* a second live run in the directory is refused by a lock file (``run.lock``: pid, host),
  created atomically; a lock left by a dead process on this host is taken over, saying so.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..config import ConfigError, resolved_paths
from ..data.tables import fingerprint_changes
from . import run_files
from .checkpoints import latest_checkpoint, problem, read_manifest
from .components import LORA_WEIGHTS
from .families import DENOISER_FOLDERS

LOCK = "run.lock"
# Files that mark output_dir as used by a run (a full fine-tune's weights: the family's denoiser folder, unet/,
# transformer/, ...); what a run writes and what --overwrite deletes: kto_lab.sd.run_files
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints", *DENOISER_FOLDERS, LORA_WEIGHTS)
# Config fields a resumed run may change (prefixes end with a dot); every other field defines the run.
MAY_CHANGE_ON_RESUME = ("output_dir", "cpu", "optim.max_steps", "optim.allow_tf32", "model.compile",
                        "model.compile_mode", "model.compile_blocks", "model.channels_last",
                        "model.gradient_checkpointing", "logging.", "checkpoint.")
RESUME_HINT = "resume with checkpoint.resume=latest, or choose another output_dir, or pass --overwrite"
# Fields holding local paths (or hub ids): equal when they name the same file, however written.
PATH_FIELDS = ("data.train", "data.cache_dir", "model.pretrained", "model.denoiser", "model.reference", "model.vae")


class RunDirError(ConfigError):
    """output_dir is used by another run, locked, or a resume would make it another run."""


def final_weights(output_dir: str | Path) -> Optional[Path]:
    """A finished run's weights in ``output_dir`` (its denoiser folder, ``unet/``, ``transformer/``, ..., or the
    LoRA file), if any."""
    out = Path(output_dir)
    for denoiser in DENOISER_FOLDERS:
        if (out / denoiser / "config.json").is_file():
            return out / denoiser
    return out / LORA_WEIGHTS if (out / LORA_WEIGHTS).is_file() else None


def used_by(output_dir: Path) -> List[str]:
    """The files of an earlier kto_lab run found in ``output_dir`` (empty: the directory is free)."""
    mine = run_files.owned(output_dir)
    return [name for name in RUN_MARKERS if name in mine and (output_dir / name).exists()]


# ----------------------------------------------------------------------------------------
# the lock
# ----------------------------------------------------------------------------------------

_HELD: Dict[str, "RunLock"] = {}  # locks held by this process, by path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class RunLock:
    """``output_dir/run.lock``: created with O_EXCL (one winner), holding pid, host and start time."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK
        self.token = uuid.uuid4().hex
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.held = True
            _HELD[str(self.path.resolve())] = self
            return
        raise RunDirError(f"could not create the lock {self.path}")

    def _clear_stale(self) -> None:
        """Remove the lock of a dead process on this host; raise if a live run holds it."""
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError):
            holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        here = host == socket.gethostname()
        if here and pid == os.getpid():
            gc.collect()  # an abandoned Trainer of this process releases its lock when collected
            if not self.path.exists():
                return
            if str(self.path.resolve()) in _HELD:
                raise RunDirError(f"output_dir {self.path.parent} is in use by another Trainer in this process: "
                                  f"call its close() first")
        elif not (here and isinstance(pid, int) and not _alive(pid)):
            who = f"pid {pid} on host {host}, since {holder.get('started')}" if pid else "an unknown process"
            raise RunDirError(f"output_dir {self.path.parent} is in use by another run ({who}); wait for it to end "
                              f"or choose another output_dir (delete {self.path} if no run is using it)")
        print(f"kto_lab: taking over the lock {self.path} left by pid {pid}, whose run has ended", file=sys.stderr)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _HELD.pop(str(self.path.resolve()), None)
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass


# ----------------------------------------------------------------------------------------
# resume: the same run or a refusal
# ----------------------------------------------------------------------------------------


def flatten(config: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"optim": {"max_steps": 10}}`` -> ``{"optim.max_steps": 10}``."""
    out: Dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """``"field: old -> new"`` for each run-defining field that differs, and for a smaller
    ``optim.max_steps``. Fields the old config lacks (added to kto_lab since) count as their default; a field
    renamed since (``model.unet``) is compared under its new name; path fields (:data:`PATH_FIELDS`) are
    compared as resolved paths, so ``records.csv`` and its absolute path are the same file."""
    from .config import RENAMED_FIELDS, TrainConfig

    defaults = flatten(dataclasses.asdict(TrainConfig()))
    old_flat, new_flat = {RENAMED_FIELDS.get(k, k): v for k, v in flatten(old).items()}, flatten(new)
    out = []
    for key, value in new_flat.items():
        before = old_flat.get(key, defaults.get(key))
        if key == "optim.max_steps":
            if value < before:
                out.append(f"optim.max_steps: {before} -> {value} (it may only grow)")
        elif key in PATH_FIELDS and resolved_paths(before) == resolved_paths(value):
            continue
        elif before != value and not any(key == m or (m.endswith(".") and key.startswith(m))
                                          for m in MAY_CHANGE_ON_RESUME):
            out.append(f"{key}: {before!r} -> {value!r}")
    return out


def _check_same_run(old: Dict[str, Any], cfg, source: str, num_processes: Optional[int] = None,
                    now_processes: int = 1, old_data: Optional[list] = None, data: Optional[list] = None) -> None:
    """Refuse a resume that would make another run: other settings, processes or data content
    (``old_data``/``data``: the tables' fingerprints then and now; compared when both are known)."""
    diffs = config_differences(old, dataclasses.asdict(cfg))
    if num_processes is not None and num_processes != now_processes:
        diffs.append(f"number of processes: {num_processes} -> {now_processes}")
    if old_data is not None and data is not None and not any(d.startswith("data.train:") for d in diffs):
        diffs += [f"data.train: {change}" for change in fingerprint_changes(old_data, data)]
    if diffs:
        finished = final_weights(cfg.output_dir)
        keep = f"; the final weights in {finished} are kept" if finished else ""
        raise RunDirError(f"cannot resume {source}: the run was made with other settings: {'; '.join(diffs)}{keep}. "
                          f"Resume with its settings, or choose another output_dir, or pass --overwrite")


@dataclass
class Claim:
    """What the trainer may do with its output_dir: a new or continued run, and its lock."""

    run_id: str
    checkpoint: Optional[Path]  # the checkpoint to resume from (None: start at step 0)
    lock: Optional[RunLock]  # held by the main process

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def check_resume_path(cfg) -> Optional[Path]:
    """``checkpoint.resume=PATH``: the directory, checked without side effects."""
    resume = cfg.checkpoint.resume
    if resume in (None, "latest"):
        return None
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"checkpoint.resume={resume!r} is not a checkpoint directory")
    return Path(resume)


def claim_output_dir(cfg, *, overwrite: bool = False, num_processes: int = 1, data: Optional[list] = None) -> Claim:
    """Lock ``cfg.output_dir`` and decide: a new run, a continued one, or a one-line refusal.
    ``data``: the fingerprint of ``data.train`` (:meth:`~kto_lab.data.records.ImageTable.fingerprint`),
    compared with the one a checkpoint holds. Main process only; touches no model. The lock is released
    again if the claim is refused."""
    out = Path(cfg.output_dir)
    explicit = check_resume_path(cfg)
    run_files.check(cfg, out)
    lock = RunLock(out)
    lock.acquire()
    try:
        written = run_files.prepare(cfg, out, overwrite=overwrite)
        checkpoint = None
        if explicit is not None:
            why = problem(explicit)
            if why is not None:
                raise RunDirError(f"checkpoint.resume={str(explicit)!r} cannot be resumed: {why}")
            checkpoint = explicit
        elif cfg.checkpoint.resume == "latest":
            checkpoint = latest_checkpoint(out / "checkpoints")
        found = used_by(out)
        own = checkpoint is not None and checkpoint.resolve().parent == (out / "checkpoints").resolve()
        if found and not own:
            if checkpoint is not None or cfg.checkpoint.resume != "latest":
                raise RunDirError(f"output_dir {out} already holds a run ({', '.join(found)}): {RESUME_HINT}")
            if final_weights(out) is not None:  # resume=latest, but nothing to resume from
                raise RunDirError(f"output_dir {out} holds a finished run without a checkpoint to resume: "
                                  f"choose another output_dir, or pass --overwrite")
            if (out / "config.yaml").is_file():
                _check_same_run(yaml.safe_load((out / "config.yaml").read_text()), cfg, f"{out} (its config.yaml)")
            print(f"kto_lab: {out} has no checkpoint yet: the run starts again from step 0", file=sys.stderr)
        if checkpoint is None:
            claim = Claim(uuid.uuid4().hex[:12], None, lock)
        else:
            manifest = read_manifest(checkpoint)
            _check_same_run(manifest["config"], cfg, str(checkpoint), manifest["num_processes"], num_processes,
                            manifest.get("data"), data)
            claim = Claim(manifest["run_id"], checkpoint, lock)
        run_files.record(out, written)
        return claim
    except BaseException:
        lock.release()
        raise


def claim_on_main(cfg, accelerator, *, overwrite: bool = False, data: Optional[list] = None) -> Claim:
    """:func:`claim_output_dir` on the main process; the other processes get its decision (or its
    message), so every rank resumes the same checkpoint or stops with the same error."""
    acc = accelerator
    if acc.num_processes == 1:
        return claim_output_dir(cfg, overwrite=overwrite, data=data)
    from accelerate.utils import broadcast_object_list

    claim, error, payload = None, None, [None]
    if acc.is_main_process:
        try:
            claim = claim_output_dir(cfg, overwrite=overwrite, num_processes=acc.num_processes, data=data)
            payload = [(claim.run_id, None if claim.checkpoint is None else str(claim.checkpoint), None)]
        except Exception as exc:  # re-raised below, once the other ranks have the message
            error, payload = exc, [(None, None, str(exc))]
    broadcast_object_list(payload, from_process=0)
    run_id, checkpoint, message = payload[0]
    if error is not None:
        raise error
    if message is not None:
        raise RunDirError(message)
    return claim or Claim(run_id, None if checkpoint is None else Path(checkpoint), None)
