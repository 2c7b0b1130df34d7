"""Figures: the four contrasts of a case with its segmentation overlay (``glioseg show``).

Slices are shown in radiological convention (patient's right on the viewer's left), upright
(anterior up on axial slices, superior up on coronal and sagittal slices, anterior to the left
on sagittal slices), whatever the voxel order on disk: the array is first brought to RAS axis
order using the affine's axis codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from glioseg.data import labels as L
from glioseg.errors import GliosegError
from glioseg.report.savefig import save_figure

if TYPE_CHECKING:
    from glioseg.data.cases import CaseData
    from glioseg.data.layouts import Case
    from glioseg.data.nifti import VolumeHeader

VIEWS: tuple[str, ...] = ("axial", "coronal", "sagittal")
LABEL_COLOURS: dict[int, tuple[str, str]] = {
    L.NCR: ("NCR / necrotic core", "#ff3030"),
    L.ED: ("ED / edema", "#2ee62e"),
    L.ET: ("ET / enhancing tumour", "#ffd400"),
}
MODALITY_TITLES = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}
_AXIS_OF = {"L": (0, -1), "R": (0, 1), "P": (1, -1), "A": (1, 1), "I": (2, -1), "S": (2, 1)}


class FigureError(GliosegError, ValueError):
    """A figure that cannot be drawn (bad view name, prediction of another shape, ...)."""


def to_ras(volume: np.ndarray, orientation: tuple[str, ...]) -> np.ndarray:
    """Reorder and flip the last three axes of ``volume`` (``(..., X, Y, Z)``) to RAS.

    ``orientation``: axis codes of the stored array, e.g. ``('L', 'P', 'S')`` for BraTS.
    """
    lead = volume.ndim - 3
    axes = [_AXIS_OF[c][0] for c in orientation]
    if sorted(axes) != [0, 1, 2]:
        raise FigureError(f"cannot interpret axis codes {orientation}")
    perm = [axes.index(k) for k in range(3)]
    out = np.transpose(volume, list(range(lead)) + [lead + p for p in perm])
    for k in range(3):
        if _AXIS_OF[orientation[perm[k]]][1] < 0:
            out = np.flip(out, axis=lead + k)
    return out


def view_slice(volume: np.ndarray, view: str, index: int) -> np.ndarray:
    """A 2D slice of a RAS volume ``(X, Y, Z)`` oriented for ``imshow(origin='upper')``.

    Rows run top to bottom, columns left to right on screen: axial = anterior up, patient
    right on the left; coronal = superior up, right on the left; sagittal = superior up,
    anterior on the left.
    """
    if view == "axial":
        sl = volume[:, :, index]  # (x, y)
        return sl.T[::-1, ::-1]  # rows: y descending (A up); cols: x descending (R left)
    if view == "coronal":
        sl = volume[:, index, :]  # (x, z)
        return sl.T[::-1, ::-1]
    if view == "sagittal":
        sl = volume[index, :, :]  # (y, z)
        return sl.T[::-1, ::-1]  # cols: y descending (A left)
    raise FigureError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")


def _aspect(spacing: tuple[float, float, float], view: str) -> float:
    """Pixel aspect (height / width) of ``view`` for RAS spacing."""
    sx, sy, sz = spacing
    return {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}[view]


_VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


def best_slice(mask: np.ndarray | None, brain: np.ndarray, view: str) -> int:
    """Slice index (RAS) along ``view``'s axis with the largest ``mask`` area; the middle of
    the brain when the mask is empty or absent."""
    axis = _VIEW_AXIS[view]
    other = tuple(a for a in range(3) if a != axis)
    if mask is not None and mask.any():
        return int(np.argmax(mask.sum(axis=other)))
    prof = brain.sum(axis=other)
    nz = np.flatnonzero(prof)
    return int((nz[0] + nz[-1]) // 2) if nz.size else volume_middle(brain, axis)


def volume_middle(volume: np.ndarray, axis: int) -> int:
    return volume.shape[axis] // 2


def _brain_crop(brain: np.ndarray, margin: int) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Slices of the brain's bounding box grown by ``margin``, and their start offsets."""
    idx = np.argwhere(brain)
    if idx.size == 0:
        return tuple(slice(0, n) for n in brain.shape), (0, 0, 0)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    return (tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)),
            tuple(int(a) for a in lo))


def _overlay_rgba(labels2d: np.ndarray, alpha: float) -> np.ndarray:
    from matplotlib.colors import to_rgb

    rgba = np.zeros((*labels2d.shape, 4), np.float32)
    for value, (_, colour) in LABEL_COLOURS.items():
        m = labels2d == value
        rgba[m, :3] = to_rgb(colour)
        rgba[m, 3] = alpha
    return rgba


