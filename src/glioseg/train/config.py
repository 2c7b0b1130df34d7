"""Configuration of the training stage: load, override and dump (the typed frozen sections
are in ``config_schema.py`` and re-exported here).

One place for defaults: the dataclasses of ``config_schema.py`` (a line on each says why).
YAML files hold values only, nested as the dataclasses are::

    data:  {cache_dir: ..., patch_size: [64, 64, 64], batch_size: 2, ...}
    optim: {name: adamw, lr: 0.001, ...}
    train: {steps: 1000, amp: auto, ...}
    model: {arch: unet3d, base_width: 16, ...}      # glioseg.model.registry.ModelConfig

``load_config(path_or_preset, ["train.steps=200", "data.patch_size=[48,48,48]"])`` starts from
the defaults, applies the YAML, then each ``a.b=v`` override; values are converted to the
declared type of their field, and an unknown key or a value of the wrong type raises
``ConfigError`` naming the key. ``dump_config`` writes the resolved config back to YAML, and the
dict form (``config_to_dict``) is what checkpoints store.

Presets ship with the package under ``glioseg/configs/``: ``small`` (2-core CPU, 2 mm
synthetic) and ``full`` (BraTS at 1 mm on a GPU).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from glioseg.io_atomic import write_text
from glioseg.model.registry import ModelConfig  # noqa: F401  (re-exported)
from glioseg.train.config_schema import (  # noqa: F401  (the schema, re-exported)
    Config,
    ConfigError,
    DataConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    TransferConfig,
)

PRESETS_DIR = Path(__file__).parents[1] / "configs"
"""Folder of the YAML presets shipped with the package (``small.yaml``, ``full.yaml``)."""


# --------------------------------------------------------------------------- conversion

def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from YAML or an override) converted to the declared type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, key)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, args, key)
    if origin is Literal:
        return _convert_literal(value, args, key)
    if origin is tuple:
        return _convert_tuple(value, args, key)
    if origin is list:
        return _convert_list(value, args, key)
    if tp is Any:
        return value
    if tp is bool:
        return _convert_bool(value, key)
    if tp is int:
        return _convert_int(value, key)
    if tp is float:
        return _convert_float(value, key)
    if tp is str:
        return _convert_str(value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot convert {value!r} to {tp}")


def _convert_dataclass(value: Any, tp: Any, key: str) -> Any:
    """A mapping converted to an instance of the dataclass ``tp``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
    return _build(tp, value, key)


def _convert_union(value: Any, tp: Any, args: tuple[Any, ...], key: str) -> Any:
    """``value`` converted to the first member of the union ``tp`` that accepts it."""
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _convert(value, a, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(f"{key}: {value!r} matches none of {tp} ({'; '.join(errors)})")


def _convert_literal(value: Any, args: tuple[Any, ...], key: str) -> Any:
    """The literal of ``args`` equal to ``value`` (or to its string form)."""
    for a in args:
        if value == a or (isinstance(value, str) and str(a) == value):
            return a
    raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")


def _expect_list(value: Any, key: str) -> None:
    """Raise unless ``value`` is a sequence other than a string."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{key}: expected a list, got {value!r}")


def _convert_tuple(value: Any, args: tuple[Any, ...], key: str) -> tuple:
    """A list converted to ``tuple[X, ...]`` or to a fixed-length tuple of ``args``."""
    _expect_list(value, key)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
    return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def _convert_list(value: Any, args: tuple[Any, ...], key: str) -> list:
    """A list converted element by element to ``list[args[0]]`` (as it is without ``args``)."""
    _expect_list(value, key)
    return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)


def _convert_bool(value: Any, key: str) -> bool:
    """A bool, or one of the strings true/yes/on/1, false/no/off/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _convert_int(value: Any, key: str) -> int:
    """An int from an int, a whole float or a numeric string (never from a bool)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected an integer, got {value!r}")


def _convert_float(value: Any, key: str) -> float:
    """A float from a number or a numeric string (never from a bool)."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a number, got {value!r}")


