"""Tests of mbls_nlp.data: local loading, validation split, classification splits, image helpers."""

import collections
import gzip
import io
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


def test_last_split_holds_out_the_last_rows_of_each_class():
    # Hand-worked: class 0 at rows 0, 2, 3, 6; class 1 at 1, 4, 7; class 2 at 5, 8, 9.
    ds = datasets.Dataset.from_dict({"idx": list(range(10)), "label": [0, 1, 0, 0, 1, 2, 0, 1, 2, 2]})
    # 20%: round(0.8), round(0.6), round(0.6) = one row of each class, its last.
    parts = train_validation_split(ds, 20, seed=0, stratify_by_column="label", order="last")
    assert parts["validation"]["idx"] == [6, 7, 9]
    assert parts["train"]["idx"] == [0, 1, 2, 3, 4, 5, 8]  # the file's order is kept
    # 50%: round(2.0), round(1.5), round(1.5) = 2 rows of each class.
    parts = train_validation_split(ds, 50, seed=0, stratify_by_column="label", order="last")
    assert parts["validation"]["idx"] == [3, 4, 6, 7, 8, 9]
    # 1%: at least one row of each class; 99%: at least one left to train on.
    assert train_validation_split(ds, 1, stratify_by_column="label", order="last")["validation"]["idx"] == [6, 7, 9]
    assert train_validation_split(ds, 99, stratify_by_column="label", order="last")["train"]["idx"] == [0, 1, 5]
    assert parts["train"].features == ds.features


def test_last_split_without_classes_is_the_tail_and_ignores_the_seed():
    a = train_validation_split(_toy(), 20, seed=3, order="last")
    b = train_validation_split(_toy(), 20, seed=4, order="last")
    assert a["validation"]["idx"] == b["validation"]["idx"] == list(range(80, 100))
    assert a["train"]["idx"] == list(range(80))
    # Stratified, _toy's sorted classes give the last 12 / 6 / 2 rows of each block.
    parts = train_validation_split(_toy(), 20, seed=3, stratify_by_column="label", order="last")
    assert parts["validation"]["idx"] == list(range(48, 60)) + list(range(84, 90)) + list(range(98, 100))


def test_last_split_rejects_bad_orders_and_singleton_classes():
    for order in ("first", "Last", None, 1):
        with pytest.raises(ValueError, match=r"`order` must be one of \('random', 'last'\)"):
            train_validation_split(_toy(), 10, order=order)
    lonely = datasets.Dataset.from_dict({"label": [0, 0, 1]})
    with pytest.raises(ValueError, match="Class 1 .* has 1 row"):
        train_validation_split(lonely, 10, stratify_by_column="label", order="last")
    for one in ({"label": [0]}, {"label": []}):
        with pytest.raises(ValueError, match="at least 2 rows"):
            train_validation_split(datasets.Dataset.from_dict(one), 10, order="last")
    with pytest.raises(ValueError, match="at least 2 rows"):
        train_validation_split(
            datasets.Dataset.from_dict({"label": [0]}), 10, stratify_by_column="label", order="last"
        )
    with pytest.raises(ValueError, match="negative labels"):
        train_validation_split(
            datasets.Dataset.from_dict({"label": [-1, 0] * 3}), 10, stratify_by_column="label", order="last"
        )
    with pytest.raises(ValueError, match="stratify_by_column"):
        train_validation_split(
            datasets.Dataset.from_dict({"label": ["a", "b"] * 3}), 10, stratify_by_column="label", order="last"
        )
    with pytest.raises(ValueError, match="validation_percentage"):
        train_validation_split(_toy(), 0, order="last")


