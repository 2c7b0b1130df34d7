"""The timed runs of ``glioseg bench predict``, each in a fresh process (``in_child``).

``engine_run`` times one row, ``engine:dtype[:mode]``, of ``CasePredictor.prepare`` + ``run``
(the device path: labels made where the network ran, one copy back) on the case, after an
untimed warm-up forward of every window shape the timed run will use (batch shapes of the
sliding window, or the whole box), so neither cuDNN's algorithm search
(``TorchEngine(cudnn_benchmark)``) nor primitive creation is counted; with ``sync_timers``
the row also says where its time went (prepare on the host, network, labels on the device and
the copy back, host post-processing).

``reference_run`` times MONAI's ``sliding_window_inference`` (Gaussian, fp32, batch 1) on the
uncropped z-scored volume, as a MONAI user would run it, warmed up the same way.

``prepare_case`` and ``prepare_calibration`` write the case (and int8's calibration case) as
``.npy`` files the child processes read; window counts (``crop_windows``, ``monai_windows``)
say what each side runs.

Both runs save the case's WT/TC/ET regions after the nesting ET in TC in WT (``labels_from_regions``
then ``regions_from_labels``: the regions the labels file says) as packed bits for the Dice
agreement figures.
"""

from __future__ import annotations

import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from glioseg.bench import BenchError

MODES = ("sliding", "whole")
"""Row modes: windows of the ROI (``--roi``, default the model's patch) or the whole box."""


def _rss_mb() -> float:
    """Peak resident memory (MB) of this process's own address space.

    ``VmHWM`` from ``/proc/self/status`` where there is one: ``ru_maxrss`` is not usable in a
    child process, because Linux carries the parent's peak across fork and exec, so every child
    of a large parent would report the parent's figure.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync_device(device: str) -> None:
    """Wait for the GPU's queued work (a timer read before it would stop too early)."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def _reset_gpu_peak(device: str) -> None:
    if is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak(device: str) -> dict[str, float]:
    """``{"peak_gpu_mb": MB}`` since the last reset on a GPU; empty on the CPU."""
    if not is_cuda(device):
        return {}
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def crop_windows(image_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float,
                  divisor: int) -> int:
    """Windows our sliding window runs on a box of ``image_shape``."""
    from glioseg.infer.sliding_window import fit_roi, window_slices

    r = fit_roi(image_shape, roi, divisor)
    padded = tuple(max(s, q) for s, q in zip(image_shape, r, strict=True))
    return len(window_slices(padded, r, overlap))


