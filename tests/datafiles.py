"""Write tiny cases in the published BraTS / MSD layouts, with chosen contents, for tests.

Every writer goes through ``glioseg.data.nifti.save_volume``. Defaults make each modality
file distinguishable from every other one and from a transposed copy of itself
(``modality_volume``), and put every file label of the layout's scheme in a known place
(``example_seg``), so a wrong channel order, axis order or label mapping shows in a test.

Usage::

    from datafiles import write_brats_case, write_msd_case
    folder = write_brats_case(tmp_path, "brats2021", index=3)
    image_file = write_msd_case(tmp_path / "Task01_BrainTumour", "BRATS_001")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from glioseg.data.layouts import case_file_name
from glioseg.data.nifti import save_volume

SHAPE: tuple[int, int, int] = (6, 5, 4)
"""Default grid: three different sizes, so a transposed array cannot match."""

AFFINE: np.ndarray = np.array(
    [[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]]
)
"""BraTS-like voxel-to-world matrix (1 mm, axis codes L, P, S)."""

MODALITY_CODE: dict[str, int] = {"t1": 1, "t1ce": 2, "t2": 3, "flair": 4}
"""Thousands digit of each canonical modality's default voxel values."""

FILE_LABELS: dict[str, tuple[int, ...]] = {
    "brats2020": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "msd": (0, 1, 2, 3),
}
"""Label values found in the segmentation files of each layout (as published)."""

MSD_ORDER: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
"""Channels of an MSD Task01 image as published (FLAIR, T1w, T1gd, T2w)."""

BRATS2023_SUFFIX: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def pattern(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """``(X, Y, Z)`` float32 0, 1, 2, ... in C order: voxel ``(x, y, z)`` holds its flat index."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def modality_volume(modality: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """``(X, Y, Z)`` float32 ``1000 * MODALITY_CODE[modality] + flat index``."""
    return 1000.0 * MODALITY_CODE[modality] + pattern(shape)


def example_seg(layout: str, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """``(X, Y, Z)`` uint8 file labels: slab ``x == i`` holds the i-th value of ``FILE_LABELS``.

    Needs ``shape[0] >= 4``; the remaining slabs are background.
    """
    seg = np.zeros(shape, dtype=np.uint8)
    for i, v in enumerate(FILE_LABELS[layout]):
        seg[i] = v
    return seg


def brats_case_id(layout: str, index: int = 1, site: str = "GLI", split: str = "Training") -> str:
    """Published case id: ``BraTS20_{split}_001``, ``BraTS2021_00001``, ``BraTS-{site}-00001-000``."""
    if layout == "brats2020":
        return f"BraTS20_{split}_{index:03d}"
    if layout == "brats2021":
        return f"BraTS2021_{index:05d}"
    if layout == "brats2023":
        return f"BraTS-{site}-{index:05d}-000"
    raise ValueError(f"not a BraTS folder layout: {layout}")


def write_brats_case(
    root: str | Path,
    layout: str,
    index: int = 1,
    *,
    case_id: str | None = None,
    site: str = "GLI",
    split: str = "Training",
    shape: tuple[int, ...] = SHAPE,
    images: Mapping[str, np.ndarray] | None = None,
    seg: np.ndarray | bool = True,
    ext: str = ".nii.gz",
    affine: np.ndarray = AFFINE,
    affines: Mapping[str, np.ndarray] | None = None,
    skip: Iterable[str] = (),
    image_dtype: type | str = np.float32,
    seg_dtype: type | str = np.uint8,
    seg_name: str | None = None,
) -> Path:
    """Write one case folder ``root/<case_id>/`` in a BraTS layout; returns the case folder.

    Args:
        root: parent folder (created).
        layout: ``brats2020``, ``brats2021`` or ``brats2023``.
        index, site, split: make the case id (see ``brats_case_id``) unless ``case_id`` is given.
        shape: grid of the default volumes.
        images: canonical modality -> array, replacing ``modality_volume`` for those given.
        seg: True writes ``example_seg``; False writes none; an array is written as is.
        ext: ``.nii.gz`` or ``.nii``.
        affine: affine of every file; ``affines`` overrides it per modality or ``seg``.
        skip: canonical modalities not to write.
        image_dtype, seg_dtype: on-disk dtypes.
        seg_name: file name of the segmentation instead of the published one.
    """
    cid = case_id or brats_case_id(layout, index, site, split)
    folder = Path(root) / cid
    folder.mkdir(parents=True, exist_ok=True)
    images = dict(images or {})
    affines = dict(affines or {})
    for mod in ("t1", "t1ce", "t2", "flair"):
        if mod in skip:
            continue
        data = images.get(mod, modality_volume(mod, shape))
        save_volume(folder / case_file_name(layout, cid, mod, ext), data,
                    affines.get(mod, affine), dtype=image_dtype)
    if seg is not False:
        data = example_seg(layout, shape) if seg is True else np.asarray(seg)
        name = seg_name or case_file_name(layout, cid, "seg", ext)
        save_volume(folder / name, data, affines.get("seg", affine), dtype=seg_dtype)
    return folder


def msd_image(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """``(X, Y, Z, 4)`` float32: channel c (FLAIR, T1w, T1gd, T2w) = ``1000 * (c + 1) + index``."""
    return np.stack([1000.0 * (c + 1) + pattern(shape) for c in range(4)], axis=-1)


def write_msd_case(
    task_dir: str | Path,
    case_id: str = "BRATS_001",
    *,
    shape: tuple[int, ...] = SHAPE,
    image: np.ndarray | None = None,
    seg: np.ndarray | bool = True,
    split: str = "Tr",
    junk: bool = True,
    affine: np.ndarray = AFFINE,
    seg_affine: np.ndarray | None = None,
) -> Path:
    """Write one MSD Task01 case (``imagesTr/<id>.nii.gz`` 4D, ``labelsTr/<id>.nii.gz``).

    Args:
        task_dir: the task folder, e.g. ``.../Task01_BrainTumour`` (created).
        image: ``(X, Y, Z, 4)`` array; default ``msd_image(shape)``.
        seg: True writes ``example_seg('msd')``; False none; an array is written as is.
        split: ``Tr`` (images + labels) or ``Ts`` (images only).
        junk: also write the macOS ``._<id>.nii.gz`` resource-fork files the archive ships
            (garbage bytes, not NIfTI).
    Returns:
        the image file.
    """
    task_dir = Path(task_dir)
    img_dir = task_dir / f"images{split}"
    name = f"{case_id}.nii.gz"
    data = msd_image(shape) if image is None else np.asarray(image)
    path = save_volume(img_dir / name, data, affine, dtype=np.float32)
    if split == "Tr" and seg is not False:
        lab = example_seg("msd", shape) if seg is True else np.asarray(seg)
        save_volume(task_dir / "labelsTr" / name, lab,
                    affine if seg_affine is None else seg_affine, dtype=np.uint8)
    if junk:
        for sub in (f"images{split}", "labelsTr" if split == "Tr" else None):
            if sub and (task_dir / sub).is_dir():
                (task_dir / sub / f"._{name}").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    return path


def truncate(path: str | Path, fraction: float = 0.5) -> Path:
    """Cut a file to ``fraction`` of its bytes (a download that stopped half way)."""
    path = Path(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * fraction)])
    return path


def garbage(path: str | Path, n_bytes: int = 2000, seed: int = 0) -> Path:
    """Replace a file's content with random bytes (not NIfTI, not gzip)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def tiny_brats2021_case(root: Path, case_id: str, seed: int = 0) -> Path:
    """A 30 x 26 x 18 four-sequence BraTS 2021 case (identity affine) with an edema block,
    for end-to-end runs of predict / evaluate / report that need a real case folder."""
    import nibabel as nib

    from glioseg.data.labels import MODALITIES

    rng = np.random.default_rng(seed)
    folder = Path(root) / case_id
    folder.mkdir(parents=True)
    brain = np.zeros((30, 26, 18), bool)
    brain[2:28, 3:25, 1:17] = True
    for m in MODALITIES:
        vol = (rng.uniform(1, 2, brain.shape) * brain).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / f"{case_id}_{m}.nii.gz")
    seg = np.zeros(brain.shape, np.uint8)
    seg[10:20, 10:20, 5:12] = 2
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / f"{case_id}_seg.nii.gz")
    return folder


