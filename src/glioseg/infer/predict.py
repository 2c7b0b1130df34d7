"""Predict BraTS segmentations: cases on disk -> labels on the input's exact grid.

Per case (``CasePredictor``)::

    image (4, X, Y, Z) in MODALITIES order, original grid
      --preprocess_arrays (the checkpoint's own: crop to brain bbox, z-score, resample)-->
      (C, x, y, z) channels of the card's modalities
      --one forward of the whole box (mode auto/whole), or a sliding window (Gaussian,
        batched) of the ROI; mirror TTA optional; per checkpoint, sigmoid-->
      --average probabilities over checkpoints (folds)-->  (3, x, y, z)
      --restore_to_original (order 1)-->  (3, X, Y, Z) WT, TC, ET probabilities
      --postprocess (threshold, small components, ET rule, label scheme)-->  (X, Y, Z) uint8

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
voxels through the network than overlapping windows).

``predict_dir`` runs this over a folder: a progress bar over cases, cases already predicted
skipped, each file written atomically, a failing case reported and skipped while the others go
on; the returned ``PredictSummary`` says which failed.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glioseg.data.labels import MODALITIES, REGIONS
from glioseg.errors import GliosegError
from glioseg.io_atomic import write_json

ET_MIN_VOXELS_DEFAULT = 0
"""ET rule threshold used when neither the card nor the command line gives one (rule off)."""


class PredictError(GliosegError, ValueError):
    """Input or options the predictor cannot use; the message names the case or the option."""


@dataclass(frozen=True)
class PredictOptions:
    """How to predict; saved as ``predict.json`` beside the predictions."""

    engine: str = "torch"  # torch | onnxruntime | openvino
    device: str = "cpu"  # cpu | cuda (torch and onnxruntime engines)
    dtype: str = "fp32"  # fp32 | bf16 (torch autocast or OpenVINO hint) | fp16 (torch, cuda)
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
    probabilities: bool = False  # also write <case>_probabilities.nii.gz (X,Y,Z,3), see below
    overwrite: bool = False  # predict cases whose output already exists
    threads: int | None = None  # CPU threads of the engine; None = torch's setting

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _card_section(card: Any, name: str) -> dict[str, Any]:
    value = getattr(card, name, None) if card is not None else None
    return dict(value) if isinstance(value, dict) else {}


def card_modalities(card: Any, in_channels: int) -> tuple[str, ...]:
    """Modalities the network takes, in input order (the card's, else the canonical four)."""
    mods = tuple(getattr(card, "modalities", None) or MODALITIES[:in_channels])
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise PredictError(f"model card names unknown modalities {unknown}; known: {MODALITIES}")
    return mods


def card_spacing(card: Any) -> list[float] | None:
    """Voxel size the model was trained at (None: the original grid)."""
    sp = _card_section(card, "preprocessing").get("spacing")
    if sp is None:
        return None
    return [float(sp)] * 3 if np.isscalar(sp) else [float(s) for s in sp]


def card_orientation(card: Any) -> tuple[str, str, str] | None:
    """Axis codes of the training arrays (e.g. ``('L', 'P', 'S')``); None: not recorded
    (cases are then used as stored, whatever their orientation)."""
    codes = _card_section(card, "preprocessing").get("orientation")
    return tuple(str(c) for c in codes) if codes else None  # type: ignore[return-value]


def card_allows_missing(card: Any) -> bool:
    """Whether the card lets a missing sequence be replaced by zeros (modality dropout).

    Set by ``preprocessing["missing_modality"] = "zeros"`` in the card (a model trained with
    sequence dropout); otherwise a missing sequence is an error.
    """
    pre = _card_section(card, "preprocessing")
    return pre.get("missing_modality") in ("zeros", "zero") or bool(pre.get("allow_missing"))


def card_et_min_voxels(card: Any) -> int | None:
    """The card's ET rule threshold (``et_threshold``, voxels), or None."""
    value = getattr(card, "et_threshold", None)
    if value is not None:
        return int(value)
    for section in ("postprocessing", "preprocessing", "training", "metrics"):
        value = _card_section(card, section).get("et_min_voxels")
        if value is not None:
            return int(value)
    return None


WHOLE_VOLUME_BUDGET_GB = 8.0
"""Largest estimated memory (GiB) of a whole-box forward that ``mode: auto`` runs."""

BYTES_PER_VOXEL_AND_WIDTH = 40
"""Estimated peak bytes of an fp32 whole-volume forward per voxel and per first-stage feature:
measured (peak RSS above the model) 32 for the small preset on an 80x96x80 box and 27 for the
full preset on 160x192x160, rounded up."""

PREDICT_MODES = ("auto", "whole", "sliding")


def card_min_size_mm3(card: Any) -> dict[str, float] | None:
    """The card's per-region size thresholds (``postprocessing.min_size_mm3``), or None."""
    sizes = _card_section(card, "postprocessing").get("min_size_mm3")
    if not isinstance(sizes, dict):
        return None
    return {r: float(sizes.get(r, 0.0)) for r in REGIONS}


def whole_volume_bytes(shape: Sequence[int], width: int) -> int:
    """Estimated peak memory of one forward of a ``shape`` volume through a network whose
    first stage has ``width`` features (``BYTES_PER_VOXEL_AND_WIDTH``)."""
    return int(np.prod([int(s) for s in shape])) * max(int(width), 1) * BYTES_PER_VOXEL_AND_WIDTH


def model_width(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "base_width", 32) or 32)