def monai_windows(image_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
    """Windows MONAI's ``sliding_window_inference`` runs on a volume of ``image_shape``."""
    import math

    n = 1
    for s, r in zip(image_shape, roi, strict=True):
        s = max(s, r)
        interval = int(r * (1 - overlap)) or 1
        n *= math.ceil((s - r) / interval) + 1 if s > r else 1
    return n


def _int8_engines(predictor, models: list, calib_path: str, calib_spacing: list[float],
                  engine: str, workdir: Path) -> list:
    """int8 engines of ``engine`` for ``models``, calibrated on the calibration case."""
    from glioseg.data.labels import MODALITIES
    from glioseg.infer.engines import EngineError, OnnxRuntimeEngine, OpenVinoEngine
    from glioseg.infer.export import calibration_windows, export_int8
    from glioseg.infer.predict import model_in_channels
    from glioseg.preprocess.pure import preprocess_arrays

    if engine not in ("onnxruntime", "openvino"):
        raise EngineError(f"int8 runs on the onnxruntime and openvino engines, not {engine!r}")
    pre, _, _ = preprocess_arrays(np.load(calib_path), None, calib_spacing, predictor.spacing)
    pre = pre[[MODALITIES.index(m) for m in predictor.modalities]]
    windows = calibration_windows(pre, predictor.roi)
    out = []
    for i, m in enumerate(models):
        path = export_int8(m, workdir / f"model{i}.int8.onnx", windows, model_in_channels(m))
        out.append(OnnxRuntimeEngine(path) if engine == "onnxruntime"
                   else OpenVinoEngine(path, precision="int8"))
    return out


def packed_regions(regions: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` thresholded WT, TC, ET -> the regions of the labels they make (ET in TC
    in WT), ``np.packbits`` of them."""
    from glioseg.data.labels import labels_from_regions, regions_from_labels

    return np.packbits(regions_from_labels(labels_from_regions(regions)))


def parse_spec(spec: str) -> tuple[str, str, str]:
    """``engine:dtype[:mode]`` -> (engine, dtype, mode); dtype defaults to fp32, mode to
    sliding."""
    engine, _, rest = spec.partition(":")
    dtype, _, mode = rest.partition(":")
    mode = mode or "sliding"
    if mode not in MODES:
        raise BenchError(f"{spec}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    return engine, dtype or "fp32", mode


def _warm_up(predictor, image: np.ndarray, spacing: list[float], batch: int) -> None:
    """One forward of every input shape the timed run will give each engine."""
    import torch

    from glioseg.infer.sliding_window import fit_roi, window_slices

    prepared = predictor.prepare(image, spacing)
    shape = tuple(int(s) for s in prepared.x.shape[1:])
    roi = fit_roi(shape, predictor.window(shape), predictor.divisor)
    padded = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    n = 1 if predictor.whole(shape) else len(window_slices(padded, roi, predictor.options.overlap))
    sizes = {min(batch, n)} | ({n % batch} if n % batch else set())
    for e in predictor.engines:
        for b in sorted(sizes):
            e(torch.zeros((b, len(predictor.modalities), *roi), device=predictor.device))


def engine_run(spec: str, ckpt: str, image_path: str, spacing: list[float],
               roi: tuple[int, int, int], overlap: float, batch: int, out_path: str,
               calib_path: str | None = None, calib_spacing: list[float] | None = None,
               device: str = "cpu") -> dict:
    """Child process: time one ``engine:dtype[:mode]`` on the case; save its regions.

    ``int8`` quantises the network on windows of the calibration case (``calib_path``, a
    ``(4, X, Y, Z)`` float32 ``.npy`` at ``calib_spacing``), never on the timed case.
    ``device``: where the engine runs (``cuda``: the torch engine; int8 is CPU only).
    ``dtype`` ``auto`` is resolved (``glioseg.infer.device.resolve_dtype``): the row says to
    what.
    """
    from glioseg.infer.predict import CasePredictor, PredictOptions, load_model

    engine, dtype, mode = parse_spec(spec)
    if dtype == "int8" and device != "cpu":
        raise BenchError(f"{spec}: int8 rows run on the CPU only")
    base = _rss_mb()
    model, card = load_model(ckpt)
    image = np.load(image_path)
    t0 = time.perf_counter()
    int8 = dtype == "int8"
    # int8: a PyTorch predictor (no export) whose engines are then replaced by int8 ones
    opts = PredictOptions(engine="torch" if int8 else engine, dtype="fp32" if int8 else dtype,
                          roi=roi if mode == "sliding" else None, mode=mode, overlap=overlap,
                          batch=batch, device=device)
    predictor = CasePredictor([(model, card)], opts)
    if int8:
        if calib_path is None or calib_spacing is None:
            raise BenchError("int8 needs a calibration case")
        predictor.engines = _int8_engines(predictor, [model], calib_path, calib_spacing, engine,
                                          Path(predictor._tmp.name))
    _warm_up(predictor, image, spacing, batch)
    sync_device(device)
    setup = time.perf_counter() - t0
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    result = predictor.run(predictor.prepare(image, spacing), None, sync_timers=True)
    sync_device(device)
    seconds = time.perf_counter() - t0
    gpu = _gpu_peak(device)
    from glioseg.data.labels import regions_from_labels

    np.save(out_path, np.packbits(regions_from_labels(result.labels)))
    predictor.close()
    return {"spec": spec, "dtype": "int8" if int8 else predictor.options.dtype, "mode": mode,
            "seconds": seconds, "setup_s": setup, "stages": result.seconds,
            "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "divisor": predictor.divisor, **gpu}


def reference_run(ckpt: str, image_path: str, spacing: list[float], roi: tuple[int, int, int],
                   overlap: float, out_path: str, crop_out_path: str | None = None,
                   device: str = "cpu") -> dict:
    """Child process: MONAI sliding window on the uncropped volume (PyTorch fp32, batch 1).

    Warmed up as the engines are: one forward pass of one window before the timer starts.
    With ``crop_out_path``, afterwards (not timed, not in the peak memory) MONAI's sliding
    window also runs on the brain box alone, the very volume our engines see: agreement with
    that isolates our windowing from the effect of cropping on the network's output.
    """
    import torch
    from monai.inferers import sliding_window_inference

    from glioseg.infer.predict import card_spacing, load_model
    from glioseg.preprocess.pure import preprocess_arrays, restore_to_original, target_shape

    base = _rss_mb()
    model, card = load_model(ckpt)
    model = model.to(device)
    image = np.load(image_path)
    with torch.inference_mode():  # warm-up, as the engines': the same window shape, untimed
        model(torch.zeros((1, image.shape[0], *roi), device=device))
    sync_device(device)
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    pre, _, geo = preprocess_arrays(image, None, spacing, card_spacing(card))
    # the uncropped volume on the model's grid, zeros outside the brain's box
    full_shape = target_shape(geo["original_shape"], geo["original_spacing"], geo["spacing"])
    lo = [min(int(round(b[0] * si / so)), f - s) for b, si, so, f, s in
          zip(geo["bbox"], geo["original_spacing"], geo["spacing"], full_shape, pre.shape[1:],
              strict=True)]
    full = np.zeros((pre.shape[0], *full_shape), np.float32)
    sl = tuple(slice(a, a + s) for a, s in zip(lo, pre.shape[1:], strict=True))
    full[(slice(None), *sl)] = pre
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(full)[None].to(device), roi, 1,
                                          model, overlap=overlap, mode="gaussian")[0]
    probs = torch.sigmoid(logits[(slice(None), *sl)]).cpu().numpy()
    probs = restore_to_original(probs, geo, order=1)
    sync_device(device)
    seconds = time.perf_counter() - t0
    gpu = _gpu_peak(device)
    np.save(out_path, packed_regions(probs > 0.5))
    peak = _rss_mb()
    del full, logits, probs
    if crop_out_path is not None:
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(pre)[None].to(device), roi, 1,
                                              model, overlap=overlap, mode="gaussian")[0]
        probs = restore_to_original(torch.sigmoid(logits).cpu().numpy(), geo, order=1)
        np.save(crop_out_path, packed_regions(probs > 0.5))
    return {"spec": "monai-reference:fp32", "seconds": seconds, "setup_s": 0.0,
            "peak_rss_mb": peak, "base_rss_mb": base,
            "windows": monai_windows(tuple(full_shape), roi, overlap), **gpu}


def prepare_calibration(calibration: Path | None, case_id: str, card, in_channels: int,
                         tmp: Path) -> tuple[Path, list[float], str]:
    """(calibration image (4, X, Y, Z) ``.npy``, its spacing, its case id) for int8.

    ``calibration`` is a case folder; None: case 1 of the synthetic cohort whose case 0 is the
    default benchmark case (a different case, so the quantisation never sees the timed one).
    A calibration case with the benchmarked case's id (``case_id``) is refused.
    """
    from glioseg.data.cases import discover
    from glioseg.infer.predict import card_modalities, load_for_model

    if calibration is None:
        from glioseg.data.synthetic import write_cohort

        calibration = write_cohort(tmp / "calib", n_cases=1, layout="brats2021", seed=0,
                                   spacing=1.0, start=1)[0]
    case = discover(calibration)[0]
    if case.case_id == case_id:
        raise BenchError(f"{calibration}: calibration case {case.case_id} is the benchmarked "
                         f"case; int8 must be calibrated on another case")
    image, header = load_for_model(case, card_modalities(card, in_channels), False)
    np.save(tmp / "calib.npy", image)
    return tmp / "calib.npy", list(header.spacing), case.case_id


def prepare_case(model: Path | None, preset_name: str, case_dir: Path | None, tmp: Path):
    """(checkpoint folder, image (4, X, Y, Z) file, spacing, case id, trained?).

    When the case has a segmentation, its regions are saved (packed bits) as ``truth.npy``.
    """
    import torch

    from glioseg.data.cases import discover, load_case
    from glioseg.data.labels import regions_from_labels
    from glioseg.infer.predict import card_modalities, load_for_model, load_model, model_in_channels

    if model is None:
        from glioseg.model.card import ModelCard, save_model
        from glioseg.model.registry import build_model, preset

        torch.manual_seed(0)
        net = build_model(preset(preset_name))
        ckpt = save_model(tmp / "model", net, ModelCard.for_model(net))
    else:
        ckpt = Path(model)
    net, card = load_model(ckpt)
    if case_dir is None:
        from glioseg.data.synthetic import write_cohort

        case_dir = write_cohort(tmp / "data", n_cases=1, layout="brats2021", seed=0,
                                spacing=1.0)[0]
    case = discover(case_dir)[0]
    image, header = load_for_model(case, card_modalities(card, model_in_channels(net)), False)
    np.save(tmp / "image.npy", image)
    if case.seg is not None:
        truth = regions_from_labels(load_case(case).labels)
        np.save(tmp / "truth.npy", np.packbits(truth))
    return ckpt, tmp / "image.npy", list(header.spacing), case.case_id, model is not None


def in_child(fn, *args) -> dict:
    """``fn(*args)`` in a fresh (spawned) process: its own peak memory, its own CUDA context."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


