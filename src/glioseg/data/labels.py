"""Label conventions and the WT/TC/ET regions: the one pure module that knows them.

Internal convention (used in memory, in the cache, by training and by the model's head):

    0 background, 1 necrotic / non-enhancing tumour core (NCR/NETC), 2 edema (ED/SNFH),
    3 enhancing tumour (ET)

It is the BraTS 2023 file convention, chosen because it is contiguous. Every file scheme maps
to and from it here and nowhere else:

    scheme      file labels                          file -> internal
    brats2020   0, 1 NCR/NET, 2 ED, 4 ET             4 -> 3
    brats2021   same as brats2020                    4 -> 3
    brats2023   0, 1 NETC, 2 SNFH, 3 ET              identity (a 4 is an error, never ET)
    msd         0, 1 edema, 2 non-enhancing, 3 ET    1 -> 2, 2 -> 1

Regions (channels in this order everywhere): WT = {1, 2, 3}, TC = {1, 3}, ET = {3} internal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glioseg.errors import GliosegError

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""Canonical modality names and the channel order of every image array in the project."""

MODALITY_ALIASES: dict[str, str] = {
    "t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1", "nativet1": "t1", "t1pre": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce", "t1wce": "t1ce",
    "t1contrast": "t1ce", "t1cegd": "t1ce",
    "t2": "t2", "t2w": "t2",
    "flair": "flair", "t2f": "flair", "t2flair": "flair",
}
"""Sequence names of the published layouts and common spellings (lower case, letters and
digits only) -> canonical modality name."""

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
"""Region channel order of every region array and of the model's output."""

NCR, ED, ET = 1, 2, 3
"""Internal label values."""

INTERNAL_LABELS: tuple[int, ...] = (0, NCR, ED, ET)


@dataclass(frozen=True)
class LabelScheme:
    """How a file convention maps to the internal labels.

    Attributes:
        name: scheme name (``brats2020``, ``brats2021``, ``brats2023``, ``msd``).
        file_to_internal: file label value -> internal value, for every allowed file value.
    """

    name: str
    file_to_internal: tuple[tuple[int, int], ...]

    @property
    def allowed(self) -> tuple[int, ...]:
        """File label values this scheme allows."""
        return tuple(v for v, _ in self.file_to_internal)

    @property
    def internal_to_file(self) -> dict[int, int]:
        return {i: f for f, i in self.file_to_internal}


SCHEMES: dict[str, LabelScheme] = {
    "brats2020": LabelScheme("brats2020", ((0, 0), (1, NCR), (2, ED), (4, ET))),
    "brats2021": LabelScheme("brats2021", ((0, 0), (1, NCR), (2, ED), (4, ET))),
    "brats2023": LabelScheme("brats2023", ((0, 0), (1, NCR), (2, ED), (3, ET))),
    "msd": LabelScheme("msd", ((0, 0), (1, ED), (2, NCR), (3, ET))),
}


class LabelError(GliosegError, ValueError):
    """Label values that the scheme does not allow."""


def get_scheme(name: str) -> LabelScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise LabelError(f"unknown label scheme {name!r}; known: {', '.join(SCHEMES)}") from None


def declared_scheme(name: str | None, option: str = "--labels") -> str | None:
    """``name``, the label scheme given with ``option`` (None: none given), once checked.

    Raises:
        LabelError: naming ``option`` for an unknown scheme.
    """
    if name is not None and name not in SCHEMES:
        raise LabelError(f"{option} {name}: unknown label scheme; known: {', '.join(SCHEMES)}")
    return name


def integer_labels(labels: np.ndarray) -> np.ndarray:
    """Label values as read from a file -> an integer array, refusing what labels cannot be.

    Float files must hold whole finite values (a fractional value is a probability map or an
    interpolated file, whose rounding would invent labels); bool becomes uint8.

    Raises:
        LabelError: NaN/inf, non-integer values (the first few named) or a non-numeric type.
    """
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all():
            raise LabelError("NaN or inf label values")
        frac = np.unique(labels[labels != np.rint(labels)])
        if frac.size:
            shown = ", ".join(f"{v:g}" for v in frac[:5]) + (", ..." if frac.size > 5 else "")
            raise LabelError(f"non-integer label values ({shown}): labels expected, not "
                             "probabilities or an interpolated file")
        return labels.astype(np.int64)
    if labels.dtype == bool:
        return labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise LabelError(f"label array of unsupported type {labels.dtype}")
    return labels


def unexpected_values(labels: np.ndarray, scheme: str) -> list[int]:
    """Label values present in ``labels`` that ``scheme`` does not allow (sorted)."""
    allowed = set(get_scheme(scheme).allowed)
    present = np.unique(labels)
    return sorted(int(v) for v in present if int(v) not in allowed or v != int(v))


