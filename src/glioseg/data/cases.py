"""Cases on disk: validation and loading into the canonical in-memory form.

Discovery of the published BraTS / MSD layouts is ``glioseg.data.layouts``; its public names
(``discover``, ``Case``, ``CaseError``, ``case_file_name``, ``case_id_for``) are re-exported
here, so ``glioseg.data.cases`` stays the one import for callers that find and read cases.

In memory every case becomes one canonical form (``CaseData``): image channels in the order
``labels.MODALITIES`` = (t1, t1ce, t2, flair) and internal labels (see ``labels``).

Fewer sequences: a site may have only some of the four (e.g. T2 and T1). ``examine_case``,
``check_case`` and ``load_case`` take ``modalities`` (default: all four), the sequences to use:
only those are required, read and checked; the others are ignored even when present. The
loaded image keeps the canonical 4-channel layout; a channel not used is all zeros and
``CaseData.modalities`` lists the channels that hold data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glioseg.data import labels as L
from glioseg.data.layouts import (
    MSD_CHANNELS,
    Case,
    CaseError,
    case_file_name,
    case_id_for,
    discover,
)
from glioseg.data.nifti import NiftiError, VolumeHeader, load_volume, read_header

__all__ = [  # the discovery names are re-exported from glioseg.data.layouts
    "AFFINE_ATOL", "Case", "CaseData", "CaseError", "CaseSummary", "case_file_name",
    "case_id_for", "check_case", "discover", "examine_case", "load_case", "selected_modalities",
]

AFFINE_ATOL = 1e-3
"""Largest difference (mm) between two affines of one case that still counts as the same grid."""


@dataclass
class CaseData:
    """A case loaded into the canonical in-memory form.

    Attributes:
        case_id: case id.
        image: ``(4, X, Y, Z)`` float32, channels in ``MODALITIES`` order, axes as stored; a
            channel not in ``modalities`` is all zeros.
        labels: ``(X, Y, Z)`` uint8 internal labels, or None.
        header: geometry of the image grid (3D shape).
        modalities: the channels read from files, in ``MODALITIES`` order.
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray | None
    header: VolumeHeader
    modalities: tuple[str, ...] = field(default=L.MODALITIES)


@dataclass
class CaseSummary:
    """What ``examine_case`` found out about one case.

    Attributes:
        case: the case examined.
        shape: ``(X, Y, Z)`` grid of the first readable image (None if none could be read).
        spacing: voxel size in mm of that grid.
        orientation: its axis codes, e.g. ``('L', 'P', 'S')``.
        label_counts: internal label -> voxel count (0..3), or None (no seg, or voxels not read).
        problems: what makes the case unusable, each naming the case, the file and the problem.
        warnings: what a user should know but does not stop the case being used.
    """

    case: Case
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    orientation: tuple[str, str, str] | None = None
    label_counts: dict[int, int] | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def selected_modalities(modalities: str | Sequence[str] | None) -> tuple[str, ...]:
    """The sequences to use, canonical names in ``MODALITIES`` order (None: all four).

    Raises:
        LabelError: for an unknown or repeated name (see ``labels.parse_modalities``).
    """
    if modalities is None:
        return L.MODALITIES
    chosen = L.parse_modalities(modalities)
    return tuple(m for m in L.MODALITIES if m in chosen)


def _files_of(case: Case, modalities: Sequence[str] = L.MODALITIES) -> list[tuple[str, Path]]:
    """(role, file) of the files of ``case`` to check: the chosen modalities (MSD: ``image``),
    then ``seg``."""
    if case.layout == "msd":
        files = [("image", next(iter(case.images.values())))] if case.images else []
    else:
        files = [(m, p) for m, p in case.images.items() if m in modalities]
    if case.seg is not None:
        files.append(("seg", case.seg))
    return files


def _check_dims(case: Case, role: str, path: Path, header: VolumeHeader) -> str | None:
    """Problem with the dimensionality of one file, or None."""
    shape = header.shape
    if case.layout == "msd" and role == "image":
        if len(shape) != 4 or shape[3] != len(MSD_CHANNELS):
            return (f"{case.case_id}: {path.name}: expected a 4D image with 4 channels "
                    f"(FLAIR, T1w, T1gd, T2w), got shape {shape}")
    elif len(shape) != 3:
        return f"{case.case_id}: {path.name}: expected a 3D volume, got {len(shape)}D shape {shape}"
    return None


def _check_grid(case: Case, path: Path, header: VolumeHeader,
                ref: tuple[str, tuple[int, ...], np.ndarray]) -> str | None:
    """Problem with the grid of one file against the first file ``ref``, or None."""
    if header.shape[:3] != ref[1]:
        return (f"{case.case_id}: {path.name}: shape {header.shape[:3]} differs from "
                f"{ref[0]} {ref[1]}")
    if not np.allclose(header.affine, ref[2], rtol=0, atol=AFFINE_ATOL):
        diff = float(np.abs(header.affine - ref[2]).max())
        return (f"{case.case_id}: {path.name}: affine differs from {ref[0]} "
                f"(largest difference {diff:.4g})")
    return None


