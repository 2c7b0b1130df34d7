"""Benchmarks behind ``glioseg bench``: commands that print figures, not timed tests."""

from glioseg.errors import GliosegError


class BenchError(GliosegError, ValueError):
    """A benchmark asked for something it cannot do (an option, a missing case or cache)."""


class BenchRunFailed(GliosegError, RuntimeError):
    """A process or pipeline the benchmark started failed, or two pipelines disagree."""
