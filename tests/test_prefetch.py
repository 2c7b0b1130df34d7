"""``glioseg.train.prefetch``: batches come out in the loader's order, each converted once; on a
CPU nothing is read ahead, on a GPU exactly one batch is (queued on a side stream)."""

import contextlib

import pytest
import torch

from glioseg.train import loop as L
from glioseg.train.prefetch import DevicePrefetcher, prefetch_batches


def _items(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 4, 4, 4, 4, generator=g),
             torch.randint(0, 4, (2, 4, 4, 4), generator=g, dtype=torch.uint8))
            for _ in range(n)]


def test_cpu_pass_through_keeps_order_and_reads_nothing_ahead():
    items = _items(4)
    seen: list[int] = []

    def source():
        for i, item in enumerate(items):
            seen.append(i)
            yield item
    pre = prefetch_batches(source(), torch.device("cpu"), channels_last=False)
    first = next(pre)
    assert seen == [0]  # nothing read ahead on CPU
    rest = list(pre)
    for got, (image, labels) in zip([first, *rest], items, strict=True):
        want = L.to_batch((image, labels), torch.device("cpu"), False)
        assert torch.equal(got.image, want.image) and torch.equal(got.target, want.target)
    assert seen == [0, 1, 2, 3]


class _FakeStream:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, other: "_FakeStream") -> None:
        self.log.append(f"{self.name} waits {other.name}")


def test_gpu_path_queues_one_batch_ahead_on_the_side_stream(monkeypatch):
    """The CUDA logic with the stream calls faked: batch k+1 is converted on the side stream
    when batch k is handed out, after the main stream was told to wait for the side one."""
    log: list[str] = []
    side, main = _FakeStream(log, "side"), _FakeStream(log, "main")
    current = [main]

    @contextlib.contextmanager
    def use(stream):
        current[0] = stream
        yield
        current[0] = main
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: side)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", use)

    def convert(i: int) -> str:
        log.append(f"convert {i} on {current[0].name}")
        return f"batch {i}"
    pre = DevicePrefetcher(range(3), torch.device("cuda", 0), convert)
    assert next(pre) == "batch 0"
    assert log == ["convert 0 on side", "main waits side", "convert 1 on side"]
    assert list(pre) == ["batch 1", "batch 2"]
    assert log[3:] == ["main waits side", "convert 2 on side", "main waits side"]
    with pytest.raises(StopIteration):
        next(pre)
