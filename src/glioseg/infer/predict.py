"""Predict BraTS segmentations: cases on disk -> labels on the input's exact grid.

Per case (``CasePredictor``)::

    image (4, X, Y, Z) in MODALITIES order, original grid
      --prepare, on the host: turned to the card's orientation, preprocess_arrays (the
        checkpoint's own: crop to brain bbox, z-score, resample)-->  (C, x, y, z)
      --on the model's device: one forward of the whole box (mode auto/whole), or a sliding
        window (Gaussian, batched, one buffer); mirror TTA optional; per checkpoint, sigmoid;
        average over checkpoints (folds)-->  (3, x, y, z) WT, TC, ET probabilities
      --still on the device (``glioseg.infer.device``): back to the box's grid, threshold,
        ET in TC in WT, ET rule, label scheme, pasted into (X, Y, Z)-->  ONE copy to the host
      --on the host only when asked: small components (cc3d), then the ET rule and scheme-->
      (X, Y, Z) uint8 labels, on the input's axes

``predict`` does all of it; ``prepare`` and ``run`` are its two halves, so that a folder
(``glioseg.infer.folder.predict_dir``) prepares the next case while the device runs this one.
``probabilities`` / ``labels`` are the older host-side pair (float probabilities copied back,
``restore_to_original`` and ``postprocess`` in numpy), kept for callers that want the
probabilities themselves; ``predict`` gives the same labels (tested).

Only the brain's bounding box ever reaches the network (BraTS: ~140x170x140 of 240x240x155).

Whole box or windows (``PredictOptions.mode``): the U-Net's instance normalisation takes its
statistics from whatever it is given, so a window normalises by the window's own statistics.
On a shifted site those differ from the whole volume's far more than on the training site: the
demo's fine-tuned model scored WT/TC/ET Dice 0.592 / 0.831 / 0.671 on the whole box and
0.469 / 0.569 / 0.590 in 48^3 windows on the same 8 target cases; the same windows with the
whole volume's normalisation statistics gave 0.588 / 0.824 / 0.669, so the statistics, not the
context, make the gap. ``auto`` (the default) therefore runs the whole box in one forward, as
training validates, whenever its estimated memory fits ``WHOLE_VOLUME_BUDGET_GB``, and falls
back to windows of the model's patch size only above it (one forward is also 3-8x fewer
voxels through the network than overlapping windows). Both modes take the same device path.

Precision (``PredictOptions.dtype``): ``auto`` is resolved once, per engine and device
(``glioseg.infer.device.resolve_dtype``), and the resolved value is what ``predict.json``
records. Card and network readers live in ``glioseg.infer.cards`` (importable from here too).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glioseg.data.labels import MODALITIES, REGIONS
from glioseg.infer.cards import (
    BYTES_PER_VOXEL_AND_WIDTH,
    ET_MIN_VOXELS_DEFAULT,
    PREDICT_MODES,
    WHOLE_VOLUME_BUDGET_GB,
    PredictError,
    card_allows_missing,
    card_et_min_voxels,
    card_min_size_mm3,
    card_modalities,
    card_orientation,
    card_spacing,
    model_divisor,
    model_in_channels,
    model_roi,
    model_width,
    whole_volume_bytes,
)

__all__ = [
    "BYTES_PER_VOXEL_AND_WIDTH", "ET_MIN_VOXELS_DEFAULT", "PREDICT_MODES",
    "WHOLE_VOLUME_BUDGET_GB", "CasePredictor", "CaseResult", "PredictError", "PredictOptions",
    "PreparedCase", "build_engine", "card_allows_missing", "card_et_min_voxels",
    "card_min_size_mm3", "card_modalities", "card_orientation", "card_spacing", "load_model",
    "model_divisor", "model_in_channels", "model_roi", "model_width", "predict_case",
    "whole_volume_bytes",
]
_FOLDER = ("PredictSummary", "RESULT_OPTIONS", "load_for_model", "output_paths", "output_scheme",
           "predict_dir", "probabilities_for_file", "resolved_paths")


def __getattr__(name: str) -> Any:
    """The folder-level names (``predict_dir`` and its helpers) live in
    ``glioseg.infer.folder``, which imports this module; they are looked up there on first use."""
    if name in _FOLDER:
        from glioseg.infer import folder

        return getattr(folder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PredictOptions:
    """How to predict; saved as ``predict.json`` beside the predictions."""

    engine: str = "torch"  # torch | onnxruntime | openvino
    device: str = "cpu"  # cpu | cuda (torch and onnxruntime engines)
    # fp32 | bf16 (torch autocast or OpenVINO hint) | fp16 (torch, cuda) | auto (fp16 on CUDA,
    # bf16 on a CPU with native bf16, else fp32; glioseg.infer.device.resolve_dtype)
    dtype: str = "fp32"
    mode: str = "auto"  # auto (whole box if it fits in memory, else windows) | whole | sliding
    roi: tuple[int, int, int] | None = None  # window ROI (implies sliding); None = model's patch
    overlap: float = 0.5  # fraction of a window shared with its neighbour
    batch: int = 1  # windows per network call
    tta: bool = False  # mirror test-time augmentation (8 flips per window)
    threshold: float = 0.5  # region probability threshold
    et_min_voxels: int | None = None  # ET rule; None = the card's value (else 0 = off)
    min_component: int = 0  # smallest whole-tumour component kept (voxels); 0 = keep all
    min_size_mm3: tuple[float, float, float] | None = None  # WT/TC/ET sizes; None = the card's
    scheme: str | None = None  # output label scheme; None = the input's (else the card's)
    probabilities: bool = False  # also write <case>_probabilities.nii.gz (X,Y,Z,3)
    overwrite: bool = False  # predict cases whose output already exists
    threads: int | None = None  # CPU threads of the engine; None = torch's setting
    prefetch: int = 1  # predict_dir: cases read ahead (and written behind) while one runs; 0 = none

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> PredictOptions:
        """These options with ``dtype`` ``auto`` replaced by what it means here."""
        from glioseg.infer.device import resolve_dtype

        return dataclasses.replace(self, dtype=resolve_dtype(self.dtype, self.engine,
                                                             self.device))


def build_engine(model: torch.nn.Module, options: PredictOptions, workdir: Path,
                 tag: str = "model"):
    """The engine of ``options.engine`` running ``model`` (exporting it into ``workdir``)."""
    from glioseg.infer.engines import EngineError, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine

    options = options.resolved()
    if options.engine == "torch":  # windows share one shape: let cuDNN time its algorithms
        windows = options.mode == "sliding" or options.roi is not None
        return TorchEngine(model, device=options.device, dtype=options.dtype,
                           cudnn_benchmark=windows)
    if options.engine not in ("onnxruntime", "openvino"):
        raise EngineError(f"unknown engine {options.engine!r}; known: torch, onnxruntime, openvino")
    if options.device != "cpu" and options.engine == "openvino":
        raise EngineError("the openvino engine runs on the CPU only")
    if options.dtype == "int8":
        raise EngineError("int8 needs a network quantised on calibration cases; `glioseg bench "
                          "predict --engines openvino:int8,onnxruntime:int8` measures it, "
                          "`glioseg predict` runs fp32 or bf16")
    from glioseg.infer.export import export_model

    roi = options.roi or model_roi(model)
    path = export_model(model, workdir / f"{tag}.onnx", "onnx", model_in_channels(model),
                        example_size=roi)
    if options.engine == "onnxruntime":
        if options.dtype != "fp32":
            raise EngineError("the onnxruntime engine runs fp32 only")
        return OnnxRuntimeEngine(path, threads=options.threads, device=options.device)
    return OpenVinoEngine(path, precision=options.dtype, threads=options.threads)


@dataclass
class PreparedCase:
    """A case after the host's work, ready for the network (``CasePredictor.prepare``)."""

    x: torch.Tensor  # (C, x, y, z) float32 network input on the host (pinned for a GPU)
    geometry: dict[str, Any]  # preprocess_arrays' geometry, in the card's orientation
    ornt: np.ndarray | None  # how the axes were turned to the card's orientation; None: not
    spacing: tuple[float, ...]  # voxel size (mm) of the input grid, on its own axes
    seconds: float = 0.0  # host time spent preparing


