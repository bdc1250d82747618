"""A tiny model trained from scratch on learnable generated data: its CAM points at the lesions, far above chance."""

from __future__ import annotations

import pytest
from sklearn.metrics import roc_auc_score

from engine.io.synth import generate_dataset
from engine.io.tables import read_table
from engine.stages.cam import run_cam
from engine.stages.evaluate.run import run_evaluate
from engine.stages.index import run_index
from engine.stages.split import run_split
from engine.stages.threshold import run_threshold
from engine.stages.train import run_train
from tests.conftest import test_config
from tests.eval_recount import recount

# A learnable task for a from-scratch tiny model on 2 CPU cores: exaggerated lesions, the demo's half canvas and a
# stride-8 CAM (16 original px per cell). 300 patients with a 40 % train share keep the 120 training images of
# 200 patients x 60 % (the same training time) and give ~160 test images (~50 abnormal) instead of ~60 (~19):
# the floors below sit many standard errors above chance.
LEARNABLE = (
    "canvas.height=512",
    "canvas.width=256",
    "boxes.size=24",
    "model.output_stride=8",
    "train.epochs=4",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.torch_threads=2",
    "ray.decode_batch_size=16",
    "infer.batch_size=16",
    "split.train=0.4",
    "split.val=0.07",
    "evaluate.tune=false",
    "evaluate.coco=false",
    "cam.overlays=0",
)
# The floors' measured spread: the test's docstring.
AUC_FLOOR = 0.62
POINTING_FLOOR = 0.60


@pytest.fixture(scope="module")
def learned_run(ray_session, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained from scratch on learnable generated data, then cam + evaluate on its test split."""
    root = tmp_path_factory.mktemp("learnable") / "data"
    generate_dataset(root, patients=300, seed=11, region_fraction=0.0, lesion_gain=4.0, lesion_size=2.0)
    run_dir = root.parent / "run"
    cfg = test_config(root, run_dir, *LEARNABLE)
    for stage in (run_index, run_split, run_train, run_threshold, run_cam, run_evaluate):
        stage(cfg)
    return run_dir, cfg


def test_a_trained_tiny_model_points_at_the_lesions_far_above_chance(learned_run) -> None:
    """The trained model's test AUC and pointing game clear floors set from their measured spread.

    The floors sit well below the spread measured over 5 training seeds (`seed` 42, 1, 2, 3, 4) x `train.torch_threads`
    1 and 2 (other summation orders, as on another CPU), 10 runs of this exact fixture (2026-12-07, 2-core x86):
      test AUC        0.729-0.878 (42: 0.788/0.800, 1: 0.766/0.871, 2: 0.820/0.729, 3: 0.781/0.759, 4: 0.878/0.805)
      pointing game   0.786-0.945, chance 0.026-0.029 (on 55-56 test images with an Abnormal box)
    The best-val epoch is chosen on ~20 val images, so one run's test AUC moves by ~0.15 between seeds: a floor near a
    single figure is a coin toss. 0.62 is 0.11 under the lowest run and ~2.5 standard errors above chance (0.5 on ~52
    positives); the pointing floor 0.6 is 0.19 under the lowest run and ~20 x chance.
    """
    run_dir, cfg = learned_run
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'")
    auc = roc_auc_score(preds["y_true"], preds["y_prob"])
    loc = read_table(str(run_dir), "loc_metrics")
    rows = loc[(loc["method"] == "peaks") & (loc["split"] == "test") & (loc["folder"] == "*")].set_index("metric")
    pointing, chance = rows.loc["pointing_game"], rows.loc["pointing_chance", "value"]
    print(
        f"\n[learned run] test AUC {auc:.3f} on {len(preds)} images, pointing game {pointing['value']:.3f} "
        f"({pointing['numerator']}/{pointing['denominator']}), chance {chance:.3f}"
    )
    assert len(preds) >= 120 and pointing["denominator"] >= 35
    assert auc >= AUC_FLOOR, auc
    assert pointing["value"] >= max(POINTING_FLOOR, 10 * chance), (pointing.to_dict(), chance, auc)
    # the figure is the model's: recounted from its own heatmaps by the independent brute-force helper
    count = recount(run_dir, "test", "wholeBodyPOST", cfg.evaluate.tolerance_px)
    assert (count.pointing_hits, count.target_images) == (pointing["numerator"], pointing["denominator"])
    assert count.covered_pixels / count.target_pixels == pytest.approx(chance)