def model_divisor(model: torch.nn.Module) -> int:
    div = getattr(model, "divisor", 1)
    return int(max(div) if isinstance(div, list | tuple) else div)


def model_roi(model: torch.nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "config", None)
    roi = getattr(cfg, "patch_size", None)
    return tuple(int(r) for r in roi) if roi else (128, 128, 128)  # type: ignore[return-value]


def model_in_channels(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "in_channels"):
        return int(cfg.in_channels)
    for p in model.parameters():
        if p.ndim == 5:
            return int(p.shape[1])
    return len(MODALITIES)


def build_engine(model: torch.nn.Module, options: PredictOptions, workdir: Path,
                 tag: str = "model"):
    """The engine of ``options.engine`` running ``model`` (exporting it into ``workdir``)."""
    from glioseg.infer.engines import EngineError, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine

    if options.engine == "torch":
        return TorchEngine(model, device=options.device, dtype=options.dtype)
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


def resolved_paths(paths: Sequence[str | Path]) -> list[str]:
    """Absolute paths, symbolic links resolved: how ``predict.json`` names the models, so a
    re-run with a relative ``--model`` from another working folder is recognised."""
    return [str(Path(p).resolve()) for p in paths]


RESULT_OPTIONS = ("engine", "device", "dtype", "mode", "roi", "overlap", "tta", "threshold",
                  "et_min_voxels", "min_component", "min_size_mm3", "scheme")
"""The options that change the labels: a folder predicted with others is not resumed."""


def _check_same_settings(out_dir: Path, model_paths: Sequence[str | Path],
                         opts: PredictOptions, digests: Sequence[str] | None = None) -> None:
    """Refuse to add to ``out_dir`` predictions made with other models or options (its
    ``predict.json``), so that skipping finished cases never mixes two settings.

    Models are compared by ``digests`` (sha256 of weights and card, ``model_digest``) when
    the record has them: a folder retrained in place is another model, a copy of the same
    model elsewhere is not. Older records without digests are compared by path."""
    record = out_dir / "predict.json"
    if not record.is_file():
        return
    try:
        before = json.loads(record.read_text())
    except ValueError:
        raise PredictError(f"{record}: unreadable; use another --output or --overwrite") from None
    now = opts.to_dict()
    diffs = []
    # predict.json stores resolved paths (older records may hold paths relative to the
    # folder they were run from: resolved here against this one, the best guess left)
    models = resolved_paths(model_paths)
    if digests is not None and "model_digests" in before:
        if list(before["model_digests"]) != list(digests):
            diffs.append(f"models {before.get('models')} -> {models} (weights or card "
                         f"differ: sha256 {[d[:12] for d in before['model_digests']]} -> "
                         f"{[d[:12] for d in digests]})")
    elif resolved_paths(before.get("models", [])) != models:
        diffs.append(f"models {before.get('models')} -> {models}")
    for key in RESULT_OPTIONS:
        old = before.get("options", {}).get(key)
        new = list(now[key]) if isinstance(now[key], tuple) else now[key]
        if old != new:
            diffs.append(f"{key} {old!r} -> {new!r}")
    if diffs:
        raise PredictError(f"{out_dir} holds predictions made with other settings ("
                           f"{'; '.join(diffs)}); use another --output, or --overwrite to "
                           "predict every case again")


