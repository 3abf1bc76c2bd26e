"""Configuration of the text CNN of the MbLS paper (``GlobalPoolingCNN`` in the reference code)."""

from transformers import PretrainedConfig


class TextCNNConfig(PretrainedConfig):
    r"""
    Configuration of [`TextCNNModel`] and [`TextCNNForSequenceClassification`]: the global-pooling text CNN that the
    MbLS paper (Liu et al., CVPR 2022) trains on 20 Newsgroups. The defaults reproduce the reference network
    (by-liu/MbLS `calibrate/net/ng_model.py`, `GlobalPoolingCNN`) and its loader (`calibrate/data/newsgroup.py`):
    100-dimensional word embeddings, three stacked 1D convolutions of 128 filters with kernel size 5 and no padding,
    a max pooling of size 5 and stride 1 between consecutive convolutions, a global max pooling over time, a 128-unit
    ReLU layer and a linear classifier over 20 classes.

    Args:
        vocab_size (`int`, *optional*, defaults to `20000`):
            Number of rows of the embedding table, padding and unknown tokens included. It must cover every id the
            tokenizer produces. (The reference loader keeps the `max_num_words=2000` most frequent words by default;
            the Keras example it derives from uses 20000.)
        embedding_dim (`int`, *optional*, defaults to `100`):
            Width of the word embeddings (GloVe 6B 100d in the paper).
        num_filters (`int`, *optional*, defaults to `128`):
            Output channels of every convolution.
        kernel_sizes (`list[int]`, *optional*, defaults to `[5, 5, 5]`):
            Kernel size of each stacked convolution; the length of the list is the number of convolutions.
        pool_size (`int`, *optional*, defaults to `5`):
            Window of the stride-1 max pooling between consecutive convolutions (`0` or `1` disables it).
        hidden_size (`int`, *optional*, defaults to `128`):
            Width of the ReLU layer between the global max pooling and the classifier.
        dropout (`float`, *optional*, defaults to `0.0`):
            Dropout probability before the classifier. The reference defines `keep_prob=0.5` but the dropout line is
            commented out, so the effective reference value is `0.0`.
        pad_token_id (`int`, *optional*, defaults to `0`):
            Id of the padding token; its embedding row is zero and receives no gradient, as in the reference where
            Keras' padding index 0 maps to a zero GloVe row.
        freeze_embeddings (`bool`, *optional*, defaults to `False`):
            Whether the embedding table is excluded from training. The paper freezes pretrained GloVe vectors; this
            is `False` by default because freezing a randomly initialised table is not what the reference does.
            [`load_pretrained_embeddings`] sets it to `True` by default.
        mask_padding (`bool`, *optional*, defaults to `True`):
            Whether positions are masked with the attention mask so that padding never wins the global max pooling
            and the logits of a text do not depend on how much padding the batch adds, nor on which side. With
            `True`, every window that touches at least one real token is computed (as if the text were followed and
            preceded by enough zero vectors) and, at every layer, features at positions whose window touches no real
            token are set to zero, so even a one-token text has an output. With `False`, the
            reference computation is reproduced literally: "valid" convolutions over every position, padding
            included, and texts shorter than the receptive field fail.
        initializer_range (`float`, *optional*, defaults to `1.0`):
            Standard deviation of the normal initialisation of the embedding table (PyTorch's `nn.Embedding`
            default). Convolutions and linear layers use PyTorch's default initialisation, as the reference does.
        num_labels (`int`, *optional*, defaults to `20`):
            Number of classes (the 20 newsgroups).

    Examples:

    ```python
    >>> from mbls_nlp.models import TextCNNConfig, TextCNNForSequenceClassification
    >>> config = TextCNNConfig(vocab_size=1000, num_labels=4)
    >>> model = TextCNNForSequenceClassification(config)
    >>> config.receptive_field
    21

    ```
    """

    model_type = "text_cnn"

    def __init__(
        self,
        vocab_size: int = 20000,
        embedding_dim: int = 100,
        num_filters: int = 128,
        kernel_sizes: list[int] | tuple[int, ...] = (5, 5, 5),
        pool_size: int = 5,
        hidden_size: int = 128,
        dropout: float = 0.0,
        pad_token_id: int = 0,
        freeze_embeddings: bool = False,
        mask_padding: bool = True,
        initializer_range: float = 1.0,
        **kwargs,
    ):
        for name, value in (
            ("vocab_size", vocab_size),
            ("embedding_dim", embedding_dim),
            ("num_filters", num_filters),
            ("hidden_size", hidden_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        kernel_sizes = list(kernel_sizes)
        if not kernel_sizes or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in kernel_sizes):
            raise ValueError(f"`kernel_sizes` must be a non-empty list of positive integers, got {kernel_sizes!r}.")
        if not isinstance(pool_size, int) or pool_size < 0:
            raise ValueError(
                f"`pool_size` must be a non-negative integer (0 or 1 disables pooling), got {pool_size!r}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}.")
        if not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab_size:
            raise ValueError(
                f"`pad_token_id` must be an integer in [0, vocab_size={vocab_size}), got {pad_token_id!r}."
            )
        if initializer_range <= 0:
            raise ValueError(f"`initializer_range` must be positive, got {initializer_range!r}.")
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.num_filters = num_filters
        self.kernel_sizes = kernel_sizes
        self.pool_size = pool_size
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.freeze_embeddings = bool(freeze_embeddings)
        self.mask_padding = bool(mask_padding)
        self.initializer_range = initializer_range
        # The paper classifies the 20 newsgroups; an explicit num_labels or id2label (e.g. from a saved config) wins.
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = 20
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @property
    def receptive_field(self) -> int:
        """Number of consecutive tokens one position of the last feature map sees."""
        pool = self.pool_size if self.pool_size > 1 else 1
        # Each stride-1 window of width w widens the field by w - 1: the convolutions, and a pooling between each pair.
        return 1 + sum(k - 1 for k in self.kernel_sizes) + (len(self.kernel_sizes) - 1) * (pool - 1)


__all__ = ["TextCNNConfig"]
