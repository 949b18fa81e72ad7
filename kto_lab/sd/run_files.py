"""What a run writes in its ``output_dir``, and the rule that nothing else there is ever deleted or replaced.

A run claims the names it writes at its start (:func:`run_paths`: ``config.yaml``, the metrics, ``checkpoints/``,
the final weights and their temp name, ``README.md``, and ``validation/`` and ``logs/`` when it makes
validation images or logs to a tracker) and records them in ``output_dir/run_files.json``, the ledger. Then:

* ``--overwrite`` deletes the ledger's entries and nothing else (a directory of an older kto_lab without a
  ledger: its run files, recognised by its ``config.yaml``, and a ``README.md`` only if it is a kto_lab card);
* a name the run would write that exists but is not the run's (the user's ``README.md``, ``logs/``,
  ``validation/holdout.csv``) is refused in one line naming it, with or without ``--overwrite``, before
  anything is deleted: so the model card never replaces a user's README;
* a symbolic link at one of those names is refused (a run writes and deletes only inside its directory);
* an ``output_dir`` equal to or inside an input (``model.pretrained``, ``model.denoiser``/``reference``/``vae``,
  ``data.cache_dir``), or an input lying where the run writes (``model.denoiser=OUTPUT_DIR/unet``), is refused;
* an ``output_dir`` that is a file or cannot be written to is refused.

All of it runs before any model loads (:func:`kto_lab.sd.run_dir.claim_output_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import List

import yaml

from ..config import ConfigError, check_output_dir
from .components import LORA_WEIGHTS
from .families import DENOISER_FOLDERS

LEDGER = "run_files.json"
CARD = "README.md"
# A full fine-tune's weights (a family's denoiser folder: unet/, transformer/, ...) and their temp names
DENOISER_FILES = (*DENOISER_FOLDERS, *(f".tmp-{d}" for d in DENOISER_FOLDERS))
# Every name a run of any kind may write
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints", *DENOISER_FOLDERS, LORA_WEIGHTS,
             "validation", "logs", CARD, *(f".tmp-{d}" for d in DENOISER_FOLDERS), ".tmp-lora")


class RunFilesError(ConfigError):
    """output_dir holds what the run would write but did not, or overlaps an input."""


def run_paths(cfg) -> List[str]:
    """The names a run of ``cfg`` writes in its output_dir."""
    weights = [LORA_WEIGHTS, ".tmp-lora"] if cfg.lora.enabled else list(DENOISER_FILES)
    paths = ["config.yaml", "metrics.jsonl", "metrics.csv", "checkpoints", CARD, *weights]
    if cfg.logging.validation_every and cfg.logging.validation_prompts:
        paths.append("validation")
    if cfg.logging.report_to:
        paths.append("logs")
    return paths


def _is_card(path: Path) -> bool:
    """A model card kto_lab wrote (its front matter carries the kto-lab tag)."""
    try:
        head = path.read_text(errors="replace")[:4000]
    except OSError:
        return False
    return head.startswith("---") and "- kto-lab" in head.split("\n---", 1)[0]


def owned(out: Path) -> List[str]:
    """The names in ``out`` that a kto_lab run wrote: the ledger's, or for an older run without one, its run
    files (when its ``config.yaml`` is a kto_lab config; ``README.md`` only if it is a kto_lab card)."""
    ledger = out / LEDGER
    if ledger.is_file() and not ledger.is_symlink():
        try:
            names = json.loads(ledger.read_text())["written"]
            return [n for n in names if isinstance(n, str) and n in RUN_FILES]
        except (OSError, ValueError, KeyError, TypeError):
            raise RunFilesError(f"{ledger} (the list of what the run in {out} wrote) is unreadable: delete it "
                                f"if {out} holds no run you want to keep, or choose another output_dir") from None
    try:
        config = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    if not (isinstance(config, dict) and {"model", "data", "objective", "optim"} <= set(config)):
        return []
    return [n for n in RUN_FILES if (out / n).exists() and (n != CARD or _is_card(out / n))]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_inputs(cfg, out: Path, names: List[str]) -> None:
    """Refuse an output_dir equal to or inside an input directory, and an input lying at one of ``names``
    (what the run writes, or ``--overwrite`` deletes): either would write over or delete the input."""
    m, d = cfg.model, cfg.data
    inputs = {"model.pretrained": m.pretrained, "model.denoiser": m.denoiser, "model.reference": m.reference,
              "model.vae": m.vae, "data.cache_dir": d.cache_dir, **{f"data.train[{i}]": p for i, p in enumerate(d.train)}}
    here = os.path.realpath(out)
    written = [os.path.realpath(out / n) for n in names]
    for field, path in inputs.items():
        if not path or not os.path.exists(path):
            continue  # a hub id, or a cache still to be built
        real = os.path.realpath(path)
        if os.path.isdir(real) and _inside(here, real):
            raise RunFilesError(f"output_dir={str(out)!r} is {'' if here == real else 'inside '}{field}={path!r}: a run "
                                f"would write its files among the input's (and --overwrite delete them); choose an "
                                f"output_dir outside it")
        hit = next((w for w in written if _inside(real, w)), None)
        if hit is not None:
            raise RunFilesError(f"{field}={path!r} lies in {hit}, which the run in output_dir={str(out)!r} writes "
                                f"(and --overwrite deletes); move the input, or choose another output_dir")


def check(cfg, out: Path) -> None:
    """Before the lock is taken: ``out`` neither overlaps an input nor is a file, and can be written to
    (it is made if missing)."""
    check_inputs(cfg, out, sorted(set(run_paths(cfg)) | set(owned(out) if out.is_dir() else [])))
    if out.exists() and not out.is_dir():
        raise RunFilesError(f"output_dir={str(out)!r} is a file, not a directory; choose another output_dir")
    check_output_dir("output_dir", out)


def prepare(cfg, out: Path, *, overwrite: bool) -> List[str]:
    """Under the lock: refuse symbolic links and what the run would write but did not (see the module
    docstring), then, if ``overwrite``, delete what the earlier run wrote. Raises before deleting anything.
    Returns what to :func:`record` once the run is claimed."""
    names = run_paths(cfg)
    mine = owned(out)
    links = [n for n in sorted(set(names) | (set(mine) if overwrite else set())) if (out / n).is_symlink()]
    if links:
        raise RunFilesError(f"{', '.join(str(out / n) for n in links)} {'is a symbolic link' if len(links) == 1 else 'are symbolic links'}: "
                            f"a run writes and deletes only inside its output_dir; replace it by a folder, or "
                            f"point output_dir itself at the other disk")
    foreign = [n for n in names if (out / n).exists() and n not in mine]
    if foreign:
        raise RunFilesError(f"output_dir {out} holds {', '.join(foreign)}, which kto_lab did not write and a run "
                            f"writes (the model card is README.md): move {'it' if len(foreign) == 1 else 'them'}, "
                            f"or choose another output_dir (--overwrite deletes only what a run wrote)")
    if overwrite:
        for name in mine:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        mine = []
    return sorted(set(mine) | set(names))


def record(out: Path, names: List[str]) -> None:
    """Write the ledger (a temp file renamed over it)."""
    tmp = out / f".{LEDGER}.tmp"
    tmp.write_text(json.dumps({"written": names}, indent=1))
    os.replace(tmp, out / LEDGER)
