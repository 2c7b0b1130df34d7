"""What differs between a checkpoint's config and the config of the run that resumes it.

A resumed run must be the same experiment: every key outside ``RESUME_MUTABLE`` must match
(``config_differences``, a refusal otherwise); the keys of ``RESUME_MUTABLE`` may change and
are reported (``resume_changes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glioseg.records import flatten

RESUME_MUTABLE = frozenset({
    "data.cache_dir", "data.workers", "train.steps", "train.val_every", "train.ckpt_every",
    "train.log_every", "train.threads", "train.device", "train.compile",
    "optim.lr", "train.amp", "train.channels_last",
})
"""Config keys that may differ between a checkpoint and the run that resumes it (what changed
is printed and logged as a ``split: resume`` record of ``metrics.jsonl``). ``optim.lr`` and
``train.amp`` are the remedies a diverged run needs: a new ``optim.lr`` replaces the schedule's
peak from the resumed step on (``components.apply_lr``); a new precision takes a fresh loss scaler.
``train.channels_last`` (a memory layout: the same weights) may differ when ``auto`` chose
another on another device (``glioseg.train.device_policy``)."""



def resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Keys of ``RESUME_MUTABLE`` whose values differ: ``{"optim.lr": [old, new], ...}``."""
    a, b = flatten(saved), flatten(current)
    return {k: [a.get(k), b.get(k)] for k in sorted(RESUME_MUTABLE)
            if a.get(k, "<absent>") != b.get(k, "<absent>")}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys (outside ``RESUME_MUTABLE``) whose values differ: ``["train.seed: 0 != 1", ...]``."""
    a, b = flatten(saved), flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_MUTABLE:
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {a.get(key, '<absent>')!r} != {b.get(key, '<absent>')!r}")
    return diffs

