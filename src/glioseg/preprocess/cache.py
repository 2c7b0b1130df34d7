"""The preprocessing cache on disk: its format, the atomic writer of one case, the reader.

Layout (format ``glioseg-cache/1``)::

    CACHE/dataset.json            {"format", "modalities" (channel order, always MODALITIES),
                                   "selected_modalities", "spacing" (list or null),
                                   "labels" (the label scheme declared with ``preprocess
                                   --labels``, or null), "cases", "source" (the data folder),
                                   "sources" (every data folder of a cache built with
                                   ``preprocess --add``; first = source)}
    CACHE/<case_id>/image.npy     (4, X, Y, Z) float32 C-order, cropped, z-scored, 0 outside brain
    CACHE/<case_id>/labels.npy    (X, Y, Z) uint8 internal labels 0..3 (absent without a seg)
    CACHE/<case_id>/locations.npz keys "1", "2", "3": (N, 3) int32 voxel coords, N <= 10,000
    CACHE/<case_id>/meta.json     case_id, layout, label_scheme (of its segmentation file),
                                  original_affine, modalities (the channels holding data),
                                  source (its data folder) and the geometry of
                                  ``glioseg.preprocess.pure.preprocess_arrays``

A case folder is written under ``.<case_id>.tmp-*`` and renamed into place, so a case folder
that exists is complete; ``dataset.json`` is written last.

Fewer sequences (``glioseg preprocess --modalities t2,t1``): ``image.npy`` keeps its four
channels in ``MODALITIES`` order, and a sequence not used is stored as a channel of zeros
(its z-score entry is ``[0, 1]``). ``meta.json`` ``"modalities"`` lists, in ``MODALITIES``
order, the channels that hold data, and ``dataset.json`` ``"selected_modalities"`` the
sequences the cache was built with (a cache built before these keys existed holds all four).
One layout for every cache keeps training's selection of channels by name
(``data.modalities`` -> channel indices) unchanged; the zero channels cost disk, not
correctness, because ``require_modalities`` refuses a case whose channel holds no data
instead of feeding zeros to a model as if they were an image.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.data.labels import MODALITIES
from glioseg.errors import GliosegError
from glioseg.io_atomic import atomic_dir, write_json

CACHE_FORMAT = "glioseg-cache/1"
MAX_LOCATIONS = 10_000
"""Voxel coordinates kept per label for foreground sampling (as nnU-Net)."""
FOREGROUND_LABELS = (1, 2, 3)
CASE_FILES = ("image.npy", "meta.json", "locations.npz")


class CacheError(GliosegError, ValueError):
    """A folder that is not a valid cache; the message names the path and the problem."""


def sample_locations(
    labels: np.ndarray, rng: np.random.Generator, max_per_label: int = MAX_LOCATIONS
) -> dict[str, np.ndarray]:
    """Voxel coordinates of each foreground label, at most ``max_per_label`` drawn uniformly.

    Args:
        labels: ``(X, Y, Z)`` uint8 internal labels.
        rng: generator for the subsampling.

    Returns:
        ``{"1": (N1, 3) int32, "2": ..., "3": ...}`` (``(0, 3)`` for an absent label).
    """
    out = {}
    for value in FOREGROUND_LABELS:
        coords = np.argwhere(labels == value).astype(np.int32)
        if len(coords) > max_per_label:
            keep = np.sort(rng.choice(len(coords), size=max_per_label, replace=False))
            coords = coords[keep]
        out[str(value)] = coords.reshape(-1, 3)
    return out


def case_is_complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole cached case (every file, labels if meta says so)."""
    if not all((folder / name).is_file() for name in CASE_FILES):
        return False
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return not meta.get("has_labels") or (folder / "labels.npy").is_file()


