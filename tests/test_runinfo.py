"""runinfo.py: ``hardware.json`` and ``timings.json`` written by training, predict and
evaluate (and rendered by ``glioseg report``), and the one ``/proc/cpuinfo`` reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from datafiles import tiny_brats2021_case
from typer.testing import CliRunner

from glioseg import runinfo
from glioseg.cli import app
from glioseg.io_atomic import write_json
from glioseg.report.html import write_report

# Two sockets, two cores each, two hyper-threads per core: 8 logical CPUs, 4 physical cores.
FAKE_CPUINFO = "\n\n".join(
    f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Fake CPU @ {3 + i % 2}.0GHz\n"
    f"physical id\t: {i // 4}\nsiblings\t: 4\ncore id\t\t: {(i // 2) % 2}\n"
    f"flags\t\t: fpu vme sse2 avx2" for i in range(8)) + "\n\n"


def test_parse_cpuinfo_model_and_physical_cores() -> None:
    # the first processor's model; cores are distinct (physical id, core id) pairs
    assert runinfo.parse_cpuinfo(FAKE_CPUINFO) == ("Fake CPU @ 3.0GHz", 4)
    one_socket = FAKE_CPUINFO.replace("physical id\t: 1", "physical id\t: 0")
    assert runinfo.parse_cpuinfo(one_socket) == ("Fake CPU @ 3.0GHz", 2)
    # no physical id (some VMs): one socket; no core id (e.g. ARM): cores unknown
    no_socket = re.sub(r"physical id\t: \d\n", "", FAKE_CPUINFO)
    assert runinfo.parse_cpuinfo(no_socket) == ("Fake CPU @ 3.0GHz", 2)
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\nprocessor\t: 1\n"
    assert runinfo.parse_cpuinfo(arm) == (None, None)
    assert runinfo.parse_cpuinfo("") == (None, None)


def test_one_cpuinfo_reader_for_hardware_json_and_the_report(tmp_path: Path,
                                                             monkeypatch) -> None:
    from glioseg.report.environment import environment_blocks

    fake, mem = tmp_path / "cpuinfo", tmp_path / "meminfo"
    fake.write_text(FAKE_CPUINFO)
    mem.write_text("MemTotal:       16303412 kB\nMemFree:  1 kB\n")
    monkeypatch.setattr(runinfo, "CPUINFO", fake)
    monkeypatch.setattr(runinfo, "MEMINFO", mem)
    assert runinfo.cpuinfo() == ("Fake CPU @ 3.0GHz", 4) and runinfo.memory_gib() == 15.5
    hw = runinfo.hardware()
    assert hw["cpu"] == "Fake CPU @ 3.0GHz" and hw["cpu cores (physical)"] == 4
    assert hw["memory (GiB)"] == 15.5
    (table,) = environment_blocks()
    rows = dict(table.data["rows"])
    assert rows["cpu"] == "Fake CPU @ 3.0GHz" and rows["memory (GiB)"] == "15.5"
    # unreadable (not Linux): unknown, not an error
    monkeypatch.setattr(runinfo, "CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(runinfo, "MEMINFO", tmp_path / "missing")
    assert runinfo.cpuinfo() == (None, None) and runinfo.memory_gib() is None
    assert runinfo.hardware()["cpu cores (physical)"] is None
    assert "memory (GiB)" not in dict(environment_blocks()[0].data["rows"])


def _this_machine() -> dict:
    """What hardware.json must say, read here without glioseg."""
    import os
    import platform

    import torch

    cpu = None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), None)
    except OSError:
        pass
    return {"logical cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu": cpu or platform.processor() or "unknown",
            "gpu": "none" if not torch.cuda.is_available() else None}


def test_predict_and_evaluate_folders_report_timings_and_hardware(tmp_path: Path) -> None:
    import time

    import torch

    from glioseg.model.card import ModelCard, save_model
    from glioseg.model.registry import build_model, preset

    torch.manual_seed(0)
    net = build_model(preset("small", base_width=4, max_width=8, n_stages=2,
                             patch_size=(16, 16, 16)))
    ckpt = save_model(tmp_path / "model", net, ModelCard.for_model(net, label_scheme="brats2021"))
    tiny_brats2021_case(tmp_path / "data", "BraTS2021_00001")
    run = tmp_path / "run"
    walls = {}
    for command, args in (("predict", ["predict", "-m", str(ckpt), "-i", str(tmp_path / "data"),
                                       "-o", str(run / "pred"), "--threads", "1"]),
                          ("evaluate", ["evaluate", "--pred", str(run / "pred"), "--ref",
                                        str(tmp_path / "data"), "-o", str(run / "eval")])):
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, args)
        walls[command] = time.perf_counter() - t0
        assert result.exit_code == 0, result.output
    machine = _this_machine()
    for command, folder in (("predict", run / "pred"), ("evaluate", run / "eval")):
        timings = json.loads((folder / "timings.json").read_text())
        assert list(timings) == [command]
        assert 0 < timings[command]["wall seconds"] <= walls[command]
        hardware = json.loads((folder / "hardware.json").read_text())
        for key, value in machine.items():
            if value is not None:
                assert hardware[key] == value, key
        assert not list(folder.glob(".*"))  # written atomically: no temporary names left
    assert json.loads((run / "pred" / "timings.json").read_text())["predict"][
        "cases predicted"] == 1
    assert json.loads((run / "eval" / "timings.json").read_text())["evaluate"][
        "cases scored"] == 1
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    for text in ("Timings (timings.json): predict", "Timings (timings.json): evaluate",
                 "wall seconds", f"<td>torch</td><td>{machine['torch']}</td>",
                 f"<td>cpu</td><td>{machine['cpu']}</td>"):
        assert text in page, text
    assert page.count("Hardware (hardware.json)") == 2  # one per run folder
    md = (run / "report.md").read_text()
    assert "Timings (timings.json): evaluate" in md and machine["torch"] in md


def test_timings_json_keeps_one_entry_per_command(tmp_path: Path) -> None:
    from glioseg.runinfo import record_run

    record_run(tmp_path, "predict", 2.5, cases=3)
    record_run(tmp_path, "evaluate", 1.25)
    record_run(tmp_path, "predict", 4.0, cases=1)  # a re-run replaces its own entry only
    doc = json.loads((tmp_path / "timings.json").read_text())
    assert list(doc) == ["predict", "evaluate"]
    assert doc["predict"]["wall seconds"] == 4.0 and doc["predict"]["cases"] == 1
    assert doc["evaluate"]["wall seconds"] == 1.25
    page = write_report(tmp_path)[0].read_text()
    # two commands: one table, a row each
    assert re.search(r"<td>predict</td><td>4</td>.*<td>evaluate</td><td>1\.25</td>", page, re.S)


def test_training_run_folder_records_timings_and_hardware(tmp_path: Path) -> None:
    """``glioseg.train.fit`` (what train, finetune and pretrain run) on a tiny cache: rank 0
    writes timings.json under the command's name, and hardware.json."""
    import time

    from glioseg.data.labels import MODALITIES
    from glioseg.preprocess import cache as PC
    from glioseg.runinfo import training_command
    from glioseg.train import config as C
    from glioseg.train.fit import fit

    rng = np.random.default_rng(0)
    ids = []
    for i in range(2):
        labels = np.zeros((16, 16, 16), np.uint8)
        labels[5:10, 5:10, 5:10] = 2
        image = rng.normal(0, 0.3, (4, 16, 16, 16)).astype(np.float32)
        image[3] += 2.0 * (labels > 0)
        cid = f"CASE_{i:03d}"
        PC.write_case(tmp_path / "cache", cid, image, labels,
                      {"case_id": cid, "layout": "brats2023", "shape": [16] * 3})
        ids.append(cid)
    write_json(tmp_path / "cache" / "dataset.json", {
        "format": PC.CACHE_FORMAT, "modalities": list(MODALITIES), "spacing": None,
        "cases": ids, "source": "test"})
    sets = ["model.base_width=4", "model.n_stages=2", "model.max_width=8",
            "data.patch_size=[16,16,16]", "data.batch_size=1", "data.workers=0", "data.n_val=1",
            "data.augment=false", "train.amp=none", "train.threads=1", "train.steps=2",
            "train.val_every=2", "train.ckpt_every=2", "optim.warmup_steps=0",
            f"data.cache_dir={tmp_path / 'cache'}"]
    cfg = C.load_config("small", sets)
    t0 = time.perf_counter()
    fit(cfg, tmp_path / "run")
    wall = time.perf_counter() - t0
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert list(timings) == ["train"] and timings["train"]["steps"] == 2
    assert 0 < timings["train"]["wall seconds"] <= wall
    hardware = json.loads((tmp_path / "run" / "hardware.json").read_text())
    assert hardware["torch threads"] == 1 and hardware["logical cpus"] == _this_machine()[
        "logical cpus"]
    page = write_report(tmp_path / "run")[0].read_text()
    assert "Timings (timings.json): train" in page and "Hardware (hardware.json)" in page
    # finetune and pretrain runs are named by their config
    assert training_command(C.load_config("small", ["train.task=genesis"])) == "pretrain"
    assert training_command(C.load_config("small", ["transfer.init_from=/m"])) == "finetune"
