"""The published folder layouts of BraTS / MSD cases: their file names and their discovery.

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

``discover`` finds the cases (``Case``: the files of one case) under a folder; reading and
checking them is ``glioseg.data.cases``, which also re-exports the names here.

A case's label scheme is its layout's, unless the segmentations of the folder are declared to
use another (``discover(root, label_scheme="brats2023")``, the CLI's ``--labels``): BraTS 2021
cases converted by nnU-Net keep their file names but hold ET as 3, not 4.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from glioseg.data import labels as L
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
        unrecognised: names of the NIfTI files in a BraTS case folder that are none of the
            case's files (a misspelt sequence, another case's file, a stray copy); each case
            with some also carries a warning naming them.
        declared_labels: the label scheme its segmentation was declared to use (``--labels``),
            overriding the layout's; None: the layout's.
    """

    case_id: str
    layout: str
    images: dict[str, Path]
    seg: Path | None = None
    warnings: tuple[str, ...] = ()
    directory: Path | None = None
    unrecognised: tuple[str, ...] = ()
    declared_labels: str | None = None

    @property
    def label_scheme(self) -> str:
        """Label scheme of the segmentation file: the declared one, else the layout's."""
        return self.declared_labels or self.layout

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
    unrecognised = _unrecognised(folder, layout, {p.name for p in images.values()}
                                 | ({seg.name} if seg is not None else set()))
    if unrecognised:
        names = ",".join([*layout.suffixes.values(), SEG_SUFFIX])
        warnings.append(f"{cid}: unrecognised files in the case folder: "
                        f"{', '.join(unrecognised)} (expected {cid}{layout.sep}{{{names}}}"
                        ".nii.gz); rename or remove them")
    return Case(cid, layout.name, images, seg, tuple(warnings), folder, tuple(unrecognised))


def _unrecognised(folder: Path, layout: Layout, used: set[str]) -> list[str]:
    """NIfTI files in a BraTS case folder that are none of its files (sorted names)."""
    cid = folder.name
    known = {f"{cid}{layout.sep}{suffix}{ext}" for suffix in [*layout.suffixes.values(),
                                                               SEG_SUFFIX]
             for ext in NIFTI_EXTS}  # both extensions of one file: warned by _find_nifti
    return sorted(p.name for p in folder.iterdir()
                  if p.name.endswith(NIFTI_EXTS) and not _is_junk(p) and p.is_file()
                  and p.name not in used and p.name not in known)


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


def discover(data_dir: str | Path, label_scheme: str | None = None) -> list[Case]:
    """All cases under ``data_dir``, sorted by id; the layout is detected automatically.

    ``data_dir`` may be one case folder, a folder of case folders, a folder holding such a
    folder (as the BraTS archives unpack), or an MSD task folder (``imagesTr``), or a folder
    holding one. ``label_scheme`` (``brats2020``, ``brats2021``, ``brats2023``, ``msd``)
    declares the label scheme of every segmentation found, overriding the layouts' (e.g.
    BraTS 2021 file names with nnU-Net's 0/1/2/3 labels: ``brats2023``); None: each case's
    layout's.

    Raises:
        CaseError: if the folder does not exist, holds no case of a known layout, or holds two
            cases with the same id.
        LabelError: for an unknown ``label_scheme``.
    """
    if label_scheme is not None:
        L.get_scheme(label_scheme)  # an unknown name fails before any folder is read
    root = Path(data_dir)
    if root.is_file():
        raise CaseError(f"{root} is a file; give the data folder or one case folder (e.g. "
                        f"{root.parent})")
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
    if label_scheme is not None:
        cases = [replace(c, declared_labels=label_scheme) for c in cases]
    return sorted(cases, key=lambda c: c.case_id)


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
