"""train/launch.py: the config a launch resolves, the data it prepares, the sequences and
overrides of a fine-tuning or pretraining, and the torchrun command and environment of a run
on several processes or nodes."""

import dataclasses
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_finetune import _two_sequence_site
from test_fit import _tiny_cache

from glioseg.train import config as C
from glioseg.train import launch as LA
from glioseg.train.errors import TrainError


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_cache(tmp_path_factory.mktemp("launch_cache"), n=1)


# --------------------------------------------------------------------------- torchrun

def fake_torchrun(monkeypatch: pytest.MonkeyPatch, code: int = 0,
                  raise_signal: int | None = None) -> tuple[list, list]:
    """``subprocess.Popen`` of torchrun replaced (other commands run as usual): each start is
    recorded (command, keyword arguments); ``raise_signal``, when given, is sent to this
    process while torchrun "runs" (Ctrl-C, a scheduler's SIGTERM); torchrun then exits with
    ``code``. Returns the starts and the signals passed on to torchrun."""
    launched: list = []
    forwarded: list = []
    popen = subprocess.Popen

    class Torchrun:
        def __init__(self, cmd, **kw):
            launched.append((cmd, kw))
            self.pid, self.returncode = 0, None

        def send_signal(self, sig):
            forwarded.append(sig)

        def wait(self):
            if raise_signal is not None:
                signal.raise_signal(raise_signal)
            self.returncode = code
            return code

    def start(cmd, *a, **kw):
        return Torchrun(cmd, **kw) if "torch.distributed.run" in cmd else popen(cmd, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", start)
    return launched, forwarded


def test_torchrun_command_single_and_multi_node():
    one = LA.torchrun_command(["--out", "r"], nproc=2, max_restarts=3)
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--max-restarts=3",
                       "--standalone", "-m", "glioseg", "train", "--out", "r"]
    two = LA.torchrun_command(["--out", "r"], nproc=4, nnodes=2, node_rank=1,
                              rdzv_endpoint="node0:29500", run_id="brats")
    assert two[5:10] == ["--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d",
                         "--rdzv-endpoint=node0:29500", "--rdzv-id=brats"]
    assert "--standalone" not in two
    for bad in ({"nnodes": 2}, {"nnodes": 2, "rdzv_endpoint": "h:1", "node_rank": 2},
                {"nproc": 0}):
        kwargs = {"nproc": 2, **bad}
        try:
            LA.torchrun_command([], **kwargs)
        except TrainError:
            continue
        raise AssertionError(f"{kwargs} accepted")


