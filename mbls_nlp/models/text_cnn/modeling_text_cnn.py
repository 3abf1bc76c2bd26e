"""The text CNN of the MbLS paper as a Hugging Face model (``GlobalPoolingCNN`` in the reference code).

Reference: by-liu/MbLS `calibrate/net/ng_model.py` (network) and `calibrate/engine/nlp_trainer.py` (a frozen
GloVe `nn.Embedding` in front of it). Here the embedding table is part of the model so that `save_pretrained` /
`from_pretrained` carry everything, and padding is masked so that it never wins the global max pooling.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from .configuration_text_cnn import TextCNNConfig


class TextCNNPreTrainedModel(PreTrainedModel):
    """Weight initialisation and class attributes shared by the text CNN models."""

    config_class = TextCNNConfig
    base_model_prefix = "text_cnn"
    main_input_name = "input_ids"
    input_modalities = "text"
    # Plain convolutions: nothing to checkpoint that would save memory worth the recomputation.
    supports_gradient_checkpointing = False
    # Every layer is independent, so `device_map="auto"` may place any module anywhere.
    _no_split_modules = []
    # The loss is a per-batch mean that ignores `num_items_in_batch`; telling the Trainer so makes it divide the loss
    # by the gradient-accumulation steps itself (transformers 5.x `Trainer.compute_loss` contract).
    accepts_loss_kwargs = False

    def _apply_embedding_freeze(self) -> None:
        # The one place that turns `config.freeze_embeddings` into `requires_grad` (the forward pass also detaches
        # the lookup, like the reference's `torch.no_grad()`); called after construction and after loading.
        self.get_input_embeddings().weight.requires_grad_(not self.config.freeze_embeddings)

    def post_init(self):
        # Runs at the end of every model's __init__ (TextCNNModel's, then TextCNNForSequenceClassification's).
        super().post_init()
        self._apply_embedding_freeze()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading materialises fresh parameters (requires_grad=True) after __init__ ran, so the freeze recorded in
        # the config is applied again; AutoModel*.from_pretrained dispatches to this method too.
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._apply_embedding_freeze()
        return loaded

    def _init_weights(self, module):
        # PyTorch's defaults, which the reference relies on (it never initialises explicitly). The
        # `transformers.initialization` functions skip parameters already loaded by `from_pretrained`.
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            # Slicing loses the "already initialised" flag, hence the explicit check (as in `PreTrainedModel`).
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])


class TextCNNModel(TextCNNPreTrainedModel):
    r"""
    The text CNN encoder: word embeddings, stacked 1D convolutions with ReLU and stride-1 max pooling, and a global
    max pooling over time.

    Args:
        config ([`TextCNNConfig`]):
            Model configuration.
    """

    def __init__(self, config: TextCNNConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_token_id)
        channels = [config.embedding_dim] + [config.num_filters] * len(config.kernel_sizes)
        self.convs = nn.ModuleList(
            nn.Conv1d(channels[i], channels[i + 1], kernel_size=k, stride=1, padding=0)
            for i, k in enumerate(config.kernel_sizes)
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding. `None` means every position is a real token (the usual
                transformers convention). Ignored when `config.mask_padding` is `False`.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.BaseModelOutputWithPooling`] rather than a
                tuple; defaults to `config.return_dict`.
            kwargs:
                Ignored; accepted so that callers may pass the usual transformers keyword arguments.

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutputWithPooling`]: `last_hidden_state` of shape
            `(batch_size, positions, num_filters)` is the last feature map (zero at positions that see no real token
            when masking), `pooler_output` of shape `(batch_size, num_filters)` its global max over positions.
        """
        if input_ids is None or input_ids.dim() != 2:
            raise ValueError("`input_ids` must be a 2D tensor of shape (batch_size, sequence_length).")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        pool = config.pool_size if config.pool_size > 1 else 0
        hidden = self.embed_tokens(input_ids)
        if config.freeze_embeddings:
            # Like the reference's `torch.no_grad()` around its GloVe lookup: frozen even if requires_grad was reset.
            hidden = hidden.detach()
        hidden = hidden.transpose(1, 2)  # (batch, embedding_dim, length) for Conv1d

        if not config.mask_padding:
            # The reference computation, literally: "valid" convolutions over every position, padding included.
            for i, conv in enumerate(self.convs):
                hidden = F.relu(conv(hidden))
                if pool and i < len(self.convs) - 1:
                    hidden = F.max_pool1d(hidden, kernel_size=pool, stride=1)
            pooled = hidden.amax(dim=2)
        else:
            if attention_mask is None:
                mask = torch.ones_like(input_ids, dtype=hidden.dtype)
            else:
                if attention_mask.shape != input_ids.shape:
                    raise ValueError(
                        f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                        f"got {tuple(attention_mask.shape)}."
                    )
                mask = (attention_mask != 0).to(hidden.dtype)
            mask = mask.unsqueeze(1)  # (batch, 1, length), broadcast over channels
            # Margins of receptive_field - 1 zero positions on both sides make every window that touches a real token
            # exist whatever the padding side or amount, so the logits of a text do not depend on its batch.
            margin = config.receptive_field - 1
            hidden = F.pad(hidden * mask, (margin, margin))
            mask = F.pad(mask, (margin, margin))
            for i, conv in enumerate(self.convs):
                # A position is valid when its window touches at least one valid input; a max pooling of the 0/1
                # mask with the layer's window computes exactly that.
                mask = F.max_pool1d(mask, kernel_size=conv.kernel_size[0], stride=1)
                hidden = F.relu(conv(hidden)) * mask
                if pool and i < len(self.convs) - 1:
                    mask = F.max_pool1d(mask, kernel_size=pool, stride=1)
                    hidden = F.max_pool1d(hidden, kernel_size=pool, stride=1) * mask
            # Padding never wins: invalid positions are -inf for the max. A row without any real token gets zeros.
            masked = hidden.masked_fill(mask == 0, float("-inf"))
            pooled = masked.amax(dim=2)
            pooled = torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))

        last_hidden_state = hidden.transpose(1, 2)
        if not return_dict:
            return (last_hidden_state, pooled)
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled)


