"""Patient-level split: no leak across splits, stratified, seeded, order-independent, duplicates together."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.splitting import SPLITS, assign_splits, patient_groups, split_sizes, split_sizes_line
from engine.io.indexing import build_index
from engine.io.synth import generate_dataset

REGION_FOLDERS = ("kneeLANT", "chestRPOST", "headANT")


def index_frame(patients: list[tuple[str, int, int, bool]]) -> pd.DataFrame:
    """Returns index rows for (patient_id, ANT label, POST label, has region crops) tuples.

    Each patient has a whole-body ANT and POST image; with crops also three region images labelled
    like the ANT view.
    """
    rows = []
    for patient_id, ant, post, has_crops in patients:
        rows.append((f"wholeBodyANT/{patient_id}.jpg", patient_id, "wholeBodyANT", "ANT", ant, True))
        rows.append((f"wholeBodyPOST/{patient_id}.jpg", patient_id, "wholeBodyPOST", "POST", post, True))
        for folder in REGION_FOLDERS if has_crops else ():
            view = "ANT" if folder.endswith("ANT") else "POST"
            rows.append((f"{folder}/{patient_id}.jpg", patient_id, folder, view, ant, False))
    columns = ["image_id", "patient_id", "folder", "view", "label", "is_whole_body"]
    return pd.DataFrame(rows, columns=columns).astype({"label": np.int8})


def split_of_patient(splits: pd.DataFrame) -> pd.Series:
    """Returns patient_id -> split, asserting first that each patient has exactly one split."""
    per_patient = splits.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all(), f"patients in several splits: {list(per_patient[per_patient > 1].index)}"
    return splits.groupby("patient_id")["split"].first()


patient_lists = st.lists(
    st.tuples(st.integers(0, 4000).map(str), st.integers(0, 1), st.integers(0, 1), st.booleans()),
    min_size=1,
    max_size=40,
    unique_by=lambda p: p[0],
)
ratios = st.sampled_from([(0.8, 0.1), (0.6, 0.2), (0.5, 0.5), (0.7, 0.0), (1 / 3, 1 / 3), (0.1, 0.85), (0.99, 0.01)])
FEW = settings(max_examples=30, deadline=None)


@FEW
@given(patients=patient_lists, ratio=ratios, seed=st.integers(0, 2**32 - 1))
def test_every_image_of_a_patient_lands_in_one_split(patients, ratio, seed):
    index = index_frame(patients)
    splits = assign_splits(index, *ratio, seed=seed, duplicate_groups=())
    assert sorted(splits["image_id"]) == sorted(index["image_id"])
    assert set(splits["split"]) <= set(SPLITS)
    split_of_patient(splits)


@FEW
@given(patients=patient_lists, ratio=ratios, seed=st.integers(0, 2**32 - 1))
def test_each_label_stratum_is_split_within_one_patient_of_the_target(patients, ratio, seed):
    train, val = ratio
    splits = assign_splits(index_frame(patients), train, val, seed=seed, duplicate_groups=())
    patients_frame = splits.drop_duplicates("patient_id")
    for _, stratum in patients_frame.groupby("patient_label"):
        n = len(stratum)
        counts = stratum["split"].value_counts()
        for split, share in zip(SPLITS, (train, val, 1 - train - val), strict=True):
            assert abs(counts.get(split, 0) - share * n) <= 1, (split, counts.to_dict(), n)


@FEW
@given(patients=patient_lists, ratio=ratios, seed=st.integers(0, 2**32 - 1), shuffle_seed=st.integers(0, 1000))
def test_shuffling_the_index_rows_gives_the_same_split(patients, ratio, seed, shuffle_seed):
    index = index_frame(patients)
    shuffled = index.sample(frac=1, random_state=shuffle_seed).reset_index(drop=True)
    expected = assign_splits(index, *ratio, seed=seed, duplicate_groups=())
    pd.testing.assert_frame_equal(assign_splits(shuffled, *ratio, seed=seed, duplicate_groups=()), expected)


@FEW
@given(
    patients=patient_lists,
    pairs=st.lists(st.tuples(st.integers(0, 60).map(str), st.integers(0, 60).map(str)), max_size=15),
    seed=st.integers(0, 1000),
)
def test_duplicate_groups_share_one_split_even_when_they_chain(patients, pairs, seed):
    extra = [(str(i), i % 2, 0, i % 3 == 0) for i in range(61)]  # ids the pairs refer to, all present
    known = {p[0] for p in patients}
    index = index_frame(patients + [p for p in extra if p[0] not in known])
    splits = assign_splits(index, 0.6, 0.2, seed=seed, duplicate_groups=tuple(pairs))
    split_of = split_of_patient(splits)
    for a, b in pairs:
        assert split_of[a] == split_of[b]
    group_of = splits.drop_duplicates("patient_id").set_index("patient_id")["group_id"]
    assert (splits.groupby("group_id")["split"].nunique() == 1).all()
    for a, b in pairs:
        assert group_of[a] == group_of[b]


def test_chained_duplicate_pairs_form_one_group_named_by_its_smallest_id():
    groups = patient_groups(["1", "2", "3", "10", "9", "4"], (("2", "3"), ("1", "2"), ("10", "9"), ("4", "404")))
    assert groups == {"1": "1", "2": "1", "3": "1", "10": "9", "9": "9", "4": "4"}  # numeric order: 9 < 10


def test_a_chained_group_of_three_patients_shares_its_split_and_label():
    index = index_frame([("1", 0, 0, False), ("2", 0, 0, True), ("3", 1, 0, False), ("4", 0, 0, False)])
    splits = assign_splits(index, 0.5, 0.25, seed=0, duplicate_groups=(("1", "2"), ("2", "3")))
    rows = splits.drop_duplicates("patient_id").set_index("patient_id")
    assert list(rows.loc[["1", "2", "3"], "group_id"]) == ["1", "1", "1"]
    assert rows.loc[["1", "2", "3"], "split"].nunique() == 1
    assert list(rows.loc[["1", "2", "3"], "patient_label"]) == [0, 0, 1]  # own label; the group is abnormal


def test_the_known_bs80k_duplicate_pairs_stay_together():
    ids = ["828", "2244", "312", "570", "831", "3216", "832", "3245"] + [str(i) for i in range(40)]
    index = index_frame([(p, i % 2, 0, False) for i, p in enumerate(ids)])
    pairs = (("828", "2244"), ("312", "570"), ("831", "3216"), ("832", "3245"))
    for seed in range(5):
        split_of = split_of_patient(assign_splits(index, 0.5, 0.25, seed=seed, duplicate_groups=pairs))
        assert all(split_of[a] == split_of[b] for a, b in pairs)


def test_the_same_seed_gives_the_same_split_and_another_seed_a_different_one():
    index = index_frame([(str(i), i % 3 == 0, 0, i % 2 == 0) for i in range(60)])
    first = assign_splits(index, 0.8, 0.1, seed=1, duplicate_groups=())
    pd.testing.assert_frame_equal(assign_splits(index, 0.8, 0.1, seed=1, duplicate_groups=()), first)
    for other in (2, 3):
        assert not assign_splits(index, 0.8, 0.1, seed=other, duplicate_groups=())["split"].equals(first["split"])


def test_the_patient_label_comes_from_the_whole_body_views_not_the_region_crops():
    index = index_frame([("1", 0, 1, False), ("2", 0, 0, True), ("3", 1, 1, True)])
    index.loc[index["image_id"] == "kneeLANT/2.jpg", "label"] = 1  # abnormal crop, normal whole body
    crops_only = pd.DataFrame(
        [("kneeLANT/4.jpg", "4", "kneeLANT", "ANT", 1, False), ("headANT/4.jpg", "4", "headANT", "ANT", 0, False)],
        columns=index.columns,
    ).astype({"label": np.int8})
    splits = assign_splits(pd.concat([index, crops_only]), 0.5, 0.25, seed=0, duplicate_groups=())
    labels = splits.drop_duplicates("patient_id").set_index("patient_id")["patient_label"]
    assert labels.to_dict() == {"1": 1, "2": 0, "3": 1, "4": 1}  # 4 has only crops: they decide
    assert splits["patient_label"].dtype == np.int8


def test_an_80_10_10_split_of_ten_patients_per_label_is_8_1_1():
    index = index_frame([(str(i), int(i >= 10), int(i >= 10), False) for i in range(20)])
    splits = assign_splits(index, 0.8, 0.1, seed=0, duplicate_groups=())
    per_label = splits.drop_duplicates("patient_id").groupby(["patient_label", "split"]).size()
    assert per_label.to_dict() == {
        (0, "test"): 1,
        (0, "train"): 8,
        (0, "val"): 1,
        (1, "test"): 1,
        (1, "train"): 8,
        (1, "val"): 1,
    }


@pytest.mark.parametrize(
    ("train", "val"), [(0.0, 0.1), (1.0, 0.0), (0.8, 0.3), (0.5, -0.1), (0.5, 1.0), (float("nan"), 0.1)]
)
def test_invalid_split_ratios_are_refused(train, val):
    index = index_frame([("1", 0, 0, False)])
    with pytest.raises(ValueError, match=r"split ratios train=.*need 0<train<1, 0<=val, train\+val<=1"):
        assign_splits(index, train, val, seed=0, duplicate_groups=())


def test_split_sizes_counts_images_per_split_view_and_label():
    splits = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e"],
            "split": ["train", "train", "train", "test", "val"],
            "view": ["ANT", "ANT", "POST", "POST", "ANT"],
            "label": [0, 1, 1, 0, 0],
        }
    )
    sizes = split_sizes(splits)
    assert list(sizes.index) == [("train", "ANT"), ("train", "POST"), ("val", "ANT"), ("test", "POST")]
    assert sizes.loc[("train", "ANT")].to_dict() == {0: 1, 1: 1}
    assert sizes.loc[("test", "POST")].to_dict() == {0: 1, 1: 0}
    assert split_sizes_line(sizes) == "train ANT 1/1, POST 0/1; val ANT 1/0; test POST 1/0"
    assert split_sizes_line(split_sizes(splits[splits["label"] == 0])) == "train ANT 1/0; val ANT 1/0; test POST 1/0"


@pytest.fixture(scope="module")
def generated_index(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The index of a generated 20-patient BS-80K-shaped dataset (whole-body views and region crops)."""
    root: Path = tmp_path_factory.mktemp("split_data") / "data"
    generate_dataset(root, patients=20, seed=5)
    return build_index(root).index


def test_a_generated_dataset_keeps_each_patients_views_and_crops_in_one_split(generated_index):
    assert (~generated_index["is_whole_body"]).any()  # the dataset has region crops
    splits = assign_splits(generated_index, 0.6, 0.2, seed=42, duplicate_groups=())
    split_of = split_of_patient(splits)
    assert set(split_of) == set(SPLITS)
    whole_body = splits[splits["folder"].isin(["wholeBodyANT", "wholeBodyPOST"])]
    assert (whole_body.groupby("patient_id")["view"].nunique() == 2).all()


@pytest.mark.parametrize("odd_id", ["²", "١٢", "12³", "⑦"])
def test_ids_with_unicode_digits_sort_as_text_without_crashing(odd_id):
    groups = patient_groups(["10", odd_id, "9"], (("10", odd_id),))
    assert groups == {"10": "10", odd_id: "10", "9": "9"}  # numeric ids first, so 10 names the group
    splits = assign_splits(index_frame([(odd_id, 1, 1, False), ("3", 0, 0, False)]), 0.5, 0.0, 0, ())
    assert set(splits["patient_id"]) == {odd_id, "3"}
