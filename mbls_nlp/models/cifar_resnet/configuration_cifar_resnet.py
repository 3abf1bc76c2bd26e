"""Configuration of the CIFAR-style ResNet (3x3 stride-1 stem, no max-pool) that the MbLS paper trains on CIFAR-10."""

from transformers import PretrainedConfig

LAYER_TYPES = ("basic", "bottleneck")

#: The usual CIFAR ResNets. `resnet20` ... `resnet110`: He et al. 2016 (sec. 4.2), three stages of 16/32/64 channels
#: with n basic blocks each (depth 6n + 2). `resnet50`: the network of the MbLS paper's CIFAR-10 runs (by-liu/MbLS
#: `configs/model/resnet50_cifar.yaml`): ImageNet ResNet-50's bottleneck stages [3, 4, 6, 3] of widths 64...512
#: (expansion 4) behind a 3x3 stride-1 stem of 64 channels.
CIFAR_RESNET_PRESETS: dict[str, dict] = {
    "resnet20": {"depths": [3, 3, 3]},
    "resnet32": {"depths": [5, 5, 5]},
    "resnet56": {"depths": [9, 9, 9]},
    "resnet110": {"depths": [18, 18, 18]},
    "resnet50": {
        "embedding_size": 64,
        "hidden_sizes": [64, 128, 256, 512],
        "depths": [3, 4, 6, 3],
        "layer_type": "bottleneck",
    },
}


def _positive_int_list(name: str, value) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else None
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"`{name}` must be a non-empty list of positive integers, got {value!r}.")
    return values


class CifarResNetConfig(PretrainedConfig):
    r"""
    Configuration of [`CifarResNetModel`] and [`CifarResNetForImageClassification`]: a ResNet for small images, as
    trained from scratch on CIFAR (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2).
    Unlike transformers' `ResNetConfig`, whose stem is a 7x7 stride-2 convolution and a max-pool (ImageNet), the stem
    is one 3x3 stride-1 convolution, so a 32x32 image keeps its resolution in the first stage. The first stage has
    stride 1, every later stage halves the resolution in its first block; a global average pooling and a linear
    classifier follow. A shortcut that changes shape is a 1x1 convolution with batch norm (He et al.'s option B).

    The defaults are ResNet-20 (`depths=[3, 3, 3]`, 16/32/64 channels, basic blocks); [`CIFAR_RESNET_PRESETS`] and
    [`CifarResNetConfig.from_preset`] give ResNet-32/56/110 and the MbLS paper's ResNet-50.

    Args:
        num_channels (`int`, *optional*, defaults to `3`):
            Channels of the input images.
        embedding_size (`int`, *optional*, defaults to `16`):
            Output channels of the 3x3 stem convolution.
        hidden_sizes (`list[int]`, *optional*, defaults to `[16, 32, 64]`):
            Width of each stage: the output channels of a basic block, the inner channels of a bottleneck block
            (whose output is 4 times wider).
        depths (`list[int]`, *optional*, defaults to `[3, 3, 3]`):
            Number of blocks of each stage; same length as `hidden_sizes`.
        layer_type (`str`, *optional*, defaults to `"basic"`):
            `"basic"` (two 3x3 convolutions) or `"bottleneck"` (1x1, 3x3, 1x1 with expansion 4).
        num_labels (`int`, *optional*, defaults to `10`):
            Number of classes (CIFAR-10's).

    Examples:

    ```python
    >>> from mbls_nlp.models import CifarResNetConfig, CifarResNetForImageClassification
    >>> config = CifarResNetConfig.from_preset("resnet20")
    >>> config.depth, config.hidden_sizes
    (20, [16, 32, 64])
    >>> model = CifarResNetForImageClassification(config)

    ```
    """

    model_type = "cifar_resnet"

    def __init__(
        self,
        num_channels: int = 3,
        embedding_size: int = 16,
        hidden_sizes: list[int] | tuple[int, ...] = (16, 32, 64),
        depths: list[int] | tuple[int, ...] = (3, 3, 3),
        layer_type: str = "basic",
        **kwargs,
    ):
        for name, value in (("num_channels", num_channels), ("embedding_size", embedding_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        hidden_sizes = _positive_int_list("hidden_sizes", hidden_sizes)
        depths = _positive_int_list("depths", depths)
        if len(hidden_sizes) != len(depths):
            raise ValueError(
                f"`hidden_sizes` and `depths` must have one entry per stage, got {len(hidden_sizes)} and "
                f"{len(depths)}."
            )
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"`layer_type` must be one of {LAYER_TYPES}, got {layer_type!r}.")
        self.num_channels = num_channels
        self.embedding_size = embedding_size
        self.hidden_sizes = hidden_sizes
        self.depths = depths
        self.layer_type = layer_type
        # CIFAR-10 by default; an explicit num_labels or id2label (e.g. from a saved config) wins.
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 10
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "CifarResNetConfig":
        """The configuration of a named network of [`CIFAR_RESNET_PRESETS`] (`resnet20`, `resnet32`, `resnet56`,
        `resnet110`, `resnet50`); `kwargs` (e.g. `num_labels`, `id2label`) are passed on."""
        if name not in CIFAR_RESNET_PRESETS:
            raise ValueError(f"`name` must be one of {tuple(CIFAR_RESNET_PRESETS)}, got {name!r}.")
        return cls(**{**CIFAR_RESNET_PRESETS[name], **kwargs})

    @property
    def expansion(self) -> int:
        """Ratio of a block's output channels to its stage width: 1 for basic blocks, 4 for bottlenecks."""
        return 4 if self.layer_type == "bottleneck" else 1

    @property
    def hidden_size(self) -> int:
        """Channels of the last feature map, the input width of the classifier."""
        return self.hidden_sizes[-1] * self.expansion

    @property
    def depth(self) -> int:
        """The depth in the network's name: weighted layers, i.e. the stem, every block's convolutions and the
        classifier (shortcut projections not counted), e.g. 20 for `depths=[3, 3, 3]` with basic blocks."""
        convs_per_block = 3 if self.layer_type == "bottleneck" else 2
        return 2 + convs_per_block * sum(self.depths)


__all__ = ["CIFAR_RESNET_PRESETS", "CifarResNetConfig"]
