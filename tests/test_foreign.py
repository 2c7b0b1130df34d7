"""``glioseg.transfer.foreign``: one entry point over the importers of each toolkit."""

import pytest
import torch

from glioseg.transfer.foreign import (
    ForeignCheckpointError,
    import_checkpoint,
    import_monai_segresnet,
    import_nnunet,
)


def test_unsupported_layouts_are_clear_errors(tmp_path):
    torch.save({"network_weights": {"encoder.stem.convs.0.conv.weight": torch.zeros(1)}},
               tmp_path / "resenc.pth")
    with pytest.raises(ForeignCheckpointError, match="not supported"):
        import_nnunet(tmp_path / "resenc.pth")
    torch.save({"a.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ForeignCheckpointError, match="not a MONAI SegResNet"):
        import_monai_segresnet(tmp_path / "other.pt")
    with pytest.raises(ForeignCheckpointError, match="unknown checkpoint kind"):
        import_checkpoint(tmp_path / "other.pt", "caffe")


def test_an_option_the_kind_does_not_take_is_the_users_error(tmp_path):
    """Checked before the file is read: the message is Python's own, as a clear error."""
    with pytest.raises(ForeignCheckpointError, match="unexpected keyword argument 'array_axes'"):
        import_checkpoint(tmp_path / "absent.pt", "swinunetr", modalities=("t1",),
                          array_axes="zyx")
    with pytest.raises(ForeignCheckpointError, match="modalities"):
        import_checkpoint(tmp_path / "absent.pt", "swinunetr")
