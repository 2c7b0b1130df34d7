"""``glioseg bench faults``: SIGKILL each stage at several moments, re-run it, compare.

Every stage (``preprocess``, ``train``, ``predict``, ``evaluate``) runs as a real subprocess of
the ``glioseg`` command on a tiny synthetic cohort the bench writes itself (4 mm, 3 cases,
BraTS 2023 layout; a few training steps on 32^3 patches). Each stage first runs uninterrupted
(its wall time measured: the reference), then once per moment it is started again in a fresh
folder and killed with SIGKILL (its whole process group):

- ``early``: at 25% of the reference wall time (often still importing: nothing written yet);
- ``middle``: half-way through the reference's working span, from the moment its output
  folder got its first entry to its end (some cases or steps done, others not);
- ``write``: the moment a temporary file of an output appears while an earlier output of the
  same kind is already in place (preprocess: the temporary folder of a case after the first
  case; train: the temporary ``last.pt`` that is to replace a checkpoint; predict: the
  temporary label file of a case after the first; evaluate: the first temporary table).

After the kill it checks that nothing half-written is visible: every file under the output
folder whose path has no hidden part loads (``.npy``, ``.npz``, ``.json``, ``.csv``, NIfTI,
checkpoints, safetensors, YAML); the documented exceptions are a torn last line of
``metrics.jsonl`` (dropped on resume) and TensorBoard's appended event files, which are not
read. It then re-runs the same command (``train`` with ``--resume`` when a checkpoint is left,
else afresh), which must exit 0, and compares the final outputs with the reference's:

- preprocess: every cache file, arrays bit for bit, JSON equal;
- predict: every label file's voxel array bit for bit (and its affine), and ``evaluate`` of
  the recovered folder gives the reference's ``per_case.csv`` and ``summary.json`` (what the
  kill left there must not reach the scores or the summary's lists);
- evaluate: ``per_case.csv`` and ``summary.json``, every value equal;
- train: the final ``last.pt`` (model and optimiser tensors) and ``last/model.safetensors``
  bit for bit against the uninterrupted run when the re-run started afresh. A resumed run
  draws fresh patches from the resumed step on (``train.fit.loader_seed``: the loader's
  position is not in a checkpoint), so it cannot equal a run that never stopped; its
  reference is the uninterrupted run stopped at the resumed step by its own step budget and
  resumed from there (``optim.schedule=constant``, no warm-up, so the budget changes no
  learning rate), and the checkpoint the killed run left must equal that run's state at the
  same step bit for bit. The largest weight difference to the run that never stopped is
  printed as a note.

Hidden temporaries a kill leaves behind (``.name.<random>.tmp.ext``, ``.name.tmp-<random>``)
are listed as debris after the re-run (a stage does not read them as outputs; ``evaluate``
used to list a predict's temporary as an unmatched prediction, which this bench found).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glioseg.bench import BenchError, BenchRunFailed

STAGES: tuple[str, ...] = ("preprocess", "train", "predict", "evaluate")
MOMENTS: tuple[str, ...] = ("early", "middle", "write")
EARLY = 0.25
"""``early``: this fraction of the uninterrupted run's wall time."""
MIDDLE = 0.5
"""``middle``: this fraction of the uninterrupted run's working span (first output to end)."""
IDENTICAL = "recovered, identical"
TRIES = 3
"""Attempts at a moment before it is given up: a ``write`` moment can miss its temporary
file, a timed one can come after the end of a run that went faster than the reference (each
retry halves its distance to the start of the work)."""
CASES = 3
TRAIN_STEPS = 6
CKPT_EVERY = 2


def train_settings(steps: int = TRAIN_STEPS) -> list[str]:
    """``--set`` values of the bench's training runs: seconds on one core, one thread, a
    checkpoint every ``CKPT_EVERY`` steps, a constant learning rate (a run of fewer steps
    follows the same trajectory)."""
    return [f"train.steps={steps}", "data.patch_size=[32,32,32]",
            f"train.ckpt_every={CKPT_EVERY}", f"train.val_every={TRAIN_STEPS}",
            "train.log_every=1", "data.n_val=1", "data.workers=0", "train.threads=1",
            "train.amp=none", "optim.schedule=constant", "optim.warmup_steps=0", "train.seed=0"]


