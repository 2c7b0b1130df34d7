"""Import checkpoints of other toolkits into the project's format (weights + model card).

One entry point, ``import_checkpoint(path, kind, **options)``, over the importers of each
toolkit (nothing is downloaded; the user brings the file):

- ``monai-segresnet``, ``swinunetr``, ``swinvit-ssl``: ``glioseg.transfer.monai_import``;
- ``nnunet``: nnU-Net v2 ``PlainConvUNet`` as ``unet3d``, ``glioseg.transfer.nnunet_import``.

What they share -- reading a file without running code from it (``safe_load``), the
``ImportedModel`` they return and its reordering into the project's input and output order
(``canonical=True``, the default) -- is ``glioseg.transfer.foreign_base``. The errors, the
result type and the importers are re-exported here.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from glioseg.transfer.foreign_base import (
    ForeignCheckpointError,
    ImportedModel,
    UnsafeCheckpointError,
)
from glioseg.transfer.monai_import import (
    import_monai_segresnet,
    import_swinunetr,
    import_swinvit_ssl,
)
from glioseg.transfer.nnunet_import import import_nnunet

__all__ = [
    "IMPORTERS", "ForeignCheckpointError", "ImportedModel", "UnsafeCheckpointError",
    "import_checkpoint", "import_monai_segresnet", "import_nnunet", "import_swinunetr",
    "import_swinvit_ssl",
]

IMPORTERS: dict[str, Callable[..., ImportedModel]] = {
    "monai-segresnet": import_monai_segresnet,
    "swinunetr": import_swinunetr,
    "swinvit-ssl": import_swinvit_ssl,
    "nnunet": import_nnunet,
}


def import_checkpoint(path: str | os.PathLike[str], kind: str, **kwargs: Any) -> ImportedModel:
    """Import ``path`` with the importer ``kind`` (see :data:`IMPORTERS`)."""
    try:
        importer = IMPORTERS[kind]
    except KeyError:
        raise ForeignCheckpointError(f"unknown checkpoint kind {kind!r}; known: "
                                     f"{', '.join(IMPORTERS)}") from None
    try:  # an option this kind does not take or needs (--modalities): the user's error
        inspect.signature(importer).bind(path, **kwargs)
    except TypeError:
        try:  # the call fails before any work; Python's own message, as the CLI always printed
            importer(path, **kwargs)
        except TypeError as exc:
            raise ForeignCheckpointError(str(exc)) from None
    return importer(path, **kwargs)