def write_case(
    cache_dir: Path,
    case_id: str,
    image: np.ndarray,
    labels: np.ndarray | None,
    meta: dict[str, Any],
) -> Path:
    """Write one case into ``cache_dir/<case_id>`` atomically (temporary folder, then rename).

    Args:
        image: ``(4, X, Y, Z)`` float32 preprocessed image.
        labels: ``(X, Y, Z)`` uint8 internal labels, or None.
        meta: JSON-able metadata (``case_id``, ``layout``, ``original_affine``, geometry).

    Returns:
        The case folder. An existing folder of the same name is replaced.
    """
    final = cache_dir / case_id
    with atomic_dir(final) as tmp:
        np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
        if labels is not None:
            np.save(tmp / "labels.npy", np.ascontiguousarray(labels, dtype=np.uint8))
            # Seeded by the case id: the same case always keeps the same locations.
            rng = np.random.default_rng(zlib.crc32(case_id.encode()))
            locations = sample_locations(labels, rng)
        else:
            locations = {str(v): np.zeros((0, 3), np.int32) for v in FOREGROUND_LABELS}
        np.savez(tmp / "locations.npz", **locations)
        write_json(tmp / "meta.json", {**meta, "has_labels": labels is not None})
    return final


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of a ``.npy`` file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    return tuple(shape), np.dtype(dtype), bool(fortran)


class CachedCase:
    """One case of the cache. Arrays are memory-mapped on first access and the maps kept (a
    patch sampler reads the same case many times; opening the map each time cost ~7% of
    drawing a patch); pickling a ``CachedCase`` to a worker process sends only paths and
    metadata, never voxels or maps.

    Attributes:
        case_id: case id.
        path: the case folder.
        meta: the contents of ``meta.json``.
    """

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = Path(path)
        self.case_id: str = meta["case_id"]
        self.meta = meta
        self._locations: dict[int, np.ndarray] | None = None
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def _map(self, name: str) -> np.ndarray:
        arr = self._maps.get(name)
        if arr is None:
            arr = self._maps[name] = np.load(self.path / name, mmap_mode="r")
        return arr

    @property
    def image(self) -> np.ndarray:
        """``(4, X, Y, Z)`` float32, read-only memory map."""
        return self._map("image.npy")

    @property
    def labels(self) -> np.ndarray | None:
        """``(X, Y, Z)`` uint8 internal labels (read-only memory map), or None."""
        return self._map("labels.npy") if self.meta.get("has_labels") else None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The channels that hold data, in ``MODALITIES`` order (all four for older caches)."""
        return tuple(self.meta.get("modalities", MODALITIES))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)`` of the cached arrays."""
        return tuple(self.meta["shape"])  # type: ignore[return-value]

    @property
    def locations(self) -> dict[int, np.ndarray]:
        """Internal label -> ``(N, 3)`` int32 voxel coordinates (N may be 0)."""
        if self._locations is None:
            with np.load(self.path / "locations.npz") as z:
                self._locations = {int(k): z[k] for k in z.files}
        return self._locations

    def __repr__(self) -> str:
        return f"CachedCase({self.case_id!r}, shape={self.shape})"


def require_modalities(cases: Sequence[CachedCase], modalities: Sequence[str]) -> None:
    """Refuse cases whose cache holds no data for one of ``modalities``.

    Args:
        cases: cached cases (anything with ``case_id``, ``path`` and ``modalities``).
        modalities: canonical sequence names a consumer (training, a model) needs.

    Raises:
        CacheError: naming each case (up to 5) and the sequences it lacks.
    """
    lacking = [(c, [m for m in modalities if m not in getattr(c, "modalities", MODALITIES)])
               for c in cases]
    lacking = [(c, miss) for c, miss in lacking if miss]
    if not lacking:
        return
    lines = "; ".join(f"{c.case_id} has no {', '.join(miss)} (cached with "
                      f"{', '.join(getattr(c, 'modalities', MODALITIES))} in {c.path})" for c, miss in lacking[:5])
    more = f"; and {len(lacking) - 5} more cases" if len(lacking) > 5 else ""
    raise CacheError(f"{len(lacking)} cached cases lack a chosen sequence "
                     f"({', '.join(modalities)}): {lines}{more}; choose the sequences every case "
                     "has (data.modalities / --modalities) or leave these cases out")


