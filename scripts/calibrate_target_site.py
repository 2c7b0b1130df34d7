"""Calibrate the synthetic target site: how much Dice a source-trained model loses on it.

Usage (after training a source model, e.g. 1,200 steps of the small preset on 20 source cases):

    .venv/bin/python scripts/calibrate_target_site.py --model RUN/best --out DIR \
        [--sites source,target,target-severe] [--cases 8] [--seed 11] [--spacing 2]

For each site profile it writes ``--cases`` fresh synthetic cases (seed ``--seed``, never seen
in training), predicts them as ``glioseg predict`` does (no post-processing), and prints per
site the mean legacy Dice per region, the relative loss of mean Dice against the ``source``
row, and the FLAIR contrast of edema (mean edema intensity over the brain's median). It writes
``DIR/calibration.json`` and ``DIR/calibration.png``. The figures of the shipped profiles are in
``docs/synthetic-sites.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def flair_edema_ratio(image: np.ndarray, labels: np.ndarray) -> float:
    """Mean FLAIR intensity of edema over the median FLAIR intensity of the brain."""
    flair = image[3]
    brain = flair > 0
    edema = labels == 2
    if not edema.any():
        return float("nan")
    return float(flair[edema].mean() / np.median(flair[brain]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sites", default="source,target,target-severe")
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--spacing", type=float, default=2.0)
    args = ap.parse_args()

    from glioseg.data.cases import discover, load_case
    from glioseg.data.labels import regions_from_labels
    from glioseg.data.synthetic import write_cohort
    from glioseg.evaluate.metrics import dice
    from glioseg.infer.predict import CasePredictor, PredictOptions, load_model

    out = Path(args.out)
    predictor = CasePredictor([load_model(args.model)], PredictOptions(min_size_mm3=(0, 0, 0)))
    rows = {}
    for site in args.sites.split(","):
        folder = out / "raw" / site
        write_cohort(folder, n_cases=args.cases, layout="brats2023", site=site,
                     seed=args.seed, spacing=args.spacing)
        scores, ratios = [], []
        for case in discover(folder):
            data = load_case(case)
            probs = predictor.oriented_probabilities(data.image, data.header.spacing,
                                                     data.header.affine)
            pred = regions_from_labels(predictor.labels(probs, None, data.header.spacing))
            ref = regions_from_labels(data.labels)
            scores.append([dice(pred[i].astype(bool), ref[i].astype(bool)) for i in range(3)])
            ratios.append(flair_edema_ratio(data.image, data.labels))
        s = np.array(scores)
        rows[site] = {"WT": float(s[:, 0].mean()), "TC": float(s[:, 1].mean()),
                      "ET": float(s[:, 2].mean()), "mean": float(s.mean()),
                      "flair_edema_ratio": float(np.nanmean(ratios)), "n_cases": len(s)}
    predictor.close()
    ref_mean = rows.get("source", {}).get("mean")
    print(f"{'site':<16} {'WT':>6} {'TC':>6} {'ET':>6} {'mean':>6} {'loss':>6} {'FLAIR ed/brain':>15}")
    for site, r in rows.items():
        r["relative_loss"] = (1 - r["mean"] / ref_mean) if ref_mean else None
        loss = f"{100 * r['relative_loss']:.0f}%" if r["relative_loss"] is not None else "-"
        print(f"{site:<16} {r['WT']:6.3f} {r['TC']:6.3f} {r['ET']:6.3f} {r['mean']:6.3f} "
              f"{loss:>6} {r['flair_edema_ratio']:15.2f}")
    (out / "calibration.json").write_text(json.dumps(
        {"model": str(args.model), "seed": args.seed, "cases": args.cases,
         "spacing": args.spacing, "sites": rows}, indent=2) + "\n")
    plot(rows, out / "calibration.png")


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    regions = ("WT", "TC", "ET", "mean")
    width = 0.8 / len(rows)
    for j, (site, r) in enumerate(rows.items()):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(regions))]
        ax.bar(xs, [r[k] for k in regions], width * 0.95, label=site)
    ax.set_xticks(range(len(regions)), regions)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice of a source-trained model")
    ax.axhspan(0, 0, color="none")
    if "source" in rows:
        for frac in (0.75, 0.85):
            ax.axhline(rows["source"]["mean"] * frac, color="k", ls=":", lw=0.8)
    ax.legend(fontsize=8)
    ax.set_title("Shift per site profile (dotted: 15% and 25% below the source mean)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
