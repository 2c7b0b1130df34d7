"""Per-device choice of precision, memory format and compilation (``train.amp``,
``train.channels_last``, ``train.compile`` set to ``auto``).

``auto`` means the fastest numerically safe setting on the device the run trains on:

- **GPU**: a short timed probe of the run's own step (``glioseg.train.loop.train_step`` on the
  run's model, optimiser, loss, patch and batch; random data) for every combination left open:
  fp16 (always with a GradScaler: fp16 without loss scaling underflows small gradients, so a
  trial of fp16 without one is never chosen) and bf16 (where the GPU has it), channels_last
  on and off. A trial whose loss or gradient is not finite, or that fails (out of memory),
  is ruled out; the fastest remaining one is chosen. Compilation is not timed (it costs a
  minute or more per trial): ``auto`` compiles runs of at least ``COMPILE_MIN_STEPS`` steps.
- **CPU**: rules, no probe: bf16 only where it is native (AVX-512 BF16 / AMX), else float32
  (``glioseg.train.loop.resolve_amp``); channels_last on (the option's default); no compile.

On a GPU cuDNN also times its convolution algorithms once per input shape and keeps the
fastest (``cudnn.benchmark``; training patches have one shape, and the reference loop of
``glioseg bench train`` does the same); ``DeviceChoice.cudnn_benchmark`` records it.

Explicit values are kept as given (an explicit ``bf16`` on a GPU without it is an error, from
``resolve_amp``). What was chosen, and why (the probe's timings), is a ``DeviceChoice``: printed
and written to ``RUN_DIR/device_choice.json``; a run resumed on the same device with the same
requests reuses that record instead of probing again, so a run keeps its precision.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glioseg.errors import GliosegError
from glioseg.io_atomic import write_json

COMPILE_MIN_STEPS = 2000
"""``train.compile: auto`` compiles on a GPU from this many steps on: compiling the full preset
took about a minute on an H200, and the compiled step gained ~30% (16.7 -> 22-27 patches/s),
so a run needs ~1000 steps of 60 ms before compiling has paid for itself."""

PROBE_WARMUP = 2
"""Untimed steps of each probe trial (cuDNN's algorithm search runs in the first)."""
PROBE_STEPS = 3
"""Timed steps of each probe trial."""
RECORD = "device_choice.json"
"""The run folder's record of the choice."""

KEYS = ("amp", "channels_last", "compile")
"""The ``train`` keys this module resolves."""


class DevicePolicyError(GliosegError, RuntimeError):
    """No setting could be chosen (every probe trial failed or was not finite)."""


@dataclass(frozen=True)
class Candidate:
    """One setting the probe times."""

    amp: str
    """``fp16``, ``bf16`` or ``none``."""
    channels_last: bool
    scaler: bool
    """Whether the step runs with a GradScaler (the probe gives fp16 one, always)."""

    @property
    def label(self) -> str:
        return (f"{self.amp}{'+scaler' if self.scaler else ''} "
                f"{'channels_last' if self.channels_last else 'contiguous'}")


@dataclass(frozen=True)
class Trial:
    """A timed candidate: seconds per step (``inf`` when it failed) and whether every loss was
    finite."""

    candidate: Candidate
    seconds_per_step: float
    finite: bool
    error: str = ""

    def unsafe(self) -> str | None:
        """Why this trial may not be chosen, or None."""
        if self.error:
            return f"failed: {self.error}"
        if not self.finite:
            return "non-finite loss"
        if self.candidate.amp == "fp16" and not self.candidate.scaler:
            return "fp16 without a GradScaler"
        if not math.isfinite(self.seconds_per_step):
            return "no timing"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"amp": self.candidate.amp, "channels_last": self.candidate.channels_last,
                "scaler": self.candidate.scaler,
                "seconds_per_step": (round(self.seconds_per_step, 6)
                                     if math.isfinite(self.seconds_per_step) else None),
                "finite": self.finite, "error": self.error, "ruled_out": self.unsafe()}