@dataclass
class CaseResult:
    """A predicted case (``CasePredictor.run``), on the input's grid and axes."""

    labels: np.ndarray  # (X, Y, Z) uint8 in the scheme asked for
    probabilities: np.ndarray | None  # (3, X, Y, Z) float32 WT, TC, ET when asked
    seconds: dict[str, float]  # prepare, network, labels (device work to the copy), host



def _check_options(options: PredictOptions) -> None:
    if not 0 <= options.overlap < 1:
        raise PredictError(f"--overlap must be in [0, 1), got {options.overlap}")
    if options.batch < 1:
        raise PredictError(f"--batch must be >= 1, got {options.batch}")
    if options.mode not in PREDICT_MODES:
        raise PredictError(f"--mode must be one of {', '.join(PREDICT_MODES)}, "
                           f"got {options.mode!r}")
    if options.mode == "whole" and options.roi:
        raise PredictError("--roi sets the windows of --mode sliding; --mode whole has none")


def check_cards(models: Sequence[tuple[torch.nn.Module, Any]],
                names: Sequence[str] | None = None) -> None:
    """Every checkpoint outputs WT/TC/ET and takes the first one's inputs (modalities, spacing,
    orientation); a difference names both checkpoints (``names``: their paths; default
    ``checkpoint 1``, ``checkpoint 2``...) and what differs."""
    labels = [str(n) for n in names] if names else [f"checkpoint {i}"
                                                     for i in range(1, len(models) + 1)]
    for label, (_, c) in zip(labels, models, strict=True):
        regions = tuple(getattr(c, "regions", REGIONS))
        if regions != tuple(REGIONS):
            raise PredictError(
                f"{label} outputs {', '.join(regions)}, not the {'/'.join(REGIONS)} "
                "region probabilities prediction thresholds (a self-supervised or other-task "
                "model?); fine-tune it first: glioseg finetune --from MODEL ...")
    first, card = models[0]
    mods, spacing = card_modalities(card, model_in_channels(first)), card_spacing(card)
    for label, (m, c) in zip(labels[1:], models[1:], strict=True):
        diffs = []
        other = card_modalities(c, model_in_channels(m))
        if other != mods:
            diffs.append(f"modalities {','.join(mods)} vs {','.join(other)}")
        if card_spacing(c) != spacing:
            diffs.append(f"spacing {_mm(spacing)} vs {_mm(card_spacing(c))}")
        if card_orientation(c) != card_orientation(card):
            diffs.append(f"orientation {_axes(card_orientation(card))} vs "
                         f"{_axes(card_orientation(c))}")
        if diffs:
            raise PredictError(f"{labels[0]} and {label} were trained on different inputs "
                               f"({'; '.join(diffs)}); an ensemble needs the same inputs: "
                               "predict with each model on its own")


