"""Dataset loading and preprocessing shared by the recipes and the notebooks (no maths here).

- [`load_local_dataset`]: csv / json / jsonl (each optionally gzipped) / parquet files into a `DatasetDict`.
- [`train_validation_split`]: a validation split carved from train: seeded (optionally stratified), or each class's
  last rows in file order.
- [`load_classification_splits`]: train / validation / test with a `ClassLabel` label column, from files or the Hub.
- [`random_crop_and_flip`], [`image_column_of`]: the image recipe's augmentation and column lookup.

20 Newsgroups cleaning lives in `mbls_nlp.newsgroups`, the text CNN's word tokenizer in
`mbls_nlp.models.text_cnn.tokenization_text_cnn`.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

#: How [`train_validation_split`] picks the validation rows: a seeded random draw, or the last rows in file order.
VALIDATION_SPLIT_ORDERS = ("random", "last")

# Extension (lowercase, compression suffix included) -> `datasets` packaged builder. Longest suffixes are tried
# first so that ".jsonl.gz" is not read as ".gz".
_EXTENSION_TO_BUILDER = {
    ".csv": "csv",
    ".csv.gz": "csv",
    ".json": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".jsonl.gz": "json",
    ".parquet": "parquet",
}


def _builder_for(path: str | os.PathLike, argument: str) -> str:
    name = os.fspath(path).lower()
    for extension in sorted(_EXTENSION_TO_BUILDER, key=len, reverse=True):
        if name.endswith(extension):
            return _EXTENSION_TO_BUILDER[extension]
    raise ValueError(
        f"`{argument}` has an unsupported extension: {os.fspath(path)!r}. "
        f"Allowed extensions: {', '.join(_EXTENSION_TO_BUILDER)}."
    )


def _files_of(path: str | os.PathLike) -> list[str]:
    """The files a path or glob pattern names, in the sorted order `datasets` reads them."""
    path = os.fspath(path)
    return [path] if os.path.isfile(path) else sorted(glob.glob(path))


def _json_failure(text: str) -> str | None:
    if text.lstrip().startswith("["):  # one top-level list of records
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            return f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        if not records:
            return "it holds no rows"
        return None
    # JSON lines: the first line that does not parse or is not an object. (A field whose type changes from line to
    # line is read by `datasets` as a `Json` feature; the column checks name its rows.)
    rows = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f"line {number} is not valid JSON ({error.msg} at column {error.colno}): {line[:80]!r}"
        if not isinstance(record, dict):
            return f"line {number} is not a JSON object: {line[:80]!r}"
        rows += 1
    return None if rows else "it holds no rows"


def _file_failure(file: str, builder: str) -> str | None:
    """Why one data file cannot be read (the line where known), or `None` when no reason is found."""
    if os.path.getsize(file) == 0:
        return "the file is empty"
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as error:  # pyarrow raises ArrowInvalid / OSError for a truncated or foreign file
            return f"not a valid Parquet file ({error})"
        return None if table.num_rows else "it holds no rows"
    try:
        if file.lower().endswith(".gz"):
            with gzip.open(file, "rb") as handle:
                content = handle.read()
        else:
            with open(file, "rb") as handle:
                content = handle.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        return f"not a valid gzip file, truncated or corrupted ({type(error).__name__}: {error})"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        return f"line {line} is not UTF-8 text ({error.reason} at byte {error.start})"
    if builder == "json":
        return _json_failure(text)
    import pandas as pd  # a dependency of `datasets`, which reads CSV with it

    try:
        frame = pd.read_csv(io.StringIO(text))
    except Exception as error:  # pandas' ParserError / EmptyDataError name the line
        return f"not valid CSV ({error})"
    return None if len(frame) else "it holds no rows (a header only)"


def load_local_dataset(
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.DatasetDict:
    r"""
    Load local data files into a `DatasetDict` with the `datasets` packaged builders (no network).

    The format of each file is inferred from its extension: `.csv`, `.json`, `.jsonl` (each optionally followed by
    `.gz`) or `.parquet`. JSON files may hold JSON lines or one top-level list of records. Files of different formats
    may be mixed; each split is loaded on its own.

    Args:
        train_file (`str` or `os.PathLike`, *optional*):
            File of the `"train"` split.
        validation_file (`str` or `os.PathLike`, *optional*):
            File of the `"validation"` split.
        test_file (`str` or `os.PathLike`, *optional*):
            File of the `"test"` split.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Where `datasets` writes its Arrow cache; its default cache when `None`.

    Returns:
        `datasets.DatasetDict`: one entry per file given, keyed `"train"`, `"validation"`, `"test"`.

    Raises:
        ValueError: when no file is given, an extension is not one of the allowed ones, or a file cannot be read
            (empty, no rows, a truncated or corrupted `.gz` or Parquet file, a line that is not a JSON object, a
            CSV parse error); the message names the argument, the file and, where known, the line.
        FileNotFoundError: when a file does not exist.

    Examples:

    ```python
    >>> from mbls_nlp.data import load_local_dataset
    >>> ds = load_local_dataset(train_file="train.jsonl.gz", test_file="test.jsonl.gz")  # doctest: +SKIP
    >>> sorted(ds)  # doctest: +SKIP
    ['test', 'train']

    ```
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: path for split, path in files.items() if path is not None}
    if not files:
        raise ValueError("Give at least one of `train_file`, `validation_file`, `test_file`.")
    # Validate every extension and existence before loading anything, so a typo fails fast.
    builders = {split: _builder_for(path, f"{split}_file") for split, path in files.items()}
    for split, path in files.items():
        # A glob pattern (sharded files such as "train-*.parquet") must match at least one file.
        if not (os.path.isfile(path) or glob.glob(os.fspath(path))):
            raise FileNotFoundError(f"`{split}_file` does not exist (or matches no file): {os.fspath(path)!r}.")
    out = datasets.DatasetDict()
    for split, path in files.items():
        try:
            data = datasets.load_dataset(
                builders[split],
                data_files={split: os.path.abspath(os.fspath(path))},
                split=split,
                cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            )
        except Exception as error:
            # The readers' errors come through bare (an empty file's StopIteration, EOFError, zlib.error, pyarrow's
            # "position 22", a generic DatasetGenerationError), naming neither the file nor the line: read the
            # files again to say which (issue 14).
            reason = next(
                (f"{file!r}: {why}" for file in _files_of(path) if (why := _file_failure(file, builders[split]))),
                f"{os.fspath(path)!r}: {type(error).__name__}: {error}",
            )
            raise ValueError(f"`{split}_file` cannot be read: {reason}.") from error
        if data.num_rows == 0:
            raise ValueError(f"`{split}_file` holds no rows: {os.fspath(path)!r}.")
        out[split] = data
    return out


