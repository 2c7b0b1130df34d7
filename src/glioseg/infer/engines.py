"""Inference engines: one network, three runtimes, one calling convention.

Every engine is a callable ``(B, C, x, y, z)`` float32 tensor -> ``(B, K, x, y, z)`` logits
tensor, which is what ``sliding_window_inference`` takes:

- ``TorchEngine``: the ``nn.Module`` itself, in ``inference_mode``, under bf16 (CPU) / fp16
  (CUDA) autocast when asked; channels-last memory format for bf16 on the CPU only (measured on
  the 2-core AVX-512 CPU, one window: channels-last made fp32 9-15% slower for both presets,
  bf16 7-24% faster for the full preset at 64^3-128^3 and 12% slower for a small one at 48^3;
  on an H200 with cuDNN, channels_last_3d made the same network's step 23% slower, so a GPU
  keeps the default layout). ``cudnn_benchmark``: cuDNN times its algorithms once per input
  shape (a process-wide setting, turned on by the first engine that asks): a gain for
  windows, which all share one shape, a loss for whole boxes of a new shape each case.
- ``OnnxRuntimeEngine``: an exported ONNX graph (all graph optimisations on).
- ``OpenVinoEngine``: an ONNX or OpenVINO IR file compiled by OpenVINO for the CPU, in f32 or
  bf16 (OpenVINO's default on CPUs with AVX-512 BF16; check accuracy), one compiled model per
  input shape (sliding windows all share one shape, so usually one or two compilations).

int8 (``onnxruntime`` and ``openvino``): the engine is given the QDQ-quantised ONNX file from
``glioseg.infer.export.export_int8``; ONNX Runtime fuses it into integer convolutions,
OpenVINO reads the Q/DQ pairs as FakeQuantize and runs those convolutions in int8, everything
else in f32.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from glioseg.errors import GliosegError

ENGINES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
DTYPES: tuple[str, ...] = ("fp32", "bf16", "fp16")
ENGINE_DTYPES: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
"""The dtypes each engine runs (int8: a QDQ-quantised ONNX file, see the module docstring)."""


class EngineError(GliosegError, ValueError):
    """An engine that cannot run as asked (unknown name, dtype, device or missing file)."""


def _threads(threads: int | None) -> int:
    return int(threads) if threads else max(1, torch.get_num_threads())


class TorchEngine:
    """PyTorch engine.

    Args:
        model: network ``(B, C, x, y, z)`` -> logits; put in eval mode here.
        device: ``cpu`` or ``cuda``.
        dtype: ``fp32``; ``bf16`` (autocast, CPU or CUDA); ``fp16`` (autocast, CUDA only).
        channels_last: use ``torch.channels_last_3d`` memory format; None: only for bf16 on
            the CPU (see the module docstring for the measurements behind this default).
        cudnn_benchmark: on CUDA, let cuDNN choose its algorithms by timing them per shape.
    """

    name = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        dtype: str = "fp32",
        channels_last: bool | None = None,
        cudnn_benchmark: bool = False,
    ) -> None:
        if dtype not in DTYPES:
            raise EngineError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("device cuda asked for but torch sees no CUDA GPU")
        if dtype == "fp16" and not device.startswith("cuda"):
            raise EngineError("fp16 runs on CUDA only; use bf16 on a CPU")
        self.device = torch.device(device)
        self.dtype = dtype
        cpu = self.device.type == "cpu"
        self.channels_last = (dtype != "fp32" and cpu) if channels_last is None else channels_last
        if cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)

    def _autocast(self):
        if self.dtype == "fp32":
            return nullcontext()
        dt = torch.bfloat16 if self.dtype == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dt)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), self._autocast():
            y = self.model(x)
        if isinstance(y, list | tuple):  # deep supervision left on: full resolution first
            y = y[0]
        return y


class OnnxRuntimeEngine:
    """ONNX Runtime engine on the CPU (or CUDA if onnxruntime-gpu is installed).

    Args:
        path: ``.onnx`` file (from ``glioseg export --format onnx``), or its bytes.
        threads: intra-op threads (default: torch's thread count).
        device: ``cpu`` or ``cuda``.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path | bytes, threads: int | None = None,
                 device: str = "cpu") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = _threads(threads)
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise EngineError("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        src = path if isinstance(path, bytes) else str(path)
        if not isinstance(path, bytes) and not Path(path).is_file():
            raise EngineError(f"{path}: ONNX file not found")
        self.session = ort.InferenceSession(src, sess_options=opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (y,) = self.session.run(None, {self.input_name: arr})[:1]
        return torch.from_numpy(y)


class OpenVinoEngine:
    """OpenVINO engine on the CPU.

    Args:
        path: ``.onnx`` or OpenVINO IR ``.xml`` file.
        precision: ``fp32`` (``INFERENCE_PRECISION_HINT=f32``), ``bf16``, or ``int8`` (``path``
            is a QDQ-quantised ONNX file; the quantised operations run in int8, the others
            with the f32 hint).
        threads: inference threads (default: torch's thread count).
    """

    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        import openvino as ov

        if precision not in ENGINE_DTYPES["openvino"]:
            raise EngineError(f"OpenVINO precision must be one of "
                              f"{', '.join(ENGINE_DTYPES['openvino'])}, got {precision!r}")
        if not Path(path).is_file():
            raise EngineError(f"{path}: model file not found")
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        if precision == "int8" and not any(
                op.get_type_name() in ("FakeQuantize", "FakeConvert")
                for op in self.model.get_ops()):
            # without Q/DQ pairs OpenVINO would run this graph in f32 under the name int8
            raise EngineError(f"{path}: int8 needs a quantised (QDQ) model file, as written by "
                              f"glioseg.infer.export.export_int8; this one has no quantisation")
        self.config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": _threads(threads),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: dict[tuple[int, ...], object] = {}

    def _compiled_for(self, shape: tuple[int, ...]):
        if shape not in self._compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0].any_name: list(shape)})
            self._compiled[shape] = self.core.compile_model(model, "CPU", self.config)
        return self._compiled[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        compiled = self._compiled_for(tuple(arr.shape))
        y = compiled(arr)[0]  # type: ignore[operator]
        return torch.from_numpy(np.asarray(y))
