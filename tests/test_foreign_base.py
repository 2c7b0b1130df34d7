"""``glioseg.transfer.foreign_base``: checkpoints are read without running code from them."""

import pytest
import torch

from glioseg.transfer.foreign_base import ForeignCheckpointError, UnsafeCheckpointError, safe_load
from glioseg.transfer.nnunet_import import import_nnunet


class NotData:
    pass


def test_pickled_objects_are_refused_with_a_way_out(tmp_path):
    torch.save({"network_weights": {}, "trainer": NotData()}, tmp_path / "unsafe.pth")
    with pytest.raises(UnsafeCheckpointError, match="cannot be loaded safely") as info:
        import_nnunet(tmp_path / "unsafe.pth")
    assert "weights_only=False" in str(info.value) and "torch.save" in str(info.value)


def test_safe_load_reads_tensors_and_refuses_what_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.arange(3.0)}, tmp_path / "plain.pt")
    loaded = safe_load(tmp_path / "plain.pt")
    assert list(loaded) == ["w"] and loaded["w"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ForeignCheckpointError, match="no such file"):
        safe_load(tmp_path / "absent.pt")
    whole = (tmp_path / "plain.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(whole[: len(whole) // 2])  # a cut-off download
    with pytest.raises(ForeignCheckpointError, match="not a readable PyTorch checkpoint"):
        safe_load(tmp_path / "half.pt")
