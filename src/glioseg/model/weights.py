"""Load pretrained weights into a model that differs from the source: adapt what can be adapted,
report everything.

:func:`load_adapted` matches tensors by name and shape and says what it did with each one in a
:class:`LoadReport` (loaded unchanged / adapted / newly initialised / unused): there is no silent
partial load. Two adaptations are made by NAME, not by position:

- **Input sequences.** The filters of every input convolution (``model.input_conv_keys``) are
  indexed by the source card's modalities and rearranged into the target's order. A target
  sequence the source never saw gets the mean of the source filters. When the target does not
  take exactly the source's set of sequences (fewer, more or other ones), the whole filter bank
  is then multiplied by ``n_source / n_target``: the sum of the filters over the input channels
  -- the response to a pattern present alike in every (z-scored, strongly correlated) sequence
  -- keeps its size, the rule timm uses to adapt RGB filters to other channel counts. So a model
  trained on four sequences and given only FLAIR sees filters ``4 x W_flair``; a one-channel
  encoder given four sequences sees ``W / 4`` on each.
- **Outputs.** Head rows are indexed by the source card's region names: the same names in
  another order are permuted, a subset is selected; other outputs (another label scheme, other
  classes) leave the target's freshly initialised head in place and reuse everything else.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from glioseg.data.labels import MODALITY_ALIASES
from glioseg.model.card import ModelCard, load_card, resolve_paths
from glioseg.model.state_dict import (
    WeightsMismatchError,
    load_state_dict,
    strip_wrapper_prefixes,
    unwrap_model,
)

log = logging.getLogger(__name__)

_REGION_ALIASES = {
    "wt": "WT", "wholetumor": "WT", "wholetumour": "WT", "whole": "WT",
    "tc": "TC", "tumorcore": "TC", "tumourcore": "TC", "core": "TC",
    "et": "ET", "enhancingtumor": "ET", "enhancingtumour": "ET", "enhancing": "ET",
}


def canonical_region(name: str) -> str:
    """Project name of an output region (``whole tumor`` -> ``WT``, ``tumor core`` -> ``TC``,
    ``enhancing tumour`` -> ``ET``); other names are returned unchanged."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return _REGION_ALIASES.get(key, name)


def canonical_modality(name: str) -> str:
    """Project name of a sequence: ``T1Gd``/``t1c``/``T1-CE`` -> ``t1ce``, ``T2F``/``FLAIR`` ->
    ``flair``, ``T1N`` -> ``t1``, ``T2W`` -> ``t2``; unknown names are lower-cased as they are."""
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return MODALITY_ALIASES.get(key, name.strip().lower())


@dataclass
class LoadReport:
    """What :func:`load_adapted` did with every tensor (state-dict key names).

    ``loaded``: copied unchanged; ``adapted``: rearranged by modality or region name;
    ``new``: left at the model's fresh initialisation; ``unused``: checkpoint tensors not used;
    ``reshaped``: ``"name (checkpoint shape vs model shape)"`` for tensors in both ``new`` and
    ``unused`` because their shapes differ.
    """

    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def n_target(self) -> int:
        return len(self.loaded) + len(self.adapted) + len(self.new)

    def __str__(self) -> str:
        lines = [
            f"weights: {len(self.loaded)} tensors loaded unchanged, {len(self.adapted)} adapted, "
            f"{len(self.new)} newly initialised (of {self.n_target} in the model); "
            f"{len(self.unused)} tensors of the checkpoint unused"
        ]
        for title, names in (("adapted", self.adapted), ("newly initialised", self.new),
                             ("unused", self.unused), ("shapes differ", self.reshaped)):
            if names:
                lines.append(f"  {title}: {_short_list(names)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def adapt_input_filters(
    weight: torch.Tensor,
    source: Sequence[str],
    target: Sequence[str],
    rescale: bool = True,
) -> tuple[torch.Tensor, str]:
    """Rearrange input filters ``(out, len(source), *k)`` -> ``(out, len(target), *k)`` by
    modality name (see the module docstring); returns the tensor and a sentence saying how."""
    src = [canonical_modality(m) for m in source]
    tgt = [canonical_modality(m) for m in target]
    if weight.shape[1] != len(src):
        raise WeightsMismatchError(
            f"input filters have {weight.shape[1]} channels but the source card names "
            f"{len(src)} modalities {tuple(source)}")
    if len(set(src)) != len(src) or len(set(tgt)) != len(tgt):
        raise WeightsMismatchError(f"modalities must be distinct: source {src}, target {tgt}")
    mean = weight.mean(dim=1)
    channels, parts, missing = [], [], []
    for name in tgt:
        if name in src:
            channels.append(weight[:, src.index(name)])
            parts.append(f"{name}<-{src.index(name)}")
        else:
            channels.append(mean)
            missing.append(name)
    out = torch.stack(channels, dim=1)
    how = f"channels by name ({', '.join(parts) or 'none from the source'})"
    if missing:
        how += f"; {', '.join(missing)} not in the source: mean of the source filters"
    if rescale and set(src) != set(tgt):
        factor = len(src) / len(tgt)
        out = out * factor
        how += f"; bank scaled by {len(src)}/{len(tgt)} = {factor:.3g}"
    return out, how


