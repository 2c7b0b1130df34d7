"""Export a network to ONNX or OpenVINO IR, and check the exported outputs match PyTorch.

ONNX is exported with the TorchScript exporter (``dynamo=False``, opset 17; the dynamo exporter
needs ``onnxscript``) with dynamic batch and spatial axes. OpenVINO IR is converted from that
ONNX graph (``openvino.convert_model``) and keeps the dynamic shape; the OpenVINO engine fixes
the shape per compilation. Files are written under a temporary name, then renamed.
``export_checked`` (what ``glioseg export`` runs) checks the parity of the temporary file
first, so a file that fails the check is never left under the asked name.

int8: ``quantize_onnx`` statically quantises the fp32 ONNX graph with ONNX Runtime
(``quantize_static``, QDQ format: uint8 activations, int8 weights per output channel, MinMax
calibration). The QDQ file runs in ONNX Runtime (fused into integer kernels) and in OpenVINO
(read as FakeQuantize, executed in int8). Calibration windows come from a case that is NOT the
one being predicted (``calibration_windows``: fixed-seed random windows of a preprocessed
calibration case), so the quantisation ranges never see the test case.
"""

from __future__ import annotations

import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from glioseg.errors import GliosegError

FORMATS: tuple[str, ...] = ("onnx", "openvino")
OPSET = 17
PARITY_ATOL = 1e-3
"""Largest absolute logit difference accepted between an fp32 export and PyTorch fp32.

Measured differences are ~1e-5 (ONNX Runtime) and ~1e-4 (OpenVINO f32) on logits of order 1:
reassociated float sums inside convolutions and instance norms."""


class ExportError(GliosegError, ValueError):
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


