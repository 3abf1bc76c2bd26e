"""What every recipe shares: the data arguments, the parsing, and the evaluation protocol, written once.

The protocol ([`train_calibrate_and_test`]): optionally choose the loss's hyper-parameters on validation, train, fit
the temperature on validation, save the model (it then carries `config.calibration_temperature`), evaluate
validation, and test once, with and without the temperature. A recipe holds only what is specific to its modality
(model, preprocessing); like trl's `ScriptArguments`, the shared script dataclass [`DataArguments`] lives here so that
each recipe extends it with its modality's fields.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import transformers
from transformers import HfArgumentParser, set_seed
from transformers.trainer_utils import PredictionOutput

from .calibration_config import CalibrationConfig
from .calibration_trainer import CalibrationTrainer
from .data import load_classification_splits
from .hparam_search import SearchArguments, parse_search_grid, search_calibration_hparams

__all__ = ["DataArguments", "ProtocolOutput", "label_config", "parse_recipe_args", "train_calibrate_and_test"]

PREDICTIONS_FILE = "predictions_test.npz"


@dataclass
class DataArguments:
    """The data flags every recipe has (parsed by `HfArgumentParser`); a recipe subclasses it with its modality's."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset name or local dataset folder; ignored when local files are given. Default: the "
            "recipe's dataset."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Local train file: csv, json, jsonl (each optionally .gz) or parquet; glob patterns allowed "
            "(sharded 'train-*.parquet')."
        },
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
    label_column: str = field(default="label", metadata={"help": "Column holding the labels (integers or strings)."})
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Share of train held out as validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of validation."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of test."})
    save_predictions: bool = field(
        default=False,
        metadata={
            "help": f"Also write the test logits and labels as {PREDICTIONS_FILE} (float32 logits before temperature "
            "scaling), so that metrics, intervals and paired comparisons can be recomputed without the model."
        },
    )

    def load_splits(
        self,
        training_args: CalibrationConfig,
        text_column: str | None = None,
        image_column: str | None = None,
        check_images: bool = False,
    ):
        """`train`, `validation` and `test` with a `ClassLabel` label column (see
        [`~mbls_nlp.data.load_classification_splits`]), loaded by the main process first and seeded by
        `training_args.seed`. The labels, and the recipe's input column (`text_column`, `image_column`; every image
        decoded once with `check_images`), are checked here, so that bad data fails before any model loads."""
        with training_args.main_process_first(desc="loading the dataset"):
            return load_classification_splits(
                self.dataset_name,
                self.dataset_config_name,
                self.train_file,
                self.validation_file,
                self.test_file,
                label_column=self.label_column,
                validation_split_percentage=self.validation_split_percentage,
                seed=training_args.seed,
                max_train_samples=self.max_train_samples,
                max_eval_samples=self.max_eval_samples,
                max_test_samples=self.max_test_samples,
                test_split_name=self.test_split_name,
                text_column=text_column,
                image_column=image_column,
                check_images=check_images,
            )


def parse_recipe_args(model_arguments: type, data_arguments: type[DataArguments], argv=None, **defaults):
    r"""
    Parse a recipe's command line into `(model_args, data_args, search_args, training_args)`, then set up logging
    and the seed.

    Args:
        model_arguments (`type`): the recipe's model dataclass.
        data_arguments (`type`): the recipe's subclass of [`DataArguments`].
        argv (`list[str]`, *optional*): the arguments; `sys.argv[1:]` when `None`.
        defaults: recipe defaults that differ from the dataclasses' (e.g. `dataset_name`), applied before parsing
            so that `--help` shows them.

    Returns:
        `tuple`: the four parsed dataclasses; `training_args` is a [`CalibrationConfig`].
    """
    if not (isinstance(data_arguments, type) and issubclass(data_arguments, DataArguments)):
        raise TypeError(f"`data_arguments` must be a subclass of DataArguments, got {data_arguments!r}.")
    parser = HfArgumentParser((model_arguments, data_arguments, SearchArguments, CalibrationConfig))
    # Recipe defaults that differ from TrainingArguments': the diagrams are part of the recipe's output.
    parser.set_defaults(save_reliability_diagrams=True, report_to="none", **defaults)
    model_args, data_args, search_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if search_args.search_hparams:
        parse_search_grid(search_args.search_grid, training_args.loss_type)  # fail on a bad grid before any loading
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level()
    )
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    return model_args, data_args, search_args, training_args


