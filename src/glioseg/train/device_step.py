"""What keeps the training step free of host synchronisation.

A GPU runs the step's kernels after the Python code has queued them; reading a value back
(``.item()``, ``float(t)``, ``bool(t)``, ``.cpu()``) makes the host wait for the device to
finish everything queued so far, so the next step cannot be queued while this one runs. The
step therefore decides and accumulates on the device:

- ``guarded_step``: the optimiser update is skipped when the gradient norm is not finite,
  decided on the device. Fused optimisers (torch's fused AdamW / SGD, chosen for every GPU run
  by ``glioseg.train.schedule.optimizer_kernels``) take a ``found_inf`` flag, as a GradScaler
  hands them: the kernel leaves weights and state untouched and undoes its step count (SGD's
  momentum buffers are created as zeros first, see ``_zero_momentum_buffers``). Other
  optimisers (foreach, CPU) step, then every parameter and state tensor is put back with
  ``torch.where`` on the flag (``masked_step``); state a first, skipped step created is reset to
  zeros, which AdamW and SGD treat exactly as fresh state.
- ``StepStats``: loss sums, skipped steps, the last gradient norm and the runs of skipped
  steps in a row, kept on the device; ``read`` brings them to the host once per log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every group of ``optimizer`` uses torch's fused kernels (``found_inf`` aware)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups)


def guarded_step(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """``optimizer.step()`` unless ``bad`` (a 0-d bool tensor on the parameters' device) is
    true, decided without reading ``bad`` on the host (see the module docstring)."""
    if is_fused(optimizer):
        _zero_momentum_buffers(optimizer)
        optimizer.grad_scale = None  # type: ignore[attr-defined]  # already unscaled
        optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
        return
    masked_step(optimizer, bad)


def _zero_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """Give SGD's momentum a zero buffer where a parameter has none yet (its first step).

    Fused SGD creates a missing buffer with ``empty_like`` and fills it (``buf = grad``) inside
    the kernel, which returns early when ``found_inf`` is set: a skipped first step would leave
    uninitialised memory as the momentum of every later step. A zero buffer gives the same
    first step (``momentum * 0 + grad`` is ``grad`` when dampening is 0, torch's first-step
    rule), and nothing to corrupt when the step is skipped. AdamW's fused state starts at zero
    already."""
    for group in optimizer.param_groups:
        if not group.get("momentum") or group.get("dampening", 0) != 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if p.grad is not None and state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p.grad,
                                                            memory_format=torch.preserve_format)


def masked_step(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """Step, then restore the parameters and optimiser state where ``bad`` (device-side).

    Costs a copy of the parameters and state per step (measured ~12 ms for the small preset's
    1.4 M parameters on one loaded CPU thread, about 1% of its step); GPU runs take the fused
    path instead."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    with torch.no_grad():
        old_params = torch._foreach_add([p.detach() for p in params], 0)  # one copy each
        old_state = {p: {k: v.clone() for k, v in optimizer.state[p].items()
                         if isinstance(v, torch.Tensor)}
                     for p in params if p in optimizer.state}
    optimizer.step()
    with torch.no_grad():
        for p, old in zip(params, old_params, strict=True):
            torch.where(_on(bad, p), old, p, out=p)
        for p in params:
            before = old_state.get(p, {})
            for k, v in optimizer.state[p].items():
                if isinstance(v, torch.Tensor):
                    ref = before.get(k)
                    torch.where(_on(bad, v), torch.zeros_like(v) if ref is None else ref, v,
                                out=v)


def _on(flag: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``flag`` on ``like``'s device (a copy, and a sync, only for an optimiser that keeps a
    CPU step count for GPU parameters: a non-fused one, never chosen for a GPU run)."""
    return flag if flag.device == like.device else flag.to(like.device)


@dataclass
class StatsRead:
    """``StepStats`` brought to the host."""

    loss_sum: float
    finite_steps: int
    skipped: int
    grad_norm: float
    skips_in_a_row: int
    """Skipped steps in a row up to the last step (the run may have begun in an earlier window)."""
    longest_skip_run: int
    """The longest run of skipped steps in a row since the previous read (a run in progress
    at that read is counted again)."""

    @property
    def mean_loss(self) -> float:
        """Mean loss over the steps whose loss was finite (nan when none was)."""
        return self.loss_sum / self.finite_steps if self.finite_steps else float("nan")


class StepStats:
    """Device-side sums over the steps since the last ``read`` (the run of skipped steps
    carries across reads). ``add`` queues a few tiny device ops and never waits."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, finite, skipped
        self._norm = torch.zeros((), dtype=torch.float64, device=device)
        self._run = torch.zeros((), dtype=torch.int64, device=device)
        self._longest = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, result: Any) -> None:
        """Accumulate a ``glioseg.train.loop.StepResult`` (its tensors, not floats)."""
        loss = result.loss_t.detach().to(torch.float64)
        finite = torch.isfinite(loss)
        skipped = result.skipped_t.to(torch.int64)
        step = torch.stack([torch.where(finite, loss, torch.zeros_like(loss)),
                            finite.to(torch.float64), skipped.to(torch.float64)])
        self._sums += step
        self._norm = result.grad_norm_t.detach().to(torch.float64)
        self._run = (self._run + 1) * skipped
        self._longest = torch.maximum(self._longest, self._run)

    def read(self) -> StatsRead:
        """The sums so far (one copy to the host), then start a new window."""
        values = torch.cat([self._sums, self._norm[None],
                            torch.stack([self._run, self._longest]).to(torch.float64)])
        host = values.cpu().tolist()
        self._sums = torch.zeros_like(self._sums)
        self._longest = self._run.clone()
        return StatsRead(host[0], int(host[1]), int(host[2]), host[3], int(host[4]),
                         int(host[5]))
