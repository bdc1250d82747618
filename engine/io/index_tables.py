"""The index stage's frames: their columns and dtypes, the accumulator every layout fills, and IndexResult.

`lines_listed` counts the inputs read: label lines (bs80k), image files (images) or DICOM frames kept, plus one
per DICOM file refused or left out as a whole and one per group of its frames left out (dicom). Accounting:
`lines_listed == len(index) + len(listing_errors())`; of those rows, the ones whose code is in SKIP_CODES were left
out on purpose (a dynamic study, a secondary energy window: `listing_account` counts them as skipped, not errors).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

import pandas as pd

from engine.core.parsing import STAGE, ParseError
from engine.core.scans.dicom import SKIP_CODES, reason_code
from engine.io.data_tree import DataTree

BS80K_LAYOUT = "bs80k"  # folders part[L|R](ANT|POST) with label files (engine/io/indexing.py)
# Column name -> pandas dtype. "str" is pandas' string dtype (missing values read as NA, not None);
# capitalised dtypes are pandas' nullable ones: `label` is NA for unlabeled scans, `line` outside label files.
INDEX_COLUMNS = {
    "image_id": "str",
    "folder": "str",
    "part": "str",
    "side": "str",
    "view": "str",
    "patient_id": "str",
    "path": "str",
    "label": "Int8",
    "is_whole_body": "bool",
    "has_xml": "bool",
    "xml_path": "str",
    "line": "Int32",
    "pixel_spacing_y_mm": "Float32",
    "pixel_spacing_x_mm": "Float32",
    "study_date": "str",
}
GT_BOX_COLUMNS = {
    "image_id": "str",
    "view": "str",
    "patient_id": "str",
    "cls": "str",
    "x1": "int32",
    "y1": "int32",
    "x2": "int32",
    "y2": "int32",
    "repaired": "str",
}
ERROR_COLUMNS = {"file": "str", "line": "Int32", "image_id": "str", "stage": "str", "reason": "str"}
ROW_DEFAULTS = {"label": None, "line": None, "pixel_spacing_y_mm": None, "pixel_spacing_x_mm": None, "study_date": None}


@dataclass(frozen=True)
class IndexResult:
    """The three index tables plus the count of inputs read (module docstring)."""

    index: pd.DataFrame  # INDEX_COLUMNS, one row per indexed image (or DICOM frame)
    gt_boxes: pd.DataFrame  # GT_BOX_COLUMNS, original-image px, 0-based, x2/y2 exclusive
    errors: pd.DataFrame  # ERROR_COLUMNS
    lines_listed: int
    layout: str = BS80K_LAYOUT

    def listing_errors(self) -> pd.DataFrame:
        """Returns the error rows of inputs that were not indexed (the rest are findings on indexed rows).

        bs80k: the label-line errors (they carry a line); other layouts: rows without an image_id.
        """
        if self.layout == BS80K_LAYOUT:
            return self.errors[self.errors["line"].notna()]
        return self.errors[self.errors["image_id"].isna()]

    def listing_account(self) -> tuple[pd.Series, dict[str, int]]:
        """Returns (reasons of the listing rows that are errors, listing rows left out on purpose per SKIP_CODES
        code): rows in = len(index) + len(errors) + sum(skipped)."""
        listing = self.listing_errors()["reason"]
        skipped = listing.map(reason_code).isin(SKIP_CODES)
        by_code = listing[skipped].map(reason_code).value_counts().sort_index()
        return listing[~skipped], {str(code): int(count) for code, count in by_code.items()}


@dataclass
class IndexAccumulator:
    """Rows gathered while walking; `result()` sorts them into deterministic frames."""

    tree: DataTree
    pool: Executor
    index_rows: list[dict] = field(default_factory=list)
    boxes_by_image: dict[str, list[dict]] = field(default_factory=dict)
    errors: list[ParseError] = field(default_factory=list)
    lines_listed: int = 0

    def error(self, file: str, reason: str, image_id: str | None = None, line: int | None = None) -> None:
        """Records one error row of the index stage."""
        self.errors.append(ParseError(file=file, line=line, stage=STAGE, reason=reason, image_id=image_id))

    def add_row(self, **row: object) -> None:
        """Adds one index row; the columns a layout has no value for (ROW_DEFAULTS) are null."""
        self.index_rows.append({**ROW_DEFAULTS, **row})

    def result(self, layout: str = BS80K_LAYOUT) -> IndexResult:
        """Returns the frames, sorted so that the output does not depend on listing order."""
        rows = sorted(self.index_rows, key=image_sort_key)
        boxes = [box for row in rows for box in self.boxes_by_image.get(row["image_id"], [])]
        errors = sorted(self.errors, key=lambda e: (e.file, e.line or 0, e.image_id or "", e.reason))
        error_rows = [{name: getattr(error, name) for name in ERROR_COLUMNS} for error in errors]
        return IndexResult(
            index=frame(rows, INDEX_COLUMNS),
            gt_boxes=frame(boxes, GT_BOX_COLUMNS),
            errors=frame(error_rows, ERROR_COLUMNS),
            lines_listed=self.lines_listed,
            layout=layout,
        )


def image_sort_key(row: dict) -> tuple:
    """Returns the (folder, numeric patient_id, patient_id, path) key; numeric ids sort first."""
    patient_id = row["patient_id"]
    is_numeric = patient_id.isascii() and patient_id.isdigit()
    return (row["folder"], not is_numeric, int(patient_id) if is_numeric else 0, patient_id, row["path"])


def frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    """Returns a frame with exactly `columns` (name -> dtype), also when `rows` is empty."""
    return pd.DataFrame({name: pd.Series([row[name] for row in rows], dtype=dtype) for name, dtype in columns.items()})
