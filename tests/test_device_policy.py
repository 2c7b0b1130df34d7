"""``train.amp`` / ``train.channels_last`` / ``train.compile`` = ``auto``
(``glioseg.train.device_policy``): the CPU rules, the GPU probe's decision on injected timings,
and the record a run keeps."""

import json
import math
from pathlib import Path

import pytest
import torch

from glioseg.train import config as C
from glioseg.train import device_policy as P
from glioseg.train import loop as L

AUTO = {"amp": "auto", "channels_last": "auto", "compile": "auto"}
CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
TINY = ["model.base_width=4", "model.n_stages=2", "model.max_width=8",
        "data.patch_size=[16,16,16]", "data.batch_size=1"]


@pytest.fixture
def fake_gpu(monkeypatch):
    """A GPU name without a GPU (the decisions never touch the device when given a probe)."""
    monkeypatch.setattr(P, "device_name", lambda d: "cuda:0 Fake" if d.type == "cuda" else "cpu")
    monkeypatch.setattr(P, "gpu_has_bf16", lambda: True)


@pytest.mark.parametrize("native, amp", [(True, "bf16"), (False, "none")])
def test_cpu_rules(monkeypatch, native: bool, amp: str):
    """CPU: bf16 only where native, channels_last on, never compiled; no probe is run."""
    monkeypatch.setattr(L, "native_bf16_cpu", lambda: native)
    choice = P.choose(AUTO, CPU, steps=10**6, measure=lambda c: pytest.fail("probed on CPU"))
    assert (choice.amp, choice.channels_last, choice.compile) == (amp, True, False)
    assert choice.trials == [] and "auto" in choice.reasons["amp"]
    explicit = P.choose({"amp": "none", "channels_last": False, "compile": True}, CPU, 10)
    assert (explicit.amp, explicit.channels_last, explicit.compile) == ("none", False, True)
    assert set(explicit.reasons.values()) == {"as set"}


def _fake_probe(cost: dict[tuple[str, bool], float], nan: set = frozenset()):
    """``measure`` with a fake clock: a step of candidate (amp, layout) takes ``cost`` seconds;
    candidates in ``nan`` return a non-finite loss."""
    now = [0.0]

    def make_step(c: P.Candidate):
        def step():
            now[0] += cost[(c.amp, c.channels_last)]
            return torch.tensor(math.nan if (c.amp, c.channels_last) in nan else 0.5)
        return step
    return lambda c: P.time_trial(c, make_step, steps=4, warmup=1, clock=lambda: now[0])


def test_gpu_probe_chooses_the_fastest_safe(fake_gpu):
    costs = {("fp16", False): 0.060, ("fp16", True): 0.080, ("bf16", False): 0.070,
             ("bf16", True): 0.090}
    choice = P.choose(AUTO, CUDA, steps=250000, measure=_fake_probe(costs), bf16=True)
    assert (choice.amp, choice.channels_last, choice.compile) == ("fp16", False, True)
    assert [(t["amp"], t["channels_last"], t["scaler"]) for t in choice.trials] == [
        ("fp16", False, True), ("fp16", True, True), ("bf16", False, False),
        ("bf16", True, False)]
    assert [t["seconds_per_step"] for t in choice.trials] == pytest.approx(
        [0.060, 0.080, 0.070, 0.090])
    assert "60.0 ms/step" in choice.reasons["amp"]
    # a short run is not compiled; an explicit layout is kept and only amp is probed
    short = P.choose({**AUTO, "channels_last": True}, CUDA, steps=100,
                     measure=_fake_probe(costs), bf16=True)
    assert (short.amp, short.channels_last, short.compile) == ("fp16", True, False)
    assert len(short.trials) == 2 and short.reasons["channels_last"] == "as set"


def test_a_non_finite_probe_rules_a_precision_out(fake_gpu):
    costs = {("fp16", False): 0.050, ("fp16", True): 0.040, ("bf16", False): 0.070,
             ("bf16", True): 0.090}
    choice = P.choose(AUTO, CUDA, steps=10, bf16=True,
                      measure=_fake_probe(costs, nan={("fp16", False), ("fp16", True)}))
    assert (choice.amp, choice.channels_last) == ("bf16", False)
    assert [t["ruled_out"] for t in choice.trials[:2]] == ["non-finite loss"] * 2
    with pytest.raises(P.DevicePolicyError, match="non-finite"):
        P.choose(AUTO, CUDA, steps=10, bf16=False,
                 measure=_fake_probe(costs, nan={("fp16", False), ("fp16", True)}))


