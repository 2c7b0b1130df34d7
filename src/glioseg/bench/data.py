"""``glioseg bench data``: patches/s of our training pipeline vs a plain MONAI pipeline.

Both pipelines do the same work on the same cached cases, patch size, batch size and number
of loader workers, measured in the same run:

- ours: ``glioseg.train.data.make_loader`` (memory-mapped cache, stored tumour locations,
  batched torch augmentation);
- MONAI, as a MONAI user would write it: ``CacheDataset`` holding the cached arrays in
  memory together with their foreground / background voxel indices (``FgBgToIndicesd``,
  computed once per case when the dataset is cached, as MONAI's docs advise), then
  ``RandCropByPosNegLabeld`` reading those indices (``fg_indices_key`` / ``bg_indices_key``,
  so no label volume is rescanned per sample; pos 1 : neg 2 = 1/3 foreground), three
  ``RandFlipd``,
  ``RandAffined`` (rotation +-30 degrees and scale 0.7-1.3, probability 0.36 = the chance that
  ours rotates or scales, one resampling, cached grid), Gaussian noise, Gaussian smoothing,
  brightness (``RandScaleIntensityd``), contrast (``RandScaleIntensityFixedMeand``), gamma
  (``RandAdjustContrastd``), labels -> WT/TC/ET regions; ``track_meta=False`` (MONAI's own
  advice for speed).

Each pipeline first yields ``warmup`` batches (worker start-up, caching), then ``batches``
batches are timed.

With ``device`` (``bench data --device cuda``) it also prints how many loader workers keep a
training step fed (``workers_needed``): one worker's batches/s on each augmentation path
(``cpu``: the worker crops and augments; ``device``: it only crops, the augmentation runs on
the GPU) against the steps/s to feed, given or measured (``glioseg.bench.train.measure`` of
the config's step on synthetic batches, compiled when the config compiles); workers needed =
ceil(steps/s / batches/s per worker). A worker runs one thread, so this is also the CPU cores
the loader takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glioseg.bench import BenchError, BenchRunFailed
from glioseg.data.labels import region_masks
from glioseg.preprocess.cache import CachedCase, open_cache
from glioseg.train.augment import AugmentConfig
from glioseg.train.data import make_loader


def _time_batches(loader: Iterable, warmup: int, batches: int, desc: str
                  ) -> tuple[float, tuple[int, ...]]:
    """Seconds to draw ``batches`` batches after ``warmup`` ones; shape of an image batch."""
    it = iter(loader)
    shape: tuple[int, ...] = ()
    for _ in range(warmup):
        shape = tuple(_image_of(next(it)).shape)
    t0 = time.perf_counter()
    for i in range(batches):
        shape = tuple(_image_of(next(it)).shape)
        print(f"\r{desc}: batch {i + 1}/{batches}", end="", flush=True)
    dt = time.perf_counter() - t0
    print()
    return dt, shape


def _image_of(batch: Any) -> torch.Tensor:
    return batch["image"] if isinstance(batch, dict) else batch[0]


def monai_loader(
    cases: Sequence[CachedCase], patch_size: Sequence[int], batch_size: int, num_workers: int,
    seed: int = 0,
):
    """The plain MONAI pipeline described in the module docstring (endless)."""
    from monai.data import CacheDataset, DataLoader
    from monai.transforms import (
        Compose,
        EnsureTyped,
        FgBgToIndicesd,
        Lambdad,
        RandAdjustContrastd,
        RandAffined,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
    )

    keys = ["image", "label"]
    size = [int(s) for s in patch_size]
    transforms = Compose([
        EnsureTyped(keys=keys, track_meta=False),
        # Deterministic, so CacheDataset runs it once per case and keeps the indices.
        FgBgToIndicesd(keys="label"),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=size, pos=1, neg=2,
                               num_samples=1, fg_indices_key="label_fg_indices",
                               bg_indices_key="label_bg_indices"),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandAffined(keys=keys, prob=0.36, rotate_range=(math.pi / 6,) * 3,
                    scale_range=(0.3,) * 3, mode=("bilinear", "nearest"),
                    padding_mode="zeros", spatial_size=size, cache_grid=True),
        RandGaussianNoised(keys="image", prob=0.1, std=0.316),
        RandGaussianSmoothd(keys="image", prob=0.1, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                            sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        RandScaleIntensityFixedMeand(keys="image", factors=0.25, prob=0.15,
                                     preserve_range=True),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
        Lambdad(keys="label", func=_regions_1ch),
    ])
    transforms.set_random_state(seed=seed)
    data = [{"image": np.array(c.image), "label": np.array(c.labels)[None]} for c in cases]
    ds = CacheDataset(data, transform=transforms, num_workers=1, progress=False)

    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            rng = np.random.default_rng([seed, 0 if info is None else info.id])
            while True:
                item = ds[int(rng.integers(len(ds)))]
                yield item[0] if isinstance(item, list) else item

    return DataLoader(Endless(), batch_size=batch_size, num_workers=num_workers)


def _regions_1ch(label: torch.Tensor) -> torch.Tensor:
    """MONAI label ``(1, X, Y, Z)`` -> regions ``(3, X, Y, Z)`` float32 (WT, TC, ET)
    (``glioseg.data.labels.region_masks``)."""
    lab = torch.as_tensor(label)[0].long()
    return torch.stack(region_masks(lab)).float()


def bench_data(
    cache_dir: str | Path,
    patch_size: Sequence[int] = (48, 48, 48),
    batch_size: int = 2,
    batches: int = 100,
    warmup: int = 3,
    num_workers: int = 1,
    seed: int = 0,
    device: str | None = None,
    step_rate: float | None = None,
    config: str = "small",
) -> dict[str, Any]:
    """Measure and print patches/s of ours and of MONAI (see the module docstring); with
    ``device`` also the loader workers a step of ``step_rate`` steps/s needs (measured with
    ``config`` when None; ``workers_needed``).

    Returns:
        ``{"ours_patches_per_s", "monai_patches_per_s", "ratio", "patch_size", "batch_size",
        "num_workers", "cases"}`` (and ``"workers"`` with ``device``).
    """
    cases = [c for c in open_cache(cache_dir) if c.meta.get("has_labels")]
    if not cases:
        raise BenchError(f"{cache_dir}: no case with labels")
    threads = torch.get_num_threads()  # for the training step measured with ``device``
    torch.set_num_threads(1)  # the pipelines run in the loader workers, not here
    ours = make_loader(cases, patch_size, batch_size, seed=seed, num_workers=num_workers,
                       augment_cfg=AugmentConfig(), pin_memory=False)
    t_ours, shape_ours = _time_batches(ours, warmup, batches, "ours")
    monai = monai_loader(cases, patch_size, batch_size, num_workers, seed)
    t_monai, shape_monai = _time_batches(monai, warmup, batches, "MONAI")
    if shape_ours != shape_monai:
        raise BenchRunFailed(f"pipelines disagree on the batch shape: {shape_ours} vs "
                             f"{shape_monai}")
    n = batches * batch_size
    out = {
        "cases": len(cases),
        "patch_size": list(map(int, patch_size)),
        "batch_size": batch_size,
        "num_workers": num_workers,
        "ours_patches_per_s": n / t_ours,
        "monai_patches_per_s": n / t_monai,
    }
    out["ratio"] = out["ours_patches_per_s"] / out["monai_patches_per_s"]
    print(f"cases {len(cases)}, patch {tuple(out['patch_size'])}, batch {batch_size}, "
          f"workers {num_workers}, {batches} batches after {warmup} warm-up")
    print(f"{'ours':<8}{out['ours_patches_per_s']:8.2f} patches/s")
    print(f"{'MONAI':<8}{out['monai_patches_per_s']:8.2f} patches/s  (fg/bg indices cached "
          "once per case: FgBgToIndicesd + RandCropByPosNegLabeld)")
    print(f"ratio   {out['ratio']:8.2f}x ours / MONAI")
    if device is not None:
        out["workers"] = workers_needed(cases, patch_size, batch_size, device, step_rate,
                                        config, threads=threads)
    return out


def worker_rate(cases: Sequence[CachedCase], patch_size: Sequence[int], batch_size: int,
                augment_on: str, batches: int, warmup: int, seed: int = 0) -> float:
    """Batches/s of one loader worker process (one thread) on ``augment_on`` (``worker``:
    crop and augment; ``device``: crop only)."""
    loader = make_loader(cases, patch_size, batch_size, seed=seed, num_workers=1,
                         augment_cfg=AugmentConfig(), pin_memory=False, augment_on=augment_on)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - t0)


def step_rate_of(config: str, patch_size: Sequence[int], batch_size: int, device: str,
                 threads: int, steps: int = 10, warmup: int = 3) -> float:
    """Steps/s of ``config``'s training step on ``device`` at this patch and batch with
    ``threads`` CPU threads, measured on synthetic batches (``glioseg.bench.train.measure``;
    precision, layout and compilation as the config says, ``auto`` resolved)."""
    from glioseg.bench.train import measure
    from glioseg.train import config as C
    from glioseg.train import distributed as D

    side = ",".join(str(int(p)) for p in patch_size)
    cfg = C.load_config(config, [f"data.patch_size=[{side}]", f"data.batch_size={batch_size}",
                                 f"train.device={device}", f"train.threads={threads}"])
    info = D.init(cfg.train.device, cfg.train.threads)
    try:
        row = measure(cfg, steps=steps, warmup=warmup, amp=cfg.train.amp, cache=None, info=info)
    finally:
        D.shutdown({}, clean=True)
    return float(row["steps_per_s"])


def workers_needed(cases: Sequence[CachedCase], patch_size: Sequence[int], batch_size: int,
                   device: str, step_rate: float | None = None, config: str = "small",
                   batches: int = 10, warmup: int = 2, threads: int = 1) -> dict[str, Any]:
    """Print and return how many loader workers each augmentation path needs to feed
    ``step_rate`` steps/s (measured on ``device`` with ``config`` and ``threads`` when None)."""
    if step_rate is None:
        step_rate, source = step_rate_of(config, patch_size, batch_size, device, threads), (
            f"measured: the {config} config's step on {device}")
    else:
        source = "given"
    if not step_rate > 0:
        raise BenchError(f"step rate {step_rate}: must be > 0")
    out: dict[str, Any] = {"device": device, "step_rate": step_rate, "step_rate_source": source}
    print(f"to feed {step_rate:.2f} steps/s ({source}), batch {batch_size}, "
          f"patch {tuple(int(p) for p in patch_size)}:")
    for path, label in (("worker", "CPU augmentation"), ("device", "device augmentation")):
        rate = worker_rate(cases, patch_size, batch_size, path, batches, warmup)
        need = math.ceil(step_rate / rate)
        out[f"{path}_batches_per_s_per_worker"] = rate
        out[f"{path}_workers_needed"] = need
        what = "crop + augment" if path == "worker" else "crop only"
        print(f"  {label:<20} {rate:7.2f} batches/s per worker ({what}) -> {need} workers")
    return out
