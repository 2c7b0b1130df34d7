"""Cases on disk: discovery of the published BraTS / MSD layouts, validation and loading.

Layouts (detected automatically, see ``LAYOUTS``):

- ``brats2020``: ``BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii[.gz]``;
  validation cases have no ``seg``; training case 355 ships its segmentation as
  ``W39_1998.09.19_Segm.nii`` (accepted with a warning). Labels 0/1/2/4.
- ``brats2021``: ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``. Labels 0/1/2/4.
- ``brats2023``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (also
  SSA, MEN, MET, PED and other challenge tags). Labels 0/1/2/3.
- ``msd``: Decathlon Task01_BrainTumour, ``imagesTr/BRATS_001.nii.gz`` 4D with channels
  FLAIR, T1w, T1gd, T2w, and ``labelsTr/BRATS_001.nii.gz`` (1 edema, 2 non-enhancing, 3 ET);
  ``imagesTs/`` has no labels; macOS ``._*`` files shipped in the archive are ignored.

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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glioseg.data import labels as L
from glioseg.data.nifti import NiftiError, VolumeHeader, load_volume, read_header
from glioseg.errors import GliosegError


@dataclass(frozen=True)
class Layout:
    """A published folder layout.

    Attributes:
        name: layout name, also its label scheme.
        case_pattern: regex a case folder name matches.
        sep: separator between case id and file suffix.
        suffixes: file suffix per canonical modality.
    """

    name: str
    case_pattern: str
    sep: str
    suffixes: dict[str, str]


LAYOUTS: dict[str, Layout] = {
    "brats2020": Layout(
        "brats2020",
        r"BraTS20_(Training|Validation|Testing)_\d{3}",
        "_",
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
    ),
    "brats2021": Layout(
        "brats2021",
        r"BraTS2021_\d{5}",
        "_",
        {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"},
    ),
    "brats2023": Layout(
        "brats2023",
        r"BraTS-[A-Z]{2,4}-\d{5}-\d{3}",
        "-",
        {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"},
    ),
}

MSD_CHANNELS: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""Channel order of MSD Task01 images (FLAIR, T1w, T1gd, T2w) in canonical names."""

NIFTI_EXTS = (".nii.gz", ".nii")
SEG_SUFFIX = "seg"
AFFINE_ATOL = 1e-3
"""Largest difference (mm) between two affines of one case that still counts as the same grid."""

# BraTS 2020 training case 355 ships its segmentation under a scanner file name
# (W39_1998.09.19_Segm.nii); any *seg.nii / *segm.nii[.gz] is accepted, with a warning.
_ODD_SEG = re.compile(r"segm?\.nii(\.gz)?$", re.IGNORECASE)


def _is_junk(path: Path) -> bool:
    """macOS resource forks (``._name``) and other hidden files shipped in archives."""
    return path.name.startswith(".")


@dataclass(frozen=True)
class Case:
    """One case on disk.

    Attributes:
        case_id: the challenge's case id (folder name; MSD: file stem).
        layout: ``brats2020``, ``brats2021``, ``brats2023`` or ``msd``.
        images: canonical modality -> file, for the modalities found (MSD: all one 4D file).
        seg: segmentation file, or None (validation/test cases).
        warnings: things a user should know that do not stop the case being used.
        directory: the case folder (MSD: the task folder); None means the folder of its files.
    """

    case_id: str
    layout: str
    images: dict[str, Path]
    seg: Path | None = None
    warnings: tuple[str, ...] = ()
    directory: Path | None = None

    @property
    def label_scheme(self) -> str:
        return self.layout

    @property
    def missing(self) -> tuple[str, ...]:
        """Canonical modalities with no file."""
        return self.lacks(L.MODALITIES)

    def lacks(self, modalities: Sequence[str]) -> tuple[str, ...]:
        """Those of ``modalities`` (canonical names) with no file, in ``MODALITIES`` order."""
        return tuple(m for m in L.MODALITIES if m in modalities and m not in self.images)

    @property
    def folder(self) -> Path:
        """Folder holding the case's files."""
        if self.directory is not None:
            return self.directory
        if self.images:
            return next(iter(self.images.values())).parent
        return self.seg.parent if self.seg is not None else Path(".")

    def expected_file(self, modality: str) -> str:
        """Name the file of ``modality`` should have (``.nii[.gz]`` meaning either extension)."""
        if self.layout == "msd":
            return f"{self.case_id}.nii.gz"
        return f"{case_file_name(self.layout, self.case_id, modality, ext='')}.nii[.gz]"


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


class CaseError(GliosegError, ValueError):
    """A case that cannot be used; the message names the case, the file and the problem."""


def _find_nifti(folder: Path, stem: str, warnings: list[str] | None = None) -> Path | None:
    """``stem.nii.gz`` or ``stem.nii`` in ``folder`` (``.nii.gz`` first; both: a warning)."""
    found = [folder / f"{stem}{ext}" for ext in NIFTI_EXTS if (folder / f"{stem}{ext}").is_file()]
    if len(found) > 1 and warnings is not None:
        warnings.append(f"{folder.name}: both {found[0].name} and {found[1].name} exist; "
                        f"used {found[0].name}")
    return found[0] if found else None


