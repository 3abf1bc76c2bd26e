"""Glue between model outputs and the calibration losses: layout alignment and a `compute_loss_func` adapter.

No maths lives here: the losses are in `mbls_nlp.losses`. This module only reshapes what Hugging Face models return
into the `torch.nn.CrossEntropyLoss` layout (classes on dim 1) that the losses and metrics expect, and turns a loss
module into the callable that `transformers.Trainer(compute_loss_func=...)` calls.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LossAdapter", "align_logits_and_labels", "logits_from_outputs"]


def logits_from_outputs(outputs: Any) -> torch.Tensor:
    """Return the logits of a model's output (a `ModelOutput`/dict with `logits`, a tuple, or a tensor)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        if "logits" not in outputs:
            raise ValueError(f"`outputs` has no 'logits' entry; it has {sorted(outputs.keys())}.")
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and len(outputs) > 0 and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise TypeError(f"`outputs` must be a ModelOutput, dict, tuple or tensor holding logits, got {type(outputs)}.")


def align_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring Hugging Face logits into the `(N, C, d1, ...)` layout of their labels.

    - `(B, C)` logits with `(B,)` labels (sequence or image classification) are returned unchanged.
    - `(B, L, C)` logits with `(B, L)` labels (token classification: transformers puts classes last) are flattened
      to `(B * L, C)` and `(B * L,)`, which needs no copy.
    - `(B, C, h, w)` logits with `(B, H, W)` labels (semantic segmentation: transformers' segmentation heads predict
      at a lower resolution) are upsampled bilinearly to `(H, W)` with `align_corners=False`, as transformers'
      own segmentation losses (e.g. SegFormer's) do.

    Args:
        logits (`torch.Tensor`): the model's logits.
        labels (`torch.Tensor`): integer labels.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: logits with classes on dim 1 and labels of matching shape.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            f"`logits` and `labels` must be torch tensors, got {type(logits).__name__} and {type(labels).__name__}."
        )
    if logits.dim() != labels.dim() + 1:
        raise ValueError(
            f"`logits` must have one dimension more than `labels` (the classes); got logits {tuple(logits.shape)} "
            f"and labels {tuple(labels.shape)}."
        )
    if logits.dim() == 3:
        if logits.shape[:2] != labels.shape:
            raise ValueError(
                f"token-classification `logits` must be (batch, length, classes) with `labels` (batch, length); got "
                f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)}."
            )
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if logits.dim() >= 4 and logits.shape[2:] != labels.shape[1:]:
        if logits.dim() != 4:
            raise ValueError(
                f"only 2-D segmentation logits can be resized to their labels; got logits {tuple(logits.shape)} and "
                f"labels {tuple(labels.shape)}."
            )
        logits = F.interpolate(logits, size=labels.shape[1:], mode="bilinear", align_corners=False)
    return logits, labels


class LossAdapter:
    """Make a calibration loss usable as `transformers.Trainer(compute_loss_func=...)`.

    `Trainer` calls `compute_loss_func(outputs, labels, num_items_in_batch=...)` and, when it passes
    `num_items_in_batch` (the number of labels different from `-100` in the whole gradient-accumulation window,
    summed over processes), expects the loss to be normalised by it. The adapter sums the loss over the micro-batch
    and divides by that count, so gradient accumulation is exact; without the count (evaluation) it returns the
    mean over the micro-batch's valid positions.

    Args:
        loss (`torch.nn.Module`):
            A loss from `mbls_nlp.losses` (e.g. `build_loss("mbls")`). The adapter keeps a copy of it with
            `reduction="sum"`, so the caller's module is left as it was.

    Note:
        `Trainer` counts `num_items_in_batch` as labels different from `-100`, so exact gradient accumulation needs
        the loss's `ignore_index` to be `-100`; with another value the adapter raises. Use `CalibrationTrainer`,
        which counts with the configured `ignore_index`.

    Examples:

    >>> import torch
    >>> from mbls_nlp import LossAdapter, build_loss
    >>> adapter = LossAdapter(build_loss("mbls", margin=10.0, alpha=0.1))
    >>> logits, labels = torch.tensor([[2.0, 0.0, -20.0]]), torch.tensor([0])
    >>> round(adapter({"logits": logits}, labels).item(), 4)  # CE 0.1269 + 0.1 * (22 - 10) / 3
    0.5269
    """

    def __init__(self, loss: torch.nn.Module):
        if not isinstance(loss, torch.nn.Module):
            raise TypeError(f"`loss` must be a torch.nn.Module from mbls_nlp.losses, got {type(loss).__name__}.")
        if getattr(loss, "ignore_index", -100) != -100:
            raise ValueError(
                "`loss.ignore_index` must be -100 with `compute_loss_func`: transformers counts `num_items_in_batch` "
                f"as labels != -100, got ignore_index={loss.ignore_index}. Use CalibrationTrainer for other values."
            )
        self.loss = copy.deepcopy(loss)
        self.loss.reduction = "sum"

    def __call__(
        self, outputs: Any, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        if labels is None:
            raise ValueError("`labels` is None: the calibration loss needs labels (batch has no 'labels' key).")
        logits, labels = align_logits_and_labels(logits_from_outputs(outputs), labels)
        loss_sum = self.loss(logits, labels)
        if num_items_in_batch is None:
            num_items_in_batch = (labels != self.loss.ignore_index).sum()
        # clamp: a window whose labels are all ignored gives a zero loss that still backpropagates, not NaN.
        if isinstance(num_items_in_batch, torch.Tensor):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device).clamp(min=1)
        else:
            num_items_in_batch = max(int(num_items_in_batch), 1)
        return loss_sum / num_items_in_batch
