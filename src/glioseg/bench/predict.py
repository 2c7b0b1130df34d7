"""``glioseg bench predict``: seconds per full-size BraTS case per engine, vs MONAI's reference.

For one four-sequence case (a synthetic 240x240x155 1 mm case unless one is given):

- each ``engine:dtype`` runs ``CasePredictor`` (crop to brain, sliding window, restore) in a
  fresh process, so its peak memory (``ru_maxrss``) is its own; the time excludes loading
  the model, exporting it and one warm-up window (compilation), which a run over many cases
  pays once;
- the reference is MONAI's ``sliding_window_inference`` with the same weights, ROI, overlap
  and Gaussian mode on the uncropped z-scored volume (PyTorch fp32, batch 1), also alone in
  its process; it is warmed up the same way (one forward pass of one window before its
  timer starts), so the speed ratio compares steady-state work and not who paid for the
  first call's primitive creation;
- ``--device cuda``: the torch engine and the reference run on the GPU (default rows
  ``torch:fp32``, ``torch:fp16`` and, where the GPU has it, ``torch:bf16``: autocast as in
  ``glioseg predict --dtype``; the reference stays fp32), each row also gives its peak GPU
  memory (``torch.cuda.max_memory_allocated`` over the timed run, weights included) and the
  floor uses the GPU's measured matmul rate; int8 rows are CPU only;
- agreement: WT/TC/ET Dice between each engine's regions (probability > 0.5) and the
  reference's, and for bf16/int8 rows with the same engine's fp32 row;
- int8 (``onnxruntime:int8``, ``openvino:int8``): the exported ONNX graph quantised statically
  (QDQ, ``glioseg.infer.export.export_int8``), calibrated on ``INT8_WINDOWS`` fixed-seed random
  windows of a calibration case that is never the benchmarked one: ``--calibration CASE``, by
  default case 1 of the same synthetic cohort (the benchmarked synthetic case is case 0);
  quantisation is part of the setup time;
- the floor: network FLOPs per case (``torch.utils.flop_counter``, times the windows run)
  over this CPU's (or GPU's) measured dense GFLOP/s (a large matmul, same threads and dtype).

Figures measured on a shared machine are contended; run it alone for clean numbers.
"""

from __future__ import annotations

import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.bench import BenchError
from glioseg.data.labels import REGIONS


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


def check_device(device: str) -> None:
    """Refuse a device the benchmark cannot use, with a message saying why."""
    if device == "cpu":
        return
    if device == "cuda" or device.startswith("cuda:"):
        import torch

        if not torch.cuda.is_available():
            raise BenchError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU "
                             "here (a CPU-only build of torch, or no GPU driver); use --device "
                             "cpu")
        return
    raise BenchError(f"--device must be cpu or cuda, got {device!r}")