def label_config(label_names) -> dict[str, Any]:
    """`num_labels`, `id2label` and `label2id` for a model config, from the class names in label-id order."""
    id2label = dict(enumerate(label_names))
    return {"num_labels": len(id2label), "id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}


@dataclass
class ProtocolOutput:
    """What [`train_calibrate_and_test`] returns.

    Args:
        metrics (`dict[str, float]`): what `all_results.json` holds: the training metrics, `search_*` with
            `--search_hparams`, `validation_*` and `test_*` (each with `ts_*` after temperature scaling) and the
            fitted `temperature`.
        test_predictions (`transformers.trainer_utils.PredictionOutput`): the test logits (before temperature
            scaling), labels and `test_*` metrics.
    """

    metrics: dict[str, float]
    test_predictions: PredictionOutput


def _logits(predictions) -> np.ndarray:
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


def train_calibrate_and_test(
    trainer: CalibrationTrainer,
    validation_dataset,
    test_dataset,
    search_args: SearchArguments | None = None,
    save_predictions: bool = False,
) -> ProtocolOutput:
    r"""
    The evaluation protocol of the recipes, in order: choose the loss's hyper-parameters on validation (only with
    `search_args.search_hparams`), train, fit the temperature on validation, save the model, evaluate validation,
    predict test once (the test data enters only here), and write `all_results.json` and `trainer_state.json` to
    `trainer.args.output_dir`.

    Args:
        trainer ([`CalibrationTrainer`]):
            The trainer, built with `model_init` when searching (one fresh model per candidate).
        validation_dataset (`datasets.Dataset`):
            Held-out data: the search's selection and the temperature are fitted on it, never on test.
        test_dataset (`datasets.Dataset`):
            The test data, predicted once.
        search_args ([`~mbls_nlp.hparam_search.SearchArguments`], *optional*):
            The search flags; no search when `None`.
        save_predictions (`bool`, *optional*, defaults to `False`):
            Also write the test logits (float32, before temperature scaling) and labels to
            `predictions_test.npz` in the output folder.

    Returns:
        [`ProtocolOutput`]: the metrics written to `all_results.json` (the fitted temperature once, as
        `temperature`) and the test predictions.
    """
    search = {}
    if search_args is not None and search_args.search_hparams:
        search = search_calibration_hparams(
            trainer, search_args.search_grid, max_accuracy_drop=search_args.max_accuracy_drop
        ).summary()
    train_result = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    trainer.fit_temperature(validation_dataset)
    trainer.save_model()  # after fit_temperature: the config then carries calibration_temperature
    validation = trainer.evaluate(validation_dataset, metric_key_prefix="validation")
    test_output = trainer.predict(test_dataset, metric_key_prefix="test")
    # The trainer reports the temperature with every evaluation (validation_temperature, test_temperature); the
    # results carry it once.
    validation.pop("validation_temperature", None)
    test = {key: value for key, value in test_output.metrics.items() if key != "test_temperature"}
    test_output = test_output._replace(metrics=test)
    results = {**train_result.metrics, **search, **validation, **test, "temperature": trainer.temperature}
    trainer.save_metrics("all", results)  # all_results.json, written by the main process only
    trainer.save_state()  # trainer_state.json: the per-epoch evaluation history
    if save_predictions and trainer.is_world_process_zero():
        np.savez_compressed(
            os.path.join(trainer.args.output_dir, PREDICTIONS_FILE),
            logits=_logits(test_output.predictions).astype(np.float32),
            labels=np.asarray(test_output.label_ids),
        )
    trainer.accelerator.print({key: value for key, value in test.items() if "loss" not in key})
    return ProtocolOutput(metrics=results, test_predictions=test_output)
