"""``glioseg train --profile``: where a training step's time goes.

Runs a few training steps of the configured run (same model, loader, precision and wrapping
as ``fit``) under ``torch.profiler``, writes a Chrome trace (open in ``chrome://tracing`` or
Perfetto) to ``RUN_DIR/profile/trace_rank<r>.json``, and prints the top operators and the
split of the step time into data wait / forward / backward / optimizer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from glioseg.errors import InputError
from glioseg.io_atomic import atomic_path
from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train import loop as train_loop
from glioseg.train.cases import channel_indices, forever, make_train_loader, split_cases
from glioseg.train.components import build_components, wrap
from glioseg.train.device_policy import choose_for_run

SECTIONS = ("data", "forward", "backward", "optimizer")


def _export_trace(prof: torch.profiler.profile, path: Path) -> None:
    with atomic_path(path) as tmp:
        prof.export_chrome_trace(str(tmp))


def profile_training(
    cfg: C.Config, run_dir: str | Path, steps: int = 4, warmup: int = 2, top: int = 15
) -> dict[str, Any]:
    """Profile ``steps`` training steps after ``warmup`` untimed ones; print and return the
    split ``{"data": s, "forward": s, "backward": s, "optimizer": s, "total": s,
    "trace": path, "top": [(name, self time s, calls), ...]}`` (rank 0's figures)."""
    if steps < 1 or warmup < 0:
        raise InputError(f"profile steps ({steps}) must be >= 1 and warmup ({warmup}) >= 0")
    run_dir = Path(run_dir)
    info = D.init(cfg.train.device, cfg.train.threads)
    live: dict[str, Any] = {}
    ok = False
    try:
        out = _profile(cfg, run_dir, info, steps, warmup, top, live)
        ok = True
        return out
    finally:
        D.shutdown(live, clean=ok)


def _profile(cfg: C.Config, run_dir: Path, info: D.DistInfo, steps: int, warmup: int, top: int,
             live: dict[str, Any]) -> dict[str, Any]:
    from glioseg.preprocess.cache import open_cache

    cases, _ = split_cases(open_cache(cfg.data.cache_dir), cfg.data.n_val, cfg.train.seed)
    cfg, _ = choose_for_run(cfg, info.device, main=info.is_main, share=D.broadcast_object)
    comp = build_components(cfg, info)
    wrap(comp, cfg, info)
    live["comp"] = comp
    batches = forever(make_train_loader(cfg, cases, info, 0))
    t = cfg.train
    channels = channel_indices(cfg.data.modalities)  # the cache holds every sequence

    def load() -> list[train_loop.Batch]:
        micro = [train_loop.to_batch(next(batches), info.device, t.channels_last)
                 for _ in range(t.grad_accum)]
        if channels != list(range(micro[0].image.shape[1])):
            micro = [train_loop.Batch(mb.image[:, channels], mb.target) for mb in micro]
        return micro

    def step(timer: train_loop.StepTimer | None) -> None:
        if timer is None:
            micro = load()
        else:
            with timer.section("data"):
                micro = load()
        train_loop.train_step(comp.net, micro, comp.loss_fn, comp.optimizer, comp.scaler, t.amp,
                     cfg.optim.grad_clip, timer=timer)

    for _ in range(warmup):
        step(None)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if info.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    timer = train_loop.StepTimer(info.device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(timer)
    total = time.perf_counter() - t0
    trace = run_dir / "profile" / f"trace_rank{info.rank}.json"
    _export_trace(prof, trace)
    # GPU kernels are "device" time (the older "cuda" names are gone from FunctionEventAvg)
    sort_key = "self_device_time_total" if info.device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    rows = sorted(averages, key=lambda e: getattr(e, sort_key), reverse=True)
    top_ops = [(e.key, getattr(e, sort_key) / 1e6, e.count) for e in rows
               if e.key not in SECTIONS and not e.key.startswith("ProfilerStep")][:top]
    split = {name: timer.totals.get(name, 0.0) for name in SECTIONS}
    if info.is_main:
        print(averages.table(sort_by=sort_key, row_limit=top))
        print(f"{steps} steps in {total:.2f} s ({total / steps:.2f} s/step; profiler overhead "
              f"included), {cfg.data.batch_size} x {list(cfg.patch_size)} patches, amp {t.amp}, "
              f"device {info.device}, world size {info.world_size}")
        for name in SECTIONS:
            print(f"  {name:<10} {split[name]:8.2f} s  {split[name] / total:6.1%}")
        print(f"Chrome trace: {trace}")
    return {**split, "total": total, "trace": str(trace), "top": top_ops}