def _check_image_voxels(case: Case, role: str, path: Path, data: np.ndarray,
                        summary: CaseSummary, modalities: Sequence[str] = L.MODALITIES) -> None:
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if n_bad:
            summary.problems.append(f"{case.case_id}: {path.name}: {n_bad} NaN/inf voxels")
            return
    channels = ([(m, data[..., i]) for i, m in enumerate(MSD_CHANNELS) if m in modalities]
                if case.layout == "msd" else [(role, data)])
    for mod, vol in channels:
        if vol.size and vol.min() == vol.max():
            summary.warnings.append(f"{case.case_id}: {path.name}: {mod} is constant "
                                    f"(every voxel = {vol.flat[0]:g})")


def _check_seg_voxels(case: Case, path: Path, data: np.ndarray, summary: CaseSummary) -> None:
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            summary.problems.append(f"{case.case_id}: {path.name}: NaN/inf in segmentation")
            return
        if not np.array_equal(data, np.rint(data)):
            frac = sorted({float(v) for v in np.unique(data[data != np.rint(data)])[:5]})
            summary.problems.append(f"{case.case_id}: {path.name}: non-integer label values "
                                    f"{frac} in segmentation")
            return
    values, counts = np.unique(data, return_counts=True)
    scheme = L.get_scheme(case.label_scheme)
    mapping = dict(scheme.file_to_internal)
    bad = [int(v) for v in values if int(v) not in mapping]
    if bad:
        summary.problems.append(f"{case.case_id}: {path.name}: unexpected label values {bad} "
                                f"for the {case.label_scheme} scheme "
                                f"(allowed {list(scheme.allowed)})")
        return
    counts_by_label = dict.fromkeys(L.INTERNAL_LABELS, 0)
    for v, n in zip(values, counts, strict=True):
        counts_by_label[mapping[int(v)]] += int(n)
    summary.label_counts = counts_by_label
    if counts_by_label[0] == data.size:
        summary.warnings.append(f"{case.case_id}: {path.name}: segmentation is empty (no tumour)")


def _missing_problems(case: Case, modalities: Sequence[str]) -> list[str]:
    extra = f"; unrecognised: {', '.join(case.unrecognised)}" if case.unrecognised else ""
    return [f"{case.case_id}: missing modality {m} (no {case.expected_file(m)} in "
            f"{case.folder}{extra})" for m in case.lacks(modalities)]


def examine_case(case: Case, read_voxels: bool = True,
                 modalities: str | Sequence[str] | None = None) -> CaseSummary:
    """Geometry, label voxel counts, problems and warnings of one case.

    ``modalities`` (default all four) are the sequences to use: only those must exist and
    only their files are checked. Checks: missing modality, unreadable or truncated files, 4D where 3D is expected (MSD: 4D
    with 4 channels), shapes or affines that disagree between modalities and segmentation,
    NaN/inf voxels, label values outside the case's label scheme (its layout's, or the one
    declared: ``discover(..., label_scheme=)``). Every check runs on every file,
    so one problem never hides another. With ``read_voxels=False`` only headers are read
    (fast, but truncated data, NaN and label values go unnoticed).
    """
    chosen = selected_modalities(modalities)
    summary = CaseSummary(case, warnings=list(case.warnings))
    summary.problems.extend(_missing_problems(case, chosen))
    ref: tuple[str, tuple[int, ...], np.ndarray] | None = None
    for role, path in _files_of(case, chosen):
        try:
            if read_voxels:
                data, header = load_volume(path, dtype=None)
            else:
                data, header = None, read_header(path)
        except NiftiError as exc:
            summary.problems.append(f"{case.case_id}: {path.name}: {_strip_path(exc, path)}")
            continue
        problem = _check_dims(case, role, path, header)
        if problem is not None:  # the wrong kind of volume: nothing more to compare
            summary.problems.append(problem)
            continue
        if ref is None:
            ref = (path.name, header.shape[:3], header.affine)
            summary.shape = header.shape[:3]  # type: ignore[assignment]
            summary.spacing = header.spacing
            summary.orientation = header.orientation
        elif (problem := _check_grid(case, path, header, ref)) is not None:
            summary.problems.append(problem)  # the voxels are still checked below
        if data is None:
            continue
        if role == "seg":
            _check_seg_voxels(case, path, data, summary)
        else:
            _check_image_voxels(case, role, path, data, summary, chosen)
    return summary


