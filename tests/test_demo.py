"""``glioseg demo``: the quick plan end to end (and its resume), and the pure helpers."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from glioseg import demo as D
from glioseg.cli import app


def _table_cells(page: str, label: str) -> list[str]:
    """The cells of the HTML table row whose first cell is ``label``."""
    m = re.search(r"<tr>\s*<td>" + re.escape(label) + r"</td>(.*?)</tr>", page, re.S)
    assert m, f"no table row {label!r} in the report"
    return re.findall(r"<td>(.*?)</td>", m.group(1))


def test_quick_demo_end_to_end_then_resumes(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    runner = CliRunner()
    res = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for i, stage in enumerate(D.STAGES, 1):
        assert f"[{i}/6] {stage}:" in res.output
    page = (out / "report.html").read_text()
    assert "src=\"data:image/png;base64," in page and "<img src=\"http" not in page
    # The Dice table has both arms (and the source model); each cell is the mean over the
    # test cases of per_case.csv's Dice, recomputed here with numpy.
    for arm in D.ARMS:
        with (out / "eval" / arm / "per_case.csv").open(newline="") as fh:
            cases = list(csv.DictReader(fh))
        assert len(cases) == 2
        cells = _table_cells(page, D.ARM_LABELS[arm])
        means = [float(np.mean([float(c[f"{r}_dice"]) for c in cases])) for r in ("WT", "TC",
                                                                                  "ET")]
        shown = [float(cell.split()[0]) for cell in cells]
        assert shown[:3] == pytest.approx(means, abs=6e-4)
        assert shown[3] == pytest.approx(np.mean(means), abs=6e-4)
    assert "Stage 2: domain shift" in page and "MMD permutation tests" in page
    # .report.json leaves out the data, the predictions and the duplicated model cards
    assert 'id="s-runs-source-best"' in page
    for left_out in ("s-data", "s-predictions", "s-runs-scratch-best", "s-runs-transfer-last"):
        assert f'id="{left_out}' not in page, left_out
    for name in ("dice.png", "curves.png", "overlay_scratch.png", "overlay_transfer.png",
                 "summary.md", "timings.json", "hardware.json"):
        assert (out / name).is_file(), name
    assert (out / "runs" / "transfer" / "load_report.txt").is_file()
    assert not (out / "runs" / "scratch" / "load_report.txt").exists()
    # A re-run skips every stage and only prints the table again.
    t0 = time.perf_counter()
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert time.perf_counter() - t0 < 5.0
    assert again.output.count("skipped") >= 6 and "ran nothing" in again.output
    assert "| transfer (fine-tuned from source) |" in again.output
    # Another plan in the same folder is refused before anything runs.
    other = runner.invoke(app, ["demo", "--out", str(out)])
    assert other.exit_code == 1 and "another plan" in other.output


def _summary(wt: list[float], tc: list[float], et: list[float]) -> dict:
    def stats(v: list[float]) -> dict:
        return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1
                else None}

    return {"n_cases": len(wt), "metrics": {"dice": {"WT": stats(wt), "TC": stats(tc),
                                                     "ET": stats(et)}}}


def test_dice_rows_table_and_verdict_by_hand() -> None:
    rows = D.dice_rows({
        "scratch": _summary([0.5, 0.7], [0.2, 0.4], [0.1, 0.3]),
        "transfer": _summary([0.8, 0.9], [0.6, 0.6], [0.2, 0.2]),
    })
    assert rows[0]["WT"] == pytest.approx(0.6)
    assert rows[0]["mean"] == pytest.approx((0.6 + 0.3 + 0.2) / 3)
    assert rows[1]["mean"] == pytest.approx((0.85 + 0.6 + 0.2) / 3)
    assert rows[0]["WT_sd"] == pytest.approx(0.1414213, abs=1e-6)
    table = D.table_markdown(rows)
    assert "| scratch (target cases only) | 0.600 ± 0.141 | 0.300 ± 0.141 | 0.200 ± 0.141 | " \
           "0.367 |" in table
    text = D.verdict(rows, n_train=4, steps=100)
    assert "transfer beats scratch" in text and "(+0.183)" in text
    assert "2 of 3 regions (WT, TC)" in text  # ET ties: not a win
    worse = D.verdict(list(reversed([{**rows[0], "model": "transfer"},
                                     {**rows[1], "model": "scratch"}])), 4, 100)
    assert "does not beat" in worse and "0 of 3" in worse
    one = D.dice_rows({"x": _summary([0.5], [0.5], [0.5])})
    assert "| x | 0.500 | 0.500 | 0.500 | 0.500 |" in D.table_markdown(one)


def test_report_spec_skips_orders_and_titles_sections(tmp_path: Path) -> None:
    from glioseg.report.html import build_report

    for name in ("b_first", "a_second", "hidden", "c_third"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.md").write_text(f"# {name}\n\ntext of {name}\n")
    (tmp_path / "c_third" / "skip_me.csv").write_text("a,b\n1,2\n")
    (tmp_path / ".report.json").write_text(json.dumps({
        "skip": ["hidden", "c_*/skip_me.csv"], "order": ["b_first", "a_second"],
        "titles": {"b_first": "The first section"}}))
    _, sections, _ = build_report(tmp_path)
    titles = [s.title for s in sections]
    assert titles == ["The first section", "a_second", "c_third", "Environment"]
    third = sections[2]
    assert all(b.title != "skip_me.csv (skip_me.csv)" for b in third.blocks)
    (tmp_path / ".report.json").write_text("not json")
    _, sections, _ = build_report(tmp_path)  # an unreadable spec is ignored
    assert [s.title for s in sections][:4] == ["a_second", "b_first", "c_third", "hidden"]
