"""``glioseg bench eval``: seconds to score one full-size BraTS case, per scheme.

The reference is the segmentation of one synthetic 240x240x155 1 mm case (``glioseg.data.
synthetic``, brats2023 layout); the prediction is that reference shifted by (2, 1, 0) voxels,
its enhancing tumour eroded by one voxel, plus a distant false-positive blob and a few specks,
so every metric has work to do (no empty region, several components, a bounding box that spans
most of the volume); a second, noisy prediction adds a few hundred specks over the whole grid,
each a lesion-wise false positive, the slowest kind of input. Times are for ``score_labels``
on arrays already in memory (one core: NumPy, SciPy and cc3d run single-threaded here), median
of ``repeats`` after one warm-up; the NIfTI reading time is printed apart. Wall time on a shared machine is contended; the CPU time of
the process is printed beside it.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from glioseg.bench import BenchError


def _prediction(ref: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect prediction of 2023-scheme labels ``ref`` (X, Y, Z) uint8."""
    from scipy import ndimage

    pred = np.roll(ref, (2, 1, 0), axis=(0, 1, 2))
    et = pred == 3
    pred[et & ~ndimage.binary_erosion(et)] = 1  # thinner enhancing rim
    pred[20:28, 30:37, 20:26] = 2  # a distant false positive
    for _ in range(5):  # specks
        x, y, z = (int(rng.integers(10, s - 10)) for s in ref.shape)
        pred[x : x + 2, y : y + 2, z : z + 2] = 1
    return pred


def _noisy(pred: np.ndarray, n_specks: int, rng: np.random.Generator) -> np.ndarray:
    """``pred`` plus ``n_specks`` 2x2x1 specks of random labels 1-3 anywhere in the grid, as an
    undertrained model scatters them: the working box becomes the whole grid and every speck is
    a lesion-wise false positive (the slow case)."""
    pred = pred.copy()
    for _ in range(n_specks):
        x, y, z = (int(rng.integers(0, s - 2)) for s in pred.shape)
        pred[x : x + 2, y : y + 2, z] = int(rng.integers(1, 4))
    return pred


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) of ``fn()``."""
    fn()  # warm-up: imports, lookup tables
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def bench_eval(repeats: int = 5, seed: int = 0, n_specks: int = 300) -> dict[str, float]:
    """Time ``score_labels`` on one synthetic full-size case; print and return the figures.

    Two predictions: a plausible one (``_prediction``) and a noisy one, the same plus
    ``n_specks`` specks scattered over the grid (``_noisy``; 0 skips it).
    """
    from glioseg.data.cases import discover
    from glioseg.data.nifti import load_volume
    from glioseg.data.synthetic import write_cohort
    from glioseg.evaluate.folder import score_labels

    with tempfile.TemporaryDirectory() as tmp:
        case_dir = write_cohort(Path(tmp) / "data", n_cases=1, layout="brats2023", seed=seed)[0]
        case = discover(case_dir)[0]
        if case.seg is None:
            raise BenchError(f"{case.case_id}: the synthetic case has no segmentation")
        t0 = time.perf_counter()
        ref, header = load_volume(case.seg, dtype=None)
        t_load = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    preds = {"plausible": _prediction(ref, rng)}
    if n_specks > 0:
        preds["noisy"] = _noisy(preds["plausible"], n_specks, rng)
    figures = {"load_reference_s": t_load}
    print(f"case {case.case_id}: grid {ref.shape}, WT {int((ref > 0).sum())} voxels; "
          f"read the reference NIfTI: {t_load:.3f} s")
    for name, pred in preds.items():
        scores = score_labels(pred, ref, "brats2023", "brats2023", lesion_spacing=header.spacing)
        print(f"{name} prediction: WT Dice {scores['WT_dice']:.3f}, WT HD95 "
              f"{scores['WT_hd95']:.2f}, WT lesion-wise Dice {scores['WT_lesion_dice']:.3f} "
              f"({scores['WT_lesion_fp']} false-positive components)")
        for scheme, what in (("brats2020", "legacy: Dice, HD95, sensitivity, specificity"),
                             ("brats2023", "legacy + lesion-wise Dice, HD95, counts")):
            key = f"{name}_{scheme}"
            figures[f"{key}_s"], figures[f"{key}_cpu_s"] = _median_time(
                lambda s=scheme, p=pred: score_labels(p, ref, "brats2023", s,
                                                      lesion_spacing=header.spacing), repeats
            )
            print(f"  {scheme} ({what}; 3 regions): {figures[f'{key}_s']:.3f} s wall, "
                  f"{figures[f'{key}_cpu_s']:.3f} s CPU per case (median of {repeats})")
    return figures
