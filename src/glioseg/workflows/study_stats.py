"""The label-efficiency study's statistics: per-run rows with the time to reach scratch's
final Dice, means over seeds with Student-t 95% intervals, the checks of what the curves
show, and the acceptance (fine-tuning beats scratch). Pure functions of run results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from glioseg.workflows.runner import DICE_KEYS

REGION_KEYS: tuple[str, ...] = DICE_KEYS
"""Test-Dice columns of a result row (a run's last validation record)."""

LESION_KEYS: tuple[str, ...] = ("lesion_dice_WT", "lesion_dice_TC", "lesion_dice_ET",
                                "lesion_dice_mean")
"""BraTS 2023 lesion-wise Dice of a target run's final model on the test cases (no
post-processing), ``glioseg.study.lesion_scores``."""


def time_to_target(curve: Sequence[Mapping[str, float]], target: float,
                   key: str = "dice_mean") -> tuple[float, float]:
    """(step, seconds) of the first validation record with ``key >= target``; (nan, nan) when
    the run never reaches it."""
    for r in curve:
        if r.get(key, -math.inf) >= target:
            return float(r["step"]), float(r.get("elapsed_s", math.nan))
    return math.nan, math.nan


def result_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target run (``CSV_COLUMNS``), with the time to reach the final mean Dice of
    the scratch run of the same labelled cases and seed (``seq-scratch`` for ``seq-*``)."""
    scratch = {(r["arm"], r["n_labelled"], r["seed"]): r for r in results
               if r["arm"] in ("scratch", "seq-scratch")}
    rows = []
    for r in results:
        ref_arm = "seq-scratch" if r["arm"].startswith("seq-") else "scratch"
        ref = scratch.get((ref_arm, r["n_labelled"], r["seed"]))
        target = float(ref["dice_mean"]) if ref else math.nan
        steps, secs = time_to_target(r["curve"], target) if ref else (math.nan, math.nan)
        rows.append({
            "arm": r["arm"], "strategy": r["strategy"], "modalities": "+".join(r["modalities"]),
            "n_labelled": r["n_labelled"], "seed": r["seed"], "steps": r["steps"],
            "seconds": r["seconds"], **{k: float(r[k]) for k in REGION_KEYS},
            **{k: float(r.get(k, math.nan)) for k in LESION_KEYS},
            "target_dice": target, "steps_to_target": steps, "seconds_to_target": secs,
            "cases": ";".join(r["cases"]), "run": f"runs/target/{r['name']}",
        })
    return rows


def arm_label(row: Mapping[str, Any]) -> str:
    """``scratch``, ``source/full``, ``self-supervised/full``, ``seq-source/full`` ..."""
    return row["arm"] if row["strategy"] == "none" else f"{row['arm']}/{row['strategy']}"


def _mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd (across seeds) per arm and n_labelled; time-to-target averaged over the
    seeds that reached the target, ``reached`` counts them."""
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((arm_label(r), int(r["n_labelled"])), []).append(r)
    out = []
    for (label, n), rs in groups.items():
        rec: dict[str, Any] = {"arm": label, "n_labelled": n, "seeds": len(rs)}
        for k in (*REGION_KEYS, *LESION_KEYS, "steps_to_target", "seconds_to_target",
                  "seconds"):
            m, sd, k_n = _mean_sd([float(r[k]) for r in rs])
            rec[k], rec[f"{k}_sd"] = m, sd
            if k in REGION_KEYS:
                rec[f"{k}_ci"] = ci95(sd, k_n)
        rec["reached"] = sum(not math.isnan(float(r["steps_to_target"])) for r in rs)
        rec["steps"] = rs[0]["steps"]
        out.append(rec)
    return out


def ci95(sd: float, n: int) -> float:
    """Half-width of the 95% confidence interval of a mean of ``n`` values with sample sd
    ``sd`` (Student t, ``n - 1`` degrees of freedom); nan for fewer than 2 values."""
    if n < 2 or math.isnan(sd):
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def label_efficiency_checks(summary: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the label-efficiency figure is for, checked on the summary:

    - ``scratch_rises``: scratch at the largest n is above scratch at the smallest, with
      non-overlapping 95% intervals;
    - ``transfer_not_below``: fine-tuning from the source model (``source/<first strategy>``)
      has a mean at or above scratch's at every n;
    - ``meet``: the smallest n from which on the fine-tuned arm's mean lies within scratch's
      95% interval (scratch has caught up within its uncertainty; None: it never does);
    - ``ssl``: per n where both ran, the self-supervised arm's mean minus scratch's, and
      ``ssl_helps``: whether it is above scratch at every such n <= 2.
    """
    by = {(s["arm"], s["n_labelled"]): s for s in summary}
    ns = sorted({n for arm, n in by if arm == "scratch"})
    ft_arm = next((a for a, _ in sorted(by) if a.startswith("source/")), None)
    out: dict[str, Any] = {"scratch_rises": None, "transfer_not_below": None, "meet": None,
                           "ssl": {}, "ssl_helps": None}
    if len(ns) >= 2:
        lo, hi = by[("scratch", ns[0])], by[("scratch", ns[-1])]
        out["scratch_rises"] = bool(hi["dice_mean"] - hi["dice_mean_ci"]
                                    > lo["dice_mean"] + lo["dice_mean_ci"])
        out["scratch_range"] = [lo["dice_mean"], hi["dice_mean"]]
    if ft_arm is not None:
        pairs = [(n, by[(ft_arm, n)], by[("scratch", n)]) for n in ns if (ft_arm, n) in by]
        out["transfer_not_below"] = all(f["dice_mean"] >= sc["dice_mean"] for _, f, sc in pairs)
        inside = [f["dice_mean"] <= sc["dice_mean"] + sc["dice_mean_ci"] for _, f, sc in pairs]
        out["meet"] = next((pairs[i][0] for i in range(len(pairs)) if all(inside[i:])), None)
    ssl = {n: by[("self-supervised/full", n)]["dice_mean"] - by[("scratch", n)]["dice_mean"]
           for n in ns if ("self-supervised/full", n) in by}
    out["ssl"] = {str(n): g for n, g in ssl.items()}
    small = [g for n, g in ssl.items() if n <= 2]
    out["ssl_helps"] = bool(small) and all(g > 0 for g in small) if small else None
    return out


def acceptance(rows: Sequence[Mapping[str, Any]], n: int, margin: float = 0.05
               ) -> dict[str, Any]:
    """The acceptance check at ``n`` labelled cases: the best fine-tuned arm's mean test Dice
    (across seeds) against scratch's, and the fraction of the step budget it needs to reach
    scratch's final Dice. ``passed``: Dice gain >= ``margin`` and fraction < 1."""
    summ = [s for s in summarise(rows) if s["n_labelled"] == n]
    by = {s["arm"]: s for s in summ}
    if "scratch" not in by:
        return {"n_labelled": n, "passed": None, "verdict": f"no scratch arm at n={n}"}
    ft = [s for s in summ if s["arm"].startswith(("source/", "self-supervised/"))]
    if not ft:
        return {"n_labelled": n, "passed": None, "verdict": f"no fine-tuned arm at n={n}"}
    best = max(ft, key=lambda s: s["dice_mean"])
    sc = by["scratch"]
    gain = best["dice_mean"] - sc["dice_mean"]
    frac = best["steps_to_target"] / best["steps"] if best["reached"] else math.nan
    passed = bool(gain >= margin and best["reached"] == best["seeds"] and frac < 1.0)
    verdict = (f"n={n} labelled target cases: best fine-tuned arm {best['arm']} reaches mean "
               f"test Dice {best['dice_mean']:.3f} +- {best['dice_mean_sd']:.3f} vs scratch "
               f"{sc['dice_mean']:.3f} +- {sc['dice_mean_sd']:.3f} (gain {gain:+.3f}); it "
               + (f"reaches scratch's final Dice after {best['steps_to_target']:.0f} of "
                  f"{best['steps']} steps ({frac:.0%}) in {best['reached']}/{best['seeds']} seeds"
                  if best["reached"] else "never reaches scratch's final Dice")
               + (". PASS" if passed else ". FAIL"))
    per_arm = {s["arm"]: {"dice_mean": s["dice_mean"], "gain": s["dice_mean"] - sc["dice_mean"],
                          "steps_to_target": s["steps_to_target"], "reached": s["reached"]}
               for s in ft}
    return {"n_labelled": n, "passed": passed, "margin": margin, "best_arm": best["arm"],
            "gain": gain, "step_fraction": frac, "verdict": verdict, "arms": per_arm}


def mean_curves(results: Sequence[Mapping[str, Any]], n: int) -> dict[str, list[tuple[float, float]]]:
    """Per arm label at ``n`` labelled cases (the sequence-set arms aside, scratch first): the
    validation curve averaged over seeds, ``[(step, mean Dice)]``."""
    sel = [r for r in results if r["n_labelled"] == n and not r["arm"].startswith("seq")]
    labels = sorted({arm_label(r) for r in sel}, key=lambda a: (a != "scratch", a))
    out = {}
    for lab in labels:
        curves = [r["curve"] for r in sel if arm_label(r) == lab and r["curve"]]
        steps = sorted({c["step"] for cv in curves for c in cv})
        out[lab] = [(s, float(np.nanmean([c["dice_mean"] for cv in curves for c in cv
                                          if c["step"] == s]))) for s in steps]
    return out


def scratch_final(results: Sequence[Mapping[str, Any]], n: int) -> float | None:
    """Scratch's final test Dice at ``n`` labelled cases, mean over seeds (None: no run)."""
    scratch = [r["dice_mean"] for r in results if r["n_labelled"] == n and r["arm"] == "scratch"]
    return float(np.mean(scratch)) if scratch else None
