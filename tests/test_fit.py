"""The training run end to end on a tiny cache: kill -9 after a checkpoint, resume, continuity
of the step counter and of metrics.jsonl; config mismatch refused; curves drawn."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from glioseg.data.labels import MODALITIES
from glioseg.io_atomic import write_json
from glioseg.preprocess import cache as PC
from glioseg.train import fit as F
from glioseg.train.cases import forever, make_train_loader, select_cases
from glioseg.train.components import build_components, make_loss

SIZE = 16


def _tiny_cache(folder: Path, n: int = 3) -> Path:
    """n cases of 16^3: noise images, a ball of edema around a core of necrosis + ET; the
    tumour is bright in FLAIR so a tiny model can see it."""
    rng = np.random.default_rng(0)
    ids = []
    grid = np.indices((SIZE,) * 3).transpose(1, 2, 3, 0)
    for i in range(n):
        centre = rng.integers(5, SIZE - 5, size=3)
        r = np.linalg.norm(grid - centre, axis=-1)
        labels = np.zeros((SIZE,) * 3, np.uint8)
        labels[r < 5] = 2
        labels[r < 3] = 1
        labels[(r >= 2) & (r < 3)] = 3
        image = rng.normal(0, 0.3, (4, SIZE, SIZE, SIZE)).astype(np.float32)
        image[3] += 2.0 * (labels > 0)
        cid = f"CASE_{i:03d}"
        PC.write_case(folder, cid, image, labels, {"case_id": cid, "layout": "brats2023",
                                                   "shape": [SIZE] * 3})
        ids.append(cid)
    write_json(folder / "dataset.json", {"format": PC.CACHE_FORMAT,
                                                   "modalities": list(MODALITIES),
                                                   "spacing": None, "cases": ids,
                                                   "source": "test"})
    return folder


TINY = ["model.base_width=4", "model.n_stages=2", "model.max_width=8",
        f"data.patch_size=[{SIZE},{SIZE},{SIZE}]", "data.batch_size=1", "data.workers=0",
        "data.n_val=1", "data.augment=false", "train.amp=none", "train.threads=1",
        "train.log_every=1", "optim.warmup_steps=0", "train.channels_last=false"]


def _cmd(cache: Path, run: Path, *extra: str) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    return [sys.executable, "-m", "glioseg", "train", "--data", str(cache), "--out", str(run),
            "--config", "small", *sets, *extra]


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def test_kill_then_resume_continues_steps_and_metrics(tmp_path: Path):
    cache = _tiny_cache(tmp_path / "cache")
    run = tmp_path / "run"
    steps = ["--set", "train.steps=150", "--set", "train.ckpt_every=4", "--set", "train.val_every=75"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cmd(cache, run, *steps), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not (run / "last.pt").exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() - t0 < 60, "no checkpoint after 60 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = torch.load(run / "last.pt", weights_only=True)
    killed_at = at_kill["step"]
    assert killed_at % 4 == 0 and 4 <= killed_at < 150
    before = [r for r in _records(run) if r["step"] <= killed_at]

    out = subprocess.run(_cmd(cache, run, *steps, "--resume"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resuming {run} from step {killed_at}" in out.stderr + out.stdout
    records = _records(run)
    # the records up to the checkpoint are kept as they were; each step is logged once
    assert records[: len(before)] == before
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == list(range(1, 151))
    val_steps = [r["step"] for r in records if r["split"] == "val"]
    assert val_steps == [75, 150]
    elapsed = [r["elapsed_s"] for r in records if r["split"] == "train"]
    assert elapsed == sorted(elapsed)  # wall time carried over the resume
    final = torch.load(run / "last.pt", weights_only=True)
    assert final["step"] == 150 and final["config"]["train"]["steps"] == 150
    assert 0.0 <= records[-1]["dice_WT"] <= 1.0 and records[-1]["n_cases"] == 1
    for sub in ("last", "best"):
        card = json.loads((run / sub / "card.json").read_text())
        assert card["arch"] == "unet3d" and card["model"]["base_width"] == 4
        assert (run / sub / "model.safetensors").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))

    # the weights and optimiser state were restored: the checkpoint is the state of an
    # uninterrupted run at its step, and the resumed run ends where that state, continued in
    # this process on the same patch stream, ends (1 thread, no loader worker: exact)
    _check_resumed_state(run, at_kill, final)

    # a different config in the same folder is refused, naming the differing key
    bad = subprocess.run(_cmd(cache, run, *steps, "--set", "train.seed=7"), env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "train.seed" in bad.stderr

    from glioseg.report.curves import plot_run

    png = plot_run(run)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _replay(cfg, train_cases: list, start: dict | None, first: int, last: int,
            restore_optimizer: bool = True) -> dict:
    """Steps ``first + 1 .. last`` of the run of ``cfg`` in this process with the pieces
    ``fit`` is made of, from scratch (``start`` None, seeded as ``fit`` seeds a fresh run) or
    from the checkpoint ``start``; returns ``{"model", "optimizer"}`` state dicts."""
    from glioseg.train import checkpoint as ckpt
    from glioseg.train import distributed as D
    from glioseg.train import loop as L

    info = D.DistInfo()
    comp = build_components(cfg, info, fresh=start is None)
    if start is None:
        D.seed_everything(cfg.train.seed)
    else:
        ckpt.restore(start, model=comp.model,
                     optimizer=comp.optimizer if restore_optimizer else None,
                     scheduler=comp.scheduler, scaler=comp.scaler)
    batches = forever(make_train_loader(cfg, train_cases, info, first))
    for _ in range(first, last):
        micro = [L.to_batch(next(batches), info.device, False)
                 for _ in range(cfg.train.grad_accum)]
        L.train_step(comp.net, micro, comp.loss_fn, comp.optimizer, comp.scaler,
                     cfg.train.amp, cfg.optim.grad_clip)
        comp.scheduler.step()
    return {"model": comp.model.state_dict(), "optimizer": comp.optimizer.state_dict()}


def _max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference between the tensors of two state dicts (same keys)."""
    assert a.keys() == b.keys()
    out = 0.0
    for k, v in a.items():
        if isinstance(v, dict):
            out = max(out, _max_diff(v, b[k]))
        elif isinstance(v, torch.Tensor):
            out = max(out, float((v.double() - b[k].double()).abs().max()) if v.numel() else 0.0)
    return out


