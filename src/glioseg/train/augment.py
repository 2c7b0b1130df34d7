"""Data augmentation: draw parameters from an explicit generator, then apply them.

As in TorchIO and nnU-Net, randomness and computation are separate: ``draw_params(rng, ...)``
turns a ``np.random.Generator`` into an ``AugmentParams`` record (every random choice of a
batch), and ``augment_batch(image, labels, params, patch_size)`` applies it deterministically,
so the same generator state always gives the same batch.

Spatial transforms (flips, 90-degree rotations, small-angle rotation, scaling, optional elastic
deformation) are folded into one matrix per patch and applied by ONE ``grid_sample`` over the
whole batch (trilinear for images, nearest for labels): one interpolation, never a chain.
Patches whose matrix is a signed permutation (only flips / 90-degree turns, no elastic) skip
interpolation: ``permute`` + ``flip``, exact. The sampler reads a box larger than the patch
(``required_extent``) so that rotated or zoomed-out patches take real voxels at their corners
rather than padding.

Why our own batched torch code rather than MONAI / TorchIO transforms in the worker processes:
measured on the same patches (``glioseg bench data``, see ``docs``/the report), MONAI's
per-sample dictionary transforms spend most of their time in per-transform overhead (meta
tensors, one resampling per spatial transform, a fresh grid per call) and in scanning the
whole label volume to crop; the batched version does the same work in one pass, runs in the
loader workers on CPU, and runs unchanged on a GPU (pass CUDA tensors).

Geometry convention: output voxel ``o`` of a patch of size ``p`` sits at ``u = o - (p-1)/2``
from the patch centre and takes the input voxel at ``M u + d(o) + (E-1)/2`` of the input box of
size ``E`` (same centre), where ``M`` = scale x rotation x (90-degree turn) x flips and ``d`` the
elastic displacement in voxels. Scale > 1 samples a larger region (structures look smaller).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

P_ELASTIC_ON = 0.2
"""Elastic deformation probability when the training config switches it on (``aug_elastic``),
that of nnU-Net v1's elastic transform."""


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each random transform (defaults follow nnU-Net v2)."""

    p_flip: float = 0.5
    """Mirror probability, per axis."""
    p_rot90: float = 0.0
    """Probability of a 90/180/270-degree turn in a random plane of two equal patch sides
    (off by default: brains have a canonical orientation)."""
    p_rotate: float = 0.2
    """Probability of a small-angle rotation (nnU-Net: 0.2)."""
    max_angle_deg: float = 30.0
    """Rotation angle about each axis, uniform in +-this (nnU-Net: 30)."""
    p_scale: float = 0.2
    """Probability of isotropic scaling (nnU-Net: 0.2)."""
    scale_range: tuple[float, float] = (0.7, 1.4)
    """Scale factor range (nnU-Net: 0.7-1.4)."""
    p_elastic: float = 0.0
    """Probability of a smooth elastic deformation (nnU-Net v2 has it off)."""
    elastic_max_voxels: float = 4.0
    """Largest displacement of the elastic control points, in voxels."""
    elastic_grid: int = 5
    """Control points per axis of the elastic field (upsampled trilinearly)."""
    p_noise: float = 0.1
    """Probability of additive Gaussian noise (nnU-Net: 0.1)."""
    noise_std_max: float = 0.316
    """Noise std uniform in [0, this] (nnU-Net: variance in [0, 0.1])."""
    p_blur: float = 0.2
    """Probability of Gaussian blur of a patch (per channel 0.5 once chosen; nnU-Net)."""
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    """Blur sigma range in voxels."""
    p_brightness: float = 0.15
    """Probability of a multiplicative brightness change (nnU-Net: 0.15)."""
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    """Probability of a contrast change about the patch mean, range preserved (nnU-Net)."""
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    """Probability of a gamma change on the range-normalised patch, mean/std retained."""
    gamma_range: tuple[float, float] = (0.7, 1.5)

    @classmethod
    def from_switches(
        cls, flip: bool = True, rotate_scale: bool = True, intensity: bool = True,
        noise: bool = True, elastic: bool = False,
    ) -> AugmentConfig:
        """Defaults with whole groups switched off (the training config's switches);
        ``elastic`` switches the elastic deformation on (probability ``P_ELASTIC_ON``)."""
        off: dict[str, float] = {"p_elastic": P_ELASTIC_ON} if elastic else {}
        if not flip:
            off.update(p_flip=0.0, p_rot90=0.0)
        if not rotate_scale:
            off.update(p_rotate=0.0, p_scale=0.0)
        if not intensity:
            off.update(p_brightness=0.0, p_contrast=0.0, p_gamma=0.0)
        if not noise:
            off.update(p_noise=0.0, p_blur=0.0)
        return cls(**off)


@dataclass
class AugmentParams:
    """Every random choice for a batch of ``B`` patches with ``C`` channels.

    Attributes:
        matrix: ``(B, 3, 3)`` float64, output offset -> input offset (voxels).
        elastic: ``(B, 3, g, g, g)`` float32 control-point displacements (voxels), or None.
        noise_std: ``(B, C)`` float (0: none); noise_seed: ``(B,)`` int64 seeds of the noise.
        blur_sigma: ``(B, C)`` float (0: none).
        brightness, contrast, gamma: ``(B, C)`` float (1: none).
    """

    matrix: np.ndarray
    elastic: np.ndarray | None
    noise_std: np.ndarray
    noise_seed: np.ndarray
    blur_sigma: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    gamma: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.matrix.shape[0])

    def exact(self) -> np.ndarray:
        """``(B,)`` bool: patches whose spatial transform needs no interpolation (only flips
        and 90-degree turns, no elastic deformation)."""
        return np.array([
            _is_signed_permutation(self.matrix[n])
            and (self.elastic is None or not self.elastic[n].any())
            for n in range(self.batch_size)
        ], dtype=bool)


def rotation_matrix(angles: Sequence[float]) -> np.ndarray:
    """``(3, 3)`` rotation by ``angles`` (radians) about axes 0, 1, 2, applied in that order."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def rot90_matrix(k: int, plane: tuple[int, int]) -> np.ndarray:
    """``(3, 3)`` signed permutation turning by ``k`` x 90 degrees in ``plane`` (axes i, j)."""
    i, j = plane
    m = np.eye(3)
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def draw_params(
    rng: np.random.Generator,
    batch_size: int,
    n_channels: int,
    patch_size: Sequence[int],
    cfg: AugmentConfig,
) -> AugmentParams:
    """Draw the augmentation of a batch from ``rng`` (the only source of randomness)."""
    b, c = batch_size, n_channels
    size = [int(s) for s in patch_size]
    planes = [(i, j) for i in range(3) for j in range(i + 1, 3) if size[i] == size[j]]
    mats = np.empty((b, 3, 3))
    for n in range(b):
        m = np.diag(np.where(rng.random(3) < cfg.p_flip, -1.0, 1.0))
        if planes and rng.random() < cfg.p_rot90:
            m = rot90_matrix(int(rng.integers(1, 4)), planes[int(rng.integers(len(planes)))]) @ m
        if rng.random() < cfg.p_rotate:
            m = rotation_matrix(np.deg2rad(rng.uniform(-1, 1, 3) * cfg.max_angle_deg)) @ m
        if rng.random() < cfg.p_scale:
            m = rng.uniform(*cfg.scale_range) * m
        mats[n] = m
    elastic = None
    on = rng.random(b) < cfg.p_elastic
    if on.any():
        g = cfg.elastic_grid
        field = rng.uniform(-1, 1, (b, 3, g, g, g)) * cfg.elastic_max_voxels
        elastic = (field * on[:, None, None, None, None]).astype(np.float32)

    def per_channel(p: float, lo: float, hi: float, neutral: float) -> np.ndarray:
        chosen = (rng.random(b) < p)[:, None] & np.ones((b, c), bool)
        return np.where(chosen, rng.uniform(lo, hi, (b, c)), neutral)

    noise = np.where((rng.random(b) < cfg.p_noise)[:, None],
                     rng.uniform(0, cfg.noise_std_max, (b, 1)) * np.ones((b, c)), 0.0)
    blur_on = (rng.random(b) < cfg.p_blur)[:, None] & (rng.random((b, c)) < 0.5)
    blur = np.where(blur_on, rng.uniform(*cfg.blur_sigma, (b, c)), 0.0)
    return AugmentParams(
        matrix=mats,
        elastic=elastic,
        noise_std=noise,
        noise_seed=rng.integers(0, 2**62, b),
        blur_sigma=blur,
        brightness=per_channel(cfg.p_brightness, *cfg.brightness_range, 1.0),
        contrast=per_channel(cfg.p_contrast, *cfg.contrast_range, 1.0),
        gamma=per_channel(cfg.p_gamma, *cfg.gamma_range, 1.0),
    )


def _is_signed_permutation(m: np.ndarray) -> bool:
    r = np.round(m)
    return bool(np.allclose(m, r, atol=1e-9) and np.all(np.abs(r).sum(0) == 1)
                and np.all(np.abs(r).sum(1) == 1))


def required_extent(
    params: AugmentParams, patch_size: Sequence[int], idx: Sequence[int] | None = None
) -> tuple[int, int, int]:
    """Side lengths ``(Ex, Ey, Ez)`` of the input box (same centre as the patch) that holds
    every voxel the spatial transforms of the samples ``idx`` (default: all) read; ``E - p``
    is even, ``E == p`` without rotation, scaling or elastic deformation."""
    p = np.asarray(patch_size, dtype=np.float64)
    idx = list(range(params.batch_size)) if idx is None else list(idx)
    if not idx:
        return tuple(int(v) for v in p)  # type: ignore[return-value]
    half = np.abs(params.matrix[idx]) @ ((p - 1) / 2)  # (b, 3) reach from the centre
    reach = half.max(0)
    if params.elastic is not None:
        reach = reach + np.abs(params.elastic[idx]).max()
    need = np.ceil(2 * reach + 1 - 1e-6)
    extra = np.maximum(0, np.ceil((need - p) / 2))
    return tuple(int(v) for v in p + 2 * extra)  # type: ignore[return-value]


def _perm_flips(m: np.ndarray) -> tuple[list[int], list[int]]:
    """Signed permutation ``m`` -> (input axis of each output axis, output axes flipped)."""
    r = np.round(m).astype(int)
    perm = [int(np.flatnonzero(r[:, i])[0]) for i in range(3)]
    return perm, [i for i in range(3) if r[perm[i], i] < 0]


def inverse_view(out: np.ndarray, m: np.ndarray) -> np.ndarray:
    """View of ``out`` ``(..., px, py, pz)`` in input orientation for the signed permutation
    ``m``: writing the input box (centred like the patch) into the view writes the transformed
    patch into ``out``, in a single copy."""
    perm, flips = _perm_flips(m)
    lead = out.ndim - 3
    sl = tuple(slice(None, None, -1) if i in flips else slice(None) for i in range(3))
    view = out[(Ellipsis, *sl)]
    inv = np.argsort(perm)
    return view.transpose(*range(lead), *(lead + int(a) for a in inv))


def _exact(x: torch.Tensor, m: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """Apply a signed permutation ``m`` to ``x`` ``(C, *E)``: centre crop + permute + flip."""
    ext = x.shape[1:]
    perm, flips = _perm_flips(m)  # output axis i <- input axis perm[i]
    sl = []
    for ax in range(3):
        out_axis = perm.index(ax)
        n, e = int(size[out_axis]), int(ext[ax])
        a = (e - n) // 2
        sl.append(slice(a, a + n))
    y = x[(slice(None), *sl)].permute(0, *(a + 1 for a in perm))
    return y.flip([i + 1 for i in flips]) if flips else y


def host_to_device(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A small host array as a float32 tensor on ``device``. The copy is ``non_blocking``:
    from pageable memory CUDA stages it at once, so the host never waits for the device's
    queue (a blocking copy would synchronise the stream, once per batch)."""
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return t.to(device, non_blocking=True)


def sampling_grid(
    params: AugmentParams,
    idx: Sequence[int],
    in_shape: Sequence[int],
    size: Sequence[int],
    centres: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Sampling grid ``(b, px, py, pz, 3)`` for ``grid_sample(align_corners=True)`` of the
    samples ``idx`` reading inputs of spatial shape ``in_shape``.

    Output voxel ``o`` reads input voxel ``M u + d(o) + centre`` with ``u = o - (p-1)/2``.
    ``centres`` ``(b, 3)``: input voxel coordinates of the patch centres (default: the centre
    of the input, ``(in_shape - 1) / 2``). The last axis of the grid holds normalised (z, y, x)
    as grid_sample expects. Built by one ``affine_grid`` (plus the elastic field).
    """
    idx = list(idx)
    b = len(idx)
    p = np.array([int(s) for s in size], dtype=np.float64)
    n_in = np.array([int(s) for s in in_shape], dtype=np.float64)
    scale = 2 / np.maximum(n_in - 1, 1)
    if centres is None:
        centres = np.tile((n_in - 1) / 2, (b, 1))
    a = scale[None, :, None] * params.matrix[idx] * ((p - 1) / 2)[None, None, :]
    t = np.asarray(centres, dtype=np.float64) * scale - 1
    theta = np.concatenate([a[:, ::-1, ::-1], t[:, ::-1, None]], axis=2)
    theta_t = host_to_device(theta, device)
    grid = F.affine_grid(theta_t, [b, 1, *(int(s) for s in size)], align_corners=True)
    if params.elastic is not None and params.elastic[idx].any():
        d = host_to_device(params.elastic[idx], device)
        d = F.interpolate(d, size=tuple(int(s) for s in size), mode="trilinear",
                          align_corners=True)
        d = d * host_to_device(scale, device).view(1, 3, 1, 1, 1)
        grid = grid + d.permute(0, 2, 3, 4, 1).flip(-1)
    return grid


def augment_spatial(
    image: torch.Tensor, labels: torch.Tensor | None, params: AugmentParams,
    patch_size: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the spatial part of ``params``.

    Args:
        image: ``(B, C, Ex, Ey, Ez)`` float, boxes of ``required_extent`` around each patch.
        labels: ``(B, Ex, Ey, Ez)`` integer labels, or None.
        patch_size: ``(px, py, pz)``.

    Returns:
        ``image`` ``(B, C, px, py, pz)`` and ``labels`` ``(B, px, py, pz)`` (input dtypes).
    """
    size = tuple(int(s) for s in patch_size)
    b = image.shape[0]
    is_exact = params.exact()
    interp = [n for n in range(b) if not is_exact[n]]
    img_out = image.new_empty((b, image.shape[1], *size))
    lab_out = None if labels is None else labels.new_empty((b, *size))
    for n in np.flatnonzero(is_exact):
        img_out[n] = _exact(image[n], params.matrix[n], size)
        if labels is not None:
            lab_out[n] = _exact(labels[n][None], params.matrix[n], size)[0]
    if interp:
        img_i, lab_i = resample_patches(image[interp], None if labels is None else
                                        labels[interp], params, interp, size)
        img_out[interp] = img_i
        if lab_out is not None:
            lab_out[interp] = lab_i
    return img_out, lab_out


def resample_patches(
    image: torch.Tensor, labels: torch.Tensor | None, params: AugmentParams,
    idx: Sequence[int], patch_size: Sequence[int], centres: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Interpolating part of the spatial transform, one ``grid_sample`` for the samples ``idx``.

    Args:
        image: ``(b, C, Ex, Ey, Ez)`` float, the input boxes of samples ``idx``; voxels
            outside them read as 0.
        labels: ``(b, Ex, Ey, Ez)`` integer labels, or None.
        centres: ``(b, 3)`` voxel coordinates of the patch centres in the boxes (default: the
            box centres).

    Returns:
        ``(b, C, px, py, pz)`` image (trilinear) and ``(b, px, py, pz)`` labels (nearest).
    """
    size = tuple(int(s) for s in patch_size)
    grid = sampling_grid(params, idx, image.shape[2:], size, centres, image.device)
    img = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True).to(image.dtype)
    lab = None
    if labels is not None:
        lab = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=True)[:, 0].to(labels.dtype)
    return img, lab


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` ``(X, Y, Z)`` (reflect padding, radius 3 sigma rounded
    as ``scipy.ndimage.gaussian_filter(truncate=3)``). On CPU scipy's filter is used: it is
    about 3x faster than torch's ``conv3d`` with a 1-D kernel on one thread (measured)."""
    r = max(1, int(3 * sigma + 0.5))
    if x.device.type == "cpu" and min(x.shape) > r:
        blurred = ndimage.gaussian_filter(x.numpy(), sigma, mode="mirror", truncate=3.0)
        return torch.from_numpy(blurred)
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = x[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = 2 * r + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
        if y.shape[2 + axis] > r:
            y = F.conv3d(F.pad(y, pad, mode="reflect"), k.view(shape))
        else:  # too thin for reflect padding
            y = F.conv3d(F.pad(y, pad, mode="replicate"), k.view(shape))
    return y[0, 0]


def augment_intensity(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply noise, blur, brightness, contrast and gamma of ``params`` (nnU-Net's order) to
    ``image`` ``(B, C, X, Y, Z)`` float, in place where possible; returns the image."""
    b, c = image.shape[:2]
    for n in range(b):
        if params.noise_std[n].any():
            g = torch.Generator(device=image.device).manual_seed(int(params.noise_seed[n]))
            noise = torch.randn(image.shape[1:], generator=g, device=image.device,
                                dtype=image.dtype)
            image[n] += noise * torch.as_tensor(params.noise_std[n], dtype=image.dtype,
                                                device=image.device).view(c, 1, 1, 1)
        for ch in range(c):
            x = image[n, ch]
            if params.blur_sigma[n, ch] > 0:
                x.copy_(_gaussian_blur(x, float(params.blur_sigma[n, ch])))
            if params.brightness[n, ch] != 1:
                x.mul_(float(params.brightness[n, ch]))
            if params.contrast[n, ch] != 1:
                lo, hi, mean = x.min(), x.max(), x.mean()
                x.sub_(mean).mul_(float(params.contrast[n, ch])).add_(mean).clamp_(lo, hi)
            if params.gamma[n, ch] != 1:
                mean, std = x.mean(), x.std()
                lo, span = x.min(), x.max() - x.min() + 1e-7
                x.sub_(lo).div_(span).pow_(float(params.gamma[n, ch])).mul_(span).add_(lo)
                x.sub_(x.mean()).div_(x.std() + 1e-7).mul_(std).add_(mean)
    return image


def augment_batch(
    image: torch.Tensor, labels: torch.Tensor | None, params: AugmentParams,
    patch_size: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spatial then intensity augmentation of a batch (see ``augment_spatial``)."""
    image, labels = augment_spatial(image, labels, params, patch_size)
    return augment_intensity(image, params), labels
