"""The timm factory and checkpoint I/O: output stride, architecture recorded in the checkpoint."""

import pytest
import torch

from engine.config import ModelConfig
from engine.model import ModelError, arch_info, build_classifier, load_model, save_model


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
@pytest.mark.parametrize("stride", [32, 16, 8])
def test_output_stride_sets_the_feature_map_and_the_reported_reduction(name, stride):
    model = build_classifier(ModelConfig(name=name, pretrained=False, output_stride=stride)).eval()
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, 128, 64))
    assert features.shape[-2:] == (128 // stride, 64 // stride)
    assert model.feature_info[-1]["reduction"] == stride
    assert model(torch.zeros(2, 3, 128, 64)).shape == (2, 1)


def test_unsupported_output_stride_is_refused():
    with pytest.raises(ModelError, match="output_stride=4"):
        build_classifier(ModelConfig(name="test_resnet", pretrained=False, output_stride=4))


def test_checkpoint_rebuilds_its_own_stride_whatever_the_caller_asks(tmp_path):
    cfg = ModelConfig(name="test_resnet", pretrained=False, output_stride=8)
    model = build_classifier(cfg).eval()
    save_model(str(tmp_path), model, {**arch_info(cfg), "epoch": 0})
    loaded, info = load_model(str(tmp_path), ModelConfig(name="test_resnet", pretrained=False))
    assert info["output_stride"] == 8
    x = torch.rand(2, 3, 128, 64)
    with torch.no_grad():
        assert loaded.forward_features(x).shape[-2:] == (16, 8)
        assert torch.equal(loaded(x), model(x))


def test_missing_checkpoint_names_make_train(tmp_path):
    with pytest.raises(ModelError, match="make train"):
        load_model(str(tmp_path), ModelConfig(name="test_resnet", pretrained=False))
