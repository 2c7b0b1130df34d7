"""``glioseg bench train``: training throughput of a fixed model and patch size.

Measures the training step of ``glioseg.train.loop`` (the one training runs) on

- synthetic in-memory batches (random images and region targets made once): the compute alone;
- the real patch loader (``glioseg.train.data.make_loader``) when a cache is given: compute plus
  whatever time the step waits for data (the data-wait fraction);

and prints steps/s, patches/s, voxels/s, the data-wait fraction and the peak memory (RSS of
the process; CUDA max allocated on GPU). ``--amp`` compares precisions (``bf16,none``).

Precision, memory format and compilation ``auto`` are resolved as a training run resolves them
(``glioseg.train.device_policy``: a timed probe on a GPU), and printed. The steps run as
training runs them: batches prefetched to the device, no host synchronisation inside the step.
With ``reference`` (default on a GPU) the reference loop's rows follow in the same run
(``glioseg.bench.train_reference``: nnU-Net's PlainConvUNet fp16 + GradScaler and bf16, MONAI's
DynUNet bf16, in a plain PyTorch loop) with glioseg's ratio to the best of them.

``--nproc N`` runs the same measurement under torchrun with N processes (gloo on CPU, NCCL on
GPU) after a one-process run and prints the scaling efficiency
``throughput(N) / (N x throughput(1))`` (global patches/s). Both runs give each process the same
CPU threads (``cores // N`` unless ``train.threads`` is set), so the figure measures what data
parallelism costs (gradient all-reduce, waiting for the slowest rank, shared memory bandwidth)
rather than how well one process's intra-op threading uses the cores; plain
``glioseg bench train`` (no ``--nproc``) gives one process all the cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from glioseg.bench import BenchError, BenchRunFailed


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic_batches(n: int, batch: int, patch: Sequence[int], seed: int,
                       channels: int = 4) -> list[Any]:
    """``n`` batches ``(image (B, C, *patch), regions (B, 3, *patch))`` made once, in memory;
    the regions are nested boxes (WT contains TC contains ET) so the loss is realistic."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        image = torch.randn(batch, channels, *patch, generator=g)
        target = torch.zeros(batch, 3, *patch)
        for r, frac in enumerate((0.5, 0.3, 0.15)):
            lo = [int(s * (0.5 - frac / 2)) for s in patch]
            hi = [int(s * (0.5 + frac / 2)) for s in patch]
            target[:, r, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
        out.append((image, target))
    return out


def _batch_source(cfg: Any, cache: str | None, info: Any) -> Any:
    """Loader items of the real loader on ``cache``, or a pool of synthetic batches made once
    (pinned on a GPU, as the loader's are), endless, prefetched to the device
    (``glioseg.train.prefetch``) as training does."""
    from glioseg.train.cases import forever, make_train_loader
    from glioseg.train.prefetch import prefetch_batches

    if cache:
        from glioseg.preprocess.cache import open_cache

        cases = [c for c in open_cache(cache) if c.meta.get("has_labels")]
        items: Any = forever(make_train_loader(cfg, cases, info, 0))
    else:
        pool = _synthetic_batches(4, cfg.data.batch_size, cfg.patch_size,
                                  cfg.train.seed + info.rank, len(cfg.data.modalities))
        if info.device.type == "cuda":  # as the loader's batches: pinned, copied non-blocking
            pool = [(image.pin_memory(), target.pin_memory()) for image, target in pool]
        items = (pool[i % len(pool)] for i in range(10**9))
    return prefetch_batches(items, info.device, cfg.train.channels_last)


def _run_steps(cfg: Any, comp: Any, source: Any, info: Any, steps: int,
               warmup: int) -> tuple[float, float, float, Any]:
    """Run ``warmup`` then ``steps`` training steps; (elapsed s, data-wait s, CPU s of the
    timed steps, their ``StatsRead``). The step's figures stay on the device until the end."""
    from glioseg.train import distributed as D
    from glioseg.train import loop as train_loop
    from glioseg.train.cases import channel_indices
    from glioseg.train.device_step import StepStats

    channels = channel_indices(cfg.data.modalities)
    stats = StepStats(info.device)
    wait = t_start = cpu0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
                # the timed steps' peak, as the reference rows measure it (not compilation's
                # or cuDNN's algorithm search's during the warm-up)
                torch.cuda.reset_peak_memory_stats(info.device)
            D.barrier()
            stats.read()
            t_start, wait, cpu0 = time.perf_counter(), 0.0, time.process_time()
        t0 = time.perf_counter()
        micro = [next(source) for _ in range(cfg.train.grad_accum)]
        if channels != list(range(micro[0].image.shape[1])):  # the cache holds every sequence
            micro = [train_loop.Batch(mb.image[:, channels], mb.target) for mb in micro]
        wait += time.perf_counter() - t0
        stats.add(train_loop.train_step(comp.net, micro, comp.loss_fn, comp.optimizer, comp.scaler,
                               cfg.train.amp, cfg.optim.grad_clip))
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    elapsed = time.perf_counter() - t_start
    return elapsed, wait, time.process_time() - cpu0, stats.read()


def resolve_for_bench(cfg: Any, amp: str, info: Any, memo: dict[str, Any] | None = None) -> Any:
    """``cfg`` with ``train.amp = amp`` and every ``auto`` of precision, layout and compile
    resolved for this device (``glioseg.train.device_policy``; printed by rank 0; one probe
    per precision asked for when ``memo`` is kept across calls)."""
    from glioseg.train import config as C
    from glioseg.train import distributed as D
    from glioseg.train.device_policy import DeviceChoice, choose_for_run

    cfg = C.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp))
    if memo is not None and amp in memo:
        return DeviceChoice.from_json(memo[amp]).apply(cfg)
    cfg, choice = choose_for_run(cfg, info.device, None, main=info.is_main,
                                 share=D.broadcast_object,
                                 say=print if info.is_main else (lambda _: None))
    if memo is not None:
        memo[amp] = choice.to_json()
    return cfg