def _head_rows(source: Sequence[str], target: Sequence[str]) -> list[int] | None:
    """Row indices of the source head giving the target's outputs, or None (new head)."""
    if list(source) == list(target):
        return list(range(len(target)))
    if len(set(source)) == len(source) and set(target) <= set(source):
        return [list(source).index(r) for r in target]
    return None


def load_adapted(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source_card: ModelCard,
    target_modalities: Sequence[str] | None = None,
    target_regions: Sequence[str] | None = None,
    *,
    rescale_inputs: bool = True,
    skip_prefixes: Sequence[str] = (),
) -> LoadReport:
    """Load into ``model`` what fits of ``state_dict`` (described by ``source_card``).

    Args:
        model: the target network (may be wrapped in DDP or ``torch.compile``); its input
            channels must equal ``len(target_modalities)`` and its outputs ``len(target_regions)``.
        state_dict: source weights; ``module.`` / ``_orig_mod.`` prefixes are removed.
        source_card: names the source's modalities (input order) and output regions.
        target_modalities: the target's sequences in input order (default: the source's).
        target_regions: the target's output names (default: the project's WT, TC, ET).
        rescale_inputs: apply the ``n_source / n_target`` rescaling of adapted input filters.
        skip_prefixes: keys to leave at their fresh initialisation whatever the checkpoint says.

    Tensors missing from the source, or of another shape, keep the model's initialisation and
    are reported as new. Raises :class:`WeightsMismatchError` when nothing at all fits.
    """
    from glioseg.data.labels import REGIONS

    net = unwrap_model(model)
    cfg = getattr(net, "config", None)
    target_modalities = tuple(target_modalities or source_card.modalities)
    target_regions = tuple(target_regions or REGIONS)
    _check_channels(cfg, target_modalities, target_regions)
    source = strip_wrapper_prefixes(state_dict)
    target = net.state_dict()
    adaptation = _Adaptation(
        card=source_card, target_modalities=target_modalities,
        rows=_head_rows(source_card.regions, target_regions),
        input_keys=tuple(getattr(net, "input_conv_keys", (getattr(net, "input_conv_key", ""),))),
        head_prefixes=tuple(getattr(net, "head_prefixes", ())), rescale_inputs=rescale_inputs)
    report = LoadReport(notes=_difference_notes(cfg, adaptation, target_regions))
    new_state, used = _fill_state(target, source, adaptation, tuple(skip_prefixes), report)
    report.unused = [k for k in source if k not in used]
    if not report.loaded and not report.adapted:
        raise WeightsMismatchError(
            "no tensor of the checkpoint fits the model (names or shapes all differ); "
            f"checkpoint keys start {_short_list(list(source), 3)}, model keys "
            f"{_short_list(list(target), 3)}")
    net.load_state_dict(new_state, strict=True)
    log.info("%s", report)
    return report


def _check_channels(cfg: Any, target_modalities: Sequence[str],
                    target_regions: Sequence[str]) -> None:
    """Raise when the model's input or output channels do not match the target's names."""
    if cfg is not None and cfg.in_channels != len(target_modalities):
        raise WeightsMismatchError(f"the model takes {cfg.in_channels} input channels but "
                                   f"{len(target_modalities)} target modalities were given")
    if cfg is not None and cfg.out_channels != len(target_regions):
        raise WeightsMismatchError(f"the model has {cfg.out_channels} outputs but "
                                   f"{len(target_regions)} target regions were given")


