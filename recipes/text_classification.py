"""Fine-tune a text classifier with a calibration loss (MbLS by default) and report its calibration.

Trains on `train`, fits temperature scaling on `validation` (carved from train when the data has none), and writes to
`--output_dir` the model, its tokenizer and temperature, `all_results.json` (`test_accuracy`, `test_ece`, ...,
the same after temperature scaling as `test_ts_*`, and `temperature`) and reliability diagrams of the test set before
(`reliability_test.png`) and after (`reliability_test_ts.png`) temperature scaling.

Examples:

    # 20 Newsgroups from the Hub (SetFit/20_newsgroups) with the paper's text CNN, on every GPU of the machine:
    accelerate launch recipes/text_classification.py --output_dir runs/20ng-mbls --num_train_epochs 10

    # Offline, from local files, header block skipped like the paper's loader:
    accelerate launch recipes/text_classification.py \\
        --train_file ../shared/data/20newsgroups/train.jsonl.gz --test_file ../shared/data/20newsgroups/test.jsonl.gz \\
        --newsgroups_cleanup headers --output_dir runs/20ng-mbls

    # Any Hugging Face encoder (Hub name or local folder), label smoothing instead of MbLS:
    accelerate launch recipes/text_classification.py --model_name_or_path bert-base-uncased --max_seq_length 256 \\
        --loss_type ls --learning_rate 2e-5 --output_dir runs/20ng-bert-ls

    # Two CPU processes:
    accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/text_classification.py ...

Every flag: `python recipes/text_classification.py --help`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import transformers
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    set_seed,
)

import mbls_nlp.models  # noqa: F401  (registers the text CNN with the Auto classes)
from mbls_nlp import CalibrationConfig, CalibrationTrainer
from mbls_nlp.data import NEWSGROUPS_CLEANUP_MODES, clean_newsgroups, load_classification_splits, train_word_tokenizer
from mbls_nlp.hparam_search import SearchArguments, parse_search_grid, search_calibration_hparams
from mbls_nlp.models import TextCNNConfig, TextCNNForSequenceClassification

logger = logging.getLogger(__name__)

# The paper's loader keeps 1000 words per message (by-liu/MbLS calibrate/data/newsgroup.py, pad_sequences(maxlen=1000)).
TEXT_CNN_MAX_LENGTH = 1000


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An AutoModelForSequenceClassification checkpoint (Hub name or local folder). Leave unset for the "
            "paper's text CNN (--model_type text_cnn), whose tokenizer is trained on the training texts."
        },
    )
    model_type: str = field(
        default="auto",
        metadata={
            "help": "'auto': the text CNN when --model_name_or_path is unset, else that checkpoint; 'text_cnn': always "
            "the text CNN.",
            "choices": ("auto", "text_cnn"),
        },
    )
    embeddings_from: str | None = field(
        default=None,
        metadata={
            "help": "Text CNN only: initialise its embedding table from this model's input embeddings (Hub name or "
            "local folder) and use that model's tokenizer, standing in for the paper's GloVe vectors."
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

    @property
    def use_text_cnn(self) -> bool:
        return self.model_type == "text_cnn" or self.model_name_or_path is None


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default="SetFit/20_newsgroups",
        metadata={"help": "Hub dataset name or local dataset folder; ignored when local files are given."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local train file: csv, json, jsonl (each optionally .gz) or parquet."}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "Local validation file; carved from train when not given."}
    )
    test_file: str | None = field(default=None, metadata={"help": "Local test file."})
    test_split_name: str = field(
        default="test",
        metadata={
            "help": "Split to test on; for data without a labelled test split (Tiny-ImageNet: --test_split_name "
            "valid), its validation split, validation then being carved from train."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels (integers or strings)."})
    newsgroups_cleanup: str = field(
        default="none",
        metadata={
            "help": "20 Newsgroups cleaning: 'none'; 'headers' skips the header block like the paper's loader; 'all' "
            "removes headers, signature footers and quoted replies like scikit-learn's remove=(...).",
            "choices": NEWSGROUPS_CLEANUP_MODES,
        },
    )
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Share of train held out as validation when there is no validation split."}
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Tokens kept per text; default: 1000 for the text CNN (the paper's), else the tokenizer's."},
    )
    pad_to_max_length: bool | None = field(
        default=None,
        metadata={
            "help": "Pad every text to --max_seq_length. Default: on for the text CNN (the paper pads every message to "
            "1000 words, and its convolutions and max-pooling see the padding, so batch-dependent padding would make "
            "results depend on the batch split across processes), off otherwise (padding per batch)."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of validation."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of test."})
    save_predictions: bool = field(
        default=False,
        metadata={
            "help": "Also write the test logits and labels as predictions_test.npz (float32 logits before temperature "
            "scaling), so that metrics, intervals and paired comparisons can be recomputed without the model."
        },
    )


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, SearchArguments, CalibrationConfig))
    # Recipe defaults that differ from TrainingArguments': the diagrams are part of the recipe's output.
    parser.set_defaults(save_reliability_diagrams=True, report_to="none")
    model_args, data_args, search_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if search_args.search_hparams:
        parse_search_grid(search_args.search_grid, training_args.loss_type)  # fail on a bad grid before any loading
    return model_args, data_args, search_args, training_args


def load_tokenizer_and_model_init(model_args: ModelArguments, data_args: DataArguments, train_texts, label_names):
    """The tokenizer, a function that returns a fresh model (the search trains one per candidate), the text length."""
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names))}
    labels["label2id"] = {name: i for i, name in labels["id2label"].items()}
    if not model_args.use_text_cnn:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)

        def model_init():
            return AutoModelForSequenceClassification.from_pretrained(
                model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **labels
            )

        return tokenizer, model_init, data_args.max_seq_length or tokenizer.model_max_length
    max_length = data_args.max_seq_length or TEXT_CNN_MAX_LENGTH
    if model_args.embeddings_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.embeddings_from)

        def model_init():
            return TextCNNForSequenceClassification.from_pretrained_embeddings(
                model_args.embeddings_from, freeze=model_args.freeze_embeddings, **labels
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, search_args, training_args = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level()
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="loading the dataset"):
        raw = load_classification_splits(
            data_args.dataset_name,
            data_args.dataset_config_name,
            data_args.train_file,
            data_args.validation_file,
            data_args.test_file,
            label_column=data_args.label_column,
            validation_split_percentage=data_args.validation_split_percentage,
            seed=training_args.seed,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            max_test_samples=data_args.max_test_samples,
            test_split_name=data_args.test_split_name,
        )
        raw = clean_newsgroups(raw, data_args.newsgroups_cleanup, text_column=data_args.text_column)
    label_names = raw["train"].features[data_args.label_column].names

    tokenizer, model_init, max_length = load_tokenizer_and_model_init(
        model_args, data_args, raw["train"][data_args.text_column], label_names
    )

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
    return train_calibrate_and_test(trainer, data, search_args, save_predictions=data_args.save_predictions)


def train_calibrate_and_test(
    trainer: CalibrationTrainer, data, search_args: SearchArguments, save_predictions: bool = False
) -> dict[str, float]:
    """Optionally choose the loss's hyper-parameters on validation, train, fit the temperature on validation, test
    with and without it (test data enters only here, once), save everything."""
    search = {}
    if search_args.search_hparams:
        search = search_calibration_hparams(
            trainer,
            search_args.search_grid,
            max_accuracy_drop=search_args.max_accuracy_drop,
            selection_metric=search_args.selection_metric,
        ).summary()
    train_result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.fit_temperature(data["validation"])
    trainer.save_model()  # after fit_temperature: the config then carries calibration_temperature
    validation = trainer.evaluate(data["validation"], metric_key_prefix="validation")
    test_output = trainer.predict(data["test"], metric_key_prefix="test")
    test = test_output.metrics
    results = {**train_result.metrics, **search, **validation, **test, "temperature": trainer.temperature}
    trainer.save_metrics("all", results)  # all_results.json, written by the main process only
    trainer.save_state()  # trainer_state.json: the per-epoch evaluation history
    if save_predictions and trainer.is_world_process_zero():
        predictions = test_output.predictions
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        np.savez_compressed(
            os.path.join(trainer.args.output_dir, "predictions_test.npz"),
            logits=np.asarray(logits, dtype=np.float32),
            labels=np.asarray(test_output.label_ids),
        )
    trainer.accelerator.print({key: value for key, value in test.items() if "loss" not in key})
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