def train_validation_split(
    dataset: datasets.Dataset,
    validation_percentage: float,
    seed: int = 42,
    stratify_by_column: str | None = None,
    order: str = "random",
) -> datasets.DatasetDict:
    r"""
    Split a dataset into disjoint `"train"` and `"validation"` parts that together cover it: a seeded draw, or the
    last rows in file order.

    Stratification (the class proportions kept in both parts) is done by `Dataset.train_test_split` and costs
    nothing extra; it needs a `ClassLabel` column, so an integer column is cast to one for the split and cast back
    afterwards. Without `stratify_by_column` the split is a plain seeded shuffle.

    With `order="last"` nothing is drawn: validation is the last rows in the file's order, per class when
    stratified (the last `round(n_c * validation_percentage / 100)` rows of each class `c`, at least one and at most
    `n_c - 1`). For data stored in time order this is the latest examples, which resemble a later test set more than
    a random draw does: the 20 Newsgroups bydate files are ordered by newsgroup, then article number, and article
    numbers grow with posting time, while the test split holds the messages posted after the training ones. Both
    parts keep the file's order; `seed` is not used.

    Args:
        dataset (`datasets.Dataset`):
            The training data.
        validation_percentage (`float`):
            Percentage of rows that go to validation, in the open interval (0, 100).
        seed (`int`, *optional*, defaults to `42`):
            Seed of the shuffle; the same seed gives the same split.
        stratify_by_column (`str`, *optional*):
            Label column to stratify on (a `ClassLabel` or integer column).
        order (`str`, *optional*, defaults to `"random"`):
            `"random"` (a seeded draw) or `"last"` (the last rows in file order, see above).

    Returns:
        `datasets.DatasetDict` with `"train"` and `"validation"`.

    Examples:

    ```python
    >>> import datasets
    >>> from mbls_nlp.data import train_validation_split
    >>> ds = datasets.Dataset.from_dict({"text": [str(i) for i in range(10)], "label": [0, 1] * 5})
    >>> parts = train_validation_split(ds, 20, seed=0, stratify_by_column="label")
    >>> parts["train"].num_rows, parts["validation"].num_rows
    (8, 2)
    >>> sorted(parts["validation"]["label"])
    [0, 1]

    ```
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"`dataset` must be a datasets.Dataset, got {type(dataset).__name__}.")
    if isinstance(validation_percentage, bool) or not 0 < validation_percentage < 100:
        raise ValueError(
            f"`validation_percentage` must be a number in the open interval (0, 100), got {validation_percentage!r}."
        )
    if not isinstance(order, str) or order not in VALIDATION_SPLIT_ORDERS:
        raise ValueError(f"`order` must be one of {VALIDATION_SPLIT_ORDERS}, got {order!r}.")
    if order == "last":
        return _last_rows_split(dataset, validation_percentage, stratify_by_column)
    if stratify_by_column is None:
        split = dataset.train_test_split(test_size=validation_percentage / 100, seed=seed)
        return datasets.DatasetDict(train=split["train"], validation=split["test"])
    feature = _stratify_feature(dataset, stratify_by_column)
    work = dataset
    if not isinstance(feature, datasets.ClassLabel):
        values = dataset.unique(stratify_by_column)
        if min(values) < 0:
            raise ValueError(f"`stratify_by_column` {stratify_by_column!r} holds negative labels; cannot stratify.")
        work = dataset.cast_column(stratify_by_column, datasets.ClassLabel(num_classes=max(values) + 1))
    split = work.train_test_split(
        test_size=validation_percentage / 100, seed=seed, stratify_by_column=stratify_by_column
    )
    train, validation = split["train"], split["test"]
    if work is not dataset:
        train = train.cast_column(stratify_by_column, feature)
        validation = validation.cast_column(stratify_by_column, feature)
    return datasets.DatasetDict(train=train, validation=validation)


def _stratify_feature(dataset: datasets.Dataset, column: str) -> datasets.ClassLabel | datasets.Value:
    """The feature of a `stratify_by_column`, checked: a column of `dataset` holding a ClassLabel or integers."""
    if column not in dataset.column_names:
        raise ValueError(f"`stratify_by_column` must be one of the columns {dataset.column_names}, got {column!r}.")
    feature = dataset.features[column]
    if not isinstance(feature, datasets.ClassLabel) and not (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    ):
        raise ValueError(f"`stratify_by_column` must name a ClassLabel or integer column; {column!r} is {feature}.")
    return feature


def _last_rows_split(
    dataset: datasets.Dataset, validation_percentage: float, stratify_by_column: str | None
) -> datasets.DatasetDict:
    """`train_validation_split(order="last")`: validation is the last rows in file order (per class if stratified)."""
    share = validation_percentage / 100
    n = len(dataset)

    def held_out(count: int) -> int:  # at least one row to validate, at least one to train on
        return min(max(round(count * share), 1), count - 1)

    if stratify_by_column is not None:
        _stratify_feature(dataset, stratify_by_column)
    if n < 2:
        raise ValueError(f"`dataset` needs at least 2 rows to hold out a validation part; it has {n}.")
    if stratify_by_column is None:
        chosen = np.arange(n - held_out(n), n)
    else:
        labels = np.asarray(dataset.with_format("numpy")[stratify_by_column])
        if labels.min() < 0:
            raise ValueError(f"`stratify_by_column` {stratify_by_column!r} holds negative labels; cannot stratify.")
        chosen = []
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            if len(rows) < 2:
                raise ValueError(
                    f"Class {label} of `stratify_by_column` {stratify_by_column!r} has {len(rows)} row; a stratified "
                    "validation split needs at least 2 rows of every class (one to train on, one to validate)."
                )
            chosen.append(rows[len(rows) - held_out(len(rows)) :])
        chosen = np.sort(np.concatenate(chosen))
    held = np.zeros(n, dtype=bool)
    held[chosen] = True
    return datasets.DatasetDict(
        train=dataset.select(np.flatnonzero(~held)), validation=dataset.select(np.flatnonzero(held))
    )


def _where(split: str, sources: dict[str, str] | None) -> str:
    source = (sources or {}).get(split)
    return f"the {split} split" + (f" ({source})" if source else "")


def _row_list(rows: list[int]) -> str:
    """Rows for an error message: "row 3 (0-based)" or "rows 3, 9, ... (12 in all) (0-based)"."""
    shown = ", ".join(str(row) for row in rows[:5])
    if len(rows) == 1:
        return f"row {shown} (0-based)"
    return f"rows {shown}" + (f", ... ({len(rows)} in all)" if len(rows) > 5 else "") + " (0-based)"


def _rows(mask: pa.ChunkedArray) -> str:
    """The rows where a boolean column is true, for an error message."""
    return _row_list(pc.indices_nonzero(mask.combine_chunks()).to_pylist())


def _arrow_column(data: datasets.Dataset, column: str) -> pa.ChunkedArray:
    return data.with_format("arrow")[column]


def _check_no_nulls(data: datasets.Dataset, column: str, argument: str, where: str) -> None:
    values = _arrow_column(data, column)
    if values.null_count:
        raise ValueError(f"`{argument}` {column!r} is null in {where} at {_rows(pc.is_null(values))}.")


def _holds(data: datasets.Dataset, column: str) -> str:
    """What a column holds, for an error message; for values of mixed types (a `Json` feature), where each is."""
    feature = data.features[column]
    if not isinstance(feature, datasets.Json):
        return str(feature)
    rows: dict[str, list[int]] = {}
    for row, value in enumerate(data[column]):
        rows.setdefault(type(value).__name__, []).append(row)
    return "values of mixed types: " + "; ".join(f"{kind} at {_row_list(where)}" for kind, where in rows.items())


def _label_kind(feature) -> str | None:
    if isinstance(feature, datasets.ClassLabel):
        return "class ids"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "strings"
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return "class ids"
    return None


def as_class_label(
    dataset: datasets.DatasetDict, label_column: str, sources: dict[str, str] | None = None
) -> datasets.DatasetDict:
    r"""
    Cast `label_column` of every split to one `ClassLabel` whose classes are those of the train split, after checking
    every split's labels against them.

    The classes are the `ClassLabel` names when the data gives them (Hub datasets, Parquet files written by
    `datasets`); else, for string labels, the train split's strings in sorted order; else, for integer labels, the
    train split's ids, which must be `0..K-1` with every id present (a stray `25` in 20-class data would otherwise
    add six empty classes). Integer labels take their names from a `<label_column>_text` column when every split has
    one and it maps them one-to-one (20 Newsgroups files and the SetFit Hub copy have `label_text`), else the names
    `"0"`, `"1"`, ... Without a `"train"` split the first split gives the classes.

    Args:
        dataset (`datasets.DatasetDict`):
            The splits.
        label_column (`str`):
            The label column: integers, strings, or a `ClassLabel`.
        sources (`dict[str, str]`, *optional*):
            Where each split comes from (e.g. `"file 'test.jsonl'"`), named in the error messages.

    Returns:
        `datasets.DatasetDict`: the splits, each with the same `ClassLabel` label column.

    Raises:
        ValueError: naming the split, its source, the rows and the values, when a split lacks the column, a label
            is null, the labels are neither integers nor strings, train's integer ids are not `0..K-1`, or a label
            of any split is not one of the classes.
    """
    for split, data in dataset.items():
        if label_column not in data.column_names:
            raise ValueError(
                f"`label_column` {label_column!r} is not a column of {_where(split, sources)}; columns: "
                f"{data.column_names}."
            )
        _check_no_nulls(data, label_column, "label_column", _where(split, sources))
    reference = "train" if "train" in dataset else next(iter(dataset))
    feature = dataset[reference].features[label_column]
    kind = _label_kind(feature)
    where = _where(reference, sources)
    if kind is None:
        raise ValueError(
            f"`label_column` {label_column!r} must hold integers or strings; {where} holds "
            f"{_holds(dataset[reference], label_column)}."
        )
    if isinstance(feature, datasets.ClassLabel):
        class_label = feature
    elif kind == "strings":
        class_label = datasets.ClassLabel(names=sorted(dataset[reference].unique(label_column)))
    else:
        column = _arrow_column(dataset[reference], label_column)
        if pc.min(column).as_py() < 0:
            raise ValueError(
                f"`label_column` {label_column!r} holds negative labels in {where} at {_rows(pc.less(column, 0))}."
            )
        values = set(dataset[reference].unique(label_column))
        missing = sorted(set(range(max(values) + 1)) - values)
        if missing:
            above = sorted(value for value in values if value > missing[0])
            raise ValueError(
                f"`label_column` {label_column!r}: the integer labels of {where} must be the class ids 0..K-1, each "
                f"with at least one row, since the classes are taken from train; ids {missing[:10]} have no row "
                f"while {above[:10]} occur, at {_rows(pc.greater(column, missing[0]))}. Fix those labels or "
                "number the classes from 0."
            )
        names = [str(i) for i in range(max(values) + 1)]
        text_column = f"{label_column}_text"
        if all(text_column in split.column_names for split in dataset.values()):
            pairs = set()
            for split in dataset.values():
                pairs.update(zip(split[label_column], split[text_column]))
            if len(pairs) == len(values):  # a consistent one-to-one mapping
                for label, name in pairs:
                    names[label] = name
        class_label = datasets.ClassLabel(names=names)
    out = datasets.DatasetDict()
    for split, data in dataset.items():
        split_feature, where = data.features[label_column], _where(split, sources)
        if _label_kind(split_feature) != kind:
            raise ValueError(
                f"`label_column` {label_column!r} holds {split_feature} in {where} but {feature} in "
                f"{_where(reference, sources)}; every split needs the same kind of labels."
            )
        if isinstance(split_feature, datasets.ClassLabel) and split_feature.names != class_label.names:
            raise ValueError(
                f"`label_column` {label_column!r}: the class names of {where} differ from those of "
                f"{_where(reference, sources)}: {split_feature.names[:5]}... vs {class_label.names[:5]}..."
            )
        column = _arrow_column(data, label_column)
        if kind == "strings":
            outside = pc.invert(pc.is_in(column, value_set=pa.array(class_label.names, type=column.type)))
        else:
            outside = pc.or_(pc.less(column, 0), pc.greater_equal(column, class_label.num_classes))
        if pc.any(outside).as_py():
            bad = sorted(set(pc.filter(column, outside).to_pylist()))
            raise ValueError(
                f"`label_column` {label_column!r} holds labels that are not classes of the train split in {where}: "
                f"{bad[:10]} at {_rows(outside)}; the classes are "
                + (f"{class_label.names[:10]}" if kind == "strings" else f"the ids 0..{class_label.num_classes - 1}")
                + (" (-1 marks an unlabelled row)." if -1 in bad else ".")
            )
        out[split] = data if split_feature == class_label else data.cast_column(label_column, class_label)
    return out


def _check_text_column(dataset: datasets.DatasetDict, text_column: str, sources: dict[str, str] | None) -> None:
    for split, data in dataset.items():
        where = _where(split, sources)
        if text_column not in data.column_names:
            raise ValueError(
                f"`text_column` {text_column!r} is not a column of {where}; columns: {data.column_names}."
            )
        feature = data.features[text_column]
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise ValueError(
                f"`text_column` {text_column!r} must hold strings; {where} holds {_holds(data, text_column)}."
            )
        _check_no_nulls(data, text_column, "text_column", where)


def _image_failure(data: bytes | None, path: str | None) -> str | None:
    """Why a stored `Image` value (its `bytes`, else its `path`) cannot be decoded, or `None` when it can."""
    import PIL.Image

    if data is None and path is None:
        return "no image (null)"
    try:
        with PIL.Image.open(io.BytesIO(data) if data is not None else path) as image:
            image.load()  # the header alone misses a truncated file
    except Exception as error:  # UnidentifiedImageError, OSError "image file is truncated", DecompressionBombError
        return f"{type(error).__name__}: {error}"
    return None


def _first_failure(chunk: list[tuple[bytes | None, str | None]]) -> tuple[int, str] | None:
    for index, (data, path) in enumerate(chunk):
        if (failure := _image_failure(data, path)) is not None:
            return index, failure
    return None


def _first_undecodable_image(data: datasets.Dataset, column: str) -> tuple[int, bytes | None, str | None, str] | None:
    """`(row, bytes, path, why)` of the first image of `data` that cannot be decoded, or `None`."""
    chunk_size = 256  # a task per image would cost as much as decoding a 32x32 JPEG
    # PIL's decoders release the GIL, so threads decode in parallel.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        offset = 0
        for batch in data.with_format("arrow").iter(batch_size=16 * chunk_size):
            values = batch.column(column)
            items = list(
                zip(pc.struct_field(values, "bytes").to_pylist(), pc.struct_field(values, "path").to_pylist())
            )
            chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
            for start, found in zip(range(0, len(items), chunk_size), pool.map(_first_failure, chunks)):
                if found is not None:
                    row = start + found[0]
                    return offset + row, *items[row], found[1]
            offset += len(items)
    return None


def _check_images(
    splits: datasets.DatasetDict,
    column: str,
    raw: dict[str, datasets.Dataset],
    origin: dict[str, str],
    sources: dict[str, str] | None,
) -> None:
    """Decode every image of `splits` once; an undecodable one is named by its row in the file it came from
    (`raw[origin[split]]`, the split as loaded), found by its bytes, or by its own path."""
    for split, data in splits.items():
        if not isinstance(data.features[column], datasets.Image):
            continue  # arrays of pixels need no decoding
        found = _first_undecodable_image(data, column)
        if found is None:
            continue
        row, data_bytes, path, failure = found
        if data_bytes is None and path is not None:
            location = f"the image file {path!r}"
        else:
            stored = pc.struct_field(_arrow_column(raw[origin[split]], column), "bytes")
            same = pc.is_null(stored) if data_bytes is None else pc.equal(stored, pa.scalar(data_bytes, stored.type))
            matches = pc.indices_nonzero(same.combine_chunks()).to_pylist()
            location = (
                f"row {matches[0]} (0-based) of {_where(origin[split], sources)}"
                if matches
                else f"row {row} (0-based) of the {split} split as subsampled"
            )
        raise ValueError(
            f"`image_column` {column!r}: an image of the {split} split cannot be decoded ({failure}); it is "
            f"{location}. Remove or replace it."
        )


def _subsample(dataset: datasets.Dataset, max_samples: int | None, seed: int, argument: str) -> datasets.Dataset:
    if max_samples is None or max_samples >= dataset.num_rows:
        return dataset
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"`{argument}` must be a positive integer or None, got {max_samples!r}.")
    # A seeded shuffle first: files sorted by class (CIFAR-10 here, 20 Newsgroups) would otherwise give one class.
    return dataset.shuffle(seed=seed).select(range(max_samples))


def load_classification_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    label_column: str = "label",
    validation_split_percentage: float = 10.0,
    seed: int = 42,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_test_samples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    test_split_name: str = "test",
    text_column: str | None = None,
    image_column: str | None = None,
    check_images: bool = False,
    validation_split_order: str = "random",
) -> datasets.DatasetDict:
    r"""
    Load a classification dataset as `train`, `validation` and `test` splits with a `ClassLabel` label column.

    Local files win over `dataset_name` when any is given (see [`load_local_dataset`]). A missing validation split is
    carved from train, stratified on the labels: a seeded draw, or each class's last rows with
    `validation_split_order="last"` ([`train_validation_split`]); the test split is
    never used for it. The `max_*_samples` limits keep a seeded random subset of each split.

    Nothing is silent, and everything fails before training: every split's labels are checked against the classes
    of train ([`as_class_label`]); with `text_column`, every split must hold non-null strings there; with
    `check_images`, every image that is kept is decoded once, in up to 8 threads (CIFAR-10's 10,000 test JPEGs,
    32x32: 2.5 s on a busy 2-core CPU, about 0.25 ms an image). Errors are `ValueError`s that name the split, its
    file and the row.

    Args:
        dataset_name (`str`, *optional*): a Hub dataset name or local dataset folder, for `datasets.load_dataset`.
        dataset_config_name (`str`, *optional*): its configuration name.
        train_file, validation_file, test_file (`str` or `os.PathLike`, *optional*): local files.
        label_column (`str`, *optional*, defaults to `"label"`): integer or string labels; names of integer labels
            come from a `<label_column>_text` column when present.
        validation_split_percentage (`float`, *optional*, defaults to `10.0`): share of train held out as validation
            when there is no validation split.
        seed (`int`, *optional*, defaults to `42`): seed of the split and the subsets.
        max_train_samples, max_eval_samples, max_test_samples (`int`, *optional*): size limits of train,
            validation and test.
        cache_dir (`str` or `os.PathLike`, *optional*): cache folder of `datasets`.
        test_split_name (`str`, *optional*, defaults to `"test"`): the split to test on. Datasets without a
            labelled test split (Tiny-ImageNet on the Hub has `train` and `valid`) test on their validation split,
            as the MbLS paper does: pass its name, and validation is then carved from train.
        text_column (`str`, *optional*): a text column to check: present in every split, strings, no nulls.
        image_column (`str`, *optional*): the image column to check (see [`image_column_of`]); default: the first
            `Image` column.
        check_images (`bool`, *optional*, defaults to `False`): decode every image of the returned splits once, so
            that a corrupted file fails here rather than when training first draws its row.
        validation_split_order (`str`, *optional*, defaults to `"random"`): how a missing validation split is
            carved: `"random"` (seeded, stratified) or `"last"` (the last rows of each class in the train file's
            order, e.g. the latest messages of time-ordered data; see [`train_validation_split`]). Ignored when the
            data has a validation split.

    Returns:
        `datasets.DatasetDict` with `"train"`, `"validation"` and `"test"`; `features[label_column].names` are the
        class names.
    """
    if not isinstance(validation_split_order, str) or validation_split_order not in VALIDATION_SPLIT_ORDERS:
        raise ValueError(
            f"`validation_split_order` must be one of {VALIDATION_SPLIT_ORDERS}, got {validation_split_order!r}."
        )
    if train_file is not None or validation_file is not None or test_file is not None:
        raw = load_local_dataset(train_file, validation_file, test_file, cache_dir=cache_dir)
        files = {"train": train_file, "validation": validation_file, "test": test_file}
        sources = {split: f"file {os.fspath(files[split])!r}" for split in raw}
    elif dataset_name is not None:
        raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
        sources = {split: f"split {split!r} of {dataset_name!r}" for split in raw}
    else:
        raise ValueError("Give `dataset_name` or local files (`train_file`, `validation_file`, `test_file`).")
    if test_split_name != "test":
        if test_split_name not in raw:
            raise ValueError(f"`test_split_name` {test_split_name!r} is not a split; splits: {list(raw)}.")
        raw = datasets.DatasetDict({("test" if k == test_split_name else k): v for k, v in raw.items() if k != "test"})
        sources = {("test" if k == test_split_name else k): v for k, v in sources.items() if k != "test"}
    missing = [split for split in ("train", "test") if split not in raw]
    if missing:
        raise ValueError(f"The data has no {missing} split(s); it has {list(raw)}. Both train and test are needed.")
    if "validation" not in raw and "valid" in raw:
        raw["validation"] = raw.pop("valid")
        sources["validation"] = sources.pop("valid")
    raw = datasets.DatasetDict({split: raw[split] for split in ("train", "validation", "test") if split in raw})
    if text_column is not None:
        _check_text_column(raw, text_column, sources)
    if check_images or image_column is not None:
        image_column = image_column_of(raw["train"], image_column)
    raw = as_class_label(raw, label_column, sources)
    loaded, origin = dict(raw), {split: split for split in ("train", "validation", "test")}
    if "validation" not in raw:
        parts = train_validation_split(
            raw["train"],
            validation_split_percentage,
            seed,
            stratify_by_column=label_column,
            order=validation_split_order,
        )
        raw["train"], raw["validation"] = parts["train"], parts["validation"]
        origin["validation"] = "train"
    out = datasets.DatasetDict(
        train=_subsample(raw["train"], max_train_samples, seed, "max_train_samples"),
        validation=_subsample(raw["validation"], max_eval_samples, seed, "max_eval_samples"),
        test=_subsample(raw["test"], max_test_samples, seed, "max_test_samples"),
    )
    if check_images:
        _check_images(out, image_column, loaded, origin, sources)
    return out


def random_crop_and_flip(images: list, padding: int = 4, generator: torch.Generator | None = None) -> list:
    r"""
    The standard CIFAR augmentation, without torchvision: zero-pad each image by `padding` pixels, take a random crop
    of the original size, and flip it horizontally with probability 1/2 (torchvision's
    `RandomCrop(size, padding=padding)` + `RandomHorizontalFlip()`).

    Args:
        images (`list` of `PIL.Image.Image` or `numpy.ndarray` of shape `(H, W, C)`):
            Images of one batch (sizes may differ).
        padding (`int`, *optional*, defaults to `4`):
            Zero padding on each side before cropping; `0` keeps only the flip.
        generator (`torch.Generator`, *optional*):
            Source of randomness (default: torch's global one, which `DataLoader` workers seed).

    Returns:
        `list` of `numpy.ndarray` `(H, W, C)` `uint8` images, ready for an image processor.
    """
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"`padding` must be a non-negative integer, got {padding!r}.")
    out = []
    for image in images:
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        if array.ndim == 2:
            array = array[:, :, None]
        height, width = array.shape[:2]
        padded = np.pad(array, ((padding, padding), (padding, padding), (0, 0)))
        top, left, flip = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist() + [
            bool(torch.randint(0, 2, (1,), generator=generator))
        ]
        crop = padded[top : top + height, left : left + width]
        out.append(np.ascontiguousarray(crop[:, ::-1] if flip else crop))
    return out


# Features an image recipe can read: encoded images, or pixel arrays (H, W) / (H, W, C).
_IMAGE_FEATURES = (datasets.Image, datasets.Array2D, datasets.Array3D, datasets.List, datasets.LargeList)


def image_column_of(dataset: datasets.Dataset, image_column: str | None = None) -> str:
    """The name of the image column: `image_column` if given (checked to exist and to hold images or pixel arrays),
    else the first `Image` feature."""
    if image_column is not None:
        if image_column not in dataset.column_names:
            raise ValueError(f"`image_column` {image_column!r} is not a column; columns: {dataset.column_names}.")
        feature = dataset.features[image_column]
        if not isinstance(feature, _IMAGE_FEATURES):
            images = [name for name, f in dataset.features.items() if isinstance(f, _IMAGE_FEATURES)]
            raise ValueError(
                f"`image_column` {image_column!r} holds {feature}, not images (an `Image` feature or pixel arrays); "
                f"columns that do: {images}."
            )
        return image_column
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(f"No Image column found among {dataset.column_names}; pass `image_column`.")


# Moved in issue 12; the README and the quickstart notebook imported them from here.
_MOVED = {
    "clean_newsgroups": ("mbls_nlp.newsgroups", "clean_newsgroups"),
    "train_word_tokenizer": ("mbls_nlp.models", "train_word_tokenizer"),
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib
        import warnings

        module, attribute = _MOVED[name]
        warnings.warn(
            f"`mbls_nlp.data.{name}` moved to `{module}.{attribute}`; the old path will be removed.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "as_class_label",
    "image_column_of",
    "load_classification_splits",
    "load_local_dataset",
    "random_crop_and_flip",
    "train_validation_split",
    "VALIDATION_SPLIT_ORDERS",
]
