"""StageSummary: rows in = ok + errors, error codes by prefix, the one-screen render and the JSON file."""

import json

import numpy as np
import pytest

from engine.config import load_config
from engine.io.summary import AccountError, StageSummary
from engine.io.tables import TableWriter, write_part
from engine.stages.threshold import run_threshold
from tests.conftest import REPO


def summary_of(rows_in: int, rows_ok: int, reasons: list[str]) -> StageSummary:
    summary = StageSummary("cam", rows_in=rows_in, rows_ok=rows_ok)
    summary.add_errors(reasons)
    return summary


def test_rows_in_equal_to_ok_plus_errors_is_balanced():
    summary = summary_of(5, 3, ["undecodable: junk", "empty_file: 0 bytes"])
    assert summary.balanced
    assert summary.to_dict()["errors"] == 2
    assert summary.to_dict()["balanced"] is True


def test_a_lost_row_makes_the_summary_unbalanced():
    assert not summary_of(5, 3, ["undecodable: junk"]).balanced
    assert not summary_of(5, 5, ["undecodable: junk"]).balanced  # a row counted twice


def test_errors_are_counted_by_the_code_before_the_first_colon():
    summary = summary_of(
        6, 2, ["truncated_jpeg: no end marker", "truncated_jpeg: other: detail", "undecodable", "empty_file: 0 bytes"]
    )
    assert summary.to_dict()["errors_by_reason"] == {"empty_file": 1, "truncated_jpeg": 2, "undecodable": 1}


def test_errors_from_several_batches_add_up():
    summary = summary_of(4, 0, np.array(["undecodable: a", "undecodable: b"]))
    summary.add_errors(["undecodable: c", "image_too_large: 9x9"])
    assert summary.to_dict()["errors_by_reason"] == {"image_too_large": 1, "undecodable": 3}
    assert summary.balanced


def test_render_flags_an_unbalanced_account():
    text = summary_of(5, 3, ["undecodable: junk"]).render()
    assert text.startswith("== cam: 5 in, 3 ok, 1 errors (UNBALANCED)")
    assert "error undecodable: 1" in text


def test_render_lists_errors_tables_and_extras_of_a_balanced_run():
    summary = summary_of(3, 2, ["undecodable: junk"])
    summary.tables = {"preds": 2, "errors": 1}
    summary.extra = {"scope": "split", "auc": 0.876543, "per_view": {"ANT": 1, "POST": 0.25}}
    lines = summary.render().splitlines()
    assert "(balanced)" in lines[0]
    assert "UNBALANCED" not in lines[0]
    assert lines[1:] == [
        "   error undecodable: 1",
        "   rows written: preds 2, errors 1",
        "   scope: split; auc: 0.8765",
        "   per_view: ANT=1, POST=0.25",
    ]


def test_render_packs_scalars_to_the_line_width_and_leaves_out_empty_values():
    summary = summary_of(1, 1, [])
    summary.extra = {f"key{i}": "v" * 20 for i in range(6)} | {"empty": "", "table": "\nA 1\nB 2", "last": 3}
    lines = summary.render().splitlines()[1:]
    assert all(len(line) <= 110 for line in lines)
    assert "empty" not in "\n".join(lines)
    assert len(lines[:-4]) == 2  # six 27-character items: four on the first line, two on the second
    items = [item for line in lines[:-4] for item in line.strip().split("; ")]
    assert items == [f"key{i}: {'v' * 20}" for i in range(6)]
    assert lines[-4:] == ["   table: ", "A 1", "B 2", "   last: 3"]


def test_the_rate_is_rows_in_per_second():
    summary = summary_of(10, 10, [])
    summary.seconds = 4.0
    assert summary.to_dict()["rows_per_s"] == 2.5
    assert "2.5 rows/s" in summary.render()


def test_finish_stops_the_clock():
    summary = summary_of(1, 1, []).finish()
    assert summary.seconds >= 0.0
    assert summary.to_dict()["seconds"] == round(summary.seconds, 3)


def test_save_writes_json_that_reads_back_equal(tmp_path):
    summary = summary_of(4, 3, ["undecodable: junk"])
    summary.tables = {"preds": 3}
    summary.extra = {"note": "ok"}
    path = summary.save(str(tmp_path / "run"))
    assert path == f"{tmp_path}/run/summaries/cam.json"
    assert json.loads((tmp_path / "run" / "summaries" / "cam.json").read_text()) == summary.to_dict()


