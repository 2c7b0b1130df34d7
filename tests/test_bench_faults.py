"""``glioseg bench faults``: a reduced run (preprocess killed at every moment) recovers
identically; an unknown stage is refused. The checks it rests on (a changed voxel, value or
weight, a missing file, a half-written file) are tested beside their modules:
test_bench_fault_compare, test_bench_fault_files, test_bench_fault_table."""

from pathlib import Path

from typer.testing import CliRunner

from glioseg.bench import faults as BF
from glioseg.cli import app
from glioseg.preprocess import cache as PC


def test_preprocess_killed_at_every_moment_recovers_identically(tmp_path: Path, capsys):
    results = BF.bench_faults(["preprocess"], BF.MOMENTS, work=tmp_path, show_progress=False)
    assert [r.moment for r in results] == list(BF.MOMENTS)
    # The early and middle moments are fractions of the uninterrupted run's wall time, which a
    # loaded or fast machine can miss (the bench then says "not killed"); the write moment is
    # triggered by the temporary file itself and must always be caught.
    killed = [r for r in results if r.killed]
    for r in killed:
        assert r.rerun_rc == 0, (r.moment, r.notes)
        assert r.half_written == [] and r.differences == [], r
        assert r.outcome == BF.IDENTICAL
    write = results[-1]
    assert write.killed and "writing ." in write.at_kill  # a temporary beside a whole case
    out = capsys.readouterr().out
    assert out.count(BF.IDENTICAL) >= len(killed)
    # what was compared: the recovered cache holds every case of the reference's
    got = tmp_path / "faults" / "preprocess-write"
    assert len(PC.open_cache(got)) == BF.CASES


def test_unknown_stage_is_refused():
    res = CliRunner().invoke(app, ["bench", "faults", "--stages", "inference"])
    assert res.exit_code == 1 and "inference" in res.output