def measure(
    cfg: Any, *, steps: int, warmup: int, amp: str, cache: str | None, info: Any,
    memo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps (after ``warmup``) on this rank; returns per-rank figures
    reduced over ranks (throughput summed, fractions and times averaged, memory max)."""
    from glioseg.train import distributed as D
    from glioseg.train.components import build_components, wrap

    cfg = resolve_for_bench(cfg, amp, info, memo)
    comp = build_components(cfg, info)
    wrap(comp, cfg, info)
    patch, b = cfg.patch_size, cfg.data.batch_size
    source = _batch_source(cfg, cache, info)
    elapsed, wait, cpu, read = _run_steps(cfg, comp, source, info, steps, warmup)
    patches = steps * b * cfg.train.grad_accum
    voxels = patches * patch[0] * patch[1] * patch[2]
    stats = torch.tensor([patches / elapsed, voxels / elapsed, wait / elapsed, elapsed,
                          cpu / steps], dtype=torch.float64)
    mem = torch.tensor([_peak_rss_mb(), torch.cuda.max_memory_allocated(info.device) / 2**20
                        if info.device.type == "cuda" else 0.0], dtype=torch.float64)
    if D.is_initialized():
        dev = D.collective_device()
        stats, mem = stats.to(dev), mem.to(dev)
        D.all_reduce_sum(stats)
        torch.distributed.all_reduce(mem, op=torch.distributed.ReduceOp.MAX)
        stats, mem = stats.cpu(), mem.cpu()
        stats[2:] /= info.world_size  # wait fraction, time and CPU s per step: rank means
    return {
        "world_size": info.world_size, "device": str(info.device), "amp": cfg.train.amp,
        "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "source": "loader" if cache else "synthetic", "patch": list(patch), "batch": b,
        "params": sum(p.numel() for p in comp.model.parameters()),
        "threads": torch.get_num_threads(), "steps_per_s": steps / float(stats[3]),
        "patches_per_s": float(stats[0]), "voxels_per_s": float(stats[1]),
        "data_wait": float(stats[2]), "cpu_s_per_step": float(stats[4]),
        "peak_rss_mb": float(mem[0]), "cuda_max_allocated_mb": float(mem[1]),
        "skipped_steps": read.skipped,
    }


def _config(preset: str, overrides: Sequence[str]) -> Any:
    from glioseg.train import config as C

    return C.load_config(preset, list(overrides))


def run_local(preset: str, overrides: Sequence[str], amps: Sequence[str], steps: int,
              warmup: int, cache: str | None, show: bool = False) -> list[dict[str, Any]]:
    """This process (or this torchrun rank): one measurement per precision and data source;
    with ``show``, rank 0 prints each row as soon as it is measured (a long run cut short
    keeps the rows it finished)."""
    from glioseg.train import distributed as D

    cfg = _config(preset, overrides)
    info = D.init(cfg.train.device, cfg.train.threads)
    results = []
    memo: dict[str, Any] = {}  # one device choice per precision asked for
    try:
        for amp in amps:
            for src in ([None, cache] if cache else [None]):
                results.append(measure(cfg, steps=steps, warmup=warmup, amp=amp, cache=src,
                                       info=info, memo=memo))
                if show and info.is_main:
                    if len(results) == 1:
                        _print_head()
                    _print_row(results[-1])
    finally:
        D.shutdown({}, clean=True)
    return results if info.is_main else []


def _launch(nproc: int, args: list[str], threads: int) -> list[dict[str, Any]]:
    """Re-run this benchmark under torchrun with ``nproc`` processes of ``threads`` OpenMP
    threads each (unless ``OMP_NUM_THREADS`` is set); read rank 0's JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "glioseg.bench.train", *args,
               "--json", str(out)]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(threads))})
        if proc.returncode != 0 or not out.is_file():
            raise BenchRunFailed(f"torchrun with {nproc} processes failed (exit {proc.returncode})")
        return json.loads(out.read_text())


