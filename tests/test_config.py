"""load_config: YAML defaults, dotted overrides with type checks, errors naming file:line, dump round trip."""

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import BoxesConfig, Config, ConfigError, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO / "conf" / "default.yaml"
DEMO_YAML = REPO / "conf" / "demo.yaml"


def write_yaml(tmp_path: Path, text: str, name: str = "default.yaml") -> Path:
    """Writes `text` as a config file and returns its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_and_no_overrides_give_the_dataclass_defaults():
    assert load_config() == Config()


def test_an_empty_yaml_file_gives_the_dataclass_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "# nothing set\n")) == Config()


def test_default_yaml_holds_the_seed_recipe_on_the_portrait_canvas():
    cfg = load_config(DEFAULT_YAML)
    assert (cfg.canvas.height, cfg.canvas.width) == (1024, 512)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay) == (20, 16, 1e-4, 1e-4)
    assert cfg.boxes == BoxesConfig(size=48, max=5, nms_iou=0.15, min_score=0.0)
    assert cfg.model.name == "hf_hub:timm/resnetrs50.tf_in1k"
    assert cfg.data.view == "POST"
    assert ("828", "2244") in cfg.split.duplicate_groups  # not in the YAML: the dataclass default


def test_demo_yaml_configures_a_small_cpu_run():
    cfg = load_config(DEMO_YAML)
    assert (cfg.model.name, cfg.model.pretrained, cfg.train.use_gpu) == ("test_resnet", False, "false")
    assert (cfg.canvas.height, cfg.canvas.width, cfg.boxes.size) == (512, 256, 24)
    assert cfg.run.overwrite is False  # make demo empties runs/demo itself; re-running train resumes
    assert cfg.infer.num_gpus == 0.0
    assert isinstance(cfg.infer.num_gpus, float)


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("seed=7", None, "seed", 7),
        ("train.epochs=3", "train", "epochs", 3),
        ("boxes.nms_iou=0.2", "boxes", "nms_iou", 0.2),
        ("train.warmup_epochs=2", "train", "warmup_epochs", 2.0),
        ("train.lr=1e-4", "train", "lr", 1e-4),  # YAML 1.1 reads `1e-4` as text
        ("train.lr=2.5E-3", "train", "lr", 2.5e-3),
        ("train.use_gpu=true", "train", "use_gpu", "true"),
        ("model.output_stride=16", "model", "output_stride", 16),
        ("model.pretrained=false", "model", "pretrained", False),
        ("run.overwrite=true", "run", "overwrite", True),
        ("data.root=/tmp/bs80k", "data", "root", "/tmp/bs80k"),
        ("data.root=file:///tmp/bs80k", "data", "root", "file:///tmp/bs80k"),
        ("data.root='with space'", "data", "root", "with space"),
        ("ray.address=", "ray", "address", ""),
        ("train.use_gpu=false", "train", "use_gpu", "false"),  # a text key keeps the text as typed
        ("run.dir=007", "run", "dir", "007"),
        ("split.duplicate_groups=[[1, 2], [3, 4, 5]]", "split", "duplicate_groups", (("1", "2"), ("3", "4", "5"))),
        ("split.duplicate_groups=[]", "split", "duplicate_groups", ()),
    ],
)
def test_dotted_override_sets_the_value_with_the_field_type(override, section, key, expected):
    cfg = load_config(DEFAULT_YAML, [override])
    value = getattr(cfg if section is None else getattr(cfg, section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_later_overrides_win_over_earlier_ones_and_over_the_yaml():
    cfg = load_config(DEMO_YAML, ["boxes.size=10", "boxes.size=12"])
    assert cfg.boxes.size == 12
    assert cfg.boxes.nms_iou == 0.15  # untouched keys keep the YAML value


def test_override_of_a_key_absent_from_the_yaml_section_keeps_the_others(tmp_path):
    path = write_yaml(tmp_path, "boxes:\n  size: 32\n")
    cfg = load_config(path, ["boxes.max=2"])
    assert (cfg.boxes.size, cfg.boxes.max, cfg.boxes.nms_iou) == (32, 2, 0.15)


def test_unknown_key_in_yaml_names_file_line_and_known_keys(tmp_path):
    path = write_yaml(tmp_path, "seed: 1\nboxes:\n  size: 32\n  nms_iuo: 0.2\n")
    with pytest.raises(
        ConfigError,
        match=r"default\.yaml:4: unknown key 'boxes\.nms_iuo' \(known: size, max, nms_iou, min_score, method, "
        r"features, tune_split, tune_size_factors, tune_max, tune_cutoffs\)",
    ):
        load_config(path)


def test_typo_in_the_shipped_default_yaml_reports_its_line(tmp_path):
    lines = DEFAULT_YAML.read_text(encoding="utf-8").splitlines()
    line_no = lines.index("  dir: runs/resnetrs50_post") + 1
    lines[line_no - 1] = "  dri: runs/resnetrs50_post"
    path = write_yaml(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"default\.yaml:{line_no}: unknown key 'run\.dri' \(known: "):
        load_config(path)


def test_unknown_section_lists_the_known_sections(tmp_path):
    path = write_yaml(tmp_path, "seed: 1\n\nboxs:\n  size: 3\n")
    with pytest.raises(ConfigError, match=r"default\.yaml:3: unknown key 'boxs' \(known: seed, data, run, .*boxes"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  epochs: five\n", r"default\.yaml:2: key 'train\.epochs' expects int, got 'five'"),
        ("train:\n  epochs: true\n", r"default\.yaml:2: key 'train\.epochs' expects int, got True"),
        ("train:\n  epochs: 2.5\n", r"default\.yaml:2: key 'train\.epochs' expects int, got 2\.5"),
        ("model:\n  pretrained: 1\n", r"default\.yaml:2: key 'model\.pretrained' expects bool, got 1"),
        ("boxes:\n  nms_iou: high\n", r"default\.yaml:2: key 'boxes\.nms_iou' expects float, got 'high'"),
        ("data:\n  root: [a, b]\n", r"default\.yaml:2: key 'data\.root' expects str, got \['a', 'b'\]"),
        ("split:\n  duplicate_groups: [1, 2]\n", r"default\.yaml:2: key 'split\.duplicate_groups' expects"),
    ],
)
def test_wrong_type_in_yaml_names_file_line_key_and_value(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_yaml(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=2.5", r"override 'train\.epochs=2\.5': key 'train\.epochs' expects int, got 2\.5"),
        ("model.pretrained=maybe", r"override 'model\.pretrained=maybe': key 'model\.pretrained' expects bool"),
        ("boxes.nms_iou=abc", r"override 'boxes\.nms_iou=abc': key 'boxes\.nms_iou' expects float, got 'abc'"),
        ("boxes.nms_iuo=0.2", r"override 'boxes\.nms_iuo=0\.2': unknown key 'boxes\.nms_iuo' \(known: size, max, "),
        ("nope.key=1", r"override 'nope\.key=1': unknown key 'nope' \(known: seed, data, "),
        ("boxes=5", r"override 'boxes=5': key 'boxes' must be a mapping, got 5"),
        ("seed.x=1", r"override 'seed\.x=1': 'seed' is not a section"),
        ("train.epochs", r"override 'train\.epochs': expected key=value"),
        ("train.lr=[1,", r"override 'train\.lr=\[1,': invalid YAML value"),
    ],
)
def test_bad_override_raises_a_config_error_that_names_the_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEFAULT_YAML, [override])


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"default\.yaml: invalid YAML"):
        load_config(write_yaml(tmp_path, "boxes: [1, 2\nseed: 3\n"))


@pytest.mark.parametrize("text", ["boxes: 5\n", "boxes: [1, 2]\n", "boxes:\n"])
def test_a_section_that_is_not_a_mapping_is_refused_with_its_line(tmp_path, text):
    with pytest.raises(ConfigError, match=r"default\.yaml:1: key 'boxes' must be a mapping"):
        load_config(write_yaml(tmp_path, text))


def test_a_top_level_list_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"default\.yaml: top level must be a mapping"):
        load_config(write_yaml(tmp_path, "- seed\n- 1\n"))


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_config_is_frozen():
    cfg = load_config(DEFAULT_YAML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.boxes.size = 3  # type: ignore[misc]


@pytest.mark.parametrize("source", [DEFAULT_YAML, DEMO_YAML, None])
def test_dumped_config_loads_back_to_an_equal_config(tmp_path, source):
    cfg = load_config(source, ["train.lr=3e-5", "split.duplicate_groups=[[1, 2, 3]]", "run.dir=007"])
    path = write_yaml(tmp_path, dump_config(cfg), name="resolved.yaml")
    assert load_config(path) == cfg


texts = st.text(max_size=12)
fractions = st.floats(min_value=0.0, max_value=1.0, width=64)


@settings(max_examples=40, deadline=None)
@given(
    root=texts,
    use_gpu=st.sampled_from(["auto", "true", "false"]),
    seed=st.integers(min_value=-(2**40), max_value=2**40),
    nms_iou=fractions,
    pretrained=st.booleans(),
    groups=st.lists(st.lists(texts, max_size=3).map(tuple), max_size=3).map(tuple),
)
def test_dump_config_round_trips_any_field_values(tmp_path_factory, root, use_gpu, seed, nms_iou, pretrained, groups):
    base = Config()
    cfg = dataclasses.replace(
        base,
        seed=seed,
        data=dataclasses.replace(base.data, root=root),
        train=dataclasses.replace(base.train, use_gpu=use_gpu),
        boxes=dataclasses.replace(base.boxes, nms_iou=nms_iou),
        model=dataclasses.replace(base.model, pretrained=pretrained),
        split=dataclasses.replace(base.split, duplicate_groups=groups),
    )
    path = write_yaml(tmp_path_factory.mktemp("dump"), dump_config(cfg), name="resolved.yaml")
    assert load_config(path) == cfg