def _check_resumed_state(run: Path, at_kill: dict, final: dict) -> None:
    """Exact equality: the same float32 operations in the same order on one thread.

    The resumed run cannot equal an uninterrupted run of all its steps: on resume the patch
    stream is reseeded from the step (``cases.loader_seed``: fresh patches rather than a replay
    of the epoch in flight, whose loader state a checkpoint does not hold), so the steps
    after the checkpoint see other patches than an uninterrupted run would.
    """
    from glioseg.preprocess.cache import open_cache
    from glioseg.train import config as C

    torch.set_num_threads(1)
    cfg = C.load_config(str(run / "config.yaml"))
    train_cases, _ = select_cases(cfg, open_cache(cfg.data.cache_dir))
    k, n = at_kill["step"], final["step"]
    assert at_kill["optimizer"]["state"] and final["optimizer"]["state"]  # AdamW moments
    before = _replay(cfg, train_cases, None, 0, k)
    assert _max_diff(before["model"], at_kill["model"]) == 0.0
    assert _max_diff(before["optimizer"]["state"], at_kill["optimizer"]["state"]) == 0.0
    after = _replay(cfg, train_cases, at_kill, k, n)
    assert _max_diff(after["model"], final["model"]) == 0.0
    assert _max_diff(after["optimizer"]["state"], final["optimizer"]["state"]) == 0.0
    # the check can fail: with the optimiser state left fresh (AdamW moments and step count
    # from zero) the continuation leaves that trajectory within 3 steps
    three = _replay(cfg, train_cases, at_kill, k, k + 3)
    fresh_opt = _replay(cfg, train_cases, at_kill, k, k + 3, restore_optimizer=False)
    assert _max_diff(fresh_opt["model"], three["model"]) > 1e-4


