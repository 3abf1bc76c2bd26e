"""A CIFAR-style ResNet (3x3 stride-1 stem, no max-pool) as a transformers model, trained from scratch."""

from .configuration_cifar_resnet import CIFAR_RESNET_PRESETS, CifarResNetConfig
from .modeling_cifar_resnet import (
    CifarResNetForImageClassification,
    CifarResNetModel,
    CifarResNetPreTrainedModel,
)

__all__ = [
    "CIFAR_RESNET_PRESETS",
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "CifarResNetPreTrainedModel",
]
