"""Config plumbing shared by every command: dataclasses <- YAML <- ``key=value`` overrides.

Every config in kto_lab is a (possibly nested) dataclass with paper defaults and a
``validate()`` method. :func:`load_config` builds one from a YAML file (or a packaged config's
name) and overrides, rejects unknown keys with the list of known ones, converts values to the
field's type, and validates, all before any model is loaded. YAML is read with YAML 1.2's
booleans (only true/false), so ``mixed_precision: no`` stays the string "no".

Each field's comment (trailing, or the lines directly above it) is its documentation:
:func:`config_help` turns a config class into the field list of ``--help``.

Bad input raises a :class:`UserError` (:class:`ConfigError` for a config value); ``kto-lab``
prints any of them as one line.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import math
import os
import re
import tempfile
import textwrap
import tokenize
import typing
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Type, TypeVar

import yaml

T = TypeVar("T")


class UserError(Exception):
    """Bad input from the user: a config value, a file, a table row. The message names it and what is
    allowed; ``kto-lab`` prints it as one line (exit 2). Every kto_lab user error derives from it."""


class ConfigError(UserError, ValueError):
    """A bad config value or key; the message names the field and what is allowed."""


# --- YAML with YAML 1.2 booleans --------------------------------------------------------


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but only ``true``/``false`` are booleans (YAML 1.2): YAML 1.1 also reads
    ``yes/no/on/off/y/n`` as booleans, which turned ``mixed_precision: no`` into False and
    ``output_dir: on`` into "True". Such words stay strings; a bool field still accepts them."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def _mapping_without_duplicates(loader: YamlLoader, node: yaml.MappingNode, deep: bool = False):
    """A mapping whose keys are unique: PyYAML keeps the last of two equal keys in silence (two
    ``objective:`` sections, the first lost); this refuses them, naming both lines. Keys brought in
    by a merge (``<<: *base``) may still be overridden, as YAML means them to be."""
    seen: Dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: PyYAML's own error follows
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"found duplicate key {key!r} (first on line {first + 1}); keep one of them",
                key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


YamlLoader.construct_mapping = _mapping_without_duplicates


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)


# --- value checks (used by every config's validate()) -----------------------------------


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {allowed}")


def check_positive(name: str, value: Any) -> None:
    check_range(name, value, low=0.0, low_open=True)


_WARNED: Dict[tuple, Any] = {}  # warn_once's registry: each distinct warning once per process


def warn_once(message: str) -> None:
    """A one-line ``UserWarning`` (no source line under it), once per process however often a config is
    validated or resolved; the run goes on."""
    warnings.warn_explicit(message, UserWarning, "kto-lab", 0, registry=_WARNED)


def warn_outside(name: str, value: float, low: float, high: float, measured: str) -> bool:
    """Warn (:func:`warn_once`) when ``value`` lies outside ``[low, high]``, a range *measured* useful
    (``measured`` says where), not a hard limit. Returns whether ``value`` is outside."""
    if low <= value <= high:
        return False
    warn_once(f"{name}={value:g} is outside [{low:g}, {high:g}], the range measured useful {measured}")
    return True


def check_range(
    name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
    low_open: bool = False, high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{name}={value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and (value >= high if high_open else value > high):
        raise ConfigError(f"{name}={value!r} must be {'<' if high_open else '<='} {high}")


def check_output_dir(name: str, path: str | Path) -> Path:
    """``path`` is a directory (made if missing) where a file can be written; else a ConfigError
    naming ``name``. For commands that write their results only at the end of a long run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}={str(path)!r} is not a writable directory: {exc.strerror or exc}") from None
    return path


def resolved_paths(value: Any) -> Any:
    """A path (or a list of them) made absolute and real, for comparing: ``records.csv`` and its absolute
    path give the same string. A hub id is treated alike on both sides, so equal ids stay equal."""
    if isinstance(value, (list, tuple)):
        return [resolved_paths(v) for v in value]
    return os.path.realpath(os.path.expanduser(value)) if isinstance(value, str) else value


# --- building dataclasses from dicts ----------------------------------------------------

BOOL_WORDS = {"true": True, "1": True, "yes": True, "y": True, "on": True,
              "false": False, "0": False, "no": False, "n": False, "off": False}


