"""The only module that reads or writes NIfTI files (nibabel).

Writes are atomic: the file is written to a temporary name in the same folder, then renamed,
so an interrupted run never leaves a half-written volume.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glioseg.io_atomic import atomic_path


class NiftiError(ValueError):
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
