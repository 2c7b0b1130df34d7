"""The experiment runner (``glioseg.workflows.runner``): cohorts as disjoint ranges, the
run-if-not-done markers, the plan check of a folder, validation records of ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glioseg.errors import GliosegError
from glioseg.workflows.runner import (
    DICE_KEYS,
    check_plan,
    cohort_specs,
    read_marker,
    read_val_records,
    run_if_not_done,
    stage_marker,
    timed,
    val_records,
)


def test_cohort_specs_cut_one_target_stream_into_consecutive_ranges() -> None:
    specs = cohort_specs(7, 5, [("a", 3), ("b", 2), ("c", 4)])
    assert specs["source"] == ("source", 7, 0, 5)
    assert [tuple(specs[k]) for k in "abc"] == [("target", 8, 0, 3), ("target", 8, 3, 2),
                                                ("target", 8, 5, 4)]
    assert specs["b"].start == 3 and specs["b"].n == 2


def test_run_if_not_done_runs_once_then_reads_the_marker(tmp_path: Path) -> None:
    marker = tmp_path / "runs" / "x" / "result.json"
    calls = []

    def work() -> dict:
        calls.append(1)
        return {"score": 0.5, "where": tmp_path}  # a path is recorded as text

    assert run_if_not_done(marker, work) == ({"score": 0.5, "where": tmp_path}, True)
    assert json.loads(marker.read_text()) == {"score": 0.5, "where": str(tmp_path)}
    assert run_if_not_done(marker, work) == ({"score": 0.5, "where": str(tmp_path)}, False)
    assert len(calls) == 1

    def refuse(done: dict) -> None:
        raise GliosegError(f"made with {done['score']}")

    with pytest.raises(GliosegError, match="made with 0.5"):
        run_if_not_done(marker, work, refuse)
    assert len(calls) == 1


def test_a_failed_work_leaves_no_marker_and_a_torn_one_is_not_done(tmp_path: Path) -> None:
    marker = stage_marker(tmp_path, "data")
    assert marker == tmp_path / ".stages" / "data.json"

    def boom() -> dict:
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError):
        run_if_not_done(marker, boom)
    assert not marker.exists() and read_marker(marker) is None
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text('{"seconds": 1')  # torn: the stage runs again
    assert read_marker(marker) is None
    doc, ran = run_if_not_done(marker, timed(lambda: None))
    assert ran and set(doc) == {"seconds"} and doc["seconds"] >= 0.0


def test_check_plan_records_then_refuses_another(tmp_path: Path) -> None:
    check_plan(tmp_path, {"name": "quick", "steps": 4}, GliosegError)
    assert json.loads((tmp_path / ".stages" / "plan.json").read_text())["steps"] == 4
    check_plan(tmp_path, {"name": "quick", "steps": 4}, GliosegError)  # the same: accepted
    with pytest.raises(GliosegError, match=r"another plan \(quick, this is default\)"):
        check_plan(tmp_path, {"name": "default", "steps": 100}, GliosegError)


def test_val_records_skip_train_records_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([
        json.dumps({"step": 10, "split": "train", "loss": 1.0}),
        json.dumps({"step": 10, "split": "val", "dice_WT": 0.5, "dice_TC": 0.4, "dice_ET": 0.3,
                    "dice_mean": 0.4}),
        "{half a record",
    ]) + "\n")
    assert read_val_records(path) == [{"step": 10.0, "dice_WT": 0.5, "dice_TC": 0.4,
                                       "dice_ET": 0.3, "dice_mean": 0.4}]
    assert read_val_records(tmp_path / "missing.jsonl") == []


def test_val_curve_keeps_validation_records() -> None:
    records = [{"step": 10, "split": "train", "loss": 1.0, "elapsed_s": 1.0},
               {"step": 10, "split": "val", "dice_WT": 0.5, "dice_TC": 0.4, "dice_ET": 0.3,
                "dice_mean": 0.4, "n_cases": 2, "elapsed_s": 1.5}]
    assert val_records(records, ("step", "elapsed_s", *DICE_KEYS)) == [
        {"step": 10.0, "elapsed_s": 1.5, "dice_WT": 0.5, "dice_TC": 0.4, "dice_ET": 0.3,
         "dice_mean": 0.4}]