def test_several_nodes_get_a_fresh_rendezvous_store_per_round():
    base = {"PATH": "/bin"}
    assert LA.torchrun_env(1, base) == base
    assert LA.torchrun_env(2, base) == {"PATH": "/bin", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    # the variable is one torch's rendezvous reads (a renamed one would silently do nothing)
    import inspect

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous

    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" in inspect.getsource(dynamic_rendezvous)


def test_multi_node_launch_has_one_writer_of_launch_yaml(cache: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """``train --nnodes 2``: node 0's launcher writes OUT/launch.yaml (the config every
    worker reads); the launcher of node 1 does not write it, yet runs its workers on it."""
    launched, _ = fake_torchrun(monkeypatch, 0)
    out = tmp_path / "out"
    for node in (1, 0):
        code = LA.launch_training(out, cache, "small", ["optim.lr=0.002"], nproc=2, nnodes=2,
                                  node_rank=node, rdzv_endpoint="node0:29500")
        assert code == 0  # torchrun's status: relaunched, not run here
        if node == 1:
            assert not (out / "launch.yaml").exists()
    assert (out / "launch.yaml").is_file()
    commands = [cmd for cmd, _ in launched]
    assert all(cmd[cmd.index("--config") + 1] == str(out / "launch.yaml") for cmd in commands)
    assert ["--node-rank=1" in cmd for cmd in commands] == [True, False]
    assert C.load_config(out / "launch.yaml").optim.lr == 0.002


def test_relaunch_passes_resume_and_profile_and_returns_torchrun_status(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    launched, forwarded = fake_torchrun(monkeypatch, 3)
    cfg = C.load_config("small", [f"data.cache_dir={cache}"])
    code = LA.relaunch(cfg, tmp_path / "run", resume=True, nproc=2, profile=True,
                       profile_steps=7, max_restarts=1)
    assert code == 3 and forwarded == []  # a failed run is no interrupt
    ((cmd, kw),) = launched
    env = kw["env"]
    run = tmp_path / "run"
    assert cmd[-8:] == ["--out", str(run), "--config", str(run / "launch.yaml"), "--resume",
                        "--profile", "--profile-steps", "7"]
    assert "--max-restarts=1" in cmd and "--standalone" in cmd
    assert env == LA.torchrun_env(1)  # one node: the environment as it is
    # a process group of its own: a terminal's Ctrl-C reaches torchrun once, passed on
    assert kw["process_group"] == 0


# --------------------------------------------------------------------------- config and data

def test_resolve_config_preset_resume_and_data(cache: Path, tmp_path: Path):
    out = tmp_path / "run"
    cfg = LA.resolve_config(out, cache, None, ["optim.lr=0.003"])
    assert cfg.data.cache_dir == str(cache.resolve()) and cfg.optim.lr == 0.003
    assert cfg.model == C.load_config("small").model  # the default preset
    out.mkdir()
    C.dump_config(C.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.007)),
                  out / "config.yaml")
    assert LA.resolve_config(out, None, None, [], resume=True).optim.lr == 0.007
    assert LA.resolve_config(out, cache, None, []).optim.lr != 0.007  # not without --resume
    with pytest.raises(TrainError, match="no data: pass --data"):
        LA.resolve_config(tmp_path / "other", None, None, [])


def test_prepare_data_takes_a_cache_as_it_is_and_refuses_a_missing_folder(cache: Path,
                                                                           tmp_path: Path):
    assert LA.is_cache(cache) and not LA.is_cache(tmp_path)
    assert LA.prepare_data(cache, tmp_path / "run") == cache
    with pytest.raises(TrainError, match="no such folder"):
        LA.prepare_data(tmp_path / "nope", tmp_path / "run")


def test_prepare_data_on_another_rank_waits_for_rank_0(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="rank 1 waited 0 s for rank 0"):
        LA.prepare_data(raw, tmp_path / "run", wait_s=0.0)
    assert not (tmp_path / "run" / "cache").exists()  # rank 1 never preprocesses


def test_data_modalities_of_a_cache_and_of_a_raw_folder(cache: Path, tmp_path: Path):
    from glioseg.preprocess.run import preprocess_dir

    raw = _two_sequence_site(tmp_path / "raw")
    assert LA.data_modalities(raw)[0] == ["t2", "flair"]
    preprocess_dir(raw, tmp_path / "c2", modalities="flair,t2")
    mods, where = LA.data_modalities(tmp_path / "c2")
    assert mods == ["t2", "flair"] and "selected_modalities" in where
    assert LA.data_modalities(cache)[0] == ["t1", "t1ce", "t2", "flair"]  # an older cache: all
    # the source's sequences (its order) when the data has them all, else the data's
    assert LA.finetune_modalities(["flair", "t1ce"], ["t1", "t1ce", "t2", "flair"]) == \
        ["flair", "t1ce"]
    assert LA.finetune_modalities(["t1", "t1ce", "t2", "flair"], ["t2", "flair"]) == \
        ["t2", "flair"]
    with pytest.raises(TrainError, match="no such folder"):
        LA.data_modalities(tmp_path / "nope")


# --------------------------------------------------------------------------- fine-tuning

CARD = SimpleNamespace(modalities=("T1", "t1ce", "t2", "flair"),
                       model={"base_width": 8, "in_channels": 4, "out_channels": 3,
                              "deep_supervision": True, "patch_size": [32, 32, 32]},
                       preprocessing={"spacing": [2.0, 2.0, 2.0]})


def test_finetune_sequences_named_read_from_the_data_or_the_cards(cache: Path, tmp_path: Path):
    said = []
    assert LA.finetune_sequences(CARD, "FLAIR, t2", None, False, said.append) == ["flair", "t2"]
    assert LA.finetune_sequences(CARD, None, None, False, said.append) == \
        ["t1", "t1ce", "t2", "flair"]
    assert LA.finetune_sequences(CARD, None, None, True, said.append) is None  # the run's own
    assert LA.finetune_sequences(CARD, None, cache, False, said.append) == \
        ["t1", "t1ce", "t2", "flair"]
    assert said == []  # nothing to say while the card's sequences are used
    raw = _two_sequence_site(tmp_path / "raw")
    assert LA.finetune_sequences(CARD, None, raw, False, said.append) == ["t2", "flair"]
    assert len(said) == 1 and said[0].startswith("sequences: t2, flair, read from the data")


def test_finetune_overrides_take_the_cards_architecture_unless_resumed(tmp_path: Path):
    sets = LA.finetune_overrides(CARD, tmp_path / "m", strategy="gradual", layer_decay=0.5,
                                 new_head=True, modalities=["t2", "flair"],
                                 sets=["train.steps=3"], resume=False)
    assert sets == ["model.base_width=8", "data.patch_size=[32, 32, 32]",
                    f"transfer.init_from={(tmp_path / 'm').resolve()}",
                    "transfer.strategy=gradual", "transfer.layer_decay=0.5",
                    "transfer.new_head=True", "data.modalities=[t2,flair]", "train.steps=3"]
    resumed = LA.finetune_overrides(CARD, tmp_path / "m", strategy="full", layer_decay=0.0,
                                    new_head=False, modalities=None, sets=[], resume=True)
    assert not any(s.startswith(("model.", "data.")) for s in resumed)


def test_card_spacing_resamples_raw_data_only(cache: Path, tmp_path: Path):
    assert LA.card_spacing(CARD, tmp_path / "raw") == 2.0
    assert LA.card_spacing(CARD, cache) is None  # a cache is already resampled
    assert LA.card_spacing(CARD, None) is None
    assert LA.card_spacing(SimpleNamespace(preprocessing=None), tmp_path / "raw") is None


def test_pretrain_overrides():
    assert LA.pretrain_overrides(None, ["train.steps=2"]) == (
        ["train.task=genesis", "train.steps=2"], None)
    assert LA.pretrain_overrides("FLAIR,t2", ["train.steps=2"]) == (
        ["train.task=genesis", "data.modalities=[flair,t2]", "train.steps=2"], ["flair", "t2"])


def test_summary_lines_with_and_without_validation(tmp_path: Path):
    assert LA.summary_lines({"step": 4}, tmp_path) == [f"step 4; run in {tmp_path}"]
    lines = LA.summary_lines({"step": 4, "n_cases": 1, "dice_WT": 0.5, "dice_TC": 0.25,
                              "dice_ET": 0.125, "best_metric": 0.4, "best_step": 2,
                              "val_pipeline": "whole volume"}, tmp_path)
    assert lines == [f"step 4: validation Dice WT 0.500 TC 0.250 ET 0.125; best mean 0.400 at "
                     f"step 2; run in {tmp_path}",
                     "validated with: whole volume (as glioseg predict does by default)"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_of_the_launcher_names_the_last_checkpoint(
        sig: int, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    """Ctrl-C or SIGTERM to the launcher alone is passed on to torchrun (which stops its
    workers), and the launcher, once torchrun ended, says where to continue; its own handlers
    are back afterwards. (Real processes: test_launch_signals.py.)"""
    from test_fit import _fit

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _, forwarded = fake_torchrun(monkeypatch, 1, raise_signal=sig)
    cfg = C.load_config("small", [f"data.cache_dir={cache}"])
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as err:
        LA.relaunch(cfg, run, nproc=2)
    assert str(err.value) == ("interrupted; last checkpoint: none yet (nothing to resume: the "
                              "same command starts the run afresh)")
    assert forwarded == [sig]
    assert f"{signal.Signals(sig).name}: stopping the workers" in capsys.readouterr().err
    assert {s: signal.getsignal(s) for s in before} == before
    _fit(cache, run, "train.steps=2", "data.n_val=0")
    with pytest.raises(KeyboardInterrupt) as err:
        LA.relaunch(cfg, run, nproc=2)
    assert str(err.value) == (f"interrupted; last checkpoint: step 2 ({run / 'last.pt'}); "
                              f"continue with: glioseg train --out {run} --resume")
    # torchrun ending well despite the signal (the last step was done): the run finished
    _, forwarded = fake_torchrun(monkeypatch, 0, raise_signal=sig)
    assert LA.relaunch(cfg, run, nproc=2) == 0 and forwarded == [sig]


def test_resume_of_a_folder_without_a_run_says_so(cache: Path, tmp_path: Path):
    with pytest.raises(TrainError, match=r"nope: no run to resume \(no such folder\)"):
        LA.resolve_config(tmp_path / "nope", None, None, [], resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match=r"empty: no run to resume \(no config.yaml or "
                                         r"checkpoint in it\)"):
        LA.resolve_config(tmp_path / "empty", None, None, [], resume=True)


def test_resume_with_another_config_keeps_the_runs_data(cache: Path, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    C.dump_config(LA.resolve_config(out, cache, None, []), out / "config.yaml")
    cfg = LA.resolve_config(out, None, "full", [], resume=True)
    assert cfg.data.cache_dir == str(cache.resolve()) and cfg.data.n_val == 25  # full's


def test_set_errors_name_the_override(cache: Path, tmp_path: Path):
    with pytest.raises(C.ConfigError, match=r"^--set train\.stepz=20: unknown key train\.stepz"):
        LA.resolve_config(tmp_path / "run", cache, None, ["train.stepz=20"])
    assert not (tmp_path / "run").exists()
    # raw data: the override fails before the data is preprocessed into RUN/cache
    raw = _two_sequence_site(tmp_path / "raw")
    with pytest.raises(C.ConfigError, match=r"^--set train\.stepz=20"):
        LA.resolve_config(tmp_path / "run2", raw, None, ["train.stepz=20"])
    assert not (tmp_path / "run2").exists()


def test_a_finished_run_is_not_relaunched(cache: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch):
    from test_fit import TINY, _files, _fit

    run = tmp_path / "run"
    _fit(cache, run, "train.steps=1", "data.n_val=0")
    kept = _files(run)
    monkeypatch.setattr(subprocess, "Popen", None)  # torchrun is not started
    lines = []
    code = LA.launch_training(run, cache, "small", [*TINY, "train.steps=1", "data.n_val=0"],
                              nproc=2, log=lines.append)
    assert code == 0 and "already finished at step 1" in lines[0]
    assert "train.amp" not in lines[0]  # ``auto`` (made concrete by fit) is no change
    assert _files(run) == kept and not (run / "launch.yaml").exists()


def test_summary_of_a_pretraining_names_its_loss_and_model(tmp_path: Path):
    (line,) = LA.summary_lines({"step": 10, "task": "genesis", "last_loss": 0.25}, tmp_path)
    assert line == (f"pretraining finished at step 10, restoration loss 0.2500; model in "
                    f"{tmp_path / 'last'} (fine-tune it: glioseg finetune --from "
                    f"{tmp_path / 'last'} --data LABELLED_DATA --out RUN)")


def test_raw_data_with_declared_labels_is_preprocessed_in_that_scheme(tmp_path: Path):
    """``train --data RAW --labels brats2023``: BraTS 2021 names over nnU-Net's 0/1/2/3 labels
    give the cache of the same volumes in 0/1/2/4; a cache given with --labels, or an unknown
    scheme, is refused naming the option."""
    import nibabel as nib
    import numpy as np
    from datafiles import tiny_brats2021_case
    from typer.testing import CliRunner

    from glioseg.cli import app
    from glioseg.preprocess.run import preprocess_dir

    std, nn = tmp_path / "std", tmp_path / "nn"
    for root in (std, nn):
        folder = tiny_brats2021_case(root, "BraTS2021_00000", seed=0)
        seg_path = folder / "BraTS2021_00000_seg.nii.gz"
        seg = np.asarray(nib.load(seg_path).dataobj).copy()
        seg[12:14, 12:14, 6:8] = 4 if root == std else 3  # an enhancing core
        nib.save(nib.Nifti1Image(seg, np.eye(4)), seg_path)
    preprocess_dir(std, tmp_path / "std_cache")
    cache = LA.prepare_data(nn, tmp_path / "run", labels="brats2023")
    assert (cache / "BraTS2021_00000" / "labels.npy").read_bytes() == (
        tmp_path / "std_cache" / "BraTS2021_00000" / "labels.npy").read_bytes()
    with pytest.raises(TrainError, match=r"--labels brats2023: --data .* is a preprocessed cache"):
        LA.prepare_data(cache, tmp_path / "run2", labels="brats2023")
    res = CliRunner().invoke(app, ["train", "--data", str(nn), "--out", str(tmp_path / "r3"),
                                   "--labels", "nnunet"])
    assert res.exit_code == 1 and "--labels nnunet: unknown label scheme" in res.output
    assert not (tmp_path / "r3").exists()
