"""The device-side (batched) augmentation against the CPU path, on CPU tensors.

Tolerances, measured here and stated in the asserts:
- the spatial part reads the same voxels with the same ``grid_sample``; the only difference is
  that the batched path normalises its grid by the padded batch box instead of each patch's
  own box (float32 rounding of the grid, ~1e-5 voxel): images agree to 1e-4 on smooth
  volumes, labels (nearest) on >= 99.9% of voxels (a rounding can tip a voxel sitting on a
  half-voxel boundary); exact patches (flips only) agree to the bit. Measured over 200
  batches of 4 with every transform likely: max |diff| 1.3e-5, labels equal on 100% of 3.3 M
  voxels;
- the intensity part: blur is a grouped ``conv3d`` instead of scipy's filter (float32
  accumulation), the rest are the same formulas vectorised: 1e-4 absolute on z-scored data.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from glioseg.data.labels import MODALITIES
from glioseg.io_atomic import write_json
from glioseg.preprocess import cache as PC
from glioseg.train import augment as A
from glioseg.train import augment_batched as AB
from glioseg.train import data as D
from glioseg.train import loop as L

VOL = 28
PATCH = (16, 16, 16)
EVERYTHING = A.AugmentConfig(p_flip=0.5, p_rotate=0.7, p_scale=0.7, p_elastic=0.3,
                             p_noise=0.5, p_blur=0.7, p_brightness=0.5, p_contrast=0.5,
                             p_gamma=0.5)


def _smooth_cache(folder: Path, n: int = 3) -> list:
    """n cases of 28^3 with smooth images (low-frequency waves plus a blurred bright tumour)
    and a ball tumour (edema around necrosis + ET)."""
    rng = np.random.default_rng(1)
    grid = np.indices((VOL,) * 3).transpose(1, 2, 3, 0).astype(np.float64)
    ids = []
    for i in range(n):
        centre = rng.uniform(9, VOL - 9, 3)
        r = np.linalg.norm(grid - centre, axis=-1)
        labels = np.zeros((VOL,) * 3, np.uint8)
        labels[r < 6] = 2
        labels[r < 4] = 1
        labels[(r >= 3) & (r < 4)] = 3
        image = np.empty((4, VOL, VOL, VOL), np.float32)
        for ch in range(4):
            k = rng.uniform(0.1, 0.3, 3)
            ph = rng.uniform(0, 6.3, 3)
            waves = np.sin(grid @ k + ph.sum()) + 0.5 * np.cos(grid[..., ch % 3] * k[0] + ph[0])
            image[ch] = waves + 1.5 * np.exp(-(r / 5) ** 2)
        cid = f"CASE_{i:03d}"
        PC.write_case(folder, cid, image, labels, {"case_id": cid, "layout": "brats2023",
                                                   "shape": [VOL] * 3})
        ids.append(cid)
    write_json(folder / "dataset.json", {"format": PC.CACHE_FORMAT,
                                                   "modalities": list(MODALITIES),
                                                   "spacing": None, "cases": ids,
                                                   "source": "test"})
    return PC.open_cache(folder)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list:
    return _smooth_cache(tmp_path_factory.mktemp("cache"))


def _both(cases, seed: int, cfg: A.AugmentConfig, batch: int = 4, border: float = 0.25):
    """The CPU path's batch and the device path's (on CPU tensors) from the same seed."""
    img_cpu, reg_cpu = D.sample_batch(cases, PATCH, batch, np.random.default_rng(seed),
                                      augment_cfg=cfg, border=border)
    boxes = AB.crop_boxes(cases, PATCH, batch, np.random.default_rng(seed), augment_cfg=cfg,
                          border=border)
    img_dev, lab_dev = AB.augment_boxes(boxes)
    return img_cpu, reg_cpu, img_dev, L.regions_target(lab_dev), boxes


def test_same_draws_same_batch_as_the_cpu_path(cases):
    """Same seed: same parameters, same patch positions, same output (tolerances above)."""
    worst, agree, voxels, n_interp = 0.0, 0, 0, 0
    for seed in range(40):
        img_cpu, reg_cpu, img_dev, reg_dev, boxes = _both(cases, seed, EVERYTHING)
        assert img_dev.shape == img_cpu.shape == (4, 4, *PATCH)
        assert reg_dev.shape == reg_cpu.shape
        worst = max(worst, float((img_dev - img_cpu).abs().max()))
        agree += int((reg_dev == reg_cpu).all(1).sum())
        voxels += reg_cpu[:, 0].numel()
        exact = boxes.params.exact()
        n_interp += int((~exact).sum())
        for n in np.flatnonzero(exact):  # flips only: both paths copy voxels
            assert torch.equal(reg_dev[n], reg_cpu[n])
    assert n_interp > 40  # rotations, scalings and elastic fields were exercised
    assert worst < 1e-4, worst
    assert agree / voxels >= 0.999, agree / voxels


def test_spatial_on_the_same_boxes_equals_augment_spatial(cases):
    """On boxes laid out as ``augment.augment_spatial`` expects (centred, one extent), the
    batched spatial transform is the same computation: equal to float rounding."""
    rng = np.random.default_rng(3)
    params = A.draw_params(rng, 6, 4, PATCH, EVERYTHING)
    ext = A.required_extent(params, PATCH)
    g = np.indices(ext).astype(np.float32)
    image = torch.from_numpy(np.stack([np.sin(0.2 * g[0] + 0.1 * c) * np.cos(0.15 * g[1])
                                       + 0.1 * g[2] for c in range(4)]))[None].repeat(6, 1, 1,
                                                                                      1, 1)
    labels = torch.from_numpy((np.abs(g - np.array(ext)[:, None, None, None] / 2).sum(0)
                               < 8).astype(np.uint8))[None].repeat(6, 1, 1, 1)
    img_a, lab_a = A.augment_spatial(image.clone(), labels.clone(), params, PATCH)
    img_b, lab_b = AB.spatial_batched(image.clone(), labels.clone(), params, PATCH)
    assert torch.allclose(img_a, img_b, atol=1e-6)
    assert torch.equal(lab_a, lab_b)


def test_intensity_batched_equals_the_cpu_path():
    """Noise (same seeds), blur, brightness, contrast, gamma on a smooth batch: 1e-4."""
    g = np.indices((20, 18, 16)).astype(np.float32)
    base = torch.from_numpy(np.stack([np.sin(0.3 * g[0] + c) + np.cos(0.2 * g[1] * (c + 1))
                                      + 0.05 * g[2] for c in range(4)]))
    for seed in range(10):
        params = A.draw_params(np.random.default_rng(seed), 5, 4, (20, 18, 16), EVERYTHING)
        params = replace(params, blur_sigma=np.where(
            np.random.default_rng(seed + 100).random((5, 4)) < 0.5,
            np.random.default_rng(seed + 200).uniform(0.5, 1.0, (5, 4)), 0.0))
        x = base[None].repeat(5, 1, 1, 1, 1) * torch.linspace(0.5, 2, 5).view(5, 1, 1, 1, 1)
        cpu = A.augment_intensity(x.clone(), params)
        dev = AB.augment_intensity_batched(x.clone(), params)
        assert torch.allclose(cpu, dev, atol=1e-4), float((cpu - dev).abs().max())


def test_blur_kernels_match_scipy_truncation():
    """Each row's kernel is cut at its own ``int(3 sigma + 0.5)`` in a wider common kernel."""
    from scipy import ndimage

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 12, 11, 10)).astype(np.float32))
    sigma = torch.tensor([0.5, 0.0, 1.0])
    out = AB._blur_rows(x, sigma, radius=3)
    for r, s in enumerate(sigma.tolist()):
        ref = x[r].numpy() if s == 0 else ndimage.gaussian_filter(x[r].numpy(), s, mode="mirror",
                                                                  truncate=3.0)
        assert np.allclose(out[r].numpy(), ref, atol=1e-5)


