"""report/section_curves.py: the training curves the report draws from metrics.jsonl records."""

from __future__ import annotations

import io

from glioseg.report.section_curves import curves_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    import matplotlib.image as mpimg

    return mpimg.imread(io.BytesIO(png), format="png").shape[:2]


def test_curves_need_a_key_with_two_numeric_values() -> None:
    assert curves_png([]) is None
    assert curves_png([{"step": 1, "loss": 0.5}]) is None  # one value
    # bookkeeping keys (time, rank, ...) and booleans are not curves
    assert curves_png([{"step": s, "time": 10.0 * s, "rank": 0, "nan_seen": False}
                       for s in range(5)]) is None
    assert curves_png([{"step": s, "loss": "n/a"} for s in range(5)]) is None


def test_one_panel_per_group_of_keys() -> None:
    recs = [{"step": s, "loss": 1 / (1 + s), "val/loss": 2 / (1 + s), "lr": 1e-3 * (s + 1)}
            for s in range(6)]
    one = curves_png([{"step": r["step"], "loss": r["loss"]} for r in recs])
    two = curves_png(recs)  # the losses share a panel, the learning rate gets one
    three = curves_png([{**r, "val_dice/WT": 0.1 * r["step"]} for r in recs])
    assert one is not None and two is not None and three is not None
    assert one[:8] == two[:8] == three[:8] == PNG_MAGIC
    h1, w1 = _size(one)
    h2, w2 = _size(two)
    h3, w3 = _size(three)
    assert w1 < w2 < w3 and abs(h1 - h2) < 0.2 * h1  # panels side by side, one row


def test_glioseg_records_get_readable_titles_and_one_validation_is_a_marker() -> None:
    from glioseg.report.section_curves import curve_panels

    train = [{"step": s, "split": "train", "loss": 1.5 - 0.1 * s, "lr": 1e-3,
              "patches_per_s": 2.0, "data_wait": 0.01, "skipped_steps": 0, "elapsed_s": s}
             for s in (10, 20)]
    val = {"split": "val", "step": 20, "dice_WT": 0.6, "dice_TC": 0.3, "dice_ET": 0.2,
           "dice_mean": 0.37, "n_cases": 4, "elapsed_s": 20}
    xkey, panels = curve_panels([*train, val])
    assert xkey == "step"
    assert [t for t, _ in panels] == [
        "loss", "validation Dice", "learning rate", "throughput (patches/s)",
        "data wait (fraction of the time)", "skipped steps (non-finite gradient)"]
    assert panels[1][1] == {f"dice_{r}": ([20.0], [v]) for r, v in
                            (("WT", 0.6), ("TC", 0.3), ("ET", 0.2), ("mean", 0.37))}
    assert curves_png([*train, val])[:8] == PNG_MAGIC
    assert [t for t, _ in curve_panels([{"step": s, "val_dice/WT": 0.1 * s, "acc_1": s}
                                        for s in range(3)])[1]] == ["val dice", "acc"]
