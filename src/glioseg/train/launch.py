"""Launching a training run, everything but the training loop: the config it runs (preset or
YAML, ``--set`` overrides, the run folder's own on ``--resume``), the cache it reads (a raw
data folder is preprocessed first), the sequences a fine-tuning takes, and the relaunch of the
command as torchrun workers (``torchrun_command``, ``torchrun_env``).

``launch_training`` is what ``glioseg train``, ``finetune`` and ``pretrain`` share; the
commands only turn their options into its arguments.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from glioseg.train.errors import TrainError, interrupted

Log = Callable[[str], None]

def resolve_config(out: Path, data: Path | None, config: str | None, sets: Sequence[str], *,
                   resume: bool = False, spacing: float | None = None,
                   modalities: Sequence[str] | None = None, labels: str | None = None) -> Any:
    """The run's config (``glioseg.train.config.Config``): ``config`` (a preset or YAML file;
    default ``small``, or ``OUT/config.yaml`` on ``--resume`` when there is one) with the
    overrides ``sets``, reading the cache that ``data`` is or is preprocessed into
    (``prepare_data``; ``labels``: the declared label scheme of raw data's segmentations).

    On ``--resume`` with another ``--config`` and no ``data``, the run's saved data
    (``OUT/config.yaml``'s ``data.cache_dir``) is kept.

    Raises:
        TrainError: ``--resume`` of a folder that holds no run; no data given and none in the
            config.
        ConfigError: a bad config file (naming it) or ``--set`` override (naming it).
    """
    from glioseg.train import config as C

    saved = out / "config.yaml"
    if resume and not saved.is_file() and not _has_checkpoint(out):
        what = "no such folder" if not out.exists() else "no config.yaml or checkpoint in it"
        raise TrainError(f"{out}: no run to resume ({what}); start one without --resume "
                         "(--data CACHE_OR_DATA_DIR)")
    base = config
    if base is None:
        base = str(saved) if resume and saved.is_file() else "small"
    sets = list(sets)
    if data is not None:
        C.load_config(base, sets, overrides_from="--set")  # a bad --set fails before the data
        cache = prepare_data(data, out, spacing=spacing, modalities=modalities, labels=labels)
        sets.append(f"data.cache_dir={cache.resolve()}")
    cfg = C.load_config(base, sets, overrides_from="--set")
    if not cfg.data.cache_dir and resume and saved.is_file():
        kept = C.load_config(saved).data.cache_dir
        if kept:
            cfg = C.replace(cfg, data=dataclasses.replace(cfg.data, cache_dir=kept))
    if not cfg.data.cache_dir:
        raise TrainError("no data: pass --data CACHE_OR_DATA_DIR (or --resume a run that has one)")
    return cfg


def _has_checkpoint(out: Path) -> bool:
    from glioseg.train.checkpoint import LAST, PREVIOUS

    return any((out / name).exists() for name in (LAST, PREVIOUS))


def relaunch(cfg: Any, out: Path, *, resume: bool = False, nproc: int = 1, nnodes: int = 1,
             node_rank: int = 0, rdzv_endpoint: str | None = None, max_restarts: int = 0,
             profile: bool = False, profile_steps: int = 4) -> int:
    """Run ``glioseg train`` on ``cfg`` as ``nproc`` torchrun workers on this node; returns
    torchrun's exit status. The workers read ``OUT/launch.yaml``, which one launcher writes:
    node 0's. The workers of every node start only once every node's agent joined the
    rendezvous, node 0's after it wrote the file.

    A signal that stops the launcher (Ctrl-C, a scheduler's SIGTERM) is passed on to torchrun,
    which stops its workers and waits for them (``run_forwarding_signals``); the launcher then
    raises ``KeyboardInterrupt`` naming the last checkpoint (``errors.interrupted``).
    """
    from glioseg.train import config as C

    out.mkdir(parents=True, exist_ok=True)
    launch = out / "launch.yaml"
    if node_rank == 0:
        C.dump_config(cfg, launch)
    args = ["--out", str(out), "--config", str(launch)]
    args += ["--resume"] if resume else []
    args += ["--profile", "--profile-steps", str(profile_steps)] if profile else []
    cmd = torchrun_command(args, nproc=nproc, nnodes=nnodes, node_rank=node_rank,
                           rdzv_endpoint=rdzv_endpoint, max_restarts=max_restarts,
                           run_id=out.resolve().name)
    code, signals = run_forwarding_signals(cmd, torchrun_env(nnodes))
    if signals and code != 0:
        raise interrupted(out, None, last_checkpoint(out))
    return code


FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
"""The signals the launcher passes on to torchrun: those its agent stops the workers on
(``TORCHELASTIC_SIGNALS_TO_HANDLE``'s default)."""


def run_forwarding_signals(cmd: Sequence[str], env: Mapping[str, str]) -> tuple[int, list[str]]:
    """Run ``cmd`` (torchrun) and wait for it, passing on to it every ``FORWARDED_SIGNALS``
    signal this process receives meanwhile; returns its exit status and the names of the
    signals passed on. The previous handlers are restored before returning.

    torchrun's agent stops its workers on such a signal: it sends it on to each worker's own
    session, waits for them (``TORCH_ELASTIC_SHUTDOWN_TIMEOUT``, 30 s) and kills what is
    left; a second signal cuts that wait short (it then stops the workers with SIGTERM). So
    torchrun runs in a process group of its own: the terminal's Ctrl-C reaches it once, from
    here, and not a second time from the terminal. The workers never got the terminal's
    signals (torchrun starts each in a new session). Signals ignored here (``nohup``) stay
    ignored; outside the main thread no handler can be set and torchrun is only waited for.
    """
    import signal
    import subprocess
    import sys
    import threading

    received: list[str] = []
    pending: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if not received:
            sys.stderr.write(f"\n{name}: stopping the workers (torchrun waits for them to "
                             "exit)\n")
        received.append(name)
        if proc is None:
            pending.append(signum)
        else:
            proc.send_signal(signum)

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for name in FORWARDED_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None and signal.getsignal(sig) not in (signal.SIG_IGN, None):
                previous[sig] = signal.signal(sig, forward)
    try:
        proc = subprocess.Popen(list(cmd), env=dict(env), process_group=0)
        while pending:  # received before torchrun existed
            proc.send_signal(pending.pop(0))
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code, received


def last_checkpoint(run_dir: Path) -> tuple[int, str] | None:
    """(step, file name) of the checkpoint a resume of ``run_dir`` would take; None when there
    is none that can be read."""
    from glioseg.train.checkpoint import CheckpointError, choose_resume

    try:
        choice = choose_resume(run_dir)
    except CheckpointError:
        return None
    return None if choice is None else (choice.step, choice.path.name)


def launch_training(out: Path, data: Path | None, config: str | None, sets: Sequence[str], *,
                    resume: bool = False, nproc: int = 1, nnodes: int = 1, node_rank: int = 0,
                    rdzv_endpoint: str | None = None, max_restarts: int = 0,
                    spacing: float | None = None, profile: bool = False,
                    profile_steps: int = 4, modalities: Sequence[str] | None = None,
                    labels: str | None = None, log: Log = print) -> int | None:
    """What ``train``, ``finetune`` and ``pretrain`` share: resolve the config, prepare the
    data, then run here (``fit``, or ``profile_training`` with ``profile``) or, with several
    processes or nodes, relaunch as torchrun workers (``relaunch``).

    Returns:
        torchrun's exit status when relaunched; None when the run ran in this process (its
        summary then goes to ``log`` on rank 0).
    """
    cfg = resolve_config(out, data, config, sets, resume=resume, spacing=spacing,
                         modalities=modalities, labels=labels)
    if nproc > 1 or nnodes > 1:
        done = finished_run(cfg, out) if nnodes == 1 and not profile else None
        if done is not None:  # nothing to train: no workers, nothing written
            for line in summary_lines(done, out):
                log(line)
            return 0
        return relaunch(cfg, out, resume=resume, nproc=nproc, nnodes=nnodes,
                        node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                        max_restarts=max_restarts, profile=profile, profile_steps=profile_steps)
    if profile:
        from glioseg.train.profile import profile_training

        profile_training(cfg, out, steps=profile_steps)
        return None
    from glioseg.train.fit import fit

    summary = fit(cfg, out, resume=resume)
    if summary.get("rank", 0) == 0:
        for line in summary_lines(summary, out):
            log(line)
    return None


def finished_run(cfg: Any, out: Path) -> dict[str, Any] | None:
    """The summary of the run in ``out`` when its checkpoint is already at ``train.steps``
    (as ``fit`` returns it: ``"finished": True``), else None. Refuses another config as
    ``fit`` does."""
    from glioseg.train.fit import _resume_point, finished_summary

    state = _resume_point(out, cfg, False)
    return finished_summary(state, state["resume"]["changed"] if state else {},
                            cfg.train.steps)


def summary_lines(summary: Mapping[str, Any], out: Path) -> list[str]:
    """What a finished run prints: the last validation Dice, the best and how validation
    predicted (how ``glioseg predict`` repeats it); for a pretraining its last loss and the
    model to fine-tune; the step alone otherwise. A run that was already finished says so
    and how to train it longer."""
    if summary.get("finished"):
        changed = summary.get("changed") or []
        ignored = (f"; the options that differ from its checkpoint ({', '.join(changed)}) "
                   "were not applied") if changed else ""
        return [f"{out}: the run is already finished at step {summary['step']} (train.steps "
                f"{summary['steps']}): nothing was trained or rewritten{ignored}; to train it "
                f"longer: glioseg train --out {out} --resume --set train.steps=N (N > "
                f"{summary['step']}); for a new run, use another --out"]
    if summary.get("task") == "genesis":
        loss = summary.get("last_loss")
        loss_text = f", restoration loss {loss:.4f}" if loss is not None else ""
        return [f"pretraining finished at step {summary['step']}{loss_text}; model in "
                f"{out / 'last'} (fine-tune it: glioseg finetune --from {out / 'last'} "
                "--data LABELLED_DATA --out RUN)"]
    if not summary.get("n_cases"):
        return [f"step {summary['step']}; run in {out}"]
    pipeline = summary.get("val_pipeline", "")
    return [f"step {summary['step']}: validation Dice WT {summary['dice_WT']:.3f} "
            f"TC {summary['dice_TC']:.3f} ET {summary['dice_ET']:.3f}; best mean "
            f"{summary['best_metric']:.3f} at step {summary['best_step']}; run in {out}",
            f"validated with: {pipeline}" + (
                " (as glioseg predict does by default)" if pipeline == "whole volume" else
                " (glioseg predict --mode sliding with this ROI and overlap repeats it)")]


# --------------------------------------------------------------------------- data

def is_cache(path: str | Path) -> bool:
    """Whether ``path`` is a preprocessed cache (has ``dataset.json``)."""
    return (Path(path) / "dataset.json").is_file()


def prepare_data(data: str | Path, run_dir: str | Path, spacing: float | None = None,
                 workers: int = 1, wait_s: float = 7200.0,
                 modalities: Sequence[str] | None = None, labels: str | None = None) -> Path:
    """The cache to train on: ``data`` itself when it is a cache, else ``RUN_DIR/cache``
    built from the raw data folder (``glioseg.preprocess.run.preprocess_dir``; resumable).
    ``modalities``: the sequences the cases must have (a site with fewer sequences); None
    needs all four. ``labels``: the label scheme the segmentations are in when it is not what
    their file names say (``preprocess --labels``; refused for a cache, which recorded its own).

    Under torchrun only rank 0 preprocesses; the other ranks wait for its ``dataset.json``.
    """
    data, run_dir = Path(data), Path(run_dir)
    if is_cache(data):
        if labels is not None:
            raise TrainError(f"--labels {labels}: --data {data} is a preprocessed cache; its "
                             "label scheme was fixed when it was built (glioseg preprocess "
                             "--labels)")
        return data
    if not data.exists():
        raise TrainError(f"--data {data}: no such folder")
    cache = run_dir / "cache"
    from glioseg.train.distributed import env_ranks

    rank = env_ranks()[0]
    if rank == 0:
        from glioseg.preprocess.run import preprocess_dir

        run_dir.mkdir(parents=True, exist_ok=True)
        preprocess_dir(data, cache, spacing=spacing, workers=workers, modalities=modalities,
                       label_scheme=labels)
        return cache
    t0 = time.monotonic()
    while not is_cache(cache):
        if time.monotonic() - t0 > wait_s:
            raise TrainError(f"{cache}: rank {rank} waited {wait_s:.0f} s for rank 0 to "
                             "preprocess the data")
        time.sleep(2.0)
    return cache


def data_modalities(data: str | Path) -> tuple[list[str], str]:
    """The sequences ``data`` offers, canonical names in ``MODALITIES`` order, and where they
    were read (for messages): for a cache, its ``dataset.json`` ``selected_modalities`` (all
    four for older caches) less any a cached case lacks; for a raw data folder, the sequences
    every case has a file for.

    Raises:
        TrainError: no such folder, or no sequence common to every case.
    """
    from glioseg.data.labels import MODALITIES

    data = Path(data)
    if is_cache(data):
        from glioseg.preprocess.cache import open_cache, read_dataset_json

        have = set(read_dataset_json(data).get("selected_modalities", MODALITIES))
        for case in open_cache(data, validate=False):
            have &= set(case.modalities)
        where = f"{data / 'dataset.json'} selected_modalities"
    else:
        if not data.exists():
            raise TrainError(f"--data {data}: no such folder")
        from glioseg.data.cases import discover

        have = set(MODALITIES)
        for case in discover(data):
            have &= set(case.images)
        where = f"the sequences every case of {data} has"
    found = [m for m in MODALITIES if m in have]
    if not found:
        raise TrainError(f"--data {data}: no sequence is common to every case ({where}); "
                         "name the ones to use with --modalities")
    return found, where


def finetune_modalities(source: Sequence[str], available: Sequence[str]) -> list[str]:
    """The sequences a fine-tuning run takes when none are named: the source model's, in its
    order, when the data has every one of them (its first layer is then loaded unchanged);
    otherwise the data's own ``available`` ones, onto which the source's input filters are
    adapted by name (``glioseg.model.weights.adapt_input_filters``)."""
    if set(source) <= set(available):
        return list(source)
    return list(available)



def finetune_sequences(card: Any, modalities: str | None, data: Path | None, resume: bool,
                       log: Log = print) -> list[str] | None:
    """The fine-tuning run's sequences: ``--modalities``; else read from ``--data``
    (``finetune_modalities``: the card's when the data has them all, else the data's, saying
    so through ``log``); else the card's, or None on ``--resume`` (the run's config keeps its
    own)."""
    from glioseg.model.weights import canonical_modality

    if modalities:
        return [canonical_modality(m) for m in modalities.split(",") if m.strip()]
    source = [canonical_modality(m) for m in card.modalities]
    if data is None:
        return None if resume else source
    available, where = data_modalities(data)
    mods = finetune_modalities(source, available)
    if mods != source:
        log(f"sequences: {', '.join(mods)}, read from the data ({where}); the pretrained "
            f"model takes {', '.join(source)}: its input filters are adapted by name "
            "(see the load report; --modalities chooses others)")
    return mods


_NOT_FROM_CARD = ("in_channels", "out_channels", "deep_supervision", "patch_size",
                  "gradient_checkpointing")


def card_model_overrides(card: Any) -> list[str]:
    """``model.*`` overrides giving the pretrained model's architecture (its weights load only
    into a network of the same shape), and its training patch size: fine-tuning on smaller
    patches than the model learnt on lowered target Dice in the label-efficiency study
    (instance-norm statistics of small tumour-centred patches differ from whole-volume ones).
    Inputs, outputs and deep supervision stay the fine-tuning run's own; ``--set`` wins."""
    model = dict(card.model)
    sets = [f"model.{k}={json.dumps(v)}" for k, v in model.items() if k not in _NOT_FROM_CARD]
    if model.get("patch_size"):
        sets.append(f"data.patch_size={json.dumps(list(model['patch_size']))}")
    return sets


def finetune_overrides(card: Any, init_from: Path, *, strategy: str, layer_decay: float,
                       new_head: bool, modalities: Sequence[str] | None, sets: Sequence[str],
                       resume: bool) -> list[str]:
    """The overrides of a fine-tuning run: the card's architecture (not on ``--resume``: the
    run's config has it), then the ``transfer.*`` keys and sequences, then ``--set``."""
    out = [f"transfer.init_from={init_from.resolve()}", f"transfer.strategy={strategy}",
           f"transfer.layer_decay={layer_decay}", f"transfer.new_head={new_head}",
           *([f"data.modalities=[{','.join(modalities)}]"] if modalities else []), *sets]
    return out if resume else card_model_overrides(card) + out


def card_spacing(card: Any, data: Path | None) -> float | None:
    """The spacing (mm) raw ``--data`` is resampled to for fine-tuning: the model card's, so
    the new site is seen at the voxel size the model learnt at; None for a cache (already
    resampled) or a card without one."""
    if data is None or (data / "dataset.json").is_file():
        return None
    sp = (card.preprocessing or {}).get("spacing")
    return float(sp[0]) if sp else None


def pretrain_overrides(modalities: str | None, sets: Sequence[str]) -> tuple[list[str],
                                                                           list[str] | None]:
    """The overrides of a self-supervised pretraining run (``train.task=genesis``, then the
    named sequences, then ``--set``) and those sequences (None: the config's)."""
    out = ["train.task=genesis", *sets]
    if not modalities:
        return out, None
    from glioseg.model.weights import canonical_modality

    mods = [canonical_modality(m) for m in modalities.split(",") if m.strip()]
    out.insert(1, f"data.modalities=[{','.join(mods)}]")
    return out, mods


# --------------------------------------------------------------------------- torchrun

def torchrun_command(
    train_args: Sequence[str],
    *,
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    max_restarts: int = 0,
    run_id: str = "glioseg",
) -> list[str]:
    """The command that runs ``glioseg train <train_args>`` as ``nproc`` workers per node under
    torchrun (``python -m torch.distributed.run``): standalone on one node, c10d rendezvous at
    ``rdzv_endpoint`` across ``nnodes`` nodes. ``--max-restarts`` restarts crashed workers,
    which resume from the run folder's last checkpoint."""
    import sys

    if nproc < 1 or nnodes < 1:
        raise TrainError(f"--nproc ({nproc}) and --nnodes ({nnodes}) must be >= 1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--max-restarts={max_restarts}"]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        if rdzv_endpoint is None:
            raise TrainError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (a node all reach)")
        if not 0 <= node_rank < nnodes:
            raise TrainError(f"--node-rank {node_rank} is not in [0, {nnodes})")
        cmd += [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={run_id}"]
    return [*cmd, "-m", "glioseg", "train", *train_args]


def torchrun_env(nnodes: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of ``torchrun_command``: across several nodes, a fresh rendezvous store
    per round (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``), so that workers restarted by
    ``--max-restarts`` never read a dead peer's address from the previous round (one node
    separates the rounds itself: ``glioseg.train.distributed``)."""
    import os

    env = dict(os.environ if base is None else base)
    if nnodes > 1:
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return env

