"""Atomic writes: every output file goes to a temporary name in its folder, then is renamed.

A reader (or a rerun after a crash) therefore sees either the old file or the whole new one,
never half of one. The one helper every writer of the project uses::

    with atomic_path(out / "model.onnx") as tmp:   # tmp: a new empty file beside the target
        tmp.write_bytes(data)                      # any writer that takes a path
    # here out/model.onnx is complete; on an exception it is untouched and tmp is gone

The temporary file is created with the permissions of an ordinary new file (``0o666`` under
the process umask, usually ``0o644``), not ``tempfile.mkstemp``'s owner-only ``0o600``, so a
result written by one user can be read by the group as any other file; a writer that
replaces it by a file of its own, owner-only mode (safetensors' ``save_file``) has it set back
before the rename. Its name keeps the
target's extension last (``.name.<random>.tmp.nii.gz``), because some writers choose the
format from it (nibabel, matplotlib) or append one when it is missing (``numpy.save``).

Durability: before the rename the temporary file (for ``atomic_dir``, every file and folder in
the temporary tree) is flushed to disk with ``fsync``, and after it the folder holding the
target is, so a power or node failure after the block leaves the whole new file, never a
renamed but empty one. (A folder that cannot be opened for ``fsync``, as on Windows, is
skipped.)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_DOUBLE_EXTENSIONS = (".nii.gz", ".tar.gz")
_TRIES = 100


def _extension(path: Path) -> str:
    """The extension a writer may look at: ``.nii.gz`` for ``x.nii.gz``, else the last suffix."""
    name = path.name.lower()
    for ext in _DOUBLE_EXTENSIONS:
        if name.endswith(ext):
            return path.name[-len(ext):]
    return path.suffix


def temporary_name(path: str | Path, tag: str = "tmp") -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<random>.<tag><extension>`` (not created)."""
    path = Path(path)
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.{tag}{_extension(path)}"


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data and metadata to disk (``os.fsync``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename, a new or removed name) to disk.

    Platforms that cannot open a folder (Windows) or fsync one are skipped silently.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """``fsync`` every file and folder under ``path`` (itself included), folders last."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                fsync_file(full)
        fsync_dir(root)


def replace_durably(src: str | Path, dst: str | Path) -> None:
    """Rename the already-flushed ``src`` onto ``dst`` and flush the folder(s) involved."""
    os.replace(src, dst)
    dst_parent = Path(dst).resolve().parent
    fsync_dir(dst_parent)
    src_parent = Path(src).absolute().parent
    if src_parent.resolve() != dst_parent:
        fsync_dir(src_parent)


def _create_file(path: Path) -> Path:
    """Create an empty temporary file beside ``path`` (``0o666`` under the umask)."""
    for _ in range(_TRIES):
        tmp = temporary_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")


def _restore_mode(tmp: Path, mode: int) -> None:
    """Give ``tmp`` back the permissions it was created with, when its writer replaced it by a
    file of its own mode (safetensors' ``save_file`` writes ``0o600``)."""
    st = os.lstat(tmp)
    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(tmp, mode)


def _name_the_file(exc: BaseException, tmp: Path) -> None:
    """Give an ``OSError`` that names no file (a failed ``write``: a full disk, a quota) the
    temporary it was writing, so the message says where (``cli.common.file_system_error``
    reports the folder and the final name)."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        exc.filename = str(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; rename it onto ``path`` when the block ends.

    Parent folders are created. The yielded file exists and is empty (writers may overwrite or
    replace it; a replacement gets the new file's permissions back, as the module docstring
    promises). When the block raises (``KeyboardInterrupt`` included), the temporary file is
    removed and ``path`` is left as it was. The file is ``fsync``-ed before the rename and its
    folder after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_file(path)
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    try:
        yield tmp
        _restore_mode(tmp, mode)
        fsync_file(tmp)
        replace_durably(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _name_the_file(exc, tmp)
        raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; move it onto ``path`` when the block ends.

    The folder is named ``.<name>.tmp-<random>`` (``0o777`` under the umask). Everything in
    it is ``fsync``-ed before the rename, the parent folder after it. An existing ``path``
    folder is first renamed aside (``.<name>.old-<random>``), the new one renamed in, then the
    old one removed: a folder cannot be replaced in one step, so for a moment ``path`` is
    absent, but it never holds a mix of old and new files (a reader that opens the folder
    once and reads its files through that handle sees one version). When the block raises,
    the temporary folder and everything in it are removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TRIES):
        tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{path.parent}: could not create a temporary folder for {path.name}")
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if path.is_dir() and not path.is_symlink():
            old = path.parent / f".{path.name}.old-{secrets.token_hex(4)}"
            os.replace(path, old)
        try:
            replace_durably(tmp, path)
        except BaseException:
            if old is not None and not path.exists():
                os.replace(old, path)  # put the old folder back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_file(exc, tmp)
        raise


_LEFTOVER_FILE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\..+)?$")
_LEFTOVER_DIR = re.compile(r"^\..+\.tmp-.+$")  # any suffix, as the cache always swept


def remove_leftover_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries a killed writer left directly in ``folder``: files named as
    ``temporary_name`` names them (``.<name>.<random>.tmp<ext>``) and ``atomic_dir``'s
    temporary folders (``.<name>.tmp-<anything>``); returns what was removed.

    A stage calls it where it starts or resumes in a folder it alone writes (the one-writer
    rule resume already relies on). An ``atomic_dir`` folder renamed aside
    (``.<name>.old-<random>``) is kept: a kill between the two renames leaves it the only
    copy of the old version.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink() and _LEFTOVER_DIR.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file() and _LEFTOVER_FILE.match(entry.name):
            entry.unlink(missing_ok=True)
        else:
            continue
        removed.append(entry)
    return removed


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline="") as fh:
        fh.write(text)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as JSON (followed by a newline) to ``path`` atomically; returns ``path``.
    ``default`` turns what JSON cannot hold into what it can (``str`` for paths), as in
    ``json.dumps``."""
    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")
