"""The end of a case's prediction on the model's device: probabilities -> file labels.

``CasePredictor.predict`` keeps everything after the network on the device that ran it (a GPU,
or the CPU, where the same code runs in the tests)::

    probabilities (3, x, y, z) on the preprocessed grid, float32, on the device
      --linear resampling back to the cropped box (only when the card's spacing differs)-->
      --threshold, ET in TC in WT (labels_from_regions)-->  internal labels, uint8
      --ET rule (when no component step follows on the host)--> --file scheme (a lookup)-->
      --pasted into the input's (X, Y, Z) grid (0 outside the brain's box)-->  ONE copy to host

so a case crosses to the host once, as uint8 labels, not as float probabilities (4x smaller;
a BraTS case is 9 MB of labels against 107 MB of probabilities). Component removal (cc3d) has
no device implementation: when the card or the options ask for it, the ET rule and the scheme
follow it on the host (``glioseg.infer.postprocess.postprocess_labels``) in the same order as
``postprocess``.

The same steps as the host's (``restore_to_original`` then ``postprocess``) in the same
arithmetic: without resampling the labels are identical; with it, ``resample_linear`` is
``scipy.ndimage.affine_transform(order=1, mode="nearest")`` on the grid convention of
``glioseg.preprocess.pure``, in float32 (scipy interpolates in float64), so a probability
within ~1e-6 of the threshold can fall on the other side (tested to agree).

``resolve_dtype``: what ``dtype="auto"`` means per engine and device.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from glioseg.data.labels import ET, NCR, from_internal

AUTO_CUDA_DTYPE = "fp16"
"""``auto`` on a GPU: float16 autocast. Measured on an H200 (full preset, 128^3 windows):
1.0-1.2 s per case against 1.4 s for bf16, and inference has no gradient to overflow."""


def resolve_dtype(dtype: str, engine: str = "torch", device: str = "cpu") -> str:
    """The precision ``dtype`` means for ``engine`` on ``device``; ``auto``: ``AUTO_CUDA_DTYPE``
    on a GPU, bf16 on a CPU with native bf16 (AVX-512 BF16 / AMX; the torch and OpenVINO
    engines), float32 elsewhere (ONNX Runtime, CPUs that would emulate bf16 tens of times
    slower). Any other value is returned as given (the engine checks it)."""
    if dtype != "auto":
        return dtype
    if engine == "onnxruntime":
        return "fp32"
    if device.startswith("cuda"):
        return AUTO_CUDA_DTYPE if engine == "torch" else "fp32"
    from glioseg.train.loop import native_bf16_cpu

    return "bf16" if native_bf16_cpu() else "fp32"


def region_labels(probabilities: torch.Tensor, threshold: float) -> torch.Tensor:
    """``(3, ...)`` WT, TC, ET probabilities -> internal labels ``(...)`` uint8 on their
    device: ET wins, then the rest of TC is necrosis, then the rest of WT edema (the nesting
    of ``glioseg.data.labels.labels_from_regions``)."""
    wt, tc, et = (probabilities[i] > threshold for i in range(3))
    out = wt.to(torch.uint8) * 2  # edema (ED)
    # Python scalars, not device tensors: a tensor made from a host value is a copy to the
    # GPU that waits for the work queued before it; the result stays uint8
    out = torch.where(tc, NCR, out)
    return torch.where(et, ET, out)


def et_rule(labels: torch.Tensor, et_min_voxels: int) -> torch.Tensor:
    """``glioseg.infer.postprocess.apply_et_rule`` on the device, without a host round trip:
    all ET becomes necrosis when ``0 < ET voxels < et_min_voxels``."""
    if et_min_voxels <= 0:
        return labels
    et = labels == ET
    n = et.sum()
    demote = et & (n > 0) & (n < et_min_voxels)
    return torch.where(demote, torch.full_like(labels, NCR), labels)


def scheme_lookup(labels: torch.Tensor, scheme: str | None) -> torch.Tensor:
    """Internal labels -> file labels of ``scheme`` (``from_internal``) by a 4-entry lookup."""
    if scheme is None:
        return labels
    return _scheme_table(scheme, str(labels.device))[labels.long()]


@functools.lru_cache(maxsize=16)
def _scheme_table(scheme: str, device: str) -> torch.Tensor:
    """The 4-entry lookup of ``scheme`` on ``device``, copied there once per process (a copy
    from the host waits for the device's queued work: once, not once per case)."""
    return torch.as_tensor(from_internal(np.arange(4, dtype=np.uint8), scheme), device=device)


def resample_linear(volume: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(C, x, y, z)`` float -> ``(C, *shape)`` float32 by linear interpolation, the device
    twin of ``resample_to_shape(order=1)``: ``F.interpolate(mode="trilinear",
    align_corners=False)`` samples output voxel ``o`` at ``(o + 0.5) * n_in / n_out - 0.5``
    and clamps at the ends, the grid and the ``mode="nearest"`` edges of
    ``glioseg.preprocess.pure`` (one kernel; a per-axis gather was 20x slower on the CPU)."""
    out = volume.float()
    shape = tuple(int(s) for s in shape)
    if tuple(out.shape[1:]) == shape:
        return out
    return torch.nn.functional.interpolate(out[None], size=shape, mode="trilinear",
                                           align_corners=False)[0]


def paste(values: torch.Tensor, geometry: dict[str, Any]) -> torch.Tensor:
    """``(..., x, y, z)`` values of the cropped box -> the input's grid
    (``geometry["original_shape"]``), zeros outside ``geometry["bbox"]``."""
    full = values.new_zeros((*values.shape[:-3], *geometry["original_shape"]))
    box = tuple(slice(int(lo), int(hi)) for lo, hi in geometry["bbox"])
    full[(Ellipsis, *box)] = values
    return full


def in_box(probabilities: torch.Tensor, geometry: dict[str, Any]) -> torch.Tensor:
    """Probabilities on the preprocessed grid -> on the cropped box of the input's grid
    (linear resampling when the card's spacing made them differ, else as they are)."""
    cropped = tuple(int(s) for s in geometry["cropped_shape"])
    if tuple(probabilities.shape[1:]) == cropped:
        return probabilities
    return resample_linear(probabilities, cropped)


def labels_on_device(probabilities: torch.Tensor, geometry: dict[str, Any], threshold: float,
                     et_min_voxels: int | None, scheme: str | None) -> torch.Tensor:
    """Labels ``(X, Y, Z)`` uint8 on the input's grid from probabilities on the preprocessed
    grid, on their device. ``et_min_voxels`` None: neither the ET rule nor the scheme is
    applied (a component step on the host comes first; internal labels are returned)."""
    box = in_box(probabilities, geometry)
    whole = threshold < 0  # the zeros outside the brain pass a negative threshold too
    labels = region_labels(paste(box, geometry) if whole else box, threshold)
    if et_min_voxels is not None:
        labels = scheme_lookup(et_rule(labels, et_min_voxels), scheme)
    return labels if whole else paste(labels, geometry)
