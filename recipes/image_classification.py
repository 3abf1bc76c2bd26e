"""Fine-tune an image classifier with a calibration loss (MbLS by default) and report its calibration.

Trains on `train`, fits temperature scaling on `validation` (carved from train when the data has none), and writes to
`--output_dir` the model, its image processor and temperature, `all_results.json` (`test_accuracy`, `test_ece`, ...,
the same after temperature scaling as `test_ts_*`, and `temperature`) and reliability diagrams of the test set before
(`reliability_test.png`) and after (`reliability_test_ts.png`) temperature scaling.

Examples:

    # CIFAR-10 from the Hub (uoft-cs/cifar10) with a pretrained ResNet-50, on every GPU of the machine:
    accelerate launch recipes/image_classification.py --model_name_or_path microsoft/resnet-50 \\
        --output_dir runs/cifar10-mbls --num_train_epochs 10 --learning_rate 1e-3

    # Offline, from local Parquet files in the Hub schema:
    accelerate launch recipes/image_classification.py --model_name_or_path path/to/local/model \\
        --train_file '../shared/data/cifar10/train-*.parquet' --test_file ../shared/data/cifar10/test.parquet \\
        --output_dir runs/cifar10-mbls

    # Tiny-ImageNet by name, or a local image folder (train/<class>/*.png, test/<class>/*.png):
    accelerate launch recipes/image_classification.py --dataset_name zh-plus/tiny-imagenet --test_split_name valid \\
        --model_name_or_path microsoft/resnet-50 --output_dir runs/tiny-imagenet
    accelerate launch recipes/image_classification.py --dataset_name path/to/image_folder \\
        --model_name_or_path microsoft/resnet-50 --output_dir runs/my-images

    # Two CPU processes:
    accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/image_classification.py ...

Every flag: `python recipes/image_classification.py --help`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, set_seed

from mbls_nlp import CalibrationConfig, CalibrationTrainer
from mbls_nlp.data import image_column_of, load_classification_splits, random_crop_and_flip
from mbls_nlp.hparam_search import SearchArguments, parse_search_grid, search_calibration_hparams

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "An AutoModelForImageClassification checkpoint (Hub name or local folder) with its processor."
        }
    )
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Replace a pretrained head whose number of classes differs (e.g. ImageNet's)."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default="uoft-cs/cifar10",
        metadata={"help": "Hub dataset name or local dataset folder; ignored when local files are given."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of --dataset_name."})
    train_file: str | None = field(
        default=None, metadata={"help": "Local train file(s): parquet (glob patterns allowed), csv or json(l)."}
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
    image_column: str | None = field(default=None, metadata={"help": "Column holding the images; default: the first."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels (integers or strings)."})
    crop_padding: int = field(
        default=4, metadata={"help": "Train-time augmentation: random crop after zero padding of this many pixels."}
    )
    no_augmentation: bool = field(default=False, metadata={"help": "Turn the random crop and flip off."})
    validation_split_percentage: float = field(
        default=10.0, metadata={"help": "Share of train held out as validation when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of train."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of validation."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Keep a random subset of test."})


def parse_args(argv: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, SearchArguments, CalibrationConfig))
    # Recipe defaults that differ from TrainingArguments': the diagrams are part of the recipe's output, and the
    # image column must reach the transform.
    parser.set_defaults(save_reliability_diagrams=True, report_to="none", remove_unused_columns=False)
    model_args, data_args, search_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if search_args.search_hparams:
        parse_search_grid(search_args.search_grid, training_args.loss_type)  # fail on a bad grid before any loading
    return model_args, data_args, search_args, training_args


def load_processor_and_model_init(model_args: ModelArguments, label_names):
    """The image processor and a function that returns a fresh model (the search trains one per candidate)."""
    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names))}
    labels["label2id"] = {name: i for i, name in labels["id2label"].items()}
    processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)

    def model_init():
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **labels
        )

    return processor, model_init


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
    label_names = raw["train"].features[data_args.label_column].names
    image_column = image_column_of(raw["train"], data_args.image_column)

    processor, model_init = load_processor_and_model_init(model_args, label_names)

    def preprocess(batch, augment: bool):
        images = batch[image_column]
        if augment:
            images = random_crop_and_flip(images, padding=data_args.crop_padding)
        else:
            images = [image.convert("RGB") if hasattr(image, "convert") else image for image in images]
        encoded = processor(images, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": torch.tensor(batch[data_args.label_column])}

    # On-the-fly transforms: the augmentation draws new crops every epoch.
    data = raw
    data["train"].set_transform(lambda batch: preprocess(batch, augment=not data_args.no_augmentation))
    for split in ("validation", "test"):
        data[split].set_transform(lambda batch: preprocess(batch, augment=False))

    trainer = CalibrationTrainer(
        model_init=model_init,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=processor,
    )
    return train_calibrate_and_test(trainer, data, search_args)


def train_calibrate_and_test(trainer: CalibrationTrainer, data, search_args: SearchArguments) -> dict[str, float]:
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
    test = trainer.predict(data["test"], metric_key_prefix="test").metrics
    results = {**train_result.metrics, **search, **validation, **test, "temperature": trainer.temperature}
    trainer.save_metrics("all", results)  # all_results.json, written by the main process only
    trainer.accelerator.print({key: value for key, value in test.items() if "loss" not in key})
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
