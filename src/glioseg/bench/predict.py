"""``glioseg bench predict``: seconds per full-size BraTS case per engine, vs MONAI's reference.

For one four-sequence case (a synthetic 240x240x155 1 mm case unless one is given):

- each row ``engine:dtype[:mode]`` runs ``CasePredictor`` (prepare on the host; network,
  labels on the device, one copy back; ``glioseg.bench.predict_runs``) in a fresh process, so
  its peak memory (``ru_maxrss``) is its own; the time excludes loading the model, exporting
  it and a warm-up forward of every window shape (compilation, cuDNN's algorithm search),
  which a run over many cases pays once; ``mode`` is ``sliding`` (windows of ``--roi``, the
  default) or ``whole`` (the brain box in one forward, as ``glioseg predict --mode auto``
  does when it fits); ``dtype`` ``auto`` is resolved as ``glioseg predict --dtype auto``
  resolves it; each row says where its seconds went (prepare, network, labels, host);
- the reference is MONAI's ``sliding_window_inference`` with the same weights, ROI, overlap
  and Gaussian mode on the uncropped z-scored volume (PyTorch fp32, batch 1), also alone in
  its process; it is warmed up the same way (one forward pass of one window before its
  timer starts), so the speed ratio compares steady-state work and not who paid for the
  first call's primitive creation;
- ``--device cuda``: the torch engine and the reference run on the GPU (default rows
  ``default_cuda_engines``: fp32, fp16 and bf16 autocast windows, fp16 and fp32 whole boxes;
  the reference stays fp32), each row also gives its peak GPU memory
  (``torch.cuda.max_memory_allocated`` over the timed run, weights included) and the floor
  uses the GPU's measured matmul rate; int8 rows are CPU only;
- agreement: WT/TC/ET Dice of each row's regions (those of its labels: ET in TC in WT) with
  the reference's (thresholded at 0.5, nested the same way), and for half-precision and int8
  rows with the same engine and mode in fp32 (the agreement check of ``--dtype auto``);
- int8 (``onnxruntime:int8``, ``openvino:int8``): the exported ONNX graph quantised statically
  (QDQ, ``glioseg.infer.export.export_int8``), calibrated on ``INT8_WINDOWS`` fixed-seed random
  windows of a calibration case that is never the benchmarked one: ``--calibration CASE``, by
  default case 1 of the same synthetic cohort (the benchmarked synthetic case is case 0);
  quantisation is part of the setup time;
- the floor: network FLOPs per case (``torch.utils.flop_counter``, times the windows run)
  over this CPU's (or GPU's) measured dense GFLOP/s (a large matmul, same threads and dtype);
- the verdict: the fastest row against the goal (>= ``GOAL_SPEEDUP`` x MONAI with Dice >=
  ``GOAL_DICE`` per region), the figures a GPU session must read off.

Figures measured on a shared machine are contended; run it alone for clean numbers.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.bench import BenchError
from glioseg.bench.predict_runs import (
    crop_windows,
    engine_run,
    in_child,
    is_cuda,
    monai_windows,
    parse_spec,
    prepare_calibration,
    prepare_case,
    reference_run,
    sync_device,
)
from glioseg.data.labels import REGIONS

__all__ = ["bench_predict", "check_device", "crop_windows", "default_cuda_engines",
           "default_engines", "dice", "engine_run", "measured_gflops", "monai_windows",
           "reference_run", "region_dice", "window_flops"]


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
    max_n = max_n or (8192 if is_cuda(device) else 2048)

    def timed() -> float:
        sync_device(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync_device(device)
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
    """FLOPs (2 x multiply-adds) of one forward pass of ``model`` on a ``roi`` window.

    Counted on a copy of the model on the ``meta`` device (shapes only, no arithmetic: a
    second, where a 128^3 window of the full preset computes for seconds on a CPU); a model
    with an operation the meta device lacks is counted by running it on the CPU."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def count(device: str) -> float:
        net = copy.deepcopy(model).to(device).eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(torch.zeros((1, in_channels, *roi), device=device))
        return float(counter.get_total_flops())

    try:
        return count("meta")
    except (NotImplementedError, RuntimeError):
        return count("cpu")



GOAL_SPEEDUP = 3.0
GOAL_DICE = 0.99


