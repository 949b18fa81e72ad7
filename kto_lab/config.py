"""Config plumbing shared by every command: dataclasses <- YAML <- ``key=value`` overrides.

Every config in kto_lab is a (possibly nested) dataclass with paper defaults and a
``validate()`` method. :func:`load_config` builds one from a YAML file and overrides,
rejects unknown keys with the list of known ones, converts values to the field's type,
and validates, all before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Type, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value or key; the message names the field and what is allowed."""


# --- value checks (used by every config's validate()) -----------------------------------


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {allowed}")


def check_positive(name: str, value: Any) -> None:
    check_range(name, value, low=0.0, low_open=True)


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


# --- building dataclasses from dicts ----------------------------------------------------


def _convert(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X] and X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(name, value, inner[0]) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=name + ".")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_convert(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
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
        if tp is int and float(value) != converted:
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return converted
    if tp is str:
        return str(value)
    return value


def from_dict(cls: Type[T], data: Dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise, naming the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
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
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(out, key.strip(), value)
    return out


def _merge(base: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    cls: Type[T], path: Optional[str | Path] = None, overrides: Sequence[str] | Dict[str, Any] = (),
) -> T:
    """YAML file (optional) + overrides -> validated ``cls``. Fails before any model loads."""
    data: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    cfg = from_dict(cls, _merge(data, extra))
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg
