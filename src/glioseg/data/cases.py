"""Cases on disk: discovery of the published BraTS / MSD layouts, validation and loading.

Layouts (detected automatically, see ``LAYOUTS``):

- ``brats2020``: ``BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii[.gz]``;
  validation cases have no ``seg``; training case 355 ships its segmentation as
  ``W39_1998.09.19_Segm.nii`` (accepted with a warning). Labels 0/1/2/4.
- ``brats2021``: ``BraTS2021_00000/BraTS2021_00000_{flair,t1,t1ce,t2,seg}.nii.gz``. Labels 0/1/2/4.
- ``brats2023``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (also
  SSA, MEN, MET, PED and other challenge tags). Labels 0/1/2/3.
- ``msd``: Decathlon Task01_BrainTumour, ``imagesTr/BRATS_001.nii.gz`` 4D with channels
  FLAIR, T1w, T1gd, T2w, and ``labelsTr/BRATS_001.nii.gz`` (1 edema, 2 non-enhancing, 3 ET).

In memory every case becomes one canonical form (``CaseData``): image channels in the order
``labels.MODALITIES`` = (t1, t1ce, t2, flair) and internal labels (see ``labels``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glioseg.data import labels as L
from glioseg.data.nifti import NiftiError, VolumeHeader, load_volume, read_header


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


@dataclass(frozen=True)
class Case:
    """One case on disk.

    Attributes:
        case_id: the challenge's case id (folder name; MSD: file stem).
        layout: ``brats2020``, ``brats2021``, ``brats2023`` or ``msd``.
        images: canonical modality -> file, for the modalities found (MSD: all one 4D file).
        seg: segmentation file, or None (validation/test cases).
        warnings: things a user should know that do not stop the case being used.
    """

    case_id: str
    layout: str
    images: dict[str, Path]
    seg: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def label_scheme(self) -> str:
        return self.layout

    @property
    def missing(self) -> tuple[str, ...]:
        """Canonical modalities with no file."""
        return tuple(m for m in L.MODALITIES if m not in self.images)

    @property
    def folder(self) -> Path:
        return next(iter(self.images.values())).parent if self.images else Path(".")


@dataclass
class CaseData:
    """A case loaded into the canonical in-memory form.

    Attributes:
        case_id: case id.
        image: ``(4, X, Y, Z)`` float32, channels in ``MODALITIES`` order, axes as stored.
        labels: ``(X, Y, Z)`` uint8 internal labels, or None.
        header: geometry of the image grid (3D shape).
    """

    case_id: str
    image: np.ndarray
    labels: np.ndarray | None
    header: VolumeHeader
    modalities: tuple[str, ...] = field(default=L.MODALITIES)


class CaseError(ValueError):
    """A case that cannot be used; the message names the case, the file and the problem."""


def _find_nifti(folder: Path, stem: str) -> Path | None:
    for ext in NIFTI_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _brats_case(folder: Path, layout: Layout) -> Case:
    cid = folder.name
    images = {}
    for mod, suffix in layout.suffixes.items():
        p = _find_nifti(folder, f"{cid}{layout.sep}{suffix}")
        if p is not None:
            images[mod] = p
    seg = _find_nifti(folder, f"{cid}{layout.sep}{SEG_SUFFIX}")
    warnings: list[str] = []
    if seg is None:
        # BraTS 2020 training case 355 ships its segmentation under a scanner file name.
        odd = sorted(p for p in folder.iterdir() if re.search(r"segm?\.nii(\.gz)?$", p.name, re.I))
        if odd:
            seg = odd[0]
            warnings.append(f"segmentation file has a non-standard name: {seg.name}")
    return Case(cid, layout.name, images, seg, tuple(warnings))


def _msd_cases(root: Path) -> list[Case]:
    cases = []
    for sub, lab in (("imagesTr", "labelsTr"), ("imagesTs", None)):
        for img in sorted((root / sub).glob("*.nii*")) if (root / sub).is_dir() else []:
            if img.name.startswith("._"):  # macOS resource forks shipped in the MSD archive
                continue
            cid = img.name.split(".nii")[0]
            seg = root / lab / img.name if lab else None
            cases.append(
                Case(cid, "msd", {m: img for m in MSD_CHANNELS}, seg if seg and seg.is_file() else None)
            )
    return cases


def detect_layout(folder: Path) -> str | None:
    """Layout whose case-folder pattern ``folder``'s name matches, or None."""
    for name, layout in LAYOUTS.items():
        if re.fullmatch(layout.case_pattern, folder.name):
            return name
    return None


