"""DDP and the parameters a run's loss never reaches: with deep supervision the coarsest head
(loss weight 0), without it (Models Genesis pretraining) every head but the last. They are
found by one backward (``components.gradient_free_parameters``) and set not to require a
gradient, so DDP runs without ``find_unused_parameters`` (no graph search per step, no warning
that it found nothing) and the ranks still agree."""

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from glioseg.train import config as C
from glioseg.train import distributed as D
from glioseg.train import loop as L
from glioseg.train.components import build_components, gradient_free_parameters, wrap

TINY = ["model.base_width=4", "model.n_stages=4", "model.max_width=8",
        "data.patch_size=[16,16,16]", "data.batch_size=1", "train.amp=none",
        "train.channels_last=false", "optim.name=sgd", "optim.lr=0.1"]
HEADS = {"decoder.heads.0.weight", "decoder.heads.0.bias", "decoder.heads.1.weight",
         "decoder.heads.1.bias"}
CASES = {  # overrides -> the parameters that get no gradient
    "deep-supervision": ([], {"decoder.heads.0.weight", "decoder.heads.0.bias"}),
    "genesis": (["train.task=genesis", "model.deep_supervision=false"], HEADS),
    "frozen-encoder": (["model.deep_supervision=false"], HEADS),
}


def _cfg(extra: list[str]) -> C.Config:
    return C.load_config("small", [*TINY, *extra])


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_free_parameters_are_the_heads_the_loss_leaves_out(name: str):
    extra, expected = CASES[name]
    cfg = _cfg(extra)
    comp = build_components(cfg, D.DistInfo())
    if name == "frozen-encoder":  # frozen parameters are not DDP's: not listed
        for n, p in comp.model.named_parameters():
            if n.startswith("encoder."):
                p.requires_grad_(False)
    before = {k: v.clone() for k, v in comp.model.state_dict().items()}
    rng = torch.get_rng_state()
    found = {n for n, _ in gradient_free_parameters(comp, cfg, torch.device("cpu"))}
    assert found == expected
    # nothing moved: weights, grads, random state, training mode
    assert all(torch.equal(v, comp.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in comp.model.parameters())
    assert torch.equal(rng, torch.get_rng_state()) and comp.model.training


def test_every_parameter_used_means_none_listed():
    cfg = _cfg(["model.n_stages=2"])  # one decoder stage: its head is the output
    comp = build_components(cfg, D.DistInfo())
    import glioseg.train.losses as LS

    comp.loss_fn = LS.make_region_loss(False)
    comp.model.decoder.deep_supervision = False
    assert gradient_free_parameters(comp, cfg, torch.device("cpu")) == []


def _worker(rank: int, world: int, port: int, extra: list[str], out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = D.init("cpu", threads=1)
    cfg = _cfg(extra)
    comp = build_components(cfg, info)
    start = {k: v.clone() for k, v in comp.model.state_dict().items()}
    wrap(comp, cfg, info)
    assert isinstance(comp.net, torch.nn.parallel.DistributedDataParallel)
    assert comp.net.find_unused_parameters is False
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):  # without the frozen heads DDP would fail at the second step
        image = torch.randn(1, 4, 16, 16, 16, generator=g)
        labels = (torch.rand(1, 16, 16, 16, generator=g) * 4).to(torch.uint8)
        batch = (L.Batch(image, image) if cfg.train.task == "genesis"  # restore the input
                 else L.to_batch((image, labels), info.device, False))
        L.train_step(comp.net, [batch], comp.loss_fn, comp.optimizer, comp.scaler, "none", 0.0)
    params = D.all_gather_objects({k: v.clone() for k, v in comp.model.state_dict().items()})
    if rank == 0:
        torch.save({"start": start, "ranks": params}, out)
    D.shutdown({"comp": comp})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", ["deep-supervision", "genesis"])
def test_two_ranks_train_without_find_unused_parameters(name: str, tmp_path: Path):
    extra, unused = CASES[name]
    out = str(tmp_path / "state.pt")
    mp.spawn(_worker, args=(2, _free_port(), extra, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    a, b = got["ranks"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the ranks agree
    moved = {k for k in a if not torch.equal(a[k], got["start"][k])}
    assert not moved & unused and "decoder.heads.2.weight" in moved
