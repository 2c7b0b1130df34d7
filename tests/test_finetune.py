"""Fine-tuning and self-supervised pretraining through the training run: weights loaded by
name with a report, sequences chosen by name, frozen stages really unchanged, gradual
unfreezing by learning-rate gates, Models Genesis pretraining whose encoder transfers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_fit import TINY, _tiny_cache

from glioseg.model.card import load_card, load_state_dict
from glioseg.model.registry import build_model
from glioseg.train import config as C
from glioseg.train import fit as F
from glioseg.train.components import make_optimizer, make_scheduler
from glioseg.transfer import freeze as FZ


def _cfg(cache: Path, *extra: str) -> C.Config:
    return C.load_config("small", [*TINY, f"data.cache_dir={cache}", *extra])


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_cache(tmp_path_factory.mktemp("ft_cache"), n=3)


@pytest.fixture(scope="module")
def source_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("source_run")
    F.fit(_cfg(cache, "train.steps=3", "train.val_every=3", "train.seed=1"), run)
    return run


def _encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("encoder.") and k.endswith("weight")
            and v.ndim == 5}


def test_frozen_encoder_fine_tuning_on_other_sequences(cache: Path, source_run: Path,
                                                       tmp_path: Path):
    src_state = load_state_dict(source_run / "best" / "model.safetensors")
    run = tmp_path / "ft"
    cfg = _cfg(cache, "train.steps=2", "train.val_every=2",
               f"transfer.init_from={source_run / 'best'}", "transfer.strategy=frozen-encoder",
               "data.modalities=[flair,t2]")
    assert cfg.model.in_channels == 2
    F.fit(cfg, run)
    report = json.loads((run / "load_report.json").read_text())
    first = "encoder.stages.0.convs.0.conv.weight"
    assert report["adapted"] == [first]
    assert report["new"] == [] and report["unused"] == []
    card = load_card(run / "last")
    assert card.modalities == ("flair", "t2")
    assert card.provenance["source"] == "fine-tuned"
    after = load_state_dict(run / "last" / "model.safetensors")
    # the input filters: source channels flair (3) and t2 (2), scaled by 4/2, never trained
    expected = src_state[first][:, [3, 2]] * 2.0
    torch.testing.assert_close(after[first], expected, rtol=0, atol=0)
    for k, v in _encoder_weights(src_state).items():
        if k != first:
            assert torch.equal(after[k], v), f"{k} moved although the encoder is frozen"
    head = [k for k in after if k.startswith("decoder.")]
    assert any(not torch.equal(after[k], src_state[k]) for k in head), "the decoder did not train"


def test_gradual_gates_train_the_head_first_and_everything_last():
    model = build_model(C.load_config("small", TINY).model)
    groups = FZ.gated_param_groups(model, train_norms=False)
    n = 1 + max(g["depth"] for g in groups)
    total = 10 * n
    cfg = C.load_config("small", [*TINY, f"train.steps={total}", "optim.warmup_steps=0",
                                  "optim.schedule=constant"])
    opt = make_optimizer(cfg.optim, groups)
    sched = make_scheduler(cfg, opt)
    x = torch.randn(1, 4, 16, 16, 16)
    stages = FZ.stage_parameters(model)

    def step() -> list[bool]:
        before = [[p.detach().clone() for _, p in st] for st in stages]
        model(x)[0].square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        return [any(not torch.equal(b, p) for b, (_, p) in zip(bs, st, strict=True))
                for bs, st in zip(before, stages, strict=True)]

    moved = step()  # step 0: only the stage nearest the output trains
    assert moved == [False] * (n - 1) + [True]
    for _ in range(total - 2):
        step()
    assert step() == [True] * n, "the last stretch trains every stage"


def test_gradual_gate_points():
    g = {"gated": True, "depth": 2}
    assert [FZ.gradual_lr_gate(g, s, 100, 4) for s in (0, 49, 50, 99)] == [0, 0, 1, 1]
    assert FZ.gradual_lr_gate({"gated": False, "depth": 3}, 0, 100, 4) == 1.0


def test_genesis_pretraining_then_fine_tuning(cache: Path, tmp_path: Path):
    pre = tmp_path / "pre"
    summary = F.fit(_cfg(cache, "train.task=genesis", "train.steps=3"), pre)
    assert summary["step"] == 3
    card = load_card(pre / "last")
    assert card.regions == ("restore_t1", "restore_t1ce", "restore_t2", "restore_flair")
    assert card.provenance["method"] == "models-genesis"
    assert card.config.out_channels == 4 and not card.config.deep_supervision
    losses = [json.loads(x)["loss"] for x in (pre / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)
    ft = tmp_path / "ft"
    F.fit(_cfg(cache, "train.steps=1", "train.val_every=1", f"transfer.init_from={pre / 'last'}"),
          ft)
    report = json.loads((ft / "load_report.json").read_text())
    assert report["new"] and all(k.startswith("decoder.heads.") for k in report["new"])
    assert any(k.startswith("encoder.") for k in report["loaded"])


def test_genesis_batch_is_reproducible_and_keeps_the_original_as_target():
    from glioseg.train.loop import Batch

    img = torch.randn(2, 4, 16, 16, 16)
    a = F.genesis_batch(Batch(img, torch.zeros(2, 3, 16, 16, 16)), 0, 0, 5)
    b = F.genesis_batch(Batch(img, torch.zeros(2, 3, 16, 16, 16)), 0, 0, 5)
    c = F.genesis_batch(Batch(img, torch.zeros(2, 3, 16, 16, 16)), 0, 0, 6)
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)
    assert torch.equal(a.target, img) and not torch.equal(a.image, img)


def test_unknown_modality_is_a_config_error():
    with pytest.raises(C.ConfigError, match="data.modalities"):
        C.load_config("small", ["data.modalities=[t1,dwi]"])


def test_cli_finetune_takes_the_architecture_from_the_card(cache: Path, source_run: Path,
                                                           tmp_path: Path):
    from typer.testing import CliRunner

    from glioseg.cli import app

    # the preset's defaults (base_width 16) differ from the source's (4): the card wins
    sets = [a for s in TINY if not s.startswith("model.")
            for a in ("--set", s)]
    res = CliRunner().invoke(app, ["finetune", "--from", str(source_run / "best"),
                                   "--data", str(cache), "--out", str(tmp_path / "ft"),
                                   "--modalities", "t2w,flair", "--strategy", "discriminative",
                                   *sets, "--set", "train.steps=1"])
    assert res.exit_code == 0, res.output
    assert "1 adapted" in res.output and "0 newly initialised" in res.output
    card = load_card(tmp_path / "ft" / "last")
    assert card.modalities == ("t2", "flair") and card.config.base_width == 4


def test_cli_finetune_trains_on_the_source_patch_size_unless_told(cache: Path, source_run: Path,
                                                                  tmp_path: Path):
    from test_fit import SIZE
    from typer.testing import CliRunner

    from glioseg.cli import app

    assert SIZE != C.load_config("small").patch_size[0]  # the card, not the preset, decides
    sets = [a for s in TINY if not s.startswith(("model.", "data.patch_size"))
            for a in ("--set", s)]
    base = ["finetune", "--from", str(source_run / "best"), "--data", str(cache), *sets,
            "--set", "train.steps=1"]
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "ft")])
    assert res.exit_code == 0, res.output
    assert C.load_config(str(tmp_path / "ft" / "config.yaml")).patch_size == (SIZE,) * 3
    other = 2 * SIZE
    res = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "ft2"),
                                   "--set", f"data.patch_size=[{other},{other},{other}]"])
    assert res.exit_code == 0, res.output
    assert C.load_config(str(tmp_path / "ft2" / "config.yaml")).patch_size == (other,) * 3


def _two_sequence_site(root: Path, n: int = 2) -> Path:
    """Raw BraTS 2021 cases with only T2 and FLAIR files (and segmentations)."""
    from datafiles import write_brats_case

    rng = np.random.default_rng(2)
    seg = np.zeros((18, 16, 14), np.uint8)
    seg[6:12, 5:11, 4:10] = 2
    seg[8:10, 7:9, 6:8] = 4
    for i in range(n):
        images = {m: (100 + 10 * rng.normal(size=seg.shape)).astype(np.float32)
                  for m in ("t2", "flair")}
        write_brats_case(root, "brats2021", index=i, images=images, seg=seg,
                         skip=("t1", "t1ce"))
    return root


def test_cli_finetune_reads_the_sequences_from_the_data(source_run: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.preprocess.run import preprocess_dir

    assert load_card(source_run / "best").modalities == ("t1", "t1ce", "t2", "flair")
    site = tmp_path / "site"
    preprocess_dir(_two_sequence_site(tmp_path / "raw"), site, modalities="t2,flair")
    sets = [a for s in TINY if not s.startswith("model.") for a in ("--set", s)]
    res = CliRunner().invoke(app, ["finetune", "--from", str(source_run / "best"),
                                   "--data", str(site), "--out", str(tmp_path / "ft"), *sets,
                                   "--set", "train.steps=1", "--set", "data.n_val=0"])
    assert res.exit_code == 0, res.output
    assert "sequences: t2, flair, read from the data" in res.output
    assert "input sequences differ" in res.output  # the printed load report says so
    assert C.load_config(str(tmp_path / "ft" / "config.yaml")).data.modalities == ("t2", "flair")
    report = json.loads((tmp_path / "ft" / "load_report.json").read_text())
    assert report["adapted"] == ["encoder.stages.0.convs.0.conv.weight"]
    card = load_card(tmp_path / "ft" / "last")
    assert card.modalities == ("t2", "flair") and card.config.in_channels == 2


@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_finetune_and_pretrain_pass_max_restarts_to_torchrun(command: str, cache: Path,
                                                             source_run: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    import subprocess

    from typer.testing import CliRunner

    from glioseg.cli import app

    launched = []
    popen = subprocess.Popen

    class Torchrun:  # subprocess.Popen of torchrun: recorded, exits with 0
        def wait(self):
            return 0

    def start(cmd, *a, **k):  # other commands run as usual
        if "torch.distributed.run" not in cmd:
            return popen(cmd, *a, **k)
        launched.append(cmd)
        return Torchrun()

    monkeypatch.setattr(subprocess, "Popen", start)
    extra = ["--from", str(source_run / "best")] if command == "finetune" else []
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [command, *extra, "--data", str(cache), "--out", str(out),
                                   "--nproc", "2", "--max-restarts", "3"])
    assert res.exit_code == 0, res.output
    (cmd,) = launched
    assert "--max-restarts=3" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[cmd.index("glioseg") + 1] == "train"  # the workers run the shared training
    cfg = C.load_config(str(out / "launch.yaml"))
    if command == "pretrain":
        assert cfg.train.task == "genesis"
    else:
        assert cfg.transfer.init_from == str((source_run / "best").resolve())
