"""The word-level tokenizer of the paper's text CNN, trained on the training texts with `tokenizers`."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

# Keras' `Tokenizer` default `filters` (the reference fits one on the texts): each of these characters becomes a
# word separator. The apostrophe is not among them, so "don't" stays one word.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'


def train_word_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 20000,
    max_length: int = 1000,
    lowercase: bool = True,
    min_frequency: int = 1,
    truncation_side: str = "left",
    pad_token: str = "[PAD]",
    unk_token: str = "[UNK]",
) -> PreTrainedTokenizerFast:
    r"""
    Train the word-level tokenizer of the paper's text CNN on `texts` with the `tokenizers` library.

    It approximates the reference's Keras `Tokenizer(num_words=...)` and `pad_sequences(maxlen=1000)`
    (by-liu/MbLS `calibrate/data/newsgroup.py`): lowercase, every character of Keras' default filters
    (`KERAS_FILTERS`) turned into a separator, split on whitespace, the most frequent words kept. Differences:

    - the vocabulary holds `pad_token` (id 0, like Keras' padding index) and `unk_token` (id 1), then the
      `vocab_size - 2` most frequent words; Keras keeps `num_words - 1` words and *drops* unknown words, here they
      become `unk_token`;
    - Keras splits on spaces only, so other whitespace (`\r`, form feeds) stays inside its words; here any
      whitespace separates words;
    - ties in frequency are ordered by `tokenizers` (deterministic), not by first occurrence as in Keras;
    - padding is on the right (the text CNN masks padding, so the side does not change its output); truncation
      keeps the *last* `max_length` words by default, like Keras' `truncating="pre"`.

    Use it with `padding="max_length"` or a `DataCollatorWithPadding` and `truncation=True`. Training is
    deterministic: the same texts give the same vocabulary.

    Args:
        texts (`Iterable[str]`):
            Training texts (iterated once).
        vocab_size (`int`, *optional*, defaults to `20000`):
            Size of the vocabulary, special tokens included (the text CNN's `config.vocab_size`).
        max_length (`int`, *optional*, defaults to `1000`):
            `model_max_length` of the tokenizer: the reference's `max_sequence_length`.
        lowercase (`bool`, *optional*, defaults to `True`):
            Lowercase before splitting (Keras' `lower=True`).
        min_frequency (`int`, *optional*, defaults to `1`):
            Minimum count for a word to enter the vocabulary.
        truncation_side (`str`, *optional*, defaults to `"left"`):
            `"left"` keeps the end of long texts (the reference), `"right"` their beginning.
        pad_token (`str`, *optional*, defaults to `"[PAD]"`):
            Padding token, id 0.
        unk_token (`str`, *optional*, defaults to `"[UNK]"`):
            Unknown-word token, id 1.

    Returns:
        `transformers.PreTrainedTokenizerFast`: saveable with `save_pretrained` and reloadable offline with
        `AutoTokenizer.from_pretrained`; returns `input_ids` and `attention_mask`.

    Examples:

    ```python
    >>> from mbls_nlp.models import train_word_tokenizer
    >>> tok = train_word_tokenizer(["Don't panic.", "the cat, the dog!"], vocab_size=10, max_length=8)
    >>> tok.convert_ids_to_tokens(tok("The DOG-don't bark")["input_ids"])
    ['the', 'dog', "don't", '[UNK]']

    ```
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 3:
        raise ValueError(f"`vocab_size` must be an integer >= 3 (two special tokens and a word), got {vocab_size!r}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"`max_length` must be a positive integer, got {max_length!r}.")
    if truncation_side not in ("left", "right"):
        raise ValueError(f"`truncation_side` must be 'left' or 'right', got {truncation_side!r}.")
    if isinstance(texts, str):
        raise TypeError("`texts` must be an iterable of strings, not a single string.")

    tokenizer = Tokenizer(models.WordLevel(unk_token=unk_token))
    steps = [normalizers.Lowercase()] if lowercase else []
    # One character class of the filters; re.escape-like escaping for the few that are special inside [...].
    char_class = "".join("\\" + c if c in "\\]^-[" else c for c in KERAS_FILTERS)
    steps.append(normalizers.Replace(Regex(f"[{char_class}]"), " "))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[pad_token, unk_token], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad_token,
        unk_token=unk_token,
        model_max_length=max_length,
        padding_side="right",
        truncation_side=truncation_side,
        model_input_names=["input_ids", "attention_mask"],
    )


__all__ = ["KERAS_FILTERS", "train_word_tokenizer"]