def _mm(spacing: Sequence[float] | None) -> str:
    return "original grid" if spacing is None else "x".join(f"{s:g}" for s in spacing) + " mm"


def _axes(codes: Sequence[str] | None) -> str:
    return "".join(codes) if codes else "not recorded"


def check_model_path(path: str | Path) -> None:
    """Raise :class:`PredictError` saying what to pass instead when ``path`` is a training
    run folder, a training checkpoint or an exported network (``not_a_model``)."""
    from glioseg.model.state_dict import not_a_model

    problem = not_a_model(path)
    if problem is not None:
        raise PredictError(problem)


class CasePredictor:
    """One or several checkpoints (folds) ready to predict cases.

    Args:
        models: ``(nn.Module, card)`` pairs; the cards must agree on modalities and spacing.
        options: how to predict (``dtype`` ``auto`` is resolved here: ``self.options``).
        names: what the models' errors call them (their paths); default ``checkpoint N``.
    """

    def __init__(self, models: Sequence[tuple[torch.nn.Module, Any]], options: PredictOptions,
                 names: Sequence[str] | None = None):
        if not models:
            raise PredictError("no model given")
        _check_options(options)
        check_cards(models, names)
        self.options = options = options.resolved()
        first_model, self.card = models[0]
        self.modalities = card_modalities(self.card, model_in_channels(first_model))
        self.spacing = card_spacing(self.card)
        self.orientation = card_orientation(self.card)
        self.divisor = max(model_divisor(m) for m, _ in models)
        self.roi = tuple(options.roi) if options.roi else model_roi(first_model)
        self.width = max(model_width(m) for m, _ in models)
        sizes = options.min_size_mm3
        self.min_size_mm3 = (dict(zip(REGIONS, (float(v) for v in sizes), strict=True))
                             if sizes is not None else card_min_size_mm3(self.card))
        et = options.et_min_voxels
        self.et_min_voxels = et if et is not None else (
            card_et_min_voxels(self.card) or ET_MIN_VOXELS_DEFAULT)
        self._tmp = tempfile.TemporaryDirectory(prefix="glioseg-engines-")
        self.engines = [build_engine(m, options, Path(self._tmp.name), f"model{i}")
                        for i, (m, _) in enumerate(models)]
        on_gpu = options.device.startswith("cuda") and options.engine == "torch"
        self.device = torch.device(options.device if on_gpu else "cpu")

    def prepare(self, image: np.ndarray, spacing: Sequence[float],
                affine: np.ndarray | None = None) -> PreparedCase:
        """The host's half of a case: turned to the card's orientation (when the card records
        one and ``affine`` is given), preprocessed as in training, the card's channels picked.

        Args:
            image: ``(4, X, Y, Z)`` float32, channels in ``MODALITIES`` order (a missing
                sequence all zeros).
            spacing: voxel size (mm) of the grid.
            affine: the grid's voxel-to-world matrix; None: used as stored.
        """
        from glioseg.preprocess.pure import preprocess_arrays

        t0 = time.perf_counter()
        ornt, turned = None, tuple(float(s) for s in spacing)
        if self.orientation is not None and affine is not None:
            from glioseg.data.nifti import orientation_to, reorient, reorient_spacing

            ornt = orientation_to(affine, self.orientation)
            image, turned = reorient(image, ornt), reorient_spacing(spacing, ornt)
        pre, _, geometry = preprocess_arrays(image, None, turned, self.spacing)
        channels = [MODALITIES.index(m) for m in self.modalities]
        x = torch.from_numpy(np.ascontiguousarray(pre[channels]))
        if self.device.type == "cuda":
            x = x.pin_memory()  # a copy the device can read while the host goes on
        return PreparedCase(x, geometry, ornt, tuple(float(s) for s in spacing),
                            time.perf_counter() - t0)

    def region_probabilities(self, prepared: PreparedCase) -> torch.Tensor:
        """``(3, x, y, z)`` float32 WT, TC, ET probabilities on the preprocessed grid, on the
        model's device: per checkpoint the whole box or the windows (``window``), sigmoid,
        averaged over checkpoints."""
        from glioseg.infer.sliding_window import sliding_window_inference
        from glioseg.infer.tta import mirrored

        x = prepared.x.to(self.device, non_blocking=True)
        gpu = self.device.type == "cuda"
        acc = torch.float16 if (self.options.dtype == "fp16" and gpu) else torch.float32
        shape = tuple(int(v) for v in x.shape[1:])
        roi, one = self.window(shape), self.whole(shape)
        total: torch.Tensor | None = None
        for engine in self.engines:
            predictor = mirrored(engine) if self.options.tta else engine
            logits = sliding_window_inference(
                x, predictor, roi, overlap=self.options.overlap, gaussian=not one,
                batch_size=self.options.batch, divisor=self.divisor, accumulate_dtype=acc,
                device=x.device,
            )
            p = torch.sigmoid(logits.float())
            total = p if total is None else total + p
        assert total is not None
        return total / len(self.engines)

    def _clock(self, sync: bool) -> float:
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def run(self, prepared: PreparedCase, scheme: str | None = None,
            with_probabilities: bool = False, sync_timers: bool = False) -> CaseResult:
        """The device's half of a case: network, probabilities -> labels on the device
        (``glioseg.infer.device``), one copy of the labels to the host (and of the
        probabilities when ``with_probabilities``), the host's component step if asked.

        ``scheme``: output label scheme (None: internal labels). ``sync_timers``: wait for
        the GPU at each stage boundary, so ``seconds`` splits network from labels (a
        benchmark's view; a folder predict leaves the GPU's queue alone)."""
        from glioseg.infer.device import in_box, labels_on_device, paste
        from glioseg.infer.postprocess import (
            has_component_step,
            min_sizes_in_voxels,
            postprocess_labels,
        )

        t0 = self._clock(sync_timers)
        probs = self.region_probabilities(prepared)
        t1 = self._clock(sync_timers)
        sizes = min_sizes_in_voxels(self.min_size_mm3, prepared.spacing)
        host = has_component_step(self.options.min_component, sizes)
        geo = prepared.geometry
        labels = labels_on_device(probs, geo, self.options.threshold,
                                  None if host else self.et_min_voxels, None if host else scheme)
        labels_np = labels.cpu().numpy()  # the one copy of the case
        full = paste(in_box(probs, geo), geo).cpu().numpy() if with_probabilities else None
        t2 = time.perf_counter()
        if host:
            labels_np = postprocess_labels(labels_np, scheme, self.et_min_voxels,
                                           self.options.min_component, sizes)
        if prepared.ornt is not None:
            from glioseg.data.nifti import invert_orientation, reorient

            back = invert_orientation(prepared.ornt)
            labels_np = reorient(labels_np, back)
            full = None if full is None else reorient(full, back)
        seconds = {"prepare": prepared.seconds, "network": t1 - t0, "labels": t2 - t1,
                   "host": time.perf_counter() - t2}
        return CaseResult(labels_np, full, seconds)

    def predict(self, image: np.ndarray, spacing: Sequence[float],
                affine: np.ndarray | None = None, scheme: str | None = None,
                with_probabilities: bool = False) -> CaseResult:
        """``run(prepare(...))``: labels ``(X, Y, Z)`` uint8 of one case in ``scheme``."""
        return self.run(self.prepare(image, spacing, affine), scheme, with_probabilities)

    def probabilities(self, image: np.ndarray, spacing: Sequence[float],
                      affine: np.ndarray | None = None) -> np.ndarray:
        """Region probabilities on the original grid, through the host (``restore_to_original``).

        Args:
            image: ``(4, X, Y, Z)`` float32, channels in ``MODALITIES`` order (a missing
                sequence all zeros).
            spacing: voxel size (mm) of the grid.
            affine: the grid's voxel-to-world matrix: the case is turned to the card's
                orientation, predicted and turned back; None: used as stored.

        Returns:
            ``(3, X, Y, Z)`` float32 WT, TC, ET probabilities (0 outside the brain's box).
        """
        from glioseg.preprocess.pure import restore_to_original

        prepared = self.prepare(image, spacing, affine)
        probs = self.region_probabilities(prepared).cpu().numpy()
        probs = restore_to_original(probs, prepared.geometry, order=1)
        if prepared.ornt is None:
            return probs
        from glioseg.data.nifti import invert_orientation, reorient

        return reorient(probs, invert_orientation(prepared.ornt))

    def oriented_probabilities(self, image: np.ndarray, spacing: Sequence[float],
                               affine: np.ndarray | None) -> np.ndarray:
        """``probabilities`` with ``affine``: turned to the card's orientation and back."""
        return self.probabilities(image, spacing, affine)

    def _padded(self, shape: Sequence[int]) -> tuple[int, ...]:
        """``shape`` rounded up to the network's divisor."""
        return tuple(-(-int(s) // self.divisor) * self.divisor for s in shape)

    def whole(self, shape: Sequence[int]) -> bool:
        """Whether a preprocessed ``(x, y, z)`` box runs in one forward (``mode``)."""
        if self.options.mode == "auto":
            if self.options.roi:
                return False
            return (whole_volume_bytes(self._padded(shape), self.width)
                    <= WHOLE_VOLUME_BUDGET_GB * 2**30)
        return self.options.mode == "whole"

    def window(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The ROI for a preprocessed ``(x, y, z)`` box: the box itself rounded up to the
        network's divisor (one window, zero-padded at the far end as validation pads), or the
        sliding window's ROI."""
        return self._padded(shape) if self.whole(shape) else tuple(int(r) for r in self.roi)

    def labels(self, probabilities: np.ndarray, scheme: str | None,
               spacing: Sequence[float] | None = None) -> np.ndarray:
        """Post-processed labels ``(X, Y, Z)`` uint8 in ``scheme`` (None: internal) of host
        probabilities; the per-region size thresholds (mm^3) are turned into voxels of
        ``spacing`` (mm; None: 1 mm)."""
        from glioseg.infer.postprocess import min_sizes_in_voxels, postprocess

        sizes = min_sizes_in_voxels(self.min_size_mm3, spacing or (1.0, 1.0, 1.0))
        return postprocess(probabilities, scheme, threshold=self.options.threshold,
                           et_min_voxels=self.et_min_voxels,
                           min_component=self.options.min_component, min_sizes=sizes)

    def close(self) -> None:
        self._tmp.cleanup()


def load_model(path: str | Path) -> tuple[torch.nn.Module, Any]:
    """``(nn.Module in eval mode, model card)`` of a checkpoint (folder or .safetensors)."""
    from glioseg.model.card import load_model as _load

    check_model_path(path)
    model, card = _load(path)
    return model.eval(), card


def predict_case(
    model: torch.nn.Module | Sequence[tuple[torch.nn.Module, Any]],
    image: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    card: Any = None,
    scheme: str | None = None,
    options: PredictOptions | None = None,
    affine: np.ndarray | None = None,
    **overrides: Any,
) -> np.ndarray:
    """Labels of one case held in memory.

    Args:
        model: a network (with ``card``), or ``(network, card)`` pairs to ensemble.
        image: ``(4, X, Y, Z)`` float32 in ``MODALITIES`` order (t1, t1ce, t2, flair).
        spacing: voxel size (mm) of the grid.
        card: the model card (modalities, preprocessing, ET rule threshold).
        scheme: output label scheme (``brats2020``: 1/2/4, ``brats2023``: 1/2/3); None:
            internal labels (0 bg, 1 necrosis, 2 edema, 3 ET).
        options: ``PredictOptions``; keyword ``overrides`` replace its fields.
        affine: the grid's voxel-to-world matrix: the case is turned to the orientation
            the card records (and back); None: used as stored.

    Returns:
        ``(X, Y, Z)`` uint8 labels on the input grid.
    """
    opts = dataclasses.replace(options or PredictOptions(), **overrides)
    pairs = [(model, card)] if isinstance(model, torch.nn.Module) else list(model)
    predictor = CasePredictor(pairs, opts)
    try:
        return predictor.predict(image, spacing, affine, scheme).labels
    finally:
        predictor.close()