@dataclass
class DeviceChoice:
    """What ``choose`` decided: the concrete values, what was asked, why, and the trials."""

    device: str
    amp: str
    channels_last: bool
    compile: bool
    requested: dict[str, Any]
    reasons: dict[str, str]
    trials: list[dict[str, Any]] = field(default_factory=list)
    cudnn_benchmark: bool = False

    def apply(self, cfg: Any) -> Any:
        """``cfg`` (a ``glioseg.train.config.Config``) with the chosen concrete values."""
        train = dataclasses.replace(cfg.train, amp=self.amp, channels_last=self.channels_last,
                                    compile=self.compile)
        return dataclasses.replace(cfg, train=train)

    def summary(self) -> str:
        """One line for the console."""
        parts = [f"{k} {getattr(self, k)} ({self.reasons[k]})" for k in KEYS]
        if self.cudnn_benchmark:
            parts.append("cudnn.benchmark on")
        return f"device {self.device}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DeviceChoice:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


# --------------------------------------------------------------------------- decisions

def configure_backends(device: torch.device) -> bool:
    """On a GPU let cuDNN time its algorithms per input shape (``cudnn.benchmark``); returns
    whether it is on. Process-wide: every rank calls it."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device.type == "cuda" and bool(torch.backends.cudnn.benchmark)


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:0 <GPU name>``: what a saved choice must match to be reused."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type


def gpu_has_bf16() -> bool:
    """Whether the GPU computes bf16 (Ampere and later)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def requested(train: Any) -> dict[str, Any]:
    """The values of ``KEYS`` in a ``TrainConfig`` (``auto`` or explicit)."""
    return {k: getattr(train, k) for k in KEYS}


def candidates(amp: str, channels_last: bool | str, bf16: bool) -> list[Candidate]:
    """The probe's grid on a GPU: every value left ``auto`` (fp16 with a scaler, bf16 when the
    GPU has it; channels_last off and on) times the explicit ones."""
    amps = (["fp16", "bf16"] if bf16 else ["fp16"]) if amp == "auto" else [amp]
    layouts = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [Candidate(a, c, a == "fp16") for a in amps for c in layouts]


def fastest_safe(trials: Sequence[Trial]) -> Trial:
    """The fastest trial that is numerically safe (``Trial.unsafe``)."""
    safe = [t for t in trials if t.unsafe() is None]
    if not safe:
        why = "; ".join(f"{t.candidate.label}: {t.unsafe()}" for t in trials)
        raise DevicePolicyError(f"no precision / layout could be used on this device ({why}); "
                                "set train.amp and train.channels_last explicitly")
    return min(safe, key=lambda t: t.seconds_per_step)


def compile_choice(value: bool | str, device: torch.device, steps: int) -> tuple[bool, str]:
    """(compile?, why) for ``train.compile``."""
    if value != "auto":
        return bool(value), "as set"
    if device.type != "cuda":
        return False, "auto: never on CPU"
    if steps >= COMPILE_MIN_STEPS:
        return True, f"auto: {steps} steps >= {COMPILE_MIN_STEPS}"
    return False, f"auto: {steps} steps < {COMPILE_MIN_STEPS}, compiling would not pay"


def cpu_choice(req: Mapping[str, Any], device: torch.device, steps: int) -> DeviceChoice:
    """The rules on a CPU (no probe)."""
    from glioseg.train.loop import native_bf16_cpu, resolve_amp

    amp = resolve_amp(req["amp"], device)
    if req["amp"] == "auto":
        why_amp = ("auto: native bf16 (AVX-512 BF16 / AMX)" if amp == "bf16"
                   else "auto: no native bf16 on this CPU, float32")
    else:
        why_amp = "as set" + ("" if amp != "bf16" or native_bf16_cpu() else ", emulated bf16")
    cl = True if req["channels_last"] == "auto" else bool(req["channels_last"])
    why_cl = "auto: channels_last on CPU" if req["channels_last"] == "auto" else "as set"
    comp, why_comp = compile_choice(req["compile"], device, steps)
    return DeviceChoice(device_name(device), amp, cl, comp, dict(req),
                        {"amp": why_amp, "channels_last": why_cl, "compile": why_comp})


