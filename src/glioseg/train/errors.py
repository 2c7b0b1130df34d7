"""``TrainError``: a training run that cannot start or go on.

In a module of its own so that every training module (case selection, components, launch,
the loop) raises the one error class without importing the trainer.
"""

from __future__ import annotations

from glioseg.errors import GliosegError


class TrainError(GliosegError, ValueError):
    """A training run that cannot start; the message names the folder or key."""
