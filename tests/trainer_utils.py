"""Tiny models and data shared by the trainer tests and the two-process script (no network, seconds on a CPU)."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

VOCAB, LENGTH, CLASSES = 50, 8, 3


def tiny_bert_config(num_labels: int = CLASSES) -> BertConfig:
    # Dropout off so that runs with different batch layouts are comparable parameter for parameter.
    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
        num_labels=num_labels,
    )


def tiny_sequence_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config())


def tiny_token_classifier(seed: int = 0) -> BertForTokenClassification:
    torch.manual_seed(seed)
    return BertForTokenClassification(tiny_bert_config())


def sequence_dataset(n: int, seed: int = 0, ignored_every: int = 0) -> Dataset:
    """`n` random sequences whose label is learnable (the first token's residue); every `ignored_every`-th label is
    -100 when `ignored_every` > 0."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    labels = input_ids[:, 0] % CLASSES
    if ignored_every:
        labels[::ignored_every] = -100
    return Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": [[1] * LENGTH] * n, "labels": labels.tolist()}
    )


def token_dataset(n: int, seed: int = 0) -> Dataset:
    """Token labels with -100 on padding (the last positions of each row) and on a scattered 'sub-word' position."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    labels = input_ids % CLASSES
    lengths = torch.randint(3, LENGTH + 1, (n,), generator=generator)
    mask = torch.arange(LENGTH)[None, :] < lengths[:, None]
    input_ids[~mask] = 0
    labels[~mask] = -100
    labels[:, 1] = -100
    return Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": mask.long().tolist(), "labels": labels.tolist()}
    )


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
