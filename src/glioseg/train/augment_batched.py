"""Device-side augmentation: the transforms of ``glioseg.train.augment`` applied to a whole batch on
the training device, driven by the same drawn ``AugmentParams``.

With ``data.augment_device`` on the device, a loader worker only crops: ``crop_boxes`` draws
the batch exactly as ``glioseg.train.data.sample_batch`` does (same generator calls, so the
same seed gives the same parameters and the same patch positions) and returns a
``PatchBoxes``: each patch's input box (``glioseg.train.augment.required_extent``, clipped to the
volume) in one zero-filled tensor, its centre, and the drawn parameters. After the batch is
moved to the device, ``augment_boxes`` applies the spatial transforms (one ``grid_sample`` for
all interpolated patches; exact flips / 90-degree turns as views) and
``augment_intensity_batched`` the intensity ones, vectorised over patches and channels.

Host synchronisation: every decision (which patches interpolate, which transforms run, kernel
radii) is read from the host-side parameters, and the few small parameter arrays go to the
device with ``non_blocking`` copies (``glioseg.train.augment.host_to_device``), so the augmentation
never waits for the device.

Layouts: boxes ``(B, C, Sx, Sy, Sz)`` float32, labels ``(B, Sx, Sy, Sz)`` uint8; outputs
``(B, C, px, py, pz)`` and ``(B, px, py, pz)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from glioseg.train.augment import (
    AugmentConfig,
    AugmentParams,
    _exact,
    draw_params,
    host_to_device,
    required_extent,
    sampling_grid,
)


@dataclass
class PatchBoxes:
    """A batch as the loader worker leaves it: crops, not yet augmented.

    Attributes:
        image: ``(B, C, Sx, Sy, Sz)`` float32; patch ``n``'s crop fills
            ``[:extents[n, 0], :extents[n, 1], :extents[n, 2]]``, the rest is 0 (as outside the
            volume).
        labels: ``(B, Sx, Sy, Sz)`` uint8 internal labels, laid out as ``image``.
        extents: ``(B, 3)`` int64 crop shape of each patch (host).
        centres: ``(B, 3)`` float64 voxel coordinates of each patch centre in its crop (host).
        params: the batch's drawn augmentation (host), or None for none.
        patch_size: ``(px, py, pz)``.
    """

    image: torch.Tensor
    labels: torch.Tensor
    extents: np.ndarray
    centres: np.ndarray
    params: AugmentParams | None
    patch_size: tuple[int, int, int]

    def pin_memory(self) -> PatchBoxes:
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        return replace(self, image=self.image.pin_memory(), labels=self.labels.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PatchBoxes:
        return replace(self, image=self.image.to(device, non_blocking=non_blocking),
                       labels=self.labels.to(device, non_blocking=non_blocking))


def crop_boxes(
    cases: Sequence,
    patch_size: Sequence[int],
    batch_size: int,
    rng: np.random.Generator,
    oversample_fg: float = 1 / 3,
    augment_cfg: AugmentConfig | None = None,
    border: float = 0.0,
) -> PatchBoxes:
    """Draw a batch as ``glioseg.train.data.sample_batch`` does (same calls on ``rng``) and
    crop each patch's input box, leaving every transform to ``augment_boxes``."""
    from glioseg.train.sampling import clipped_box, draw_origins, extract_box

    size = np.array([int(s) for s in patch_size])
    b = int(batch_size)
    n_channels = int(cases[0].image.shape[0])
    params = None if augment_cfg is None else draw_params(rng, b, n_channels, size, augment_cfg)
    exact = np.ones(b, bool) if params is None else params.exact()
    crops, extents, centres = [], np.empty((b, 3), np.int64), np.empty((b, 3))
    for n, (case, origin) in enumerate(draw_origins(cases, size, b, rng, oversample_fg,
                                                     border)):
        if exact[n]:  # the patch box itself, turned on the device
            ext = np.array(required_extent(params, size, [n])) if params is not None else size
            img = extract_box(case.image, origin, ext)
            lab = extract_box(case.labels, origin, ext)
            centre = (ext - 1) / 2
        else:  # as glioseg.train.data._resample_from_case: the box clipped to the volume
            sl, centre = clipped_box(origin, size, np.array(required_extent(params, size, [n])),
                                     case.shape)
            img, lab = case.image[(slice(None), *sl)], case.labels[sl]
        crops.append((img, lab))
        extents[n], centres[n] = img.shape[1:], centre
    # grid_sample needs 2 voxels per axis to interpolate; padding is zeros, as outside.
    common = np.maximum(extents.max(0), 2)
    image = np.zeros((b, n_channels, *common), np.float32)
    labels = np.zeros((b, *common), np.uint8)
    for n, (img, lab) in enumerate(crops):  # one copy from the memory map into the batch
        sl = tuple(slice(0, int(e)) for e in extents[n])
        image[(n, slice(None), *sl)] = img
        labels[(n, *sl)] = lab
    return PatchBoxes(torch.from_numpy(image), torch.from_numpy(labels), extents, centres, params,
                      tuple(int(s) for s in size))  # type: ignore[arg-type]


