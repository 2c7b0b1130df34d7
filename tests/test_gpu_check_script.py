"""``scripts/gpu_check.sh`` runs once, on a lent GPU machine with minutes of device time and no
second try: every ``glioseg`` command in it must exist with the options it passes, each
``--set`` must name a real config key with a value of the right type, and the script must be
valid bash. Checked here without running anything (CI has no GPU)."""

import contextlib
import io
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer

from glioseg.cli import app
from glioseg.train.config import load_config
from glioseg.train.config_schema import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
# what the script's shell expansions give on the GPU machine (the step rate: read off the
# bench train table it printed)
SAMPLES = {'${rate:+--step-rate "$rate"}': "--step-rate 12.5", "$model": "$W/run/best"}


def _commands() -> list[list[str]]:
    """The argument lists of the script's ``$G ...`` calls (continuation lines joined, the
    pipes and redirections after the call cut off, shell variables left as words)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    for shell, sample in SAMPLES.items():
        text = text.replace(shell, sample)
    calls = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or "$G " not in line:
            continue
        words = shlex.split(line.split("$G ", 1)[1], comments=True)
        cut = next((i for i, w in enumerate(words) if w in ("|", ">", "2>&1", ";", "&&")
                    or w.startswith(">")), len(words))
        calls.append(words[:cut])
    return calls


def _parse(args: list[str]) -> tuple[list[str], dict]:
    """Parse ``args`` down the command tree as click would, without invoking anything;
    returns the command path and the leaf command's parameters."""
    cmd = typer.main.get_command(app)
    path: list[str] = []
    ctx = cmd.make_context("glioseg", list(args), resilient_parsing=False)
    while hasattr(cmd, "resolve_command"):  # a group of commands
        first = getattr(ctx, "_protected_args", None)  # Typer's click; click < 9 names it
        rest = [*(ctx.protected_args if first is None else first), *ctx.args]
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"no command {name!r} in {path}"
        path.append(name)
        cmd = sub
        ctx = sub.make_context(name, rest, parent=ctx)
    return path, ctx.params


def test_script_is_valid_bash():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_timeouts_fit_one_device_command():
    """The device tool stops a command at 600 s; the steps' timeouts leave time for the
    install and the copies."""
    limits = [int(t) for t in re.findall(r"\btimeout (\d+) ", SCRIPT.read_text())]
    assert len(limits) == len(_commands())  # every glioseg call is bounded
    assert sum(limits) <= 570, limits


def test_the_step_rate_is_read_off_the_bench_train_table():
    """``bench data`` is given the step rate ``bench train`` printed (the synthetic-batch row's
    steps/s), read by the script's own awk line from a table as ``bench train`` prints it."""
    from glioseg.bench.train import _print_head, _print_row

    row = {"world_size": 1, "threads": 16, "device": "cuda:0", "amp": "fp16",
           "source": "synthetic", "steps_per_s": 13.456, "patches_per_s": 26.9,
           "voxels_per_s": 5.6e7, "data_wait": 0.01, "cpu_s_per_step": 0.05,
           "peak_rss_mb": 3000.0, "cuda_max_allocated_mb": 4000.0, "channels_last": False,
           "compile": True}
    with contextlib.redirect_stdout(io.StringIO()) as table:
        _print_head()
        _print_row({**row, "source": "loader", "steps_per_s": 9.0})
        _print_row(row)
    awk = next(line for line in SCRIPT.read_text().splitlines() if line.startswith("rate="))
    program = re.search(r"awk '([^']+)'", awk).group(1)
    out = subprocess.run(["awk", program], input=table.getvalue(), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "13.456"


def test_script_calls_the_commands_it_means_to():
    parsed = [_parse(args) for args in _commands()]
    assert [" ".join(path) for path, _ in parsed] == [
        "synth", "preprocess", "bench train", "bench data", "train", "bench predict"]
    train_params = parsed[4][1]
    assert "train.steps=200" in train_params["set_"]  # the overrides below are really read


@pytest.mark.parametrize("args", _commands(), ids=lambda a: " ".join(a[:2]))
def test_every_call_parses_and_its_overrides_name_real_keys(args):
    path, params = _parse(args)  # a misspelt option or a bad value raises a click error
    overrides = list(params.get("set_") or ())
    if overrides:
        load_config(params.get("config"), overrides)  # ConfigError on a wrong key or type


def test_a_misspelt_option_is_caught():
    """The checks above can fail: an option the command lacks, or a value of the wrong type,
    is refused when parsed; so is an override of a key the config lacks."""
    with pytest.raises(Exception, match="--batches"):
        _parse(["bench", "predict", "--batches", "4"])
    with pytest.raises(Exception, match="integer"):
        _parse(["bench", "predict", "--batch", "four"])
    with pytest.raises(ConfigError, match="stepz"):
        load_config("full", ["train.stepz=3"])


def test_the_gpu_wheels_are_the_pinned_versions():
    """``scripts/gpu_prepare.sh`` downloads each package the GPU image lacks at the version
    ``scripts/constraints.txt`` pins (the one the tests ran with): each has a pin."""
    from packaging.utils import canonicalize_name

    prepare = SCRIPT.with_name("gpu_prepare.sh").read_text()
    names = re.search(r"^packages=\(([^)]*)\)", prepare, re.M).group(1).split()
    pins = {canonicalize_name(line.split("==")[0])
            for line in SCRIPT.with_name("constraints.txt").read_text().splitlines()
            if "==" in line}
    assert "monai" in names and "dynamic-network-architectures" in names
    assert [n for n in names if canonicalize_name(n) not in pins] == []
