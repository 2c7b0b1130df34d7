"""``glioseg.infer.pipeline.run_overlapped``: the same calls in the same order with and without
threads, failures isolated to their item, and the overlap itself (the next read and the
previous write run while an item computes)."""

from __future__ import annotations

import threading

import pytest

from glioseg.infer.pipeline import run_overlapped


def _run(items, ahead: int, fail: dict[str, int] | None = None):
    """Run doubling steps; ``fail`` maps a step name to the item it raises on."""
    fail = fail or {}
    calls, done, written = [], [], {}

    def step(name, item, value):
        calls.append((name, item))
        if fail.get(name) == item:
            raise RuntimeError(f"{name} {item}")
        return value

    run_overlapped(items, lambda i: step("read", i, i * 2),
                   lambda i, v: step("compute", i, v + 1),
                   lambda i, v: written.__setitem__(i, step("write", i, v)),
                   lambda i, exc, s: done.append((i, None if exc is None else str(exc), s)),
                   ahead=ahead)
    return calls, done, written


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_every_item_is_read_computed_written_and_reported_in_order(ahead: int) -> None:
    calls, done, written = _run(range(5), ahead)
    assert written == {i: 2 * i + 1 for i in range(5)}
    assert [(i, e) for i, e, _ in done] == [(i, None) for i in range(5)]
    assert all(s >= 0 for _, _, s in done)
    for name in ("read", "compute", "write"):
        assert [i for n, i in calls if n == name] == list(range(5))


@pytest.mark.parametrize("ahead", [0, 1])
@pytest.mark.parametrize("stage", ["read", "compute", "write"])
def test_a_failing_step_fails_its_item_only(ahead: int, stage: str) -> None:
    calls, done, written = _run(range(4), ahead, {stage: 2})
    assert [i for i, _, _ in done] == [0, 1, 2, 3]
    assert [e for _, e, _ in done] == [None, None, f"{stage} 2", None]
    assert set(written) == {0, 1, 3}
    if stage == "read":
        assert ("compute", 2) not in calls


def _overlap_seen(ahead: int, wait_s: float) -> dict[str, bool]:
    """Whether item 2's read and item 0's write had started while item 1 computed."""
    started = {("read", 2): threading.Event(), ("write", 0): threading.Event()}
    seen: dict[str, bool] = {}

    def mark(name, item):
        if (name, item) in started:
            started[(name, item)].set()

    def compute(item, value):
        if item == 1:
            seen.update({k[0]: e.wait(wait_s) for k, e in started.items()})
        return value

    run_overlapped(range(4), lambda i: mark("read", i) or i, compute,
                   lambda i, v: mark("write", i), lambda *a: None, ahead=ahead)
    return seen


def test_reads_and_writes_overlap_the_compute() -> None:
    """With threads, item 1 computes while item 2 is read and item 0 written (the waits
    return as soon as they start); in one thread item 2 is read only after item 1."""
    assert _overlap_seen(1, 5.0) == {"read": True, "write": True}
    assert _overlap_seen(0, 0.2) == {"read": False, "write": True}  # written before, in turn


@pytest.mark.parametrize("ahead", [0, 1, 2])
def test_an_interrupt_reports_every_item_written_the_one_in_flight_included(ahead: int) -> None:
    """Ctrl-C stops the loop after the write in flight; a summary made of the reports lists
    what is on disk."""
    written, reported = [], []

    def compute(item, value):
        if item == 2:
            raise KeyboardInterrupt
        return value

    with pytest.raises(KeyboardInterrupt):
        run_overlapped(range(5), lambda i: i, compute, lambda i, v: written.append(i),
                       lambda item, exc, s: reported.append((item, exc)), ahead=ahead)
    assert written == [0, 1] and reported == [(0, None), (1, None)]
