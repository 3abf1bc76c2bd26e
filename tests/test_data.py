"""Tests of mbls_nlp.data: local loading, validation split, classification splits, image helpers."""

import collections
import gzip
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest

from mbls_nlp.data import (
    image_column_of,
    load_classification_splits,
    load_local_dataset,
    random_crop_and_flip,
    train_validation_split,
)

NEWSGROUPS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "20newsgroups"
needs_newsgroups = pytest.mark.skipif(
    not (NEWSGROUPS_DIR / "train.jsonl.gz").is_file(),
    reason=f"real 20 Newsgroups data not found at {NEWSGROUPS_DIR} (shared data checkout absent)",
)

ROWS = [{"text": f"message number {i}, with a comma", "label": i % 3} for i in range(7)]


def _write(path: Path, rows):
    name = path.name
    if name.endswith(".parquet"):
        pd.DataFrame(rows).to_parquet(path)
        return
    if ".csv" in name:
        payload = pd.DataFrame(rows).to_csv(index=False)
    elif ".jsonl" in name:
        payload = "".join(json.dumps(r) + "\n" for r in rows)
    else:  # .json: one top-level list of records
        payload = json.dumps(rows)
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(payload.encode("utf-8")))
    else:
        path.write_text(payload, encoding="utf-8")


# --- load_local_dataset ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename", ["d.csv", "d.csv.gz", "d.json", "d.json.gz", "d.jsonl", "d.jsonl.gz", "d.parquet", "D.JSONL.GZ"]
)
def test_load_local_dataset_reads_every_format(tmp_path, filename):
    _write(tmp_path / filename, ROWS)
    ds = load_local_dataset(train_file=tmp_path / filename, cache_dir=tmp_path / "cache")
    assert list(ds) == ["train"]
    assert ds["train"].to_list() == ROWS


def test_load_local_dataset_mixes_formats_per_split(tmp_path):
    _write(tmp_path / "train.csv", ROWS[:4])
    _write(tmp_path / "valid.jsonl.gz", ROWS[4:6])
    _write(tmp_path / "test.parquet", ROWS[6:])
    ds = load_local_dataset(
        train_file=str(tmp_path / "train.csv"),
        validation_file=tmp_path / "valid.jsonl.gz",
        test_file=tmp_path / "test.parquet",
        cache_dir=tmp_path / "cache",
    )
    assert list(ds) == ["train", "validation", "test"]
    assert [ds[s].num_rows for s in ds] == [4, 2, 1]
    assert ds["test"].to_list() == ROWS[6:]


def test_load_local_dataset_errors(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ValueError, match=r"train_file.*\.csv, \.csv\.gz, \.json.*\.parquet"):
        load_local_dataset(train_file=tmp_path / "data.txt")
    _write(tmp_path / "ok.csv", ROWS)
    with pytest.raises(ValueError, match="test_file"):
        load_local_dataset(train_file=tmp_path / "ok.csv", test_file=tmp_path / "data.gz")
    with pytest.raises(ValueError, match="at least one"):
        load_local_dataset()
    with pytest.raises(FileNotFoundError, match="validation_file"):
        load_local_dataset(validation_file=tmp_path / "missing.jsonl")


# --- train_validation_split -----------------------------------------------------------------------------------


def _toy(n=100):
    # 60 rows of label 0, 30 of label 1, 10 of label 2.
    labels = [0] * 60 + [1] * 30 + [2] * 10
    return datasets.Dataset.from_dict({"idx": list(range(n)), "label": labels[:n]})


@pytest.mark.parametrize("stratify", [None, "label"])
def test_split_is_seeded_disjoint_and_complete(stratify):
    ds = _toy()
    a = train_validation_split(ds, 20, seed=3, stratify_by_column=stratify)
    b = train_validation_split(ds, 20, seed=3, stratify_by_column=stratify)
    c = train_validation_split(ds, 20, seed=4, stratify_by_column=stratify)
    train, val = set(a["train"]["idx"]), set(a["validation"]["idx"])
    assert (len(train), len(val)) == (80, 20)
    assert not train & val and train | val == set(range(100))
    assert list(a["validation"]["idx"]) == list(b["validation"]["idx"])
    assert set(c["validation"]["idx"]) != val
    assert a["train"].features == ds.features  # an integer label stays an integer label


def test_stratified_split_keeps_class_proportions():
    parts = train_validation_split(_toy(), 20, seed=0, stratify_by_column="label")
    # 20% of 60 / 30 / 10 rows = 12 / 6 / 2 rows per class in validation.
    assert collections.Counter(parts["validation"]["label"]) == {0: 12, 1: 6, 2: 2}


@pytest.mark.parametrize("pct", [0, 100, -5, 150, True])
def test_split_rejects_bad_percentages(pct):
    with pytest.raises(ValueError, match="validation_percentage"):
        train_validation_split(_toy(), pct)


