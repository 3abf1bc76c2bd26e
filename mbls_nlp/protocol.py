"""What every recipe shares: the data arguments, the parsing, and the evaluation protocol, written once.

The protocol ([`train_calibrate_and_test`]): train, or choose the loss's hyper-parameters on validation (keeping the
chosen candidate's trained model), predict validation once and fit the temperature on it, test once, with and without
the temperature, flag a model that did not learn, save the model with the temperature folded into its head (so plain
transformers gives calibrated probabilities), and write `all_results.json`, `results.md` and a model card. A recipe
holds only what is specific to its modality (model, preprocessing, its defaults per model kind); like trl's
`ScriptArguments`, the shared script dataclass [`DataArguments`] lives here so that each recipe extends it with its
modality's fields.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import transformers
from transformers import HfArgumentParser, ProgressCallback, set_seed
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import PredictionOutput

from .calibration import _check_bootstrap, paired_bootstrap
from .calibration_config import CalibrationConfig
from .calibration_trainer import CalibrationTrainer
from .data import VALIDATION_SPLIT_ORDERS, load_classification_splits
from .hparam_search import SearchArguments, parse_search_grid, search_calibration_hparams
from .temperature import temperature_folded

__all__ = [
    "DataArguments",
    "HubUnreachableError",
    "ProtocolOutput",
    "RunPredictions",
    "label_config",
    "learned_something",
    "model_card_section",
    "load_test_predictions",
    "paired_comparisons",
    "parse_recipe_args",
    "results_table",
    "train_calibrate_and_test",
]

PREDICTIONS_FILE = "predictions_test.npz"
RESULTS_TABLE_FILE = "results.md"
logger = logging.getLogger(__name__)


class HubUnreachableError(ConnectionError):
    """The dataset is on the Hub and the Hub cannot be reached; the message says which flags to pass instead."""


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the Hub endpoint answers within `timeout` seconds (any HTTP status counts as an answer)."""
    from huggingface_hub import constants

    try:
        urllib.request.urlopen(constants.ENDPOINT, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, timeouts, refused connections, a malformed HF_ENDPOINT
        return False
    return True


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
    validation_split_order: str = field(
        default="random",
        metadata={
            "help": "How that validation split is carved from train: 'random' (seeded, stratified) or 'last' (the "
            "last rows of each class in the train file's order; for data stored in time order, such as the 20 "
            "Newsgroups bydate files, the latest messages, closer to a later test set).",
            "choices": VALIDATION_SPLIT_ORDERS,
        },
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
    test_n_bootstrap: int = field(
        default=1000,
        metadata={
            "help": "Bootstrap resamples for the percentile intervals of the final test report (test_<name>_low, "
            "test_<name>_high; results.md prints 'value [low, high]'), at --calibration_confidence; 0: none. The "
            "per-epoch evaluations use --calibration_n_bootstrap (default 0)."
        },
    )

    #: The local-files flags a recipe suggests when its Hub dataset cannot be reached (e.g. the shared copy).
    local_files_hint: ClassVar[str] = "--train_file PATH --test_file PATH"

    def describe_dataset(self, validation=None, seed: int | None = None) -> str:
        """The data as the model card names it: the Hub dataset or local folder, or the local files; given the
        loaded `validation` split (and the `seed` it was loaded with), also how it was made when it was carved from
        train (`validation.split` is then `"train"`), since the temperature and any search were fitted on it."""
        files = (self.train_file, self.validation_file, self.test_file)
        if any(files):
            described = ", ".join(f"`{os.path.basename(f)}`" for f in files if f)
        else:
            described = f"`{self.dataset_name or ''}`"
            described += f" (`{self.dataset_config_name}`)" if self.dataset_config_name else ""
        if validation is None or str(getattr(validation, "split", "")) != "train":
            return described
        share = f"{self.validation_split_percentage:g}%"
        if self.validation_split_order == "last":
            how = f"the last {share} of each class's rows in the train data's order"
        else:
            how = f"{share} drawn at random, stratified by label" + (f" (seed {seed})" if seed is not None else "")
        return f"{described}; validation carved from train: {how}, {len(validation):,} examples"

    def _from_hub(self) -> bool:
        return self.train_file is None and self.dataset_name is not None and not os.path.exists(self.dataset_name)

    def _unreachable(self, detail: str) -> HubUnreachableError:
        return HubUnreachableError(
            f"Cannot load --dataset_name {self.dataset_name} from the Hub ({detail}); pass local files instead: "
            f"{self.local_files_hint}"
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
        decoded once with `check_images`), are checked here, so that bad data fails before any model loads.

        Raises:
            [`HubUnreachableError`]: within seconds, when the data comes from the Hub and the Hub does not answer
            (instead of the datasets library's retries), or when offline mode finds no cached copy; its one-line
            message names the local-files flags to pass.
        """
        if self._from_hub():
            from huggingface_hub import constants

            # Offline mode reads the cache: no probe then, but a cache miss gets the same one-line message.
            if not constants.HF_HUB_OFFLINE and not _hub_reachable():
                raise self._unreachable(f"{constants.ENDPOINT} does not answer")
            try:
                return self._load(training_args, text_column, image_column, check_images)
            except ConnectionError as error:  # datasets' offline cache miss and failed requests are ConnectionErrors
                raise self._unreachable(str(error).splitlines()[0] if str(error) else type(error).__name__) from error
        return self._load(training_args, text_column, image_column, check_images)

    def _load(self, training_args, text_column=None, image_column=None, check_images=False):
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
                validation_split_order=self.validation_split_order,
            )


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _machine_defaults() -> dict[str, Any]:
    if _has_accelerator():
        return {}
    # Pinned memory needs an accelerator: without one torch warns at every data loader (issue 13).
    defaults = {"dataloader_pin_memory": False}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Several processes launched on a machine without accelerator (`accelerate launch --multi_gpu
        # --num_processes 2`): without `use_cpu` accelerate finds no backend, each process would train alone
        # (DistributedType.NO) and they would all write to one output folder; with it they form one gloo job.
        defaults["use_cpu"] = True
    return defaults


def parse_recipe_args(
    model_arguments: type,
    data_arguments: type[DataArguments],
    argv=None,
    kind_defaults: Callable[..., dict[str, Any]] | None = None,
    **defaults,
):
    r"""
    Parse a recipe's command line into `(model_args, data_args, search_args, training_args)`, then set up logging
    and the seed.

    Defaults that depend on the model kind (the text CNN trains at another learning rate than a pretrained encoder)
    are applied only where the user did not pass the flag: the command line is parsed once, `kind_defaults` reads
    the four parsed dataclasses and returns `{flag name: value}`, these become the parser's defaults and the same
    command line is parsed again, so every flag given on it wins (argparse uses a default only for absent flags).

    Args:
        model_arguments (`type`): the recipe's model dataclass.
        data_arguments (`type`): the recipe's subclass of [`DataArguments`].
        argv (`list[str]`, *optional*): the arguments; `sys.argv[1:]` when `None`.
        kind_defaults (`Callable`, *optional*): `(model_args, data_args, search_args, training_args) -> dict` of
            the model kind's defaults (field names of any of the four dataclasses).
        defaults: recipe defaults that differ from the dataclasses' (e.g. `dataset_name`), applied before parsing
            so that `--help` shows them.

    Returns:
        `tuple`: the four parsed dataclasses; `training_args` is a [`CalibrationConfig`].

    Raises:
        `ValueError`: when several processes were launched but do not form one distributed job (e.g. `--use_cpu
        false` on a machine without accelerator), rather than letting each train alone.
    """
    if not (isinstance(data_arguments, type) and issubclass(data_arguments, DataArguments)):
        raise TypeError(f"`data_arguments` must be a subclass of DataArguments, got {data_arguments!r}.")
    parser = HfArgumentParser((model_arguments, data_arguments, SearchArguments, CalibrationConfig))
    # Recipe defaults that differ from TrainingArguments': the diagrams are part of the recipe's output.
    parser.set_defaults(save_reliability_diagrams=True, report_to="none", **_machine_defaults(), **defaults)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    if kind_defaults is not None:
        chosen = kind_defaults(*parsed)
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(chosen) - known)
        if unknown:
            raise ValueError(f"`kind_defaults` returned names that are no flag of the recipe: {unknown}.")
        if chosen:
            parser.set_defaults(**chosen)
            parsed = parser.parse_args_into_dataclasses(args=argv)
    model_args, data_args, search_args, training_args = parsed
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise ValueError(
            f"{launched} processes were launched but they do not form one distributed job (world size "
            f"{training_args.world_size}; no accelerator backend, and --use_cpu={training_args.use_cpu}): each "
            "would train alone into the same output folder. Pass --use_cpu true to train on the CPUs with gloo, or "
            "launch one process."
        )
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
        metrics (`dict[str, Any]`): what `all_results.json` holds: the training metrics, `search_*` with
            `--search_hparams`, `validation_*` and `test_*` (each with `ts_*` after temperature scaling; the test
            metrics with `_low`/`_high` bootstrap bounds when `test_n_bootstrap > 0`), the
            fitted `temperature`, and `calibration_meaningful` (with `calibration_warning` when `False`, see
            [`learned_something`]).
        test_predictions (`transformers.trainer_utils.PredictionOutput`): the test logits (before temperature
            scaling), labels and `test_*` metrics.
    """

    metrics: dict[str, Any]
    test_predictions: PredictionOutput


def _logits(predictions) -> np.ndarray:
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


#: A model whose test accuracy is at most this many times chance (1 / number of classes) has not learned.
CHANCE_FACTOR = 1.5


def learned_something(accuracy: float, num_classes: int, final_train_loss: float | None = None) -> str | None:
    r"""
    Why the calibration metrics of a model are not meaningful, or `None` when they are.

    A model that did not learn predicts close to the class prior: its confidence is about `1 / C`, and so is its
    accuracy, so its ECE is small ("excellent calibration") without saying anything. It is flagged when its accuracy
    is at most `CHANCE_FACTOR` (1.5) times chance, or when its final training cross-entropy is not below `ln C`, the
    loss of the uniform prediction.

    Args:
        accuracy (`float`): test accuracy, a fraction.
        num_classes (`int`): number of classes `C` (at least 2).
        final_train_loss (`float`, *optional*): the last logged training cross-entropy (for MbLS, LS, ... its `ce`
            part); not checked when `None`.

    Returns:
        `str` or `None`: the reason, in one sentence.

    Examples:

    ```python
    >>> from mbls_nlp.protocol import learned_something
    >>> learned_something(0.052, 20, 2.993)  # chance is 0.05, ln 20 = 2.996
    'test accuracy 5.20% is within 1.5x chance (5.00% for 20 classes): the model did not learn'
    >>> learned_something(0.60, 20, 1.1) is None
    True

    ```
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
    chance = 1.0 / num_classes
    if accuracy <= CHANCE_FACTOR * chance:
        return (
            f"test accuracy {100 * accuracy:.2f}% is within {CHANCE_FACTOR}x chance ({100 * chance:.2f}% for "
            f"{num_classes} classes): the model did not learn"
        )
    if final_train_loss is not None and final_train_loss >= math.log(num_classes):
        return (
            f"the final training cross-entropy {final_train_loss:.3f} is not below ln {num_classes} = "
            f"{math.log(num_classes):.3f}, the uniform prediction's: the model did not learn"
        )
    return None


def _final_train_loss(trainer: CalibrationTrainer) -> float | None:
    # The cross-entropy part when the loss logs one (MbLS, LS, ...: their `loss` adds a penalty), else the loss.
    for entry in reversed(trainer.state.log_history):
        for key in ("loss_ce", "loss"):
            if key in entry:
                return float(entry[key])
    return None


# (metric, column title, shown in percent)
TABLE_METRICS = [
    ("accuracy", "Accuracy", True),
    ("ece", "ECE", True),
    ("aece", "AECE", True),
    ("cece", "CECE", True),
    ("mce", "MCE", True),
    ("nll", "NLL", False),
    ("brier", "Brier", False),
]


def _value(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def results_table(results: dict[str, Any]) -> str:
    r"""
    The results as a Markdown table: one row per split (validation, test) before and after temperature scaling,
    columns accuracy, ECE, AECE, CECE, MCE (percent), NLL, Brier and the temperature; followed by a warning line when
    `results["calibration_meaningful"]` is `False`. A metric with a bootstrap interval in the results
    (`<key>_low`, `<key>_high`) is printed with it, e.g. `3.49 [2.90, 4.10]`; an interval that does not contain
    its estimate is marked `*` and explained under the table (an estimator biased upwards by sampling noise, whose
    resamples are biased once more: see `mbls_nlp.calibration`).

    Args:
        results (`dict`): the `all_results.json` of [`train_calibrate_and_test`].

    Returns:
        `str`: the table (what `results.md` holds).
    """
    header = ["split", *(f"{title} (%)" if pct else title for _, title, pct in TABLE_METRICS), "T"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    outside = []
    for split in ("validation", "test"):
        for scaled in (False, True):
            prefix = f"{split}_ts_" if scaled else f"{split}_"
            if f"{prefix}accuracy" not in results:
                continue
            cells = [f"{split}, after TS" if scaled else f"{split}, before TS"]
            for name, _, pct in TABLE_METRICS:
                value, low, high = (results.get(prefix + name + end) for end in ("", "_low", "_high"))
                cell = "" if value is None else _value(value, pct)
                if value is not None and low is not None and high is not None:
                    cell += f" [{_value(low, pct)}, {_value(high, pct)}]"
                    if not low <= value <= high:
                        cell += "*"
                        outside.append(name)
                cells.append(cell)
            cells.append(f"{results['temperature']:.4f}" if scaled and "temperature" in results else "1")
            lines.append("| " + " | ".join(cells) + " |")
    if outside:
        names = ", ".join(dict.fromkeys(outside))
        lines += [
            "",
            f"\\* The interval does not contain the estimate ({names}): typically an estimator biased upwards by "
            "sampling noise at this size, whose bootstrap resamples (which repeat examples) are biased once more, so "
            "the percentile interval shows the spread, shifted by about the bias (see `mbls_nlp.calibration`).",
        ]
    if results.get("calibration_meaningful") is False:
        lines += ["", f"**Calibration metrics not meaningful**: {results.get('calibration_warning', '')}."]
    return "\n".join(lines) + "\n"


def _report_to_integrations(trainer: CalibrationTrainer, results: dict[str, Any]) -> None:
    """Send the final validation and test metrics, and the test reliability diagrams, to the `report_to`
    integrations (TensorBoard, W&B, ...) under `eval/...` and `test/...`; `trainer_state.json` is not changed."""
    integrations = [
        callback
        for callback in trainer.callback_handler.callbacks
        if type(callback).__module__.startswith("transformers.integrations")
        and not isinstance(callback, (ProgressCallback, PrinterCallback))
    ]
    if not integrations or not trainer.is_world_process_zero():
        return
    # Integrations name `eval_*` keys `eval/*` and `test_*` keys `test/*`, any other `train/*`: the validation
    # metrics after training go with the validation curve of the epochs, as `eval_*`.
    logs = {}
    for key, value in results.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key.startswith("validation_"):
            logs["eval_" + key[len("validation_") :]] = value
        elif key.startswith("test_"):
            logs[key] = value
    logs["test_temperature"] = results["temperature"]
    for callback in integrations:
        callback.on_log(trainer.args, trainer.state, trainer.control, logs=logs)
    for callback in integrations:
        writer = getattr(callback, "tb_writer", None)
        if writer is None:
            continue
        for name, tag in (("reliability_test.png", "test/reliability_diagram"),
                          ("reliability_test_ts.png", "test/reliability_diagram_ts")):  # fmt: skip
            path = os.path.join(trainer.args.output_dir, name)
            if os.path.isfile(path):
                from PIL import Image

                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                writer.add_image(tag, pixels, trainer.state.global_step, dataformats="HWC")
        writer.flush()


_CITATION = """@inproceedings{liu2022mbls,
  title     = {The Devil is in the Margin: Margin-based Label Smoothing for Network Calibration},
  author    = {Liu, Bingyuan and Ben Ayed, Ismail and Galdran, Adrian and Dolz, Jose},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2022}
}"""


def model_card_section(trainer: CalibrationTrainer) -> str:
    """The calibration section of the model card that [`CalibrationTrainer.create_model_card`] appends: the loss
    and its hyper-parameters, the dataset, the results table (`trainer.calibration_results`), the temperature and
    how it is applied, the reliability diagram and the citation."""
    results = trainer.calibration_results or {}
    config = getattr(trainer.model, "config", None)
    lines = ["## Calibration", "", f"- Training loss: `{trainer.loss_description()}` (mbls-nlp `CalibrationTrainer`)."]
    dataset = results.get("dataset")
    if dataset:
        lines.append(f"- Dataset: {dataset}.")
    if trainer.temperature is not None:
        lines.append(
            f"- Temperature scaling: T = {trainer.temperature:.4f}, fitted on the validation split "
            f"({trainer.args.temperature_method}), never on test."
        )
        if getattr(config, "calibration_temperature_folded", False) or results.get("temperature_folded"):
            lines.append(
                "- The saved classification head has `1/T` folded in (`config.calibration_temperature_folded`): "
                "the model's softmax is the calibrated probability in any transformers code path; multiply its "
                "logits by `config.calibration_temperature` for the unscaled ones."
            )
        else:
            lines.append(
                "- The saved logits are unscaled: divide them by `config.calibration_temperature` for calibrated "
                "probabilities."
            )
    if results:
        lines += ["", "### Results", "", results_table(results).rstrip()]
    if os.path.isfile(os.path.join(trainer.args.output_dir, "reliability_test_ts.png")):
        lines += ["", "![Reliability diagram of the test set after temperature scaling](reliability_test_ts.png)"]
    lines += ["", "### Citation", "", "```bibtex", _CITATION, "```"]
    return "\n".join(lines)


def train_calibrate_and_test(
    trainer: CalibrationTrainer,
    validation_dataset,
    test_dataset,
    search_args: SearchArguments | None = None,
    save_predictions: bool = False,
    dataset_name: str | None = None,
    model_card_kwargs: dict[str, Any] | None = None,
    test_n_bootstrap: int = 0,
) -> ProtocolOutput:
    r"""
    The evaluation protocol of the recipes, in order: train, or with `search_args.search_hparams` choose the loss's
    hyper-parameters on validation and go on with the chosen candidate's trained model (or train it again with
    `search_args.search_keep_models=False`), predict validation once and fit the temperature on those logits, predict
    test once (the test data enters only here), flag a model that did not learn ([`learned_something`]), save the
    model with the temperature folded into its classification head (see [`~mbls_nlp.temperature.fold_temperature`];
    a model without a linear head is saved unfolded, with a warning), and write `all_results.json`, `results.md`
    ([`results_table`], also printed), `trainer_state.json` and the model card `README.md` to
    `trainer.args.output_dir`. With `report_to` integrations, the final metrics and the test reliability diagrams
    are logged to them.

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
        dataset_name (`str`, *optional*):
            How the model card names the data (a Hub name or the local files).
        model_card_kwargs (`dict`, *optional*):
            Keyword arguments of `Trainer.create_model_card` (`tasks`, `tags`, `finetuned_from`, ...).
        test_n_bootstrap (`int`, *optional*, defaults to 0):
            Bootstrap resamples for the intervals of the test metrics (`test_<name>_low`, `test_<name>_high`, and
            `test_ts_...`; see [`~mbls_nlp.calibration.calibration_report`]) at
            `trainer.args.calibration_confidence`, seeded by `trainer.args.seed`, in place of
            `trainer.args.calibration_n_bootstrap` for the test prediction only; 0 keeps the latter. The recipes
            pass `--test_n_bootstrap` (1000 by default).

    Returns:
        [`ProtocolOutput`]: the metrics written to `all_results.json` (the fitted temperature once, as
        `temperature`; the split sizes as `train_samples`, `validation_samples` and `test_samples`) and the test
        predictions.
    """
    args = trainer.args
    names = ("test_n_bootstrap", "calibration_confidence", "seed")  # fail before training, not after it
    _check_bootstrap(test_n_bootstrap, args.calibration_confidence, args.seed, names=names)
    search, train_metrics = {}, None
    if search_args is not None and search_args.search_hparams:
        if search_args.search_keep_models and args.resume_from_checkpoint:
            raise ValueError(
                "`resume_from_checkpoint` continues one training, but a search trains its candidates from the start "
                "and keeps the chosen one (`search_keep_models=True`): drop `resume_from_checkpoint`, or pass "
                "`search_keep_models=False` to resume the final training of the chosen candidate."
            )
        # An earlier run's checkpoints in output_dir: refused (or deleted) before the search, as train() would.
        trainer._claim_output_dir(args.output_dir)
        found = search_calibration_hparams(
            trainer,
            search_args.search_grid,
            max_accuracy_drop=search_args.max_accuracy_drop,
            selection_metric=search_args.selection_metric,
            keep_models=search_args.search_keep_models,
        )
        search, train_metrics = found.summary(), found.train_metrics
    if train_metrics is None:
        train_metrics = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint).metrics
    # else the search left its chosen candidate in the trainer, trained: the model whose validation numbers chose it
    trainer.temperature = None  # the validation logits below are those of the trained model, unscaled
    validation_output = trainer.predict(validation_dataset, metric_key_prefix="validation")  # validation, once
    trainer.fit_temperature(predictions=validation_output)
    validation = trainer.evaluate_predictions(validation_output, metric_key_prefix="validation")
    per_evaluation = args.calibration_n_bootstrap
    if test_n_bootstrap:
        args.calibration_n_bootstrap = test_n_bootstrap  # the final test report only, not the per-epoch ones
    try:
        test_output = trainer.predict(test_dataset, metric_key_prefix="test")
    finally:
        args.calibration_n_bootstrap = per_evaluation
    # The trainer reports the temperature with every evaluation (validation_temperature, test_temperature); the
    # results carry it once.
    validation.pop("validation_temperature", None)
    test = {key: value for key, value in test_output.metrics.items() if key != "test_temperature"}
    test_output = test_output._replace(metrics=test)
    # The split sizes, as transformers' example scripts log them (`train_samples`, `eval_samples`): what a reader
    # of the numbers needs for their noise (a validation accuracy's standard error, the search's accuracy test).
    splits = {"train": trainer.train_dataset, "validation": validation_dataset, "test": test_dataset}
    sizes = {f"{split}_samples": len(data) for split, data in splits.items() if hasattr(data, "__len__")}
    results = {**train_metrics, **search, **validation, **test, **sizes, "temperature": trainer.temperature}
    reason = learned_something(
        test["test_accuracy"], int(_logits(test_output.predictions).shape[-1]), _final_train_loss(trainer)
    )
    results["calibration_meaningful"] = reason is None
    if reason is not None:
        results["calibration_warning"] = reason
        logger.warning("The calibration metrics are not meaningful: %s.", reason)
    trainer.calibration_results = {**results, "dataset": dataset_name}

    model = trainer.accelerator.unwrap_model(trainer.model)
    with temperature_folded(model, trainer.temperature) as folded:
        if not folded:
            logger.warning(
                "%s has no linear classification head to fold the temperature into: it is saved with unscaled "
                "logits; divide them by config.calibration_temperature (%.4f) for calibrated probabilities.",
                type(model).__name__,
                trainer.temperature,
            )
        trainer.save_model()  # the config carries calibration_temperature (and calibration_temperature_folded)
        trainer.create_model_card(**(model_card_kwargs or {}))
    trainer.save_metrics("all", results, combined=False)  # all_results.json, written by the main process only
    trainer.save_state()  # trainer_state.json: the per-epoch evaluation history
    table = results_table(results)
    if trainer.is_world_process_zero():
        with open(os.path.join(trainer.args.output_dir, RESULTS_TABLE_FILE), "w", encoding="utf-8") as f:
            f.write(table)
        if save_predictions:
            np.savez_compressed(
                os.path.join(trainer.args.output_dir, PREDICTIONS_FILE),
                logits=_logits(test_output.predictions).astype(np.float32),
                labels=np.asarray(test_output.label_ids),
            )
    _report_to_integrations(trainer, results)
    trainer.accelerator.print("\n" + table)
    return ProtocolOutput(metrics=results, test_predictions=test_output)


@dataclass
class RunPredictions:
    """A finished run's test predictions, as [`load_test_predictions`] reads them from its output folder.

    Args:
        logits (`np.ndarray`): the float32 test logits before temperature scaling, `(N, C)` or `(N, C, d1, ...)`.
        labels (`np.ndarray`): the test labels.
        temperature (`float`): the temperature fitted on validation (`all_results.json`).
    """

    logits: np.ndarray
    labels: np.ndarray
    temperature: float

    @property
    def scaled(self) -> np.ndarray:
        """The logits after temperature scaling."""
        return self.logits / self.temperature  # float32, as the trainer scales them


def load_test_predictions(output_dir: str | os.PathLike) -> RunPredictions | None:
    """The test predictions of a run of [`train_calibrate_and_test`] with `save_predictions=True`
    (`predictions_test.npz` and the `temperature` of `all_results.json`), or `None` when the folder has no
    `predictions_test.npz` (a run without `--save_predictions`)."""
    path = os.path.join(output_dir, PREDICTIONS_FILE)
    if not os.path.isfile(path):
        return None
    with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as f:
        temperature = float(json.load(f)["temperature"])
    with np.load(path) as saved:
        return RunPredictions(logits=saved["logits"], labels=saved["labels"], temperature=temperature)


#: The comparisons of [`paired_comparisons`]: key -> (scores of the run, scores of the baseline).
PAIRED_COMPARISONS = {
    "vs_baseline": ("logits", "logits"),  # run - baseline
    "vs_baseline_ts": ("logits", "scaled"),  # run - (baseline + TS)
    "ts_vs_baseline_ts": ("scaled", "scaled"),  # (run + TS) - (baseline + TS)
}


def paired_comparisons(
    run: RunPredictions,
    baseline: RunPredictions,
    *,
    metrics=None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    r"""
    A run's test metrics minus a baseline's (e.g. CE of the same seed) on the same test examples, each with its
    paired percentile bootstrap interval ([`~mbls_nlp.calibration.paired_bootstrap`]): against the baseline, against
    the baseline after temperature scaling (the baseline a user would pick), and the run after temperature scaling
    against the baseline after it.

    Args:
        run ([`RunPredictions`]): the run's test predictions.
        baseline ([`RunPredictions`]): the baseline's, on the same test examples (the same labels).
        metrics (`list[str]`, *optional*): names among `mbls_nlp.calibration.METRIC_NAMES` (default: all).
        n_bootstrap (`int`, *optional*, defaults to 1000): paired resamples (>= 1).
        confidence (`float`, *optional*, defaults to 0.95): coverage of the intervals, in (0, 1).
        seed (`int`, *optional*, defaults to 0): seed of the resampling.

    Returns:
        `dict[str, dict[str, float]]`: for each key of `PAIRED_COMPARISONS` (`vs_baseline`, `vs_baseline_ts`,
        `ts_vs_baseline_ts`), [`~mbls_nlp.calibration.paired_bootstrap`]'s `<name>`, `<name>_low`, `<name>_high`.

    Raises:
        `ValueError`: when the two runs were not tested on the same examples (different labels).
    """
    if run.labels.shape != baseline.labels.shape or not np.array_equal(run.labels, baseline.labels):
        raise ValueError(
            "`run` and `baseline` must be predictions of the same test examples (the same labels, in the same "
            f"order), got labels of shapes {run.labels.shape} and {baseline.labels.shape} that differ."
        )
    settings = {"metrics": metrics, "n_bootstrap": n_bootstrap, "confidence": confidence, "seed": seed}
    return {
        key: paired_bootstrap(getattr(run, mine), getattr(baseline, theirs), run.labels, **settings)
        for key, (mine, theirs) in PAIRED_COMPARISONS.items()
    }
