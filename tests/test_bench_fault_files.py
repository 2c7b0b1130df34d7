"""bench/fault_files.py: the half-written files a kill can leave are found; hidden
temporaries are told apart."""

from pathlib import Path

import numpy as np
from datafiles import AFFINE

from glioseg.bench import fault_files as FF
from glioseg.data.nifti import save_volume


def test_half_written_files_are_found(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    np.save(out / "a.npy", np.arange(1000, dtype=np.float32))
    (out / "b.json").write_text('{"x": 1}')
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    save_volume(out / "c.nii.gz", np.ones((8, 8, 8), np.uint8), AFFINE, np.uint8)
    (out / ".a.npy.0a1b.tmp.npy").write_bytes(b"\x93NUMPY")  # hidden: a temporary
    assert FF.half_written(out) == []
    assert FF.walk_outputs(out)[1] == [Path(".a.npy.0a1b.tmp.npy")]
    for name in ("a.npy", "b.json", "c.nii.gz"):  # cut each in half
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: len(data) // 2])
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 3, "lo')
    (out / "d.json").write_text("")
    found = FF.half_written(out)
    assert [f.split(":")[0] for f in found] == ["a.npy", "b.json", "c.nii.gz", "d.json",
                                                "metrics.jsonl"]
    # a torn last line of an appended log is the documented exception (dropped on resume)
    assert [f.split(":")[0] for f in FF.half_written(out, allow_torn_tail=True)] == [
        "a.npy", "b.json", "c.nii.gz", "d.json"]
