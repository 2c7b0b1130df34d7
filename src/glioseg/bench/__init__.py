"""Benchmarks behind ``glioseg bench``: commands that print figures, not timed tests."""