def discover(data_dir: str | Path) -> list[Case]:
    """All cases under ``data_dir``, sorted by id; the layout is detected automatically.

    ``data_dir`` may be one case folder, a folder of case folders, a folder holding such a
    folder (as the BraTS archives unpack), or an MSD task folder (``imagesTr``).

    Raises:
        CaseError: if the folder does not exist or holds no case of a known layout.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise CaseError(f"{root}: no such folder")
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        cases = _msd_cases(root)
    elif (layout := detect_layout(root)) is not None:
        cases = [_brats_case(root, LAYOUTS[layout])]
    else:
        cases = []
        for depth_glob in ("*", "*/*"):
            for folder in sorted(p for p in root.glob(depth_glob) if p.is_dir()):
                if (layout := detect_layout(folder)) is not None:
                    cases.append(_brats_case(folder, LAYOUTS[layout]))
            if cases:
                break
    if not cases:
        raise CaseError(
            f"{root}: no cases found; expected BraTS 2020/2021/2023 case folders "
            "(e.g. BraTS20_Training_001/, BraTS2021_00000/, BraTS-GLI-00000-000/) or an MSD "
            "task folder with imagesTr/"
        )
    return sorted(cases, key=lambda c: c.case_id)


def _read_image(case: Case, mod: str) -> tuple[np.ndarray, VolumeHeader]:
    path = case.images[mod]
    data, header = load_volume(path, dtype=np.float32)
    if case.layout == "msd":
        if data.ndim != 4 or data.shape[3] != len(MSD_CHANNELS):
            raise CaseError(f"{case.case_id}: {path.name}: expected a 4D image with 4 channels "
                            f"(FLAIR, T1w, T1gd, T2w), got shape {data.shape}")
        data = data[..., MSD_CHANNELS.index(mod)]
    elif data.ndim != 3:
        raise CaseError(f"{case.case_id}: {path.name}: expected a 3D volume, got shape {data.shape}")
    return data, header


def check_case(case: Case, read_voxels: bool = True) -> list[str]:
    """Problems that make ``case`` unusable, each naming the case and the file; [] if none.

    Checks: missing modality, unreadable or truncated files, 4D where 3D is expected, shapes
    or affines that disagree between modalities and segmentation, NaN/inf voxels, label values
    outside the layout's scheme. Every check runs, so one problem never hides another.
    """
    problems = [f"{case.case_id}: missing modality {m}" for m in case.missing]
    ref: tuple[str, tuple[int, ...], np.ndarray] | None = None
    files = [(m, p) for m, p in case.images.items()]
    if case.layout == "msd" and files:
        files = [("image", files[0][1])]
    if case.seg is not None:
        files.append(("seg", case.seg))
    for what, path in files:
        try:
            data, header = load_volume(path, dtype=None) if read_voxels else (None, read_header(path))
        except NiftiError as exc:
            problems.append(f"{case.case_id}: {exc}")
            continue
        shape = header.shape
        expect_4d = case.layout == "msd" and what == "image"
        if expect_4d and (len(shape) != 4 or shape[3] != 4):
            problems.append(f"{case.case_id}: {path.name}: expected 4D with 4 channels, got {shape}")
            continue
        if not expect_4d and len(shape) != 3:
            problems.append(f"{case.case_id}: {path.name}: expected a 3D volume, got shape {shape}")
            continue
        grid = shape[:3]
        if ref is None:
            ref = (path.name, grid, header.affine)
        else:
            if grid != ref[1]:
                problems.append(f"{case.case_id}: {path.name}: shape {grid} differs from "
                                f"{ref[0]} {ref[1]}")
            elif not np.allclose(header.affine, ref[2], atol=1e-3):
                problems.append(f"{case.case_id}: {path.name}: affine differs from {ref[0]}")
        if data is None:
            continue
        if what != "seg" and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            n = int((~np.isfinite(data)).sum())
            problems.append(f"{case.case_id}: {path.name}: {n} NaN/inf voxels")
        if what == "seg":
            if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
                problems.append(f"{case.case_id}: {path.name}: NaN/inf in segmentation")
                continue
            bad = L.unexpected_values(data, case.label_scheme)
            if bad:
                problems.append(f"{case.case_id}: {path.name}: unexpected label values {bad} "
                                f"for the {case.label_scheme} scheme "
                                f"(allowed {list(L.get_scheme(case.label_scheme).allowed)})")
    return problems


def load_case(case: Case, with_labels: bool = True) -> CaseData:
    """Read a case into the canonical form (channels t1, t1ce, t2, flair; internal labels).

    Raises:
        CaseError: naming the case and file, for any problem ``check_case`` would report.
    """
    if case.missing:
        raise CaseError(f"{case.case_id}: missing modality {', '.join(case.missing)}")
    try:
        vols = [_read_image(case, m) for m in L.MODALITIES]
        labels = None
        if with_labels and case.seg is not None:
            seg, seg_header = load_volume(case.seg, dtype=None)
            if seg.shape != vols[0][0].shape:
                raise CaseError(f"{case.case_id}: {case.seg.name}: shape {seg.shape} differs "
                                f"from the images {vols[0][0].shape}")
            labels = L.to_internal(np.rint(seg).astype(np.int64), case.label_scheme)
    except NiftiError as exc:
        raise CaseError(f"{case.case_id}: {exc}") from None
    except L.LabelError as exc:
        raise CaseError(f"{case.case_id}: {case.seg.name if case.seg else ''}: {exc}") from None
    shapes = {v.shape for v, _ in vols}
    if len(shapes) != 1:
        raise CaseError(f"{case.case_id}: modalities have different shapes {sorted(shapes)}")
    image = np.stack([v for v, _ in vols]).astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise CaseError(f"{case.case_id}: NaN/inf voxels in the images")
    header = vols[0][1]
    if case.layout == "msd":
        header = VolumeHeader(header.shape[:3], header.affine, header.spacing,
                              header.orientation, header.dtype)
    return CaseData(case.case_id, image, labels, header)


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
    raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