class TextCNNForSequenceClassification(TextCNNPreTrainedModel):
    r"""
    The text CNN with its classification head: `fc1` (ReLU) then dropout then `fc2`, as the reference
    `GlobalPoolingCNN`.

    Args:
        config ([`TextCNNConfig`]):
            Model configuration.

    Examples:

    ```python
    >>> import torch
    >>> from mbls_nlp.models import TextCNNConfig, TextCNNForSequenceClassification
    >>> model = TextCNNForSequenceClassification(TextCNNConfig(vocab_size=50, embedding_dim=8, num_labels=3))
    >>> ids, mask = torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]])
    >>> out = model(ids, attention_mask=mask, labels=torch.tensor([2]))
    >>> out.logits.shape
    torch.Size([1, 3])

    ```
    """

    def __init__(self, config: TextCNNConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.text_cnn = TextCNNModel(config)
        self.pre_classifier = nn.Linear(config.num_filters, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_cnn.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.text_cnn.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 for real tokens, 0 for padding; `None` means no padding.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class indices in `[0, num_labels)`; when given, the mean cross-entropy is returned as `loss`.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.SequenceClassifierOutput`] rather than a
                tuple; defaults to `config.return_dict`.
            kwargs:
                Ignored (e.g. `token_type_ids` from a BERT tokenizer, `num_items_in_batch`).

        Returns:
            [`~transformers.modeling_outputs.SequenceClassifierOutput`]: `loss` (when `labels` is given) and
            `logits` of shape `(batch_size, num_labels)`; as a tuple `(loss, logits)` or `(logits,)` when
            `return_dict=False`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pooled = self.text_cnn(input_ids, attention_mask=attention_mask, return_dict=True).pooler_output
        hidden = self.dropout(F.relu(self.pre_classifier(pooled)))
        logits = self.classifier(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        if not return_dict:
            return (logits,) if loss is None else (loss, logits)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained_embeddings(
        cls, pretrained_model_name_or_path: str | os.PathLike, freeze: bool = True, **config_kwargs
    ) -> TextCNNForSequenceClassification:
        r"""
        Build a text CNN whose embedding table is the input embedding table of another Hugging Face model (standing
        in for the paper's frozen GloVe vectors). `vocab_size`, `embedding_dim` and `pad_token_id` come from that
        model; **the texts must then be tokenized with that model's tokenizer**
        (`AutoTokenizer.from_pretrained(pretrained_model_name_or_path)`), since row `i` of the table is the vector
        of its token `i`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local folder (or Hub id, if online) loadable with `transformers.AutoModel.from_pretrained`.
            freeze (`bool`, *optional*, defaults to `True`):
                Whether to freeze the copied table, as the paper freezes GloVe.
            config_kwargs:
                Other [`TextCNNConfig`] fields (`num_labels`, `num_filters`, ...).

        Returns:
            [`TextCNNForSequenceClassification`]: the model, other layers randomly initialised.

        Examples:

        ```python
        >>> folder = "path/to/all-MiniLM-L6-v2"
        >>> model = TextCNNForSequenceClassification.from_pretrained_embeddings(folder)  # doctest: +SKIP
        >>> tokenizer = AutoTokenizer.from_pretrained("path/to/all-MiniLM-L6-v2")  # doctest: +SKIP
        ```
        """
        for name in ("vocab_size", "embedding_dim"):
            if name in config_kwargs:
                raise ValueError(f"`{name}` is defined by the pretrained embeddings; do not pass it.")
        weight, pad_token_id = _read_input_embeddings(pretrained_model_name_or_path)
        config_kwargs.setdefault("pad_token_id", pad_token_id if pad_token_id is not None else 0)
        config = TextCNNConfig(vocab_size=weight.shape[0], embedding_dim=weight.shape[1], **config_kwargs)
        model = cls(config)
        load_pretrained_embeddings(model, weight, freeze=freeze)
        return model


def _read_input_embeddings(path: str | os.PathLike) -> tuple[torch.Tensor, int | None]:
    from transformers import AutoModel

    source = AutoModel.from_pretrained(path)
    weight = source.get_input_embeddings().weight.detach().to(torch.float32).clone()
    pad_token_id = getattr(source.config, "pad_token_id", None)
    return weight, pad_token_id


def load_pretrained_embeddings(
    model: TextCNNModel | TextCNNForSequenceClassification,
    embeddings: str | os.PathLike | torch.Tensor,
    freeze: bool = True,
) -> TextCNNModel | TextCNNForSequenceClassification:
    r"""
    Copy pretrained word vectors into a text CNN's embedding table, in place.

    The padding row is set to zero afterwards, as in the reference where Keras' padding index 0 has a zero GloVe
    row. When `embeddings` is another model, its tokenizer must be used for the texts (row `i` is its token `i`).

    Args:
        model ([`TextCNNModel`] or [`TextCNNForSequenceClassification`]):
            The model to update; its `vocab_size` and `embedding_dim` must equal the table's shape.
        embeddings (`str`, `os.PathLike` or `torch.Tensor`):
            A `(vocab_size, embedding_dim)` tensor, or a local folder / Hub id whose
            `AutoModel.from_pretrained(...).get_input_embeddings()` gives the table.
        freeze (`bool`, *optional*, defaults to `True`):
            Whether to exclude the table from training (also recorded as `config.freeze_embeddings`, so it survives
            `save_pretrained`/`from_pretrained`).

    Returns:
        The same `model`.

    Examples:

    ```python
    >>> import torch
    >>> from mbls_nlp.models import TextCNNConfig, TextCNNForSequenceClassification, load_pretrained_embeddings
    >>> model = TextCNNForSequenceClassification(TextCNNConfig(vocab_size=10, embedding_dim=4, num_labels=2))
    >>> _ = load_pretrained_embeddings(model, torch.ones(10, 4))
    >>> model.get_input_embeddings().weight.requires_grad
    False

    ```
    """
    if not isinstance(model, (TextCNNModel, TextCNNForSequenceClassification)):
        raise TypeError(
            f"`model` must be a TextCNNModel or TextCNNForSequenceClassification, got {type(model).__name__}."
        )
    if isinstance(embeddings, torch.Tensor):
        weight = embeddings.detach()
    elif isinstance(embeddings, (str, os.PathLike)):
        weight, _ = _read_input_embeddings(embeddings)
    else:
        raise TypeError(f"`embeddings` must be a path or a torch.Tensor, got {type(embeddings).__name__}.")
    table = model.get_input_embeddings()
    if weight.dim() != 2 or tuple(weight.shape) != tuple(table.weight.shape):
        raise ValueError(
            f"`embeddings` must have shape (vocab_size, embedding_dim) = {tuple(table.weight.shape)}, "
            f"got {tuple(weight.shape)}."
        )
    with torch.no_grad():
        table.weight.copy_(weight.to(table.weight.dtype))
        if table.padding_idx is not None:
            table.weight[table.padding_idx].zero_()
    model.config.freeze_embeddings = bool(freeze)
    model._apply_embedding_freeze()
    return model


# Saved text CNNs carry `auto_map` in their config and these code files beside their weights, so that
# `AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` loads them with plain
# transformers, without mbls_nlp installed (issue 13). This file and configuration_text_cnn.py must therefore import
# nothing but torch, transformers and each other.
TextCNNConfig.register_for_auto_class()
TextCNNModel.register_for_auto_class("AutoModel")
TextCNNForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "TextCNNModel",
    "TextCNNForSequenceClassification",
    "TextCNNPreTrainedModel",
    "load_pretrained_embeddings",
]