def test_statistics_over_many_draws_match(cases):
    """Independent draws (different seeds for the two paths): per-batch statistics of the
    outputs have the same distribution (means within 4 standard errors), and so do the
    drawn transforms' effects (tumour share of the patch, intensity spread)."""
    def stats(path: str, seeds: range) -> np.ndarray:
        rows = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            if path == "cpu":
                img, reg = D.sample_batch(cases, PATCH, 2, rng, augment_cfg=A.AugmentConfig(),
                                          border=0.25)
            else:
                img, lab = AB.augment_boxes(AB.crop_boxes(
                    cases, PATCH, 2, rng, augment_cfg=A.AugmentConfig(), border=0.25))
                reg = L.regions_target(lab)
            rows.append([float(img.mean()), float(img.std()), float(reg[:, 0].mean()),
                         float(reg[:, 2].mean()), float(img[:, :, 0].mean() - img[:, :, -1].mean())])
        return np.array(rows)

    a, b = stats("cpu", range(0, 150)), stats("device", range(1000, 1150))
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    z = np.abs(a.mean(0) - b.mean(0)) / se
    assert (z < 4).all(), z


def test_loader_with_device_augmentation_gives_the_same_batches(cases):
    """``make_loader(augment_on="device")``: the workers yield crops (``PatchBoxes``) and
    ``to_batch`` augments them after the move; same seed, same batches as the CPU path."""
    kw = dict(patch_size=PATCH, batch_size=2, seed=5, num_workers=0, augment_cfg=EVERYTHING,
              batches_per_epoch=6, pin_memory=False, border=0.25)
    worker = list(D.make_loader(cases, **kw))
    device = list(D.make_loader(cases, augment_on="device", **kw))
    assert all(isinstance(x, AB.PatchBoxes) for x in device)
    agree, voxels = 0, 0
    for (img, reg), boxes in zip(worker, device, strict=True):
        batch = L.to_batch(boxes, torch.device("cpu"), channels_last=False)
        assert batch.image.dtype == torch.float32 and batch.target.shape == reg.shape
        assert torch.allclose(batch.image, img, atol=1e-4)
        agree += int((batch.target == reg).all(1).sum())
        voxels += reg[:, 0].numel()
    assert agree / voxels >= 0.999


