"""The MbLS paper's text CNN (reference `GlobalPoolingCNN`) as a transformers model."""

from .configuration_text_cnn import TextCNNConfig
from .modeling_text_cnn import (
    TextCNNForSequenceClassification,
    TextCNNModel,
    TextCNNPreTrainedModel,
    load_pretrained_embeddings,
)

__all__ = [
    "TextCNNConfig",
    "TextCNNForSequenceClassification",
    "TextCNNModel",
    "TextCNNPreTrainedModel",
    "load_pretrained_embeddings",
]
