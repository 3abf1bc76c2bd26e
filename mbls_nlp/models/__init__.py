"""Hugging Face models that the recipes need and transformers lacks.

Importing this package registers them with the Auto classes, so that ``AutoConfig.for_model("text_cnn")``,
``AutoModel`` and ``AutoModelForSequenceClassification.from_pretrained(folder)`` work on saved text CNNs, and
``AutoModelForImageClassification.from_pretrained(folder)`` on saved CIFAR ResNets.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification

from .cifar_resnet import (
    CIFAR_RESNET_PRESETS,
    CifarResNetConfig,
    CifarResNetForImageClassification,
    CifarResNetModel,
    CifarResNetPreTrainedModel,
)
from .text_cnn import (
    TextCNNConfig,
    TextCNNForSequenceClassification,
    TextCNNModel,
    TextCNNPreTrainedModel,
    load_pretrained_embeddings,
    train_word_tokenizer,
)

# exist_ok: re-importing (e.g. importlib.reload in a notebook) must not fail on an already registered type.
AutoConfig.register(TextCNNConfig.model_type, TextCNNConfig, exist_ok=True)
AutoModel.register(TextCNNConfig, TextCNNModel, exist_ok=True)
AutoModelForSequenceClassification.register(TextCNNConfig, TextCNNForSequenceClassification, exist_ok=True)
AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
AutoModel.register(CifarResNetConfig, CifarResNetModel, exist_ok=True)
AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)

__all__ = [
    "CIFAR_RESNET_PRESETS",
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "CifarResNetPreTrainedModel",
    "TextCNNConfig",
    "TextCNNForSequenceClassification",
    "TextCNNModel",
    "TextCNNPreTrainedModel",
    "load_pretrained_embeddings",
    "train_word_tokenizer",
]
