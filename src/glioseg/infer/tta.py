"""Mirror test-time augmentation: average the logits of flipped copies of each window.

Flipping is exact for a network on a voxel grid, and the Gaussian importance map is symmetric,
so mirroring can be done per window (as nnU-Net does) rather than per volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from glioseg.infer.sliding_window import Predictor


def mirror_combinations(axes: Sequence[int] = (0, 1, 2)) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` to flip, the empty one (identity) first.

    Three axes give 8 combinations.
    """
    axes = tuple(axes)
    return [c for r in range(len(axes) + 1) for c in combinations(axes, r)]


def mirrored(predictor: Predictor, axes: Sequence[int] = (0, 1, 2)) -> Predictor:
    """A predictor averaging ``predictor`` over all mirrorings of the spatial ``axes``.

    Args:
        predictor: ``(B, C, x, y, z)`` -> ``(B, K, x, y, z)`` logits.
        axes: spatial axes (0 = x) to mirror.

    Returns:
        The same signature; logits averaged in float32 over ``2 ** len(axes)`` passes.
    """
    combos = mirror_combinations(axes)

    def predict(x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for combo in combos:
            dims = [a + 2 for a in combo]
            xi = torch.flip(x, dims) if dims else x
            yi = predictor(xi).float()
            yi = torch.flip(yi, dims) if dims else yi
            total = yi if total is None else total + yi
        assert total is not None
        return total / len(combos)

    return predict