def augment_boxes(boxes: PatchBoxes) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial then intensity augmentation of ``boxes`` on their device.

    Returns:
        ``image`` ``(B, C, px, py, pz)`` float32 and ``labels`` ``(B, px, py, pz)`` uint8.
    """
    image, labels = spatial_batched(boxes.image, boxes.labels, boxes.params, boxes.patch_size,
                                    boxes.centres, boxes.extents)
    if boxes.params is not None:
        image = augment_intensity_batched(image, boxes.params)
    return image, labels


def spatial_batched(
    image: torch.Tensor, labels: torch.Tensor | None, params: AugmentParams | None,
    patch_size: Sequence[int], centres: np.ndarray | None = None,
    extents: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The spatial transforms of ``params`` (``glioseg.train.augment`` geometry) on a batch of boxes.

    Args:
        image: ``(B, C, Sx, Sy, Sz)`` float boxes; labels: ``(B, Sx, Sy, Sz)`` or None.
        centres: ``(B, 3)`` patch centres in voxels of the boxes (default: the box centres).
        extents: ``(B, 3)`` the part of each box that holds its crop (default: all of it);
            exact patches (flips / 90-degree turns only) are centre-cropped from it.

    Exact patches are permuted and flipped views (no interpolation); the others are resampled
    by one trilinear ``grid_sample`` (nearest for labels) over all of them.
    """
    size = tuple(int(s) for s in patch_size)
    b = image.shape[0]
    if extents is None:
        extents = np.tile(np.array(image.shape[2:]), (b, 1))
    if centres is None:
        centres = (np.asarray(extents, dtype=np.float64) - 1) / 2
    exact = np.ones(b, bool) if params is None else params.exact()
    img_out = image.new_empty((b, image.shape[1], *size))
    lab_out = None if labels is None else labels.new_empty((b, *size))
    eye = np.eye(3)
    for n in np.flatnonzero(exact):
        sl = (slice(None), *(slice(0, int(e)) for e in extents[n]))
        m = eye if params is None else params.matrix[n]
        img_out[n] = _exact(image[n][sl], m, size)
        if lab_out is not None:
            lab_out[n] = _exact(labels[n][None][sl], m, size)[0]
    interp = [int(n) for n in np.flatnonzero(~exact)]
    if interp:
        assert params is not None
        # stacking views (not indexing with a list) keeps the index on the host
        sub = torch.stack([image[n] for n in interp]).float()
        grid = sampling_grid(params, interp, image.shape[2:], size, centres[interp],
                             image.device)
        res = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True).to(image.dtype)
        lab_res = None
        if labels is not None:
            lab_sub = torch.stack([labels[n] for n in interp])[:, None].float()
            lab_res = F.grid_sample(lab_sub, grid, mode="nearest", padding_mode="zeros",
                                    align_corners=True)[:, 0].to(labels.dtype)
        for i, n in enumerate(interp):
            img_out[n] = res[i]
            if lab_out is not None and lab_res is not None:
                lab_out[n] = lab_res[i]
    return img_out, lab_out