def _window(volume: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    vals = volume[brain] if brain.any() else volume.ravel()
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def _load_pred(path: Path, scheme: str, ref_header: VolumeHeader, ref_file: Path) -> np.ndarray:
    """A predicted segmentation file -> internal labels ``(X, Y, Z)`` uint8, read in ``scheme``.

    The prediction must lie on the case's grid (shape and affine of ``ref_header``, read from
    ``ref_file``) and hold whole label values of ``scheme``. Anything else is an error naming
    the file, never a guess: the BraTS schemes share 1 and 2, so a file in the other scheme
    would often read without complaint and show the wrong regions (a 4 in a 2023-scheme file
    may be a resection cavity, never ET), and a fractional value is a probability map or a
    resampled file, whose rounding would invent labels. ``glioseg evaluate`` refuses the same
    files; ``--pred-labels`` names another scheme on purpose.
    """
    from glioseg.data.cases import AFFINE_ATOL
    from glioseg.data.nifti import load_volume

    data, header = load_volume(path, dtype=None)
    if data.shape != tuple(ref_header.shape[:3]):
        raise FigureError(f"{path}: prediction shape {data.shape} differs from the case's "
                          f"{tuple(ref_header.shape[:3])} ({ref_file})")
    if not np.allclose(header.affine, ref_header.affine, rtol=0, atol=AFFINE_ATOL):
        raise FigureError(
            f"{path}: prediction affine differs from the case's {ref_file} (not on the same "
            f"grid):\n{np.round(header.affine, 3)}\nvs\n{np.round(ref_header.affine, 3)}")
    try:
        data = L.integer_labels(data)
    except L.LabelError as exc:
        raise FigureError(f"{path}: {exc}") from None
    bad = L.unexpected_values(data, scheme)
    if bad:
        allowed = L.get_scheme(scheme).allowed
        raise FigureError(
            f"{path}: label values {bad} are not allowed in the {scheme} scheme (allowed: "
            f"{', '.join(map(str, allowed))}); write the prediction in the case's scheme, or "
            "name its own with --pred-labels")
    return L.to_internal(data, scheme)


class _Panels(NamedTuple):
    """A case's volumes in RAS, cropped to the brain, with what the panels need to draw them."""

    image: np.ndarray  # (4, X, Y, Z)
    brain: np.ndarray
    labels: np.ndarray | None
    pred: np.ndarray | None
    offset: tuple[int, ...]  # start of the crop in the uncropped RAS volume
    spacing: tuple[float, ...]  # RAS voxel spacing


def _checked_views(views: tuple[str, ...]) -> tuple[str, ...]:
    """``views`` trimmed and lower-cased; an empty list or an unknown view is an error."""
    views = tuple(v.strip().lower() for v in views if v.strip())
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise FigureError(f"unknown view(s) {bad or list(views)}; choose from {', '.join(VIEWS)}")
    return views


def _read_case(case_dir: str | Path, labels: str | None = None) -> tuple[Case, CaseData]:
    """The one case in ``case_dir`` and its loaded data (its segmentation read in the declared
    label scheme ``labels``, else its layout's); any other number of cases is an error."""
    from glioseg.data.cases import discover, load_case

    cases = discover(case_dir, labels)
    if len(cases) != 1:
        raise FigureError(f"{case_dir}: expected one case folder, found {len(cases)} cases")
    case = cases[0]
    return case, load_case(case)


def _ras_volumes(
    case: Case, data: CaseData, pred: str | Path | None, pred_labels: str | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Image, reference labels and prediction (internal labels) of a loaded case, in RAS."""
    orient = data.header.orientation
    image = to_ras(data.image, orient)
    labels = to_ras(data.labels, orient) if data.labels is not None else None
    pred_internal = None
    if pred is not None:
        if pred_labels is not None:
            L.get_scheme(pred_labels)  # an unknown name is an error listing the known ones
        ref_file = case.seg if case.seg is not None else case.images[data.modalities[0]]
        p = _load_pred(Path(pred), pred_labels or case.label_scheme, data.header, ref_file)
        pred_internal = to_ras(p, orient)
    return image, labels, pred_internal


def _crop_to_brain(
    data: CaseData, image: np.ndarray, labels: np.ndarray | None, pred_internal: np.ndarray | None
) -> _Panels:
    """The RAS volumes cropped to the brain plus a small margin, with RAS spacing."""
    orient = data.header.orientation
    perm = [[_AXIS_OF[c][0] for c in orient].index(k) for k in range(3)]
    spacing = tuple(data.header.spacing[p] for p in perm)
    brain = (image != 0).any(axis=0)
    # crop to the brain (plus a small margin) so the panels show anatomy, not background
    crop, offset = _brain_crop(brain, margin=4)
    image, brain = image[(slice(None), *crop)], brain[crop]
    labels = labels[crop] if labels is not None else None
    pred_internal = pred_internal[crop] if pred_internal is not None else None
    return _Panels(image, brain, labels, pred_internal, offset, spacing)


def _blank_axes(ax) -> None:
    """Black background, no ticks, no spines."""
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(False)


def _overlay(ax, col: str, panels: _Panels, view: str, idx: int, alpha: float,
             aspect: float) -> str:
    """Draw the reference or prediction overlay of column ``col`` if any; the panel's title."""
    title = MODALITY_TITLES.get(col, col)
    if col == "reference":
        title = "reference (on FLAIR)"
        if panels.labels is not None:
            ax.imshow(_overlay_rgba(view_slice(panels.labels, view, idx), alpha), aspect=aspect,
                      interpolation="nearest")
        else:
            title = "no reference"
    elif col == "prediction" and panels.pred is not None:
        title = "prediction (on FLAIR)"
        ax.imshow(_overlay_rgba(view_slice(panels.pred, view, idx), alpha),
                  aspect=aspect, interpolation="nearest")
    return title


def _label_row(ax, view: str, idx: int, offset: tuple[int, ...]) -> None:
    """The row's slice number (uncropped RAS) and the orientation letter on its first panel."""
    ax.set_ylabel(f"{view} slice {idx + offset[_VIEW_AXIS[view]]} (RAS)",
                  color="white", fontsize=9)
    ax.text(0.03, 0.03, "A" if view == "sagittal" else "R", color="white",
            fontsize=8, transform=ax.transAxes)


def _draw_row(axes_row, view: str, columns: list[str], panels: _Panels,
              windows: list[tuple[float, float]], ref_mask: np.ndarray | None,
              alpha: float) -> None:
    """One view's row of panels, on the slice with the largest ``ref_mask`` area."""
    flair = L.MODALITIES.index("flair")
    idx = best_slice(ref_mask, panels.brain, view)
    aspect = _aspect(panels.spacing, view)  # type: ignore[arg-type]
    for c, col in enumerate(columns):
        ax = axes_row[c]
        _blank_axes(ax)
        ch = c if c < 4 else flair
        ax.imshow(view_slice(panels.image[ch], view, idx), cmap="gray", vmin=windows[ch][0],
                  vmax=windows[ch][1], aspect=aspect, interpolation="antialiased")
        ax.set_title(_overlay(ax, col, panels, view, idx, alpha, aspect), color="white",
                     fontsize=9)
        if c == 0:
            _label_row(ax, view, idx, panels.offset)


def _finish_figure(fig, case: Case, output: str | Path) -> Path:
    """Legend, title and layout of the figure, then the PNG written to ``output``."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=col, edgecolor="none", label=name)
               for name, col in LABEL_COLOURS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, fontsize=9,
               labelcolor="white")
    fig.suptitle(f"{case.case_id} ({case.layout})", color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return save_figure(fig, output, dpi=110, bbox_inches=None, facecolor="black")


def show_case(
    case_dir: str | Path,
    output: str | Path,
    pred: str | Path | None = None,
    views: tuple[str, ...] = ("axial",),
    alpha: float = 0.45,
    pred_labels: str | None = None,
    labels: str | None = None,
) -> Path:
    """Draw T1, T1ce, T2, FLAIR and the reference overlay (and the prediction's) to a PNG.

    One row per view, each on the slice with the largest tumour area along that view
    (reference labels, else the prediction, else the brain's middle).

    Args:
        case_dir: one case folder of any supported layout.
        output: PNG path; written to a temporary name then renamed.
        pred: optional predicted segmentation on the case grid (same shape and affine), file
            labels of the case's scheme (or of ``pred_labels``); anything else is an error.
        views: any of ``axial``, ``coronal``, ``sagittal``.
        pred_labels: label scheme of ``pred`` when it is not the case's (``brats2020``,
            ``brats2021``, ``brats2023``, ``msd``).
        labels: label scheme of the case's own segmentation when it is not its layout's
            (``--labels``: e.g. BraTS 2021 names with nnU-Net's 0/1/2/3).

    Returns:
        The PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = _checked_views(views)
    case, data = _read_case(case_dir, labels)
    image, ref, pred_internal = _ras_volumes(case, data, pred, pred_labels)
    panels = _crop_to_brain(data, image, ref, pred_internal)

    columns = list(L.MODALITIES) + ["reference"] + (["prediction"] if pred is not None else [])
    ncol = len(columns)
    fig, axes = plt.subplots(len(views), ncol, figsize=(2.7 * ncol, 3.0 * len(views) + 0.7),
                             squeeze=False, facecolor="black")
    windows = [_window(panels.image[c], panels.brain) for c in range(4)]
    # slices chosen on the reference labels, else the prediction, else the brain's middle
    ref_mask = panels.labels > 0 if panels.labels is not None else None
    if ref_mask is None and panels.pred is not None:
        ref_mask = panels.pred > 0
    for r, view in enumerate(views):
        _draw_row(axes[r], view, columns, panels, windows, ref_mask, alpha)
    return _finish_figure(fig, case, output)
