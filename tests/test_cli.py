"""The command line: ``--help`` is instant because the heavy libraries are imported inside the
commands, never when the CLI module loads."""

import subprocess
import sys

HEAVY = ("torch", "numpy", "nibabel", "scipy", "matplotlib", "monai", "onnxruntime", "openvino")


def test_cli_module_imports_no_heavy_library():
    code = ("import sys, glioseg.cli; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "", f"imported at CLI load: {out.stdout.strip()}"


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "glioseg", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for cmd in ("inspect", "synth", "show", "preprocess", "train", "finetune", "pretrain",
                "predict", "export", "evaluate", "shift", "report", "demo", "bench", "card",
                "plot", "study", "import-checkpoint"):
        assert cmd in out.stdout, cmd


def test_multi_node_launch_has_one_writer_of_launch_yaml(tmp_path, monkeypatch):
    """``train --nnodes 2``: node 0's launcher writes OUT/launch.yaml (the config every
    worker reads); the launcher of node 1 does not write it, yet runs its workers on it."""
    import pytest
    import typer
    from test_train import _tiny_cache

    from glioseg.cli.train import _launch_training

    cache = _tiny_cache(tmp_path / "cache", n=1)
    commands = []
    monkeypatch.setattr(subprocess, "run",
                        lambda cmd, **kw: commands.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    out = tmp_path / "out"
    for node in (1, 0):
        with pytest.raises(typer.Exit):
            _launch_training(out, cache, "small", ["optim.lr=0.002"], nproc=2, nnodes=2,
                             node_rank=node, rdzv_endpoint="node0:29500")
        if node == 1:
            assert not (out / "launch.yaml").exists()
    assert (out / "launch.yaml").is_file()
    assert all(cmd[cmd.index("--config") + 1] == str(out / "launch.yaml") for cmd in commands)
    assert ["--node-rank=1" in cmd for cmd in commands] == [True, False]
    from glioseg.train import config as C

    assert C.load_config(out / "launch.yaml").optim.lr == 0.002
