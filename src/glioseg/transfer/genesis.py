"""Models Genesis corruptions for self-supervised pretraining (Zhou et al., MedIA 2021).

The network learns to restore a patch from a corrupted copy. Four corruptions, each applied
with a probability:

- non-linear intensity mapping by a monotone cubic Bezier curve (half of the time inverted),
- local voxel shuffling inside small random blocks,
- in-painting (random boxes replaced by noise) or out-painting (everything outside a random
  box replaced by noise).

Departure from the paper, on purpose: the paper maps patches to [0, 1] and restores them with
a sigmoid head. Our fine-tuning input is z-scored (``preprocess``), so the corruptions are
applied to the z-scored values mapped to [0, 1] by a fixed clip ``[-clip, clip]`` and mapped
back; the target is the z-scored patch itself and the head is linear. The pretrained encoder
then sees the same input distribution during pretraining and fine-tuning.

As everywhere in the project, parameters are drawn first (``draw_params``) from an explicit
generator, and a deterministic function applies them (``apply``), so every corruption can be
reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class GenesisConfig:
    nonlinear_rate: float = 0.9  # probability of the Bezier intensity mapping (paper: 0.9)
    shuffle_rate: float = 0.5  # probability of local voxel shuffling (paper: 0.5)
    paint_rate: float = 0.9  # probability of in- or out-painting (paper: 0.9)
    inpaint_rate: float = 0.2  # given painting, probability of in-painting vs out-painting
    shuffle_blocks: int = 200  # blocks shuffled per patch (paper: 10,000 on 64^3; fewer is
    # as effective on small patches and keeps the CPU loader fast)
    max_block_fraction: float = 0.1  # block edge at most this fraction of the patch edge
    clip: float = 5.0  # z-scores clipped to [-clip, clip] when mapped to [0, 1]


@dataclass
class GenesisParams:
    """Everything ``apply`` needs; drawn by ``draw_params``."""

    curve: np.ndarray | None = None  # (4, 2) Bezier control points, or None
    invert: bool = False
    blocks: list[tuple[tuple[int, int, int], tuple[int, int, int], int]] = field(default_factory=list)
    inpaint_boxes: list[tuple[tuple[int, int, int], tuple[int, int, int]]] = field(default_factory=list)
    outpaint_box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    noise_seed: int = 0


def bezier_lut(points: np.ndarray, n: int = 1001) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Bezier curve through 4 control points ``(4, 2)`` -> (x, y) samples sorted by x."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = points
    xy = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    order = np.argsort(xy[:, 0])
    return xy[order, 0], xy[order, 1]


def _box(rng: np.random.Generator, shape: tuple[int, ...], lo: float, hi: float):
    size = tuple(int(rng.integers(max(1, int(s * lo)), max(2, int(s * hi)) + 1)) for s in shape)
    start = tuple(int(rng.integers(0, s - e + 1)) for s, e in zip(shape, size, strict=True))
    return start, size


def draw_params(shape: tuple[int, int, int], rng: np.random.Generator,
                cfg: GenesisConfig = GenesisConfig()) -> GenesisParams:
    """Draw the corruption of one patch of spatial ``shape``."""
    p = GenesisParams(noise_seed=int(rng.integers(2**31)))
    if rng.random() < cfg.nonlinear_rate:
        p.curve = np.array([[0, 0], rng.random(2), rng.random(2), [1, 1]], dtype=np.float64)
        p.invert = bool(rng.random() < 0.5)
    if rng.random() < cfg.shuffle_rate:
        for _ in range(cfg.shuffle_blocks):
            size = tuple(int(rng.integers(1, max(2, int(s * cfg.max_block_fraction)) + 1))
                         for s in shape)
            start = tuple(int(rng.integers(0, s - e + 1)) for s, e in zip(shape, size, strict=True))
            p.blocks.append((start, size, int(rng.integers(2**31))))
    if rng.random() < cfg.paint_rate:
        if rng.random() < cfg.inpaint_rate:
            p.inpaint_boxes = [_box(rng, shape, 1 / 6, 1 / 3) for _ in range(int(rng.integers(1, 6)))]
        else:
            p.outpaint_box = _box(rng, shape, 3 / 7, 4 / 7)
    return p


def apply(patch: np.ndarray, p: GenesisParams, cfg: GenesisConfig = GenesisConfig()) -> np.ndarray:
    """Corrupt ``patch`` ``(C, X, Y, Z)`` float32 (z-scored) with drawn parameters ``p``.

    Returns a new array of the same shape and dtype; ``patch`` is not modified.
    """
    x = (np.clip(patch, -cfg.clip, cfg.clip) + cfg.clip) / (2 * cfg.clip)  # -> [0, 1]
    if p.curve is not None:
        xs, ys = bezier_lut(p.curve)
        x = np.interp(x, xs, ys)
        if p.invert:
            x = 1.0 - x
    x = x.astype(np.float32)
    for start, size, seed in p.blocks:
        sl = (slice(None),) + tuple(slice(s, s + e) for s, e in zip(start, size, strict=True))
        block = x[sl]
        flat = block.reshape(block.shape[0], -1)
        perm = np.random.default_rng(seed).permutation(flat.shape[1])
        x[sl] = flat[:, perm].reshape(block.shape)
    noise_rng = np.random.default_rng(p.noise_seed)
    for start, size in p.inpaint_boxes:
        sl = (slice(None),) + tuple(slice(s, s + e) for s, e in zip(start, size, strict=True))
        x[sl] = noise_rng.random(x[sl].shape, dtype=np.float32)
    if p.outpaint_box is not None:
        start, size = p.outpaint_box
        sl = (slice(None),) + tuple(slice(s, s + e) for s, e in zip(start, size, strict=True))
        kept = x[sl].copy()
        x = noise_rng.random(x.shape, dtype=np.float32)
        x[sl] = kept
    return (x * (2 * cfg.clip) - cfg.clip).astype(patch.dtype, copy=False)


def corrupt_batch(batch: np.ndarray, rng: np.random.Generator,
                  cfg: GenesisConfig = GenesisConfig()) -> np.ndarray:
    """Corrupt every patch of ``batch`` ``(B, C, X, Y, Z)`` independently."""
    return np.stack([apply(b, draw_params(b.shape[1:], rng, cfg), cfg) for b in batch])
