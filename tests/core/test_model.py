"""The timm factory and checkpoint I/O: output stride, architecture recorded in the checkpoint."""

import json

import pytest
import torch
from torch import nn

from engine.config import ModelConfig, load_config
from engine.contract import contract_info
from engine.core.model.classifier import ModelError, arch_info, build_classifier, probe_cell_centre
from engine.io.checkpoints import build_classifier_from_files, load_model, save_model


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


def test_checkpoint_carries_the_contract_scoring_reads_in_both_files(tmp_path):
    cfg = load_config(None, ["model.name=test_resnet", "model.pretrained=false", "canvas.height=512", "data.view=ANT"])
    save_model(str(tmp_path), build_classifier(cfg.model), {**arch_info(cfg.model), **contract_info(cfg)})
    _, info = load_model(str(tmp_path), cfg.model)
    on_disk = json.loads((tmp_path / "model" / "best.json").read_text())
    for recorded in (info, on_disk):
        assert recorded["contract"]["canvas.height"] == 512 and recorded["contract"]["data.view"] == "ANT"
        assert recorded["cam_settings"]["cam.method"] == "auto" and recorded["threshold"] == "threshold.json"


def test_start_weights_are_read_in_io_and_core_refuses_a_weights_file_alone(tmp_path):
    torch.manual_seed(0)
    source = build_classifier(ModelConfig(name="test_resnet", pretrained=False))
    path = tmp_path / "start.pt"
    torch.save({"model": source.state_dict()}, path)
    cfg = ModelConfig(name="test_resnet", pretrained=False, weights=str(path))
    with pytest.raises(ModelError, match="build_classifier_from_files"):
        build_classifier(cfg)
    model = build_classifier_from_files(cfg)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "start.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_classifier_from_files(ModelConfig(name="test_resnet", pretrained=False, weights=str(path)))
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())


def test_missing_checkpoint_names_make_train(tmp_path):
    with pytest.raises(ModelError, match="make train"):
        load_model(str(tmp_path), ModelConfig(name="test_resnet", pretrained=False))


class OnesConvs(nn.Module):
    """forward_features = stride-2 convolutions with all-one weights: a receptive field known by hand."""

    def __init__(self, kernel: int, padding: int, layers: int) -> None:
        super().__init__()
        convs = [nn.Conv2d(3 if i == 0 else 1, 1, kernel, stride=2, padding=padding, bias=False) for i in range(layers)]
        for conv in convs:
            nn.init.ones_(conv.weight)
        self.body = nn.Sequential(*convs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize(
    ("kernel", "padding", "layers", "expected"),
    [
        (2, 0, 1, 0.5),  # cell i sees pixels 2i, 2i + 1: centre 2i + 1 = (i + 0.5) * 2
        (3, 1, 1, 0.25),  # pixels 2i - 1 .. 2i + 1 (centre pixel 2i, at 2i + 0.5): a quarter cell
        (3, 1, 2, 0.125),  # twice: pixel 4i, at 4i + 0.5, symmetric weights 1 2 3 2 1 ... around it
    ],
)
def test_probe_cell_centre_finds_a_hand_worked_receptive_field_centre(kernel, padding, layers, expected):
    model = OnesConvs(kernel, padding, layers).train()
    assert probe_cell_centre(model, 2**layers) == pytest.approx([expected, expected], abs=1e-4)
    assert model.training  # the probe leaves the mode as it was


@pytest.mark.parametrize(
    ("name", "stride"), [("test_resnet", 32), ("test_resnet", 16), ("test_efficientnet", 32), ("test_efficientnet", 16)]
)
def test_checkpoint_records_the_models_cell_centre(tmp_path, name, stride):
    cfg = ModelConfig(name=name, pretrained=False, output_stride=stride)
    torch.manual_seed(0)
    model = build_classifier(cfg).eval()
    save_model(str(tmp_path), model, {**arch_info(cfg), "epoch": 0})
    saved = json.loads((tmp_path / "model" / "best.json").read_text())["cell_centre"]
    assert saved == probe_cell_centre(model, stride)
    assert all(-1.0 <= value <= 2.0 for value in saved)  # within a cell or so of the cell's origin
    _, info = load_model(str(tmp_path), ModelConfig(name=name, pretrained=False))
    assert info["cell_centre"] == saved


def test_cell_centres_differ_by_architecture_and_old_checkpoints_get_one_on_load(tmp_path):
    torch.manual_seed(0)
    centres = {}
    for name in ("test_resnet", "test_efficientnet"):
        centres[name] = probe_cell_centre(build_classifier(ModelConfig(name=name, pretrained=False)).eval(), 32)
    assert abs(centres["test_resnet"][0] - centres["test_efficientnet"][0]) > 0.1  # no single (c + 0.5) stride
    cfg = ModelConfig(name="test_resnet", pretrained=False)
    model = build_classifier(cfg).eval()
    save_model(str(tmp_path), model, {**arch_info(cfg), "cell_centre": None})
    payload = torch.load(tmp_path / "model" / "best.pt", weights_only=True)
    info = {k: v for k, v in json.loads(payload["info"]).items() if k != "cell_centre"}  # as written before
    torch.save({"model": payload["model"], "info": json.dumps(info)}, tmp_path / "model" / "best.pt")
    _, loaded = load_model(str(tmp_path), cfg)
    assert loaded["cell_centre"] == probe_cell_centre(model, 32)
