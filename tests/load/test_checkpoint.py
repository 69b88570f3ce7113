"""Reading model.pt: every bad file is a one-line BadInputError; pickles need consent."""

import random

import pytest
import torch
from torch import nn

from deploy.core.errors import BadInputError
from deploy.load.checkpoint import load_checkpoint
from deploy.load.module import check_finite_weights
from deploy.load.state_dict import recognise_reference


def _module() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


def test_directory(tmp_path):
    with pytest.raises(BadInputError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty"):
        load_checkpoint(path)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(BadInputError, match="not a (readable )?PyTorch checkpoint"):
        load_checkpoint(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_module().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_pickled_module_needs_trust_and_is_never_modified(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_module(), path)
    before = path.read_bytes()
    with pytest.raises(BadInputError, match="`trust_pickle`"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="runs code"):
        loaded = load_checkpoint(path, trust_pickle=True)
    assert loaded.source == "pickle" and isinstance(loaded.model, nn.Sequential)
    assert path.read_bytes() == before


def test_pickled_module_in_training_mode_is_refused(tmp_path):
    path = tmp_path / "train.pt"
    torch.save(_module().train(), path)
    with pytest.warns(UserWarning):
        with pytest.raises(BadInputError, match="training mode"):
            load_checkpoint(path, trust_pickle=True)


def test_nan_weights_are_refused():
    model = _module()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
        model[1].running_var[1] = float("inf")
    with pytest.raises(BadInputError, match=r"NaN or Inf .*0\.weight.*1\.running_var"):
        check_finite_weights(model)


def test_bare_state_dict_without_arch_asks_for_it(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(_module().state_dict(), path)
    with pytest.raises(BadInputError, match="give `arch` and `conv`"):
        load_checkpoint(path)


def test_reference_keys_are_recognised():
    sc = {"layer1.0.scconv.k2.1.weight": torch.zeros(1)}
    sc.update({f"layer{s}.{b}.conv3.weight": torch.zeros(1) for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)})
    assert recognise_reference(sc)[:3] == ("reference-scnet", "scnet50", "sc")
    sp = {
        "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
        "layer1.0.conv3.weight": torch.zeros(256, 64, 1, 1),
        "layer1.0.conv2.gwc.weight": torch.zeros(64, 16, 3, 3),
        "layer1.0.conv2.pwc.weight": torch.zeros(64, 32, 1, 1),
    }
    sp.update({f"layer{s}.{b}.conv1.weight": torch.zeros(1) for s, n in zip(range(1, 5), (3, 4, 6, 3)) for b in range(n)})
    sp["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    source, arch, conv, kwargs = recognise_reference(sp)
    assert (source, arch, conv, kwargs) == ("reference-spconv", "resnet50", "sp", {"ratio": 0.5})
    do = {f"layer{s}.{b}.conv1.W": torch.zeros(1) for s, n in zip(range(1, 4), (3, 3, 3)) for b in range(n)}
    do["layer1.0.conv1.D"] = torch.zeros(1)
    assert recognise_reference(do)[:3] == ("reference-doconv", "resnet20", "doconv")
    assert recognise_reference({"0.weight": torch.zeros(1)}) is None
