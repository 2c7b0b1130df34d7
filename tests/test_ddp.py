"""DDP equivalence on CPU: two gloo ranks with batch b each take the same steps as one process
with batch 2b on the same patches.

The real training path is used: the small preset's 3D U-Net (shrunk), its deep-supervision
Dice + BCE loss, its SGD-Nesterov optimiser and warm-up schedule, gradient clipping, and
``glioseg.train.components.wrap`` for the DDP wrapper.

Why they must agree: the loss is a per-sample mean (soft Dice per sample and channel, BCE over
voxels and samples, equal shard sizes) and the model has no cross-sample layer (InstanceNorm
normalises each sample alone), so the mean of the two ranks' gradients (DDP's all-reduce) is the
gradient of the 2b batch, and the clipping norm is computed on that same averaged gradient. Only
the order of float32 additions differs. Tolerance: 1e-6 absolute on every parameter after 3
steps (seen: at most 6e-8); the steps move the trained parameters by 5e-4 to 0.25.
"""

import os
import socket
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train import fit as F
from glioseg.train import loop as L
from glioseg.train.cases import select_cases
from glioseg.train.components import Components, build_components, wrap

B = 2  # patches per rank
STEPS = 3
SIZE = 16
ATOL = 1e-6
TINY = ["model.base_width=4", "model.n_stages=3", "model.max_width=16",
        f"data.patch_size=[{SIZE},{SIZE},{SIZE}]", f"data.batch_size={B}", "train.amp=none",
        "train.channels_last=false", "optim.name=sgd", "optim.lr=0.2", "optim.momentum=0.9",
        "optim.warmup_steps=1", "optim.grad_clip=12.0", "train.steps=10"]


def _cfg() -> C.Config:
    return C.load_config("small", TINY)


def _data() -> list[L.Batch]:
    """STEPS batches of 2B patches: noise images, nested cubes of regions (WT > TC > ET)
    placed at random, as in the cache."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        image = torch.randn(2 * B, 4, SIZE, SIZE, SIZE, generator=g)
        labels = torch.zeros(2 * B, SIZE, SIZE, SIZE, dtype=torch.uint8)
        for n in range(2 * B):
            c = torch.randint(4, SIZE - 4, (3,), generator=g)
            for lab, r in ((2, 4), (1, 2), (3, 1)):
                labels[n, c[0] - r:c[0] + r, c[1] - r:c[1] + r, c[2] - r:c[2] + r] = lab
            image[n, 3] += 2 * (labels[n] > 0)
        out.append(L.to_batch((image, labels), torch.device("cpu"), False))
    return out


def _train(info: D.DistInfo, batches: list[L.Batch]) -> tuple[Components, list[float]]:
    cfg = _cfg()
    comp = build_components(cfg, info)
    wrap(comp, cfg, info)
    losses = []
    for b in batches:
        res = L.train_step(comp.net, [b], comp.loss_fn, comp.optimizer, comp.scaler, "none",
                           cfg.optim.grad_clip)
        comp.scheduler.step()
        losses.append(res.loss)
    return comp, losses


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = D.init("cpu", threads=1)
    assert info.distributed and info.rank == rank and info.device.type == "cpu"
    shards = [L.Batch(b.image[rank * B:(rank + 1) * B], b.target[rank * B:(rank + 1) * B])
              for b in _data()]
    comp, losses = _train(info, shards)
    assert isinstance(comp.net, torch.nn.parallel.DistributedDataParallel)
    mean_loss = D.all_reduce_mean(losses[-1])
    ranks = D.all_gather_objects(rank)
    if rank == 0:
        torch.save({"params": {k: v.detach().clone() for k, v in comp.model.state_dict().items()},
                    "mean_loss": mean_loss, "ranks": ranks}, out)
    live = {"comp": comp}
    del comp
    D.shutdown(live)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_one_process_with_twice_the_batch(tmp_path: Path):
    torch.set_num_threads(1)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)

    single, losses = _train(D.DistInfo(), _data())
    init = build_components(_cfg(), D.DistInfo()).model.state_dict()
    moved = []
    for name, p_one in single.model.state_dict().items():
        torch.testing.assert_close(got["params"][name], p_one, atol=ATOL, rtol=0, msg=name)
        moved.append(float((p_one - init[name]).abs().max()))
    # training moved the weights far beyond the tolerance (the test can fail)
    # (all but the conv biases before InstanceNorm, which get no gradient, and the coarsest
    # deep-supervision head, whose loss weight is 0): the test can fail
    assert sum(m > 100 * ATOL for m in moved) >= 2 * len(moved) // 3
    # the mean of the ranks' losses (half batches, equal sizes) is the full batch's loss
    # (the last step's loss is computed before that step's update: same weights on both sides)
    assert abs(got["mean_loss"] - losses[-1]) < 1e-5
    assert got["ranks"] == [0, 1]


def _plain_train(batches: list[L.Batch], grad_accum: int) -> torch.nn.Module:
    cfg = _cfg()
    comp = build_components(cfg, D.DistInfo())
    for b in batches:
        n = b.size // grad_accum
        micro = [L.Batch(b.image[i * n:(i + 1) * n], b.target[i * n:(i + 1) * n])
                 for i in range(grad_accum)]
        L.train_step(comp.net, micro, comp.loss_fn, comp.optimizer, comp.scaler, "none",
                     cfg.optim.grad_clip)
    return comp.model


def test_gradient_accumulation_matches_one_large_batch():
    torch.set_num_threads(1)
    a, b = _plain_train(_data(), 1), _plain_train(_data(), 2)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=ATOL, rtol=0, msg=name)


def test_single_process_world():
    info = D.init("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert D.all_reduce_mean(2.5) == 2.5
    assert D.all_gather_objects("x") == ["x"]


def test_pretrain_under_torchrun_two_ranks(tmp_path: Path):
    """``glioseg pretrain --nproc 2``: the Models Genesis run (no deep supervision, so all heads
    but the last are unused) through torchrun's launcher on two gloo ranks, to the end."""
    import json
    import subprocess
    import sys

    from test_fit import TINY as TRAIN_TINY
    from test_fit import _tiny_cache

    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "pre"
    # three stages: two heads, of which pretraining (no deep supervision) uses only the last
    sets = [a for s in [*TRAIN_TINY, "model.n_stages=3", "train.steps=3", "train.ckpt_every=3"]
            for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "glioseg", "pretrain", "--data", str(cache),
                          "--out", str(run), "--nproc", "2", *sets], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    card = json.loads((run / "last" / "card.json").read_text())
    assert card["provenance"]["method"] == "models-genesis"
    # only rank 0 logs: each step once
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