def read_dataset_json(cache_dir: Path) -> dict[str, Any]:
    """The validated ``dataset.json`` of ``cache_dir``.

    Raises:
        CacheError: when the folder or file is missing, unreadable or of another format.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise CacheError(f"{cache_dir}: no such folder")
    path = cache_dir / "dataset.json"
    if not path.is_file():
        raise CacheError(f"{cache_dir}: not a glioseg cache (no dataset.json); build one with "
                         "`glioseg preprocess DATA_DIR -o CACHE_DIR`")
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise CacheError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT:
        got = info.get("format") if isinstance(info, dict) else None
        raise CacheError(f"{path}: format {got!r} is not {CACHE_FORMAT!r}")
    if list(info.get("modalities", [])) != list(MODALITIES):
        raise CacheError(f"{path}: modalities {info.get('modalities')} are not {list(MODALITIES)}")
    if not isinstance(info.get("cases"), list):
        raise CacheError(f"{path}: 'cases' must be a list of case ids")
    selected = info.get("selected_modalities", list(MODALITIES))
    if not isinstance(selected, list) or not selected or not set(selected) <= set(MODALITIES):
        raise CacheError(f"{path}: selected_modalities {selected!r} must be a non-empty list "
                         f"of {list(MODALITIES)}")
    return info


def _check_case(folder: Path) -> dict[str, Any]:
    cid = folder.name
    for name in CASE_FILES:
        if not (folder / name).is_file():
            raise CacheError(f"{folder}: case {cid}: missing {name}")
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except ValueError as exc:
        raise CacheError(f"{folder / 'meta.json'}: not valid JSON ({exc})") from None
    present = meta.get("modalities", list(MODALITIES))
    if not isinstance(present, list) or not set(present) <= set(MODALITIES):
        raise CacheError(f"{folder / 'meta.json'}: modalities {present!r} must be a list of "
                         f"{list(MODALITIES)}")
    shape = tuple(meta.get("shape", ()))
    try:
        ishape, idtype, ifortran = _npy_header(folder / "image.npy")
    except (OSError, ValueError) as exc:
        raise CacheError(f"{folder / 'image.npy'}: unreadable ({exc})") from None
    if ishape != (len(MODALITIES), *shape) or idtype != np.float32 or ifortran:
        raise CacheError(f"{folder / 'image.npy'}: expected C-order float32 "
                         f"{(len(MODALITIES), *shape)}, got {idtype} {ishape}")
    if meta.get("has_labels"):
        lpath = folder / "labels.npy"
        if not lpath.is_file():
            raise CacheError(f"{folder}: case {cid}: meta.json says it has labels; no labels.npy")
        lshape, ldtype, _ = _npy_header(lpath)
        if lshape != shape or ldtype != np.uint8:
            raise CacheError(f"{lpath}: expected uint8 {shape}, got {ldtype} {lshape}")
    return meta


def open_cache(cache_dir: str | Path, validate: bool = True) -> list[CachedCase]:
    """The cases of a cache, in the order of ``dataset.json``.

    Args:
        cache_dir: folder written by ``glioseg preprocess``.
        validate: check each case's files, array headers and shapes (headers only; fast).

    Raises:
        CacheError: naming the path and the problem, for a folder that is not a valid cache.
    """
    cache_dir = Path(cache_dir)
    info = read_dataset_json(cache_dir)
    cases = []
    for cid in info["cases"]:
        folder = cache_dir / cid
        if not folder.is_dir():
            raise CacheError(f"{cache_dir}: case {cid} listed in dataset.json has no folder")
        if validate:
            meta = _check_case(folder)
        else:
            meta = json.loads((folder / "meta.json").read_text())
        cases.append(CachedCase(folder, meta))
    return cases
