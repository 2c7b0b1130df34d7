"""Export a network to ONNX or OpenVINO IR, and check the exported outputs match PyTorch.

ONNX is exported with the TorchScript exporter (``dynamo=False``, opset 17; the dynamo exporter
needs ``onnxscript``) with dynamic batch and spatial axes. OpenVINO IR is converted from that
ONNX graph (``openvino.convert_model``) and keeps the dynamic shape; the OpenVINO engine fixes
the shape per compilation. Files are written under a temporary name, then renamed.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

FORMATS: tuple[str, ...] = ("onnx", "openvino")
OPSET = 17
PARITY_ATOL = 1e-3
"""Largest absolute logit difference accepted between an fp32 export and PyTorch fp32.

Measured differences are ~1e-5 (ONNX Runtime) and ~1e-4 (OpenVINO f32) on logits of order 1:
reassociated float sums inside convolutions and instance norms."""


class ExportError(ValueError):
    """An export that cannot be done (unknown format, bad path) or whose outputs differ."""


def onnx_bytes(model: torch.nn.Module, in_channels: int, example_size: Sequence[int]) -> bytes:
    """The network as an ONNX model (bytes), dynamic batch and spatial axes.

    Args:
        model: network ``(B, C, x, y, z)`` -> logits (deep supervision off in eval mode).
        in_channels: C.
        example_size: ``(x, y, z)`` of the tracing input (any size the network accepts).
    """
    model = model.eval().to("cpu")
    x = torch.zeros((1, in_channels, *example_size), dtype=torch.float32)
    buf = io.BytesIO()
    dyn = {0: "batch", 2: "x", 3: "y", 4: "z"}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter's deprecation and tracer notes say nothing about this model
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), buf, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": dyn, "logits": dyn}, opset_version=OPSET, dynamo=False,
        )
    return buf.getvalue()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, ordinary permissions (``glioseg.io_atomic``)."""
    from glioseg.io_atomic import write_bytes

    write_bytes(path, data)


def export_model(
    model: torch.nn.Module,
    path: str | Path,
    fmt: str,
    in_channels: int = 4,
    example_size: Sequence[int] = (64, 64, 64),
) -> Path:
    """Write ``model`` as ``fmt`` (``onnx`` -> ``.onnx``; ``openvino`` -> ``.xml`` + ``.bin``).

    Returns:
        The written model file (``.onnx`` or ``.xml``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    data = onnx_bytes(model, in_channels, example_size)
    if fmt == "onnx":
        path = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
        _atomic_write_bytes(path, data)
        return path
    import openvino as ov

    path = path if path.suffix == ".xml" else path.with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(data)
        ov_model = ov.convert_model(str(onnx_path))
        tmp_xml = Path(tmp) / path.name
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)
        os.replace(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp_xml, path)
    return path


def engine_for_file(path: str | Path, precision: str = "fp32", threads: int | None = None):
    """The engine that runs an exported file: ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``."""
    from glioseg.infer.engines import OnnxRuntimeEngine, OpenVinoEngine

    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxRuntimeEngine(path, threads=threads)
    if path.suffix == ".xml":
        return OpenVinoEngine(path, precision=precision, threads=threads)
    raise ExportError(f"{path}: not an exported model (.onnx or .xml)")


def parity(
    model: torch.nn.Module,
    engine,
    in_channels: int = 4,
    size: Sequence[int] = (64, 64, 64),
    seed: int = 0,
) -> float:
    """Largest absolute logit difference between ``engine`` and PyTorch fp32 on a random patch.

    Args:
        model: the PyTorch network.
        engine: callable ``(B, C, x, y, z)`` -> logits (e.g. ``engine_for_file(path)``).
        in_channels: C.
        size: patch ``(x, y, z)``.
        seed: seed of the standard-normal patch.
    """
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((1, in_channels, *size), dtype=np.float32))
    with torch.inference_mode():
        ref = model.eval()(x)
    got = engine(x).float()
    return float((got - ref).abs().max())
