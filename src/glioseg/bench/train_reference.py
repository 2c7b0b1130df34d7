"""The reference training loop ``glioseg bench train`` compares itself with, in the same run.

nnU-Net v2's 3d_fullres network (dynamic-network-architectures ``PlainConvUNet``) and MONAI's
``DynUNet``, each in a plain PyTorch loop as a user of those tools would write it: random data,
region BCE over the deep-supervision outputs (weights 0.5^k), SGD lr 1e-2 Nesterov momentum
0.99 weight decay 3e-5, gradient clip 12, ``cudnn.benchmark``; fp16 with a GradScaler as
nnU-Net trains on CUDA, or bf16. The topology follows glioseg's model config (stages, widths,
2 convs per stage, strides 1 then 2): the full preset gives nnU-Net's BraTS topology (6 stages,
32..320), so the rows time the same network glioseg trains, on the same patch and batch.

Rows on CUDA: PlainConvUNet fp16 + GradScaler, PlainConvUNet bf16, DynUNet bf16. On CPU the
two networks in the CPU's ``auto`` precision (bf16 where native, else float32; fp16 and
emulated bf16 are not what anyone would train with on a CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

REFERENCE_ROWS_CUDA = (("nnunet-plainconv", "fp16"), ("nnunet-plainconv", "bf16"),
                       ("monai-dynunet", "bf16"))


def widths(model_cfg: Any) -> list[int]:
    """Features per stage of glioseg's ``unet3d`` config: base x 2^i, capped."""
    return [min(model_cfg.base_width * 2 ** i, model_cfg.max_width)
            for i in range(model_cfg.n_stages)]


def nnunet_net(model_cfg: Any) -> nn.Module:
    """``PlainConvUNet`` with glioseg's stages and widths (nnU-Net's 3d_fullres layout)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = model_cfg.n_stages
    return PlainConvUNet(model_cfg.in_channels, n, widths(model_cfg), nn.Conv3d, 3,
                         [1] + [2] * (n - 1), [2] * n, model_cfg.out_channels, [2] * (n - 1),
                         False, nn.InstanceNorm3d, {"eps": 1e-5, "affine": True}, None, None,
                         nn.LeakyReLU, {"inplace": True}, deep_supervision=True)


def monai_net(model_cfg: Any) -> nn.Module:
    """MONAI ``DynUNet`` with the same stages and widths, deep supervision on."""
    from monai.networks.nets import DynUNet

    n = model_cfg.n_stages
    return DynUNet(3, model_cfg.in_channels, model_cfg.out_channels, [3] * n,
                   [1] + [2] * (n - 1), [2] * (n - 1), filters=widths(model_cfg),
                   norm_name="instance", deep_supervision=True, deep_supr_num=max(1, n - 2),
                   res_block=False)


NETWORKS: dict[str, Callable[[Any], nn.Module]] = {"nnunet-plainconv": nnunet_net,
                                                   "monai-dynunet": monai_net}


def _outputs(out: Any) -> list[torch.Tensor]:
    """Deep-supervision outputs, finest first (DynUNet stacks them on dim 1 while training)."""
    if isinstance(out, list | tuple):
        return list(out)
    if out.dim() == 6:
        return [out[:, i] for i in range(out.shape[1])]
    return [out]


def _reference_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    dtype: torch.dtype | None) -> None:
    """One step of the reference loop (as ``../shared/gpu/reference_step.py`` writes it)."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = x.new_zeros(())
        for k, o in enumerate(_outputs(net(x))):
            t = (nn.functional.interpolate(y, size=o.shape[2:], mode="nearest")
                 if o.shape[2:] != y.shape[2:] else y)
            loss = loss + 0.5 ** k * nn.functional.binary_cross_entropy_with_logits(o.float(), t)
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 12)
    scaler.step(opt)
    scaler.update()