def _convert_str(value: Any, key: str) -> str:
    """A string, or the string form of a number (never of a bool)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """An instance of dataclass ``cls`` from its defaults updated with ``values``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key {where}{unknown[0]}; valid keys of "
                          f"{prefix or 'the config'}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in values:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _convert(values[name], hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or 'config'}: {exc}") from None


def _plain(obj: Any) -> Any:
    """Dataclasses, tuples and lists as plain dicts and lists (YAML- and torch-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- public API

def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The resolved config as nested dicts of primitives (lists for tuples)."""
    return _plain(cfg)


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """A ``Config`` from nested dicts (defaults for what is missing); ``ConfigError`` on bad keys."""
    return _build(Config, values, "")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any,
                overrides_from: str = "override") -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{overrides_from} {dotted}: {p} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str, overrides_from: str = "override") -> tuple[str, Any]:
    """``"a.b=v"`` -> ``("a.b", v)`` with ``v`` read as YAML (``[64,64,64]``, ``true``, ``3``)."""
    if "=" not in text:
        raise ConfigError(f"{overrides_from} {text!r}: expected key=value, e.g. "
                          "train.steps=200")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{overrides_from} {text!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def resolve_config_path(path_or_preset: str | Path) -> Path:
    """A YAML path, or the packaged preset of that name (``small``, ``full``)."""
    p = Path(path_or_preset)
    if p.is_file():
        return p
    preset = PRESETS_DIR / f"{path_or_preset}.yaml"
    if preset.is_file():
        return preset
    names = sorted(q.stem for q in PRESETS_DIR.glob("*.yaml"))
    raise ConfigError(f"{path_or_preset}: no such config file, and not a preset ({', '.join(names)})")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML config file; ``ConfigError`` naming the file when it is not one."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got "
                          f"{type(values).__name__}")
    return values


def load_config(
    path_or_preset: str | Path | None = None, overrides: Sequence[str] = (),
    overrides_from: str = "override",
) -> Config:
    """Defaults, updated by a YAML file (or preset name), then by ``key=value`` overrides.

    Args:
        path_or_preset: a YAML file, a preset name (``small``, ``full``) or None (defaults).
        overrides: ``"section.key=value"`` strings, applied in order; values are YAML.
        overrides_from: how an error names where an override came from (``--set`` for the
            command line): ``"--set train.stepz=20: unknown key train.stepz; ..."``.

    Raises:
        ConfigError: naming the file for unknown keys and unconvertible values in it, or the
            override that brings them.
    """
    values: dict[str, Any] = {}
    source = "config"
    if path_or_preset is not None:
        path = resolve_config_path(path_or_preset)
        values = read_yaml(path)
        source = str(path)
    base = copy.deepcopy(values)
    for text in overrides:
        key, value = parse_override(text, overrides_from)
        _set_dotted(values, key, value, overrides_from)
    try:
        return config_from_dict(values)
    except ConfigError as exc:
        error = exc
    raise _blame(base, overrides, source, overrides_from, error) from None


def _blame(base: dict[str, Any], overrides: Sequence[str], source: str, overrides_from: str,
           error: ConfigError) -> ConfigError:
    """The error of a config that does not build, naming what brings it: the file when it
    fails alone, else the first override after which it fails."""
    values = copy.deepcopy(base)
    for text in [None, *overrides]:
        if text is not None:
            key, value = parse_override(text, overrides_from)
            _set_dotted(values, key, value, overrides_from)
        try:
            config_from_dict(values)
        except ConfigError as exc:
            where = source if text is None else f"{overrides_from} {text}"
            return ConfigError(f"{where}: {exc}")
    return ConfigError(f"{source}: {error}")


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    """The resolved config as YAML text; also written atomically to ``path`` when given
    (``glioseg.io_atomic``: a temporary name of its own, so two writers never share one)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)
    if path is not None:
        write_text(path, text)
    return text


def replace(cfg: Config, **sections: Any) -> Config:
    """``cfg`` with whole sections swapped, e.g. ``replace(cfg, train=new_train)``."""
    return dataclasses.replace(cfg, **sections)
