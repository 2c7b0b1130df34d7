"""The layering contract: dependencies point one way along the pipeline.

Every ``glioseg`` import of every module under src/glioseg (read with ``ast``: top-level and
function-level imports alike, since a lazy import is a dependency too) is checked against:

1. a module imports only modules of its own layer or lower ones (``LAYERS``, lowest first);
2. nothing imports ``cli`` (but ``__main__`` and the modules of the ``cli`` package itself);
3. ``evaluate`` and ``train`` never import ``report``, and ``report`` never imports ``train``
   (the report reads files, not trainers);
4. a module at the top of the package is a base module (importing only base modules) or an
   entry point: what only one stage uses lives in that stage's folder.

Known violations are listed in ``ALLOWED`` with the reason and the issue that removes them; an
entry that no longer matches an import fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "glioseg"

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("glioseg", "errors", "io_atomic", "metrics_log", "overlap", "records", "runinfo"),  # base
    ("data",),
    ("preprocess",),
    ("model",),
    ("train", "transfer"),  # train/config.py describes data, model, train, transfer
    ("infer",),
    ("evaluate",),
    ("analysis",),
    ("report",),
    ("bench", "demo", "study", "experiments", "workflows"),  # run many stages
    ("cli", "__main__"),
]
BASE = set(LAYERS[0])
ENTRY_POINTS = {"cli", "__main__", "demo", "study"}
FORBIDDEN = [("evaluate", "report"), ("train", "report"), ("report", "train")]

# (importer, imported) -> why it is still there. Each is a debt of issue 14.
ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Dotted names relative to the package (``glioseg`` for its ``__init__``) -> file."""
    mods = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts) or "glioseg"] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from glioseg.x import y`` is ``x.y`` when ``y``
    is a module, else ``x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "glioseg"]
            found |= {n.removeprefix("glioseg.") if n != "glioseg" else n for n in names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            if node.module.split(".")[0] != "glioseg":
                continue
            base = node.module.removeprefix("glioseg").lstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}" if base else alias.name
                found.add(full if full in mods else base or "glioseg")
    return found


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module}: in no layer; add it to LAYERS"
    return best


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(mods: dict[str, Path] | None = None) -> dict[tuple[str, str], str]:
    mods = _modules() if mods is None else mods
    found = {}
    for name, path in mods.items():
        for dep in _imports(path, mods) - {name}:
            # ``python -m glioseg`` runs the CLI; the CLI's modules import each other
            if _under(dep, "cli") and name != "__main__" and not _under(name, "cli"):
                found[(name, dep)] = "imports cli"
            elif any(_under(name, a) and _under(dep, b) for a, b in FORBIDDEN):
                found[(name, dep)] = "forbidden pair"
            elif _layer(dep) > _layer(name):
                found[(name, dep)] = "imports a higher layer"
            elif "." not in name and name not in BASE | ENTRY_POINTS and dep not in BASE:
                found[(name, dep)] = "top-level module that is not a base module"
    return found


def test_every_module_has_a_layer():
    for name in _modules():
        _layer(name)


def test_imports_point_down_the_pipeline():
    new = {k: v for k, v in violations().items() if k not in ALLOWED}
    assert not new, "layering violations (see the module docstring):\n" + "\n".join(
        f"  {a} -> {b}: {why}" for (a, b), why in sorted(new.items()))


def test_allow_list_has_no_stale_entry():
    stale = sorted(set(ALLOWED) - set(violations()))
    assert not stale, f"fixed, remove from ALLOWED: {stale}"


def test_the_checker_sees_lazy_and_aliased_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from glioseg.train import config as C\n"
                   "def f():\n    from glioseg.report.html import read_jsonl\n"
                   "    import glioseg.cli\n")
    mods = {"train.config": src, "report.html": src, "cli": src}
    assert _imports(src, mods) == {"train.config", "report.html", "cli"}


def test_only_the_cli_package_and_main_import_the_cli(tmp_path):
    """The CLI's modules import each other (its app, its shared options); anything else that
    imports one of them is a violation."""
    files = {"cli.common": "", "cli.train": "from glioseg.cli.common import app\n",
             "__main__": "from glioseg.cli import app\n",
             "demo": "from glioseg.cli.common import fail\n"}
    mods = {}
    for name, text in files.items():
        mods[name] = tmp_path / f"{name}.py"
        mods[name].write_text(text)
    assert violations(mods) == {("demo", "cli.common"): "imports cli"}
