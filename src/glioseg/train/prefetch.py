"""Batches moved to the training device one step ahead.

``DevicePrefetcher`` wraps the loader's items and a ``convert`` (``glioseg.train.loop.to_batch``:
the copy to the device, and the device-side augmentation when ``data.augment_device`` puts it
there). On a GPU, handing out batch k queues batch k+1's conversion on a side CUDA stream, so
its host-to-device copy (``non_blocking`` from the loader's pinned memory) and its augmentation
overlap step k's kernels on the main stream; the main stream waits for the side stream before
it uses a batch, and the batch's tensors are marked as used there (``record_stream``) so the
caching allocator never hands their memory to the side stream while the step still reads it.
On a CPU it is a pass-through: each item is converted when asked for, nothing is read ahead.

Either way the batches come out in the loader's order, each converted exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


class DevicePrefetcher:
    """An iterator over ``convert(item)`` for the items of ``items`` (see the module docstring).

    Args:
        items: the loader's items (endless or not).
        device: the training device; a side stream is used when it is a CUDA device.
        convert: item -> ``glioseg.train.loop.Batch`` on ``device``.
    """

    def __init__(self, items: Iterable[Any], device: torch.device,
                 convert: Callable[[Any], Any]) -> None:
        self.items = iter(items)
        self.device = device
        self.convert = convert
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ahead: Any = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.stream is None:
            return self.convert(next(self.items))
        if self._ahead is None:
            self._ahead = self._queue()
        if self._ahead is _END:
            raise StopIteration
        batch = self._ahead
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self.stream)
        for t in _tensors(batch):
            t.record_stream(main)
        self._ahead = self._queue()  # batch k+1 copies while step k runs
        return batch

    def _queue(self) -> Any:
        """The next item converted on the side stream (``_END`` after the last)."""
        try:
            item = next(self.items)
        except StopIteration:
            return _END
        assert self.stream is not None
        with torch.cuda.stream(self.stream):
            return self.convert(item)


_END = object()


def _tensors(batch: Any) -> list[torch.Tensor]:
    """The tensors of a batch (``Batch`` fields, or a tuple / list of tensors)."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, tuple | list):
        return [t for b in batch for t in _tensors(b)]
    fields = getattr(batch, "__dict__", {})
    return [v for v in fields.values() if isinstance(v, torch.Tensor)]


def prefetch_batches(items: Iterable[Any], device: torch.device,
                     channels_last: bool) -> DevicePrefetcher:
    """``DevicePrefetcher`` with ``glioseg.train.loop.to_batch`` as the conversion."""
    from glioseg.train.loop import to_batch

    return DevicePrefetcher(items, device, lambda raw: to_batch(raw, device, channels_last))