class CasePredictor:
    """One or several checkpoints (folds) ready to predict cases.

    Args:
        models: ``(nn.Module, card)`` pairs; the cards must agree on modalities and spacing.
        options: how to predict.
    """

    def __init__(self, models: Sequence[tuple[torch.nn.Module, Any]], options: PredictOptions):
        if not models:
            raise PredictError("no model given")
        if not 0 <= options.overlap < 1:
            raise PredictError(f"--overlap must be in [0, 1), got {options.overlap}")
        if options.batch < 1:
            raise PredictError(f"--batch must be >= 1, got {options.batch}")
        self.options = options
        for i, (_, c) in enumerate(models, start=1):
            regions = tuple(getattr(c, "regions", REGIONS))
            if regions != tuple(REGIONS):
                raise PredictError(
                    f"checkpoint {i} outputs {', '.join(regions)}, not the {'/'.join(REGIONS)} "
                    "region probabilities prediction thresholds (a self-supervised or other-task "
                    "model?); fine-tune it first: glioseg finetune --from MODEL ...")
        first_model, self.card = models[0]
        self.modalities = card_modalities(self.card, model_in_channels(first_model))
        self.spacing = card_spacing(self.card)
        self.orientation = card_orientation(self.card)
        for i, (m, c) in enumerate(models[1:], start=2):
            if card_modalities(c, model_in_channels(m)) != self.modalities or card_spacing(c) != self.spacing:
                raise PredictError(f"checkpoint {i} was trained on other modalities or spacing "
                                   f"than checkpoint 1; an ensemble needs the same inputs")
            if card_orientation(c) != self.orientation:
                raise PredictError(f"checkpoint {i} was trained on arrays in orientation "
                                   f"{card_orientation(c)}, checkpoint 1 in {self.orientation}; "
                                   "an ensemble needs the same inputs")
        self.divisor = max(model_divisor(m) for m, _ in models)
        self.roi = tuple(options.roi) if options.roi else model_roi(first_model)
        if options.mode not in PREDICT_MODES:
            raise PredictError(f"--mode must be one of {', '.join(PREDICT_MODES)}, "
                               f"got {options.mode!r}")
        if options.mode == "whole" and options.roi:
            raise PredictError("--roi sets the windows of --mode sliding; --mode whole has none")
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

    def probabilities(self, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Region probabilities on the original grid.

        Args:
            image: ``(4, X, Y, Z)`` float32, channels in ``MODALITIES`` order (a missing
                sequence all zeros).
            spacing: voxel size (mm) of the grid.

        Returns:
            ``(3, X, Y, Z)`` float32 WT, TC, ET probabilities (0 outside the brain's box).
        """
        from glioseg.infer.sliding_window import sliding_window_inference
        from glioseg.infer.tta import mirrored
        from glioseg.preprocess.pure import preprocess_arrays, restore_to_original

        pre, _, geometry = preprocess_arrays(image, None, spacing, self.spacing)
        channels = [MODALITIES.index(m) for m in self.modalities]
        x = torch.from_numpy(np.ascontiguousarray(pre[channels]))
        gpu = self.options.device.startswith("cuda")
        if gpu and self.options.engine == "torch":  # windows cut and summed on the GPU
            x = x.to(self.options.device)
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
        probs = (total / len(self.engines)).cpu().numpy()
        return restore_to_original(probs, geometry, order=1)

    def oriented_probabilities(self, image: np.ndarray, spacing: Sequence[float],
                               affine: np.ndarray | None) -> np.ndarray:
        """``probabilities`` of a case on a grid with voxel-to-world ``affine``: the case is
        turned to the card's orientation (voxel axes permuted and flipped, nibabel's
        orientation tools in ``glioseg.data.nifti``), predicted, and the result turned back
        to the input's own axes. No recorded orientation (or no affine): as stored."""
        if self.orientation is None or affine is None:
            return self.probabilities(image, spacing)
        from glioseg.data.nifti import (
            invert_orientation,
            orientation_to,
            reorient,
            reorient_spacing,
        )

        ornt = orientation_to(affine, self.orientation)
        probs = self.probabilities(reorient(image, ornt), reorient_spacing(spacing, ornt))
        return reorient(probs, invert_orientation(ornt))

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
        """Post-processed labels ``(X, Y, Z)`` uint8 in ``scheme`` (None: internal); the
        per-region size thresholds (mm^3) are turned into voxels of ``spacing`` (mm; None:
        1 mm)."""
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
        probs = predictor.oriented_probabilities(image, spacing, affine)
        return predictor.labels(probs, scheme, spacing)
    finally:
        predictor.close()


def load_for_model(case, modalities: Sequence[str], allow_missing: bool):
    """Image ``(4, X, Y, Z)`` float32 (MODALITIES order) and header of a case on disk.

    A sequence the model needs but the case lacks is an error naming the case and the file,
    unless ``allow_missing`` (the card allows it): then it is zeros, as in modality dropout.
    """
    from glioseg.data.cases import CaseError, load_case
    from glioseg.data.nifti import NiftiError, load_volume

    if not case.missing:
        data = load_case(case, with_labels=False)
        return data.image, data.header
    needed = [m for m in case.missing if m in modalities]
    if needed and not allow_missing:
        files = ", ".join(case.expected_file(m) for m in needed)
        raise CaseError(f"{case.case_id}: missing sequence {', '.join(needed)} (no {files} in "
                        f"{case.folder}); the model needs {', '.join(modalities)} and its card "
                        "does not allow a missing sequence")
    vols: dict[str, np.ndarray] = {}
    header = None
    for m in MODALITIES:
        if m not in case.images:
            continue
        try:
            vol, h = load_volume(case.images[m], dtype=np.float32)
        except NiftiError as exc:
            raise CaseError(f"{case.case_id}: {exc}") from None
        if vol.ndim != 3 or (header is not None and vol.shape != header.shape[:3]):
            raise CaseError(f"{case.case_id}: {case.images[m].name}: shape {vol.shape} differs "
                            "from the other sequences")
        if not np.isfinite(vol).all():
            raise CaseError(f"{case.case_id}: {case.images[m].name}: NaN/inf voxels")
        vols[m] = vol
        header = header or h
    if header is None:
        raise CaseError(f"{case.case_id}: no sequence found in {case.folder}")
    shape = header.shape[:3]
    image = np.stack([vols.get(m, np.zeros(shape, np.float32)) for m in MODALITIES])
    return image, header


@dataclass
class PredictSummary:
    """What ``predict_dir`` did: case ids predicted, skipped (already done) and failed."""

    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def output_scheme(asked: str | None, case_scheme: str | None, card: Any) -> str | None:
    """Label scheme of a case's output: the one asked for, else the input's, else the card's.

    The input's convention comes before the card's: a model trained on BraTS 2023 files
    (labels 1/2/3) that segments BraTS 2021 cases writes 1/2/4, as the cases' own files.
    """
    from glioseg.data.labels import SCHEMES

    if asked:
        return asked
    if case_scheme in SCHEMES:
        return case_scheme
    return getattr(card, "label_scheme", None)


def output_paths(out_dir: Path, case_id: str) -> tuple[Path, Path]:
    """``(<case_id>.nii.gz, <case_id>_probabilities.nii.gz)`` in ``out_dir``."""
    return out_dir / f"{case_id}.nii.gz", out_dir / f"{case_id}_probabilities.nii.gz"


def probabilities_for_file(probabilities: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` probabilities -> ``(X, Y, Z, 3)`` float32 holding float16 values.

    NIfTI-1 has no float16 data type (nibabel refuses it), so the file is float32; rounding
    the values to float16 first (11-bit mantissa, ample for probabilities) makes the gzip
    stream several times smaller than full float32 values would.
    """
    return np.moveaxis(probabilities, 0, -1).astype(np.float16).astype(np.float32)


def predict_dir(
    model_paths: Sequence[str | Path],
    input_path: str | Path,
    output_dir: str | Path,
    options: PredictOptions | None = None,
    progress: bool = True,
) -> PredictSummary:
    """Predict every case found under ``input_path`` into ``output_dir``.

    Args:
        model_paths: checkpoints (folders or ``.safetensors``); several are ensembled.
        input_path: a data folder or one case folder, any layout ``discover`` knows.
        output_dir: gets ``<case_id>.nii.gz`` (labels in ``options.scheme``, else the case's
            own scheme, so that ``glioseg evaluate`` reads them in the reference's convention,
            else the card's ``label_scheme``; uint8, the input's grid and affine), optionally
            ``<case_id>_probabilities.nii.gz`` (``(X, Y, Z, 3)`` WT, TC, ET; see
            ``probabilities_for_file``), and
            ``predict.json`` (options, checkpoints as absolute paths, per-case status),
            ``timings.json`` and ``hardware.json`` (``glioseg.runinfo``: this call's wall
            seconds, the machine).

    Returns:
        ``PredictSummary``; a case that fails is recorded with its message, the others go on.
    """
    import time

    from tqdm import tqdm

    from glioseg.data.cases import discover
    from glioseg.data.nifti import save_volume
    from glioseg.runinfo import record_run

    started = time.perf_counter()
    opts = options or PredictOptions()
    out_dir = Path(output_dir)
    cases = discover(input_path)
    from glioseg.model.card import load_model_and_digest

    loaded = [load_model_and_digest(p) for p in model_paths]  # the resume key: what was read
    models = [(m.eval(), c) for m, c, _ in loaded]
    digests = [d for _, _, d in loaded]
    if not opts.overwrite:
        _check_same_settings(out_dir, model_paths, opts, digests)
    summary = PredictSummary()
    todo = []
    for case in cases:
        labels_path, prob_path = output_paths(out_dir, case.case_id)
        done = labels_path.is_file() and (not opts.probabilities or prob_path.is_file())
        if done and not opts.overwrite:
            summary.skipped.append(case.case_id)
        else:
            todo.append(case)
    predictor = CasePredictor(models, opts) if todo else None
    allow = card_allows_missing(predictor.card) if predictor else False

    def record() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "predict.json", {
            "models": resolved_paths(model_paths),
            "model_digests": digests,
            "input": str(input_path),
            "options": opts.to_dict(),
            "predicted": summary.predicted,
            "skipped": summary.skipped,
            "failed": summary.failed,
            "seconds": summary.seconds,
        }, indent=2)

    if opts.overwrite and todo:
        # every case is predicted again: its old outputs go first (before predict.json names
        # the new settings), so a case that now fails, or is not reached before a kill,
        # never keeps an output of the old model
        from glioseg.io_atomic import fsync_dir

        for case in todo:
            for path in output_paths(out_dir, case.case_id):
                path.unlink(missing_ok=True)
        if out_dir.is_dir():
            fsync_dir(out_dir)
    if todo:  # the settings on disk before the first file, for a resume after a kill
        record()
    bar = tqdm(todo, desc="cases", unit="case", disable=not progress)
    try:
        for case in bar:
            bar.set_postfix_str(case.case_id)
            t0 = time.perf_counter()
            try:
                assert predictor is not None
                image, header = load_for_model(case, predictor.modalities, allow)
                probs = predictor.oriented_probabilities(image, header.spacing, header.affine)
                labels = predictor.labels(probs, output_scheme(opts.scheme, case.label_scheme,
                                                               predictor.card), header.spacing)
                labels_path, prob_path = output_paths(out_dir, case.case_id)
                if opts.probabilities:
                    save_volume(prob_path, probabilities_for_file(probs), header.affine,
                                np.float32, like=header)
                save_volume(labels_path, labels, header.affine, np.uint8, like=header)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one bad case must not stop the others
                msg = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                summary.failed[case.case_id] = msg if case.case_id in msg else f"{case.case_id}: {msg}"
                continue
            summary.predicted.append(case.case_id)
            summary.seconds[case.case_id] = round(time.perf_counter() - t0, 3)
    finally:
        if predictor is not None:
            predictor.close()
    record()
    seconds = list(summary.seconds.values())
    record_run(out_dir, "predict", time.perf_counter() - started,
               **{"cases predicted": len(summary.predicted),
                  "cases skipped": len(summary.skipped), "cases failed": len(summary.failed),
                  "mean seconds per predicted case": round(sum(seconds) / len(seconds), 3)
                  if seconds else None})
    return summary