def _verdict(rows: list[dict[str, Any]], trained: bool) -> None:
    """Print which rows meet the goal: >= 3x MONAI's time with Dice >= 0.99 per region, and
    whether each half-precision row agrees with its fp32 row to the same Dice."""
    ours = [r for r in rows if r.get("speedup") and r.get("dice")]
    for r in rows:
        if r.get("dice_fp32"):
            worst = min(r["dice_fp32"].values())
            print(f"{r['spec']} ({r['dtype']}) vs the same engine and mode in fp32: min Dice "
                  f"{worst:.4f}, {'agrees' if worst >= GOAL_DICE else 'DISAGREES'} (goal >= "
                  f"{GOAL_DICE:g})")
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
    """The GPU rows: the torch engine's windows and the whole box (one forward, ``glioseg
    predict``'s default mode) in fp32 and under fp16 autocast (``--dtype auto`` on a GPU),
    then windows under bf16 where the GPU supports it (``torch.cuda.is_bf16_supported``)."""
    return ["torch:fp32", "torch:fp16", "torch:fp32:whole", "torch:fp16:whole",
            *(["torch:bf16"] if bf16 else [])]


def _engines(engines: list[str] | None, device: str) -> list[str]:
    """The rows asked for, else the device's defaults; int8 refused on a GPU."""
    import torch

    from glioseg.train.loop import native_bf16_cpu

    if is_cuda(device):
        engines = engines or default_cuda_engines(torch.cuda.is_bf16_supported())
        if any(parse_spec(s)[1] == "int8" for s in engines):
            raise BenchError("int8 rows (ONNX Runtime / OpenVINO quantisation) run on the CPU "
                             "only; leave them out of --engines with --device cuda")
    for spec in engines or []:
        parse_spec(spec)  # a bad mode is refused before anything runs
    return engines or default_engines(native_bf16_cpu())