@needs_newsgroups
def test_last_validation_of_the_bydate_files_is_each_newsgroups_latest_articles():
    # Independent truth: ids.tsv.gz's article numbers (which grow with posting time), not the file's order.
    paths = [line.rstrip("\n").split("\t") for line in gzip.open(NEWSGROUPS_DIR / "ids.tsv.gz", "rt")][1:]
    by_group = collections.defaultdict(list)
    for split, line, path in paths:
        if split == "train":
            _, group, article = path.split("/")
            by_group[group].append((int(article), int(line)))
    latest = {line for rows in by_group.values() for _, line in sorted(rows)[-round(len(rows) * 0.1) :]}
    with gzip.open(NEWSGROUPS_DIR / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        texts = [json.loads(row)["text"] for row in f]
    splits = load_classification_splits(
        train_file=NEWSGROUPS_DIR / "train.jsonl.gz",
        test_file=NEWSGROUPS_DIR / "test.jsonl.gz",
        validation_split_order="last",
    )
    assert collections.Counter(splits["validation"]["text"]) == collections.Counter(texts[i] for i in latest)
    assert len(splits["train"]) + len(splits["validation"]) == len(texts) == 11314
    with pytest.raises(ValueError, match="validation_split_order"):
        load_classification_splits(
            train_file=NEWSGROUPS_DIR / "train.jsonl.gz",
            test_file=NEWSGROUPS_DIR / "test.jsonl.gz",
            validation_split_order="latest",
        )


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


# --- data errors: nothing silent, a ValueError naming the file before training (issue 14) ------------------------


def _rows(labels):
    return [{"text": f"message {i}", "label": label} for i, label in enumerate(labels)]


TRAIN_LABELS = [0, 1, 2] * 10  # three classes, ten rows each


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_label_outside_the_train_classes_names_split_file_row_and_value(tmp_path, split):
    _write(tmp_path / "train.jsonl", _rows(TRAIN_LABELS))
    files = {"validation": _rows([0, 1, 2, 0]), "test": _rows([2, 1, 0, 1])}
    files[split][3]["label"] = 25  # one stray label: it used to become a 26th class
    for name, rows in files.items():
        _write(tmp_path / f"{name}.jsonl", rows)
    with pytest.raises(
        ValueError, match=rf"not classes of the train split in the {split} split \(file .*{split}\.jsonl"
    ):
        load_classification_splits(
            train_file=tmp_path / "train.jsonl",
            validation_file=tmp_path / "validation.jsonl",
            test_file=tmp_path / "test.jsonl",
        )
    with pytest.raises(ValueError, match=r"\[25\] at row 3 \(0-based\); the classes are the ids 0\.\.2"):
        load_classification_splits(
            train_file=tmp_path / "train.jsonl",
            validation_file=tmp_path / "validation.jsonl",
            test_file=tmp_path / "test.jsonl",
        )


def test_stray_train_labels_are_not_new_classes(tmp_path):
    labels = list(TRAIN_LABELS)
    labels[4] = labels[17] = 25  # two training rows: ids 3..24 would be empty classes
    _write(tmp_path / "train.jsonl", _rows(labels))
    _write(tmp_path / "test.jsonl", _rows([0, 1, 2]))
    with pytest.raises(
        ValueError,
        match=r"train split \(file .*train\.jsonl'\).*ids \[3, 4, 5, 6, 7, 8, 9, 10, 11, 12\] "
        r"have no row while \[25\] occur, at rows 4, 17 \(0-based\)",
    ):
        load_classification_splits(train_file=tmp_path / "train.jsonl", test_file=tmp_path / "test.jsonl")


def test_string_labels_of_other_splits_must_be_train_classes(tmp_path):
    names = ["cat", "dog", "eel"]
    _write(tmp_path / "train.csv", _rows([names[i] for i in TRAIN_LABELS]))
    _write(tmp_path / "test.csv", _rows(["dog", "cat", "cow", "eel", "cow"]))
    with pytest.raises(
        ValueError,
        match=r"test split \(file .*test\.csv'\): \['cow'\] at rows 2, 4 \(0-based\); "
        r"the classes are \['cat', 'dog', 'eel'\]",
    ):
        load_classification_splits(train_file=tmp_path / "train.csv", test_file=tmp_path / "test.csv")


def test_given_label_names_bound_every_split(tmp_path):
    # Parquet written by `datasets` carries the ClassLabel names; a value beyond them, or -1 (unlabelled), is refused.
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})

    def write(name, labels):  # through Arrow: `datasets` itself refuses to encode a label beyond the names
        pq.write_table(pa.Table.from_pylist(_rows(labels), schema=features.arrow_schema), tmp_path / name)

    write("train.parquet", [0, 1] * 10)
    for bad in (2, -1):
        write("test.parquet", [0, bad, 1])
        with pytest.raises(
            ValueError, match=rf"test split .*\[{bad}\] at row 1 \(0-based\); the classes are the ids 0\.\.1"
        ):
            load_classification_splits(train_file=tmp_path / "train.parquet", test_file=tmp_path / "test.parquet")
    write("test.parquet", [1, 0])
    splits = load_classification_splits(train_file=tmp_path / "train.parquet", test_file=tmp_path / "test.parquet")
    assert splits["test"].features["label"].names == ["a", "b"] and list(splits["test"]["label"]) == [1, 0]


