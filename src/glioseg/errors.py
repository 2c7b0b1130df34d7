"""The base of every error a user can act on.

Each module keeps its own error class (``ConfigError``, ``CaseError``, ...), named after what
went wrong where; every one derives from :class:`GliosegError` and also from the built-in type
it derived from before (mostly ``ValueError``), so ``except ValueError`` callers keep working.
The command line turns a ``GliosegError`` into one red line and exit status 1
(``cli.user_errors``); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class GliosegError(Exception):
    """An error a user can act on: the message names the case, file or value and what is
    wrong."""


class InputError(GliosegError, ValueError):
    """A value given by the user (an option, a config key, an environment variable) is not
    valid, raised by modules that have no error class of their own."""