def _brats_case(folder: Path, layout: Layout) -> Case:
    cid = folder.name
    warnings: list[str] = []
    images = {}
    for mod, suffix in layout.suffixes.items():
        p = _find_nifti(folder, f"{cid}{layout.sep}{suffix}", warnings)
        if p is not None:
            images[mod] = p
    seg = _find_nifti(folder, f"{cid}{layout.sep}{SEG_SUFFIX}", warnings)
    if seg is None:
        odd = sorted(
            p for p in folder.iterdir()
            if p.is_file() and not _is_junk(p) and _ODD_SEG.search(p.name)
        )
        if odd:
            seg = odd[0]
            warnings.append(
                f"{cid}: {seg.name}: segmentation file has a non-standard name "
                f"(expected {cid}{layout.sep}{SEG_SUFFIX}.nii[.gz]); used as the segmentation"
            )
            if len(odd) > 1:
                warnings.append(f"{cid}: several candidate segmentation files "
                                f"{[p.name for p in odd]}; used {seg.name}")
    return Case(cid, layout.name, images, seg, tuple(warnings), folder)


MSD_SPLITS: dict[str, str | None] = {"imagesTr": "labelsTr", "imagesTs": None}
"""MSD image folders and the folder of their labels."""


def _msd_cases(root: Path, splits: tuple[str, ...] = tuple(MSD_SPLITS)) -> list[Case]:
    cases = []
    for sub in splits:
        lab = MSD_SPLITS[sub]
        folder = root / sub
        if not folder.is_dir():
            continue
        for img in sorted(folder.glob("*.nii*")):
            if _is_junk(img) or not img.is_file():
                continue
            cid = img.name.split(".nii")[0]
            seg = root / lab / img.name if lab else None
            cases.append(
                Case(cid, "msd", {m: img for m in MSD_CHANNELS},
                     seg if seg is not None and seg.is_file() else None)
            )
    return cases


def _is_msd_task(folder: Path) -> bool:
    return (folder / "imagesTr").is_dir() or (folder / "imagesTs").is_dir()


def detect_layout(folder: Path) -> str | None:
    """Layout whose case-folder pattern ``folder``'s name matches, or None."""
    for name, layout in LAYOUTS.items():
        if re.fullmatch(layout.case_pattern, folder.name):
            return name
    return None


def _find_cases(root: Path) -> list[Case]:
    if _is_msd_task(root):
        return _msd_cases(root)
    if root.name in MSD_SPLITS and _is_msd_task(root.parent):  # e.g. Task01_BrainTumour/imagesTs
        return _msd_cases(root.parent, (root.name,))
    if (layout := detect_layout(root)) is not None:
        return [_brats_case(root, LAYOUTS[layout])]
    for depth_glob in ("*", "*/*"):
        cases: list[Case] = []
        for folder in sorted(p for p in root.glob(depth_glob) if p.is_dir()):
            if any(part.startswith(".") for part in folder.relative_to(root).parts):
                continue
            if (layout := detect_layout(folder)) is not None:
                cases.append(_brats_case(folder, LAYOUTS[layout]))
            elif depth_glob == "*" and _is_msd_task(folder):
                # An MSD archive unpacks into Task01_BrainTumour/.
                cases.extend(_msd_cases(folder))
        if cases:
            return cases
    return []


def discover(data_dir: str | Path) -> list[Case]:
    """All cases under ``data_dir``, sorted by id; the layout is detected automatically.

    ``data_dir`` may be one case folder, a folder of case folders, a folder holding such a
    folder (as the BraTS archives unpack), or an MSD task folder (``imagesTr``), or a folder
    holding one.

    Raises:
        CaseError: if the folder does not exist, holds no case of a known layout, or holds two
            cases with the same id.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CaseError(f"{root}: no such folder")
    cases = _find_cases(root)
    if not cases:
        loose = [p for p in root.glob("*.nii*") if not _is_junk(p)]
        hint = (f"; {len(loose)} NIfTI files lie directly in it, but each case must be in a "
                "folder named after its case id" if loose else "")
        raise CaseError(
            f"{root}: no cases found; expected BraTS 2020/2021/2023 case folders "
            "(e.g. BraTS20_Training_001/, BraTS2021_00000/, BraTS-GLI-00000-000/) or an MSD "
            f"task folder with imagesTr/{hint}"
        )
    seen: dict[str, Case] = {}
    for c in cases:
        if c.case_id in seen:
            raise CaseError(f"{root}: case id {c.case_id} found twice: {seen[c.case_id].folder} "
                            f"and {c.folder}; keep one copy")
        seen[c.case_id] = c
    return sorted(cases, key=lambda c: c.case_id)


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
    return [f"{case.case_id}: missing modality {m} (no {case.expected_file(m)} in {case.folder})"
            for m in case.lacks(modalities)]


def examine_case(case: Case, read_voxels: bool = True,
                 modalities: str | Sequence[str] | None = None) -> CaseSummary:
    """Geometry, label voxel counts, problems and warnings of one case.

    ``modalities`` (default all four) are the sequences to use: only those must exist and
    only their files are checked. Checks: missing modality, unreadable or truncated files, 4D where 3D is expected (MSD: 4D
    with 4 channels), shapes or affines that disagree between modalities and segmentation,
    NaN/inf voxels, label values outside the layout's scheme. Every check runs on every file,
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
            values outside the layout's scheme.
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


def case_file_name(layout: str, case_id: str, modality: str, ext: str = ".nii.gz") -> str:
    """File name of ``modality`` (canonical name, or ``seg``) of a case in a BraTS layout."""
    lay = LAYOUTS[layout]
    suffix = SEG_SUFFIX if modality == SEG_SUFFIX else lay.suffixes[modality]
    return f"{case_id}{lay.sep}{suffix}{ext}"


def case_id_for(layout: str, index: int, site: str = "GLI") -> str:
    """The published case id of case ``index`` in ``layout`` (used by the synthetic writer)."""
    if layout == "brats2020":
        return f"BraTS20_Training_{index:03d}"
    if layout == "brats2021":
        return f"BraTS2021_{index:05d}"
    if layout == "brats2023":
        return f"BraTS-{site}-{index:05d}-000"
    raise CaseError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
