"""A CIFAR-style ResNet (He et al. 2016, sec. 4.2) as a Hugging Face image classifier.

transformers' `ResNetModel` cannot be configured into it: its embedder is a fixed 7x7 stride-2 convolution and a
max-pool (ImageNet), which leaves an 8x8 map of a 32x32 image before the first stage. Here the stem is one 3x3
stride-1 convolution, as in the CIFAR networks of the MbLS paper's experiments (trained from scratch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from .configuration_cifar_resnet import CifarResNetConfig


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    # No convolution bias: the batch norm that follows has its own.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class CifarResNetBasicBlock(nn.Module):
    """Two 3x3 convolutions (the first with the block's stride) with batch norm; ReLU after the residual sum."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.layers = nn.Sequential(
            _conv_bn(in_channels, width, 3, stride), nn.ReLU(inplace=True), _conv_bn(width, width, 3)
        )
        # He et al.'s option B: a 1x1 projection where the shape changes, the identity elsewhere.
        self.shortcut = _conv_bn(in_channels, width, 1, stride) if stride != 1 or in_channels != width else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden if self.shortcut is None else self.shortcut(hidden)
        return F.relu(self.layers(hidden) + residual)


class CifarResNetBottleNeckBlock(nn.Module):
    """1x1 reduction to `width`, 3x3 (with the block's stride), 1x1 expansion to `4 * width`; ReLU after the sum."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.layers = nn.Sequential(
            _conv_bn(in_channels, width, 1),
            nn.ReLU(inplace=True),
            _conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            _conv_bn(width, out_channels, 1),
        )
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = _conv_bn(in_channels, out_channels, 1, stride) if needs_projection else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden if self.shortcut is None else self.shortcut(hidden)
        return F.relu(self.layers(hidden) + residual)


class CifarResNetPreTrainedModel(PreTrainedModel):
    """Weight initialisation and class attributes shared by the CIFAR ResNet models."""

    config_class = CifarResNetConfig
    base_model_prefix = "cifar_resnet"
    main_input_name = "pixel_values"
    input_modalities = "image"
    supports_gradient_checkpointing = False
    _no_split_modules = ["CifarResNetBasicBlock", "CifarResNetBottleNeckBlock"]
    # The loss is a per-batch mean that ignores `num_items_in_batch`: the Trainer divides it by the
    # gradient-accumulation steps itself (transformers 5.x `Trainer.compute_loss` contract).
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        # He et al. 2015 initialisation of the convolutions (fan-out, as torchvision's and transformers' ResNets),
        # batch norm as identity, PyTorch's default for the classifier. The `transformers.initialization` functions
        # skip parameters already loaded by `from_pretrained`.
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class CifarResNetModel(CifarResNetPreTrainedModel):
    r"""
    The CIFAR ResNet without its classifier: the 3x3 stride-1 stem, the residual stages and a global average pooling.

    Args:
        config ([`CifarResNetConfig`]):
            Model configuration.
    """

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.embedder = nn.Sequential(_conv_bn(config.num_channels, config.embedding_size, 3), nn.ReLU(inplace=True))
        block = CifarResNetBottleNeckBlock if config.layer_type == "bottleneck" else CifarResNetBasicBlock
        stages, in_channels = [], config.embedding_size
        for i, (width, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
            blocks = []
            for j in range(depth):
                # The first stage keeps the resolution; every later one halves it in its first block.
                blocks.append(block(in_channels, width, stride=2 if i > 0 and j == 0 else 1))
                in_channels = width * config.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images (e.g. 32x32 CIFAR images from the recipe's image processor).
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.BaseModelOutputWithPoolingAndNoAttention`]
                rather than a tuple; defaults to `config.return_dict`.
            kwargs:
                Ignored; accepted so that callers may pass the usual transformers keyword arguments.

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutputWithPoolingAndNoAttention`]: `last_hidden_state` of
            shape `(batch_size, config.hidden_size, height / 2**(stages - 1), width / 2**(stages - 1))` (8x8 for a
            32x32 image and three stages) and `pooler_output` of shape `(batch_size, config.hidden_size)`, its
            spatial mean.
        """
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
            raise ValueError("`pixel_values` must be a 4D tensor of shape (batch_size, channels, height, width).")
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have config.num_channels={self.config.num_channels} channels, got "
                f"{pixel_values.shape[1]}."
            )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden = self.embedder(pixel_values)
        for stage in self.stages:
            hidden = stage(hidden)
        pooled = hidden.mean(dim=(2, 3))
        if not return_dict:
            return (hidden, pooled)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=hidden, pooler_output=pooled)


class CifarResNetForImageClassification(CifarResNetPreTrainedModel):
    r"""
    The CIFAR ResNet with its classifier, one `nn.Linear` on the pooled features (so that
    `mbls_nlp.temperature.fold_temperature` can fold a temperature into it).

    Args:
        config ([`CifarResNetConfig`]):
            Model configuration.

    Examples:

    ```python
    >>> import torch
    >>> from mbls_nlp.models import CifarResNetConfig, CifarResNetForImageClassification
    >>> model = CifarResNetForImageClassification(CifarResNetConfig(depths=[1, 1, 1], num_labels=10))
    >>> out = model(torch.randn(2, 3, 32, 32), labels=torch.tensor([3, 7]))
    >>> out.logits.shape
    torch.Size([2, 10])

    ```
    """

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cifar_resnet = CifarResNetModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                Normalised images.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)`; when given, the mean cross-entropy is returned as `loss`.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.ImageClassifierOutput`] rather than a tuple;
                defaults to `config.return_dict`.
            kwargs:
                Ignored (e.g. `num_items_in_batch`).

        Returns:
            [`~transformers.modeling_outputs.ImageClassifierOutput`]: `loss` (when `labels` is given) and `logits`
            of shape `(batch_size, num_labels)`; as a tuple `(loss, logits)` or `(logits,)` when
            `return_dict=False`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pooled = self.cifar_resnet(pixel_values, return_dict=True).pooler_output
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels.view(-1).to(logits.device))
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return ImageClassifierOutput(loss=loss, logits=logits)


# Saved models carry `auto_map` in their config and these code files beside their weights, so that
# `AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True)` and
# `pipeline("image-classification", model=folder, trust_remote_code=True)` load them with plain transformers, without
# mbls_nlp (issue 13). This file and configuration_cifar_resnet.py must import nothing but torch, transformers and each
# other.
CifarResNetConfig.register_for_auto_class()
CifarResNetModel.register_for_auto_class("AutoModel")
CifarResNetForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["CifarResNetForImageClassification", "CifarResNetModel", "CifarResNetPreTrainedModel"]
