"""Where a command may write: names stay in their folder, outputs never replace inputs.

Two rules every command follows before it writes anything (each breach is one
:class:`~kto_lab.config.ConfigError` naming the field and the path):

* :func:`safe_name`: a name that becomes a file or folder name (a model name, a prompt id) is one
  path component: not empty, not ``.`` or ``..``, no ``/`` or ``\\``, no NUL. So
  ``OUT / name`` is always inside ``OUT``.
* :func:`check_not_input`: an output (a file or a folder the command writes into) is never one of the
  command's inputs, never inside an input folder (a model, a dataset), and never holds an input it
  would replace. Paths are compared resolved, so ``./a.csv``, ``a.csv`` and a symlink to it are one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Union

from .config import ConfigError

PathLike = Union[str, Path]


def write_text_atomic(path: PathLike, text: str, tmp: Optional[PathLike] = None) -> None:
    """Write ``text`` to ``path`` through a temporary file (``tmp``, by default ``PATH.tmp``) renamed over it, so a
    reader, or a command killed while writing, never sees half a file."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def safe_name(name: str, field: str) -> str:
    """``name`` if it is a single path component (so ``folder / name`` stays in ``folder``); else a
    ConfigError naming ``field``."""
    text = str(name)
    if not text or text in (".", "..") or any(c in text for c in ("/", "\\", "\0")):
        raise ConfigError(f"{field}={text!r} cannot name a file or folder: use a non-empty name without '/', '\\' "
                          "and other than '.' or '..'")
    return text


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_input(output: PathLike, inputs: Dict[str, Optional[Union[PathLike, Iterable[PathLike]]]], field: str,
                    *, replaces: Iterable[str] = ()) -> Path:
    """Refuse an ``output`` (named ``field``) that is an input, or lies inside an input folder.

    ``inputs``: field name -> a path or a list of paths (None: not given); paths that do not exist
    locally (e.g. a hub id) are skipped. ``replaces``: names of the files and folders the command writes
    directly under a folder ``output`` (e.g. ``config.yaml``, a model's folder); an input that is one of them,
    or inside one, is refused too.
    Returns ``output`` resolved."""
    out = _resolved(output)
    written = [out / name for name in replaces]
    for name, value in inputs.items():
        if value is None:
            continue
        for given in ([value] if isinstance(value, (str, Path)) else list(value)):
            path = Path(given).expanduser()
            if not path.exists():
                continue
            src = path.resolve()
            if src == out or (src.is_dir() and _inside(out, src)):
                what = "is" if src == out else "is inside"
                raise ConfigError(f"{field}={str(output)!r} {what} the input {name}={str(given)!r}: it would be "
                                  f"replaced or mixed with this command's output; choose another {field}")
            hit = next((w for w in written if _inside(src, w)), None)
            if hit is not None:
                raise ConfigError(f"{field}={str(output)!r}: the input {name}={str(given)!r} would be replaced by "
                                  f"this command's {hit.name}; move it, or choose another {field}")
    return out