def test_fp16_only_with_a_scaler():
    """The probe gives fp16 a GradScaler; a trial of fp16 without one is never chosen, even
    when it is the fastest; a failed trial is never chosen either."""
    assert all(c.scaler == (c.amp == "fp16") for c in P.candidates("auto", "auto", True))
    fast = P.Trial(P.Candidate("fp16", False, scaler=False), 0.01, True)
    oom = P.Trial(P.Candidate("bf16", True, False), math.inf, False, "OutOfMemoryError")
    ok = P.Trial(P.Candidate("bf16", False, False), 0.05, True)
    assert fast.unsafe() == "fp16 without a GradScaler"
    assert P.fastest_safe([fast, oom, ok]) is ok


def test_a_failing_trial_is_recorded_not_raised():
    def make_step(c):
        raise RuntimeError("CUDA out of memory")
    trial = P.time_trial(P.Candidate("bf16", False, False), make_step)
    assert trial.unsafe().startswith("failed: RuntimeError: CUDA out of memory")


def test_the_probe_times_the_real_step():
    """``probe_measure`` runs the run's own step (model, optimiser, loss) on random data."""
    cfg = C.load_config("small", TINY)
    trial = P.probe_measure(cfg, CPU, steps=1, warmup=1)(P.Candidate("none", False, False))
    assert trial.unsafe() is None and 0 < trial.seconds_per_step < 60


def test_the_run_records_the_choice_and_reuses_it(tmp_path: Path, fake_gpu, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    cfg = C.load_config("small", [*TINY, "train.channels_last=auto", "train.compile=auto"])
    said: list[str] = []
    costs = {("fp16", False): 0.03, ("fp16", True): 0.02, ("bf16", False): 0.05,
             ("bf16", True): 0.04}
    probe = _fake_probe(costs)
    run, choice = P.choose_for_run(cfg, CUDA, tmp_path, measure=lambda c: probe(c),
                                   say=said.append)
    assert (run.train.amp, run.train.channels_last, run.train.compile) == ("fp16", True, False)
    doc = json.loads((tmp_path / P.RECORD).read_text())
    assert doc["amp"] == "fp16" and doc["requested"]["channels_last"] == "auto"
    assert doc["cudnn_benchmark"] and torch.backends.cudnn.benchmark
    assert said[0].endswith("cudnn.benchmark on")
    assert len(doc["trials"]) == 4
    assert said[0].startswith("device cuda:0 Fake: amp fp16") and "probe fp16+scaler" in said[1]
    # the same run again (a resume): the record is reused, nothing is probed
    said.clear()
    again, _ = P.choose_for_run(cfg, CUDA, tmp_path, measure=lambda c: pytest.fail("probed"),
                                say=said.append)
    assert again.train == run.train and "reused" in said[0]
    # resumed from its own config.yaml (the chosen values, explicit): no probe, and the record
    # that explains them is kept
    P.choose_for_run(run, CUDA, tmp_path, measure=lambda c: pytest.fail("probed"), say=said.append)
    assert json.loads((tmp_path / P.RECORD).read_text()) == doc
    # another request decides afresh; a rank that is not the main one takes the shared choice
    other = C.load_config("small", [*TINY, "train.amp=none", "train.channels_last=false"])
    shared = []
    res, _ = P.choose_for_run(other, CPU, tmp_path, say=shared.append)
    assert (res.train.amp, res.train.channels_last, res.train.compile) == ("none", False, False)
    assert json.loads((tmp_path / P.RECORD).read_text())["amp"] == "none"
    follower, _ = P.choose_for_run(cfg, CUDA, None, main=False,
                                   share=lambda doc: choice.to_json(), say=pytest.fail)
    assert follower.train == run.train


def test_auto_keys_load_and_old_configs_still_load(tmp_path: Path):
    cfg = C.load_config("full", ["train.channels_last=auto", "train.compile=auto"])
    assert cfg.train.channels_last == "auto" and cfg.train.compile == "auto"
    old = C.config_to_dict(C.load_config("small"))
    old["train"].update(channels_last=False, compile=True)
    back = C.config_from_dict(old)
    assert back.train.channels_last is False and back.train.compile is True
    path = tmp_path / "config.yaml"
    C.dump_config(cfg, path)
    assert C.load_config(path).train == cfg.train
    with pytest.raises(C.ConfigError, match="train.channels_last"):
        C.load_config(None, ["train.channels_last=sometimes"])


def test_whole_volume_validation_turns_cudnn_benchmark_off_inside(monkeypatch):
    """Each whole volume has its own shape: no algorithm timing for it; the flag comes back."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.benchmark)
            return x[:, :3]
    image = torch.zeros(1, 4, 8, 8, 8)
    L.predict_logits(Probe(), image, mode="whole", divisor=4)
    L.predict_logits(Probe(), image, mode="sliding", roi=(8, 8, 8))
    assert seen == [False, True] and torch.backends.cudnn.benchmark
