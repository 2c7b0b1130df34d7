"""Patch sampling from the memory-mapped cache, with foreground oversampling (as nnU-Net).

A patch is a box of ``patch_size`` voxels copied out of a cached case. A random patch has its
origin drawn uniformly among the positions that keep it inside the volume; a foreground patch
is centred on a tumour voxel: a label present in the case is chosen at random (so a small
enhancing rim is drawn as often as a large edema), then one of its ``locations``. Where the
volume is smaller than the patch (or a centred patch crosses the border), the patch is padded
with 0 (background after z-scoring, label 0).

With a ``border`` margin (``data.border`` of the training config), a patch may also reach up to
``border x patch`` voxels beyond each face of the cropped volume, zero-filled, as the windows of
a sliding window over the *uncropped* volume do: a model trained only on patches inside the
brain's box has never seen a window that is half background, and segments worse where a
window's placement differs from training (see ``docs/architecture.md``, prediction).

Only the box is read from the memory map, so sampling costs a copy of the patch, not a load of
the case.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from glioseg.preprocess.cache import CachedCase


def origin_range(
    shape: Sequence[int], size: Sequence[int], border: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest patch origins (3,) int64, both inclusive.

    With ``border = 0`` the patch lies inside ``shape`` (where the volume is smaller than the
    patch, the volume lies inside the patch); ``border = b`` lets the patch reach
    ``round(b * size)`` voxels further beyond each face of the volume.
    """
    size = np.asarray(size, np.int64)
    margin = np.round(float(border) * size).astype(np.int64)
    lo = np.minimum(0, np.subtract(shape, size)) - margin
    hi = np.maximum(0, np.subtract(shape, size)) + margin
    return lo, hi


def random_origin(
    shape: Sequence[int], size: Sequence[int], rng: np.random.Generator, border: float = 0.0
) -> np.ndarray:
    """Uniform patch origin (3,) int64 in ``origin_range(shape, size, border)``."""
    lo, hi = origin_range(shape, size, border)
    return rng.integers(lo, hi + 1).astype(np.int64)


def centred_origin(
    centre: Sequence[int], shape: Sequence[int], size: Sequence[int], border: float = 0.0
) -> np.ndarray:
    """Origin (3,) int64 of a patch centred on voxel ``centre``, shifted into
    ``origin_range(shape, size, border)`` (inside the volume for ``border = 0``)."""
    size = np.asarray(size)
    origin = np.asarray(centre) - size // 2
    lo, hi = origin_range(shape, size, border)
    return np.clip(origin, lo, hi).astype(np.int64)


def extract_box(
    array: np.ndarray, origin: Sequence[int], size: Sequence[int], out: np.ndarray | None = None
) -> np.ndarray:
    """Copy of the box ``[origin, origin + size)`` of the last three axes of ``array``
    ``(..., X, Y, Z)``; voxels outside the array are 0.

    Args:
        out: where to write, ``(..., *size)``; any strides (a flipped or transposed view
            writes the box flipped or transposed, in the same single copy).

    Returns:
        ``out``, or a new C-contiguous ``(..., *size)`` array of ``array``'s dtype.
    """
    lead = array.shape[:-3]
    if out is None:
        out = np.empty((*lead, *size), dtype=array.dtype)
    elif out.shape != (*lead, *size):
        raise ValueError(f"out has shape {out.shape}, expected {(*lead, *size)}")
    src, dst = [], []
    inside = True
    for o, s, n in zip(origin, size, array.shape[-3:], strict=True):
        a, b = max(int(o), 0), min(int(o) + int(s), n)
        inside = inside and a == int(o) and b == int(o) + int(s)
        if b <= a:
            out[...] = 0  # box entirely outside the volume
            return out
        src.append(slice(a, b))
        dst.append(slice(a - int(o), b - int(o)))
    if not inside:
        out[...] = 0
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def foreground_centre(case: CachedCase, rng: np.random.Generator) -> np.ndarray | None:
    """A random tumour voxel (3,) of ``case``: a label chosen uniformly among those present,
    then one of its stored locations; None for a case without tumour."""
    present = [k for k, v in sorted(case.locations.items()) if len(v)]
    if not present:
        return None
    coords = case.locations[present[int(rng.integers(len(present)))]]
    return coords[int(rng.integers(len(coords)))]


def patch_origin(
    case: CachedCase, size: Sequence[int], rng: np.random.Generator, force_fg: bool,
    border: float = 0.0,
) -> np.ndarray:
    """Origin (3,) of a patch of ``size`` in ``case``: centred on a tumour voxel when
    ``force_fg`` (and the case has tumour), else uniform; ``border``: see ``origin_range``."""
    centre = foreground_centre(case, rng) if force_fg else None
    if centre is None:
        return random_origin(case.shape, size, rng, border)
    return centred_origin(centre, case.shape, size, border)


def draw_origins(
    cases: Sequence[CachedCase], size: Sequence[int], batch_size: int,
    rng: np.random.Generator, oversample_fg: float, border: float = 0.0,
) -> Iterator[tuple[CachedCase, np.ndarray]]:
    """The case and patch origin of each patch of a batch, drawn with ``rng`` in batch order
    (per patch: a case index, a foreground coin, then ``patch_origin``). The one draw of both
    batch paths (``glioseg.train.data.sample_batch``, ``glioseg.train.augment_batched.crop_boxes``),
    so one seed gives the same patches on the CPU and on the device."""
    for _ in range(int(batch_size)):
        case = cases[int(rng.integers(len(cases)))]
        force_fg = bool(rng.random() < oversample_fg)
        yield case, patch_origin(case, size, rng, force_fg, border)


def clipped_box(origin: np.ndarray, size: np.ndarray, extent: np.ndarray,
                shape: Sequence[int]) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """The box of ``extent`` voxels centred on the patch of ``size`` at ``origin``, clipped to
    a volume of ``shape`` (at least one voxel per axis): its slices, and the patch centre in
    the clipped box's coordinates (what a resampling around the centre needs)."""
    box = origin - (extent - size) // 2
    shape = np.asarray(shape)
    lo = np.clip(box, 0, shape - 1)
    hi = np.maximum(np.clip(box + extent, 0, shape), lo + 1)
    sl = tuple(slice(int(a), int(z)) for a, z in zip(lo, hi, strict=True))
    return sl, box + (extent - 1) / 2 - lo  # type: ignore[return-value]


def sample_patch(
    case: CachedCase,
    patch_size: Sequence[int],
    rng: np.random.Generator,
    force_fg: bool,
    border: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One patch of ``case``.

    Args:
        case: a cached case (arrays memory-mapped).
        patch_size: ``(px, py, pz)`` voxels.
        rng: the generator drawing the position.
        force_fg: centre the patch on a random tumour voxel (falls back to a uniform patch for
            a case without tumour).
        border: how far the patch may reach beyond the volume, a fraction of its size per
            face (``origin_range``).

    Returns:
        ``image`` ``(4, px, py, pz)`` float32 and ``labels`` ``(px, py, pz)`` uint8 (None for a
        case without labels); zero-padded outside the volume.
    """
    size = tuple(int(s) for s in patch_size)
    origin = patch_origin(case, size, rng, force_fg, border)
    labels = case.labels
    return (extract_box(case.image, origin, size),
            None if labels is None else extract_box(labels, origin, size))
