"""Checkpoint directories: written whole or not at all, verified before a resume, pruned per run.

    output_dir/checkpoints/checkpoint-0001000/
        unet/ (SD3: transformer/) | pytorch_lora_weights.safetensors, optimizer.bin, random_states_*.pkl (accelerate)
        trainer_state_<rank>.pt                  (step, generator, LR schedule, data position)
        manifest.json                            (written last: run id, step, config, files)

A checkpoint is written into ``.tmp-checkpoint-N`` and renamed when complete. Its manifest lists
every file with its size and CRC-32 and is written last, so a directory without one (a crash
mid-save, an older kto_lab) or whose files no longer match it (truncated, corrupted) is never
resumed: :func:`latest_checkpoint` names the bad file and falls back to the previous complete
checkpoint of the same run. Pruning only ever removes checkpoints of the run that writes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..config import UserError

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST = "manifest.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint, the final weights or the latent cache cannot be written (no space left), or no complete
    checkpoint can be read (one line from kto-lab)."""


def crc32(path: Path, chunk: int = 16 << 20) -> int:
    """CRC-32 of a file (about 2 GB/s: a few seconds for a full SD 1.5 checkpoint)."""
    value = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            value = zlib.crc32(block, value)
    return value


def _files(directory: Path) -> Iterator[Tuple[str, Path]]:
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            yield p.relative_to(directory).as_posix(), p


def write_manifest(directory: Path, *, run_id: str, step: int, num_processes: int, config: Dict[str, Any],
                   data: Optional[List[Dict[str, Any]]] = None) -> None:
    """List every file of ``directory`` (size, CRC-32) with the run's id, step, resolved config and the
    fingerprint of its data (``data``: :meth:`~kto_lab.data.records.ImageTable.fingerprint`, which a resume
    compares). Call it after every file is written and before the rename: a manifest means "complete"."""
    files = {name: {"size": p.stat().st_size, "crc32": crc32(p)} for name, p in _files(directory)}
    manifest = {"run_id": run_id, "step": step, "num_processes": num_processes, "config": config, "files": files}
    if data is not None:
        manifest["data"] = data
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def read_manifest(directory: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint's manifest, or None if it has none, an unreadable one, or one without the fields
    :func:`write_manifest` writes (a kill while it was written can leave ``{}``)."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if _well_formed(manifest) else None


def _well_formed(manifest: Any) -> bool:
    m = manifest
    types = {"run_id": str, "step": int, "num_processes": int, "config": dict, "files": dict}
    return (isinstance(m, dict) and all(isinstance(m.get(k), t) and not isinstance(m.get(k), bool) for k, t in types.items())
            and all(isinstance(f, dict) and isinstance(f.get("size"), int) and isinstance(f.get("crc32"), int)
                    for f in m["files"].values()))


def problem(directory: Path) -> Optional[str]:
    """Why ``directory`` is not a complete checkpoint (naming the file), or None if it is one."""
    manifest = read_manifest(directory)
    if manifest is None:
        return (f"{directory} has no complete {MANIFEST} (missing, cut short or malformed: a crash while it was "
                f"written, or an older kto_lab)")
    for name, expected in manifest["files"].items():
        p = directory / name
        if not p.is_file():
            return f"{p} is missing"
        size = p.stat().st_size
        if size != expected["size"]:
            return f"{p} is truncated or changed ({size} bytes, {expected['size']} written)"
        if crc32(p) != expected["crc32"]:
            return f"{p} is corrupt (its checksum differs from the one written)"
    return None


def _step(directory: Path, manifest: Optional[Dict[str, Any]]) -> int:
    if manifest is not None:
        return int(manifest["step"])
    digits = directory.name[len(CHECKPOINT_PREFIX):]
    return int(digits) if digits.isdigit() else -1


def run_checkpoints(root: Path, run_id: Optional[str] = None) -> List[Tuple[Path, Optional[Dict[str, Any]]]]:
    """``(dir, manifest or None)`` of the checkpoint directories under ``root``, newest first;
    with ``run_id``, only those whose manifest names that run."""
    root = Path(root)
    dirs = [p for p in root.glob(CHECKPOINT_PREFIX + "*") if p.is_dir()] if root.is_dir() else []
    found = [(p, read_manifest(p)) for p in dirs]
    if run_id is not None:
        found = [(p, m) for p, m in found if m is not None and m.get("run_id") == run_id]
    return sorted(found, key=lambda t: _step(*t), reverse=True)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under ``root``, of the run that wrote the newest manifest.
    Newer incomplete or corrupt ones are named on stderr and passed over (checkpoints of other
    runs are never considered). None if ``root`` holds no checkpoint; :class:`CheckpointError` if
    it holds some but none is complete."""
    found = run_checkpoints(root)
    run_id = next((m["run_id"] for _, m in found if m is not None), None)
    skipped = []
    for p, manifest in found:
        if manifest is not None and manifest.get("run_id") != run_id:
            continue
        why = problem(p)
        if why is None:
            if skipped:
                print(f"kto_lab: {'; '.join(skipped)}: resuming from {p} instead", file=sys.stderr)
            return p
        skipped.append(why)
    if skipped:
        raise CheckpointError(f"no complete checkpoint in {root}: {'; '.join(skipped)}")
    return None


def prune(root: Path, run_id: str, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints of run ``run_id`` (0 = keep all)."""
    for p, _ in run_checkpoints(root, run_id)[keep:] if keep else []:
        shutil.rmtree(p, ignore_errors=True)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, as an ``OSError`` or inside torch's ``RuntimeError`` text."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc)


def raise_if_disk_full(exc: BaseException, written: Path, then: str) -> None:
    """A full disk while writing ``written`` (already removed) as one line saying what to do or what is
    still usable (``then``); any other error is left to the caller."""
    if is_disk_full(exc):
        raise CheckpointError(f"no space left on device while writing {written} (removed it); {then}") from exc


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` made of hard links to the files of ``src`` (a file or a directory tree): the same bytes on
    disk once. Where the file system refuses a hard link, a copy; a full disk is raised as it is."""
    pairs = [(src, dst)] if src.is_file() else [(p, dst / p.relative_to(src)) for p in sorted(src.rglob("*")) if p.is_file()]
    for a, b in pairs:
        b.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(a, b)
        except OSError as exc:
            if is_disk_full(exc):
                raise
            shutil.copy2(a, b)


def commit(tmp: Path, final: Path) -> None:
    """Replace ``final`` by the complete ``tmp`` directory."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
