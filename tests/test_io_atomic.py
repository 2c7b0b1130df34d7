"""Atomic writes: the target appears whole or not at all, with ordinary file permissions."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from glioseg.io_atomic import atomic_dir, atomic_path, write_bytes, write_json, write_text


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_success_renames_onto_the_target_with_umask_permissions(tmp_path, umask_027):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.")
        assert tmp.is_file() and not target.exists()
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert _mode(target) == 0o640  # 0o666 under umask 027; mkstemp would give 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize("name, ext", [("a.nii.gz", ".nii.gz"), ("A.NII.GZ", ".NII.GZ"),
                                       ("x.npy", ".npy"), ("W39_1998.09.19_Segm.nii", ".nii"),
                                       ("plain", "")])
def test_temporary_keeps_the_extension_last(tmp_path, name, ext):
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.name.endswith(".tmp" + ext)


def test_numpy_save_does_not_append_a_second_extension(tmp_path):
    target = tmp_path / "image.npy"
    with atomic_path(target) as tmp:
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(target), [0, 1, 2])
    assert [p.name for p in tmp_path.iterdir()] == ["image.npy"]


def test_a_writer_that_replaces_the_file_owner_only_gets_the_umask_mode_back(tmp_path,
                                                                             umask_027):
    target = tmp_path / "w.safetensors"
    with atomic_path(target) as tmp:  # as safetensors' save_file: a new file, mode 0o600
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"weights")
        os.close(fd)
        assert _mode(tmp) == 0o600
    assert target.read_bytes() == b"weights" and _mode(target) == 0o640


def test_a_failed_write_names_the_temporary_it_was_writing(tmp_path):
    import errno

    target = tmp_path / "out.json"
    with pytest.raises(OSError) as info, atomic_path(target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write to a full disk
    assert info.value.filename is not None
    assert os.path.basename(info.value.filename).startswith(".out.json.")
    assert os.path.dirname(info.value.filename) == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_write_helpers(tmp_path, umask_027):
    assert write_bytes(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_text(tmp_path / "t.csv", "a\r\nb\n").read_bytes() == b"a\r\nb\n"
    obj = {"x": [1, 2.5], "y": None}
    path = write_json(tmp_path / "o.json", obj)
    assert json.loads(path.read_text()) == obj and path.read_text().endswith("\n")
    assert {_mode(p) for p in tmp_path.iterdir()} == {0o640}


def test_atomic_dir_replaces_a_folder_whole(tmp_path, umask_027):
    target = tmp_path / "case"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert tmp.name.startswith(".case.tmp-") and tmp.is_dir()
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert _mode(target) == 0o750
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "partial.txt").write_text("x")
        raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["case"]


@pytest.fixture
def fsync_log(monkeypatch):
    """Every ``os.fsync`` as ``(path it was called on, target exists at that moment)``."""
    calls: list[tuple[str, dict[str, bool]]] = []
    watched: list = []
    real = os.fsync

    def spy(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls.append((path, {str(p): p.exists() for p in watched}))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return calls, watched


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_atomic_path_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, fsync_log):
    calls, watched = fsync_log
    target = tmp_path / "out.bin"
    watched.append(target)
    write_bytes(target, b"data")
    # the temporary file was flushed while the target did not exist yet (before the rename)
    file_syncs = [(p, seen) for p, seen in calls if os.path.basename(p).startswith(".out.bin.")]
    assert file_syncs and not file_syncs[0][1][str(target)]
    # the folder was flushed once the target existed (after the rename)
    dir_syncs = [seen for p, seen in calls if p == str(tmp_path)]
    assert dir_syncs and dir_syncs[-1][str(target)]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to name fds")
def test_atomic_dir_fsyncs_every_file_and_the_parent(tmp_path, fsync_log):
    calls, watched = fsync_log
    target = tmp_path / "model"
    watched.append(target)
    with atomic_dir(target) as tmp:
        (tmp / "a.bin").write_bytes(b"a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"b")
    names = [os.path.basename(p) for p, seen in calls if not seen[str(target)]]
    assert {"a.bin", "b.bin", "sub"} <= set(names)  # flushed before the rename
    assert any(p == str(tmp_path) and seen[str(target)] for p, seen in calls)


def test_atomic_dir_failed_rename_keeps_the_old_folder(tmp_path, monkeypatch):
    import glioseg.io_atomic as io_atomic

    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def broken(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(io_atomic, "replace_durably", broken)
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_leftover_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    from glioseg.io_atomic import remove_leftover_temporaries, temporary_name

    # what a writer killed mid-write leaves: atomic_path's and checkpoint's temporary files,
    # atomic_dir's temporary folder (with a file inside)
    left = [temporary_name(tmp_path / "case.nii.gz"), temporary_name(tmp_path / "last.pt"),
            temporary_name(tmp_path / "per_case.csv"), temporary_name(tmp_path / "notes")]
    for p in left:
        p.write_bytes(b"half")
    half_dir = tmp_path / ".BraTS-GLI-00001-000.tmp-0a1b2c3d"
    half_dir.mkdir()
    (half_dir / "image.npy").write_bytes(b"half")
    # what must stay: outputs, the project's own hidden files, a folder renamed aside (the
    # only copy of the old version when a kill fell between atomic_dir's two renames), a
    # user's hidden file that merely ends in .tmp, and leftovers one folder down
    keep = [tmp_path / "case.nii.gz", tmp_path / ".report.json", tmp_path / ".synthetic.json",
            tmp_path / ".notes.tmp", tmp_path / ".x.123.tmp"]
    for p in keep:
        p.write_bytes(b"keep")
    old = tmp_path / ".best.old-0a1b2c3d"
    stages = tmp_path / ".stages"
    nested = tmp_path / "sub" / temporary_name("last.pt").name
    for d in (old, stages, nested.parent):
        d.mkdir()
    nested.write_bytes(b"deeper")

    removed = remove_leftover_temporaries(tmp_path)

    assert sorted(removed) == sorted([*left, half_dir])
    assert not any(p.exists() for p in removed)
    assert all(p.read_bytes() == b"keep" for p in keep)
    assert old.is_dir() and stages.is_dir() and nested.is_file()
    assert remove_leftover_temporaries(tmp_path) == []
    assert remove_leftover_temporaries(tmp_path / "absent") == []
