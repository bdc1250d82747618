"""A stage is one module: its `STAGE` declaration is what the Makefile, `python -m jobs`, `--help` and preflight read
(engine/stages/_stage.py), and importing it to read the declaration loads neither Ray nor torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.config import load_config
from engine.preflight import PreflightError, preflight
from engine.stages import stage, stage_names
from engine.stages._stage import INDEX, Need, Stage
from jobs._cli import preamble, run_stage
from tests.conftest import REPO

CONFIG = REPO / "conf" / "demo.yaml"
HEAVY = ("ray", "torch", "timm")
# One child imports every stage module in turn and names, per module, the heavy packages that import brought in.
CHILD = """
import importlib, json, sys
heavy = lambda: {m.partition(".")[0] for m in sys.modules} & {"ray", "torch", "timm"}
found = {}
for module in sys.argv[1:]:
    before = heavy()
    importlib.import_module(module)
    found[module] = sorted(heavy() - before)
print(json.dumps(found))
"""


def _module(name: str) -> str:
    return "engine.bench" if name == "bench" else f"engine.stages.{name}"


def test_every_stage_the_makefile_lists_declares_itself_under_its_name() -> None:
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval=print-stages: ; @echo $(STAGES)", "print-stages"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    listed = done.stdout.split()
    assert listed == stage_names() and {"index", "cam", "evaluate", "bench"} <= set(listed)
    for name in listed:
        declared = stage(name)
        assert isinstance(declared, Stage) and declared.name == name and declared.help, name
        assert callable(declared.run) and all(isinstance(need, Need) for need in declared.needs), name
        assert not (REPO / "jobs" / f"{name}.py").exists(), f"jobs/{name}.py: the declaration is the only entry"


def test_no_stage_module_loads_ray_or_torch_when_imported() -> None:
    modules = [_module(name) for name in stage_names()]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *modules], cwd=REPO, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = {module: heavy for module, heavy in json.loads(done.stdout).items() if heavy}
    assert not loaded, f"imports that load {HEAVY} (move them into the functions): {loaded}"


def test_jobs_list_names_every_stage_with_its_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobs", "--list"], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    lines = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    assert sorted(lines) == stage_names()
    assert lines["split"] == stage("split").help


def test_an_unknown_stage_is_one_line_naming_the_stages() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobs", "splt", "--config", str(CONFIG)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: no stage 'splt'") and "split" in done.stderr


def test_preflight_checks_the_declared_needs_and_the_ones_settings_add(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, [f"run.dir={tmp_path}"])
    more = Need("model/extra.pt", "make extra")
    foo = Stage(
        "foo",
        run=lambda cfg: None,
        help="a test stage",
        needs=(Need("tables/foo", "make foo"),),
        more_needs=lambda cfg: (more,) if cfg.run.overwrite else (),
    )
    with pytest.raises(PreflightError, match=rf"^{tmp_path}/tables/foo missing: run `make foo` first$"):
        preflight(foo, cfg)
    (tmp_path / "tables" / "foo").mkdir(parents=True)
    (tmp_path / "tables" / "foo" / "part-0.parquet").write_bytes(b"x")
    preflight(foo, cfg)  # its needs are there; more_needs adds nothing with these settings
    with pytest.raises(PreflightError, match=r"model/extra\.pt missing: run `make extra` first"):
        preflight(foo, load_config(CONFIG, [f"run.dir={tmp_path}", "run.overwrite=true"]))
    assert foo.inputs(load_config(CONFIG, ["run.overwrite=true"]))[-1] == more
    assert stage("split").needs == (INDEX,)


def test_a_missing_need_is_one_error_line_and_the_stage_never_runs(tmp_path: Path, capsys) -> None:
    ran = []
    foo = Stage("foo", run=ran.append, help="a test stage", needs=(INDEX,))
    assert run_stage(foo, ["--config", str(CONFIG), f"run.dir={tmp_path}"]) == 2
    out, err = capsys.readouterr()
    assert not ran and out == "" and err == f"error: {tmp_path}/tables/index missing: run `make index` first\n"


def test_the_start_line_names_the_data_the_declaration_reads(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, [f"run.dir={tmp_path}", "data.root=scans"])
    assert preamble("split", cfg) == f"-> split: run {tmp_path}, data scans"
    foo = Stage("foo", run=lambda cfg: None, help="a test stage", data=lambda cfg: "elsewhere")
    assert preamble(foo, cfg).endswith("data elsewhere")
