"""Where a run ran and how long it took: ``hardware.json`` and ``timings.json`` in its folder.

Written at the end of ``glioseg train`` / ``finetune`` / ``pretrain`` (rank 0, by
``glioseg.train.fit``), ``glioseg predict`` (``glioseg.infer.predict.predict_dir``),
``glioseg evaluate`` and ``glioseg demo``; ``glioseg report`` renders both for any folder.

- ``hardware.json``: the machine (``hardware``): OS, CPU model, physical cores, logical CPUs,
  CPUs this process may use, memory, Python, torch version and threads, GPU.
- ``timings.json``: one entry per command that wrote into the folder, ``{command: {"wall
  seconds": ..., "finished": UTC time, ...}}``; a later call of the same command (a resumed
  run) replaces its entry, another command's entry is kept (``predict`` and ``evaluate``
  writing into one folder).

Both are written atomically (``glioseg.io_atomic``). This module sits beside ``io_atomic``
rather than in ``report/`` because training, prediction and evaluation, which come before the
report in the pipeline, call it. Its ``/proc/cpuinfo`` and ``/proc/meminfo`` readers
(``cpuinfo``, ``memory_gib``) are also the report's, for the machine rendering it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from typing import Any

from glioseg import io_atomic
from glioseg.records import read_json_object

TIMINGS = "timings.json"
HARDWARE = "hardware.json"


CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")


def parse_cpuinfo(text: str) -> tuple[str | None, int | None]:
    """(CPU model name, physical cores) of a ``/proc/cpuinfo`` text; None where it does not
    say. The model is the first processor's ``model name``; physical cores are the distinct
    (``physical id``, ``core id``) pairs (hyper-threads share a core id; a missing
    ``physical id`` counts as socket 0)."""
    model, cores = None, set()
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        model = model or fields.get("model name")
        if "core id" in fields:
            cores.add((fields.get("physical id", "0"), fields["core id"]))
    return model, len(cores) or None


def cpuinfo(path: Path | None = None) -> tuple[str | None, int | None]:
    """``parse_cpuinfo`` of ``path`` (default ``CPUINFO``, this machine's); (None, None) where
    it is not readable (not Linux)."""
    try:
        return parse_cpuinfo((path or CPUINFO).read_text())
    except OSError:
        return None, None


def memory_gib(path: Path | None = None) -> float | None:
    """Total memory in GiB (one decimal) from the first line of ``path`` (default
    ``MEMINFO``, this machine's); None where it is not readable."""
    try:
        first = (path or MEMINFO).read_text().split("\n", 1)[0].split()
        return round(int(first[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        return None


def hardware() -> dict[str, Any]:
    """The machine this process runs on (``hardware.json``)."""
    import torch

    model, physical = cpuinfo()
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {
        "os": platform.platform(),
        "cpu": model or platform.processor() or "unknown",
        "cpu cores (physical)": physical,
        "logical cpus": os.cpu_count(),
        "cpus usable by this process": usable,
        "memory (GiB)": memory_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "gpu": ", ".join(gpus) if gpus else "none",
    }


def record_run(folder: str | Path, command: str, seconds: float, **extra: Any) -> None:
    """Write ``folder/hardware.json`` and this command's entry of ``folder/timings.json``.

    Args:
        folder: the run folder (created if missing).
        command: ``train``, ``predict``, ... (the key of the entry).
        seconds: wall seconds of this call.
        extra: more figures of the entry (cases, steps, ...), JSON values.
    """
    folder = Path(folder)
    doc: dict[str, Any] = read_json_object(folder / TIMINGS) or {}
    doc[command] = {"wall seconds": round(float(seconds), 3),
                    "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                    **extra}
    io_atomic.write_json(folder / HARDWARE, hardware())
    io_atomic.write_json(folder / TIMINGS, doc)


def training_command(cfg: Any) -> str:
    """``pretrain`` (``train.task=genesis``), ``finetune`` (``transfer.init_from`` set) or
    ``train``: the command a training config stands for."""
    if getattr(cfg.train, "task", "segment") == "genesis":
        return "pretrain"
    return "finetune" if getattr(getattr(cfg, "transfer", None), "init_from", "") else "train"


def record_training(run_dir: str | Path, cfg: Any, seconds: float,
                    summary: dict[str, Any]) -> None:
    """``record_run`` for a training run (rank 0 only; the caller checks)."""
    record_run(run_dir, training_command(cfg), seconds, steps=summary.get("step"))
