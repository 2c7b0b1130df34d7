"""Read, compute, write: a folder of cases with the reading and writing beside the computing.

``run_overlapped(items, read, compute, write, ahead)`` calls, for each item in order,
``read(item)`` then ``compute(item, read_result)`` then ``write(item, compute_result)``. With
``ahead >= 1`` a reader thread reads up to ``ahead`` items beyond the one being computed and a
writer thread writes the previous item while the next one is computed (one write in flight):
NIfTI decoding and encoding (zlib), and numpy's preprocessing, release the GIL, so they run
while the main thread keeps the model busy. With ``ahead = 0`` the three steps run one after
the other in the calling thread. Both give the same calls with the same arguments, so the same
files; only the timing differs (tested byte for byte).

A step that raises fails its item only (``on_done(item, exception, seconds)``), and the later
steps of that item are skipped; the others go on. Items are reported in order, each once its
write has finished, so a summary lists what is on disk. ``KeyboardInterrupt`` stops the loop:
the write in flight is finished (each file is written atomically anyway) and reported, as
every item written before it, and reads not yet started are cancelled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class _Inline:
    """An executor running each task at once in the calling thread (``ahead = 0``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


def _timed(fn: Callable[..., Any]) -> Callable[..., tuple[Any, float]]:
    def run(*args: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        return fn(*args), time.perf_counter() - t0

    return run


class _Overlap:
    """The state of one ``run_overlapped`` call: its executors and the write in flight."""

    def __init__(self, compute, write, on_done, ahead: int) -> None:
        self.compute, self.write, self.on_done = compute, write, on_done
        threaded = ahead > 0
        self.reader = ThreadPoolExecutor(1, thread_name_prefix="read") if threaded else _Inline()
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="write") if threaded else _Inline()
        self.pending: tuple[Any, Future, float] | None = None

    def finish(self) -> None:
        """Wait for the write in flight and report its item."""
        if self.pending is None:
            return
        (item, future, spent), self.pending = self.pending, None
        try:
            _, seconds = future.result()
        except Exception as exc:  # noqa: BLE001 - one item's failure, reported
            self.on_done(item, exc, spent)
            return
        self.on_done(item, None, spent + seconds)

    def step(self, item: Any, read: Future) -> None:
        """Compute one read item, then hand it to the writer after the previous write."""
        spent = 0.0
        try:
            loaded, spent = read.result()
            t0 = time.perf_counter()
            result = self.compute(item, loaded)
            spent += time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - one item's failure, reported
            self.finish()
            self.on_done(item, exc, spent)
            return
        self.finish()
        self.pending = (item, self.writer.submit(_timed(self.write), item, result), spent)

    def close(self) -> None:
        self.reader.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True)


def run_overlapped(
    items: Iterable[Any],
    read: Callable[[Any], Any],
    compute: Callable[[Any, Any], Any],
    write: Callable[[Any, Any], None],
    on_done: Callable[[Any, Exception | None, float], None],
    ahead: int = 1,
) -> None:
    """Run ``read -> compute -> write`` over ``items`` (see the module docstring).

    ``on_done(item, None, seconds)`` after an item's write, ``seconds`` the sum of its three
    steps' own durations; ``on_done(item, exception, seconds)`` when a step raised.
    """
    run = _Overlap(compute, write, on_done, ahead)
    reads: deque[tuple[Any, Future]] = deque()
    try:
        for item in items:
            reads.append((item, run.reader.submit(_timed(read), item)))
            if len(reads) > ahead:
                run.step(*reads.popleft())
        while reads:
            run.step(*reads.popleft())
        run.finish()
    except KeyboardInterrupt:
        run.close()  # the write in flight ends (reads not started are cancelled) ...
        run.finish()  # ... and its item is reported: a summary lists every file on disk
        raise
    finally:
        run.close()