def et_as_3_hint(option: str = "--labels") -> str:
    """The hint for a 3 in BraTS 2020/2021-named segmentations; ``option`` is the command's
    option that declares their label scheme (``--labels``; ``glioseg evaluate``:
    ``--ref-labels``)."""
    return ("3 is ET in the BraTS 2023 / nnU-Net scheme (0/1/2/3), so these labels were "
            "probably converted: relabel 3 as 4 in the segmentations (BraTS 2020/2021 file "
            f"names mean labels 0/1/2/4) or declare the scheme: {option} brats2023")


ET_AS_3_HINT = et_as_3_hint()


def scheme_hint(bad: Sequence[int], scheme: str, option: str = "--labels") -> str:
    """Why file labels ``bad`` outside ``scheme`` may be there and what to do, or ``""``: a 3
    in BraTS 2020/2021-named files is the ET of the 2023 / nnU-Net scheme (``option``: see
    ``et_as_3_hint``)."""
    if scheme in ("brats2020", "brats2021") and list(bad) == [3]:
        return et_as_3_hint(option)
    return ""


def _lookup(mapping: dict[int, int], labels: np.ndarray, scheme: str, what: str) -> np.ndarray:
    bad = sorted(int(v) for v in np.unique(labels) if int(v) not in mapping)
    if bad:
        hint = scheme_hint(bad, scheme) if what == "file" else ""
        raise LabelError(
            f"{what} labels {bad} are not allowed in the {scheme} scheme "
            f"(allowed: {sorted(mapping)})" + (f"; {hint}" if hint else "")
        )
    table = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for src, dst in mapping.items():
        table[src] = dst
    return table[labels.astype(np.int64, copy=False)]


def to_internal(labels: np.ndarray, scheme: str) -> np.ndarray:
    """File labels in ``scheme`` -> internal labels, uint8, same shape.

    Raises LabelError naming the offending values if any value is outside the scheme.
    """
    return _lookup(dict(get_scheme(scheme).file_to_internal), labels, scheme, "file")


def from_internal(labels: np.ndarray, scheme: str) -> np.ndarray:
    """Internal labels -> file labels of ``scheme``, uint8, same shape."""
    return _lookup(get_scheme(scheme).internal_to_file, labels, scheme, "internal")


def region_masks(labels: Any) -> tuple[Any, Any, Any]:
    """The region masks ``(WT, TC, ET)`` of internal labels, each bool of the labels' shape.

    The one definition of the regions: WT = label in {1, 2, 3} (> 0), TC = {1, 3}, ET = {3}.
    Only comparisons and ``|`` are used, so ``labels`` may be a numpy array or a torch tensor
    of integers of any shape (a tensor gives tensors, on its device); the caller stacks them on
    the axis it wants (``np.stack``, ``torch.stack(..., dim=1)`` for batches).
    """
    wt = labels > 0
    et = labels == ET
    tc = (labels == NCR) | et
    return wt, tc, et


def regions_from_labels(labels: np.ndarray) -> np.ndarray:
    """Internal labels ``(D, H, W)`` -> regions ``(3, D, H, W)`` bool in order WT, TC, ET."""
    return np.stack(region_masks(np.asarray(labels)))


def labels_from_regions(regions: np.ndarray) -> np.ndarray:
    """Regions ``(3, D, H, W)`` bool (WT, TC, ET) -> internal labels ``(D, H, W)`` uint8.

    The nesting ET in TC in WT is imposed: ET wins, then the rest of TC is necrosis, then the
    rest of WT is edema. This is the only conversion from region predictions back to labels.
    """
    regions = np.asarray(regions, dtype=bool)
    if regions.shape[0] != 3:
        raise ValueError(f"expected 3 region channels (WT, TC, ET), got shape {regions.shape}")
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    out[regions[0]] = ED
    out[regions[1]] = NCR
    out[regions[2]] = ET
    return out


def file_regions(labels: np.ndarray, scheme: str) -> np.ndarray:
    """File labels in ``scheme`` -> regions ``(3, ...)`` bool; checks the values first."""
    return regions_from_labels(to_internal(labels, scheme))


def parse_modalities(names: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical modality names of ``names``, in the order given.

    Args:
        names: a comma list (``"t2,t1"``) or a sequence of names; published spellings are
            accepted (``t1n``, ``t1c``, ``t2w``, ``t2f``, ``T1Gd``, ``FLAIR``...).

    Raises:
        LabelError: for an empty list, an unknown name or a name given twice.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [n.strip() for n in items if n.strip()]
    if not items:
        raise LabelError(f"no modality named; choose among {', '.join(MODALITIES)}")
    out = []
    for name in items:
        key = "".join(ch for ch in name.lower() if ch.isalnum())
        if key not in MODALITY_ALIASES:
            raise LabelError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")
        out.append(MODALITY_ALIASES[key])
    repeated = sorted({m for m in out if out.count(m) > 1})
    if repeated:
        raise LabelError(f"modality {', '.join(repeated)} named twice in {', '.join(items)}")
    return tuple(out)