@pytest.mark.parametrize("filename", ["train.jsonl", "train.csv"])
def test_a_null_label_names_its_row(tmp_path, filename):
    rows = _rows(TRAIN_LABELS)
    rows[5]["label"] = None  # a CSV cell left empty; JSON null
    _write(tmp_path / filename, rows)
    _write(tmp_path / "test.jsonl", _rows([0, 1]))
    with pytest.raises(
        ValueError,
        match=rf"`label_column` 'label' is null in the train split \(file .*{filename}'\) "
        r"at row 5 \(0-based\)",
    ):
        load_classification_splits(train_file=tmp_path / filename, test_file=tmp_path / "test.jsonl")


def test_the_text_column_must_hold_strings_without_nulls(tmp_path):
    _write(tmp_path / "train.jsonl", _rows(TRAIN_LABELS))
    rows = _rows([0, 1, 2])
    rows[2]["text"] = None
    _write(tmp_path / "test.jsonl", rows)
    files = {"train_file": tmp_path / "train.jsonl", "test_file": tmp_path / "test.jsonl"}
    with pytest.raises(
        ValueError, match=r"`text_column` 'text' is null in the test split \(file .*test\.jsonl'\) at row 2"
    ):
        load_classification_splits(**files, text_column="text")
    with pytest.raises(
        ValueError, match=r"`text_column` 'label' must hold strings; the train split .* holds Value\('int64'\)"
    ):
        load_classification_splits(**files, text_column="label")
    with pytest.raises(ValueError, match=r"`text_column` 'body' is not a column of the train split"):
        load_classification_splits(**files, text_column="body")
    # A field whose type changes from line to line (`datasets` reads it as a `Json` feature): where each type is.
    rows = _rows(TRAIN_LABELS)
    rows[6]["label"], rows[8]["text"] = "two", 8
    _write(tmp_path / "mixed.jsonl", rows)
    mixed = {"train_file": tmp_path / "mixed.jsonl", "test_file": tmp_path / "test.jsonl"}
    with pytest.raises(
        ValueError,
        match=r"`label_column` 'label' must hold integers or strings; the train split "
        r"\(file .*mixed\.jsonl'\) holds values of mixed types: int at rows 0, 1, 2, 3, 4, \.\.\. "
        r"\(29 in all\) \(0-based\); str at row 6 \(0-based\)",
    ):
        load_classification_splits(**mixed)
    with pytest.raises(ValueError, match=r"`text_column` 'text' must hold strings; .* int at row 8 \(0-based\)"):
        load_classification_splits(**mixed, text_column="text")


@pytest.mark.parametrize("filename", ["e.csv", "e.jsonl", "e.json", "e.jsonl.gz", "e.parquet"])
def test_an_empty_file_is_named(tmp_path, filename):
    (tmp_path / filename).write_bytes(b"")
    with pytest.raises(ValueError, match=rf"`test_file` cannot be read: '.*{filename}': the file is empty"):
        load_local_dataset(test_file=tmp_path / filename, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("filename", "payload"), [("h.csv", b"text,label\n"), ("b.jsonl", b"\n\n"), ("l.json", b"[]")]
)
def test_a_file_without_rows_is_named(tmp_path, filename, payload):
    (tmp_path / filename).write_bytes(payload)
    with pytest.raises(ValueError, match=rf"`train_file` .*'.*{filename}'.* no rows"):
        load_local_dataset(train_file=tmp_path / filename, cache_dir=tmp_path / "cache")


def _gzipped_rows(n=400):
    return gzip.compress("".join(json.dumps(r) + "\n" for r in _rows([i % 3 for i in range(n)])).encode())


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # truncated: EOFError
        lambda data: data[:100] + bytes([data[100] ^ 0xFF]) + data[101:],  # a flipped byte: zlib.error
        lambda data: data[:-8] + bytes([data[-8] ^ 1]) + data[-7:],  # a flipped CRC bit: BadGzipFile
    ],
    ids=["truncated", "flipped-data", "flipped-crc"],
)
def test_a_damaged_gzip_file_is_named(tmp_path, damage):
    (tmp_path / "train.jsonl.gz").write_bytes(damage(_gzipped_rows()))
    with pytest.raises(ValueError, match=r"`train_file` cannot be read: '.*train\.jsonl\.gz': not a valid gzip file"):
        load_local_dataset(train_file=tmp_path / "train.jsonl.gz", cache_dir=tmp_path / "cache")


