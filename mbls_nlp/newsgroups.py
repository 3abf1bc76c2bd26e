"""20 Newsgroups: cleaning raw messages like the paper's loader or like scikit-learn, and the shared file layout.

- [`clean_newsgroups_text`], [`clean_newsgroups`]: 20 Newsgroups cleaning like the paper's loader (`"headers"`)
  or like scikit-learn's `remove=("headers", "footers", "quotes")` (`"all"`).
- [`load_newsgroups`]: the shared `train.jsonl.gz` / `test.jsonl.gz` layout with named labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from .data import as_class_label, load_local_dataset

NEWSGROUPS_CLEANUP_MODES = ("none", "headers", "all")

# Same semantics as scikit-learn's `sklearn.datasets._twenty_newsgroups` strip_newsgroup_{header,footer,quoting}
# (checked message by message in tests/test_newsgroups.py); written here so that scikit-learn stays a test dependency.
_QUOTE_PREFIXES = ("In article", "Quoted from", "|", ">")
_QUOTE_MARKERS = ("writes in", "writes:", "wrote:", "says:", "said:")


def _strip_header_like_reference(text: str) -> str:
    # The paper's loader (by-liu/MbLS calibrate/data/newsgroup.py): cut before the first blank line, keeping the
    # blank line itself, unless there is none or the text starts with it.
    i = text.find("\n\n")
    return text[i:] if i > 0 else text


def _strip_header(text: str) -> str:
    # scikit-learn: everything after the first blank line, and nothing when there is no blank line.
    _, _, after = text.partition("\n\n")
    return after


def _strip_footer(text: str) -> str:
    # The signature starts at the last line that is blank or made of hyphens, trailing blank lines aside; nothing
    # is removed when that line is the first one (or there is none).
    lines = text.strip().split("\n")
    for index in range(len(lines) - 1, 0, -1):
        if lines[index].strip().strip("-") == "":
            return "\n".join(lines[:index])
    return text


def _is_quote_line(line: str) -> bool:
    return line.startswith(_QUOTE_PREFIXES) or any(marker in line for marker in _QUOTE_MARKERS)


def _strip_quoting(text: str) -> str:
    return "\n".join(line for line in text.split("\n") if not _is_quote_line(line))


def clean_newsgroups_text(text: str, mode: str = "headers") -> str:
    r"""
    Clean one raw 20 Newsgroups message.

    Args:
        text (`str`):
            The raw message, headers included.
        mode (`str`, *optional*, defaults to `"headers"`):
            - `"none"`: unchanged.
            - `"headers"`: drop the header block like the paper's loader (by-liu/MbLS
              `calibrate/data/newsgroup.py`): the text from the first `"\n\n"` on, blank line included; unchanged if
              there is no blank line or the message starts with one.
            - `"all"`: the same as scikit-learn's `fetch_20newsgroups(remove=("headers", "footers", "quotes"))`:
              everything after the first blank line (empty if none), then the signature block after the last blank
              or hyphen-only line removed, then lines that quote (starting with `>` or `|`, `In article`,
              `Quoted from`, or containing `writes:`, `writes in`, `wrote:`, `says:`, `said:`) removed.

    Returns:
        `str`: the cleaned text.

    Examples:

    ```python
    >>> from mbls_nlp.newsgroups import clean_newsgroups_text
    >>> raw = "From: a@b.c\nSubject: hi\n\nYou wrote:\n> old\nNew text\n\n--\nSig"
    >>> clean_newsgroups_text(raw, "headers")
    '\n\nYou wrote:\n> old\nNew text\n\n--\nSig'
    >>> clean_newsgroups_text(raw, "all")
    'New text\n'

    ```
    """
    if mode == "none":
        return text
    if mode == "headers":
        return _strip_header_like_reference(text)
    if mode == "all":
        return _strip_quoting(_strip_footer(_strip_header(text)))
    raise ValueError(f"`mode` must be one of {NEWSGROUPS_CLEANUP_MODES}, got {mode!r}.")


def clean_newsgroups(
    dataset: datasets.Dataset | datasets.DatasetDict,
    mode: str = "headers",
    text_column: str = "text",
    num_proc: int | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    r"""
    Apply [`clean_newsgroups_text`] to a text column with a batched `map`.

    Args:
        dataset (`datasets.Dataset` or `datasets.DatasetDict`):
            Data with raw messages.
        mode (`str`, *optional*, defaults to `"headers"`):
            `"none"`, `"headers"` or `"all"`; see [`clean_newsgroups_text`]. `"none"` returns `dataset` as is.
        text_column (`str`, *optional*, defaults to `"text"`):
            The column to clean, in place.
        num_proc (`int`, *optional*):
            Processes for `map`.

    Returns:
        The same type as `dataset`, with `text_column` cleaned.

    Examples:

    ```python
    >>> import datasets
    >>> from mbls_nlp.newsgroups import clean_newsgroups
    >>> ds = datasets.Dataset.from_dict({"text": ["Subject: x\n\nbody"]})
    >>> list(clean_newsgroups(ds, "all")["text"])
    ['body']

    ```
    """
    if mode not in NEWSGROUPS_CLEANUP_MODES:
        raise ValueError(f"`mode` must be one of {NEWSGROUPS_CLEANUP_MODES}, got {mode!r}.")
    columns = dataset.column_names
    columns = next(iter(columns.values())) if isinstance(columns, dict) else columns
    if text_column not in columns:
        raise ValueError(f"`text_column` must be one of the columns {columns}, got {text_column!r}.")
    if mode == "none":
        return dataset

    def _clean(batch):
        return {text_column: [clean_newsgroups_text(text, mode) for text in batch[text_column]]}

    return dataset.map(_clean, batched=True, num_proc=num_proc, desc=f"Cleaning 20 Newsgroups ({mode})")


def load_newsgroups(data_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    r"""
    Load the shared 20 Newsgroups layout: `train.jsonl.gz` and `test.jsonl.gz` with `text`, `label`, `label_text`.

    The `label` column becomes a `ClassLabel` whose names are the newsgroups (from `label_text`, by the same mapping
    as [`~mbls_nlp.data.load_classification_splits`]), so that stratified splits work and `id2label` can be read
    from `features["label"].names`.

    Args:
        data_dir (`str` or `os.PathLike`):
            Folder holding the two files (e.g. `shared/data/20newsgroups`).
        cache_dir (`str` or `os.PathLike`, *optional*):
            Arrow cache folder for `datasets`.

    Returns:
        `datasets.DatasetDict` with `"train"` and `"test"`, raw messages (clean them with [`clean_newsgroups`]).

    Examples:

    ```python
    >>> from mbls_nlp.newsgroups import load_newsgroups
    >>> ds = load_newsgroups("../shared/data/20newsgroups")  # doctest: +SKIP
    >>> ds["train"].features["label"].names[0]  # doctest: +SKIP
    'alt.atheism'

    ```
    """
    data_dir = Path(data_dir)
    files = {split: data_dir / f"{split}.jsonl.gz" for split in ("train", "test")}
    ds = load_local_dataset(train_file=files["train"], test_file=files["test"], cache_dir=cache_dir)
    # The same label mapping and checks as every recipe's (`load_classification_splits`), without carving a
    # validation split.
    return as_class_label(ds, "label", sources={split: f"file {str(path)!r}" for split, path in files.items()})


__all__ = ["NEWSGROUPS_CLEANUP_MODES", "clean_newsgroups", "clean_newsgroups_text", "load_newsgroups"]
