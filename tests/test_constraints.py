"""scripts/constraints.txt pins every package scripts/setup.sh installs (reproducible installs)."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not re.search(r"[<>=!~,;\s]", version), (
            f"{line!r}: every constraint is an exact pin NAME==VERSION")
        pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["test"]]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    reqs += [Requirement(r) for r in re.findall(r'--no-deps "([^"]+)"', setup)]
    return reqs


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    assert pins.get("torch") == "2.13.0"
    for req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject/setup.sh) has no pin in {CONSTRAINTS.name}"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {req}")


def test_the_pins_are_closed_under_dependencies() -> None:
    """Every dependency of a pinned package (as installed here) is pinned too, so pip has
    nothing left to choose. A package installed at another version than its pin (a CUDA
    build of torch on a GPU machine) is skipped: its metadata is not the pinned release's."""
    pins = _pins()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    no_deps = {canonicalize_name(Requirement(r).name)
               for r in re.findall(r'--no-deps "([^"]+)"', setup)}  # installed without them
    missing = []
    for name in set(pins) - no_deps:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        if Version(dist.version).public != Version(pins[name]).public:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in pins:
                missing.append(f"{req.name} (needed by {name})")
    assert not missing, f"not pinned in {CONSTRAINTS.name}: {sorted(set(missing))}"


def test_setup_installs_everything_through_the_constraints() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines()
                if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c scripts/constraints.txt" in line for line in installs), installs
    assert (ROOT / "scripts" / "lock.sh").is_file()
