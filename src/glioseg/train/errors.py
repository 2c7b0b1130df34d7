"""``TrainError``: a training run that cannot start or go on.

In a module of its own so that every training module (case selection, components, launch,
the loop) raises the one error class without importing the trainer.
"""

from __future__ import annotations

from pathlib import Path

from glioseg.errors import GliosegError


class TrainError(GliosegError, ValueError):
    """A training run that cannot start; the message names the folder or key."""


def interrupted(run_dir: Path, step: int | None,
                saved: tuple[int, str] | None) -> KeyboardInterrupt:
    """The ``KeyboardInterrupt`` a run stopped by Ctrl-C raises: a plain one (whatever stops
    on Ctrl-C still stops; it is no error to report), whose message (``interrupted_message``)
    says where the run stood, its last checkpoint and how to go on."""
    return KeyboardInterrupt(interrupted_message(Path(run_dir), step, saved))


def interrupted_message(run_dir: Path, step: int | None, saved: tuple[int, str] | None) -> str:
    """``interrupted at step S; last checkpoint: step C (RUN/last.pt); continue with: glioseg
    train --out RUN --resume`` (``none yet`` before the first one); the step is left out when
    the caller does not know it."""
    head = "interrupted" if step is None else f"interrupted at step {step}"
    if saved is None:
        return (f"{head}; last checkpoint: none yet (nothing to resume: the same command "
                "starts the run afresh)")
    return (f"{head}; last checkpoint: step {saved[0]} ({Path(run_dir) / saved[1]}); "
            f"continue with: glioseg train --out {run_dir} --resume")