# --------------------------------------------------------------------------- files

def is_hidden(rel: Path) -> bool:
    """True when a part of the relative path starts with a dot (temporaries, old folders)."""
    return any(part.startswith(".") for part in rel.parts)


def walk_outputs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(visible files, hidden entries) under ``folder``, relative to it, sorted. Hidden
    folders are listed, not entered."""
    visible: list[Path] = []
    hidden: list[Path] = []
    if not folder.is_dir():
        return visible, hidden
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        for d in sorted(dirs):
            if d.startswith("."):
                hidden.append((here / d).relative_to(folder))
                dirs.remove(d)
        for f in files:
            rel = (here / f).relative_to(folder)
            (hidden if f.startswith(".") else visible).append(rel)
    return sorted(visible), sorted(hidden)


def _check_jsonl(path: Path, allow_torn_tail: bool) -> str | None:
    lines = path.read_text(encoding="utf-8").split("\n")
    whole, tail = lines[:-1], lines[-1]
    for i, line in enumerate(whole, 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {i} is not JSON ({exc})"
    if tail and not allow_torn_tail:
        return "torn last line (no newline)"
    return None


def _check_csv(path: Path) -> str | None:
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        return "no newline at the end (truncated?)"
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        return "empty table"
    bad = [i for i, r in enumerate(rows[1:], 2) if len(r) != len(rows[0])]
    return f"row {bad[0]} has another number of fields than the header" if bad else None


def check_loadable(path: Path, allow_torn_tail: bool = False) -> str | None:
    """None when the file reads whole as its kind, else what is wrong. ``allow_torn_tail``:
    a ``.jsonl`` log may end in a torn line (a kill mid-append; dropped on resume)."""
    name = path.name
    try:
        if path.stat().st_size == 0 and not name.endswith(".jsonl"):
            return "empty file"
        if name.endswith(".npy"):
            np.load(path, allow_pickle=False)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.endswith(".jsonl"):
            return _check_jsonl(path, allow_torn_tail)
        elif name.endswith(".csv"):
            return _check_csv(path)
        elif name.endswith((".nii.gz", ".nii")):
            from glioseg.data.nifti import load_volume

            load_volume(path, dtype=None)
        elif name.endswith(".pt"):
            from glioseg.train.checkpoint import load_checkpoint

            load_checkpoint(path)
        elif name.endswith(".safetensors"):
            from glioseg.model.card import load_state_dict

            load_state_dict(path)
        elif name.endswith((".yaml", ".yml")):
            import yaml

            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif name.endswith((".md", ".txt", ".html")):
            path.read_text(encoding="utf-8")
        elif "tfevents" in name:  # appended by TensorBoard; its reader stops at a torn record
            return None
        else:
            path.read_bytes()
    except Exception as exc:  # whatever a reader raises on a half-written file
        return f"{type(exc).__name__}: {str(exc)[:160]}"
    return None


def half_written(folder: Path, allow_torn_tail: bool = False) -> list[str]:
    """Visible files under ``folder`` that do not load, as ``"rel: what is wrong"``."""
    visible, _ = walk_outputs(folder)
    out = []
    for rel in visible:
        problem = check_loadable(folder / rel, allow_torn_tail)
        if problem:
            out.append(f"{rel}: {problem}")
    return out


# --------------------------------------------------------------------------- comparisons

def compare_arrays(ref: np.ndarray, got: np.ndarray, what: str) -> list[str]:
    """Bit-for-bit comparison of two arrays: dtype, shape and every byte."""
    if ref.dtype != got.dtype:
        return [f"{what}: dtype {got.dtype} != {ref.dtype}"]
    if ref.shape != got.shape:
        return [f"{what}: shape {got.shape} != {ref.shape}"]
    a, b = np.ascontiguousarray(ref), np.ascontiguousarray(got)
    if a.tobytes() == b.tobytes():
        return []
    bytes_a = np.frombuffer(a.tobytes(), np.uint8).reshape(a.size, -1)
    bytes_b = np.frombuffer(b.tobytes(), np.uint8).reshape(b.size, -1)
    n = int(np.count_nonzero((bytes_a != bytes_b).any(axis=1)))  # values with another bit
    msg = f"{what}: {n} of {a.size} values differ"
    if np.issubdtype(a.dtype, np.number) and a.size:
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        msg += f" (max abs diff {float(np.nanmax(diff)) if np.isfinite(diff).any() else 'nan'})"
    return [msg]


def values_equal(ref: Any, got: Any) -> bool:
    """Deep equality of JSON-like values; NaN equals NaN."""
    if isinstance(ref, float) and isinstance(got, float):
        return ref == got or (math.isnan(ref) and math.isnan(got))
    if isinstance(ref, Mapping) and isinstance(got, Mapping):
        return ref.keys() == got.keys() and all(values_equal(ref[k], got[k]) for k in ref)
    if isinstance(ref, list | tuple) and isinstance(got, list | tuple):
        return len(ref) == len(got) and all(values_equal(a, b) for a, b in zip(ref, got,
                                                                                strict=True))
    return type(ref) is type(got) and ref == got


def _json_differences(ref: Any, got: Any, where: str) -> list[str]:
    if isinstance(ref, Mapping) and isinstance(got, Mapping):
        if ref.keys() != got.keys():
            return [f"{where}: keys {sorted(set(ref) ^ set(got))} in one file only"]
        out: list[str] = []
        for k in ref:
            out += _json_differences(ref[k], got[k], f"{where}.{k}")
        return out
    return [] if values_equal(ref, got) else [f"{where}: {got!r} != {ref!r}"[:200]]


def compare_file(ref: Path, got: Path, rel: str) -> list[str]:
    """Compare one output file with the reference's by kind: arrays bit for bit, JSON values
    equal, anything else byte for byte."""
    name = ref.name
    if name.endswith(".npy"):
        return compare_arrays(np.load(ref), np.load(got), rel)
    if name.endswith(".npz"):
        with np.load(ref) as a, np.load(got) as b:
            if sorted(a.files) != sorted(b.files):
                return [f"{rel}: arrays {sorted(b.files)} != {sorted(a.files)}"]
            return [d for k in a.files for d in compare_arrays(a[k], b[k], f"{rel}[{k}]")]
    if name.endswith(".json"):
        return _json_differences(json.loads(ref.read_text()), json.loads(got.read_text()), rel)
    return [] if ref.read_bytes() == got.read_bytes() else [f"{rel}: bytes differ"]


def _same_file_set(ref: Path, got: Path, names: Callable[[Path], bool]) -> tuple[list[Path],
                                                                                 list[str]]:
    a = [p for p in walk_outputs(ref)[0] if names(p)]
    b = [p for p in walk_outputs(got)[0] if names(p)]
    diffs = [f"{p}: missing" for p in sorted(set(a) - set(b))]
    diffs += [f"{p}: not in the uninterrupted run's output" for p in sorted(set(b) - set(a))]
    return sorted(set(a) & set(b)), diffs


def compare_cache(ref: Path, got: Path) -> list[str]:
    """Every file of two preprocessing caches: arrays bit for bit, JSON values equal."""
    common, diffs = _same_file_set(ref, got, lambda p: True)
    for rel in common:
        diffs += compare_file(ref / rel, got / rel, str(rel))
    return diffs


def compare_predictions(ref: Path, got: Path) -> list[str]:
    """Every ``<case>.nii.gz`` label file: voxel arrays (as stored) bit for bit, same affine."""
    from glioseg.data.nifti import load_volume

    common, diffs = _same_file_set(ref, got, lambda p: p.name.endswith((".nii.gz", ".nii")))
    for rel in common:
        a, ha = load_volume(ref / rel, dtype=None)
        b, hb = load_volume(got / rel, dtype=None)
        diffs += compare_arrays(a, b, str(rel))
        if not np.array_equal(ha.affine, hb.affine):
            diffs.append(f"{rel}: affine differs")
    return diffs


def _read_table(path: Path) -> list[dict[str, Any]]:
    def value(s: str) -> Any:
        try:
            return float(s)
        except ValueError:
            return s

    with path.open(newline="") as fh:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def compare_evaluation(ref: Path, got: Path) -> list[str]:
    """``per_case.csv`` (every value of every row) and ``summary.json`` (every value)."""
    diffs: list[str] = []
    for name in ("per_case.csv", "summary.json"):
        if not (got / name).is_file():
            diffs.append(f"{name}: missing")
            continue
        if name.endswith(".json"):
            diffs += compare_file(ref / name, got / name, name)
            continue
        a, b = _read_table(ref / name), _read_table(got / name)
        if len(a) != len(b):
            diffs.append(f"{name}: {len(b)} rows != {len(a)}")
            continue
        for i, (ra, rb) in enumerate(zip(a, b, strict=True), 1):
            diffs += _json_differences(ra, rb, f"{name} row {i}")
    return diffs


def compare_state_dicts(ref: Mapping[str, Any], got: Mapping[str, Any],
                        what: str) -> tuple[float, list[str]]:
    """(largest absolute difference, differences) between two (nested) state dicts of
    tensors; equal means every tensor bit for bit."""
    import torch

    diffs: list[str] = []
    worst = 0.0
    if ref.keys() != got.keys():
        return math.inf, [f"{what}: keys {sorted(map(str, set(ref) ^ set(got)))[:5]} in one only"]
    for k, a in ref.items():
        b = got[k]
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            w, d = compare_state_dicts(a, b, f"{what}.{k}")
            worst, diffs = max(worst, w), diffs + d
        elif isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape or a.dtype != b.dtype:
                worst = math.inf
                diffs.append(f"{what}.{k}: {tuple(b.shape)} {b.dtype} != {tuple(a.shape)} "
                             f"{a.dtype}")
            elif not torch.equal(a, b):
                d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
                worst = max(worst, d)
                diffs.append(f"{what}.{k}: max abs diff {d:.3g}")
        elif not values_equal(a, b):
            diffs.append(f"{what}.{k}: {b!r} != {a!r}"[:200])
    return worst, diffs


# --------------------------------------------------------------------------- processes

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


# --------------------------------------------------------------------------- the bench

@dataclass
class FaultResult:
    """One fault: the stage killed at a moment, what was left, how the re-run went."""

    stage: str
    moment: str
    tries: int = 0
    killed: bool = False
    at_kill: str = ""
    state: str = ""
    half_written: list[str] = field(default_factory=list)
    rerun: str = ""
    rerun_rc: int | None = None
    differences: list[str] = field(default_factory=list)
    debris: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if not self.killed:
            return "not killed: the run ended before the moment"
        if self.half_written:
            return f"half-written output visible ({len(self.half_written)} file(s))"
        if self.rerun_rc != 0:
            return f"re-run failed (exit {self.rerun_rc})"
        if self.differences:
            return f"recovered, differs ({len(self.differences)} difference(s))"
        return IDENTICAL

    @property
    def ok(self) -> bool:
        return self.outcome == IDENTICAL


class FaultBench:
    """The workspace (``data/``, ``refs/<stage>``, ``faults/<stage>-<moment>``) and the runs."""

    def __init__(self, work: Path, cases: int = CASES) -> None:
        self.work = Path(work)
        self.cases = cases
        self.data = self.work / "data"
        self.refs = self.work / "refs"
        self.wall: dict[str, float] = {}
        self.first_output: dict[str, float] = {}
        self._train_from: dict[int, tuple[Path, dict[str, Any] | None]] = {}

    # --- commands
    def command(self, stage: str, out: Path, steps: int = TRAIN_STEPS) -> list[str]:
        if stage == "preprocess":
            return glioseg_command("preprocess", str(self.data), "-o", str(out))
        if stage == "train":
            sets = [a for s in train_settings(steps) for a in ("--set", s)]
            return glioseg_command("train", "--data", str(self.refs / "preprocess"),
                                   "--out", str(out), "--config", "small", *sets)
        if stage == "predict":
            return glioseg_command("predict", "-m", str(self.refs / "train" / "last"),
                                   "-i", str(self.data), "-o", str(out), "--threads", "1")
        if stage == "evaluate":
            return glioseg_command("evaluate", "--pred", str(self.refs / "predict"),
                                   "--ref", str(self.data), "-o", str(out))
        raise BenchError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")

    def _must(self, cmd: Sequence[str], log: Path,
              watch: Path | None = None) -> tuple[float, float | None]:
        rc, wall, first = run_to_end(cmd, log, watch)
        if rc != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchRunFailed(f"{' '.join(cmd[2:4])} failed (exit {rc}); log {log}:\n{tail}")
        return wall, first

    def make_data(self) -> None:
        if not (self.data / ".done").is_file():
            shutil.rmtree(self.data, ignore_errors=True)
            self._must(glioseg_command("synth", str(self.data), "--spacing", "4", "--cases",
                                       str(self.cases), "--layout", "brats2023"),
                       self.work / "logs" / "synth.log")
            (self.data / ".done").write_text("")

    def reference(self, stage: str) -> float:
        """Run ``stage`` uninterrupted into ``refs/<stage>``; its wall time."""
        out = self.refs / stage
        shutil.rmtree(out, ignore_errors=True)
        wall, first = self._must(self.command(stage, out),
                                 self.work / "logs" / f"ref-{stage}.log", watch=out)
        self.wall[stage], self.first_output[stage] = wall, first if first is not None else 0.0
        return wall

    def kill_after(self, stage: str, moment: str) -> float:
        """Seconds after its start at which ``moment`` kills ``stage`` (not ``write``)."""
        wall, first = self.wall[stage], self.first_output[stage]
        return EARLY * wall if moment == "early" else first + MIDDLE * (wall - first)

    # --- one fault
    def fault(self, stage: str, moment: str) -> FaultResult:
        res = FaultResult(stage, moment)
        out = self.work / "faults" / f"{stage}-{moment}"
        log = self.work / "logs" / f"fault-{stage}-{moment}.log"
        cmd = self.command(stage, out)
        kill = Kill(False, 0.0, "")
        after_s = None if moment == "write" else self.kill_after(stage, moment)
        for _ in range(TRIES):
            shutil.rmtree(out, ignore_errors=True)
            res.tries += 1
            if after_s is None:
                kill = run_and_kill(cmd, log, trigger=write_trigger(stage, out))
            else:
                kill = run_and_kill(cmd, log, after_s=after_s)
                # ended first (a loaded machine runs faster or slower than the reference):
                # halve the distance to the start of the work (early: to the start)
                start = self.first_output[stage] if moment == "middle" else 0.0
                after_s = start + 0.5 * (after_s - start)
            if kill.killed:
                break
        res.killed, res.at_kill = kill.killed, kill.trigger
        if not kill.killed:
            res.notes.append(f"the run ended (exit {kill.returncode}) in {kill.at_s:.2f} s")
            return res
        res.half_written = half_written(out, allow_torn_tail=True)
        res.state = self._state(stage, out)
        rerun = list(cmd)
        resumed_from: tuple[int, dict[str, Any]] | None = None
        if stage == "train":
            resumed_from = self._resume_point(out, res)
            if resumed_from is not None:
                rerun.append("--resume")
        res.rerun = "--resume" if "--resume" in rerun else "same command"
        res.rerun_rc = run_to_end(rerun, log)[0]
        if res.rerun_rc != 0:
            return res
        res.half_written += [f"after the re-run: {h}" for h in half_written(out)]
        res.debris = [str(p) for p in walk_outputs(out)[1]]
        if stage == "preprocess":
            res.differences = compare_cache(self.refs / stage, out)
        elif stage == "predict":
            res.differences = compare_predictions(self.refs / stage, out)
            res.differences += self._downstream_evaluation(out, log)
        elif stage == "evaluate":
            res.differences = compare_evaluation(self.refs / stage, out)
        else:
            res.differences = self._compare_train(out, resumed_from, res)
        return res

    def _downstream_evaluation(self, pred: Path, log: Path) -> list[str]:
        """``evaluate`` of the recovered predictions folder against the reference's: what a
        kill left in the folder must not change the scores or the lists of the summary."""
        out = pred.parent / f"{pred.name}-evaluate"
        shutil.rmtree(out, ignore_errors=True)
        rc = run_to_end(glioseg_command("evaluate", "--pred", str(pred), "--ref",
                                        str(self.data), "-o", str(out)), log)[0]
        if rc != 0:
            return [f"evaluate of the recovered predictions failed (exit {rc})"]
        return [f"evaluate of the recovered predictions: {d}"
                for d in compare_evaluation(self.refs / "evaluate", out)]

    def _state(self, stage: str, out: Path) -> str:
        """What the killed run left visible, in a few words."""
        visible, hidden = walk_outputs(out)
        tmp = f", {len(hidden)} temporary" if hidden else ""
        if stage == "preprocess":
            n = len({p.parts[0] for p in visible if len(p.parts) > 1})
            return f"{n}/{self.cases} cases{tmp}"
        if stage == "predict":
            n = len([p for p in visible if p.name.endswith(".nii.gz")])
            return f"{n}/{self.cases} labels{tmp}"
        if stage == "train":
            return f"checkpoints: {', '.join(sorted(p.name for p in visible if p.suffix == '.pt')) or 'none'}{tmp}"
        return f"{', '.join(p.name for p in visible) or 'nothing'}{tmp}"

    # --- train
    def _resume_point(self, run: Path, res: FaultResult) -> tuple[int, dict[str, Any]] | None:
        """(step, model state) of the checkpoint the killed run resumes from, or None."""
        from glioseg.train.checkpoint import CheckpointError, choose_resume

        try:
            choice = choose_resume(run)
        except CheckpointError as exc:
            res.notes.append(f"no usable checkpoint: {exc}")
            return None
        if choice is None:
            res.state += "; re-run starts afresh"
            return None
        res.state += f"; resumes {choice.path.name} at step {choice.step}"
        res.notes += choice.notes
        return choice.step, choice.state["model"]

    def train_reference_from(self, step: int) -> tuple[Path, dict[str, Any] | None]:
        """The uninterrupted run stopped at ``step`` by its budget, then resumed to the end:
        (its folder, its model state at ``step``). Step 0: the uninterrupted run itself."""
        if step == 0:
            return self.refs / "train", None
        if step not in self._train_from:
            out = self.refs / f"train-to-{step}"
            shutil.rmtree(out, ignore_errors=True)
            log = self.work / "logs" / f"ref-train-to-{step}.log"
            self._must(self.command("train", out, steps=step), log)
            from glioseg.train.checkpoint import load_checkpoint

            at = load_checkpoint(out / "last.pt")["model"]
            sets = ["--set", f"train.steps={TRAIN_STEPS}"]
            self._must(glioseg_command("train", "--out", str(out), "--resume", *sets), log)
            self._train_from[step] = (out, at)
        return self._train_from[step]

    def _compare_train(self, run: Path, resumed_from: tuple[int, dict[str, Any]] | None,
                       res: FaultResult) -> list[str]:
        from glioseg.model.card import load_state_dict
        from glioseg.train.checkpoint import load_checkpoint

        step = resumed_from[0] if resumed_from else 0
        ref_dir, ref_at = self.train_reference_from(step)
        diffs: list[str] = []
        if resumed_from is not None and ref_at is not None:
            _, d = compare_state_dicts(ref_at, resumed_from[1], f"checkpoint at step {step}")
            diffs += d
        ref, got = load_checkpoint(ref_dir / "last.pt"), load_checkpoint(run / "last.pt")
        if got["step"] != ref["step"]:
            diffs.append(f"last.pt: step {got['step']} != {ref['step']}")
        worst, d = compare_state_dicts(ref["model"], got["model"], "last.pt model")
        diffs += d
        diffs += compare_state_dicts(ref["optimizer"], got["optimizer"], "last.pt optimizer")[1]
        diffs += compare_state_dicts(load_state_dict(ref_dir / "last" / "model.safetensors"),
                                     load_state_dict(run / "last" / "model.safetensors"),
                                     "last/model.safetensors")[1]
        reference = ("the uninterrupted run" if step == 0 else
                     f"the uninterrupted run stopped at step {step} and resumed")
        res.notes.append(f"weights vs {reference}: max abs diff {worst:.3g}")
        if step:
            plain = load_checkpoint(self.refs / "train" / "last.pt")["model"]
            w, _ = compare_state_dicts(plain, got["model"], "")
            res.notes.append(f"weights vs the run that never stopped: max abs diff {w:.3g} "
                             "(fresh patches after a resume, by design)")
        return diffs


# --------------------------------------------------------------------------- table

def format_table(results: Sequence[FaultResult]) -> str:
    """The fault table: stage, moment, tries, when killed, what was left, re-run, outcome."""
    head = ("fault", "moment", "tries", "killed at", "left by the kill", "re-run", "outcome")
    rows = [(r.stage, r.moment, str(r.tries), r.at_kill or "-", r.state or "-", r.rerun or "-",
             r.outcome) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def format_details(results: Sequence[FaultResult]) -> list[str]:
    """Notes, differences, half-written files and debris, per fault."""
    out = []
    for r in results:
        items = ([f"half-written: {h}" for h in r.half_written]
                 + [f"differs: {d}" for d in r.differences[:8]]
                 + ([f"... {len(r.differences) - 8} more"] if len(r.differences) > 8 else [])
                 + r.notes
                 + ([f"debris after the re-run (hidden): {', '.join(r.debris)}"]
                    if r.debris else []))
        if items:
            out.append(f"{r.stage} / {r.moment}:")
            out += [f"  {x}" for x in items]
    return out


# --------------------------------------------------------------------------- entry point

def _needed_refs(stages: Sequence[str]) -> list[str]:
    """The stages whose uninterrupted runs the chosen faults need (inputs and references)."""
    last = max(STAGES.index(s) for s in stages)
    if "predict" in stages:  # its recovered folder is evaluated against the reference's
        last = STAGES.index("evaluate")
    return list(STAGES[: last + 1])


def bench_faults(stages: Sequence[str] = STAGES, moments: Sequence[str] = MOMENTS,
                 work: str | Path | None = None, cases: int = CASES,
                 show_progress: bool = True) -> list[FaultResult]:
    """Kill each of ``stages`` at each of ``moments``, re-run, compare; print the table.

    Args:
        stages: among ``STAGES``; the stages before the last chosen one still run once,
            uninterrupted, for their outputs.
        moments: among ``MOMENTS``.
        work: the workspace folder (kept); None: a temporary folder, removed at the end.
        cases: synthetic cases (4 mm).
        show_progress: draw a progress bar on stderr.

    Returns:
        One ``FaultResult`` per (stage, moment), in that order.
    """
    from rich import progress as rp
    from rich.console import Console

    bad = [s for s in stages if s not in STAGES] + [m for m in moments if m not in MOMENTS]
    if bad or not stages or not moments:
        raise BenchError(f"unknown or no stage/moment {bad}; stages: {', '.join(STAGES)}; "
                         f"moments: {', '.join(MOMENTS)}")
    stages = [s for s in STAGES if s in stages]
    moments = [m for m in MOMENTS if m in moments]
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="glioseg-faults-")
        work = tmp.name
    console = Console(stderr=True)
    bench = FaultBench(Path(work), cases=cases)
    refs = _needed_refs(stages)
    results: list[FaultResult] = []
    try:
        with rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                         rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), console=console,
                         disable=not show_progress) as bar:
            task = bar.add_task("faults", total=1 + len(refs) + len(stages) * len(moments))
            bar.update(task, description=f"synthetic cohort ({cases} cases, 4 mm)")
            bench.make_data()
            bar.advance(task)
            for stage in refs:
                bar.update(task, description=f"{stage}: uninterrupted run")
                wall = bench.reference(stage)
                bar.console.print(f"{stage}: uninterrupted run {wall:.2f} s")
                bar.advance(task)
            for stage in stages:
                for moment in moments:
                    bar.update(task, description=f"{stage}: kill {moment}, re-run, compare")
                    r = bench.fault(stage, moment)
                    results.append(r)
                    bar.console.print(f"{stage} / {moment}: {r.outcome}")
                    bar.advance(task)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(format_table(results))
    details = format_details(results)
    if details:
        print("\n" + "\n".join(details))
    n_ok = sum(r.ok for r in results)
    print(f"\n{n_ok} of {len(results)} faults {IDENTICAL}")
    return results