def test_split_rejects_bad_columns():
    with pytest.raises(ValueError, match="stratify_by_column"):
        train_validation_split(_toy(), 10, stratify_by_column="nope")
    text = datasets.Dataset.from_dict({"label": ["a", "b"] * 5})
    with pytest.raises(ValueError, match="stratify_by_column"):
        train_validation_split(text, 10, stratify_by_column="label")
    with pytest.raises(TypeError, match="dataset"):
        train_validation_split(datasets.DatasetDict(train=_toy()), 10)


# --- classification splits and image helpers ---------------------------------------------------------------------


def test_classification_splits_carve_validation_from_train_only(tmp_path):
    rows = [{"text": f"t{i}", "label": ["cat", "dog", "eel"][i % 3]} for i in range(60)]
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "test.csv", rows[:9])
    splits = load_classification_splits(
        train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.csv", validation_split_percentage=20, seed=1
    )
    assert splits["train"].features["label"].names == ["cat", "dog", "eel"]  # strings encoded in sorted order
    assert (splits["train"].num_rows, splits["validation"].num_rows, splits["test"].num_rows) == (48, 12, 9)
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])
    assert collections.Counter(splits["validation"]["label"]) == {0: 4, 1: 4, 2: 4}  # stratified
    limited = load_classification_splits(
        train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.csv", max_train_samples=5, max_test_samples=3
    )
    assert (limited["train"].num_rows, limited["test"].num_rows) == (5, 3)
    with pytest.raises(ValueError, match="test"):
        load_classification_splits(train_file=tmp_path / "train.jsonl")
    with pytest.raises(ValueError, match="label_column"):
        load_classification_splits(
            train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.csv", label_column="target"
        )
    with pytest.raises(ValueError, match="max_train_samples"):
        load_classification_splits(
            train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.csv", max_train_samples=0
        )


@needs_newsgroups
def test_classification_splits_name_integer_labels_from_label_text():
    splits = load_classification_splits(
        train_file=NEWSGROUPS_DIR / "train.jsonl.gz",
        test_file=NEWSGROUPS_DIR / "test.jsonl.gz",
        max_train_samples=50,
        max_eval_samples=20,
        max_test_samples=20,
    )
    names = splits["train"].features["label"].names
    assert len(names) == 20 and names[0] == "alt.atheism" and names[19] == "talk.religion.misc"
    for row in splits["test"]:
        assert names[row["label"]] == row["label_text"]


def test_random_crop_and_flip_matches_the_padded_crop_definition():
    import numpy as np
    import torch

    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    seen_flip = seen_shift = False
    for seed in range(40):
        (out,) = random_crop_and_flip([image], padding=2, generator=torch.Generator().manual_seed(seed))
        assert out.shape == image.shape and out.dtype == np.uint8
        # Every output is a 5x6 window of the zero-padded image, possibly mirrored.
        padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
        windows = [padded[t : t + 5, x : x + 6] for t in range(5) for x in range(5)]
        flipped = any(np.array_equal(out, w[:, ::-1]) for w in windows)
        assert flipped or any(np.array_equal(out, w) for w in windows)
        seen_flip |= flipped and not np.array_equal(out, out[:, ::-1])
        seen_shift |= not (np.array_equal(out, image) or np.array_equal(out, image[:, ::-1]))
    assert seen_flip and seen_shift
    (same,) = random_crop_and_flip([image], padding=0, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(same, image) or np.array_equal(same, image[:, ::-1])
    with pytest.raises(ValueError, match="padding"):
        random_crop_and_flip([image], padding=-1)


def test_image_column_of():
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"img": [], "label": []}, features=features)
    assert image_column_of(ds) == "img" and image_column_of(ds, "img") == "img"
    with pytest.raises(ValueError, match="image_column"):
        image_column_of(ds, "image")
    with pytest.raises(ValueError, match="Image column"):
        image_column_of(ds.remove_columns("img"))


def test_classification_splits_from_an_image_folder_tested_on_its_validation_split(tmp_path):
    # Tiny-ImageNet's shape: train and a labelled validation split, no labelled test split.
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("valid", 3)):
        for name in ("cat", "dog"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                PIL.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="no \\['test'\\] split"):
        load_classification_splits(str(tmp_path))
    with pytest.raises(ValueError, match="`test_split_name` 'dev' is not a split"):
        load_classification_splits(str(tmp_path), test_split_name="dev")
    raw = load_classification_splits(str(tmp_path), test_split_name="validation", validation_split_percentage=20)
    # datasets names the "valid" folder "validation": it becomes test, and validation is carved from train (20%).
    assert (raw["train"].num_rows, raw["validation"].num_rows, raw["test"].num_rows) == (16, 4, 6)
    assert raw["test"].features["label"].names == ["cat", "dog"]
    assert image_column_of(raw["test"]) == "image"
