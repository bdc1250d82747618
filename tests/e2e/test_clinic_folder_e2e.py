"""A clinic's mixed DICOM folder, end to end: `make index` -> `make cam model.from_run=…` -> report, browse, export.

The folder holds every real-world variant once (tests/io/test_dicom.py `clinic_folder`): raw 2-frame NM studies,
derived OT colour and mask files of the same study, a PS3.10 media export without extensions, MONOCHROME1,
rescaled, dynamic and two-energy-window files, a photo upload, a CT. Every file must end as index rows or an
error/skip row, only the model's view (POST) may be scored, and the QC flags must reach the report and browse.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from engine.config import BrowseConfig
from engine.io.tables import read_table
from engine.stages.browse import create_app
from engine.stages.cam import run_cam
from engine.stages.export import run_export
from engine.stages.index import run_index
from engine.stages.report import run_report
from tests.conftest import test_config
from tests.io.test_dicom import CLINIC_OUTCOMES, CLINIC_ROWS, clinic_folder  # noqa: F401 - the fixture


def _inputs(root: Path) -> set[str]:
    """Every file a person would call part of the folder: all but hidden files and the README."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix != ".txt"
    }


@pytest.fixture
def clinic_run(clinic_folder: Path, trained_run: Path, tmp_path: Path):  # noqa: F811 - the fixture
    run_dir = tmp_path / "clinic_run"
    cfg = test_config(clinic_folder, run_dir, "data.layout=dicom", f"model.from_run={trained_run}", "cam.overlays=0")
    index_summary = run_index(cfg)
    cam_summary = run_cam(cfg)
    return cfg, run_dir, index_summary, cam_summary


def test_a_mixed_clinic_folder_is_accounted_scored_on_its_view_and_returned_as_dicom(
    clinic_run,
    clinic_folder: Path,  # noqa: F811 - the fixture
    trained_run: Path,
) -> None:
    cfg, run_dir, index_summary, cam_summary = clinic_run
    index = read_table(str(run_dir), "index")
    errors = read_table(str(run_dir), "errors")
    # every file: index rows, or an error / skip row naming it with its reason
    assert sorted(index["path"]) == sorted(CLINIC_ROWS)
    index_errors = errors[errors["stage"] == "index"]
    outcomes = dict(zip(index_errors["file"], index_errors["reason"].str.split(":").str[0], strict=True))
    assert {path: outcomes.get(path) for path in CLINIC_OUTCOMES} == CLINIC_OUTCOMES
    indexed_files = {path.split("#")[0] for path in index["path"]}
    assert _inputs(clinic_folder) <= indexed_files | set(outcomes)
    assert index_summary.balanced
    # only the model's view is scored; the other frames are counted as skipped, never silently dropped
    preds = read_table(str(run_dir), "preds").query("stage == 'cam'")
    views = index.set_index("image_id")["view"]
    assert set(views[preds["image_id"]]) == {"POST"}
    others = int((views != "POST").sum())
    assert others > 0 and cam_summary.skipped.get("view_mismatch", 0) == others
    assert cam_summary.balanced and cam_summary.rows_in == len(index)
    # the rescaled and MONOCHROME1 frames are scored like any other
    scored_paths = set(index.set_index("image_id").loc[preds["image_id"], "path"])
    assert {"rescaled.dcm#0", "mono1.dcm#0", "raw/s01.dcm#1"} <= scored_paths
    # QC flags reach the report and browse
    run_report(cfg)
    page = (run_dir / "report" / "index.html").read_text()
    assert "Quality control" in page and "domain_shift" in page
    client = create_app(cfg, BrowseConfig()).test_client()
    table = client.get("/")
    assert table.status_code == 200 and "QC flag" in table.get_data(as_text=True)
    # results back as DICOM: Secondary Captures in a new series of the source study
    summary = run_export(cfg)
    assert summary.balanced and summary.rows_in == len(preds)
    written = sorted((run_dir / "export").rglob("*.dcm"))
    assert len(written) == len(preds)
    source_study = pydicom.dcmread(clinic_folder / "raw" / "s01.dcm", stop_before_pixels=True).StudyInstanceUID
    studies = {pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID for path in written}
    assert source_study in studies
    # the run holds the operating point its preds were scored at: the model run's threshold
    adopted, chosen = read_table(str(run_dir), "thresholds"), read_table(str(trained_run), "thresholds")
    assert adopted["thr"].iloc[-1] == chosen["thr"].iloc[-1]