def choose(req: Mapping[str, Any], device: torch.device, steps: int,
           measure: Callable[[Candidate], Trial] | None = None,
           bf16: bool | None = None) -> DeviceChoice:
    """The ``DeviceChoice`` for the requested values on ``device`` for a run of ``steps``.

    Args:
        req: ``{"amp", "channels_last", "compile"}`` as configured.
        measure: times one candidate (``probe_measure``); needed on a GPU when ``amp`` or
            ``channels_last`` is ``auto``.
        bf16: whether the GPU has bf16 (default: ``gpu_has_bf16()``).
    """
    if device.type != "cuda":
        return cpu_choice(req, device, steps)
    from glioseg.train.loop import resolve_amp

    comp, why_comp = compile_choice(req["compile"], device, steps)
    if req["amp"] != "auto":
        resolve_amp(req["amp"], device)  # an explicit bf16 the GPU lacks is an error
    if req["amp"] != "auto" and req["channels_last"] != "auto":
        return DeviceChoice(device_name(device), req["amp"], bool(req["channels_last"]), comp,
                            dict(req), {"amp": "as set", "channels_last": "as set",
                                        "compile": why_comp})
    if measure is None:
        raise DevicePolicyError("choosing on a GPU needs a probe (measure=)")
    if bf16 is None:
        bf16 = gpu_has_bf16()
    trials = [measure(c) for c in candidates(req["amp"], req["channels_last"], bf16)]
    best = fastest_safe(trials)
    why = f"fastest safe in the probe, {best.seconds_per_step * 1e3:.1f} ms/step"
    reasons = {k: (why if req[k] == "auto" else "as set") for k in ("amp", "channels_last")}
    reasons["compile"] = why_comp
    return DeviceChoice(device_name(device), best.candidate.amp, best.candidate.channels_last,
                        comp, dict(req), reasons, [t.to_json() for t in trials])


# --------------------------------------------------------------------------- the probe

def time_trial(candidate: Candidate, make_step: Callable[[Candidate], Callable[[], Any]], *,
               steps: int = PROBE_STEPS, warmup: int = PROBE_WARMUP,
               clock: Callable[[], float] = time.perf_counter,
               sync: Callable[[], None] = lambda: None) -> Trial:
    """Time ``steps`` calls of ``make_step(candidate)`` after ``warmup`` ones; each call returns
    the step's loss (a tensor, read once at the end: no host sync between steps) and the
    trial is finite when every loss is. A failure (e.g. out of memory) is a failed trial."""
    try:
        step = make_step(candidate)
        for _ in range(warmup):
            step()
        sync()
        t0 = clock()
        losses = [step() for _ in range(steps)]
        sync()
        seconds = (clock() - t0) / max(steps, 1)
        finite = all(bool(torch.isfinite(torch.as_tensor(v)).all()) for v in losses)
    except (RuntimeError, ValueError) as exc:
        return Trial(candidate, math.inf, False, f"{type(exc).__name__}: {str(exc)[:200]}")
    return Trial(candidate, seconds, finite)


def probe_step(cfg: Any, device: torch.device, candidate: Candidate) -> Callable[[], Any]:
    """One training step of ``cfg``'s model, optimiser and loss on random data, in
    ``candidate``'s precision and layout (a fresh model: the run's own is never touched).
    Returns a callable doing one step and returning its loss tensor."""
    from glioseg.model.registry import build_model
    from glioseg.train import loop as train_loop
    from glioseg.train.components import make_loss, make_optimizer

    torch.manual_seed(cfg.train.seed)
    fmt = train_loop.memory_format(candidate.channels_last)
    model = build_model(cfg.model).to(device).to(memory_format=fmt)
    optimizer = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=candidate.scaler)
    loss_fn = make_loss(cfg)  # the run's loss
    b, patch = cfg.data.batch_size, cfg.patch_size
    image = torch.randn(b, cfg.model.in_channels, *patch, device=device)
    target = (torch.rand(b, cfg.model.out_channels, *patch, device=device) > 0.7).float()
    batch = train_loop.Batch(image.contiguous(memory_format=fmt), target)

    def step() -> Any:
        return train_loop.train_step(model, [batch], loss_fn, optimizer, scaler, candidate.amp,
                                     cfg.optim.grad_clip).loss_t
    return step


