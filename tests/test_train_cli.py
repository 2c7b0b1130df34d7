"""``glioseg train`` as the user sees it: Ctrl-C's one line and exit status 130, and a bad
``--set`` named in the one red line."""

from pathlib import Path

from typer.testing import CliRunner

from glioseg.cli import app
from glioseg.train.errors import interrupted


def test_ctrl_c_prints_where_the_run_stopped_and_exits_130(tmp_path: Path, monkeypatch):
    run = tmp_path / "run"

    def stopped(*args, **kwargs):
        raise interrupted(run, 10, (8, "last.pt"))

    monkeypatch.setattr("glioseg.train.launch.launch_training", stopped)
    res = CliRunner().invoke(app, ["train", "--out", str(run), "--data", str(tmp_path)])
    assert res.exit_code == 130
    assert res.output.strip() == (f"interrupted at step 10; last checkpoint: step 8 "
                                  f"({run / 'last.pt'}); continue with: glioseg train --out "
                                  f"{run} --resume")


def test_a_bad_set_is_named_and_leaves_nothing(tmp_path: Path):
    from test_fit import _tiny_cache

    cache = _tiny_cache(tmp_path / "cache", n=1)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(cache), "--out", str(run),
                                   "--set", "train.stepz=20"])
    assert res.exit_code == 1
    assert res.output.startswith("--set train.stepz=20: unknown key train.stepz; valid keys")
    assert not run.exists()
