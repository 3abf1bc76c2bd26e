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

import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from mbls_nlp import CalibrationTrainer
from mbls_nlp.data import image_column_of, random_crop_and_flip
from mbls_nlp.protocol import (
    DataArguments,
    HubUnreachableError,
    label_config,
    parse_recipe_args,
    train_calibrate_and_test,
)


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
class ImageDataArguments(DataArguments):
    local_files_hint = (
        "--train_file '../shared/data/cifar10/train-*.parquet' --test_file ../shared/data/cifar10/test.parquet "
        "(CIFAR-10 as Parquet files in the Hub schema, see recipes/README.md)"
    )
    image_column: str | None = field(default=None, metadata={"help": "Column holding the images; default: the first."})
    crop_padding: int = field(
        default=4, metadata={"help": "Train-time augmentation: random crop after zero padding of this many pixels."}
    )
    augmentation: bool = field(
        default=True, metadata={"help": "Train-time random crop and flip; --augmentation false turns them off."}
    )
    check_images: bool = field(
        default=True,
        metadata={
            "help": "Decode every image kept once before training (about 2.5 s for CIFAR-10's 10,000 test images on "
            "a busy 2-core CPU), so that a corrupted one is an error naming its file and row, not a crash "
            "mid-training; --check_images false skips it."
        },
    )


def parse_args(argv: list[str] | None = None):
    # The image column must reach the transform: remove_unused_columns off.
    return parse_recipe_args(
        ModelArguments, ImageDataArguments, argv, dataset_name="uoft-cs/cifar10", remove_unused_columns=False
    )


def load_processor_and_model_init(model_args: ModelArguments, labels):
    """The image processor and a function that returns a fresh model (the search trains one per candidate)."""
    processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)

    def model_init():
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **labels
        )

    return processor, model_init


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, search_args, training_args = parse_args(argv)
    raw = data_args.load_splits(
        training_args, image_column=data_args.image_column, check_images=data_args.check_images
    )
    image_column = image_column_of(raw["train"], data_args.image_column)
    labels = label_config(raw["train"].features[data_args.label_column].names)

    processor, model_init = load_processor_and_model_init(model_args, labels)

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
    data["train"].set_transform(lambda batch: preprocess(batch, augment=data_args.augmentation))
    for split in ("validation", "test"):
        data[split].set_transform(lambda batch: preprocess(batch, augment=False))

    trainer = CalibrationTrainer(
        model_init=model_init,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=processor,
    )
    output = train_calibrate_and_test(
        trainer,
        data["validation"],
        data["test"],
        search_args,
        save_predictions=data_args.save_predictions,
        dataset_name=data_args.describe_dataset(),
        model_card_kwargs={"tasks": "image-classification"},
    )
    return output.metrics


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except HubUnreachableError as error:
        sys.exit(f"error: {error}")  # one line, no traceback: the message says what to pass
