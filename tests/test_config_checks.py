"""load_config refuses values outside a key's choices or range (file:line, key, value, allowed); one set of defaults."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from engine.config import Config, ConfigError, load_config
from engine.config_yaml import build_dataclass

REPO = Path(__file__).resolve().parents[1]
CONF_FILES = sorted((REPO / "conf").glob("*.yaml"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, typing.Any]]:
    """Returns (dotted key, annotation) of every non-dataclass field under `cls`."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += _leaf_fields(hint, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hint))
    return out


def _flat(data: dict, prefix: str = "") -> dict[str, typing.Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


CHOICE_KEYS = [key for key, hint in _leaf_fields(Config) if typing.get_origin(hint) is typing.Literal]


def test_the_enum_like_keys_are_typed_as_choices():
    expected = {
        "data.view",
        "train.use_gpu",
        "threshold.mode",
        "cam.scope",
        "cam.method",
        "cam.min_prob",
        "cam.split",
        "infer.split",
        "evaluate.split",
        "evaluate.tune_split",
        "model.output_stride",
    }
    assert expected <= set(CHOICE_KEYS)


@pytest.mark.parametrize("key", CHOICE_KEYS)
def test_a_value_outside_a_keys_choices_names_file_line_key_value_and_choices(tmp_path, key):
    section, name = key.split(".")
    path = _write(tmp_path, f"seed: 1\n{section}:\n  {name}: nope\n")
    with pytest.raises(ConfigError, match=rf"run\.yaml:3: key '{key}' must be one of .+; got 'nope'"):
        load_config(path)


def test_cam_method_foo_is_refused_with_the_allowed_methods():
    with pytest.raises(
        ConfigError,
        match=r"override 'cam\.method=foo': key 'cam\.method' must be one of "
        r"auto, fused, gradcam; got 'foo'",
    ):
        load_config(REPO / "conf" / "demo.yaml", ["cam.method=foo"])


def test_yaml_booleans_for_use_gpu_read_as_its_text_choices(tmp_path):
    assert load_config(_write(tmp_path, "train:\n  use_gpu: false\n")).train.use_gpu == "false"
    assert load_config(_write(tmp_path, "train:\n  use_gpu: true\n")).train.use_gpu == "true"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("split:\n  train: 1.5\n", r"run\.yaml:2: key 'split\.train' must be in \[0, 1\], got 1\.5"),
        ("boxes:\n  nms_iou: -0.1\n", r"run\.yaml:2: key 'boxes\.nms_iou' must be in \[0, 1\], got -0\.1"),
        ("train:\n  batch_size: 0\n", r"run\.yaml:2: key 'train\.batch_size' must be >= 1, got 0"),
        ("canvas:\n  width: -4\n", r"run\.yaml:2: key 'canvas\.width' must be >= 1, got -4"),
        ("train:\n  lr: 0\n", r"run\.yaml:2: key 'train\.lr' must be > 0, got 0\.0"),
        ("ray:\n  decode_num_cpus: -1\n", r"run\.yaml:2: key 'ray\.decode_num_cpus' must be >= 0, got -1\.0"),
        ("evaluate:\n  iou: [0.3, 1.2]\n", r"run\.yaml:2: key 'evaluate\.iou' must be in \[0, 1\], got 1\.2"),
        ("threshold:\n  sens_min: 2\n", r"run\.yaml:2: key 'threshold\.sens_min' must be in \[0, 1\], got 2\.0"),
    ],
)
def test_a_value_outside_a_keys_range_names_file_line_key_value_and_range(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, text))


def test_the_dataclass_defaults_pass_their_own_checks():
    assert build_dataclass(Config, Config().to_dict(), "", "<defaults>", {}) == Config()


@pytest.mark.parametrize("path", CONF_FILES, ids=[p.name for p in CONF_FILES])
def test_every_shipped_conf_file_loads(path):
    assert isinstance(load_config(path), Config)


def test_default_yaml_sets_only_what_differs_from_the_dataclass_defaults():
    written = _flat(yaml.safe_load((REPO / "conf" / "default.yaml").read_text(encoding="utf-8")))
    defaults = _flat(Config().to_dict())
    restated = {key: value for key, value in written.items() if defaults.get(key) == value}
    assert not restated, f"conf/default.yaml restates dataclass defaults (keep them in engine/config.py): {restated}"


def test_make_without_conf_and_a_config_without_file_agree_on_every_key_but_the_paths():
    from_yaml = load_config(REPO / "conf" / "default.yaml").to_dict()
    defaults = Config().to_dict()
    differ = {key for key in _flat(defaults) if _flat(defaults)[key] != _flat(from_yaml)[key]}
    assert differ == {"data.root", "run.dir"}
