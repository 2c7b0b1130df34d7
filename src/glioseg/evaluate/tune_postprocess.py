"""Post-processing chosen on validation cases: per-region size thresholds for lesion-wise Dice.

Lesion-wise Dice (BraTS 2023 onwards) divides by the number of lesions plus the number of
predicted components that match no lesion, so every stray speck of a prediction costs as much
as a missed tumour. The BraTS 2023/2024 winners removed components below a size per region
(e.g. 250 / 150 / 100 voxels for WT / TC / ET at 1 mm), chosen by hand on validation cases.
Here the choice is made by search on a model's own validation cases:

1. each case is predicted once, exactly as ``glioseg predict`` does (``CasePredictor``: the
   card's preprocessing, the whole box or windows, the ET rule), and its region probabilities
   are kept;
2. for WT, then TC, then ET, every candidate size (mm^3, so a choice made at 2 mm holds at
   1 mm) is applied on top of the sizes already chosen for the outer regions, and the one with
   the highest mean lesion-wise Dice over the three regions and the cases is kept (a tie keeps
   the smaller size: nothing is removed without a gain);
3. the sizes, the cases they were chosen on and the before/after scores go into the model
   card's ``postprocessing`` section, which ``predict`` applies (``--min-size`` overrides).

Only cases that are never scored afterwards may be used: the scores after the choice are
optimistic on the cases that chose it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.data.labels import REGIONS
from glioseg.errors import GliosegError

CANDIDATES_MM3: tuple[float, ...] = (0, 50, 100, 250, 500, 1000, 2000, 4000)
"""Sizes (mm^3) tried per region; 0 keeps every component."""


class TuneError(GliosegError, ValueError):
    """Cases or a model that post-processing cannot be chosen on; the message says which."""


@dataclass(frozen=True)
class TuneCase:
    """One validation case held in memory for the search.

    Attributes:
        case_id: case id (its challenge tag picks the lesion-wise parameters).
        probabilities: ``(3, X, Y, Z)`` WT, TC, ET probabilities on the case's grid.
        reference: ``(X, Y, Z)`` uint8 internal labels.
        spacing: voxel size (mm) of the grid.
    """

    case_id: str
    probabilities: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class TuneResult:
    """What the search chose and what it changed (means over the cases).

    ``before``/``after``: ``{"lesion_dice": {region: mean}, "dice": {region: mean},
    "lesion_fp": {region: mean false-positive components per case}}``.
    """

    min_size_mm3: dict[str, float]
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    chosen_on: list[str]
    candidates: list[float] = field(default_factory=lambda: list(CANDIDATES_MM3))

    def card_section(self, source: str) -> dict[str, Any]:
        """The model card's ``postprocessing`` section."""
        return {"min_size_mm3": self.min_size_mm3, "objective": "mean lesion-wise Dice",
                "chosen_on": self.chosen_on, "data": source, "candidates_mm3": self.candidates,
                "before": self.before, "after": self.after}

    def at_top(self) -> list[str]:
        """Regions whose chosen size is the largest size tried (above 0): the best size may
        lie beyond the search range."""
        top = max(self.candidates, default=0.0)
        return [r for r in REGIONS if top > 0 and self.min_size_mm3[r] >= top]

    def table(self) -> str:
        """Before/after lines per region, as ``glioseg tune-postprocess`` prints them, and a
        warning when a choice is the top of the search range."""
        lines = [f"post-processing chosen on {len(self.chosen_on)} cases: smallest component "
                 + ", ".join(f"{r} {self.min_size_mm3[r]:g} mm^3" for r in REGIONS),
                 "region  lesion-wise Dice before -> after   Dice before -> after   "
                 "false positives/case before -> after"]
        for r in REGIONS:
            b, a = self.before, self.after
            lines.append(f"{r:<7} {b['lesion_dice'][r]:.3f} -> {a['lesion_dice'][r]:.3f}"
                         f"{'':17}{b['dice'][r]:.3f} -> {a['dice'][r]:.3f}{'':12}"
                         f"{b['lesion_fp'][r]:.1f} -> {a['lesion_fp'][r]:.1f}")
        top = self.at_top()
        if top:
            lines.append(
                f"warning: {', '.join(top)}: {max(self.candidates):g} mm^3 is the largest size "
                f"tried ({', '.join(f'{c:g}' for c in self.candidates)} mm^3), so the best may "
                "be larger, and components this big are often real tumour: look at the "
                "predictions of these cases before relying on it")
        return "\n".join(lines)


def case_scores(labels: np.ndarray, case: TuneCase) -> dict[str, float]:
    """BraTS 2023 scores (legacy + lesion-wise) of internal ``labels`` against the case."""
    from glioseg.evaluate.folder import score_labels

    return score_labels(labels, case.reference, "brats2023", scheme="brats2023",
                        case_id=case.case_id, lesion_spacing=case.spacing)