def test_a_bad_json_line_is_named(tmp_path):
    lines = [json.dumps(r) for r in _rows(TRAIN_LABELS)]
    lines[6] = '{"text": "cut short", "label": '  # 31 characters: the value is missing at column 32 of line 7
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ValueError, match=r"'.*train\.jsonl': line 7 is not valid JSON \(Expecting value at column 32\)"
    ):
        load_local_dataset(train_file=tmp_path / "train.jsonl", cache_dir=tmp_path / "cache")
    (tmp_path / "train.json").write_text('[{"text": "a", "label": 0},\n {"text": "b" "label": 1}]')
    # Line 2 is ' {"text": "b" "label": 1}]': the comma is missing before column 15 (1-based), the second quote.
    with pytest.raises(ValueError, match=r"'.*train\.json': invalid JSON at line 2, column 15: Expecting ','"):
        load_local_dataset(train_file=tmp_path / "train.json", cache_dir=tmp_path / "cache")


def test_a_corrupted_parquet_file_is_named(tmp_path):
    pd.DataFrame(_rows(TRAIN_LABELS)).to_parquet(tmp_path / "train.parquet")
    data = (tmp_path / "train.parquet").read_bytes()
    (tmp_path / "train.parquet").write_bytes(data[: len(data) - 20])  # the footer cut off
    with pytest.raises(ValueError, match=r"'.*train\.parquet': not a valid Parquet file"):
        load_local_dataset(train_file=tmp_path / "train.parquet", cache_dir=tmp_path / "cache")


def test_image_column_must_hold_images():
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"img": [], "label": []}, features=features)
    with pytest.raises(ValueError, match=r"`image_column` 'label' holds Value\('int64'\), not images .* \['img'\]"):
        image_column_of(ds, "label")
    pixels = datasets.Dataset.from_dict({"px": [np.zeros((2, 2, 3), dtype=np.uint8).tolist()]})
    assert image_column_of(pixels, "px") == "px"  # pixel arrays are images too


def _png(rng):
    import PIL.Image

    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_parquet(path, n, bad_row=None, bad=b""):
    rng = np.random.default_rng(0)
    images = [{"bytes": _png(rng), "path": None} for _ in range(n)]
    if bad_row is not None:
        images[bad_row] = {"bytes": bad, "path": None}
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    datasets.Dataset.from_dict({"img": images, "label": [i % 2 for i in range(n)]}, features=features).to_parquet(path)


@pytest.mark.parametrize(
    "corrupt",
    [lambda png: b"not an image at all", lambda png: png[: len(png) // 2]],  # UnidentifiedImageError; truncated
    ids=["garbage", "truncated"],
)
def test_a_corrupted_image_is_named_by_file_and_row_before_training(tmp_path, corrupt):
    pytest.importorskip("PIL.Image")
    _image_parquet(tmp_path / "train.parquet", 20)
    _image_parquet(tmp_path / "test.parquet", 6, bad_row=3, bad=corrupt(_png(np.random.default_rng(1))))
    files = {"train_file": tmp_path / "train.parquet", "test_file": tmp_path / "test.parquet"}
    splits = load_classification_splits(**files)  # without the check, the bad image waits for training
    assert splits["test"].num_rows == 6
    with pytest.raises(
        ValueError,
        match=r"`image_column` 'img': an image of the test split cannot be decoded "
        r"\((UnidentifiedImageError|OSError).*row 3 \(0-based\) of the test split \(file .*test\.parquet'\)",
    ):
        load_classification_splits(**files, check_images=True)
    # In train, carved into train or validation: named by its row in the train file.
    _image_parquet(tmp_path / "train.parquet", 20, bad_row=13, bad=corrupt(_png(np.random.default_rng(1))))
    _image_parquet(tmp_path / "test.parquet", 6)
    with pytest.raises(ValueError, match=r"row 13 \(0-based\) of the train split \(file .*train\.parquet'\)"):
        load_classification_splits(**files, check_images=True, validation_split_percentage=50)


def test_a_corrupted_image_file_of_an_image_folder_is_named(tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                PIL.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / split / name / f"{i}.png"
                )
    good = load_classification_splits(str(tmp_path), check_images=True, validation_split_percentage=50)
    assert good["test"].num_rows == 8
    bad = tmp_path / "test" / "dog" / "2.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"an image of the test split cannot be decoded .* the image file '{bad}'"):
        load_classification_splits(str(tmp_path), check_images=True, validation_split_percentage=50)
