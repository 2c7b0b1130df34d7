"""Training batches from the preprocessing cache: patches, augmentation, regions.

``make_loader`` gives a ``torch.utils.data.DataLoader`` over an ``IterableDataset`` that yields
whole batches ``(image (B, 4, px, py, pz) float32, regions (B, 3, px, py, pz) float32)``,
regions in the order WT, TC, ET. Each batch is built by ``sample_batch``:

1. draw the batch's augmentation parameters (``glioseg.train.augment.draw_params``);
2. for each patch: a case uniformly at random, a foreground-centred (probability
   ``oversample_fg``) or uniform position (``glioseg.train.sampling``), and a copy of the box the
   augmentation needs around it, read from the memory-mapped cache;
3. one batched spatial + intensity augmentation (``glioseg.train.augment.augment_batch``);
4. labels -> regions.

With ``augment_on="device"`` the workers stop after step 2: they yield
``glioseg.train.augment_batched.PatchBoxes`` (the crops and the drawn parameters, drawn with the
same generator calls), and ``glioseg.train.loop.to_batch`` applies steps 3-4 to the batch on
the training device.

Randomness: each (seed, rank, worker, epoch) has its own ``np.random.Generator``, so every DDP
rank and every loader worker draws different patches, and a run is reproducible. Ranks do not
partition the cases: each draws from all of them, as random patch sampling needs no sharding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from glioseg.data.labels import region_masks
from glioseg.errors import GliosegError
from glioseg.preprocess.cache import CachedCase, open_cache
from glioseg.train.augment import (
    AugmentConfig,
    AugmentParams,
    augment_intensity,
    draw_params,
    inverse_view,
    required_extent,
    resample_patches,
)
from glioseg.train.sampling import clipped_box, draw_origins, extract_box


class DataError(GliosegError, ValueError):
    """Training data that cannot be used (no cases, cases without labels, bad arguments)."""


def case_split(case_ids: Sequence[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """Random train / validation split of ``case_ids``.

    Returns:
        ``(train_ids, val_ids)``, each sorted; ``n_val`` validation cases drawn with
        ``np.random.default_rng(seed)``; the same ids and seed give the same split.

    Raises:
        DataError: if ``n_val`` is negative or leaves no training case.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        raise DataError("case ids are not unique")
    if n_val < 0 or n_val >= len(ids):
        raise DataError(f"n_val={n_val} must be in [0, {len(ids) - 1}] for {len(ids)} cases")
    order = np.random.default_rng(seed).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    return [c for c in ids if c not in set(val)], val


def regions_from_labels_np(labels: np.ndarray) -> np.ndarray:
    """Internal labels ``(B, X, Y, Z)`` uint8 (0..3) -> regions ``(B, 3, X, Y, Z)`` float32,
    by ``glioseg.data.labels.region_masks``, written into one preallocated array."""
    out = np.empty((labels.shape[0], 3, *labels.shape[1:]), np.float32)
    for n in range(labels.shape[0]):
        for r, mask in enumerate(region_masks(labels[n])):
            out[n, r] = mask
    return out


