"""The report's Environment section: the platform of the machine rendering the report (the
run's own machine is its ``hardware.json``, rendered with the folder's content). CPU model and
memory come from ``glioseg.runinfo``, the reader ``hardware.json`` uses too."""

from __future__ import annotations

import os
import platform
from typing import Any

from glioseg import runinfo
from glioseg.report.blocks import Block, kv_table


def environment_blocks() -> list[Block]:
    """Platform of the machine rendering the report (the run's own is ``hardware.json``)."""
    from importlib import metadata

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu count": os.cpu_count(),
    }
    model, _ = runinfo.cpuinfo()
    memory = runinfo.memory_gib()
    info["cpu"] = model or platform.processor() or "unknown"  # as hardware.json says it
    if memory is not None:
        info["memory (GiB)"] = memory
    for pkg in ("glioseg", "torch", "numpy", "monai"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return [Block("table", kv_table(info).data,
                  "Machine that rendered this report")]