# ------------------------------------------------------------------ files written by hand
# Tables written out from the challenges' documentation, not taken from the code under test.

# Canonical channel order, written out: the order every array of the project uses.
CANONICAL = ("t1", "t1ce", "t2", "flair")

# File suffix of each channel, in canonical order, as the challenges publish them.
PUBLISHED_SUFFIX = {
    "brats2020": ("_t1", "_t1ce", "_t2", "_flair"),
    "brats2021": ("_t1", "_t1ce", "_t2", "_flair"),
    "brats2023": ("-t1n", "-t1c", "-t2w", "-t2f"),
}
PUBLISHED_SEG_SUFFIX = {"brats2020": "_seg", "brats2021": "_seg", "brats2023": "-seg"}

BRATS_CASES = [  # (layout, case id, extension): one of each kind the challenges publish
    ("brats2020", "BraTS20_Training_001", ".nii"),
    ("brats2020", "BraTS20_Training_002", ".nii.gz"),
    ("brats2021", "BraTS2021_00000", ".nii.gz"),
    ("brats2023", "BraTS-GLI-00000-000", ".nii.gz"),
    ("brats2023", "BraTS-SSA-00002-000", ".nii.gz"),
    ("brats2023", "BraTS-MEN-00004-000", ".nii.gz"),
    ("brats2023", "BraTS-MET-00001-000", ".nii.gz"),
    ("brats2023", "BraTS-PED-00012-000", ".nii.gz"),
]


def write_by_hand(folder, layout, cid, ext, shape=SHAPE, seg=None):
    """Case ``cid`` of ``layout`` under ``folder``, named from ``PUBLISHED_SUFFIX`` (not from
    ``case_file_name``): each file filled with 1000 * (its position there + 1) + index."""
    for k, suffix in enumerate(PUBLISHED_SUFFIX[layout]):
        save_volume(folder / cid / f"{cid}{suffix}{ext}", 1000.0 * (k + 1) + pattern(shape),
                    AFFINE, dtype=np.float32)
    if seg is not None:
        save_volume(folder / cid / f"{cid}{PUBLISHED_SEG_SUFFIX[layout]}{ext}", seg, AFFINE,
                    dtype=np.uint8)