def test_resume_without_checkpoint_is_an_error(tmp_path: Path):
    from glioseg.train import config as C
    from glioseg.train.fit import TrainError, fit

    cache = _tiny_cache(tmp_path / "cache", n=2)
    cfg = C.load_config("small", [*TINY, f"data.cache_dir={cache}", "train.steps=2"])
    with pytest.raises(TrainError, match="no readable last.pt"):
        fit(cfg, tmp_path / "run", resume=True)


def test_whole_volume_validation_of_an_odd_sized_volume():
    """Validation pads a volume of odd size to the model's divisor and crops back; the region
    Dice it reports is the hand-computed one."""
    from glioseg.model.registry import ModelConfig, build_model
    from glioseg.train import loop as L

    torch.set_num_threads(1)
    shape = (13, 18, 11)  # no side a multiple of the divisor 4
    model = build_model(ModelConfig(base_width=4, n_stages=3, max_width=8,
                                    patch_size=(16, 16, 16))).eval()
    image = torch.randn(1, 4, *shape, generator=torch.Generator().manual_seed(0))
    logits = L.predict_logits(model, image, mode="whole", divisor=4)
    assert logits.shape == (1, 3, *shape)
    padded = np.zeros((1, 4, 16, 20, 12), np.float32)
    padded[..., :13, :18, :11] = image.numpy()
    with torch.no_grad():
        ref = model(torch.from_numpy(padded))[..., :13, :18, :11]
    torch.testing.assert_close(logits, ref)

    class Echo(torch.nn.Module):
        """Logits = the first three input channels; refuses sizes off the divisor 4."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert all(s % 4 == 0 for s in x.shape[2:]), x.shape
            return x[:, :3]

    rng = np.random.default_rng(3)
    labels = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=shape, p=[0.7, 0.1, 0.1, 0.1])
    truth = np.stack([labels > 0, np.isin(labels, (1, 3)), labels == 3])
    pred = truth ^ (rng.random(truth.shape) < 0.2)  # 20% of voxels flipped per region
    img = np.zeros((4, *shape), np.float32)
    img[:3] = np.where(pred, 1.0, -1.0)

    class Case:
        image, case_id = img, "ODD"

    Case.labels = labels
    got = L.validate(Echo(), [Case()], device=torch.device("cpu"), mode="whole", divisor=4)
    for r, name in enumerate(("WT", "TC", "ET")):
        a, b = pred[r], truth[r]
        expected = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert got[f"dice_{name}"] == pytest.approx(expected)
    assert got["n_cases"] == 1


def _cache_with_spacings(folder: Path, spacings: list[list[float]],
                         resampled: list[float] | None = None) -> Path:
    ids = []
    for i, sp in enumerate(spacings):
        cid = f"CASE_{i:03d}"
        image = np.zeros((4, 8, 8, 8), np.float32)
        PC.write_case(folder, cid, image, np.zeros((8, 8, 8), np.uint8),
                      {"case_id": cid, "layout": "brats2023", "shape": [8] * 3, "spacing": sp})
        ids.append(cid)
    write_json(folder / "dataset.json", {"format": PC.CACHE_FORMAT,
                                                   "modalities": list(MODALITIES),
                                                   "spacing": resampled, "cases": ids,
                                                   "source": "test"})
    return folder


def test_profile_writes_a_chrome_trace_and_splits_the_step(tmp_path: Path, capsys):
    from glioseg.train import config as C
    from glioseg.train.profile import SECTIONS, profile_training

    cache = _tiny_cache(tmp_path / "cache", n=2)
    cfg = C.load_config("small", [*TINY, f"data.cache_dir={cache}"])
    res = profile_training(cfg, tmp_path / "run", steps=2, warmup=1, top=5)
    trace = json.loads(Path(res["trace"]).read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert set(SECTIONS) <= names  # the step sections appear in the trace as ranges
    assert any("conv" in n.lower() for n in names if n)
    # the sections are disjoint parts of the profiled wall time
    assert all(res[s] > 0 for s in SECTIONS) and sum(res[s] for s in SECTIONS) <= res["total"]
    assert len(res["top"]) == 5 and all(t >= 0 and n >= 1 for _, t, n in res["top"])
    assert [t for _, t, _ in res["top"]] == sorted((t for _, t, _ in res["top"]), reverse=True)
    printed = capsys.readouterr().out
    assert "Chrome trace:" in printed and "backward" in printed


# --------------------------------------------------------------------------- reliability

def _fit(cache: Path, run: Path, *sets: str, resume: bool = False) -> dict:
    """``fit`` in this process on the tiny cache (one thread, no loader worker)."""
    from glioseg.train import config as C

    torch.set_num_threads(1)
    cfg = C.load_config("small", [*TINY, f"data.cache_dir={cache}", *sets])
    return F.fit(cfg, run, resume=resume)


def poison_loss(monkeypatch, at_call: int) -> None:
    """The run's loss becomes NaN at its ``at_call``-th evaluation (hence a NaN gradient)."""
    calls: list[int] = []

    def poisoned(cfg):
        loss = make_loss(cfg)

        def fn(logits, target):
            calls.append(1)
            value = loss(logits, target)
            return value * float("nan") if len(calls) == at_call else value
        return fn

    monkeypatch.setattr("glioseg.train.components.make_loss", poisoned)