def export_model(
    model: torch.nn.Module,
    path: str | Path,
    fmt: str,
    in_channels: int = 4,
    example_size: Sequence[int] = (64, 64, 64),
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` as ``fmt`` (``onnx`` -> ``.onnx``; ``openvino`` -> ``.xml`` + ``.bin``).

    Args:
        check: called with the written file under its temporary name (same extension)
            before it is renamed; when it raises, nothing is renamed and the temporary
            files are removed.

    Returns:
        The written model file (``.onnx`` or ``.xml``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    path = Path(path)
    data = onnx_bytes(model, in_channels, example_size)
    if fmt == "onnx":
        path = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
        if check is None:
            from glioseg.io_atomic import write_bytes

            write_bytes(path, data)
            return path
        from glioseg.io_atomic import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
            check(tmp)
        return path
    import openvino as ov

    from glioseg.io_atomic import fsync_file, replace_durably

    path = path if path.suffix == ".xml" else path.with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(data)
        ov_model = ov.convert_model(str(onnx_path))
        tmp_xml = Path(tmp) / path.name
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)
        if check is not None:
            check(tmp_xml)
        for f in (tmp_xml.with_suffix(".bin"), tmp_xml):
            fsync_file(f)
        replace_durably(tmp_xml.with_suffix(".bin"), path.with_suffix(".bin"))
        replace_durably(tmp_xml, path)
    return path


def export_checked(
    model: torch.nn.Module,
    path: str | Path,
    fmt: str,
    in_channels: int = 4,
    example_size: Sequence[int] = (64, 64, 64),
    size: Sequence[int] = (64, 64, 64),
    atol: float = PARITY_ATOL,
) -> tuple[Path, float]:
    """``export_model``, renamed onto ``path`` only if its logits match PyTorch's.

    The parity (``parity`` on a random ``size`` patch) is measured on the file under its
    temporary name; beyond ``atol`` (or NaN) an ``ExportError`` is raised and ``path`` (an
    older export there included) is left as it was.

    Returns:
        ``(written file, max |logit difference|)``.
    """
    diffs: list[float] = []

    def check(tmp: Path) -> None:
        diff = parity(model, engine_for_file(tmp), in_channels, size=size)
        diffs.append(diff)
        if not diff <= atol:
            raise ExportError(f"exported outputs differ from PyTorch's by {diff:.2e} on a random "
                              f"{tuple(size)} patch, beyond the tolerance {atol:g}; {path} was "
                              "not written")

    out = export_model(model, path, fmt, in_channels, example_size, check=check)
    return out, diffs[0]


INT8_WINDOWS = 8
"""Calibration windows used by default for int8 quantisation."""


def calibration_windows(volume: np.ndarray, roi: Sequence[int], n: int = INT8_WINDOWS,
                        seed: int = 0) -> np.ndarray:
    """``n`` windows at random positions of a preprocessed volume (fixed seed).

    Args:
        volume: ``(C, X, Y, Z)`` float32, preprocessed as the network sees it (brain box,
            z-scored, on the model's grid); zero-padded at the end where smaller than ``roi``.
        roi: window ``(x, y, z)``.
        n: number of windows.
        seed: seed of the ``np.random.Generator`` drawing the window corners.

    Returns:
        ``(n, C, *roi)`` float32.
    """
    if volume.ndim != 4:
        raise ExportError(f"calibration volume must be (C, X, Y, Z), got shape {volume.shape}")
    if n < 1:
        raise ExportError(f"need at least one calibration window, got {n}")
    roi = tuple(int(r) for r in roi)
    pad = [(0, 0)] + [(0, max(0, r - s)) for s, r in zip(volume.shape[1:], roi, strict=True)]
    vol = np.pad(np.asarray(volume, np.float32), pad)
    rng = np.random.default_rng(seed)
    out = np.empty((n, vol.shape[0], *roi), np.float32)
    for i in range(n):
        lo = [int(rng.integers(0, s - r + 1)) for s, r in zip(vol.shape[1:], roi, strict=True)]
        out[i] = vol[(slice(None), *(slice(a, a + r) for a, r in zip(lo, roi, strict=True)))]
    return out


def quantize_onnx(src: str | Path, dst: str | Path, windows: np.ndarray,
                  per_channel: bool = True) -> Path:
    """Statically quantise an fp32 ONNX file to int8 (QDQ), calibrated on ``windows``.

    Args:
        src: fp32 ``.onnx`` (from ``export_model``).
        dst: the int8 ``.onnx`` to write (atomically).
        windows: ``(n, C, x, y, z)`` float32 calibration inputs, one network call each.
        per_channel: int8 weights with one scale per output channel (else per tensor).

    Returns:
        ``dst``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ExportError(f"{src}: ONNX file not found")
    windows = np.asarray(windows, np.float32)
    if windows.ndim != 5 or len(windows) == 0:
        raise ExportError(f"calibration windows must be (n, C, x, y, z), got {windows.shape}")
    import onnx

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(windows)

        def get_next(self) -> dict[str, np.ndarray] | None:
            w = next(self._it, None)
            return None if w is None else {input_name: w[None]}

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quant.") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "model.onnx"
        # ONNX Runtime's recommended preparation: graph optimisation folds the exporter's
        # Identity nodes into initialisers (so convolution biases are quantised too) and
        # shape inference marks every tensor quantisable
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs advice on the root logger
        try:
            quantize_static(
                str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
            )
        finally:
            root.setLevel(level)
        from glioseg.io_atomic import fsync_file, replace_durably

        fsync_file(out)
        replace_durably(out, dst)
    return dst


def export_int8(model: torch.nn.Module, path: str | Path, windows: np.ndarray,
                in_channels: int = 4) -> Path:
    """Export ``model`` to ONNX and quantise it to int8 (QDQ) on ``windows`` (see above).

    Args:
        model: network ``(B, C, x, y, z)`` -> logits.
        path: the int8 ``.onnx`` to write.
        windows: ``(n, C, x, y, z)`` float32 calibration inputs (``calibration_windows``).
        in_channels: C.
    """
    path = Path(path)
    path = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
    fp32 = export_model(model, path.with_name(path.stem + ".fp32.onnx"), "onnx", in_channels,
                        example_size=tuple(windows.shape[2:]))
    try:
        return quantize_onnx(fp32, path, windows)
    finally:
        fp32.unlink(missing_ok=True)


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