def _summary(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    def mean(key: str) -> float:
        return float(np.mean([row[key] for row in rows]))

    return {"lesion_dice": {r: mean(f"{r}_lesion_dice") for r in REGIONS},
            "dice": {r: mean(f"{r}_dice") for r in REGIONS},
            "lesion_fp": {r: mean(f"{r}_lesion_fp") for r in REGIONS}}


def _objective(rows: Sequence[dict[str, float]]) -> float:
    return float(np.mean([row[f"{r}_lesion_dice"] for row in rows for r in REGIONS]))


def choose_min_sizes(
    cases: Sequence[TuneCase],
    *,
    threshold: float = 0.5,
    et_min_voxels: int = 0,
    candidates: Sequence[float] = CANDIDATES_MM3,
    progress: Callable[[str], None] | None = None,
) -> TuneResult:
    """Per-region size thresholds (mm^3) maximising mean lesion-wise Dice over ``cases``.

    Args:
        cases: validation cases with their predicted probabilities.
        threshold: region probability threshold (as ``predict``).
        et_min_voxels: the ET rule applied after the sizes (as ``predict``).
        candidates: sizes tried per region (mm^3); 0 must be among them.
        progress: called with a line per region chosen.

    Returns:
        the chosen sizes and the scores before (no size threshold) and after.
    """
    from glioseg.infer.postprocess import min_sizes_in_voxels, postprocess

    if not cases:
        raise TuneError("no validation cases with labels to choose post-processing on")
    if 0 not in candidates:
        raise TuneError(f"candidate sizes {list(candidates)} must include 0 (keep everything)")

    def rows_for(sizes: dict[str, float]) -> list[dict[str, float]]:
        out = []
        for case in cases:
            voxels = min_sizes_in_voxels(sizes, case.spacing)
            labels = postprocess(case.probabilities, None, threshold=threshold,
                                 et_min_voxels=et_min_voxels, min_sizes=voxels)
            out.append(case_scores(labels, case))
        return out

    chosen = {r: 0.0 for r in REGIONS}
    before = rows_for(chosen)
    best_rows = before
    for region in REGIONS:
        best_value, best_size = _objective(best_rows), 0.0
        for size in sorted(float(c) for c in candidates if c > 0):
            rows = rows_for({**chosen, region: size})
            value = _objective(rows)
            if value > best_value + 1e-9:
                best_value, best_size, best_rows = value, size, rows
        chosen[region] = best_size
        if progress is not None:
            progress(f"{region}: smallest component {best_size:g} mm^3 (mean lesion-wise "
                     f"Dice {best_value:.3f})")
    return TuneResult(min_size_mm3=chosen, before=_summary(before), after=_summary(best_rows),
                      chosen_on=[c.case_id for c in cases], candidates=[float(c) for c in candidates])


def predicted_cases(model_path: str | Path, data: str | Path, *, progress: bool = True,
                    options: Any = None, label_scheme: str | None = None) -> list[TuneCase]:
    """Predict every labelled case under ``data`` (a raw BraTS folder) with the model, as
    ``glioseg predict`` would, without size thresholds; cases without a segmentation are
    refused (they cannot choose anything). ``label_scheme``: that of the segmentations when
    it is not their layout's (``glioseg.data.layouts.discover``)."""
    import dataclasses

    from tqdm import tqdm

    from glioseg.data.cases import discover, load_case
    from glioseg.infer.predict import CasePredictor, PredictOptions, load_model

    cases = discover(data, label_scheme)
    unlabelled = [c.case_id for c in cases if c.seg is None]
    if unlabelled:
        raise TuneError(f"{data}: cases without a segmentation cannot choose post-processing: "
                        f"{', '.join(unlabelled)}")
    opts = dataclasses.replace(options or PredictOptions(), min_size_mm3=(0.0, 0.0, 0.0))
    predictor = CasePredictor([load_model(model_path)], opts)
    out = []
    try:
        for case in tqdm(cases, desc="predict", unit="case", disable=not progress):
            loaded = load_case(case, modalities=predictor.modalities)
            header = loaded.header
            probs = predictor.oriented_probabilities(loaded.image, header.spacing, header.affine)
            out.append(TuneCase(case.case_id, probs.astype(np.float32), loaded.labels,
                                tuple(float(s) for s in header.spacing)))
    finally:
        predictor.close()
    return out


def tune_postprocess(model_path: str | Path, data: str | Path, *, write: bool = True,
                     progress: bool = True, candidates: Sequence[float] = CANDIDATES_MM3,
                     label_scheme: str | None = None) -> TuneResult:
    """Choose per-region size thresholds for a model on the labelled cases in ``data`` and,
    with ``write``, record them in the model folder's card (``predict`` then applies them).
    ``label_scheme``: that of the segmentations when it is not their layout's."""
    from glioseg.infer.predict import ET_MIN_VOXELS_DEFAULT, card_et_min_voxels
    from glioseg.model.card import CARD_NAME, load_card, resolve_paths, save_card

    card = load_card(model_path)
    cases = predicted_cases(model_path, data, progress=progress, label_scheme=label_scheme)
    say = (lambda line: print(f"  {line}")) if progress else None
    result = choose_min_sizes(cases, et_min_voxels=card_et_min_voxels(card)
                              or ET_MIN_VOXELS_DEFAULT, candidates=candidates, progress=say)
    if write:
        path = Path(model_path)
        card_path = path if path.name == CARD_NAME else resolve_paths(path)[1]
        save_card(card_path, card.replace(postprocessing=result.card_section(str(data))))
    return result
