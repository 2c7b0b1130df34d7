"""The only module that reads or writes NIfTI files (nibabel).

Writes are atomic: the file is written to a temporary name in the same folder, then renamed,
so an interrupted run never leaves a half-written volume.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glioseg.errors import GliosegError
from glioseg.io_atomic import atomic_path


class NiftiError(GliosegError, ValueError):
    """A NIfTI file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a NIfTI volume, enough to write a result on the same grid.

    Attributes:
        shape: full array shape as stored (3D, or 4D for MSD images).
        affine: 4x4 voxel-to-world (RAS mm) matrix, float64.
        spacing: voxel size in mm of the three spatial axes.
        orientation: axis codes, e.g. ``('L', 'P', 'S')`` for BraTS.
        dtype: stored data type name.
        sform_code, qform_code: the NIfTI codes of the two transforms (e.g. 1 scanner, 2
            aligned), written back unchanged on a result.
        qform: the 4x4 qform matrix (None: the same as ``affine``).
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: tuple[str, str, str]
    dtype: str
    sform_code: int = 1
    qform_code: int = 1
    qform: np.ndarray | None = None


def _header_of(img) -> VolumeHeader:
    import nibabel as nib

    affine = np.asarray(img.affine, dtype=np.float64)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return VolumeHeader(
        shape=tuple(int(s) for s in img.shape),
        affine=affine,
        spacing=zooms,  # type: ignore[arg-type]
        orientation=tuple(nib.aff2axcodes(affine)),  # type: ignore[arg-type]
        dtype=str(img.get_data_dtype()),
        sform_code=int(img.header["sform_code"]),
        qform_code=int(img.header["qform_code"]),
        qform=np.asarray(img.header.get_qform(), dtype=np.float64),
    )


def read_header(path: str | Path) -> VolumeHeader:
    """Geometry of a NIfTI file without reading its voxels."""
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise NiftiError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise NiftiError(f"{path}: not a readable NIfTI file ({exc})") from None
    return _header_of(img)


def load_volume(path: str | Path, dtype: type | None = np.float32) -> tuple[np.ndarray, VolumeHeader]:
    """Read a NIfTI file -> (array as stored on disk, its header).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: cast to this dtype (``None`` keeps the stored dtype after scaling).

    Raises:
        NiftiError: naming the file, for a missing, unreadable or truncated file.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise NiftiError(f"{path}: file not found") from None
    except (EOFError, OSError, zlib.error) as exc:
        raise NiftiError(f"{path}: truncated or corrupt file ({exc})") from None
    except Exception as exc:
        raise NiftiError(f"{path}: not a readable NIfTI file ({exc})") from None
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return np.asarray(data), _header_of(img)


def save_volume(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray,
    dtype: type | str | None = None,
    like: VolumeHeader | None = None,
) -> Path:
    """Write ``data`` as NIfTI atomically (temporary file in the same folder, then rename).

    Args:
        path: destination (``.nii`` or ``.nii.gz``); parent folders are created.
        data: array to write (3D or 4D).
        affine: 4x4 voxel-to-world matrix; sform and qform are both set to it (code 1) unless
            ``like`` is given.
        dtype: on-disk dtype (default: ``data.dtype``).
        like: the header of the input a result belongs to: its sform and qform (matrices and
            codes) are written instead, so the result has the input's exact header geometry.
    """
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    if like is None:
        img.set_sform(img.affine, code=1)
        img.set_qform(img.affine, code=1)
    else:
        img.set_sform(np.asarray(like.affine, dtype=np.float64), code=like.sform_code)
        qform = like.affine if like.qform is None else like.qform
        img.set_qform(np.asarray(qform, dtype=np.float64), code=like.qform_code)
    img.header.set_data_dtype(arr.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise NiftiError(f"{path}: a NIfTI file name must end in .nii or .nii.gz")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


# --------------------------------------------------------------------------- orientation
# An orientation is nibabel's ``ornt`` array: row i = (output axis of input axis i, +1/-1
# flip). Arrays here keep their channels first, ``(X, Y, Z)`` or ``(C, X, Y, Z)``.


def axis_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """The world direction each voxel axis points to, e.g. ``('L', 'P', 'S')`` (BraTS)."""
    import nibabel as nib

    return tuple(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))  # type: ignore[return-value]


def orientation_to(affine: np.ndarray, codes: tuple[str, ...] | list[str]) -> np.ndarray:
    """The ``ornt`` turning an array on ``affine``'s grid into one whose axes point to
    ``codes`` (axes permuted and flipped; oblique affines: the nearest axes)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    codes = tuple(str(c) for c in codes)
    try:
        target = axcodes2ornt(codes)
    except Exception as exc:  # nibabel raises ValueError or its own errors for bad codes
        raise NiftiError(f"orientation {codes}: not three nibabel axis codes ({exc})") from None
    if len(codes) != 3 or np.isnan(target).any():
        raise NiftiError(f"orientation {codes}: not three nibabel axis codes such as L, P, S")
    return ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), target)


def invert_orientation(ornt: np.ndarray) -> np.ndarray:
    """The ``ornt`` undoing ``ornt`` (``reorient(reorient(a, o), invert_orientation(o)) == a``)."""
    ornt = np.asarray(ornt, dtype=np.float64)
    inv = np.empty_like(ornt)
    for axis, (out_axis, flip) in enumerate(ornt):
        inv[int(out_axis)] = (axis, flip)
    return inv


def is_identity_orientation(ornt: np.ndarray) -> bool:
    ornt = np.asarray(ornt)
    return bool(np.array_equal(ornt[:, 0], np.arange(len(ornt))) and (ornt[:, 1] == 1).all())


def reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """``array`` ``(X, Y, Z)`` or ``(C, X, Y, Z)`` with its spatial axes permuted and flipped
    by ``ornt`` (a contiguous copy; the array itself when ``ornt`` is the identity)."""
    from nibabel.orientations import apply_orientation

    if is_identity_orientation(ornt):
        return array
    if array.ndim == 3:
        return np.ascontiguousarray(apply_orientation(array, ornt))
    if array.ndim == 4:
        moved = apply_orientation(np.moveaxis(array, 0, -1), ornt)
        return np.ascontiguousarray(np.moveaxis(moved, -1, 0))
    raise NiftiError(f"reorient: expected (X, Y, Z) or (C, X, Y, Z), got shape {array.shape}")


def reorient_spacing(spacing, ornt: np.ndarray) -> tuple[float, float, float]:
    """Voxel size per axis after ``reorient`` with ``ornt`` (the axes' sizes permuted)."""
    out = [0.0, 0.0, 0.0]
    for axis, (out_axis, _flip) in enumerate(np.asarray(ornt)):
        out[int(out_axis)] = float(spacing[axis])
    return tuple(out)  # type: ignore[return-value]