def _is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def _sync(device: str) -> None:
    """Wait for the GPU's queued work (a timer read before it would stop too early)."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)


def _reset_gpu_peak(device: str) -> None:
    if _is_cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak(device: str) -> dict[str, float]:
    """``{"peak_gpu_mb": MB}`` since the last reset on a GPU; empty on the CPU."""
    if not _is_cuda(device):
        return {}
    import torch

    return {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def _crop_windows(image_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float,
                  divisor: int) -> int:
    from glioseg.infer.sliding_window import fit_roi, window_slices

    r = fit_roi(image_shape, roi, divisor)
    padded = tuple(max(s, q) for s, q in zip(image_shape, r, strict=True))
    return len(window_slices(padded, r, overlap))


def _monai_windows(image_shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> int:
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


def _engine_run(spec: str, ckpt: str, image_path: str, spacing: list[float],
                roi: tuple[int, int, int], overlap: float, batch: int, out_path: str,
                calib_path: str | None = None, calib_spacing: list[float] | None = None,
                device: str = "cpu") -> dict:
    """Child process: time one ``engine:dtype`` on the case; save its regions to ``out_path``.

    ``int8`` quantises the network on windows of the calibration case (``calib_path``, a
    ``(4, X, Y, Z)`` float32 ``.npy`` at ``calib_spacing``), never on the timed case.
    ``device``: where the engine runs (``cuda``: the torch engine; int8 is CPU only).
    """
    import torch

    from glioseg.infer.predict import CasePredictor, PredictOptions, load_model

    engine, _, dtype = spec.partition(":")
    if dtype == "int8" and device != "cpu":
        raise BenchError(f"{spec}: int8 rows run on the CPU only")
    base = _rss_mb()
    model, card = load_model(ckpt)
    image = np.load(image_path)
    t0 = time.perf_counter()
    int8 = dtype == "int8"
    # int8: a PyTorch predictor (no export) whose engines are then replaced by int8 ones
    opts = PredictOptions(engine="torch" if int8 else engine, dtype="fp32" if int8 else
                          (dtype or "fp32"), roi=roi, overlap=overlap, batch=batch,
                          device=device)
    predictor = CasePredictor([(model, card)], opts)
    if int8:
        if calib_path is None or calib_spacing is None:
            raise BenchError("int8 needs a calibration case")
        predictor.engines = _int8_engines(predictor, [model], calib_path, calib_spacing, engine,
                                          Path(predictor._tmp.name))
    div = predictor.divisor
    for e in predictor.engines:  # warm-up: primitive creation / compilation, batch shape
        e(torch.zeros((batch, len(predictor.modalities), *roi)))
    _sync(device)
    setup = time.perf_counter() - t0
    _reset_gpu_peak(device)
    t0 = time.perf_counter()
    probs = predictor.probabilities(image, spacing)
    labels = predictor.labels(probs, None)
    _sync(device)
    seconds = time.perf_counter() - t0
    gpu = _gpu_peak(device)
    np.save(out_path, np.packbits(probs > opts.threshold))
    predictor.close()
    del labels
    return {"spec": spec, "seconds": seconds, "setup_s": setup, "peak_rss_mb": _rss_mb(),
            "base_rss_mb": base, "divisor": div, **gpu}


def _reference_run(ckpt: str, image_path: str, spacing: list[float], roi: tuple[int, int, int],
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
    _sync(device)
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
    _sync(device)
    seconds = time.perf_counter() - t0
    gpu = _gpu_peak(device)
    np.save(out_path, np.packbits(probs > 0.5))
    peak = _rss_mb()
    del full, logits, probs
    if crop_out_path is not None:
        with torch.inference_mode():
            logits = sliding_window_inference(torch.from_numpy(pre)[None].to(device), roi, 1,
                                              model, overlap=overlap, mode="gaussian")[0]
        probs = restore_to_original(torch.sigmoid(logits).cpu().numpy(), geo, order=1)
        np.save(crop_out_path, np.packbits(probs > 0.5))
    return {"spec": "monai-reference:fp32", "seconds": seconds, "setup_s": 0.0,
            "peak_rss_mb": peak, "base_rss_mb": base,
            "windows": _monai_windows(tuple(full_shape), roi, overlap), **gpu}


def _in_child(fn, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def region_dice(packed: np.ndarray, ref_packed: np.ndarray,
                n_voxels: int) -> dict[str, float]:
    """WT/TC/ET Dice of two ``np.packbits`` of ``(3, X, Y, Z)`` bool region masks.

    ``n_voxels`` is ``X * Y * Z``: packbits pads the ``3 * n_voxels`` bits to a whole byte,
    so the region boundaries cannot be read off the packed length.
    """
    a = np.unpackbits(packed, count=3 * n_voxels).astype(bool)
    b = np.unpackbits(ref_packed, count=3 * n_voxels).astype(bool)
    n = n_voxels
    return {reg: round(dice(a[i * n:(i + 1) * n], b[i * n:(i + 1) * n]), 5)
            for i, reg in enumerate(REGIONS)}


def measured_gflops(dtype: str = "fp32", max_n: int | None = None, repeats: int = 5,
                    budget_s: float = 0.5, device: str = "cpu") -> float:
    """Best dense matmul GFLOP/s of this CPU with torch's threads, or of the GPU
    (``fp32``, ``bf16``; ``fp16`` on a GPU).

    The matrix size doubles from 256 up to ``max_n`` (default 2048 on a CPU, 8192 on a GPU)
    while one product stays under ``budget_s`` / 8, so an emulated dtype (bf16 without AVX-512
    BF16: ~1 GFLOP/s) is measured in about a second instead of minutes.
    """
    import torch

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    max_n = max_n or (8192 if _is_cuda(device) else 2048)

    def timed() -> float:
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        return time.perf_counter() - t0

    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        first = min(timed(), timed())  # the second: after any library initialisation
        if n >= max_n or 8 * first > budget_s:
            break
        n *= 2
    best = min(timed() for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def window_flops(model, in_channels: int, roi: tuple[int, ...]) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass of ``model`` on a ``roi`` window."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros((1, in_channels, *roi)))
    return float(counter.get_total_flops())


GOAL_SPEEDUP = 3.0
GOAL_DICE = 0.99


def _verdict(rows: list[dict[str, Any]], trained: bool) -> None:
    """Print which engines meet the goal: >= 3x MONAI's time with Dice >= 0.99 per region."""
    ours = [r for r in rows if r.get("speedup") and r.get("dice")]
    if not ours:
        return
    ok = [r for r in ours if r["speedup"] >= GOAL_SPEEDUP
          and min(r["dice"].values()) >= GOAL_DICE]
    best = max(ours, key=lambda r: r["speedup"])
    print(f"fastest: {best['spec']} {best['speedup']:.2f}x MONAI (min Dice "
          f"{min(best['dice'].values()):.4f}); goal >= {GOAL_SPEEDUP:g}x with Dice >= "
          f"{GOAL_DICE:g}: met by {', '.join(r['spec'] for r in ok) or 'none'}")
    if not trained:
        print("note: random weights give probabilities near 0.5 everywhere, so Dice agreement "
              "says little; pass --model with a trained checkpoint")