def _print_head() -> None:
    print(f"{'procs':>5} {'thr':>3} {'device':>7} {'amp':>5} {'data':>9} {'steps/s':>8} "
          f"{'patches/s':>9} "
          f"{'Mvox/s':>8} {'wait':>6} {'CPU s/step':>10} {'RSS MB':>8} {'CUDA MB':>8} "
          "layout compiled", flush=True)


def _print_row(r: dict[str, Any]) -> None:
    print(f"{r['world_size']:>5} {r['threads']:>3} {r['device'][:7]:>7} {r['amp']:>5} "
          f"{r['source']:>9} "
          f"{r['steps_per_s']:8.3f} {r['patches_per_s']:9.2f} {r['voxels_per_s'] / 1e6:8.2f} "
          f"{r['data_wait']:6.1%} {r['cpu_s_per_step']:10.2f} {r['peak_rss_mb']:8.0f} "
          f"{r['cuda_max_allocated_mb']:8.0f} {'cl3d' if r['channels_last'] else 'ncdhw':>6} "
          f"{'yes' if r['compile'] else 'no':>8}", flush=True)


def _scaling(rows: list[dict[str, Any]], nproc: int) -> None:
    """Add and print the scaling efficiency of each ``nproc``-process row."""
    for r in rows:
        if r["world_size"] == nproc:
            base = [q for q in rows if q["world_size"] == 1 and q["amp"] == r["amp"]
                    and q["source"] == r["source"]][0]
            eff = r["patches_per_s"] / (nproc * base["patches_per_s"])
            r["scaling_efficiency"] = eff
            print(f"scaling efficiency {r['amp']} {r['source']}: {eff:.2f} "
                  f"({r['patches_per_s']:.2f} / ({nproc} x {base['patches_per_s']:.2f}) "
                  "patches/s)")


def _reference(preset: str, overrides: Sequence[str], rows: list[dict[str, Any]], steps: int,
               warmup: int) -> dict[str, Any]:
    """Time the reference loop's rows (``glioseg.bench.train_reference``) on the config's
    device, model topology, patch and batch, and print glioseg's ratio to the best one."""
    from glioseg.bench.train_reference import print_comparison, reference_rows
    from glioseg.train import distributed as D

    cfg = _config(preset, overrides)
    device = D.pick_device(cfg.train.device)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    refs = reference_rows(cfg.model, cfg.patch_size, cfg.data.batch_size, device, steps,
                          warmup, show=True)
    return {"rows": refs, **print_comparison(rows, refs)}


