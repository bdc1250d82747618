"""The images `make evaluate` scores: the trained view's whole-body folders of one split, whatever `make cam` wrote.

`make cam cam.scope=all` writes heatmaps for every folder (the other view, the region crops: they have no XML, so
they would count as normal images). Evaluation keeps exactly the rows of ``engine.stages._rows.select_rows``
(index + splits, the trained view's whole-body folders from ``view_folders(data.view)``) and counts the rest.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.dataset as pads

from engine.config import Config
from engine.core.localization.box_methods import valid_heatmaps
from engine.io.tables import read_table
from engine.stages._rows import select_rows, view_folders


@dataclass
class Population:
    """One split's scored images and the account of how they were chosen."""

    split: str
    folders: list[str]  # the trained view's whole-body folders
    selected: int  # index rows of the split in those folders (what should be scored)
    frame: pd.DataFrame  # usable rows: heatmaps + meta + index columns (view, label, path)
    errors: Counter = field(default_factory=Counter)  # no_heatmap, no_meta, bad_heatmap (selected, not usable)
    left_out: dict[str, int] = field(default_factory=dict)  # heatmap rows of the split not selected, per folder

    def note(self) -> dict:
        """Returns the JSON-ready account: selected, usable, errors by reason, left out per folder."""
        return {
            "split": self.split,
            "folders": self.folders,
            "selected": self.selected,
            "usable": len(self.frame),
            "errors": dict(self.errors),
            "left_out_per_folder": self.left_out,
        }


def scored_frame(run_dir: str, split: str, index: pd.DataFrame) -> pd.DataFrame:
    """Returns heatmaps + letterbox meta + index columns (view, label, path) of one split of a run, every folder."""
    only = pads.field("split") == split
    heat = read_table(run_dir, "heatmaps", only)
    meta = read_table(run_dir, "meta", only).drop(columns=["split", "folder"])
    frame = heat.merge(meta, on="image_id", how="inner")
    return frame.merge(index[["image_id", "view", "label", "path"]], on="image_id", how="inner")


def scored_population(cfg: Config, run_dir: str, split: str) -> Population:
    """Returns the usable rows of `split` in the trained view's whole-body folders, with what was left out.

    Args:
        cfg: the evaluated run's config (``data.view`` and its index/splits tables).
        run_dir: where the heatmaps and meta come from (this run, or ``evaluate.baseline_run``).
        split: the split scored.
    """
    folders = view_folders(cfg.data.view)
    selected = select_rows(cfg, (split,))[["image_id", "view", "label", "path"]]
    only = pads.field("split") == split
    heat = read_table(run_dir, "heatmaps", only)
    is_selected = heat["image_id"].isin(selected["image_id"])
    left_out = {str(k): int(v) for k, v in heat.loc[~is_selected, "folder"].value_counts().sort_index().items()}
    heat = heat[is_selected]
    meta = read_table(run_dir, "meta", only).drop(columns=["split", "folder"])
    with_meta = heat.merge(meta, on="image_id", how="inner")
    frame = with_meta.merge(selected, on="image_id", how="inner")
    frame, bad = valid_heatmaps(frame)
    errors = Counter(
        no_heatmap=int((~selected["image_id"].isin(heat["image_id"])).sum()),
        no_meta=int((~heat["image_id"].isin(meta["image_id"])).sum()),
        bad_heatmap=bad,
    )
    return Population(split, folders, len(selected), frame, +errors, left_out)