def _blur_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(R, 2 radius + 1)`` Gaussian kernels for sigmas ``(R,)``, each cut at its own radius
    ``max(1, int(3 sigma + 0.5))`` and normalised over it (``scipy.ndimage.gaussian_filter``
    with ``truncate=3``, as ``glioseg.train.augment._gaussian_blur``); sigma 0 gives the identity."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma[:, None]
    own = torch.clamp(torch.floor(3 * s + 0.5), min=1)
    k = torch.exp(-0.5 * (t / torch.where(s > 0, s, torch.ones_like(s))) ** 2)
    k = torch.where(t.abs() <= own, k, torch.zeros_like(k))
    k = k / k.sum(1, keepdim=True)
    delta = (t == 0).to(k.dtype).expand_as(k)
    return torch.where(s > 0, k, delta)


def _blur_rows(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each row of ``x`` ``(R, X, Y, Z)`` with its own sigma, as one
    grouped ``conv3d`` per axis (reflect padding = scipy's ``mirror``)."""
    r = x.shape[0]
    k = _blur_kernels(sigma, radius)
    y = x[None]
    for axis in range(3):
        shape = [r, 1, 1, 1, 1]
        shape[2 + axis] = 2 * radius + 1
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        mode = "reflect" if y.shape[2 + axis] > radius else "replicate"
        y = F.conv3d(F.pad(y, pad, mode=mode), k.view(shape), groups=r)
    return y[0]


def augment_intensity_batched(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Noise, blur, brightness, contrast and gamma of ``params`` (the order and maths of
    ``glioseg.train.augment.augment_intensity``) on ``image`` ``(B, C, X, Y, Z)`` float, vectorised
    over patches and channels; each transform runs only if some patch of the batch has it.
    Returns the augmented image (``image`` itself is modified where possible)."""
    b, c = image.shape[:2]
    dev = image.device
    for n in np.flatnonzero(params.noise_std.any(1)):  # one generator per patch, as the CPU
        g = torch.Generator(device=dev).manual_seed(int(params.noise_seed[n]))
        noise = torch.randn(image.shape[1:], generator=g, device=dev, dtype=image.dtype)
        image[n] += noise * host_to_device(params.noise_std[n], dev).to(image.dtype).view(
            c, 1, 1, 1)
    x = image.reshape(b * c, -1)
    if (params.blur_sigma > 0).any():
        radius = max(1, int(3 * float(params.blur_sigma.max()) + 0.5))
        sigma = host_to_device(params.blur_sigma.reshape(-1), dev).to(image.dtype)
        image = _blur_rows(image.reshape(b * c, *image.shape[2:]), sigma, radius).view(
            image.shape)
        x = image.reshape(b * c, -1)
    if (params.brightness != 1).any():
        x.mul_(host_to_device(params.brightness.reshape(-1, 1), dev).to(x.dtype))
    if (params.contrast != 1).any():
        f = host_to_device(params.contrast.reshape(-1, 1), dev).to(x.dtype)
        lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
        mean = x.mean(1, keepdim=True)
        y = torch.maximum(torch.minimum((x - mean) * f + mean, hi), lo)
        x.copy_(torch.where(f != 1, y, x))
    if (params.gamma != 1).any():
        gam = host_to_device(params.gamma.reshape(-1, 1), dev).to(x.dtype)
        mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True)
        lo = x.amin(1, keepdim=True)
        span = x.amax(1, keepdim=True) - lo + 1e-7
        y = ((x - lo) / span).pow(gam) * span + lo
        y = (y - y.mean(1, keepdim=True)) / (y.std(1, keepdim=True) + 1e-7) * std + mean
        x.copy_(torch.where(gam != 1, y, x))
    return x.view(image.shape)
