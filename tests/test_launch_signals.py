"""``glioseg train --nproc 2`` stopped by a signal sent to the launcher alone (a scheduler's
SIGTERM, ``kill -INT PID``), not to its process group: the launcher passes it on to torchrun,
whose agent stops the workers and waits for them; the launcher then says where to continue and
exits with 130, leaving no worker behind; ``--resume`` goes on from the last checkpoint.

(Before, SIGTERM ended the launcher alone and torchrun and its workers trained on; SIGINT made
the launcher SIGKILL torchrun 0.25 s later, and the workers, in sessions of their own, went on
training without it.)
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_ddp import _workers
from test_fit import TINY, _tiny_cache

STOP_S = 30.0  # torchrun's agent waits up to 30 s for the workers, then kills them


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _of_run(run: Path) -> list[int]:
    """Live processes whose command line names the run folder (launcher, torchrun, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(run) in cmdline.split("\0") and _alive(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launcher_alone_stops_every_worker(sig: int, tmp_path: Path):
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    sets = [*TINY, "data.n_val=0", "train.steps=100000", "train.ckpt_every=2"]
    cmd = [sys.executable, "-m", "glioseg", "train", "--data", str(cache), "--out", str(run),
           "--nproc", "2", *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "log.txt"
    workers: dict[int, tuple[int, int]] = {}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            metrics = run / "metrics.jsonl"
            while not ((run / "last.pt").exists() and metrics.exists()
                       and metrics.stat().st_size > 0 and len(workers) == 2):
                workers.update(_workers(proc.pid))
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() - t0 < 60, "training did not start within 60 s"
                time.sleep(0.05)
            assert sorted(rank for rank, _ in workers.values()) == [0, 1]
            os.kill(proc.pid, sig)  # the launcher alone
            t_sig = time.monotonic()
            try:
                code = proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the launcher still ran {STOP_S:.0f} s after {sig!r}\n"
                            + log.read_text()[-3000:])
            stop_s = time.monotonic() - t_sig
            # the launcher ended once torchrun had: no worker (nor torchrun) is left
            assert [p for p in workers if _alive(p)] == [], log.read_text()[-3000:]
            assert _of_run(run) == []
        finally:
            for pid in [proc.pid, *_of_run(run)]:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
    text = log.read_text().replace("\r", "\n")
    assert code == 130, text[-3000:]
    assert f"{signal.Signals(sig).name}: stopping the workers" in text
    assert f"continue with: glioseg train --out {run} --resume" in text, text[-3000:]
    assert stop_s < STOP_S

    # the run goes on from its last checkpoint
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    assert step >= 2
    out = subprocess.run([sys.executable, "-m", "glioseg", "train", "--out", str(run),
                          "--resume", "--nproc", "2", "--set", f"train.steps={step + 2}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(rf"resuming \S+ from step {step}\b", out.stdout + out.stderr)
    assert torch.load(run / "last.pt", weights_only=True)["step"] == step + 2
    assert _of_run(run) == []