def probe_measure(cfg: Any, device: torch.device, steps: int = PROBE_STEPS,
                  warmup: int = PROBE_WARMUP) -> Callable[[Candidate], Trial]:
    """``measure`` for ``choose``: times ``probe_step`` on ``device``, freeing the GPU memory
    of each trial before the next."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def measure(candidate: Candidate) -> Trial:
        try:
            return time_trial(candidate, lambda c: probe_step(cfg, device, c), steps=steps,
                              warmup=warmup, sync=sync)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return measure


# --------------------------------------------------------------------------- the run

def read_record(run_dir: str | Path) -> DeviceChoice | None:
    """The run folder's saved choice, or None (absent or unreadable)."""
    try:
        return DeviceChoice.from_json(json.loads((Path(run_dir) / RECORD).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write_record(run_dir: str | Path, choice: DeviceChoice) -> None:
    """Write ``RUN_DIR/device_choice.json``, unless the record there already holds these
    values for this device (a resume from the run's own ``config.yaml``, whose values were
    chosen then: the record keeps the probe that chose them)."""
    saved = read_record(run_dir)
    same = saved is not None and saved.device == choice.device and all(
        getattr(saved, k) == getattr(choice, k) for k in KEYS)
    if not same:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(run_dir) / RECORD, choice.to_json())


def trial_lines(choice: DeviceChoice) -> list[str]:
    """One printed line per probe trial: setting, ms per step, why it was ruled out."""
    lines = []
    for t in choice.trials:
        ms = ("-" if t["seconds_per_step"] is None
              else f"{t['seconds_per_step'] * 1e3:.1f} ms/step")
        lines.append(f"  probe {t['amp']}{'+scaler' if t['scaler'] else ''} "
                     f"channels_last={t['channels_last']}: {ms}"
                     + (f" (ruled out: {t['ruled_out']})" if t["ruled_out"] else ""))
    return lines


def choose_for_run(cfg: Any, device: torch.device, run_dir: str | Path | None = None, *,
                   main: bool = True, share: Callable[[Any], Any] = lambda x: x,
                   measure: Callable[[Candidate], Trial] | None = None,
                   say: Callable[[str], None] = print,
                   write: bool = True) -> tuple[Any, DeviceChoice]:
    """The config with concrete ``KEYS`` and the choice behind it, for a run in ``run_dir``.

    The main process decides (reusing ``run_dir``'s record when it was made on the same device
    for the same requests, else ``choose`` with the probe), prints the choice and, with
    ``write``, records it (``write_record``; a caller that must first check the folder writes
    later); ``share`` hands its decision to the other ranks (``distributed.broadcast_object``).
    """
    req = requested(cfg.train)
    benchmark = configure_backends(device)
    doc = None
    if main:
        saved = read_record(run_dir) if run_dir is not None else None
        if (saved is not None and saved.device == device_name(device)
                and saved.requested == req):
            choice = saved
            say(f"{choice.summary()} [reused {RECORD}]")
        else:
            if measure is None and device.type == "cuda":
                measure = probe_measure(cfg, device)
            choice = choose(req, device, cfg.train.steps, measure)
            choice.cudnn_benchmark = benchmark
            say(choice.summary())
            for line in trial_lines(choice):
                say(line)
            if run_dir is not None and write:
                write_record(run_dir, choice)
        doc = choice.to_json()
    choice = DeviceChoice.from_json(share(doc))
    return choice.apply(cfg), choice
