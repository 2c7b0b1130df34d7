"""``glioseg.model.state_dict``: wrappers removed, safetensors files, strict checks."""

import os
import stat

import pytest
import torch

from glioseg.model.state_dict import (
    WeightsMismatchError,
    check_state_dict,
    load_state_dict,
    save_state_dict,
    strip_wrapper_prefixes,
    unwrap_model,
)


def test_strip_wrapper_prefixes():
    sd = {"module._orig_mod.a.weight": torch.zeros(1), "b": torch.ones(1)}
    assert sorted(strip_wrapper_prefixes(sd)) == ["a.weight", "b"]


def test_two_keys_that_become_one_are_an_error():
    sd = {"module.a": torch.zeros(1), "a": torch.ones(1)}
    with pytest.raises(WeightsMismatchError, match="'a' twice"):
        strip_wrapper_prefixes(sd)


def test_unwrap_model_through_data_parallel():
    net = torch.nn.Linear(2, 3)
    assert unwrap_model(torch.nn.DataParallel(net)) is net
    assert unwrap_model(net) is net


def test_safetensors_round_trip_of_a_non_contiguous_tensor(tmp_path):
    t = torch.arange(12.0).reshape(3, 4).t()  # a transposed view: not contiguous
    save_state_dict(tmp_path / "w.safetensors", {"t": t, "b": torch.tensor([1, 2])},
                    {"format": "pt"})
    back = load_state_dict(tmp_path / "w.safetensors")
    assert sorted(back) == ["b", "t"]
    torch.testing.assert_close(back["t"], t, rtol=0, atol=0)
    assert back["b"].tolist() == [1, 2]
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsMismatchError, match="cannot read the weights"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_check_state_dict_lists_missing_unexpected_and_reshaped():
    net = torch.nn.Linear(2, 3)  # weight (3, 2), bias (3,)
    check_state_dict(net, net.state_dict())
    with pytest.raises(WeightsMismatchError) as info:
        check_state_dict(net, {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)}, "w.pt")
    msg = str(info.value)
    assert msg.startswith("w.pt do not match the network of the card:")
    assert "1 missing: bias" in msg and "1 unexpected: extra" in msg
    assert "1 reshaped: weight (3, 4) vs model (3, 2)" in msg


def test_weights_file_has_the_mode_of_any_other_new_file(tmp_path):
    """safetensors' save_file writes 0o600; the file is readable by the group as any other
    output (0o666 under the umask)."""
    old = os.umask(0o022)
    try:
        save_state_dict(tmp_path / "model.safetensors", {"a": torch.zeros(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "model.safetensors").st_mode) == 0o644