@dataclass(frozen=True)
class _Adaptation:
    """How tensors of the source map onto the target: names, input keys, head rows."""

    card: ModelCard
    target_modalities: tuple[str, ...]
    rows: list[int] | None
    input_keys: tuple[str, ...]
    head_prefixes: tuple[str, ...]
    rescale_inputs: bool

    def tensor(self, key: str, src: torch.Tensor, value: torch.Tensor,
               report: LoadReport) -> tuple[torch.Tensor, str | None]:
        """``(tensor, kind)``: kind ``loaded``/``adapted`` (fits), ``new`` or None (check shape)."""
        if key in self.input_keys and src.ndim >= 2:
            return self._input_filters(key, src, value, report)
        if key.startswith(self.head_prefixes) and self.head_prefixes:
            return self._head(src, value)
        return src, None

    def _input_filters(self, key: str, src: torch.Tensor, value: torch.Tensor,
                       report: LoadReport) -> tuple[torch.Tensor, str | None]:
        """Input filters rearranged by modality name; a note says how when they were adapted."""
        try:
            src, how = adapt_input_filters(src, self.card.modalities, self.target_modalities,
                                           self.rescale_inputs)
        except WeightsMismatchError as exc:
            raise WeightsMismatchError(f"{key}: {exc}") from None
        if src.shape != value.shape:
            return src, None
        if _same_order(self.card.modalities, self.target_modalities):
            return src, "loaded"
        report.notes.append(f"{key}: {how}")
        return src, "adapted"

    def _head(self, src: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """Head rows selected by region name; ``new`` when the outputs differ."""
        if self.rows is None:
            return src, "new"
        if src.ndim >= 1 and src.shape[0] == len(self.card.regions) and self.rows != list(
                range(src.shape[0])):
            src = src[self.rows]
            if src.shape == value.shape:
                return src, "adapted"
        return src, None


def _difference_notes(cfg: Any, adaptation: _Adaptation,
                      target_regions: Sequence[str]) -> list[str]:
    """Notes on what differs between source and target: architecture, inputs, outputs."""
    card, rows, notes = adaptation.card, adaptation.rows, []
    if cfg is not None and card.arch != cfg.arch:
        notes.append(f"source architecture {card.arch!r}, target {cfg.arch!r}")
    if not _same_order(card.modalities, adaptation.target_modalities):
        notes.append(
            f"input sequences differ: the source takes {', '.join(card.modalities)}, "
            f"this model {', '.join(adaptation.target_modalities)}; input filters mapped by name")
    if rows is None and adaptation.head_prefixes:
        notes.append(
            f"outputs differ (source {', '.join(card.regions) or '?'} in scheme "
            f"{card.label_scheme}; target {', '.join(target_regions)}): new head")
    elif rows is not None and rows != list(range(len(target_regions))):
        notes.append(f"head rows taken by name: {', '.join(target_regions)} <- source "
                     f"rows {rows}")
    return notes


def _fill_state(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                adaptation: _Adaptation, skip_prefixes: tuple[str, ...],
                report: LoadReport) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The model's new state dict and the checkpoint keys used; ``report`` says what went where."""
    new_state, used = dict(target), set()
    for key, value in target.items():
        if key.startswith(skip_prefixes) or key not in source:
            report.new.append(key)
            continue
        src, kind = adaptation.tensor(key, source[key], value, report)
        if kind is None and src.shape == value.shape:
            kind = "loaded"
        if kind in ("loaded", "adapted"):
            (report.loaded if kind == "loaded" else report.adapted).append(key)
            new_state[key] = src.to(value.dtype)
            used.add(key)
        else:
            report.new.append(key)
            if kind is None:
                report.reshaped.append(f"{key} ({tuple(src.shape)} vs {tuple(value.shape)})")
    return new_state, used


def _same_order(source: Sequence[str], target: Sequence[str]) -> bool:
    return [canonical_modality(m) for m in source] == [canonical_modality(m) for m in target]


def load_pretrained(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    target_modalities: Sequence[str] | None = None,
    target_regions: Sequence[str] | None = None,
    **kwargs: object,
) -> tuple[LoadReport, ModelCard]:
    """:func:`load_adapted` from a saved model (folder, ``.safetensors`` or ``card.json``),
    partial ones (imported encoders) included. Returns the report and the source card."""
    weights_path, _ = resolve_paths(path)  # a run folder, a .pt, an export: says what to pass
    card = load_card(path)
    state = load_state_dict(weights_path)
    report = load_adapted(model, state, card, target_modalities, target_regions, **kwargs)  # type: ignore[arg-type]
    return report, card