def _strip_path(exc: NiftiError, path: Path) -> str:
    """The message of a NiftiError without its leading ``<path>: `` (the caller names the file)."""
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def check_case(case: Case, read_voxels: bool = True,
               modalities: str | Sequence[str] | None = None) -> list[str]:
    """Problems that make ``case`` unusable, each naming the case and the file; [] if none.

    See ``examine_case`` for the checks and ``modalities``.
    """
    return examine_case(case, read_voxels, modalities).problems


def _read_images(case: Case, modalities: Sequence[str] = L.MODALITIES
                 ) -> list[tuple[str, Path, np.ndarray, VolumeHeader]]:
    """(modality, file, (X, Y, Z) float32 volume, header) of ``modalities``, in that order."""
    if case.layout == "msd":
        path = case.images[L.MODALITIES[0]]
        data, header = load_volume(path, dtype=np.float32)
        if data.ndim != 4 or data.shape[3] != len(MSD_CHANNELS):
            raise CaseError(f"{case.case_id}: {path.name}: expected a 4D image with 4 channels "
                            f"(FLAIR, T1w, T1gd, T2w), got shape {data.shape}")
        header = dataclasses.replace(header, shape=header.shape[:3])
        return [(m, path, data[..., MSD_CHANNELS.index(m)], header) for m in modalities]
    out = []
    for m in modalities:
        path = case.images[m]
        data, header = load_volume(path, dtype=np.float32)
        if data.ndim != 3:
            raise CaseError(f"{case.case_id}: {path.name}: expected a 3D volume, "
                            f"got shape {data.shape}")
        out.append((m, path, data, header))
    return out


def _same_grid(case: Case, ref_name: str, ref: VolumeHeader, path: Path,
               shape: tuple[int, ...], header: VolumeHeader) -> None:
    if shape != ref.shape[:3]:
        raise CaseError(f"{case.case_id}: {path.name}: shape {shape} differs from "
                        f"{ref_name} {ref.shape[:3]}")
    if not np.allclose(header.affine, ref.affine, rtol=0, atol=AFFINE_ATOL):
        raise CaseError(f"{case.case_id}: {path.name}: affine differs from {ref_name}")


def _read_labels(case: Case, seg_path: Path) -> tuple[np.ndarray, VolumeHeader]:
    seg, header = load_volume(seg_path, dtype=None)
    if np.issubdtype(seg.dtype, np.floating):
        if not np.isfinite(seg).all():
            raise CaseError(f"{case.case_id}: {seg_path.name}: NaN/inf in segmentation")
        if not np.array_equal(seg, np.rint(seg)):
            raise CaseError(f"{case.case_id}: {seg_path.name}: non-integer label values")
    try:
        labels = L.to_internal(seg.astype(np.int64), case.label_scheme)
    except L.LabelError as exc:
        raise CaseError(f"{case.case_id}: {seg_path.name}: {exc}") from None
    return labels, header


def load_case(case: Case, with_labels: bool = True,
              modalities: str | Sequence[str] | None = None) -> CaseData:
    """Read a case into the canonical form (channels t1, t1ce, t2, flair; internal labels).

    Args:
        case: a discovered case.
        with_labels: read the segmentation when the case has one.
        modalities: the sequences to read (default all four); the others stay zero channels
            and need not exist.

    Returns:
        ``CaseData`` with ``image`` ``(4, X, Y, Z)`` float32 in ``MODALITIES`` order (zeros
        for a channel not read), ``modalities`` the channels read, and ``labels``
        ``(X, Y, Z)`` uint8 internal (None without a seg or ``with_labels=False``).

    Raises:
        CaseError: naming the case and file, for a missing modality, an unreadable file, a
            wrong dimensionality, shapes or affines that disagree, NaN/inf voxels, or label
            values outside the case's label scheme (``Case.label_scheme``).
    """
    chosen = selected_modalities(modalities)
    if case.lacks(chosen):
        raise CaseError("; ".join(_missing_problems(case, chosen)))
    try:
        vols = _read_images(case, chosen)
        _, ref_path, _, ref = vols[0]
        for _, path, data, header in vols[1:]:
            _same_grid(case, ref_path.name, ref, path, data.shape, header)
        for _, path, data, _ in vols:
            if not np.isfinite(data).all():
                n = int(data.size - np.count_nonzero(np.isfinite(data)))
                raise CaseError(f"{case.case_id}: {path.name}: {n} NaN/inf voxels")
        labels = None
        if with_labels and case.seg is not None:
            labels, seg_header = _read_labels(case, case.seg)
            _same_grid(case, ref_path.name, ref, case.seg, labels.shape, seg_header)
    except NiftiError as exc:
        raise CaseError(f"{case.case_id}: {exc}") from None
    image = np.zeros((len(L.MODALITIES), *ref.shape[:3]), dtype=np.float32)
    for m, _, v, _ in vols:
        image[L.MODALITIES.index(m)] = v
    return CaseData(case.case_id, image, labels, ref, chosen)
