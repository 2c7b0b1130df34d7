"""The cases a training run learns and validates on, and the endless patch stream of its
training cases.

``select_cases`` chooses them (``data.cases``, a random hold-out or ``data.val_cache``, every
case for pretraining) and shows them through ``data.modalities`` (``CaseView``);
``make_train_loader`` and ``forever`` turn the training cases into batches, reseeded from the
step on resume (``loader_seed``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train.errors import TrainError

UNLABELLED_HINT = ("segmentation training needs labelled cases; to learn from unlabelled scans, "
                   "pretrain on them (`glioseg pretrain --data DIR --out RUN_DIR`) and fine-tune "
                   "the result on a few labelled cases (`glioseg finetune`)")



class CaseView:
    """A cached case seen through ``data.modalities`` (``image`` keeps only those channels, in
    that order) and, for self-supervised pretraining, with all-background labels when it has
    none. Picklable: loader workers receive paths, not voxels.

    ``meta`` describes the view: a view with blank labels has labels (all background), so its
    ``meta["has_labels"]`` is True (and ``meta["blank_labels"]`` marks them); the loader, which
    refuses cases without labels, then takes it. The cached case's own ``meta`` is unchanged.
    """

    def __init__(self, case: Any, channels: Sequence[int] | None = None,
                 blank_labels: bool = False) -> None:
        self.case = case
        self.case_id = case.case_id
        self.channels = None if channels is None else [int(c) for c in channels]
        self.blank_labels = blank_labels and not case.meta.get("has_labels")
        self.meta = ({**case.meta, "has_labels": True, "blank_labels": True}
                     if self.blank_labels else case.meta)

    @property
    def image(self) -> Any:
        img = self.case.image
        return img if self.channels is None else img[self.channels]

    @property
    def labels(self) -> Any:
        if self.blank_labels:
            import numpy as np

            # a read-only zero of the volume's shape that holds one byte, not a volume
            return np.broadcast_to(np.zeros((), np.uint8), self.case.shape)
        return self.case.labels

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.case.shape

    @property
    def locations(self) -> dict[int, Any]:
        return {} if self.blank_labels else self.case.locations

    def __repr__(self) -> str:
        return f"CaseView({self.case_id!r}, channels={self.channels})"


def channel_indices(modalities: Sequence[str]) -> list[int]:
    """Cache channels (always ``MODALITIES`` order) of ``modalities``, in their order."""
    from glioseg.data.labels import MODALITIES

    return [MODALITIES.index(m) for m in modalities]


def select_cases(cfg: C.Config, cases: Sequence[Any],
                 val_cases: Sequence[Any] | None = None) -> tuple[list[Any], list[Any]]:
    """(training cases, validation cases) of a run.

    ``data.cases`` restricts the cache to those ids (an unknown id is an error naming it);
    ``val_cases`` (the labelled cases of ``data.val_cache``) replaces the random hold-out.
    Pretraining (``train.task=genesis``) trains on every chosen case, labelled or not, and does
    not validate. Validation cases are views restricted to ``data.modalities``. A chosen case
    whose cache holds no data for one of ``data.modalities`` is an error naming it.
    """
    from glioseg.preprocess.cache import require_modalities

    wanted = list(cfg.data.cases)
    if wanted:
        by_id = {c.case_id: c for c in cases}
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise TrainError(f"data.cases: {', '.join(unknown[:5])} not in the cache "
                             f"{cfg.data.cache_dir} ({len(by_id)} cases)")
        cases = [by_id[i] for i in wanted]
    if cfg.train.task == "genesis":
        if not cases:
            raise TrainError(f"{cfg.data.cache_dir}: no case to pretrain on")
        require_modalities(cases, cfg.data.modalities)
        return [CaseView(c, blank_labels=True) for c in cases], []
    channels = channel_indices(cfg.data.modalities)
    if val_cases is not None:
        train = [c for c in cases if c.meta.get("has_labels")]
        if not train:
            raise TrainError(f"{cfg.data.cache_dir}: none of the {len(cases)} chosen cases has "
                             f"labels: nothing to train on; {UNLABELLED_HINT}")
        val_used = [c for c in val_cases if c.meta.get("has_labels")]
        require_modalities(train + val_used, cfg.data.modalities)
        return train, [CaseView(c, channels) for c in val_used]
    train, val = split_cases(cases, cfg.data.n_val, cfg.train.seed)
    require_modalities(train + val, cfg.data.modalities)
    return train, [CaseView(c, channels) for c in val]


SPLIT_NAME = "split.json"
"""File of a run folder naming its training and validation cases (``split_record``)."""

SHOWN_IDS = 10
"""Validation case ids printed at the start of a run; all are in ``RUN_DIR/split.json``."""


def split_record(cfg: C.Config, train: Sequence[Any], val: Sequence[Any]) -> dict[str, Any]:
    """What ``RUN_DIR/split.json`` holds: the training and validation case ids, and where the
    validation cases came from (a ``data.n_val`` hold-out seeded by ``train.seed``, every
    labelled case of ``data.val_cache``, or none for pretraining)."""
    if cfg.train.task == "genesis":
        source = "none (pretraining)"
    elif cfg.data.val_cache:
        source = "data.val_cache"
    else:
        source = "hold-out"
    return {"cache_dir": cfg.data.cache_dir, "val_cache": cfg.data.val_cache or None,
            "validation_source": source, "n_val": cfg.data.n_val, "seed": cfg.train.seed,
            "train": [c.case_id for c in train], "validation": [c.case_id for c in val]}


def split_lines(cfg: C.Config, train: Sequence[Any], val: Sequence[Any],
                run_dir: Any = None) -> list[str]:
    """What a run prints at its start: ``training on N cases, validating on M: ids`` (the first
    ``SHOWN_IDS``; all in ``RUN_DIR/split.json``), and why there are fewer validation cases
    than ``data.n_val`` asks for."""
    def cases(n: int) -> str:
        return f"{n} case{'s' if n != 1 else ''}"

    if cfg.train.task == "genesis":
        return [f"pretraining on {cases(len(train))} (no validation)"]
    ids = [c.case_id for c in val]
    shown = ", ".join(ids[:SHOWN_IDS])
    if len(ids) > SHOWN_IDS:
        shown += f", ... (+{len(ids) - SHOWN_IDS} more)"
    where = f" (all listed in {run_dir}/{SPLIT_NAME})" if run_dir is not None else ""
    if cfg.data.val_cache:
        source = f" (the labelled cases of data.val_cache {cfg.data.val_cache})"
    else:
        source = f" (held out at random, train.seed {cfg.train.seed})"
    if ids:
        lines = [f"training on {cases(len(train))}, validating on {len(ids)}{source}: "
                 f"{shown}{where}"]
    else:
        lines = [f"training on {cases(len(train))}, no validation"
                 + (" (data.n_val 0)" if cfg.data.n_val == 0 else "")]
    if not cfg.data.val_cache and len(ids) < cfg.data.n_val:
        n = len(train) + len(ids)
        lines.append(f"note: data.n_val {cfg.data.n_val} reduced to {len(ids)}: the run has "
                     f"{cases(n)} with labels and at least one must train (add cases or "
                     "pass a validation cache with --set data.val_cache=CACHE)")
    if ids:
        lines.append("evaluate the model on the validation cases or on other data, not on "
                     "the training cases")
    return lines


def split_cases(cases: Sequence[Any], n_val: int, seed: int) -> tuple[list[Any], list[Any]]:
    """(training cases, validation cases) among the labelled cases: ``n_val`` held out at random
    by ``glioseg.train.data.case_split`` (same ids and seed, same split); at least one case is
    kept for training."""
    from glioseg.train.data import case_split

    labelled = {c.case_id: c for c in cases if c.meta.get("has_labels")}
    if not labelled:
        where = f"{cases[0].path.parent}: " if cases and hasattr(cases[0], "path") else ""
        raise TrainError(f"{where}the cache has no case with labels (none of its {len(cases)} "
                         f"cases had a segmentation file): nothing to train on; "
                         f"{UNLABELLED_HINT}")
    n_val = max(0, min(n_val, len(labelled) - 1))
    train_ids, val_ids = case_split(list(labelled), n_val, seed)
    return [labelled[i] for i in train_ids], [labelled[i] for i in val_ids]


def loader_seed(seed: int, step: int) -> int:
    """Seed of the patch stream from ``step`` on (the loader mixes in the rank and worker): a
    resumed run draws fresh, reproducible patches instead of replaying those already seen."""
    if step == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def make_train_loader(cfg: C.Config, cases: Sequence[Any], info: D.DistInfo, step: int) -> Any:
    """The patch loader of this rank (``glioseg.train.data.make_loader``), endless; pinned
    memory on GPU; augmentation in the workers or on the device (``data.augment_device``)."""
    from glioseg.train.augment import AugmentConfig
    from glioseg.train.data import augment_on, make_loader

    d = cfg.data
    augment = (AugmentConfig.from_switches(flip=d.aug_flip, rotate_scale=d.aug_rotate_scale,
                                           intensity=d.aug_intensity, noise=d.aug_noise,
                                           elastic=d.aug_elastic)
               if d.augment else None)
    return make_loader(
        cases, patch_size=cfg.patch_size, batch_size=d.batch_size,
        seed=loader_seed(cfg.train.seed, step), rank=info.rank, world_size=info.world_size,
        num_workers=d.workers, oversample_fg=d.foreground_fraction, augment_cfg=augment,
        batches_per_epoch=None, pin_memory=info.device.type == "cuda", border=d.border,
        augment_on=augment_on(d.augment_device, info.device),
    )


def forever(loader: Any) -> Iterator[Any]:
    """Items of ``loader``, epoch after epoch."""
    while True:
        empty = True
        for item in loader:
            empty = False
            yield item
        if empty:
            raise TrainError("the training loader yielded no batch")

