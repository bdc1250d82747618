"""Patient-level, stratified, seeded, order-independent train/val/test split.

Splitting per patient keeps a patient's ANT and POST images (same file name in both folders) in one split;
splitting per image would put about a third of the patients in two splits at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def _id_key(patient_id: str) -> tuple[int, int | str]:
    """Sorts ASCII-digit ids numerically, then other ids as text.

    `str.isdigit` is also true for superscripts and other Unicode digits ("²"), which `int` refuses.
    """
    return (0, int(patient_id)) if patient_id.isascii() and patient_id.isdigit() else (1, patient_id)


def patient_groups(patient_ids: list[str], duplicate_groups: tuple[tuple[str, ...], ...]) -> dict[str, str]:
    """Returns patient_id -> group id (the group's smallest id); groups chain when they overlap."""
    parent = {p: p for p in patient_ids}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for group in duplicate_groups:
        members = [p for p in group if p in parent]
        for other in members[1:]:
            a, b = sorted((find(members[0]), find(other)), key=_id_key)
            parent[b] = a
    return {p: find(p) for p in patient_ids}


def _stratum_counts(n: int, train: float, val: float) -> tuple[int, int, int]:
    n_train = int(round(train * n))
    n_val = min(int(round(val * n)), n - n_train)
    return n_train, n_val, n - n_train - n_val


def assign_splits(
    index: pd.DataFrame, train: float, val: float, seed: int, duplicate_groups: tuple[tuple[str, ...], ...]
) -> pd.DataFrame:
    """Returns one row per index row: image_id, patient_id, folder, view, label, patient_label, group_id, split.

    A patient's label is 1 when any of its whole-body images is abnormal (its region crops when it has
    none). Groups of duplicate patients share one split. Within each label stratum, groups are sorted
    by id and permuted with `seed`, so the result does not depend on row order.
    """
    if not 0 < train < 1 or not 0 <= val < 1 or train + val > 1:
        raise ValueError(f"split ratios train={train}, val={val}: need 0<train<1, 0<=val, train+val<=1")
    rows = index.assign(patient_id=index["patient_id"].astype(str))
    whole = rows[rows["is_whole_body"]]
    label_source = whole if len(whole) else rows
    patient_label = label_source.groupby("patient_id")["label"].max()
    fallback = rows.groupby("patient_id")["label"].max()
    patient_label = patient_label.reindex(fallback.index).fillna(fallback).astype(np.int8)
    group_of = patient_groups(sorted(patient_label.index, key=_id_key), duplicate_groups)
    group_label = patient_label.groupby(pd.Series(group_of)).max()
    split_of_group: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    for label in sorted(group_label.unique()):
        groups = sorted(group_label.index[group_label == label], key=_id_key)
        order = [groups[i] for i in rng.permutation(len(groups))]
        n_train, n_val, _ = _stratum_counts(len(order), train, val)
        for i, group in enumerate(order):
            split_of_group[group] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    out = rows.loc[:, ["image_id", "patient_id", "folder", "view", "label"]].copy()
    out["patient_label"] = out["patient_id"].map(patient_label).astype(np.int8)
    out["group_id"] = out["patient_id"].map(group_of)
    out["split"] = out["group_id"].map(split_of_group)
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


def split_sizes(splits: pd.DataFrame) -> pd.DataFrame:
    """Returns image counts per split x view x label (rows: split, view; columns: label)."""
    table = splits.pivot_table(index=["split", "view"], columns="label", values="image_id", aggfunc="count")
    return table.fillna(0).astype(int).reindex(SPLITS, level=0)


def split_sizes_line(sizes: pd.DataFrame) -> str:
    """Returns `split_sizes` as one line of normal/abnormal counts: `train ANT 92/43, POST 90/45; val ...`."""
    counts = sizes.reindex(columns=[0, 1], fill_value=0)
    parts = []
    for split in counts.index.unique(level=0):
        views = ", ".join(f"{view} {normal}/{abnormal}" for view, (normal, abnormal) in counts.loc[split].iterrows())
        parts.append(f"{split} {views}")
    return "; ".join(parts)
