"""DDP equivalence on CPU: two gloo ranks with batch b each take the same steps as one process
with batch 2b on the same patches.

Why they must agree: the loss is a per-sample mean (BCE averaged over voxels and samples) and
the model has no cross-sample layer (InstanceNorm normalises each sample alone), so the mean of
the two ranks' gradients (DDP's all-reduce) is the gradient of the 2b batch. Only the order of
float32 additions differs: tolerance 1e-5 absolute on the parameters after 3 SGD steps.
"""

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from glioseg.train import distributed as D
from glioseg.train import loop as L

B = 2  # patches per rank
STEPS = 3


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
        torch.nn.LeakyReLU(0.01), torch.nn.Conv3d(4, 3, 1))


def _data() -> list[L.Batch]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        image = torch.randn(2 * B, 4, 8, 8, 8, generator=g)
        target = (torch.rand(2 * B, 3, 8, 8, 8, generator=g) > 0.7).float()
        out.append(L.Batch(image, target))
    return out


def _loss(logits, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def _train(model, batches, grad_accum=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = L.make_scaler("none", torch.device("cpu"))
    losses = []
    for b in batches:
        n = b.size // grad_accum
        micro = [L.Batch(b.image[i * n:(i + 1) * n], b.target[i * n:(i + 1) * n])
                 for i in range(grad_accum)]
        losses.append(L.train_step(model, micro, _loss, opt, scaler, "none").loss)
    return losses


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    info = D.init("cpu", threads=1)
    assert info.distributed and info.rank == rank and info.device.type == "cpu"
    from torch.nn.parallel import DistributedDataParallel as DDP

    net = DDP(_model())
    shards = [L.Batch(b.image[rank * B:(rank + 1) * B], b.target[rank * B:(rank + 1) * B])
              for b in _data()]
    losses = _train(net, shards)
    mean_loss = D.all_reduce_mean(losses[-1])
    ranks = D.all_gather_objects(rank)
    if rank == 0:
        torch.save({"params": [p.detach().clone() for p in net.module.parameters()],
                    "mean_loss": mean_loss, "ranks": ranks, "local_loss": losses[-1]}, out)
    live = {"net": net}
    del net
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

    single = _model()
    losses = _train(single, _data())
    init = list(_model().parameters())
    moved = 0
    for p_ddp, p_one, p0 in zip(got["params"], single.parameters(), init, strict=True):
        moved += not torch.equal(p_one, p0)
        torch.testing.assert_close(p_ddp, p_one.detach(), atol=1e-5, rtol=0)
    assert moved >= 4  # training moved the weights (a bias before InstanceNorm gets no gradient)
    # the mean of the ranks' losses (half batches, equal sizes) is the full batch's loss
    # (the last step's loss is computed before that step's update: same weights on both sides)
    assert abs(got["mean_loss"] - losses[-1]) < 1e-5
    assert got["ranks"] == [0, 1]


def test_gradient_accumulation_matches_one_large_batch():
    torch.set_num_threads(1)
    a, b = _model(), _model()
    _train(a, _data(), grad_accum=1)
    _train(b, _data(), grad_accum=2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0)


def test_single_process_world():
    info = D.init("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed) == (0, 1, True, False)
    assert D.all_reduce_mean(2.5) == 2.5
    assert D.all_gather_objects("x") == ["x"]