def measure_reference(name: str, amp: str, model_cfg: Any, patch: tuple[int, int, int],
                      batch: int, device: torch.device, steps: int, warmup: int) -> dict[str, Any]:
    """patches/s of one reference row (``error`` set instead when it cannot run)."""
    row: dict[str, Any] = {"name": f"{name} {amp}", "amp": amp, "patch": list(patch),
                           "batch": batch, "device": str(device)}
    try:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}[amp]
        torch.manual_seed(0)
        net = NETWORKS[name](model_cfg).to(device)
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True,
                              weight_decay=3e-5)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        x = torch.randn(batch, model_cfg.in_channels, *patch, device=device)
        y = (torch.rand(batch, model_cfg.out_channels, *patch, device=device) > 0.7).float()
        elapsed = _timed(lambda: _reference_step(net, x, y, opt, scaler, dtype), device,
                         steps, warmup)
        row.update(params=sum(p.numel() for p in net.parameters()),
                   steps_per_s=steps / elapsed, patches_per_s=steps * batch / elapsed,
                   cuda_max_allocated_mb=(torch.cuda.max_memory_allocated(device) / 2**20
                                          if device.type == "cuda" else 0.0))
    except (ImportError, RuntimeError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _timed(step: Callable[[], None], device: torch.device, steps: int, warmup: int) -> float:
    """Seconds for ``steps`` calls after ``warmup`` (synchronised on a GPU)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def reference_variants(device: torch.device) -> list[tuple[str, str]]:
    """(network, precision) of the rows on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        return list(REFERENCE_ROWS_CUDA)
    from glioseg.train.loop import resolve_amp

    amp = resolve_amp("auto", device)
    return [("nnunet-plainconv", amp), ("monai-dynunet", amp)]


def reference_rows(model_cfg: Any, patch: tuple[int, int, int], batch: int,
                   device: torch.device, steps: int, warmup: int,
                   show: bool = False) -> list[dict[str, Any]]:
    """Every reference row on ``device``, one after the other in this process; with ``show``
    each is printed as soon as it is measured."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    if show:
        print(f"{'reference loop':<28} {'patches/s':>9} {'steps/s':>8} {'CUDA MB':>8}",
              flush=True)
    for name, amp in reference_variants(device):
        rows.append(measure_reference(name, amp, model_cfg, patch, batch, device, steps,
                                      warmup))
        if show:
            print_reference_row(rows[-1])
    return rows


def print_reference_row(r: dict[str, Any]) -> None:
    """One reference row (or why it is unavailable)."""
    if "error" in r:
        print(f"{r['name']:<28} unavailable: {r['error']}", flush=True)
    else:
        print(f"{r['name']:<28} {r['patches_per_s']:9.2f} {r['steps_per_s']:8.3f} "
              f"{r['cuda_max_allocated_mb']:8.0f}", flush=True)


def print_comparison(ours: list[dict[str, Any]], refs: list[dict[str, Any]]) -> dict[str, Any]:
    """Print glioseg's best synthetic-batch row against the best reference row; returns
    ``{"best_reference", "glioseg", "ratio"}`` (ratio None when a side has no figure)."""
    good = [r for r in refs if "error" not in r]
    mine = [r for r in ours if r["source"] == "synthetic" and r["world_size"] == 1]
    best_ref = max(good, key=lambda r: r["patches_per_s"]) if good else None
    best_ours = max(mine, key=lambda r: r["patches_per_s"]) if mine else None
    out = {"best_reference": best_ref, "glioseg": best_ours, "ratio": None}
    if best_ref and best_ours:
        out["ratio"] = best_ours["patches_per_s"] / best_ref["patches_per_s"]
        print(f"glioseg {best_ours['amp']} ({best_ours['patches_per_s']:.2f} patches/s) / "
              f"best reference {best_ref['name']} ({best_ref['patches_per_s']:.2f}): "
              f"{out['ratio']:.2f}x")
    return out