def _convert(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X] and X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(name, value, inner[0]) if len(inner) == 1 else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        key_tp, value_tp = args or (Any, Any)
        return {_convert(name, k, key_tp): _convert(f"{name}[{k!r}]", v, value_tp) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=name + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = load_yaml(value)
            except yaml.YAMLError:
                raise ConfigError(f"{name}={value!r} is not a valid list: write [a, b] (brackets closed)") from None
        elif isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in BOOL_WORDS:
            return BOOL_WORDS[value.lower()]
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        try:
            converted = tp(float(value)) if tp is int else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be {'an integer' if tp is int else 'a number'}, got {value!r}") from None
        except OverflowError:  # int(inf): .inf, 1e400
            raise ConfigError(f"{name} must be a finite integer, got {value!r}") from None
        if tp is int and float(value) != converted:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return converted
    if tp is str:
        if value is None:  # "output_dir:" with nothing after it (str(None) would make a folder named None)
            raise ConfigError(f"{name} is empty; give it a value")
        return str(value)
    return value


def renamed_keys(cls: type, data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``data`` with the keys that ``cls.RENAMED`` maps (old name -> new) under their new names, each noted in one
    line (a FutureWarning, once per process); both names at once is a :class:`ConfigError`."""
    renamed = {old: new for old, new in getattr(cls, "RENAMED", {}).items() if old in data}
    if not renamed:
        return data
    out = dict(data)
    for old, new in renamed.items():
        if new in data:
            raise ConfigError(f"{prefix}{old} and {prefix}{new} are both set: {prefix}{old} is the old name of "
                              f"{prefix}{new}; keep only {prefix}{new}")
        out[new] = out.pop(old)
        warnings.warn_explicit(f"{prefix}{old} is now called {prefix}{new}: read as {prefix}{new}", FutureWarning,
                               "kto-lab", 0, registry=_WARNED)
    return out


def from_dict(cls: Type[T], data: Dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise, naming the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    data = renamed_keys(cls, data, prefix)
    unknown = sorted(set(data) - names)
    moved = [k for k in unknown if k in getattr(cls, "MOVED", {})]  # a retired key names its replacement
    if moved:
        raise ConfigError(f"{prefix}{moved[0]} was replaced: use {cls.MOVED[moved[0]]}")
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; known keys of "
            f"{cls.__name__}: {sorted(names)}"
        )
    kwargs = {k: _convert(prefix + k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(d: Dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section")
    d[keys[-1]] = value


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["objective.beta=2000", "lora.rank=4"]`` -> nested dict (values parsed as YAML scalars)."""
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. objective.beta=2000)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the packaged configs (kto_lab/configs)


def config_path(path: str | Path) -> Path:
    """A config file: ``path`` itself, or the name of a packaged config (``"sd15_kto_lora"`` ->
    ``kto_lab/configs/sd15_kto_lora.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    packaged = CONFIG_DIR / (p.name if p.suffix in (".yaml", ".yml") else p.name + ".yaml")
    if p.name == str(path) and packaged.is_file():
        return packaged
    names = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config file {str(path)!r} does not exist (nor is it a packaged config: {names})")


def load_config(
    cls: Type[T], path: Optional[str | Path] = None, overrides: Sequence[str] | Dict[str, Any] = (),
) -> T:
    """YAML file or packaged config name (optional) + overrides -> validated ``cls``. Fails before any model loads."""
    data: Dict[str, Any] = {}
    if path is not None:
        path = config_path(path)
        try:
            data = load_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    cfg = from_dict(cls, _merge(data, extra))
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg


def load_config_from(cls: Type[T], config: Any = None, overrides: Sequence[str] | Dict[str, Any] = ()) -> T:
    """``cls`` instance | YAML path or packaged name | dict (+ overrides) -> a validated ``cls``: what
    ``kto_lab.train(config)`` and ``kto_lab.rounds(config)`` take."""
    if isinstance(config, cls):
        if not overrides:
            validate = getattr(config, "validate", None)
            return validate() if validate is not None else config
        config = dataclasses.asdict(config)
    if config is None or isinstance(config, (str, Path)):
        return load_config(cls, config, overrides)
    if isinstance(config, dict):
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        return load_config(cls, None, _merge(config, extra))
    raise ConfigError(f"config must be a {cls.__name__}, a YAML path or a dict, got {type(config).__name__}")


# --- help text from the dataclasses' comments -------------------------------------------


def field_comments(cls: type) -> Dict[str, str]:
    """``{field: help}`` of a dataclass, read from its source: the comment lines directly above a
    field (not ``# ---`` headings) and its trailing ``# comment``, joined. Configs thus document
    themselves in one place, and ``--help`` shows what the source says."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}

    def comment_line(n: int) -> bool:
        return n in comments and lines[n - 1].lstrip().startswith("#") and not comments[n].startswith("---")

    out: Dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        first = node.lineno
        while comment_line(first - 1):
            first -= 1
        above = [comments[n] for n in range(first, node.lineno)]
        trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1)
                    if n in comments and not comment_line(n)]
        out[node.target.id] = " ".join(above + trailing)
    return out


class ConfigField(typing.NamedTuple):
    name: str  # dotted: optim.max_steps
    default: Any
    help: str
    section: bool  # a nested config (its fields follow it)


def renamed_fields(cls: type, prefix: str = "") -> Dict[str, str]:
    """Dotted old name -> new name of every renamed field of a (nested) config dataclass (each section's
    ``RENAMED``), e.g. ``{"model.unet": "model.denoiser"}``."""
    out = {prefix + old: prefix + new for old, new in getattr(cls, "RENAMED", {}).items()}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(renamed_fields(tp, f"{prefix}{name}."))
    return out


def config_fields(cls: type, prefix: str = "") -> Iterator[ConfigField]:
    """Every field of a (nested) config dataclass, depth first; a section's help is its own comment,
    else the first paragraph of its class docstring."""
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, name = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            doc = (tp.__doc__ or "").strip()
            if doc.startswith(tp.__name__ + "("):  # no docstring: dataclasses made one from the signature
                doc = ""
            doc = " ".join(doc.split("\n\n")[0].split())
            yield ConfigField(name, None, comments.get(f.name) or doc, True)
            yield from config_fields(tp, name + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        yield ConfigField(name, None if default is dataclasses.MISSING else default, comments.get(f.name, ""), False)


def _shown(value: Any) -> str:
    """A default as it is written in a ``key=value`` override."""
    if isinstance(value, str):
        return value or "''"
    text = yaml.safe_dump(_plain(value), default_flow_style=True, sort_keys=False, width=10_000)
    return text.strip().removesuffix("...").strip()


def _plain(value: Any) -> Any:
    """Plain lists and dicts for YAML (tuples, dataclasses and dicts inside them too)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_help(cls: type, prefix: str = "", width: int = 100) -> str:
    """Every field of ``cls``: its ``key=default`` and meaning, for ``--help`` (generated from the
    dataclasses' comments, so it never goes stale)."""
    out = []
    for f in config_fields(cls, prefix):
        if f.section:
            out.append(f"{f.name}: {f.help}" if f.help else f"{f.name}:")
            continue
        out.append(f"  {f.name}={_shown(f.default)}")
        if f.help:
            out.append(textwrap.fill(f.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(out)
