"""What every command module of the CLI shares: the Typer apps, the error decorator and the
parsing of option values used by several commands.

Imports no heavy library (numpy, torch, ...): ``glioseg --help`` stays instant.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from glioseg.errors import GliosegError

app = typer.Typer(
    help="3D brain-tumour segmentation of multi-modal MRI (BraTS): synthetic cohorts, "
    "training, transfer learning, CPU inference, evaluation and reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

bench_app = typer.Typer(help="Benchmarks: commands that print figures.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

study_app = typer.Typer(help="Studies: the measured payoff of transfer learning.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")


def fail(message: str, code: int = 1) -> None:
    """Print ``message`` in red on stderr and exit with ``code``."""
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


_Command = TypeVar("_Command", bound=Callable[..., None])


def user_errors(command: _Command) -> _Command:
    """A command whose ``GliosegError`` (an error the user can act on) becomes one red line and
    exit status 1, as does an ``OSError`` of the file system the user can act on (a read-only
    or full disk, a denied permission, a file where a folder is needed: ``file_system_error``);
    any other exception is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except GliosegError as exc:
            fail(str(exc))
        except OSError as exc:
            message = file_system_error(exc)
            if message is None:
                raise
            fail(message)

    return run  # type: ignore[return-value]


_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST, errno.ENOTDIR,
                errno.EISDIR, errno.ENOSPC, getattr(errno, "EDQUOT", -1)}
"""``OSError`` numbers that say something about the user's paths or disk, not a bug."""

# what io_atomic names its temporaries: files .<name>.<8 hex>.<tag><ext>, folders
# .<name>.tmp-<hex> and .<name>.old-<hex>
_TEMPORARY_FILE = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.[a-z]+(?:\..+)?$")
_TEMPORARY_DIR = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-[0-9a-f]+$")


def _final_name(path: Path) -> tuple[Path, bool]:
    """``(path, False)``, or ``(folder/name, True)`` for a temporary of ``io_atomic`` beside
    ``folder/name``: the name the user asked for, not the hidden one written first."""
    for pattern in (_TEMPORARY_DIR, _TEMPORARY_FILE):
        match = pattern.match(path.name)
        if match:
            return path.parent / match.group("name"), True
    return path, False


def _file_in_the_way(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (itself included) that is not a folder."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def file_system_error(exc: OSError) -> str | None:
    """One line for an ``OSError`` the user can act on (``_USER_ERRNOS``), naming the path and
    the cause and what to do; None for any other (a bug, or a missing file a command should
    have reported itself), which keeps its traceback. A temporary name (``io_atomic``) is
    reported as the folder it was written in and the file it was to become."""
    if exc.errno not in _USER_ERRNOS:
        return None
    cause = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    hint = {errno.ENOSPC: "free some space or choose another output folder",
            getattr(errno, "EDQUOT", -1): "free some space or choose another output folder",
            errno.EACCES: "check its permissions, or choose another output folder",
            errno.EPERM: "check its permissions, or choose another output folder",
            }.get(exc.errno, "choose another output folder")
    if exc.filename is None:
        return f"cannot write: {cause}; {hint}"
    raw = Path(os.fsdecode(exc.filename))
    path, temporary = _final_name(raw)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = _file_in_the_way(raw if exc.errno == errno.EEXIST else raw.parent)
        if blocker is not None:
            where = "" if blocker == raw else f"{path}: "
            return (f"{where}{blocker} is a file, not a folder; choose another output folder "
                    "(or move the file away)")
    if exc.errno == errno.EISDIR:
        return f"{path}: is a folder, where a file is expected; choose another path"
    if temporary:  # the file could not be created: the folder is what cannot be written
        return f"{path.parent}: cannot write {path.name} ({cause}); {hint}"
    if exc.errno in (errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"{path}: cannot write ({cause}); {hint}"
    return f"{path}: {cause}; {hint}"


def parse_roi(roi: str | None) -> tuple[int, int, int] | None:
    """``--roi 128`` or ``--roi 128,128,96`` (also ``128x128x96``) -> three sizes, or None."""
    if roi is None:
        return None
    try:
        values = [int(v) for v in roi.replace("x", ",").split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        fail(f"--roi must be one size or three (e.g. 128 or 128,128,96), got {roi!r}")
    return (values[0], values[1], values[2])
