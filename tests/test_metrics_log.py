"""metrics_log.py: the one writer and reader of a run's ``metrics.jsonl``: a torn last line
(a run killed mid-write) is dropped, a bad earlier line is an error for the trainer and
skipped by the readers of reports; a resumed log continues from the checkpoint's step."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from glioseg.metrics_log import METRICS_NAME, MetricsLog, parse_metrics, read_metrics
from glioseg.records import RecordsError


def test_metrics_log_survives_a_torn_last_line(tmp_path: Path):
    """SIGKILL during a write leaves half a line: resume drops it and what is after the step."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    assert [r["step"] for r in parse_metrics(path)] == [1, 2]
    log = MetricsLog(path, resume_step=1)
    log.write({"step": 2, "loss": 0.8})
    log.close()
    assert parse_metrics(path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.8}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(RecordsError, match="line 2"):
        parse_metrics(path)


def test_the_trainer_reports_a_bad_line_as_a_train_error(tmp_path: Path):
    """Resuming a log with a bad line before its last: the run cannot resume (``TrainError``,
    naming the file and the line), and the log is left as it was."""
    from glioseg.train import distributed as D
    from glioseg.train.errors import TrainError
    from glioseg.train.fit import Logger

    text = '{"step": 1}\nnot json\n{"step": 3}\n'
    (tmp_path / METRICS_NAME).write_text(text)
    with pytest.raises(TrainError, match=rf"{METRICS_NAME}: line 2"):
        Logger(tmp_path, D.DistInfo(), resume_step=1)
    assert (tmp_path / METRICS_NAME).read_text() == text


def test_lenient_reading_skips_every_bad_line(tmp_path: Path):
    path = tmp_path / METRICS_NAME
    path.write_bytes(b'{"step": 1}\nnot json\n[1, 2]\n\n{"step": 2, "x": "\xff"}\n{"step": 3, "l')
    assert [r["step"] for r in parse_metrics(path, strict=False)] == [1, 2]
    assert [r["step"] for r in read_metrics(tmp_path, strict=False)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(RecordsError, match="line 2"):
        read_metrics(tmp_path)


def test_read_metrics_of_a_folder_without_a_log(tmp_path: Path):
    for strict in (True, False):
        with pytest.raises(RecordsError, match="no metrics.jsonl"):
            read_metrics(tmp_path, strict=strict)


def test_a_fresh_log_replaces_an_old_one_and_flushes_each_record(tmp_path: Path):
    path = tmp_path / METRICS_NAME
    path.write_text('{"step": 9}\n')
    log = MetricsLog(path, resume_step=None)
    log.write({"step": 1, "split": "train", "loss": 0.5})
    assert json.loads(path.read_text()) == {"step": 1, "split": "train", "loss": 0.5}  # flushed
    log.write({"step": 1, "split": "val", "dice_WT": 0.25})
    log.close()
    assert [r["split"] for r in read_metrics(tmp_path)] == ["train", "val"]


def test_a_resumed_log_keeps_the_records_up_to_the_step(tmp_path: Path):
    path = tmp_path / METRICS_NAME
    path.write_text("".join(json.dumps({"step": s, "split": sp}) + "\n"
                            for s in (2, 4, 6) for sp in ("train", "val")))
    MetricsLog(path, resume_step=4).close()
    assert [(r["step"], r["split"]) for r in parse_metrics(path)] == [
        (2, "train"), (2, "val"), (4, "train"), (4, "val")]
    MetricsLog(tmp_path / "new.jsonl", resume_step=4).close()  # no log yet: a new one
    assert (tmp_path / "new.jsonl").read_text() == ""


def test_reading_the_log_imports_no_torch():
    code = ("import sys, glioseg.metrics_log, glioseg.report.curves; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"
