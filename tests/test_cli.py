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


