"""Ray Train with several workers: every val image scored once per epoch, train rows counted, no silent hang."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from engine.config import ConfigError
from engine.io.tables import read_table
from engine.runtime.fit import train_fit_problem
from engine.stages._rows import select_rows
from engine.stages.split import run_split
from engine.stages.train import run_train
from tests.conftest import test_config

# Split fractions tried in turn until the session's generated data gives odd train and val counts of
# whole-body POST images, so that an equal split over 2 workers would have to drop a row of each.
SPLIT_CANDIDATES = [(f"split.train={t}", f"split.val={v}") for t in (0.75, 0.7, 0.65, 0.8) for v in (0.15, 0.2, 0.1)]
# Two workers on the session's 2 CPUs: half a CPU each, and half a CPU per decode task.
TWO_WORKERS = ("train.num_workers=2", "train.cpus_per_worker=0.5", "ray.decode_num_cpus=0.5", "train.torch_threads=1")


@pytest.fixture(scope="module")
def odd_split_run(data_root: Path, split_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple]:
    """A run whose train and val splits both hold an odd number of whole-body POST images."""
    run_dir = tmp_path_factory.mktemp("odd") / "run"
    shutil.copytree(split_run, run_dir)
    for fractions in SPLIT_CANDIDATES:
        cfg = test_config(data_root, run_dir, *fractions, "run.overwrite=true")
        run_split(cfg)
        counts = select_rows(cfg, ("train", "val"))["split"].value_counts()
        if counts.get("train", 0) % 2 == 1 and counts.get("val", 0) % 2 == 1:
            return run_dir, fractions
    pytest.fail("no candidate split gives odd train and val counts")


@pytest.mark.timeout(600)
def test_two_workers_score_every_val_image_exactly_once_per_epoch(ray_session, data_root, odd_split_run):
    run_dir, fractions = odd_split_run
    cfg = test_config(data_root, run_dir, *fractions, *TWO_WORKERS)
    rows = select_rows(cfg, ("train", "val"))
    val_ids = sorted(rows.loc[rows["split"] == "val", "image_id"])
    n_train = int((rows["split"] == "train").sum())
    assert len(val_ids) % 2 == 1 and n_train % 2 == 1
    summary = run_train(cfg)
    preds = read_table(cfg.run.dir, "preds")
    preds = preds[preds["stage"] == "train"]
    for epoch in range(1, cfg.train.epochs + 1):  # counted from 1
        assert sorted(preds.loc[preds["epoch"] == epoch, "image_id"]) == val_ids, f"epoch {epoch}"
    epochs = read_table(cfg.run.dir, "epochs").sort_values("epoch")
    trained = int(epochs["images"].iloc[-1])
    assert n_train - 1 <= trained <= n_train  # an equal split of an odd count over 2 workers drops one
    left_out_by_qc = len(select_rows(cfg, ("train", "val"), qc_exclude=False)) - len(rows)
    assert summary.rows_in == n_train + len(val_ids) + left_out_by_qc
    assert summary.rows_ok == trained + len(val_ids)
    assert summary.skipped["equal_split"] == n_train - trained and summary.balanced
    assert sum(v for k, v in summary.skipped.items() if k.startswith("qc_")) == left_out_by_qc


@pytest.mark.timeout(120)
def test_train_workers_that_take_every_cpu_fail_at_once_naming_the_keys(ray_session, data_root, split_run):
    cfg = test_config(data_root, split_run, "train.num_workers=2")  # 2 x 1 CPU + a 1-CPU decode task on 2 CPUs
    with pytest.raises(ConfigError, match=r"train\.num_workers.*train\.cpus_per_worker.*ray\.decode_num_cpus") as err:
        run_train(cfg)
    assert "= 3 CPUs, but the Ray cluster has 2" in str(err.value)


@pytest.mark.parametrize(
    ("cluster", "workers", "cpus_per_worker", "decode_cpus", "gpu", "fits"),
    [
        ({"CPU": 2.0}, 1, 1.0, 1.0, False, True),
        ({"CPU": 2.0}, 2, 1.0, 1.0, False, False),
        ({"CPU": 2.0}, 2, 0.5, 0.5, False, True),
        ({"CPU": 2.0}, 2, 1.0, 0.0, False, True),
        ({"CPU": 3.0}, 2, 1.0, 1.0, False, True),
        ({"CPU": 1.0, "GPU": 1.0}, 1, 1.0, 1.0, True, True),
        ({"CPU": 4.0, "GPU": 1.0}, 2, 1.0, 1.0, True, False),
        ({"CPU": 0.0}, 1, 0.0, 1.0, False, False),
    ],
)
def test_train_fit_problem_compares_workers_and_a_decode_task_with_the_cluster(
    cluster, workers, cpus_per_worker, decode_cpus, gpu, fits
):
    assert (train_fit_problem(cluster, workers, cpus_per_worker, decode_cpus, gpu) is None) == fits
