"""glioseg: 3D brain-tumour segmentation of multi-modal MRI, made cheap.

The Python API of inference is importable from here::

    import glioseg
    model, card = glioseg.load_model("runs/x/best")          # nn.Module (eval mode), card
    labels = glioseg.predict_case(model, image, spacing, card=card, scheme="brats2020")

They are loaded on first use (``glioseg.infer.predict``), so ``import glioseg`` and
``glioseg --help`` stay instant.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"load_model": "glioseg.infer.predict", "predict_case": "glioseg.infer.predict"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'glioseg' has no attribute {name!r}")
