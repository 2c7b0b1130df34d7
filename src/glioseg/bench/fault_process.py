"""The kill harness of ``glioseg bench faults``: run a ``glioseg`` command as a subprocess to
its end (timing it and when its output folder got its first entry) or SIGKILL its process group
after a time or at a trigger (``write_trigger``: a temporary output beside an earlier whole
one). Every run has one thread (``OMP_NUM_THREADS=1``, ...) and appends to a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Kill:
    """What happened to one attempt at killing a run."""

    killed: bool
    at_s: float
    trigger: str
    returncode: int | None = None


def _env() -> dict[str, str]:
    # one thread everywhere: results that do not depend on the thread count or the load
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def glioseg_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "glioseg", *args]


def run_to_end(cmd: Sequence[str], log: Path, watch: Path | None = None,
               poll_s: float = 0.005) -> tuple[int, float, float | None]:
    """Run ``cmd`` to its end (output appended to ``log``): (exit status, wall seconds,
    seconds until the folder ``watch`` first held an entry, or None)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    first = None
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=_env())
        while proc.poll() is None:
            if watch is not None and first is None and _scan(watch):
                first = time.monotonic() - t0
            time.sleep(poll_s)
        wall = time.monotonic() - t0
    return proc.returncode, wall, first


def run_and_kill(cmd: Sequence[str], log: Path, *, after_s: float | None = None,
                 trigger: Callable[[], str | None] | None = None, poll_s: float = 0.001) -> Kill:
    """Start ``cmd`` in its own process group; SIGKILL the group after ``after_s`` seconds or
    as soon as ``trigger()`` returns a description, whichever comes first. ``killed`` is False
    when the run ended before (its exit status in ``returncode``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
        why = ""
        try:
            while proc.poll() is None:
                now = time.monotonic() - t0
                if after_s is not None and now >= after_s:
                    why = f"{now:.2f} s"
                    break
                if trigger is not None:
                    seen = trigger()
                    if seen:
                        why = f"{now:.2f} s, {seen}"
                        break
                time.sleep(poll_s)
            else:
                return Kill(False, time.monotonic() - t0, "", proc.returncode)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        finally:
            if proc.poll() is None:  # an exception in the loop: leave no process behind
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return Kill(proc.returncode == -signal.SIGKILL, time.monotonic() - t0, why,
                    proc.returncode)


def _temporary(name: str) -> bool:
    return name.startswith(".") and (".tmp" in name or ".old-" in name)


def _scan(folder: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(folder)]
    except OSError:
        return []


def write_trigger(stage: str, out: Path) -> Callable[[], str | None]:
    """The ``write`` moment of ``stage``: a temporary output beside an earlier whole one."""
    def trig() -> str | None:
        names = _scan(out)
        tmps = [n for n in names if _temporary(n)]
        if not tmps:
            return None
        if stage == "preprocess":
            cases = [n for n in names if not n.startswith(".") and (out / n).is_dir()]
            tmp = [t for t in tmps if ".tmp-" in t]
            return f"writing {tmp[0]} after {len(cases)} case(s)" if cases and tmp else None
        if stage == "train":
            tmp = [t for t in tmps if t.startswith(".last.pt.")]
            return f"writing {tmp[0]} over last.pt" if tmp and "last.pt" in names else None
        if stage == "predict":
            done = [n for n in names if n.endswith(".nii.gz") and not n.startswith(".")]
            tmp = [t for t in tmps if t.endswith(".nii.gz")]
            return f"writing {tmp[0]} after {len(done)} case(s)" if done and tmp else None
        return f"writing {tmps[0]}"
    return trig