# --------------------------------------------------------------------------- torchrun restart

def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from ``/proc/*/stat``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(x.split("=", 1) for x in raw.decode(errors="replace").split("\0") if "=" in x)


def _workers(launcher: int) -> dict[int, tuple[int, int]]:
    """Worker pid -> (RANK, TORCHELASTIC_RESTART_COUNT) of the torchrun agent(s) under
    ``launcher`` (the ``glioseg train --nproc`` process; its child is torchrun's agent, whose
    children are the workers)."""
    found = {}
    for agent in _children(launcher):
        for pid in _children(agent):
            env = _environ(pid)
            if "RANK" in env:
                found[pid] = (int(env["RANK"]), int(env.get("TORCHELASTIC_RESTART_COUNT", -1)))
    return found


def test_torchrun_restart_after_a_killed_worker_resumes_training(tmp_path: Path):
    """``glioseg train --nproc 2 --max-restarts 1`` on two gloo ranks with sharded validation:
    rank 1 is killed with SIGKILL after the first checkpoint; torchrun restarts both workers,
    they resume from ``last.pt`` and the job ends with exit 0 and one continuous log.

    The final validation record (3 cases: two on rank 0, one on rank 1, summed by all-reduce)
    is compared with a single-process ``validate`` of the saved last model on the same cases:
    the same per-case predictions (float32 convolutions on one thread in every process) and
    the same mean, so the tolerance is 1e-9 on each Dice (float64 sums in another order).
    """
    import json
    import re
    import signal
    import subprocess
    import sys
    import time

    from test_fit import TINY as TRAIN_TINY
    from test_fit import _tiny_cache

    from glioseg.preprocess.cache import open_cache

    torch.set_num_threads(1)
    n_steps, ckpt_every, val_every, n_val = 24, 4, 8, 3
    cache = _tiny_cache(tmp_path / "cache", n=5)
    run = tmp_path / "run"
    sets = [*TRAIN_TINY, f"data.n_val={n_val}", "optim.lr=0.01", f"train.steps={n_steps}",
            f"train.ckpt_every={ckpt_every}", f"train.val_every={val_every}"]
    cmd = [sys.executable, "-m", "glioseg", "train", "--data", str(cache), "--out", str(run),
           "--nproc", "2", "--max-restarts", "1",
           *[a for s in sets for a in ("--set", s)]]
    log = tmp_path / "log.txt"
    seen: dict[int, tuple[int, int]] = {}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f,
                                stderr=subprocess.STDOUT)
        try:
            t0 = time.monotonic()
            while not (run / "last.pt").exists():
                seen.update(_workers(proc.pid))
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() - t0 < 60, "no checkpoint after 60 s"
                time.sleep(0.02)
            victim = next(p for p, (rank, gen) in seen.items() if rank == 1 and gen == 0)
            first_rank0 = next(p for p, (rank, gen) in seen.items() if rank == 0 and gen == 0)
            os.kill(victim, signal.SIGKILL)
            # the first rank 0 dies too (torchrun stops the group); its log is then final
            while os.path.exists(f"/proc/{first_rank0}") and \
                    Path(f"/proc/{first_rank0}/stat").read_text().split()[2] != "Z":
                seen.update(_workers(proc.pid))
                assert time.monotonic() - t0 < 90, "the first rank 0 did not stop"
                time.sleep(0.02)
            from glioseg.metrics_log import parse_metrics

            before = parse_metrics(run / "metrics.jsonl")
            while proc.poll() is None:
                seen.update(_workers(proc.pid))
                assert time.monotonic() - t0 < 150, "the job did not end"
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]

    # torchrun restarted the workers once, and the new ones resumed from a checkpoint
    assert sorted(gen for _, gen in seen.values()) == [0, 0, 1, 1], seen
    resumed = [int(m) for m in re.findall(r"resuming \S+ from step (\d+)", text)]
    assert len(resumed) == 1, text[-4000:]
    k = resumed[0]
    assert k % ckpt_every == 0 and ckpt_every <= k < n_steps

    records = parse_metrics(run / "metrics.jsonl")
    kept = [r for r in before if r["step"] <= k]
    assert kept and records[: len(kept)] == kept  # the log up to the checkpoint as it was
    # each step once: the records after the checkpoint were dropped and logged again by the
    # resumed run (the one documented repetition), never twice in the file
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, n_steps + 1))
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == list(range(val_every, n_steps + 1, val_every))
    for r in val:
        assert r["n_cases"] == n_val
        assert all(0.0 <= r[f"dice_{c}"] <= 1.0 for c in ("WT", "TC", "ET", "mean"))
    final = torch.load(run / "last.pt", weights_only=True)
    assert final["step"] == n_steps and final["world_size"] == 2

    # only rank 0 wrote: the expected files and nothing else; TensorBoard files from rank-0
    # processes only, one per worker generation
    # (hardware.json and timings.json: glioseg.runinfo's record of the run, where present;
    # device_choice.json: what train.amp / channels_last / compile resolved to; split.json:
    # the training and validation cases)
    names = {p.name for p in run.iterdir() if not re.match(r"\..*\.tmp", p.name)}
    assert names - {"hardware.json", "timings.json"} == {
        "config.yaml", "launch.yaml", "metrics.jsonl", "tb", "last.pt", "previous.pt",
        "best.pt", "last", "best", "device_choice.json", "split.json"}, names
    rank0 = {p for p, (rank, _) in seen.items() if rank == 0}
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 2 and {int(e.name.split(".")[-2]) for e in events} <= rank0, events
    for sub in ("best", "last"):
        assert (run / sub / "model.safetensors").is_file()
        assert json.loads((run / sub / "card.json").read_text())["arch"] == "unet3d"

    # the sharded validation equals one process validating the saved model on the same cases
    from glioseg.model.registry import build_model

    cfg = C.load_config(str(run / "config.yaml"))
    _, val_cases = select_cases(cfg, open_cache(cfg.data.cache_dir))
    assert len(val_cases) == n_val
    model = build_model(cfg.model)
    model.load_state_dict(final["model"])
    one = L.validate(model, val_cases, device=torch.device("cpu"), mode=cfg.train.val_mode,
                     roi=cfg.patch_size, amp="none", divisor=int(model.divisor))
    for key in ("dice_WT", "dice_TC", "dice_ET", "dice_mean"):
        assert abs(one[key] - val[-1][key]) <= 1e-9, (key, one[key], val[-1][key])
    # the comparison can fail: averaging the ranks' means (cases 0, 2 on rank 0; 1 on rank 1)
    # instead of summing the cases would give another figure here, by far more than the 1e-9
    # tolerance (seen: 3e-4)
    per_case = [L.validate(model, [c], device=torch.device("cpu"), mode=cfg.train.val_mode,
                           roi=cfg.patch_size, amp="none", divisor=int(model.divisor))
                for c in val_cases]
    for key in ("dice_WT", "dice_TC", "dice_ET"):
        cases = [d[key] for d in per_case]
        assert abs(sum(cases) / 3 - one[key]) <= 1e-9
    assert max(abs((per_case[0][k] + per_case[2][k]) / 4 + per_case[1][k] / 2 - one[k])
               for k in ("dice_WT", "dice_TC", "dice_ET")) > 1e-7


def test_attempt_prefix_only_for_one_agent(monkeypatch):
    """The store prefix that keeps a restarted attempt from reading the keys of the one
    before (see ``distributed``'s docstring): only under torchrun's agent store, on one node."""
    for key in ("TORCHELASTIC_USE_AGENT_STORE", "GROUP_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    assert D.attempt_prefix() is None  # not under torchrun: the environment as usual
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert D.attempt_prefix() == "glioseg/attempt_2"
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # restart counts may differ between agents
    assert D.attempt_prefix() is None
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # rank 0 hosts a new store
    assert D.attempt_prefix() is None


# --------------------------------------------------------------------------- resume choice

def _resume_worker(rank: int, world: int, port: int, runs: list[str], cache: str,
                   out: str) -> None:
    """Rank ``rank`` of a 2-rank ``fit`` in ``runs[rank]``; writes what happened to
    ``out/<rank>.txt``."""
    from test_fit import TINY as TRAIN_TINY

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = C.load_config("small", [*TRAIN_TINY, f"data.cache_dir={cache}", "train.steps=4",
                                  "train.device=cpu"])
    try:
        summary = F.fit(cfg, runs[rank])
        text = f"ok {summary['step']}"
    except F.TrainError as exc:
        text = f"TrainError {exc}"
    Path(out, f"{rank}.txt").write_text(text)


def test_ranks_resume_from_the_checkpoint_rank_0_chose(tmp_path: Path):
    """Rank 0 chooses the checkpoint and broadcasts it; a rank that sees another file under
    that name (a stale copy on its node: step 1 where rank 0 reads step 2) makes the run fail
    on every rank with an error naming it, instead of resuming at another step and hanging."""
    import shutil

    from test_fit import TINY as TRAIN_TINY
    from test_fit import _tiny_cache

    torch.set_num_threads(1)
    cache = _tiny_cache(tmp_path / "cache", n=2)
    seen_by_0, seen_by_1 = tmp_path / "run", tmp_path / "stale"
    cfg = C.load_config("small", [*TRAIN_TINY, f"data.cache_dir={cache}", "train.steps=2",
                                  "train.ckpt_every=1", "train.device=cpu"])
    F.fit(cfg, seen_by_0)
    shutil.copytree(seen_by_0, seen_by_1)
    shutil.copy(seen_by_0 / "previous.pt", seen_by_1 / "last.pt")  # step 1 under last.pt
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.start_processes(_resume_worker, nprocs=2, join=False, start_method="spawn",
                             args=(2, _free_port(), [str(seen_by_0), str(seen_by_1)],
                                   str(cache), str(out)))
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "the ranks did not finish (hung?)"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    results = [(out / f"{r}.txt").read_text() for r in (0, 1)]
    for text in results:
        assert text.startswith("TrainError"), results
        assert "rank 0 resumes from last.pt at step 2" in text
        assert f"rank 1: {seen_by_1 / 'last.pt'} holds step 1" in text
    # neither folder was touched by the failed start
    assert torch.load(seen_by_0 / "last.pt", weights_only=True)["step"] == 2
    assert torch.load(seen_by_1 / "last.pt", weights_only=True)["step"] == 1
