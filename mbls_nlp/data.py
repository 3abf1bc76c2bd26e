"""Dataset loading and preprocessing shared by the recipes and the notebooks (no maths here).

- [`load_local_dataset`]: csv / json / jsonl (each optionally gzipped) / parquet files into a `DatasetDict`.
- [`train_validation_split`]: a seeded (optionally stratified) validation split carved from train.
- [`load_classification_splits`]: train / validation / test with a `ClassLabel` label column, from files or the Hub.
- [`random_crop_and_flip`], [`image_column_of`]: the image recipe's augmentation and column lookup.

20 Newsgroups cleaning lives in `mbls_nlp.newsgroups`, the text CNN's word tokenizer in
`mbls_nlp.models.text_cnn.tokenization_text_cnn`.
"""

from __future__ import annotations

import glob
import os

import datasets
import numpy as np
import torch

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
        ValueError: when no file is given, or an extension is not one of the allowed ones.
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
        out[split] = datasets.load_dataset(
            builders[split],
            data_files={split: os.path.abspath(os.fspath(path))},
            split=split,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        )
    return out


def train_validation_split(
    dataset: datasets.Dataset,
    validation_percentage: float,
    seed: int = 42,
    stratify_by_column: str | None = None,
) -> datasets.DatasetDict:
    r"""
    Split a dataset into seeded, disjoint `"train"` and `"validation"` parts that together cover it.

    Stratification (the class proportions kept in both parts) is done by `Dataset.train_test_split` and costs
    nothing extra; it needs a `ClassLabel` column, so an integer column is cast to one for the split and cast back
    afterwards. Without `stratify_by_column` the split is a plain seeded shuffle.

    Args:
        dataset (`datasets.Dataset`):
            The training data.
        validation_percentage (`float`):
            Percentage of rows that go to validation, in the open interval (0, 100).
        seed (`int`, *optional*, defaults to `42`):
            Seed of the shuffle; the same seed gives the same split.
        stratify_by_column (`str`, *optional*):
            Label column to stratify on (a `ClassLabel` or integer column).

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
    if stratify_by_column is None:
        split = dataset.train_test_split(test_size=validation_percentage / 100, seed=seed)
        return datasets.DatasetDict(train=split["train"], validation=split["test"])
    if stratify_by_column not in dataset.column_names:
        raise ValueError(
            f"`stratify_by_column` must be one of the columns {dataset.column_names}, got {stratify_by_column!r}."
        )
    feature = dataset.features[stratify_by_column]
    work = dataset
    if not isinstance(feature, datasets.ClassLabel):
        if not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
            raise ValueError(
                f"`stratify_by_column` must name a ClassLabel or integer column; {stratify_by_column!r} is {feature}."
            )
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


def as_class_label(dataset: datasets.DatasetDict, label_column: str) -> datasets.DatasetDict:
    """Cast `label_column` of every split to one `ClassLabel`: string labels are encoded in sorted order; integer
    labels `0..max` take their names from a `<label_column>_text` column when every split has one and it maps them
    one-to-one (20 Newsgroups files and the SetFit Hub copy have `label_text`), else the names `"0"`, `"1"`, ..."""
    feature = next(iter(dataset.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        names = sorted(set().union(*(split.unique(label_column) for split in dataset.values())))
        return dataset.cast_column(label_column, datasets.ClassLabel(names=names))
    if not (isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))):
        raise ValueError(f"`label_column` {label_column!r} must hold integers or strings, got {feature}.")
    values = set().union(*(split.unique(label_column) for split in dataset.values()))
    if min(values) < 0:
        raise ValueError(f"`label_column` {label_column!r} holds negative labels: {sorted(values)[:5]}.")
    names = [str(i) for i in range(max(values) + 1)]
    text_column = f"{label_column}_text"
    if all(text_column in split.column_names for split in dataset.values()):
        pairs = set()
        for split in dataset.values():
            pairs.update(zip(split[label_column], split[text_column]))
        if len(pairs) == len(values):  # a consistent one-to-one mapping
            for label, name in pairs:
                names[label] = name
    return dataset.cast_column(label_column, datasets.ClassLabel(names=names))


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
) -> datasets.DatasetDict:
    r"""
    Load a classification dataset as `train`, `validation` and `test` splits with a `ClassLabel` label column.

    Local files win over `dataset_name` when any is given (see [`load_local_dataset`]). A missing validation split is
    carved from train with a seeded split stratified on the labels ([`train_validation_split`]); the test split is
    never used for it. The `max_*_samples` limits keep a seeded random subset of each split.

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

    Returns:
        `datasets.DatasetDict` with `"train"`, `"validation"` and `"test"`; `features[label_column].names` are the
        class names.
    """
    if train_file is not None or validation_file is not None or test_file is not None:
        raw = load_local_dataset(train_file, validation_file, test_file, cache_dir=cache_dir)
    elif dataset_name is not None:
        raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    else:
        raise ValueError("Give `dataset_name` or local files (`train_file`, `validation_file`, `test_file`).")
    if test_split_name != "test":
        if test_split_name not in raw:
            raise ValueError(f"`test_split_name` {test_split_name!r} is not a split; splits: {list(raw)}.")
        raw = datasets.DatasetDict({("test" if k == test_split_name else k): v for k, v in raw.items() if k != "test"})
    missing = [split for split in ("train", "test") if split not in raw]
    if missing:
        raise ValueError(f"The data has no {missing} split(s); it has {list(raw)}. Both train and test are needed.")
    if "validation" not in raw and "valid" in raw:
        raw["validation"] = raw.pop("valid")
    if label_column not in raw["train"].column_names:
        raise ValueError(f"`label_column` {label_column!r} is not a column; columns: {raw['train'].column_names}.")
    raw = datasets.DatasetDict({split: raw[split] for split in ("train", "validation", "test") if split in raw})
    raw = as_class_label(raw, label_column)
    if "validation" not in raw:
        parts = train_validation_split(
            raw["train"], validation_split_percentage, seed, stratify_by_column=label_column
        )
        raw["train"], raw["validation"] = parts["train"], parts["validation"]
    return datasets.DatasetDict(
        train=_subsample(raw["train"], max_train_samples, seed, "max_train_samples"),
        validation=_subsample(raw["validation"], max_eval_samples, seed, "max_eval_samples"),
        test=_subsample(raw["test"], max_test_samples, seed, "max_test_samples"),
    )


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


def image_column_of(dataset: datasets.Dataset, image_column: str | None = None) -> str:
    """The name of the image column: `image_column` if given (checked), else the first `Image` feature."""
    if image_column is not None:
        if image_column not in dataset.column_names:
            raise ValueError(f"`image_column` {image_column!r} is not a column; columns: {dataset.column_names}.")
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
]
