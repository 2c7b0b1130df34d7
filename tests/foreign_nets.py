"""Helpers for the tests of foreign checkpoint import: networks built with the libraries' own
classes are perturbed so that a mis-mapped tensor shows, and outputs compared within ``TOL``.

Tolerance: the imported networks run the same operations on the same numbers, possibly on
permuted axes, so outputs agree to float32 rounding: rtol 1e-4, atol 1e-4 on logits of order 1.
"""

import torch

TOL = dict(rtol=1e-4, atol=1e-4)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (norm scales too) so that a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return module.eval()
