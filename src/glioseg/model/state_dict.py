"""State dicts of the project's networks: unwrapping, safetensors files, strict checks.

The one unwrapping of the package: ``unwrap_model`` (DDP / DataParallel ``.module``,
``torch.compile`` ``._orig_mod``) and ``strip_wrapper_prefixes`` (the same wrappers' key
prefixes). Weights are stored as safetensors (no pickle: safe to load from anyone), written
atomically (``save_state_dict``); ``check_state_dict`` lists every missing, unexpected or
reshaped tensor instead of loading a part. A saved model (weights + card) is
``glioseg.model.card``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from glioseg.errors import GliosegError
from glioseg.io_atomic import atomic_path

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class WeightsMismatchError(GliosegError, ValueError):
    """Weights that do not fit the network the card describes."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP / DataParallel (``.module``) and ``torch.compile``
    (``._orig_mod``) wrappers; the one unwrapping of the package (checkpoints, cards, weights)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) from every key."""
    out = {}
    for key, value in state_dict.items():
        k = key
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        if k in out:
            raise WeightsMismatchError(f"state dict has {k!r} twice once wrapper prefixes are removed")
        out[k] = value
    return out


def save_state_dict(path: Path, state_dict: Mapping[str, torch.Tensor],
                    metadata: dict[str, str] | None = None) -> None:
    """Write ``state_dict`` as safetensors to ``path`` atomically (tensors copied contiguous)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {})


_RUN_MARKERS = ("last.pt", "best.pt", "previous.pt", "metrics.jsonl", "best", "last")
"""What a training run folder holds (checkpoints, metrics, model folders), never a model
folder."""
_EXPORTED = (".onnx", ".xml", ".bin")


def not_a_model(path: str | os.PathLike[str]) -> str | None:
    """What to pass instead, when ``path`` is something users give for a model but is not
    one: a training run folder (its ``best/`` and ``last/`` are), a training checkpoint
    (``.pt``) or an exported network (ONNX, OpenVINO IR); None otherwise. One line naming the
    path, for the callers' own error."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").exists() or (path / "card.json").exists():
            return None
        if not any((path / m).exists() for m in _RUN_MARKERS):
            return None
        models = [str(path / name) for name in ("best", "last")
                  if (path / name / "card.json").is_file()]
        if not models:
            return (f"{path} is a training run folder with no saved model yet (no best/ or "
                    "last/ in it); pass a model folder")
        return f"{path} is a training run folder, not a model; pass {' or '.join(models)}"
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix in _EXPORTED:
        return (f"{path}: an exported network is not read back as a model; pass the model "
                "folder it was exported from (predict runs it in ONNX Runtime or OpenVINO "
                "itself: -m MODEL_DIR --engine onnxruntime, or --engine openvino)")
    if suffix == ".pt":
        models = [str(path.parent / name) for name in ("best", "last")
                  if (path.parent / name / "card.json").is_file()]
        instead = " or ".join(models) if models else "a model folder (a run's best/ or last/)"
        return f"{path}: a training checkpoint (what --resume reads), not a model; pass {instead}"
    return None


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise WeightsMismatchError(f"{path}: cannot read the weights: {exc}") from None


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                     where: str = "weights") -> None:
    """Raise :class:`WeightsMismatchError` listing every missing, unexpected or reshaped tensor."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    reshaped = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or reshaped:
        parts = [f"{where} do not match the network of the card:"]
        for name, items in (("missing", missing), ("unexpected", unexpected),
                            ("reshaped", reshaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {name}: {shown}")
        raise WeightsMismatchError("\n  ".join(parts))
