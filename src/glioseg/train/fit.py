"""``fit``: the training loop of a run, on one process or as one rank of a torchrun job.

A run folder holds everything about a run::

    RUN_DIR/config.yaml       the resolved config (values only)
    RUN_DIR/metrics.jsonl     one JSON record per log (``glioseg.metrics_log``)
    RUN_DIR/tb/               TensorBoard event files
    RUN_DIR/last.pt, previous.pt, best.pt, last/, best/     (see ``checkpoint.py``)

A worker always resumes from the run folder's last checkpoint when there is one and its config
matches (so torchrun ``--max-restarts`` brings a crashed run back by itself); the steps and the
records of ``metrics.jsonl`` continue from the checkpoint's step. Rank 0 chooses the checkpoint
for every rank; one that cannot be read is reported (``previous.pt`` is then used) and a folder
whose checkpoints all fail to read is refused, never restarted from step 0.

Validation: ``data.n_val`` labelled cases are held out at random (seeded by ``train.seed``,
see ``cases.split_cases``; or every case of ``data.val_cache``); every
``train.val_every`` steps each rank predicts its share of them and the region Dice is averaged
over all cases with an all-reduce.

Around the loop, in their own modules: ``launch`` (config, data, torchrun), ``cases`` (which
cases, the patch stream), ``components`` (model, optimiser, schedule, loss), ``config_diff``
(what a resume may change), ``run_card`` (the checkpoints' model cards).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from glioseg.io_atomic import remove_leftover_temporaries, write_json
from glioseg.metrics_log import METRICS_NAME, MetricsLog
from glioseg.records import RecordsError
from glioseg.runinfo import record_training
from glioseg.train import checkpoint as ckpt
from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train import loop as train_loop
from glioseg.train.cases import (
    SPLIT_NAME,
    channel_indices,
    forever,
    make_train_loader,
    select_cases,
    split_lines,
    split_record,
)
from glioseg.train.components import (
    Components,
    apply_lr,
    build_components,
    wrap,
    write_load_report,
)
from glioseg.train.config_diff import config_differences, resume_changes
from glioseg.train.device_policy import KEYS as POLICY_KEYS
from glioseg.train.device_policy import choose_for_run, write_record
from glioseg.train.device_step import StatsRead, StepStats
from glioseg.train.errors import TrainError, interrupted
from glioseg.train.run_card import model_card

MAX_SKIPS_IN_A_ROW = 50
"""Consecutive steps with a non-finite gradient (each skipped, as a GradScaler skips) after
which the run stops: the model is no longer learning (fp16's scaler needs a handful at most)."""


# --------------------------------------------------------------------------- logging


class Logger:
    """metrics.jsonl + TensorBoard on rank 0; silent elsewhere."""

    def __init__(self, run_dir: Path, info: D.DistInfo, resume_step: int | None) -> None:
        self.active = info.is_main
        self.metrics: MetricsLog | None = None
        self.tb: Any = None
        if self.active:
            try:
                self.metrics = MetricsLog(run_dir / METRICS_NAME, resume_step)
            except RecordsError as exc:  # a bad line before the last: the run cannot resume
                raise TrainError(str(exc)) from None
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=(resume_step or 0) + 1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.active:
            return
        assert self.metrics is not None
        self.metrics.write(record)
        split = record.get("split", "train")
        for k, v in record.items():
            if k not in ("step", "split") and isinstance(v, int | float) and math.isfinite(v):
                self.tb.add_scalar(f"{split}/{k}", v, record["step"])
        self.tb.flush()

    def close(self) -> None:
        if self.active:
            assert self.metrics is not None
            self.metrics.close()
            self.tb.close()


# --------------------------------------------------------------------------- the run


@dataclass
class RunState:
    step: int = 0
    best_metric: float = -math.inf
    best_step: int = 0
    elapsed_s: float = 0.0
    saved: tuple[int, str] | None = None
    """The step and file name of the run's last checkpoint (None before the first)."""


def _save(run_dir: Path, cfg: C.Config, comp: Components, info: D.DistInfo, rs: RunState,
          best: bool, metrics: Mapping[str, Any], cases: Sequence[Any],
          val_cases: Sequence[Any] = ()) -> None:
    """Gather every rank's RNG state; rank 0 writes last.pt (and best.pt) and model cards."""
    rngs = D.all_gather_objects(ckpt.rng_state())
    if not info.is_main:
        return
    state = ckpt.training_state(
        step=rs.step, model=comp.model, optimizer=comp.optimizer, scheduler=comp.scheduler,
        scaler=comp.scaler, config=C.config_to_dict(cfg), rng=rngs,
        best={"metric": rs.best_metric, "step": rs.best_step},
        extra={"elapsed_s": rs.elapsed_s},
    )
    card = model_card(cfg, comp.model, rs.step, metrics, cases,
                      val_ids=[c.case_id for c in val_cases])
    if best:
        ckpt.save_best(run_dir, state)
        ckpt.save_model_card(run_dir / "best", comp.model, card)
    ckpt.save_last(run_dir, state)
    ckpt.save_model_card(run_dir / "last", comp.model, card)


def _choose_checkpoint(run_dir: Path, info: D.DistInfo) -> ckpt.ResumeChoice | None:
    """Rank 0 chooses the checkpoint (``checkpoint.choose_resume``) and broadcasts its name and
    step; every other rank loads that file and checks its step. Ranks never choose on their
    own: on shared storage they could see different files and resume at different steps. Any
    rank's failure (an unreadable file, another step) is an error on every rank, not a hang."""
    mine: ckpt.ResumeChoice | None = None
    decision: dict[str, Any] = {"error": None, "name": None, "step": None, "notes": []}
    if info.is_main:
        try:
            mine = ckpt.choose_resume(run_dir)
        except ckpt.CheckpointError as exc:
            decision["error"] = str(exc)
        if mine is not None:
            decision.update(name=mine.path.name, step=mine.step, notes=mine.notes)
    decision = D.broadcast_object(decision)
    if decision["error"]:
        raise TrainError(decision["error"])
    if decision["name"] is None:
        return None
    problem = None
    if not info.is_main:
        path = run_dir / decision["name"]
        try:
            state = ckpt.load_usable(path)
            mine = ckpt.ResumeChoice(path, state, decision["notes"])
            if mine.step != decision["step"]:
                problem = f"{path} holds step {mine.step}"
        except ckpt.CheckpointError as exc:
            problem = str(exc)
    problems = [(r, p) for r, p in enumerate(D.all_gather_objects(problem)) if p]
    if problems:
        raise TrainError(
            f"{run_dir}: rank 0 resumes from {decision['name']} at step {decision['step']} but "
            + "; ".join(f"rank {r}: {p}" for r, p in problems)
            + " (do all nodes see the same run folder?)")
    return mine


def _resume_point(run_dir: Path, cfg: C.Config, resume: bool,
                  info: D.DistInfo | None = None) -> dict[str, Any] | None:
    """The training state to resume from (the same file on every rank, see
    ``_choose_checkpoint``), or None to start afresh. The state's ``"resume"`` entry says what
    to report: the file, checkpoints passed over, config keys that changed."""
    choice = _choose_checkpoint(run_dir, info or D.DistInfo())
    if choice is None:
        if resume:
            raise TrainError(f"{run_dir}: --resume given but there is no readable last.pt or "
                             "previous.pt to resume from")
        return None
    state, path = choice.state, choice.path
    current = C.config_to_dict(cfg)
    diffs = config_differences(state["config"], current)
    if diffs:
        raise TrainError(f"{run_dir}: holds a run ({path.name}, step {state['step']}) with another "
                         f"config ({'; '.join(diffs[:3])}); use another --out, or --resume "
                         "without --config to continue it")
    state["resume"] = {"checkpoint": path.name, "notes": choice.notes,
                       "changed": resume_changes(state["config"], current)}
    return state


def finished_summary(state: Mapping[str, Any] | None, changed: Mapping[str, Any],
                     steps: int) -> dict[str, Any] | None:
    """What a run whose checkpoint ``state`` is already at ``steps`` reports instead of
    training (``"finished": True``, its step, and the keys of ``changed`` (the checkpoint's
    ``resume_changes``) that were not applied: all but ``train.steps`` and an ``auto`` of
    ``device_policy`` that the run makes concrete when it starts, so not a change by itself);
    None when steps remain or there is no checkpoint."""
    if state is None or state["step"] < steps:
        return None
    resolved = {f"train.{k}" for k in POLICY_KEYS}
    return {"step": int(state["step"]), "finished": True, "steps": steps,
            "changed": sorted(k for k, (_, new) in changed.items()
                              if k != "train.steps" and not (k in resolved and new == "auto"))}


def fit(cfg: C.Config, run_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir``; returns the final validation scores and step.

    Runs as one process or as one rank of a torchrun job (``glioseg.train.distributed``).
    Resumes from ``run_dir``'s checkpoint when there is one with a matching config;
    ``resume=True`` makes a missing checkpoint an error. A run whose checkpoint is already at
    ``train.steps`` is left as it is: nothing is trained or written, and the summary has
    ``"finished": True``.

    Raises:
        KeyboardInterrupt: Ctrl-C, with a message saying where the run stopped and how to go
            on (``errors.interrupted``); on a single process the first one stops the run at
            the end of the step in progress, saved as ``last.pt``.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    info = D.init(cfg.train.device, cfg.train.threads)
    live: dict[str, Any] = {}
    ok = False
    try:
        summary = _run(cfg, run_dir, info, resume, live)
        if info.is_main and not summary.get("finished"):  # hardware.json, timings.json
            record_training(run_dir, cfg, time.perf_counter() - started, summary)
        ok = True
        return summary
    finally:
        D.shutdown(live, clean=ok)


def _run(cfg: C.Config, run_dir: Path, info: D.DistInfo, resume: bool,
         live: dict[str, Any]) -> dict[str, Any]:
    """The run: cases, device choice, resume point and components are settled before anything
    is written, so a run that cannot start leaves a new folder as it was (absent), and a
    finished run (no step left) is reported and left untouched."""
    from glioseg.preprocess.cache import open_cache

    cases = open_cache(cfg.data.cache_dir)
    val_pool = open_cache(cfg.data.val_cache) if cfg.data.val_cache else None
    train_cases, val_cases = select_cases(cfg, cases, val_pool)
    # amp / channels_last / compile ``auto`` made concrete for this device (a probe on a GPU)
    said: list[str] = []  # printed once the run goes on
    cfg, choice = choose_for_run(cfg, info.device, run_dir, main=info.is_main,
                                 share=D.broadcast_object, say=said.append, write=False)
    state = _resume_point(run_dir, cfg, resume, info)
    resumed = state.pop("resume") if state is not None else None
    finished = finished_summary(state, resumed["changed"] if resumed else {}, cfg.train.steps)
    if finished is not None:  # nothing to train
        best = (state or {}).get("best") or {}
        return {**finished, "rank": info.rank,
                "best_metric": float(best.get("metric", -math.inf)),
                "best_step": int(best.get("step", 0))}
    comp = build_components(cfg, info, fresh=state is None)

    if info.is_main:
        for line in said:
            tqdm.write(line)
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_leftover_temporaries(run_dir)  # a checkpoint half-written by a killed run
        write_record(run_dir, choice)
        if resumed is not None:
            _say_resume(run_dir, state["step"], resumed)
        for line in split_lines(cfg, train_cases, val_cases, run_dir):
            tqdm.write(line)
        write_json(run_dir / SPLIT_NAME, split_record(cfg, train_cases, val_cases))
    D.barrier()
    if comp.load_report is not None and info.is_main:
        write_load_report(run_dir, cfg, comp)
    rs = RunState()
    if state is not None:
        rs = _restore(state, resumed, comp, info)
        del state  # the checkpoint's tensors are not kept through the training
    else:
        D.seed_everything(cfg.train.seed + info.rank)
    wrap(comp, cfg, info)
    live["comp"] = comp
    if info.is_main:
        C.dump_config(cfg, run_dir / "config.yaml")

    logger = Logger(run_dir, info, rs.step if rs.step > 0 else None)
    live["logger"] = logger
    if resumed is not None:  # what the resume did, in the run's own log
        logger.log({"step": rs.step, "split": "resume", **resumed})
    try:
        last_val = _train(cfg, run_dir, info, comp, rs, train_cases, val_cases, logger)
    finally:
        logger.close()
    return {"step": rs.step, "best_metric": rs.best_metric, "best_step": rs.best_step,
            "rank": info.rank, "val_pipeline": validation_pipeline(cfg),
            "task": cfg.train.task, **last_val}


def _say_resume(run_dir: Path, step: int, resumed: Mapping[str, Any]) -> None:
    """Print what the resume does: checkpoints passed over, the step, config keys changed."""
    for note in resumed["notes"]:
        tqdm.write(f"warning: {note}")
    tqdm.write(f"resuming {run_dir} from step {step}")
    for key, (old, new) in resumed["changed"].items():
        tqdm.write(f"resume: {key} changed: {old!r} -> {new!r}")


def _restore(state: dict[str, Any], resumed: Mapping[str, Any] | None, comp: Components,
             info: D.DistInfo) -> RunState:
    """Model, optimiser, schedule and scaler from the checkpoint ``state`` (a changed
    ``optim.lr`` then replaces the schedule's peak: ``apply_lr``); the run's step, best score
    and training time so far."""
    fresh_base_lrs = list(comp.scheduler.base_lrs)
    step = ckpt.restore(state, model=comp.model, optimizer=comp.optimizer,
                        scheduler=comp.scheduler, scaler=comp.scaler, rank=info.rank)
    if resumed is not None and "optim.lr" in resumed["changed"]:
        apply_lr(comp, fresh_base_lrs)
    return RunState(step=step, best_metric=float(state["best"].get("metric", -math.inf)),
                    best_step=int(state["best"].get("step", 0)),
                    elapsed_s=float(state["extra"].get("elapsed_s", 0.0)),
                    saved=(step, resumed["checkpoint"] if resumed else ckpt.LAST))


def validation_pipeline(cfg: C.Config) -> str:
    """How validation predicts, in words: ``whole volume`` (one forward of the cropped box, as
    ``glioseg predict``'s default ``--mode auto`` does when it fits in memory) or the windows
    (``predict --mode sliding --roi .. --overlap ..`` repeats them)."""
    if cfg.train.val_mode == "whole":
        return "whole volume"
    roi = ",".join(str(int(v)) for v in cfg.patch_size)
    return f"sliding windows {roi}, overlap {cfg.train.val_overlap:g}"


def genesis_batch(batch: train_loop.Batch, seed: int, rank: int, step: int,
                  channels_last: bool = False) -> train_loop.Batch:
    """The Models Genesis pair of a batch: the corrupted patches as input and the original
    patches as target (``glioseg.transfer.genesis``); the corruption is drawn from a generator
    seeded by (seed, rank, step), so a resumed run draws the same ones."""
    import numpy as np

    from glioseg.transfer.genesis import corrupt_batch

    rng = np.random.default_rng([seed, rank, step])
    original = batch.image.float()
    corrupted = torch.from_numpy(corrupt_batch(original.cpu().numpy(), rng)).to(original.device)
    layout = train_loop.memory_format(channels_last)
    return train_loop.Batch(corrupted.contiguous(memory_format=layout), original)


def _train(cfg: C.Config, run_dir: Path, info: D.DistInfo, comp: Components, rs: RunState,
           train_cases: list[Any], val_cases: list[Any], logger: Logger) -> dict[str, Any]:
    t = cfg.train
    if rs.step >= t.steps:
        return {}
    batches = _batch_stream(cfg, train_cases, info, rs.step)
    bar = tqdm(total=t.steps, initial=rs.step, disable=not info.is_main, desc="train",
               dynamic_ncols=True, unit="step")
    window = _new_window()
    stats = StepStats(info.device)  # the step's figures, read back once per log
    logged = rs.step
    last_val: dict[str, Any] = {}
    t_start = time.perf_counter()
    elapsed0 = rs.elapsed_s

    def save(best: bool) -> None:
        _save(run_dir, cfg, comp, info, rs, best, last_val, train_cases, val_cases)
        rs.saved = (rs.step, ckpt.LAST)

    stop = StopRequest(enabled=not info.distributed)
    try:
        with stop:
            while rs.step < t.steps:
                t0 = time.perf_counter()
                try:
                    micro = batches(rs.step)
                except Exception:
                    if not stop.requested:  # a loader worker ended by the same Ctrl-C
                        raise
                    break
                window["wait"] += time.perf_counter() - t0
                res = train_loop.train_step(comp.net, micro, comp.loss_fn, comp.optimizer,
                                            comp.scaler, t.amp, cfg.optim.grad_clip)
                stats.add(res)  # a skipped step leaves the weights unchanged; it still counts
                comp.scheduler.step()
                rs.step += 1
                rs.elapsed_s = elapsed0 + time.perf_counter() - t_start
                window["patches"] += res.patches
                bar.update(1)
                if rs.step % t.log_every == 0 or rs.step == t.steps:
                    read = stats.read()  # the loop's one host read, once per log
                    window.update(loss=read.loss_sum, n=read.finite_steps, skipped=read.skipped)
                    _skipped(read, rs.step - logged, rs.step, run_dir, info, comp, bar)
                    logged = rs.step
                    rec = _train_record(window, rs, comp, info)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", pps=f"{rec['patches_per_s']:.2f}")
                    logger.log(rec)
                    last_val["last_loss"] = rec["loss"]
                    window = _new_window()
                best = False
                t_pause = time.perf_counter()
                if val_cases and (rs.step % t.val_every == 0 or rs.step == t.steps):
                    scores, best = _validate(cfg, comp, info, rs, val_cases, logger, bar)
                    last_val = {**scores, "last_loss": last_val.get("last_loss")}
                if best or rs.step % t.ckpt_every == 0 or rs.step == t.steps:
                    save(best)
                window["t0"] += time.perf_counter() - t_pause  # not in the throughput window
                if stop.requested:
                    break
            if stop.requested and rs.step < t.steps:  # between two steps: whole
                if rs.saved is None or rs.saved[0] != rs.step:
                    save(False)
                raise interrupted(run_dir, rs.step, rs.saved)
    except KeyboardInterrupt as exc:
        if exc.args or info.distributed:  # ours (said where it stopped), or under torchrun
            raise
        # a second Ctrl-C: the step in progress may be half applied, so nothing is saved
        raise interrupted(run_dir, rs.step, rs.saved) from None
    finally:
        bar.close()
    return last_val


class StopRequest:
    """Ctrl-C during a single-process run (in the main thread, with Python's own SIGINT
    handler): the first SIGINT asks the loop to stop at the end of the step in progress
    (``requested``), where the run is saved whole; a second one interrupts at once
    (``KeyboardInterrupt``). Elsewhere (under torchrun) SIGINT is left as it is."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous: Any = None
        self._pid = 0

    def __enter__(self) -> StopRequest:
        import signal
        import threading

        self.enabled = (self.enabled and threading.current_thread() is threading.main_thread()
                        and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self.enabled:
            self._pid = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        import signal
        import sys

        if os.getpid() != self._pid:  # a loader worker forked meanwhile: the run stops it
            return
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.stderr.write("\ninterrupt: stopping after the step in progress (Ctrl-C again to "
                         "stop at once, without saving it)\n")

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            import signal

            signal.signal(signal.SIGINT, self._previous)


def _new_window() -> dict[str, float]:
    """The sums of a logging window: loss over the steps with a finite one, data wait,
    patches and skipped steps since ``t0``."""
    return {"loss": 0.0, "n": 0, "patches": 0, "wait": 0.0, "skipped": 0,
            "t0": time.perf_counter()}


def _batch_stream(cfg: C.Config, train_cases: list[Any], info: D.DistInfo,
                  step: int) -> Callable[[int], list[train_loop.Batch]]:
    """``next(step)``: the ``train.grad_accum`` micro-batches of a step, on the device (moved
    one step ahead, ``glioseg.train.prefetch``), with the ``data.modalities`` channels; for
    pretraining, uniform patches (no labels to oversample) made into Models Genesis pairs
    (``genesis_batch``, corrupted on the host: a read-back per step that pretraining keeps)."""
    from glioseg.train.prefetch import prefetch_batches

    t = cfg.train
    genesis = t.task == "genesis"
    channels = channel_indices(cfg.data.modalities)
    loader_cfg = cfg
    if genesis:  # no labels: uniform patches, no foreground oversampling
        import dataclasses

        loader_cfg = C.replace(cfg, data=dataclasses.replace(cfg.data, foreground_fraction=0.0))
    batches = prefetch_batches(forever(make_train_loader(loader_cfg, train_cases, info, step)),
                               info.device, t.channels_last)

    def next_micro(step: int) -> list[train_loop.Batch]:
        micro = [next(batches) for _ in range(t.grad_accum)]
        if channels != list(range(micro[0].image.shape[1])):
            micro = [train_loop.Batch(mb.image[:, channels], mb.target) for mb in micro]
        if genesis:
            micro = [genesis_batch(mb, t.seed, info.rank, step * t.grad_accum + i,
                                   t.channels_last) for i, mb in enumerate(micro)]
        return micro

    return next_micro


def _skipped(read: StatsRead, n_steps: int, step: int, run_dir: Path, info: D.DistInfo,
             comp: Components, bar: Any) -> None:
    """Steps of the last ``n_steps`` whose gradient was not finite (read at the log step
    ``step``): say so (unless fp16's scaler, which skips by design, is on);
    ``MAX_SKIPS_IN_A_ROW`` in a row stop the run with the remedies. The same on every rank
    (the gradients are all-reduced)."""
    if read.longest_skip_run >= MAX_SKIPS_IN_A_ROW:
        raise TrainError(
            f"step {step}: the gradient was not finite at {read.longest_skip_run} steps "
            f"in a row (last gradient norm {read.grad_norm}); the checkpoints in {run_dir} "
            "hold finite weights: resume with a lower learning rate (--resume --set "
            "optim.lr=...) or another precision (--set train.amp=none)")
    if read.skipped and info.is_main and not comp.scaler.is_enabled():
        if n_steps == 1:
            bar.write(f"step {step}: gradient norm {read.grad_norm}: update skipped")
        else:
            bar.write(f"steps {step - n_steps + 1}-{step}: {read.skipped} updates skipped "
                      f"(non-finite gradient; last norm {read.grad_norm})")


def _validate(cfg: C.Config, comp: Components, info: D.DistInfo, rs: RunState,
              val_cases: list[Any], logger: Logger, bar: Any) -> tuple[dict[str, Any], bool]:
    """Validate at ``rs.step`` (every rank its share, ``train_loop.validate``), log and print the
    scores; returns them and whether they are the best so far (``rs`` is updated)."""
    t = cfg.train
    scores = train_loop.validate(comp.model, val_cases, device=info.device, rank=info.rank,
                        world_size=info.world_size, mode=t.val_mode, roi=cfg.patch_size,
                        overlap=t.val_overlap, amp=t.amp, divisor=comp.divisor,
                        channels_last=t.channels_last)
    best = scores["dice_mean"] > rs.best_metric
    if best:
        rs.best_metric, rs.best_step = scores["dice_mean"], rs.step
    scores = {"step": rs.step, **scores}
    logger.log({"split": "val", **scores, "elapsed_s": round(rs.elapsed_s, 2)})
    if info.is_main:
        bar.write(f"step {rs.step}: val Dice WT {scores['dice_WT']:.3f} "
                  f"TC {scores['dice_TC']:.3f} ET {scores['dice_ET']:.3f}")
    return scores, best


def _train_record(window: dict[str, float], rs: RunState, comp: Components,
                  info: D.DistInfo) -> dict[str, Any]:
    """Mean loss over the window and ranks (over the steps with a finite loss; nan when there
    were none); patches/s over all ranks; data-wait fraction; steps skipped in the window
    (non-finite gradient: the same steps on every rank)."""
    dt = max(time.perf_counter() - window["t0"], 1e-9)
    loss = window["loss"] / window["n"] if window["n"] else math.nan
    stats = torch.tensor([loss, window["wait"] / dt, window["patches"] / dt],
                         dtype=torch.float64)
    if D.is_initialized():
        stats = stats.to(D.collective_device())
        D.all_reduce_sum(stats)
        stats = stats.cpu()
        stats[:2] /= info.world_size
    return {"step": rs.step, "split": "train", "loss": float(stats[0]),
            "lr": float(comp.optimizer.param_groups[0]["lr"]),
            "patches_per_s": float(stats[2]), "data_wait": float(stats[1]),
            "skipped_steps": int(window["skipped"]), "elapsed_s": round(rs.elapsed_s, 2)}