def sample_batch(
    cases: Sequence[CachedCase],
    patch_size: Sequence[int],
    batch_size: int,
    rng: np.random.Generator,
    oversample_fg: float = 1 / 3,
    augment_cfg: AugmentConfig | None = None,
    border: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch drawn with ``rng`` (see the module docstring); ``border``: how far
    a patch may reach beyond the cropped volume (``glioseg.train.sampling.origin_range``).

    Patches that are only flipped / turned by 90 degrees are copied from the memory map
    straight into their place in the batch through a flipped, transposed view (one copy, no
    interpolation); the others are read as a larger box and resampled by one batched
    ``grid_sample``.

    Returns:
        ``image`` ``(B, C, px, py, pz)`` float32 (``C`` the cases' channels, 4 for a whole
        cache) and ``regions`` ``(B, 3, px, py, pz)`` float32.
    """
    size = np.array([int(s) for s in patch_size])
    b = int(batch_size)
    n_channels = int(cases[0].image.shape[0])
    params = None if augment_cfg is None else draw_params(rng, b, n_channels, size, augment_cfg)
    exact = np.ones(b, bool) if params is None else params.exact()
    image = np.empty((b, n_channels, *size), np.float32)
    labels = np.empty((b, *size), np.uint8)
    img_t, lab_t = torch.from_numpy(image), torch.from_numpy(labels)
    for n, (case, origin) in enumerate(draw_origins(cases, size, b, rng, oversample_fg,
                                                     border)):
        if exact[n]:
            img_view, lab_view = image[n], labels[n]
            if params is not None:
                img_view = inverse_view(img_view, params.matrix[n])
                lab_view = inverse_view(lab_view, params.matrix[n])
            extract_box(case.image, origin, img_view.shape[1:], out=img_view)
            extract_box(case.labels, origin, lab_view.shape, out=lab_view)
        else:
            img_t[n], lab_t[n] = _resample_from_case(case, origin, size, params, n)
    if params is not None:
        augment_intensity(img_t, params)
    return img_t, torch.from_numpy(regions_from_labels_np(labels))


def _resample_from_case(
    case: CachedCase, origin: np.ndarray, size: np.ndarray, params: AugmentParams, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated / scaled / deformed patch ``n`` of the batch: read only the part of its box
    (``required_extent``) that lies inside the volume, then one ``grid_sample``; voxels
    outside the volume read as 0 (background), as padding would give."""
    sl, centre = clipped_box(origin, size, np.array(required_extent(params, size, [n])),
                             case.shape)
    img = np.array(case.image[(slice(None), *sl)])
    lab = np.array(case.labels[sl])
    thin = [(0, int(d < 2)) for d in lab.shape]  # grid_sample needs 2 voxels to interpolate
    if any(t for _, t in thin):
        img, lab = np.pad(img, [(0, 0), *thin]), np.pad(lab, thin)
    out_img, out_lab = resample_patches(torch.from_numpy(img)[None], torch.from_numpy(lab)[None],
                                        params, [n], size, centre[None])
    return out_img[0], out_lab[0]


class PatchStream(IterableDataset):
    """Batches of patches from cached cases; each item is a whole batch (use
    ``DataLoader(batch_size=None)``).

    Args:
        cases: cached cases with labels.
        patch_size, batch_size, oversample_fg, augment_cfg, border: see ``sample_batch``.
        augment_on: ``worker`` (augmented batches) or ``device`` (``PatchBoxes``, augmented
            after the move to the training device).
        seed, rank: seed of the run and DDP rank; with the worker id and the epoch they seed
            each worker's generator.
        batches_per_epoch: batches one iteration yields in total over the workers; None:
            endless.
    """

    def __init__(
        self,
        cases: Sequence[CachedCase],
        patch_size: Sequence[int],
        batch_size: int,
        seed: int,
        rank: int = 0,
        oversample_fg: float = 1 / 3,
        augment_cfg: AugmentConfig | None = None,
        batches_per_epoch: int | None = None,
        border: float = 0.0,
        augment_on: str = "worker",
    ) -> None:
        super().__init__()
        self.cases = list(cases)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.batch_size = int(batch_size)
        self.seed, self.rank = int(seed), int(rank)
        self.oversample_fg = float(oversample_fg)
        self.augment_cfg = augment_cfg
        self.batches_per_epoch = batches_per_epoch
        self.border = float(border)
        if augment_on not in ("worker", "device"):
            raise DataError(f"augment_on={augment_on!r} is not worker or device")
        self.augment_on = augment_on
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the generators of ``epoch`` from the next ``iter()`` on (workers restart)."""
        self.epoch = int(epoch)

    def rng_for(self, worker: int) -> np.random.Generator:
        """The generator of ``worker`` in this rank and epoch."""
        return np.random.default_rng([self.seed, self.rank, worker, self.epoch])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = self.rng_for(worker)
        if self.batches_per_epoch is None:
            count = None
        else:
            count = len(range(worker, self.batches_per_epoch, n_workers))
        done = 0
        draw = sample_batch
        if self.augment_on == "device":
            from glioseg.train.augment_batched import crop_boxes

            draw = crop_boxes  # type: ignore[assignment]
        while count is None or done < count:
            yield draw(self.cases, self.patch_size, self.batch_size, rng,
                       self.oversample_fg, self.augment_cfg, self.border)
            done += 1

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("an endless PatchStream has no length")
        return self.batches_per_epoch


def augment_on(augment_device: str, device: torch.device) -> str:
    """Where ``data.augment_device`` puts the augmentation of a run on ``device``: ``worker``
    (``cpu``, or ``auto`` off a GPU) or ``device`` (``cuda``, or ``auto`` on a GPU).

    Raises:
        DataError: ``cuda`` for a run that does not train on a GPU, or an unknown value.
    """
    if augment_device not in ("auto", "cpu", "cuda"):
        raise DataError(f"data.augment_device={augment_device!r} is not auto, cpu or cuda")
    on_gpu = device.type == "cuda"
    if augment_device == "cuda" and not on_gpu:
        raise DataError(f"data.augment_device=cuda, but this run trains on {device.type}; "
                        "use auto or cpu")
    return "device" if (augment_device == "cuda" or (augment_device == "auto" and on_gpu)) \
        else "worker"


def _worker_init(_: int) -> None:
    # Loader workers share the cores with the training process: one thread each.
    torch.set_num_threads(1)


def make_loader(
    cache: str | Path | Sequence[CachedCase],
    patch_size: Sequence[int],
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    oversample_fg: float = 1 / 3,
    augment_cfg: AugmentConfig | None = None,
    batches_per_epoch: int | None = None,
    pin_memory: bool | None = None,
    border: float = 0.0,
    augment_on: str = "worker",
) -> DataLoader:
    """A DataLoader of training batches ``(image (B, 4, px, py, pz), regions (B, 3, ...))``.

    Args:
        cache: a cache folder or a list of its cases (e.g. the training split).
        patch_size: ``(px, py, pz)`` voxels.
        batch_size: patches per batch (per rank).
        seed: run seed; rank, worker id and epoch (``loader.dataset.set_epoch(e)``) are mixed in.
        rank, world_size: this process's DDP rank and the number of ranks.
        num_workers: loader processes (0: in this process).
        oversample_fg: probability that a patch is centred on a tumour voxel.
        augment_cfg: augmentation, or None for none.
        batches_per_epoch: batches per ``iter(loader)``; None: endless.
        pin_memory: default: when CUDA is available.
        border: how far a patch may reach beyond a case's cropped volume, as a fraction of
            the patch per face (0: inside; ``glioseg.train.sampling.origin_range``).
        augment_on: ``worker``: the workers yield augmented ``(image, regions)`` batches;
            ``device``: they only crop and yield ``glioseg.train.augment_batched.PatchBoxes``, which
            ``glioseg.train.loop.to_batch`` augments on the training device.

    Raises:
        DataError / CacheError: for an empty or unlabelled case list, or bad arguments.
    """
    cases = open_cache(cache) if isinstance(cache, str | Path) else list(cache)
    if not cases:
        raise DataError("no cases to train on")
    unlabelled = [c.case_id for c in cases if not c.meta.get("has_labels")]
    if unlabelled:
        raise DataError(f"cases without labels cannot be used for training: "
                        f"{', '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}")
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, {world_size})")
    if batch_size < 1 or len(patch_size) != 3 or min(patch_size) < 1:
        raise DataError(f"bad batch_size {batch_size} or patch_size {tuple(patch_size)}")
    if not 0 <= oversample_fg <= 1:
        raise DataError(f"oversample_fg={oversample_fg} must be in [0, 1]")
    if not 0 <= border <= 0.5:
        raise DataError(f"border={border} must be in [0, 0.5]")
    stream = PatchStream(cases, patch_size, batch_size, seed, rank, oversample_fg,
                         augment_cfg, batches_per_epoch, border, augment_on)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )
