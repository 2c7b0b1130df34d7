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
  draws fresh patches from the resumed step on (``train.cases.loader_seed``: the loader's
  position is not in a checkpoint), so it cannot equal a run that never stopped; its
  reference is the uninterrupted run stopped at the resumed step by its own step budget and
  resumed from there (``optim.schedule=constant``, no warm-up, so the budget changes no
  learning rate), and the checkpoint the killed run left must equal that run's state at the
  same step bit for bit. The largest weight difference to the run that never stopped is
  printed as a note.

Hidden temporaries a kill leaves behind (``.name.<random>.tmp.ext``, ``.name.tmp-<random>``)
are removed by the re-run (``io_atomic.remove_leftover_temporaries``, called by every stage
where it starts in its folder); any still there after the re-run is listed as debris (a stage
does not read them as outputs; ``evaluate`` used to list a predict's temporary as an
unmatched prediction, which this bench found).

This module holds the workspace and its runs (``FaultBench``) and the command
(``bench_faults``); the kill harness is ``bench.fault_process``, the half-written checks
``bench.fault_files``, the comparisons ``bench.fault_compare``, the results and their table
``bench.fault_table``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glioseg.bench import BenchError, BenchRunFailed
from glioseg.bench.fault_compare import (
    compare_cache,
    compare_evaluation,
    compare_predictions,
    compare_state_dicts,
)
from glioseg.bench.fault_files import half_written, walk_outputs
from glioseg.bench.fault_process import (
    Kill,
    glioseg_command,
    run_and_kill,
    run_to_end,
    write_trigger,
)
from glioseg.bench.fault_table import IDENTICAL, FaultResult, format_details, format_table

STAGES: tuple[str, ...] = ("preprocess", "train", "predict", "evaluate")
MOMENTS: tuple[str, ...] = ("early", "middle", "write")
EARLY = 0.25
"""``early``: this fraction of the uninterrupted run's wall time."""
MIDDLE = 0.5
"""``middle``: this fraction of the uninterrupted run's working span (first output to end)."""
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


# --------------------------------------------------------------------------- the bench

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