def test_workers_without_augmentation_still_crop_and_turn_nothing(cases):
    """No augmentation config: the device path is a plain crop, equal to the bit."""
    kw = dict(patch_size=PATCH, batch_size=2, seed=2, num_workers=0, augment_cfg=None,
              batches_per_epoch=3, pin_memory=False, border=0.25)
    for (img, reg), boxes in zip(D.make_loader(cases, **kw),
                                 D.make_loader(cases, augment_on="device", **kw), strict=True):
        batch = L.to_batch(boxes, torch.device("cpu"), channels_last=False)
        assert torch.equal(batch.image, img) and torch.equal(batch.target, reg)


def test_augment_device_setting(cases):
    """``data.augment_device``: auto follows the training device; cuda off a GPU is refused."""
    from glioseg.train import config as C

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert D.augment_on("auto", cpu) == "worker" and D.augment_on("auto", cuda) == "device"
    assert D.augment_on("cpu", cuda) == "worker" and D.augment_on("cuda", cuda) == "device"
    with pytest.raises(D.DataError, match="trains on cpu"):
        D.augment_on("cuda", cpu)
    assert C.load_config(None).data.augment_device == "auto"
    assert C.load_config(None, ["data.augment_device=cuda"]).data.augment_device == "cuda"
    with pytest.raises(C.ConfigError, match="augment_device"):
        C.load_config(None, ["data.augment_device=gpu"])
    with pytest.raises(D.DataError, match="augment_on"):
        D.make_loader(cases, PATCH, 1, seed=0, augment_on="gpu")

