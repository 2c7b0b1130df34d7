"""Typed config overrides: what the demo and the study change in a preset, by field.

``section("train", steps=100, seed=0)`` names the fields of ``TrainConfig`` as keywords; a
field the config does not have (a typo, or a field renamed since) raises ``ConfigError`` when
the overrides are built, so the plan functions that build them fail in the tests, not in the
middle of a run. ``build_config(preset, overrides)`` applies them to the preset with
``dataclasses.replace`` on the typed sections (``Config.__post_init__`` then derives the
model's channels and patch as it does for a loaded file).

Overrides keep their order and render as the ``key=value`` strings ``glioseg train --set``
takes (``strings()``): the study records them in each run's ``result.json`` and refuses a
finished run made with others, so the rendering is the same text the study wrote before.
Extra ``key=value`` strings (a plan's ``overrides``) are applied after the typed ones.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glioseg.train import config as C

SECTIONS: dict[str, type] = typing.get_type_hints(C.Config)
"""Config section name -> its dataclass (``data`` -> ``DataConfig`` ...)."""


def _value(value: Any) -> Any:
    """Config field values as a loaded file gives them: paths as text, sequences as tuples."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return tuple(_value(v) for v in value)
    return value


def _text(value: Any) -> str:
    """``value`` as the YAML text of a ``key=value`` override (``[48,48,48]``, ``0.0001``)."""
    if isinstance(value, tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


@dataclass(frozen=True)
class Overrides:
    """Ordered ``(section, field, value)`` changes of a config, then raw ``key=value`` text."""

    fields: tuple[tuple[str, str, Any], ...] = ()
    extra: tuple[str, ...] = ()
    """``key=value`` strings applied after ``fields`` (a plan's free-form overrides)."""

    def __add__(self, other: Overrides) -> Overrides:
        return Overrides(self.fields + other.fields, self.extra + other.extra)

    def with_extra(self, extra: Iterable[str]) -> Overrides:
        """These overrides, then ``extra`` strings."""
        return Overrides(self.fields, self.extra + tuple(extra))

    def strings(self) -> list[str]:
        """Every override as ``section.field=value`` text, in order (extras last)."""
        return [f"{s}.{f}={_text(v)}" for s, f, v in self.fields] + list(self.extra)

    def get(self, dotted: str) -> Any:
        """The last typed value given for ``section.field`` (None when not overridden)."""
        found = [v for s, f, v in self.fields if f"{s}.{f}" == dotted]
        return found[-1] if found else None


def section(name: str, **values: Any) -> Overrides:
    """Overrides of fields of one config section, checked against its dataclass.

    Raises:
        ConfigError: ``name`` is not a section, or a keyword is not one of its fields.
    """
    if name not in SECTIONS:
        raise C.ConfigError(f"override section {name!r}: no such config section "
                            f"({', '.join(SECTIONS)})")
    known = {f.name for f in dataclasses.fields(SECTIONS[name])}
    bad = sorted(set(values) - known)
    if bad:
        raise C.ConfigError(f"override {name}.{bad[0]}: {SECTIONS[name].__name__} has no field "
                            f"{bad[0]!r}")
    return Overrides(tuple((name, k, _value(v)) for k, v in values.items()))


def apply(cfg: C.Config, overrides: Overrides) -> C.Config:
    """``cfg`` with ``overrides`` applied: each section through ``dataclasses.replace`` (in
    order, a later value winning), then the extra ``key=value`` strings."""
    changes: dict[str, dict[str, Any]] = {}
    for sec, name, value in overrides.fields:
        changes.setdefault(sec, {})[name] = value
    sections = {sec: dataclasses.replace(getattr(cfg, sec), **vals)
                for sec, vals in changes.items()}
    cfg = dataclasses.replace(cfg, **sections) if sections else cfg
    return _apply_text(cfg, overrides.extra) if overrides.extra else cfg


def _apply_text(cfg: C.Config, extra: Sequence[str]) -> C.Config:
    """``cfg`` with ``key=value`` strings applied as ``load_config`` applies them."""
    values = C.config_to_dict(cfg)
    for text in extra:
        key, value = C.parse_override(text)
        *path, last = key.split(".")
        node = values
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise C.ConfigError(f"override {key}: {part} is a value, not a section")
        node[last] = value
    return C.config_from_dict(values)


def build_config(preset: str | Path, overrides: Overrides) -> C.Config:
    """The config of a run: ``preset`` (a preset name or YAML file) with ``overrides``."""
    return apply(C.load_config(preset), overrides)
