"""The shared ML pieces: one U-Net family, one serialised form, one tiling, one device choice."""

from __future__ import annotations

import pytest
import torch

from tomolive.errors import BadInputError
from tomolive.ml.device import choose_device
from tomolive.ml.model_store import (
    ModelIntegrityError,
    model_from_bytes,
    model_to_bytes,
    read_model_file,
    write_model_file,
)
from tomolive.ml.network import NETWORKS, NormalisedUNet, UNet, UNetConfig
from tomolive.ml.tiling import pad_to_multiple, tile_core, tile_starts


@pytest.mark.parametrize("cls", [UNet, NormalisedUNet])
def test_every_network_of_the_family_round_trips_through_bytes(cls, tmp_path):
    torch.manual_seed(0)
    net = cls(UNetConfig(context=1, out_channels=2, base=4, depth=2, norm="none", activation="leaky_relu")).eval()
    x = torch.rand(2, 3, 20, 28)
    back = model_from_bytes(model_to_bytes(net))
    assert type(back) is cls and back.config == net.config and NETWORKS[cls.kind] is cls
    assert model_to_bytes(back) == model_to_bytes(net)  # one hash: the same weights, the same bytes
    with torch.no_grad():
        assert torch.equal(back(pad_to_multiple(x, 4)), net(pad_to_multiple(x, 4)))
    path = write_model_file(net, tmp_path / "m", {"note": "test"})
    loaded, record = read_model_file(path)
    assert record["note"] == "test" and record["kind"] == cls.kind and model_to_bytes(loaded) == path.read_bytes()
    record_path = path.with_suffix(".json")
    record_path.write_text(record_path.read_text().replace(record["sha256"], "0" * 64))
    with pytest.raises(ModelIntegrityError, match="refusing"):
        read_model_file(path)


def test_tiles_cover_the_slice_and_cores_meet():
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(300, 128, 32)
    assert starts[0] == 0 and starts[-1] == 300 - 128 and all(b - a <= 128 - 32 for a, b in zip(starts, starts[1:]))
    cores = [tile_core(s, 128, 300, 16) for s in starts]
    assert cores[0][0] == 0 and cores[-1][1] == 300
    assert all(hi >= lo for (_, hi), (lo, _) in zip(cores, cores[1:]))  # no gap between kept parts


def test_padding_reaches_the_multiple_and_falls_back_on_tiny_slices():
    assert pad_to_multiple(torch.rand(1, 1, 17, 24), 8).shape[-2:] == (24, 24)
    assert pad_to_multiple(torch.rand(1, 1, 3, 3), 8, mode="reflect").shape[-2:] == (8, 8)


def test_device_choice():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device(None) == choose_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInputError, match="device"):
        choose_device("tpu")
    with pytest.raises(BadInputError, match="UNetConfig.norm"):
        UNetConfig(norm="group")