def test_non_finite_gradient_is_skipped_and_logged(tmp_path: Path, monkeypatch, capsys):
    """A step whose loss (hence gradient) is NaN is skipped, not applied: it is counted in the
    step's ``skipped_steps``, the run goes on and every checkpoint holds finite weights."""
    poison_loss(monkeypatch, at_call=2)
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    summary = _fit(cache, run, "train.steps=3", "train.ckpt_every=1", "train.val_every=3")
    assert summary["step"] == 3
    train = [r for r in _records(run) if r["split"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in train] == [(1, 0), (2, 1), (3, 0)]
    assert all(np.isfinite(r["loss"]) for r in (train[0], train[2]))
    assert "step 2: gradient norm nan" in capsys.readouterr().out
    for name in ("last.pt", "previous.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values()), name


def test_a_run_whose_gradients_stay_non_finite_stops(tmp_path: Path, monkeypatch):
    """Skips in a row beyond ``MAX_SKIPS_IN_A_ROW`` stop the run with the remedies; the last
    checkpoint is the finite state before them."""
    real = make_loss

    def poisoned(cfg):
        loss = real(cfg)
        calls = []

        def fn(logits, target):
            calls.append(1)
            value = loss(logits, target)
            return value * float("nan") if len(calls) > 1 else value
        return fn

    monkeypatch.setattr("glioseg.train.components.make_loss", poisoned)
    monkeypatch.setattr(F, "MAX_SKIPS_IN_A_ROW", 2)
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    with pytest.raises(F.TrainError, match=r"step 3: .*2 steps in a row.*optim\.lr.*train\.amp"):
        _fit(cache, run, "train.steps=5", "train.ckpt_every=1", "train.val_every=5")
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_resume_with_lower_lr_and_other_precision(tmp_path: Path, capsys):
    """The remedies the divergence error names can be applied on resume: another
    ``optim.lr`` (the schedule then peaks at it) and another ``train.amp``; what changed is
    printed and kept as a ``resume`` record of metrics.jsonl."""
    from glioseg.train.schedule import lr_factor

    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=2", "train.ckpt_every=1", "train.val_every=2",
         "optim.lr=0.01")
    capsys.readouterr()
    summary = _fit(cache, run, "train.steps=4", "train.ckpt_every=1", "train.val_every=2",
                   "optim.lr=0.001", "train.amp=bf16", resume=True)
    assert summary["step"] == 4
    out = capsys.readouterr().out
    assert "resume: optim.lr changed: 0.01 -> 0.001" in out
    assert "resume: train.amp changed: 'none' -> 'bf16'" in out
    records = _records(run)
    resumed = [r for r in records if r["split"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["step"] == 2
    assert resumed[0]["checkpoint"] == "last.pt"
    assert resumed[0]["changed"]["optim.lr"] == [0.01, 0.001]
    assert resumed[0]["changed"]["train.amp"] == ["none", "bf16"]
    # the learning rate after each resumed step is the new peak times the schedule's factor
    # (the record's lr is the one the next step uses)
    lrs = {r["step"]: r["lr"] for r in records if r["split"] == "train"}
    assert lrs[1] == pytest.approx(0.01 * lr_factor(1, 2, 0, "poly"))
    for step in (3, 4):
        assert lrs[step] == pytest.approx(0.001 * lr_factor(step, 4, 0, "poly"))
    final = torch.load(run / "last.pt", weights_only=True)
    assert final["config"]["optim"]["lr"] == 0.001 and final["config"]["train"]["amp"] == "bf16"
    # a key outside those that may change is still refused
    with pytest.raises(F.TrainError, match="train.seed"):
        _fit(cache, run, "train.steps=4", "train.seed=3")


def test_unreadable_checkpoints_are_reported_and_never_overwritten(tmp_path: Path, capsys):
    """A torn last.pt: the run resumes from previous.pt with a warning naming last.pt. No
    readable checkpoint at all: an error naming them; metrics.jsonl and best/ are untouched."""
    from datafiles import truncate as torn

    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=2", "train.ckpt_every=1", "train.val_every=2")
    torn(run / "last.pt")
    capsys.readouterr()
    assert _fit(cache, run, "train.steps=3", "train.ckpt_every=1", "train.val_every=3")["step"] == 3
    out = capsys.readouterr().out
    assert f"warning: {run / 'last.pt'}: unreadable checkpoint" in out
    assert "resuming from previous.pt (step 1)" in out
    assert f"resuming {run} from step 1" in out
    resumed = [r for r in _records(run) if r["split"] == "resume"]
    assert resumed[0]["checkpoint"] == "previous.pt" and "last.pt" in resumed[0]["notes"][0]

    torn(run / "last.pt")
    torn(run / "previous.pt")
    kept = {p: p.read_bytes() for p in [run / "metrics.jsonl", *(run / "best").iterdir()]}
    with pytest.raises(F.TrainError) as err:
        _fit(cache, run, "train.steps=3")
    assert "last.pt" in str(err.value) and "previous.pt" in str(err.value)
    assert {p: p.read_bytes() for p in kept} == kept


def test_resume_removes_a_checkpoint_half_written_by_a_killed_run(tmp_path: Path):
    """A kill during ``save_last`` leaves ``.last.pt.<random>.tmp.pt`` (~17 MB for the small
    preset); the resumed run removes it and resumes from the whole ``last.pt``."""
    from glioseg.io_atomic import temporary_name

    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=2", "train.ckpt_every=1", "train.val_every=2")
    half = temporary_name(run / "last.pt")
    half.write_bytes(b"torn checkpoint")
    summary = _fit(cache, run, "train.steps=3", "train.ckpt_every=1", "train.val_every=3",
                   resume=True)
    assert summary["step"] == 3 and not half.exists()
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


# --------------------------------------------------------------------------- what a run says and keeps

def _files(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``run``: its bytes and modification time (ns)."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_the_split_is_printed_kept_in_split_json_and_on_the_cards(tmp_path: Path, capsys):
    cache = _tiny_cache(tmp_path / "cache", n=3)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=2", "train.val_every=2", "data.n_val=4")
    out = capsys.readouterr().out
    split = json.loads((run / "split.json").read_text())
    val, train = split["validation"], split["train"]
    assert len(val) == 2 and len(train) == 1 and sorted(val + train) == [
        "CASE_000", "CASE_001", "CASE_002"]
    assert split["validation_source"] == "hold-out" and split["seed"] == 0
    assert (f"training on 1 case, validating on 2 (held out at random, train.seed 0): "
            f"{', '.join(val)} (all listed in {run}/split.json)") in out
    # fewer validation cases than data.n_val asks for: said, with why
    assert "data.n_val 4 reduced to 2: the run has 3 cases with labels" in out
    for sub in ("best", "last"):
        card = json.loads((run / sub / "card.json").read_text())
        assert card["training"]["validation_cases"] == val


def test_split_lines_shorten_a_long_list_and_say_no_validation(tmp_path: Path):
    from types import SimpleNamespace

    from glioseg.train import config as C
    from glioseg.train.cases import split_lines

    cases = [SimpleNamespace(case_id=f"C{i:02d}") for i in range(30)]
    cfg = C.load_config("small", ["data.n_val=12"])
    first = split_lines(cfg, cases[:18], cases[18:], tmp_path)[0]
    assert first.endswith(f"C18, C19, C20, C21, C22, C23, C24, C25, C26, C27, ... (+2 more) "
                          f"(all listed in {tmp_path}/split.json)")
    none = split_lines(C.load_config("small", ["data.n_val=0"]), cases, [])
    assert none == ["training on 30 cases, no validation (data.n_val 0)"]
    genesis = C.load_config("small", ["train.task=genesis"])
    assert split_lines(genesis, cases, []) == ["pretraining on 30 cases (no validation)"]


def test_a_finished_run_is_reported_and_left_as_it_is(tmp_path: Path, capsys):
    import shutil

    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _fit(cache, run, "train.steps=2", "train.val_every=2")
    kept = _files(run)
    assert "timings.json" in kept and "config.yaml" in kept and "split.json" in kept
    capsys.readouterr()
    again = _fit(cache, run, "train.steps=2", "train.val_every=2")
    assert again["finished"] and again["step"] == 2 and again["changed"] == []
    # another data source on a finished run: reported, nothing trained or rewritten
    other = shutil.copytree(cache, tmp_path / "other")
    moved = _fit(other, run, "train.steps=2", "train.val_every=2")
    assert moved["finished"] and moved["changed"] == ["data.cache_dir"]
    assert _files(run) == kept
    assert "resuming" not in capsys.readouterr().out
    # the line the command prints
    from glioseg.train.launch import summary_lines

    (line,) = summary_lines(moved, run)
    assert line.startswith(f"{run}: the run is already finished at step 2 (train.steps 2): "
                           "nothing was trained or rewritten; the options that differ from its "
                           "checkpoint (data.cache_dir) were not applied")
    assert f"glioseg train --out {run} --resume --set train.steps=N (N > 2)" in line
    # another experiment in the folder is still refused
    with pytest.raises(F.TrainError, match="train.seed"):
        _fit(cache, run, "train.steps=2", "train.seed=3")
    # more steps: the run goes on from its checkpoint
    assert _fit(cache, run, "train.steps=3", "train.val_every=3", resume=True)["step"] == 3


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path: Path):
    from glioseg.errors import GliosegError

    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    with pytest.raises(GliosegError, match="patch_size"):
        _fit(cache, run, "data.patch_size=[15,15,15]")  # not a multiple of the divisor
    assert not run.exists()


def _interrupt_at(monkeypatch, calls: set[int], times: int = 1) -> None:
    """SIGINT (``times`` of them) to this process during the training steps ``calls``."""
    from glioseg.train import loop as L

    real, seen = L.train_step, []

    def step(*args, **kwargs):
        seen.append(1)
        if len(seen) in calls:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "train_step", step)


def test_ctrl_c_saves_the_step_and_the_run_resumes_from_it(tmp_path: Path, monkeypatch, capsys):
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, {3})
    with pytest.raises(KeyboardInterrupt) as err:
        _fit(cache, run, "train.steps=6", "train.ckpt_every=100", "train.val_every=100")
    assert str(err.value) == (f"interrupted at step 3; last checkpoint: step 3 "
                              f"({run / 'last.pt'}); continue with: glioseg train --out {run} "
                              "--resume")
    assert "stopping after the step in progress" in capsys.readouterr().err
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    monkeypatch.undo()
    summary = _fit(cache, run, "train.steps=6", "train.ckpt_every=100", "train.val_every=100",
                   resume=True)
    assert summary["step"] == 6
    records = _records(run)
    assert [r["step"] for r in records if r["split"] == "resume"] == [3]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 7))


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path: Path, monkeypatch):
    cache = _tiny_cache(tmp_path / "cache", n=2)
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, {2}, times=2)
    with pytest.raises(KeyboardInterrupt) as err:
        _fit(cache, run, "train.steps=6", "train.ckpt_every=100", "train.val_every=100")
    assert not (run / "last.pt").exists()
    assert str(err.value).startswith("interrupted at step 1; last checkpoint: none yet")