def default_engines(native_bf16: bool) -> list[str]:
    """Every engine in fp32 and int8, plus the bf16 rows where bf16 is native: emulated bf16
    (no AVX-512 BF16 / AMX) runs PyTorch tens of times slower than fp32, a row not worth its
    minutes; name it in ``--engines`` to time it anyway."""
    rows = ["torch:fp32", "onnxruntime:fp32", "openvino:fp32", "onnxruntime:int8",
            "openvino:int8"]
    if native_bf16:
        rows[1:1] = ["torch:bf16"]
        rows.insert(4, "openvino:bf16")
    return rows


def default_cuda_engines(bf16: bool) -> list[str]:
    """The GPU rows: the torch engine in fp32 and under fp16 autocast, and bf16 where the GPU
    supports it (``torch.cuda.is_bf16_supported``)."""
    return ["torch:fp32", "torch:fp16", *(["torch:bf16"] if bf16 else [])]


def _prepare_calibration(calibration: Path | None, case_id: str, card, in_channels: int,
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


def _prepare(model: Path | None, preset_name: str, case_dir: Path | None, tmp: Path):
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


def bench_predict(
    model: Path | None = None,
    preset_name: str = "full",
    engines: list[str] | None = None,
    case_dir: Path | None = None,
    overlap: float = 0.5,
    roi: tuple[int, int, int] | None = None,
    batch: int = 1,
    reference: bool = True,
    output: Path | None = None,
    calibration: Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the benchmark, print a table, optionally write JSON; returns the figures.

    ``calibration``: the case folder int8 engines are calibrated on (default: another case of
    the synthetic cohort; see the module docstring). ``device``: ``cpu`` or ``cuda`` (the
    torch engine and the reference on the GPU; an error naming the cause where there is none).
    """
    check_device(device)
    import torch

    from glioseg.infer.export import INT8_WINDOWS
    from glioseg.infer.predict import (
        card_spacing,
        load_model,
        model_divisor,
        model_in_channels,
        model_roi,
    )
    from glioseg.preprocess.pure import preprocess_arrays
    from glioseg.train.loop import native_bf16_cpu

    cuda = _is_cuda(device)
    if cuda:
        engines = engines or default_cuda_engines(torch.cuda.is_bf16_supported())
        if any(s.partition(":")[2] == "int8" for s in engines):
            raise BenchError("int8 rows (ONNX Runtime / OpenVINO quantisation) run on the CPU "
                             "only; leave them out of --engines with --device cuda")
    engines = engines or default_engines(native_bf16_cpu())
    gpu_name = torch.cuda.get_device_name(torch.device(device)) if cuda else None
    with tempfile.TemporaryDirectory(prefix="glioseg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt, image_path, spacing, case_id, trained = _prepare(model, preset_name, case_dir, tmp)
        net, card = load_model(ckpt)
        roi = roi or model_roi(net)
        image = np.load(image_path)
        n_vox = int(np.prod(image.shape[1:]))
        # the brain box on the network's grid (resampled when the card asks for a spacing)
        _, _, geo = preprocess_arrays(image, None, spacing, card_spacing(card))
        crop_shape = tuple(int(s) for s in geo["shape"])
        cin, div = model_in_channels(net), model_divisor(net)
        flops_window = window_flops(net, cin, roi)
        n_ours = _crop_windows(crop_shape, roi, overlap, div)
        voxels_box = float(np.prod(crop_shape))
        flops_per_voxel = flops_window / float(np.prod(roi))
        gflops = {d: measured_gflops(d, device=device)
                  for d in (("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16"))}
        print(f"case {case_id} {tuple(image.shape[1:])} at {tuple(spacing)} mm, brain box "
              f"{crop_shape} at {tuple(geo['spacing'])} mm; ROI {roi}, "
              f"overlap {overlap}, {torch.get_num_threads()} threads"
              f"{f', GPU {gpu_name}' if cuda else ''}; "
              f"{'trained' if trained else 'UNTRAINED (random weights)'} network "
              f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters")
        bf16_note = ("" if cuda else " (native)" if native_bf16_cpu()
                     else " (emulated: no AVX-512 BF16 / AMX)")
        print(f"FLOPs per window {flops_window / 1e9:.1f} G; ours {n_ours} windows = "
              f"{n_ours * flops_window / 1e12:.2f} TFLOP; one pass over the brain box "
              f"{flops_per_voxel * voxels_box / 1e12:.2f} TFLOP; {'GPU' if cuda else 'CPU'} "
              f"matmul peak " + ", ".join(f"{v:.0f} GFLOP/s {k}" for k, v in gflops.items())
              + bf16_note)
        rows: list[dict[str, Any]] = []
        ref_regions = crop_regions = None
        truth = np.load(tmp / "truth.npy") if (tmp / "truth.npy").is_file() else None
        if reference:
            r = _in_child(_reference_run, str(ckpt), str(image_path), spacing, roi, overlap,
                          str(tmp / "ref.npy"), str(tmp / "crop.npy"), device)
            r["flops"] = r["windows"] * flops_window
            ref_regions = np.load(tmp / "ref.npy")
            crop_regions = np.load(tmp / "crop.npy")
            if truth is not None:
                r["dice_truth"] = region_dice(ref_regions, truth, n_vox)
            rows.append(r)
            print(f"  monai-reference:fp32 done: {r['seconds']:.1f} s", flush=True)
        calib: tuple[Path, list[float], str] | None = None
        if any(s.partition(":")[2] == "int8" for s in engines):
            calib = _prepare_calibration(calibration, case_id, card, cin, tmp)
            print(f"int8 calibration: {INT8_WINDOWS} windows of case {calib[2]}", flush=True)
        fp32_regions: dict[str, np.ndarray] = {}
        for spec in engines:
            try:
                r = _in_child(_engine_run, spec, str(ckpt), str(image_path), spacing, roi,
                              overlap, batch, str(tmp / "ours.npy"),
                              str(calib[0]) if calib else None, calib[1] if calib else None,
                              device)
            except Exception as exc:  # one engine missing must not stop the others
                print(f"  {spec}: failed: {exc}", flush=True)
                continue
            print(f"  {spec} done: {r['seconds']:.1f} s", flush=True)
            r["windows"] = n_ours
            r["flops"] = n_ours * flops_window
            ours = np.load(tmp / "ours.npy")
            eng, _, dt = spec.partition(":")
            if dt in ("", "fp32"):
                fp32_regions[eng] = ours
            elif eng in fp32_regions:
                r["dice_fp32"] = region_dice(ours, fp32_regions[eng], n_vox)
            if calib is not None and dt == "int8":
                r["calibration_case"] = calib[2]
            if ref_regions is not None and crop_regions is not None:
                r["dice"] = region_dice(ours, ref_regions, n_vox)
                r["dice_crop"] = region_dice(ours, crop_regions, n_vox)
            if truth is not None:
                r["dice_truth"] = region_dice(ours, truth, n_vox)
            rows.append(r)
    ref_s = rows[0]["seconds"] if reference and rows else None
    one_pass = flops_per_voxel * voxels_box
    print(f"{'engine:dtype':<22}{'windows':>8}{'s/case':>9}{'x MONAI':>9}{'floor s':>9}"
          f"{'1-pass s':>9}{'peak MB':>9}{'setup s':>9}" + (f"{'GPU MB':>9}" if cuda else ""))
    for r in rows:
        dt = r["spec"].partition(":")[2]
        dt = dt if dt in gflops else "fp32"
        r["floor_s"] = r["flops"] / (gflops[dt] * 1e9)
        r["one_pass_floor_s"] = one_pass / (gflops[dt] * 1e9)
        r["speedup"] = (ref_s / r["seconds"]) if ref_s else None
        sp = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        print(f"{r['spec']:<22}{r['windows']:>8}{r['seconds']:>9.1f}{sp:>9}"
              f"{r['floor_s']:>9.1f}{r['one_pass_floor_s']:>9.1f}{r['peak_rss_mb']:>9.0f}"
              f"{r['setup_s']:>9.1f}" + (f"{r.get('peak_gpu_mb', 0.0):>9.0f}" if cuda else ""))
    print("floor s: this row's network FLOPs (windows x FLOPs per window, as direct "
          "convolutions) / measured matmul GFLOP/s of its dtype (int8 rows: fp32's); an engine "
          "whose convolutions need fewer operations than direct ones can run below it; "
          "1-pass s: one pass over the brain box, no overlap; peak MB: the process's peak resident memory (VmHWM), Python and "
          "libraries included" + ("; GPU MB: torch.cuda.max_memory_allocated over the timed "
                                  "run, weights included." if cuda else "."))

    def _fmt(d: dict[str, float] | None) -> str:
        return "/".join(f"{d[k]:.4f}" for k in REGIONS) if d else "-"

    print(f"{'Dice WT/TC/ET':<22}{'vs reference':>22}{'vs MONAI on crop':>22}"
          f"{'vs same engine fp32':>22}{'vs ground truth':>22}")
    for r in rows:
        print(f"{r['spec']:<22}{_fmt(r.get('dice')):>22}{_fmt(r.get('dice_crop')):>22}"
              f"{_fmt(r.get('dice_fp32')):>22}{_fmt(r.get('dice_truth')):>22}")
    print("vs reference: MONAI on the uncropped volume (the issue's agreement figure); vs MONAI "
          "on crop: MONAI's sliding window on the same brain box our engines see; vs same "
          "engine fp32: this engine's fp32 row earlier in --engines (bf16/int8 rows).")
    _verdict(rows, trained)
    result = {
        "case": case_id, "shape": list(image.shape[1:]), "brain_box": list(crop_shape),
        "roi": list(roi), "overlap": overlap, "batch": batch, "trained": trained,
        "device": device, "gpu": gpu_name,
        "threads": torch.get_num_threads(), "flops_per_window": flops_window,
        "calibration_case": calib[2] if calib else None,
        "flops_one_pass_box": flops_per_voxel * voxels_box, "gflops": gflops, "rows": rows,
    }
    if output is not None:
        from glioseg.io_atomic import write_json

        write_json(Path(output), result, indent=2)
    return result
