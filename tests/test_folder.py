"""``glioseg.infer.folder.predict_dir`` with reading and writing beside the model's work: the
same files, byte for byte, as one case after the other; resume and failures as before; cases
per minute reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_predict import _cohort, _corrupt, save_pointwise

from glioseg.infer.folder import PredictSummary, predict_dir
from glioseg.infer.predict import PredictOptions


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pointwise(tmp_path_factory.mktemp("model") / "ckpt", bias=(0.5, -0.3, 0.2))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_overlapped_predict_writes_the_same_bytes_as_sequential(ckpt: Path,
                                                                tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data", n=4)
    _corrupt(tmp_path / "data", ids[2])
    out = {}
    for prefetch in (0, 1, 2):
        opts = PredictOptions(probabilities=True, prefetch=prefetch, min_component=2)
        summary = predict_dir([ckpt], tmp_path / "data", tmp_path / f"out{prefetch}", opts,
                              progress=False)
        assert summary.predicted == [ids[0], ids[1], ids[3]] and list(summary.failed) == [ids[2]]
        assert ids[2] in summary.failed[ids[2]]
        out[prefetch] = _files(tmp_path / f"out{prefetch}")
    assert len(out[0]) == 6  # labels and probabilities of three cases
    assert out[1] == out[0] and out[2] == out[0]


def test_resume_after_an_overlapped_run(ckpt: Path, tmp_path: Path) -> None:
    ids = _cohort(tmp_path / "data", n=3)
    first = predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=False)
    (tmp_path / "out" / f"{ids[1]}.nii.gz").unlink()
    again = predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=False)
    assert first.predicted == ids and again.predicted == [ids[1]]
    assert again.skipped == [ids[0], ids[2]]


def test_cases_per_minute_printed_and_recorded(ckpt: Path, tmp_path: Path, capsys) -> None:
    ids = _cohort(tmp_path / "data", n=2)
    summary = predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=True)
    rate = summary.cases_per_minute
    assert rate == pytest.approx(60 * len(ids) / summary.wall_seconds)
    printed = capsys.readouterr().out  # the line under the bar
    assert f"{len(ids)} cases in " in printed and f": {rate:.1f} cases per minute" in printed
    timings = (tmp_path / "out" / "timings.json").read_text()
    assert timings.count("cases per minute") == 1
    assert PredictSummary().cases_per_minute is None
    # a re-run with every case done predicts nothing and keeps the records of the real run
    again = predict_dir([ckpt], tmp_path / "data", tmp_path / "out", progress=False)
    assert again.skipped == ids and not again.predicted
    assert (tmp_path / "out" / "timings.json").read_text() == timings


def test_auto_precision_is_recorded_resolved(ckpt: Path, tmp_path: Path) -> None:
    _cohort(tmp_path / "data", n=1)
    predict_dir([ckpt], tmp_path / "data", tmp_path / "out", PredictOptions(dtype="auto"),
                progress=False)
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["options"]["dtype"] == PredictOptions(dtype="auto").resolved().dtype
    # a resume with auto again is the same settings, not a refusal
    again = predict_dir([ckpt], tmp_path / "data", tmp_path / "out",
                        PredictOptions(dtype="auto"), progress=False)
    assert again.skipped and not again.predicted