def test_saved_json_keeps_numpy_counts_as_numbers(tmp_path):
    summary = summary_of(2, 2, [])
    summary.extra = {
        "images_by_view": {"ANT": np.int64(1), "POST": np.int64(1)},
        "by_label": {np.int64(0): 2},
        "auc": np.float32(0.5),
        "sizes": np.array([1, 2]),
    }
    summary.save(str(tmp_path))
    saved = json.loads((tmp_path / "summaries" / "cam.json").read_text())
    assert saved["images_by_view"] == {"ANT": 1, "POST": 1}
    assert saved["by_label"] == {"0": 2}
    assert (saved["auc"], saved["sizes"]) == (0.5, [1, 2])


def test_save_accepts_a_file_uri_run_dir(tmp_path):
    summary_of(1, 1, []).save(f"file://{tmp_path}")
    assert json.loads((tmp_path / "summaries" / "cam.json").read_text())["rows_in"] == 1


def _val_preds(image_ids: list[str]) -> dict[str, list]:
    """Returns best-epoch (1) val `preds` rows of `make train` for `image_ids`, half of them abnormal."""
    n = len(image_ids)
    return {
        "image_id": image_ids,
        "patient_id": image_ids,
        "view": ["ANT"] * n,
        "y_true": [i % 2 for i in range(n)],
        "y_prob": [0.1 + 0.8 * (i % 2) for i in range(n)],
        "logit": [0.0] * n,
        "epoch": [1] * n,
        "run_id": ["r"] * n,
        "model": ["m"] * n,
        "stage": ["train"] * n,
        "split": ["val"] * n,
        "folder": ["wholeBodyANT"] * n,
        "qc_flags": [None] * n,
    }


def test_commit_of_an_unbalanced_account_raises_and_commits_nothing(tmp_path):
    writer = TableWriter(str(tmp_path), "cam", split="test")
    writer.check(["errors"])
    writer.write(
        "errors",
        {
            "file": ["a.jpg"],
            "line": [None],
            "image_id": ["a"],
            "stage": ["cam"],
            "reason": ["undecodable: junk"],
            "split": ["test"],
        },
    )
    summary = summary_of(3, 1, ["undecodable: junk"])  # one row lost
    with pytest.raises(AccountError, match=r"cam: 3 rows in, but 1 ok \+ 1 errors \+ 0 skipped: .*nothing"):
        summary.commit(writer)
    assert not (tmp_path / "tables").exists()
    assert not list((tmp_path / "_staging").glob("cam-*"))
    balanced = TableWriter(str(tmp_path), "cam", split="test")
    balanced.write(
        "errors",
        {
            "file": ["a.jpg"],
            "line": [None],
            "image_id": ["a"],
            "stage": ["cam"],
            "reason": ["undecodable: junk"],
            "split": ["test"],
        },
    )
    assert summary_of(2, 1, ["undecodable: junk"]).commit(balanced) == {"errors": 1}


def test_threshold_refuses_val_predictions_counted_twice(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "best.json").write_text(json.dumps({"epoch": 1}))
    ids = [f"wholeBodyANT/{i}.jpg" for i in range(6)]
    write_part(str(run_dir), "preds", _val_preds(ids), "epoch-001")
    cfg = load_config(REPO / "conf" / "demo.yaml", [f"run.dir={run_dir}"])
    assert run_threshold(cfg).to_dict()["balanced"]
    write_part(str(run_dir), "preds", _val_preds(ids[:1]), "epoch-001-again")  # one val image stored twice
    with pytest.raises(AccountError, match=r"threshold: 6 rows in, but 7 ok"):
        run_threshold(cfg)


def test_rows_skipped_on_purpose_balance_the_account_and_are_shown_by_reason() -> None:
    summary = StageSummary("train", rows_in=5, rows_ok=3)
    summary.add_errors(["undecodable: x"])
    assert not summary.balanced
    summary.add_skipped("equal_split", 1)
    assert summary.balanced and summary.to_dict()["skipped"] == {"equal_split": 1}
    assert "skipped equal_split: 1" in summary.render()