def _worker_args(preset: str, overrides: Sequence[str], amps: Sequence[str], steps: int,
                 warmup: int, cache: str | None, threads: int) -> list[str]:
    """The command line of ``main`` for the torchrun workers (``threads`` each unless the
    overrides set ``train.threads``)."""
    args = [preset, "--steps", str(steps), "--warmup", str(warmup), "--amp", ",".join(amps)]
    for o in overrides:
        args += ["--set", o]
    if cache:
        args += ["--cache", str(cache)]
    if not any(o.split("=", 1)[0].strip() == "train.threads" for o in overrides):
        args += ["--set", f"train.threads={threads}"]
    return args


def bench_train(
    preset: str = "small",
    overrides: Sequence[str] = (),
    amps: Sequence[str] = ("bf16", "none"),
    steps: int = 20,
    warmup: int = 3,
    cache: str | None = None,
    nproc: int = 1,
    device: str | None = None,
    reference: bool | None = None,
) -> list[dict[str, Any]]:
    """Run and print the benchmark (see the module docstring); returns the rows (with
    ``reference``, the reference loop's rows follow, ``source: reference``, and glioseg's
    best synthetic row gets ``ratio_to_best_reference``).

    Args:
        preset: config preset or YAML giving the model and patch size.
        overrides: ``key=value`` config overrides (e.g. ``data.batch_size=4``).
        amps: precisions to compare (``bf16``, ``fp16``, ``none``).
        steps, warmup: timed steps and untimed steps before them.
        cache: a preprocessed cache: also measure with the real loader.
        nproc: also run under torchrun with this many processes (> 1) and print the scaling.
        device: ``cpu``, ``cuda`` or ``auto`` (``train.device``); None: the config's.
        reference: also time the reference loop (nnU-Net's PlainConvUNet, MONAI's DynUNet;
            ``glioseg.bench.train_reference``) and print glioseg's ratio to its best row;
            None: on a GPU only.
    """
    if device is not None:
        overrides = [*overrides, f"train.device={device}"]
    if steps < 1 or warmup < 0:
        raise BenchError(f"steps ({steps}) must be >= 1 and warmup ({warmup}) >= 0")
    for amp in amps:
        if amp not in ("auto", "bf16", "fp16", "none"):
            raise BenchError(f"--amp {amp!r}: expected auto, bf16, fp16 or none")
    if nproc > 1:
        # the one-process baseline runs as a subprocess too, so both see the same environment,
        # and with the thread share of one of the N processes (see the module docstring)
        per = max(1, (os.cpu_count() or 1) // nproc)
        args = _worker_args(preset, overrides, amps, steps, warmup, cache, per)
        rows = _launch(1, args, per) + _launch(nproc, args, per)
        _print_head()
        for r in rows:
            _print_row(r)
        _scaling(rows, nproc)
    else:
        rows = run_local(preset, overrides, amps, steps, warmup, cache, show=True)
    if reference is None:
        reference = any(r["device"].startswith("cuda") for r in rows)
    if reference:
        comparison = _reference(preset, overrides, rows, steps, warmup)
        if comparison["ratio"] is not None:
            comparison["glioseg"]["ratio_to_best_reference"] = comparison["ratio"]
        rows = rows + [{**r, "source": "reference"} for r in comparison["rows"]]
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Worker entry under torchrun: ``python -m glioseg.bench.train PRESET ... --json OUT``."""
    import argparse

    p = argparse.ArgumentParser(prog="glioseg.bench.train")
    p.add_argument("preset")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--amp", default="bf16,none")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--cache", default=None)
    p.add_argument("--json", required=True)
    a = p.parse_args(argv)
    rows = run_local(a.preset, a.set, a.amp.split(","), a.steps, a.warmup, a.cache)
    if rows:
        tmp = Path(a.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(a.json)


if __name__ == "__main__":
    main()