def _describe(net, image: np.ndarray, spacing: list[float], card, roi, overlap: float,
              device: str) -> dict[str, Any]:
    """The case's and network's figures every row is set against (printed)."""
    import torch

    from glioseg.infer.predict import card_spacing, model_divisor, model_in_channels
    from glioseg.preprocess.pure import preprocess_arrays
    from glioseg.train.loop import native_bf16_cpu

    _, _, geo = preprocess_arrays(image, None, spacing, card_spacing(card))
    crop = tuple(int(s) for s in geo["shape"])  # the brain box on the network's grid
    cin, div = model_in_channels(net), model_divisor(net)
    cuda = is_cuda(device)
    fig = {"shape": list(image.shape[1:]), "brain_box": list(crop), "roi": list(roi),
         "flops_per_window": window_flops(net, cin, roi),
         "windows": crop_windows(crop, roi, overlap, div),
         "whole_roi": [-(-s // div) * div for s in crop],
         "gflops": {d: measured_gflops(d, device=device)
                    for d in (("fp32", "fp16", "bf16") if cuda else ("fp32", "bf16"))},
         "threads": torch.get_num_threads(), "in_channels": cin,
         "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else None}
    fig["flops_one_pass_box"] = fig["flops_per_window"] / float(np.prod(roi)) * float(np.prod(crop))
    fig["flops_whole"] = window_flops(net, cin, tuple(fig["whole_roi"]))
    bf16_note = ("" if cuda else " (native)" if native_bf16_cpu()
                 else " (emulated: no AVX-512 BF16 / AMX)")
    print(f"brain box {crop} at {tuple(geo['spacing'])} mm; ROI {tuple(roi)}, overlap "
          f"{overlap}, {fig['threads']} threads{', GPU ' + fig['gpu'] if cuda else ''}; network "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters")
    print(f"FLOPs per window {fig['flops_per_window'] / 1e9:.1f} G; {fig['windows']} windows = "
          f"{fig['windows'] * fig['flops_per_window'] / 1e12:.2f} TFLOP; whole box "
          f"{tuple(fig['whole_roi'])} {fig['flops_whole'] / 1e12:.2f} TFLOP; "
          f"{'GPU' if cuda else 'CPU'} matmul peak "
          + ", ".join(f"{v:.0f} GFLOP/s {k}" for k, v in fig["gflops"].items()) + bf16_note)
    return fig


def _score(r: dict, ours: np.ndarray, refs: dict[str, np.ndarray | None], n_vox: int,
           fp32: dict[tuple[str, str], np.ndarray]) -> None:
    """Dice of a row's regions with the reference, MONAI on the crop, the truth and the same
    engine and mode in fp32 (rows after it in --engines)."""
    engine, _, mode = parse_spec(r["spec"])
    if r["dtype"] == "fp32":
        fp32[(engine, mode)] = ours
    elif (engine, mode) in fp32:
        r["dice_fp32"] = region_dice(ours, fp32[(engine, mode)], n_vox)
    for key, name in (("dice", "ref"), ("dice_crop", "crop"), ("dice_truth", "truth")):
        if refs.get(name) is not None:
            r[key] = region_dice(ours, refs[name], n_vox)


def _run_rows(ckpt: Path, image_path: Path, spacing: list[float], engines: list[str],
              figures: dict, overlap: float, batch: int, calib, refs: dict, tmp: Path,
              device: str, ref_s: float | None) -> list[dict[str, Any]]:
    """Each row in its own process, scored as it comes."""
    n_vox = int(np.prod(figures["shape"]))
    roi = tuple(figures["roi"])
    rows: list[dict[str, Any]] = []
    fp32: dict[tuple[str, str], np.ndarray] = {}
    for spec in engines:
        try:
            r = in_child(engine_run, spec, str(ckpt), str(image_path), spacing, roi, overlap,
                         batch, str(tmp / "ours.npy"), str(calib[0]) if calib else None,
                         calib[1] if calib else None, device)
        except Exception as exc:  # one engine missing must not stop the others
            print(f"  {spec}: failed: {exc}", flush=True)
            continue
        whole = r["mode"] == "whole"
        r["windows"] = 1 if whole else figures["windows"]
        r["flops"] = figures["flops_whole"] if whole else r["windows"] * figures[
            "flops_per_window"]
        if calib is not None and r["dtype"] == "int8":
            r["calibration_case"] = calib[2]
        _score(r, np.load(tmp / "ours.npy"), refs, n_vox, fp32)
        rows.append(r)
        _print_done(r, ref_s)
    return rows


def _fmt(d: dict[str, float] | None) -> str:
    return "/".join(f"{d[k]:.4f}" for k in REGIONS) if d else "-"


def _print_done(r: dict[str, Any], ref_s: float | None) -> None:
    """A row's figures as soon as it is done (a run cut short still shows them)."""
    parts = [f"{r['seconds']:.2f} s ({r['dtype']})"]
    if ref_s:
        parts.append(f"{ref_s / r['seconds']:.2f}x MONAI")
    for key, name in (("dice", "Dice vs MONAI"), ("dice_fp32", "vs fp32")):
        if r.get(key):
            parts.append(f"{name} {_fmt(r[key])}")
    print(f"  {r['spec']} done: " + ", ".join(parts), flush=True)


def _reference_row(ckpt: Path, image_path: Path, spacing: list[float], figures: dict,
                   overlap: float, refs: dict, n_vox: int, tmp: Path, device: str) -> dict:
    r = in_child(reference_run, str(ckpt), str(image_path), spacing, tuple(figures["roi"]),
                 overlap, str(tmp / "ref.npy"), str(tmp / "crop.npy"), device)
    r["flops"] = r["windows"] * figures["flops_per_window"]
    r["dtype"] = "fp32"
    refs["ref"], refs["crop"] = np.load(tmp / "ref.npy"), np.load(tmp / "crop.npy")
    if refs.get("truth") is not None:
        r["dice_truth"] = region_dice(refs["ref"], refs["truth"], n_vox)
    print(f"  monai-reference:fp32 done: {r['seconds']:.2f} s", flush=True)
    return r


def _print_table(rows: list[dict[str, Any]], figures: dict, cuda: bool) -> None:
    """Seconds, ratio, floors, memory and the stages of each row; then the Dice table."""
    ref_s = rows[0]["seconds"] if rows and rows[0]["spec"].startswith("monai") else None
    gflops = figures["gflops"]
    print(f"{'engine:dtype[:mode]':<22}{'dtype':>6}{'windows':>8}{'s/case':>9}{'x MONAI':>9}"
          f"{'floor s':>9}{'1-pass s':>9}{'peak MB':>9}{'setup s':>9}"
          + (f"{'GPU MB':>9}" if cuda else "") + "  prepare/network/labels/host s")
    for r in rows:
        dt = r["dtype"] if r["dtype"] in gflops else "fp32"
        r["floor_s"] = r["flops"] / (gflops[dt] * 1e9)
        r["one_pass_floor_s"] = figures["flops_one_pass_box"] / (gflops[dt] * 1e9)
        r["speedup"] = (ref_s / r["seconds"]) if ref_s else None
        sp = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        st = r.get("stages")
        stages = "/".join(f"{st[k]:.2f}" for k in ("prepare", "network", "labels", "host")) \
            if st else "-"
        print(f"{r['spec']:<22}{r['dtype']:>6}{r['windows']:>8}{r['seconds']:>9.2f}{sp:>9}"
              f"{r['floor_s']:>9.2f}{r['one_pass_floor_s']:>9.2f}{r['peak_rss_mb']:>9.0f}"
              f"{r['setup_s']:>9.1f}" + (f"{r.get('peak_gpu_mb', 0.0):>9.0f}" if cuda else "")
              + f"  {stages}")
    print("floor s: this row's network FLOPs (windows x FLOPs per window, as direct "
          "convolutions) / measured matmul GFLOP/s of its dtype (int8 rows: fp32's); an engine "
          "whose convolutions need fewer operations than direct ones can run below it; "
          "1-pass s: one pass over the brain box, no overlap; peak MB: the process's peak "
          "resident memory (VmHWM), Python and libraries included" + (
              "; GPU MB: torch.cuda.max_memory_allocated over the timed run, weights "
              "included" if cuda else "") + "; stages: host preparation, network (windows, "
          "stitching, sigmoid), labels on the device and the copy back, host steps.")

    print(f"{'Dice WT/TC/ET':<22}{'vs reference':>22}{'vs MONAI on crop':>22}"
          f"{'vs same engine fp32':>22}{'vs ground truth':>22}")
    for r in rows:
        print(f"{r['spec']:<22}{_fmt(r.get('dice')):>22}{_fmt(r.get('dice_crop')):>22}"
              f"{_fmt(r.get('dice_fp32')):>22}{_fmt(r.get('dice_truth')):>22}")
    print("vs reference: MONAI on the uncropped volume (the agreement figure of the goal); vs "
          "MONAI on crop: MONAI's sliding window on the same brain box our engines see; vs same "
          "engine fp32: this engine and mode's fp32 row earlier in --engines (half, int8 rows).")


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

    ``engines``: rows ``engine:dtype[:mode]`` (mode ``sliding`` or ``whole``). ``calibration``:
    the case folder int8 engines are calibrated on (default: another case of the synthetic
    cohort; see the module docstring). ``device``: ``cpu`` or ``cuda`` (the torch engine and
    the reference on the GPU; an error naming the cause where there is none).
    """
    check_device(device)
    engines = _engines(engines, device)
    from glioseg.infer.export import INT8_WINDOWS
    from glioseg.infer.predict import load_model, model_roi

    with tempfile.TemporaryDirectory(prefix="glioseg-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt, image_path, spacing, case_id, trained = prepare_case(model, preset_name, case_dir, tmp)
        net, card = load_model(ckpt)
        roi = roi or model_roi(net)
        image = np.load(image_path)
        print(f"case {case_id} {tuple(image.shape[1:])} at {tuple(spacing)} mm; "
              f"{'trained' if trained else 'UNTRAINED (random weights)'} network")
        figures = _describe(net, image, spacing, card, roi, overlap, device)
        n_vox = int(np.prod(image.shape[1:]))
        truth = tmp / "truth.npy"
        refs: dict[str, np.ndarray | None] = {"truth": np.load(truth) if truth.is_file()
                                              else None}
        rows = [_reference_row(ckpt, image_path, spacing, figures, overlap, refs, n_vox, tmp,
                               device)] if reference else []
        calib = None
        if any(parse_spec(s)[1] == "int8" for s in engines):
            calib = prepare_calibration(calibration, case_id, card, figures["in_channels"],
                                         tmp)
            print(f"int8 calibration: {INT8_WINDOWS} windows of case {calib[2]}", flush=True)
        rows += _run_rows(ckpt, image_path, spacing, engines, figures, overlap, batch, calib,
                          refs, tmp, device, rows[0]["seconds"] if rows else None)
    _print_table(rows, figures, is_cuda(device))
    _verdict(rows, trained)
    result = {"case": case_id, **figures, "overlap": overlap, "batch": batch,
              "trained": trained, "device": device,
              "calibration_case": calib[2] if calib else None, "rows": rows}
    if output is not None:
        from glioseg.io_atomic import write_json

        write_json(Path(output), result, indent=2)
    return result
