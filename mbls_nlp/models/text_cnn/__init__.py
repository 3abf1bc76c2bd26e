"""The MbLS paper's text CNN (reference `GlobalPoolingCNN`) as a transformers model."""

from .configuration_text_cnn import TextCNNConfig
from .modeling_text_cnn import (
    TextCNNForSequenceClassification,
    TextCNNModel,
    TextCNNPreTrainedModel,
    load_pretrained_embeddings,
)
from .tokenization_text_cnn import KERAS_FILTERS, train_word_tokenizer

__all__ = [
    "KERAS_FILTERS",
    "TextCNNConfig",
    "TextCNNForSequenceClassification",
    "TextCNNModel",
    "TextCNNPreTrainedModel",
    "load_pretrained_embeddings",
    "train_word_tokenizer",
]
