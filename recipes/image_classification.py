"""Fine-tune an image classifier with a calibration loss (MbLS by default) and report its calibration.

Trains on `train`, fits temperature scaling on `validation` (carved from train when the data has none), and writes to
`--output_dir` the model, its image processor and temperature, `all_results.json` (`test_accuracy`, `test_ece`, ...,
the same after temperature scaling as `test_ts_*`, and `temperature`) and reliability diagrams of the test set before
(`reliability_test.png`) and after (`reliability_test_ts.png`) temperature scaling.

Without `--model_name_or_path` it trains a CIFAR-style ResNet from scratch (`--resnet_preset`, ResNet-20 by default;
the paper's CIFAR-10 network is `resnet50`) on 32x32 images normalised with CIFAR-10's mean and std, with the
defaults `CIFAR_RESNET_DEFAULTS` of `mbls_nlp/recipe_defaults.py` (SGD, momentum 0.9, lr 0.1, weight decay 5e-4,
batch 128, cosine decay) applied only to the flags not given (see `mbls_nlp.protocol.parse_recipe_args`). A
checkpoint given by `--model_name_or_path` brings its own image processor and trains at `TrainingArguments`'
defaults.

Examples:

    # CIFAR-10 from the Hub (uoft-cs/cifar10), a CIFAR ResNet-20 trained from scratch, on every GPU of the machine:
    accelerate launch recipes/image_classification.py --output_dir runs/cifar10-mbls

    # Offline, from local Parquet files in the Hub schema:
    accelerate launch recipes/image_classification.py \\
        --train_file '../shared/data/cifar10/train-*.parquet' --test_file ../shared/data/cifar10/test.parquet \\
        --output_dir runs/cifar10-mbls

    # A pretrained checkpoint (Hub name or local folder) instead, fine-tuned at a lower learning rate:
    accelerate launch recipes/image_classification.py --model_name_or_path microsoft/resnet-50 \\
        --output_dir runs/cifar10-resnet50-mbls --num_train_epochs 10 --learning_rate 1e-3

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
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.models.vit import ViTImageProcessorPil

from mbls_nlp import CalibrationTrainer
from mbls_nlp.data import image_column_of, random_crop_and_flip
from mbls_nlp.models import CIFAR_RESNET_PRESETS, CifarResNetConfig, CifarResNetForImageClassification
from mbls_nlp.protocol import (
    DataArguments,
    HubUnreachableError,
    label_config,
    parse_recipe_args,
    train_calibrate_and_test,
)
from mbls_nlp.recipe_defaults import CIFAR10_MEAN, CIFAR10_STD, CIFAR_IMAGE_SIZE, CIFAR_RESNET_DEFAULTS

ARCHITECTURES = ("auto", "cifar_resnet")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "An AutoModelForImageClassification checkpoint (Hub name or local folder) with its processor. "
            "Leave unset for a CIFAR-style ResNet trained from scratch (--resnet_preset)."
        },
    )
    architecture: str = field(
        default="auto",
        metadata={
            "help": "'auto': the CIFAR ResNet when --model_name_or_path is unset, else that checkpoint; "
            "'cifar_resnet': always the CIFAR ResNet.",
            "choices": ARCHITECTURES,
        },
    )
    resnet_preset: str = field(
        default="resnet20",
        metadata={
            "help": "CIFAR ResNet only: 'resnet20', 'resnet32', 'resnet56', 'resnet110' (He et al. 2016, basic "
            "blocks, 16/32/64 channels) or 'resnet50' (the MbLS paper's CIFAR-10 network, bottleneck blocks; about "
            "30x the compute of resnet20). Every one has a 3x3 stride-1 stem and no max-pool.",
            "choices": tuple(CIFAR_RESNET_PRESETS),
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Replace a pretrained head whose number of classes differs (e.g. ImageNet's)."}
    )

    @property
    def use_cifar_resnet(self) -> bool:
        return self.architecture == "cifar_resnet" or self.model_name_or_path is None


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


def kind_defaults(model_args: ModelArguments, data_args, search_args, training_args) -> dict[str, Any]:
    """The defaults of the model kind: `CIFAR_RESNET_DEFAULTS` for the CIFAR ResNet, none for a checkpoint."""
    return dict(CIFAR_RESNET_DEFAULTS) if model_args.use_cifar_resnet else {}


def parse_args(argv: list[str] | None = None):
    # The image column must reach the transform: remove_unused_columns off.
    return parse_recipe_args(
        ModelArguments,
        ImageDataArguments,
        argv,
        kind_defaults=kind_defaults,
        dataset_name="uoft-cs/cifar10",
        remove_unused_columns=False,
    )


def describe_model(model_args: ModelArguments) -> str:
    """One line saying which model this run trains."""
    if not model_args.use_cifar_resnet:
        return f"Model: {model_args.model_name_or_path} with its image processor."
    return (
        f"Model: a CIFAR {model_args.resnet_preset} (3x3 stem) trained from scratch, on {CIFAR_IMAGE_SIZE}x"
        f"{CIFAR_IMAGE_SIZE} images normalised with CIFAR-10's mean and std."
    )


def load_processor_and_model_init(model_args: ModelArguments, labels):
    """The image processor and a function that returns a fresh model (the search trains one per candidate)."""
    if model_args.use_cifar_resnet:
        # The PIL backend: torchvision is not a dependency (pyproject.toml).
        processor = ViTImageProcessorPil(
            size={"height": CIFAR_IMAGE_SIZE, "width": CIFAR_IMAGE_SIZE},
            image_mean=list(CIFAR10_MEAN),
            image_std=list(CIFAR10_STD),
        )
        config = CifarResNetConfig.from_preset(model_args.resnet_preset, **labels)

        def model_init():
            return CifarResNetForImageClassification(config)

        return processor, model_init
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
    if training_args.should_log:
        print(describe_model(model_args), flush=True)

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
        test_n_bootstrap=data_args.test_n_bootstrap,
        dataset_name=data_args.describe_dataset(raw["validation"], training_args.seed),
        model_card_kwargs={"tasks": "image-classification"},
    )
    return output.metrics


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except HubUnreachableError as error:
        sys.exit(f"error: {error}")  # one line, no traceback: the message says what to pass
