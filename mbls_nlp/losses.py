"""Calibration losses as standalone `torch.nn.Module`s (pure torch, usable from any training loop).

Every loss follows the conventions of `torch.nn.CrossEntropyLoss`: logits `(N, C)` or `(N, C, d1, d2, ...)` with the
classes on dim 1, integer labels `(N,)` or `(N, d1, d2, ...)`, positions labelled `ignore_index` excluded from every
term (for any `ignore_index`, negative included), and `reduction` in `"mean" | "sum" | "none"`.

Unlike `torch.nn.CrossEntropyLoss`, a batch where every label is ignored gives a zero loss (never NaN) that still
backpropagates (zero gradients).

Half precision: float16/bfloat16 logits (`--fp16`/`--bf16`, `torch.autocast`) are upcast to float32 inside the loss,
so every loss is finite, with finite gradients, for any finite float16 input, and for bfloat16 (whose range is
float32's) whenever the spread `max - min` of a row's logits is below float32's maximum (~3.4e38).

Every forward also stores its parts in `last_parts` (detached, same reduction as the returned loss) so a trainer can
log them without computing anything twice; `loss == sum(part_weights[k] * last_parts[k])`.

`LOSS_REGISTRY` (at the end) is the one table of losses: each name's class, the `CalibrationConfig` fields of its
hyper-parameters and its default search grid. `build_loss`, the config, the search and the help texts read it.

Reference code: github.com/by-liu/MbLS (`calibrate/losses`), paper "The Devil is in the Margin: Margin-based Label
Smoothing for Network Calibration" (Liu et al., CVPR 2022).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import (
    as_tensor,
    check_choice,
    check_ignore_index,
    check_int,
    check_real,
    check_scores_and_labels,
    flatten_classes,
    label_range_error,
    non_finite_error,
)

__all__ = [
    "ALPHA_SCHEDULES",
    "LOSS_NAMES",
    "LOSS_REGISTRY",
    "LossSpec",
    "CalibrationLoss",
    "CrossEntropyLoss",
    "LabelSmoothingLoss",
    "FocalLoss",
    "FLSDLoss",
    "ConfidencePenaltyLoss",
    "MMCELoss",
    "BrierLoss",
    "MarginLoss",
    "MarginOptimum",
    "margin_optimum",
    "ACLSLoss",
    "DualFocalLoss",
    "ClassAdaptiveLoss",
    "build_loss",
]

_REDUCTIONS = ("mean", "sum", "none")
#: Values of `MarginLoss(schedule=...)` (and of `CalibrationConfig.alpha_schedule`).
ALPHA_SCHEDULES: tuple[str, ...] = ("", "add", "multiply", "step")
#: Values of `ClassAdaptiveLoss(multipliers_from=...)` (and of `CalibrationConfig.cals_multipliers_from`).
CALS_MULTIPLIER_SOURCES: tuple[str, ...] = ("validation", "train")
# Row blocks of about this many elements (8 MiB of float32, within L3): the fused MbLS kernel's elementwise passes hit
# the cache, and larger blocks mean fewer parallel regions to stall on a loaded CPU. Measured block sizes:
# benchmarks/RESULTS.md, "Target: MbLS <= 1.5x cross-entropy".
_BLOCK_ELEMENTS = 1 << 21


_HALF = (torch.float16, torch.bfloat16)


def _flatten_inputs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int):
    """Validates `logits`/`labels` and returns `(z, y, valid, n_valid)` with `z` `(M, C)` and `y`, `valid` `(M,)`.

    Types, shapes and devices are checked by `mbls_nlp._checks`. float16/bfloat16 logits are upcast to float32 here,
    before any arithmetic (as torch's fused cross-entropy computes internally and transformers' causal-LM loss does):
    the sums over classes of an fp16 loss overflow (65504) and its probabilities underflow to NaN gradients.
    Autograd casts the gradient back, so the caller's logits get a gradient of their own dtype.

    All value checks are fused into a single host synchronisation (one `.tolist()`); the logits are read once (a sum,
    no temporary) and the labels a few times. `benchmarks/bench_loss.py` measures the cost (row `input checks`).
    """
    logits = as_tensor(logits, "logits")
    labels = as_tensor(labels, "labels")
    check_scores_and_labels(logits, labels, "logits")
    num_classes = logits.shape[1]
    if num_classes < 1:
        raise ValueError(f"`logits` must have at least one class on dim 1, got shape {tuple(logits.shape)}.")
    z = flatten_classes(logits)
    if z.dtype in _HALF:
        z = z.float()
    y = labels.reshape(-1).long()
    valid = y != ignore_index
    out_of_range = valid & ((y < 0) | (y >= num_classes))
    # A NaN or inf anywhere makes the sum non-finite; the sum is one read-only pass, where `isfinite(z).all()` also
    # writes a bool tensor as large as the logits. Only a non-finite sum (or a float overflow of a huge but finite
    # batch) pays for the exact check.
    non_finite, bad_labels, n_valid = torch.stack([~torch.isfinite(z.sum()), out_of_range.any(), valid.sum()]).tolist()
    if non_finite and not bool(torch.isfinite(z).all()):
        raise non_finite_error("logits")
    if bad_labels:
        raise label_range_error(num_classes, ignore_index, str(sorted(set(y[out_of_range].tolist()))[:10]))
    return z, y, valid, int(n_valid)


class CalibrationLoss(nn.Module):
    """Common base of the calibration losses.

    Subclasses implement `_per_position(z, y)` on the valid rows (`z` `(n, C)`, `y` `(n,)`) and return a dict of
    per-position parts; the base class validates, flattens, drops ignored positions and reduces.

    Args:
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value whose positions are excluded from every term of the loss.
        reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"` (over valid positions), `"sum"` (equals `"mean"` times the number of valid positions) or
            `"none"` (one value per position, shaped like `labels`, `0` at ignored positions).

    Attributes:
        part_names (`tuple[str, ...]`): names of the loss parts (class attribute).
        part_weights (`dict[str, float]`): current weights with `loss == sum(part_weights[k] * last_parts[k])`.
        last_parts (`dict[str, torch.Tensor]`): detached parts of the last forward, same reduction as the loss.
    """

    part_names: tuple[str, ...] = ()

    def __init__(self, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_choice("reduction", reduction, _REDUCTIONS)
        self.last_parts: dict[str, torch.Tensor] = {}

    @property
    def part_weights(self) -> dict[str, float]:
        return {name: 1.0 for name in self.part_names}

    def _no_valid_position(self, z: torch.Tensor) -> None:
        """Called by `forward` for a batch without a valid position (`z`: its logits, `(N, C)`): a loss that keeps
        per-forward state resets it here."""

    def _per_position(self, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _reduce(self, values: torch.Tensor, valid: torch.Tensor, n_valid: int, labels_shape) -> torch.Tensor:
        if self.reduction == "none":
            if n_valid == valid.numel():
                return values.reshape(labels_shape)
            out = values.new_zeros(valid.shape).masked_scatter(valid, values)
            return out.reshape(labels_shape)
        total = values.sum()
        return total / n_valid if self.reduction == "mean" else total

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Computes the loss.

        Args:
            logits (`torch.Tensor` of shape `(N, C)` or `(N, C, d1, ...)`):
                Unnormalised scores, classes on dim 1, any float dtype; float16/bfloat16 are computed in float32.
                A numpy array is accepted too (no gradient flows to it); a Python list is not (one input policy for
                the losses, metrics and temperature scaling, `mbls_nlp._checks`).
            labels (`torch.Tensor` of shape `(N,)` or `(N, d1, ...)`):
                Integer labels in `[0, C)` or `ignore_index`, on the device of `logits`.

        Returns:
            `torch.Tensor`: a scalar for `"mean"`/`"sum"`, a tensor shaped like `labels` for `"none"`; float32 for
            half-precision logits (the gradient reaching `logits` keeps their dtype), else the dtype of `logits`.
        """
        z, y, valid, n_valid = _flatten_inputs(logits, labels, self.ignore_index)
        if n_valid == 0:
            # Zero that still backpropagates (zero gradients) instead of the 0/0 NaN of torch's mean.
            zero = z.sum() * 0.0 if self.reduction != "none" else (z * 0.0).sum(1).reshape(labels.shape)
            self.last_parts = {name: zero.detach().clone() for name in self.part_names}
            self._no_valid_position(z)
            return zero
        if n_valid != y.numel():
            keep = valid.nonzero().squeeze(1)
            z, y = z.index_select(0, keep), y.index_select(0, keep)
        parts = self._per_position(z, y)
        weights = self.part_weights
        loss = None
        for name in self.part_names:
            term = parts[name] if weights[name] == 1.0 else weights[name] * parts[name]
            loss = term if loss is None else loss + term
        with torch.no_grad():
            self.last_parts = {
                name: self._reduce(parts[name].detach(), valid, n_valid, labels.shape) for name in self.part_names
            }
        return self._reduce(loss, valid, n_valid, labels.shape)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"


class CrossEntropyLoss(CalibrationLoss):
    """Cross-entropy (`"ce"`), the same value as `torch.nn.functional.cross_entropy`. Parts: `("ce",)`.

    Examples:

    >>> import torch
    >>> from mbls_nlp.losses import CrossEntropyLoss
    >>> loss = CrossEntropyLoss()(torch.zeros(2, 4), torch.tensor([0, 3]))
    >>> round(loss.item(), 4)  # log(4)
    1.3863
    """

    part_names = ("ce",)

    def _per_position(self, z, y):
        return {"ce": F.cross_entropy(z, y, reduction="none")}


class LabelSmoothingLoss(CalibrationLoss):
    """Label smoothing (`"ls"`): `(1 - epsilon) * CE + epsilon * mean_k(-log p_k)`.

    This is the reference's `LabelSmoothingCrossEntropy` and equals
    `torch.nn.functional.cross_entropy(..., label_smoothing=epsilon)` (whose target is `(1 - eps) * onehot + eps / C`).
    Parts: `("ce", "smooth")` with weights `(1 - epsilon, epsilon)`, `smooth = mean_k(-log p_k)`.

    Args:
        epsilon (`float`, *optional*, defaults to `0.05`): smoothing factor in `[0, 1)`.
        ignore_index, reduction: see [`CalibrationLoss`].
    """

    part_names = ("ce", "smooth")

    def __init__(self, epsilon: float = 0.05, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.epsilon = check_real("epsilon", epsilon, below=1.0)

    @property
    def part_weights(self):
        return {"ce": 1.0 - self.epsilon, "smooth": self.epsilon}

    def _per_position(self, z, y):
        logp = F.log_softmax(z, dim=1)
        return {"ce": -logp.gather(1, y[:, None]).squeeze(1), "smooth": -logp.mean(dim=1)}

    def extra_repr(self):
        return f"epsilon={self.epsilon}, " + super().extra_repr()


def _focal(z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
    logpt = F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
    # (1 - p)^gamma with p = exp(logpt); -expm1 keeps precision for p close to 1.
    return -((-torch.expm1(logpt)) ** gamma) * logpt


class FocalLoss(CalibrationLoss):
    """Focal loss (`"focal"`, Lin et al. 2017): `-(1 - p_y)^gamma * log p_y`. Parts: `("focal",)`.

    The reference averages over valid positions (`size_average: True` in its config), as `reduction="mean"` does.

    Args:
        gamma (`float`, *optional*, defaults to `3.0`): focusing parameter `>= 0`; `0` is cross-entropy.
        ignore_index, reduction: see [`CalibrationLoss`].
    """

    part_names = ("focal",)

    def __init__(self, gamma: float = 3.0, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.gamma = check_real("gamma", gamma)

    def _per_position(self, z, y):
        return {"focal": _focal(z, y, self.gamma)}

    def extra_repr(self):
        return f"gamma={self.gamma}, " + super().extra_repr()


class FLSDLoss(CalibrationLoss):
    """Sample-dependent focal loss FLSD-53 (`"flsd"`, Mukhoti et al. 2020). Parts: `("flsd",)`.

    `gamma = 5` for positions with `p_y < 0.2`, else `gamma = 3` (the reference's `FocalLossAdaptive` with gamma 3:
    3 for `p_y >= 0.5`, 3 for `0.2 <= p_y < 0.5`). Gamma is chosen without gradient, as in the reference.

    Args:
        ignore_index, reduction: see [`CalibrationLoss`].
    """

    part_names = ("flsd",)
    threshold = 0.2
    gamma_low, gamma_high = 5.0, 3.0

    def _per_position(self, z, y):
        with torch.no_grad():
            p_y = F.softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
            gamma = torch.where(p_y < self.threshold, self.gamma_low, self.gamma_high).to(z.dtype)
        return {"flsd": _focal(z, y, gamma)}


class ConfidencePenaltyLoss(CalibrationLoss):
    """Confidence penalty (`"ecp"`, Pereyra et al. 2017): `CE - beta * entropy`, as the reference's `PenaltyEntropy`.

    Parts: `("ce", "entropy")` with weights `(1, -beta)`. Like the reference, `entropy` is the mean over positions
    **and classes** of `-p_k log p_k`, i.e. the Shannon entropy divided by `C`, so `beta` has the reference's scale.
    Unlike the reference we do not clamp `p` to `[1e-8, 1 - 1e-8]`: `p * log p` is computed from `log_softmax`,
    which is exact where the clamp would zero the gradient.

    Args:
        beta (`float`, *optional*, defaults to `0.1`): weight of the entropy penalty, `>= 0`.
        ignore_index, reduction: see [`CalibrationLoss`].
    """

    part_names = ("ce", "entropy")

    def __init__(self, beta: float = 0.1, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.beta = check_real("beta", beta)

    @property
    def part_weights(self):
        return {"ce": 1.0, "entropy": -self.beta}

    def _per_position(self, z, y):
        logp = F.log_softmax(z, dim=1)
        ce = -logp.gather(1, y[:, None]).squeeze(1)
        return {"ce": ce, "entropy": -(logp.exp() * logp).mean(dim=1)}

    def extra_repr(self):
        return f"beta={self.beta}, " + super().extra_repr()


class MMCELoss(CalibrationLoss):
    """CE + weight * MMCE (`"mmce"`, Kumar et al. 2018), as the reference's `MMCE` (MMCE_m, without square root).

    With `r_i` the top-label confidence, `c_i = 1[argmax = y_i]` and `k(a, b) = exp(-|a - b| / 0.4)`, the batch term is
    `T = sum_ij (c_i - r_i)(c_j - r_j) k(r_i, r_j) / n^2` over the `n` valid positions. Parts: `("ce", "mmce")` with
    weights `(1, weight)`.

    **Batch-level term under each reduction.** `T` is split over positions as
    `mmce_i = (c_i - r_i) * sum_j (c_j - r_j) k(r_i, r_j) / n`, whose mean is `T`. So `"mean"` gives
    `mean(ce) + weight * T` (the reference), `"none"` gives `ce_i + weight * mmce_i`, and `"sum"` gives
    `n * (mean(ce) + weight * T)` = `"mean"` times `n`. Summing `"sum"` over gradient-accumulation micro-batches
    and dividing by the total count therefore weights each micro-batch's own `T` by its size; it is not the `T` of
    the union batch (no per-sample loss can be).

    The double sum is computed in `O(n log n)` time and `O(n)` memory by sorting the confidences (for `r_i >= r_j`,
    `k = exp(-r_i / 0.4) exp(r_j / 0.4)`, factors within `exp(+-2.5)`), instead of the reference's `n x n` matrix, so
    segmentation-sized batches fit in memory.

    Args:
        weight (`float`, *optional*, defaults to `1.0`): weight of the MMCE term (the reference's `lamda`), `>= 0`.
        ignore_index, reduction: see [`CalibrationLoss`].
    """

    part_names = ("ce", "mmce")
    bandwidth = 0.4

    def __init__(self, weight: float = 1.0, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.weight = check_real("weight", weight)

    @property
    def part_weights(self):
        return {"ce": 1.0, "mmce": self.weight}

    def _per_position(self, z, y):
        logp = F.log_softmax(z, dim=1)
        ce = -logp.gather(1, y[:, None]).squeeze(1)
        top_logp, pred = logp.max(dim=1)
        r = top_logp.exp()
        a = (pred == y).to(z.dtype) - r
        order = torch.argsort(r.detach())
        r_s, a_s = r[order], a[order]
        up, down = torch.exp(r_s / self.bandwidth), torch.exp(-r_s / self.bandwidth)
        # s_i = sum_j a_j k(r_i, r_j) = down_i * sum_{j <= i} a_j up_j + up_i * sum_{j > i} a_j down_j (sorted order).
        below = torch.cumsum(a_s * up, 0)
        ad = a_s * down
        above = ad.sum() - torch.cumsum(ad, 0)
        s_sorted = down * below + up * above
        s = torch.empty_like(s_sorted).scatter(0, order, s_sorted)
        return {"ce": ce, "mmce": a * s / z.shape[0]}

    def extra_repr(self):
        return f"weight={self.weight}, " + super().extra_repr()


class BrierLoss(CalibrationLoss):
    """Brier score (`"brier"`): `sum_k (p_k - 1[y = k])^2` per position, as the reference's `BrierScore`.

    Parts: `("brier",)`.
    """

    part_names = ("brier",)

    def _per_position(self, z, y):
        p = F.softmax(z, dim=1)
        # sum_k (p_k - onehot_k)^2 = sum_k p_k^2 - 2 p_y + 1, without building the one-hot matrix.
        return {"brier": (p * p).sum(1) - 2 * p.gather(1, y[:, None]).squeeze(1) + 1}


class _MarginCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy and margin penalty `sum_k relu((max_j z_j - margin) - z_k)` with a hand-written backward.

    Forward and backward each make one pass over the logits in main memory; the work is done in blocks of rows that
    fit in the cache (`_BLOCK_ELEMENTS`), with torch's fused (log-)softmax kernels for the cross-entropy part.
    Gradients: `d ce_i / d z_i = softmax(z_i) - onehot(y_i)` and
    `d pen_i / d z_i = count_i * onehot(argmax_i) - mask_i` with `mask_ik = 1[z_ik < max_i - margin]` and
    `count_i = sum_k mask_ik` (`relu'(0) = 0` as in torch).

    Tie rule: when several logits share the row maximum, the max's gradient goes to the first of them
    (`torch.argmax`, documented to return the first maximal index), as autograd through
    `z.gather(1, z.argmax(1, keepdim=True))` does. Any choice is a valid subgradient; they agree without ties.
    """

    @staticmethod
    def forward(ctx, z, y, margin):
        n, c = z.shape
        rows = max(1, _BLOCK_ELEMENTS // c)
        mx = torch.amax(z, dim=1)
        threshold = mx - margin  # margin = inf gives -inf: zero penalty
        ce = z.new_empty(n)
        pen = z.new_empty(n)
        buf = z.new_empty(min(rows, n), c)
        for s in range(0, n, rows):
            zb = z[s : s + rows]
            b = buf[: zb.shape[0]]
            torch.ops.aten._log_softmax.out(zb, 1, False, out=b)
            torch.gather(b, 1, y[s : s + rows, None], out=ce[s : s + rows, None])
            torch.sub(threshold[s : s + rows, None], zb, out=b)
            b.clamp_(min=0)
            torch.sum(b, 1, out=pen[s : s + rows])
        ce.neg_()
        ctx.save_for_backward(z, y, threshold)
        return ce, pen

    @staticmethod
    def backward(ctx, g_ce, g_pen):
        z, y, threshold = ctx.saved_tensors
        if torch.is_grad_enabled():
            # Grad mode is on in a backward only under `create_graph=True` (double backward, e.g. a gradient
            # penalty): the same gradient from differentiable ops, so that autograd can differentiate it again.
            # The fast path below writes in place under no_grad and would return a gradient silently detached
            # from `z` (issue 14: `once_differentiable` only guards grad outputs that require grad).
            return _margin_ce_grad_differentiable(z, y, threshold, g_ce, g_pen), None, None
        n, c = z.shape
        rows = max(1, _BLOCK_ELEMENTS // c)
        grad = torch.empty_like(z)
        use_pen = bool((g_pen != 0).any()) and bool(torch.isfinite(threshold).any())
        if use_pen:
            mask = z.new_empty(min(rows, n), c)
            count = z.new_empty(n)
            neg_g_pen = -g_pen
        for s in range(0, n, rows):
            zb = z[s : s + rows]
            gb = grad[s : s + rows]
            torch.ops.aten._softmax.out(zb, 1, False, out=gb)
            gb.mul_(g_ce[s : s + rows, None])
            if use_pen:
                mb = mask[: zb.shape[0]]
                torch.lt(zb, threshold[s : s + rows, None], out=mb)
                torch.sum(mb, 1, out=count[s : s + rows])
                gb.addcmul_(mb, neg_g_pen[s : s + rows, None])
        grad.scatter_add_(1, y[:, None], -g_ce[:, None])
        if use_pen:
            # One argmax over all rows rather than a tie count per block: fewer, larger ops (see _BLOCK_ELEMENTS).
            grad.scatter_add_(1, torch.argmax(z, dim=1, keepdim=True), (count * g_pen)[:, None])
        return grad, None, None


def _margin_ce_grad_differentiable(z, y, threshold, g_ce, g_pen):
    # softmax(z) - onehot(y) for the cross-entropy; count * onehot(argmax) - mask for the penalty (piecewise constant
    # in z, so its second derivative is 0, as autograd through relu gives).
    grad = torch.softmax(z, dim=1) * g_ce[:, None]
    grad = grad.scatter_add(1, y[:, None], -g_ce[:, None])
    mask = (z < threshold[:, None]).to(z.dtype)
    grad = grad - mask * g_pen[:, None]
    count = mask.sum(1)
    return grad.scatter_add(1, torch.argmax(z, dim=1, keepdim=True), (count * g_pen)[:, None])


def margin_cross_entropy(z: torch.Tensor, y: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row `(ce, penalty)` of MbLS on valid rows, `penalty_i = sum_k relu((max_j z_ij - z_ik) - margin)`.

    Args:
        z (`torch.Tensor` of shape `(n, C)`): logits of valid positions.
        y (`torch.Tensor` of shape `(n,)`): labels in `[0, C)`.
        margin (`float`): margin `>= 0`, `inf` allowed (zero penalty).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: per-row cross-entropy and penalty (sum over classes), both `(n,)`.
    """
    return _MarginCrossEntropy.apply(z.contiguous(), y, float(margin))


class MarginLoss(CalibrationLoss):
    """Margin-based label smoothing (`"mbls"`, Liu et al. CVPR 2022), the reference's `LogitMarginL1`.

    `loss = CE + alpha * mean over valid positions and all classes of relu((max_j z_j - z_k) - margin)`.
    Parts: `("ce", "margin")` with weights `(1, alpha)`; `margin` is the penalty averaged over classes (the reference's
    `loss_margin_l1` under `"mean"`). Ignored positions are excluded from both terms for any `ignore_index` (the
    reference only filters them for `ignore_index >= 0`). Forward and backward are fused by hand
    (`_MarginCrossEntropy`) and equal autograd through the straightforward formula (tied maxima: the max's gradient
    goes to the first maximal index, `torch.argmax`; see `_MarginCrossEntropy`).

    Choosing `margin` and `alpha`: the loss drives a fitted example's other logits to the distance
    `max(margin, ln(K / alpha - K + 1))` below its label's (`margin_optimum`), so with `alpha = 0.1` and 20 classes
    every margin under 5.2 ends at the same 5.2 (confidence 0.905), and a lower cap needs a larger `alpha`.

    Alpha schedule (opt-in, as the reference; call `schedule_alpha(epoch)` once at the end of every epoch):
    `""` nothing; `"add"` `alpha = min(alpha + mu, max_alpha)`; `"multiply"` `alpha = min(alpha * mu, max_alpha)`;
    `"step"` the multiply update only when `(epoch + 1) % step_size == 0`. The current `alpha` is saved in
    `state_dict()` (extra state) so a checkpoint restores it.

    Args:
        margin (`float`, *optional*, defaults to `10.0`): margin on the logit distances, `>= 0`; `inf` gives CE.
        alpha (`float`, *optional*, defaults to `0.1`): weight of the margin penalty, `>= 0`.
        schedule (`str`, *optional*, defaults to `""`): one of `"", "add", "multiply", "step"`.
        mu (`float`, *optional*, defaults to `0.0`): the schedule's increment or factor, `>= 0`.
        max_alpha (`float`, *optional*, defaults to `100.0`): upper bound of the scheduled alpha, `>= 0`.
        step_size (`int`, *optional*, defaults to `100`): epochs between `"step"` updates, `>= 1`.
        ignore_index, reduction: see [`CalibrationLoss`].

    Examples:

    >>> import torch
    >>> from mbls_nlp.losses import MarginLoss
    >>> loss_fn = MarginLoss(margin=1.0, alpha=0.5)
    >>> loss = loss_fn(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    >>> sorted(loss_fn.last_parts)
    ['ce', 'margin']
    >>> round(loss_fn.last_parts["margin"].item(), 4)  # (relu(0 - 1) + relu(3 - 1)) / 2
    1.0
    """

    part_names = ("ce", "margin")

    def __init__(
        self,
        margin: float = 10.0,
        alpha: float = 0.1,
        *,
        schedule: str = "",
        mu: float = 0.0,
        max_alpha: float = 100.0,
        step_size: int = 100,
        ignore_index: int = -100,
        reduction: str = "mean",
    ):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.margin = check_real("margin", margin, allow_inf=True)
        self.alpha = check_real("alpha", alpha)
        self.schedule = check_choice("schedule", schedule, ALPHA_SCHEDULES)
        self.mu = check_real("mu", mu)
        self.max_alpha = check_real("max_alpha", max_alpha)
        self.step_size = check_int("step_size", step_size, minimum=1)

    @property
    def part_weights(self):
        return {"ce": 1.0, "margin": self.alpha}

    def schedule_alpha(self, epoch: int) -> None:
        """Updates `alpha` per `schedule`; call once at the end of every epoch (`epoch` counts from 0)."""
        if self.schedule == "add":
            self.alpha = min(self.alpha + self.mu, self.max_alpha)
        elif self.schedule == "multiply":
            self.alpha = min(self.alpha * self.mu, self.max_alpha)
        elif self.schedule == "step" and (epoch + 1) % self.step_size == 0:
            self.alpha = min(self.alpha * self.mu, self.max_alpha)

    def get_extra_state(self):
        return {"alpha": self.alpha}

    def set_extra_state(self, state):
        self.alpha = check_real("alpha", state["alpha"])

    def _per_position(self, z, y):
        ce, pen = margin_cross_entropy(z, y, self.margin)
        return {"ce": ce, "margin": pen / z.shape[1]}

    def extra_repr(self):
        sched = f", schedule={self.schedule!r}, mu={self.mu}" if self.schedule else ""
        return f"margin={self.margin}, alpha={self.alpha}{sched}, " + super().extra_repr()


class MarginOptimum(NamedTuple):
    """Where MbLS leaves the logits of one example that fit its label: see `margin_optimum`."""

    gap: float
    confidence: float


def margin_optimum(margin: float, alpha: float, num_classes: int) -> MarginOptimum:
    """The logit distance and confidence that MbLS (`MarginLoss`) drives one correctly fitted example towards.

    Free logits `z` of one example with label `y` minimise `CE(z, y) + alpha * mean_k relu(z_y - z_k - margin)` (a
    convex function) where every other class sits at the same distance `d = z_y - z_k` from the label's logit, and

        d* = max(margin, ln(K / alpha - K + 1))   for alpha < 1;   d* = margin   for alpha >= 1,

    with confidence `1 / (1 + (K - 1) e^-d*)` (`1 - alpha (K - 1) / K` at the balance point). Why: past the margin
    each other logit is pulled in with a constant force `alpha / K`, while cross-entropy pushes it out with its
    probability `e^-d / (1 + (K - 1) e^-d)`; the two balance at `ln(K / alpha - K + 1)`. Below that point the margin
    no longer sets where the logits end: at `alpha = 0.1` and 20 classes every margin below 5.20 ends at 5.20
    (confidence 0.905), and a lower cap needs a larger `alpha`. Above it the margin is the cap (margin 10: 0.9991). A
    network does not reach this point on every example (cross-entropy's push fades like `e^-d`, so distances below
    the margin approach it slowly); it is the most confidence the loss rewards, not a prediction of a model's
    confidences.

    Args:
        margin (`float`): `MarginLoss`'s margin, `>= 0`; `inf` is cross-entropy (no finite optimum).
        alpha (`float`): the penalty's weight, `>= 0`; `0` is cross-entropy.
        num_classes (`int`): the number of classes `K`, `>= 2`.

    Returns:
        `MarginOptimum(gap, confidence)`: `d*` (`inf` for cross-entropy) and the label's softmax probability there.

    Examples:

    >>> from mbls_nlp.losses import margin_optimum
    >>> [round(v, 4) for v in margin_optimum(10.0, 0.1, 20)]  # the paper's defaults: the margin is the cap
    [10.0, 0.9991]
    >>> [round(v, 4) for v in margin_optimum(2.0, 0.1, 20)]  # below ln(20 / 0.1 - 19) = 5.1985, alpha is the cap
    [5.1985, 0.905]
    >>> [round(v, 4) for v in margin_optimum(2.0, 0.5, 20)]
    [3.0445, 0.525]
    """
    margin = check_real("margin", margin, allow_inf=True)
    alpha = check_real("alpha", alpha)
    num_classes = check_int("num_classes", num_classes, minimum=2)
    if alpha == 0.0 or math.isinf(margin):
        return MarginOptimum(math.inf, 1.0)
    balance = math.log(num_classes / alpha - num_classes + 1) if alpha < 1.0 else -math.inf
    gap = max(margin, balance)
    return MarginOptimum(gap, 1.0 / (1.0 + (num_classes - 1) * math.exp(-gap)))


def _row_blocks(n: int, c: int):
    rows = max(1, _BLOCK_ELEMENTS // c)
    return rows, range(0, n, rows)


class _ACLSCrossEntropy(torch.autograd.Function):
    """Per-row `(ce, pos, neg)` of ACLS with a hand-written backward, in cache-sized row blocks like
    `_MarginCrossEntropy`.

    `pos_i = t_i * relu(max_i - margin)^2` with `t_i` the number of logits equal to the row maximum (the reference's
    indicator counts every tied maximum), `neg_i = sum_k relu(max_i - z_ik - margin)^2 / (C - 1)` with the max
    detached (no gradient through it). Gradients: `d pos_i / d z_ij = 2 t_i relu(max_i - margin) 1[j = argmax_i]`
    (the first maximal index, as autograd through `torch.max(dim=1)`), `d neg_i / d z_ij = -2 relu(max_i - z_ij -
    margin) / (C - 1)` (zero at the max itself for any margin >= 0).
    """

    @staticmethod
    def forward(ctx, z, y, margin):
        n, c = z.shape
        rows, starts = _row_blocks(n, c)
        mx, arg = torch.max(z, dim=1)
        threshold = mx - margin
        ce, neg, ties = z.new_empty(n), z.new_empty(n), z.new_empty(n)
        buf = z.new_empty(min(rows, n), c)
        for s in starts:
            zb, b = z[s : s + rows], buf[: min(rows, n - s)]
            torch.ops.aten._log_softmax.out(zb, 1, False, out=b)
            torch.gather(b, 1, y[s : s + rows, None], out=ce[s : s + rows, None])
            torch.eq(zb, mx[s : s + rows, None], out=b)
            torch.sum(b, 1, out=ties[s : s + rows])
            torch.sub(threshold[s : s + rows, None], zb, out=b)
            b.clamp_(min=0)
            b.mul_(b)
            torch.sum(b, 1, out=neg[s : s + rows])
        ce.neg_()
        neg.div_(max(c - 1, 1))  # C = 1: no other class, neg = 0
        top = threshold.clamp(min=0)
        pos = ties * top * top
        ctx.save_for_backward(z, y, threshold, arg, ties * top)
        return ce, pos, neg

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ce, g_pos, g_neg):
        z, y, threshold, arg, ties_top = ctx.saved_tensors
        n, c = z.shape
        rows, starts = _row_blocks(n, c)
        grad = torch.empty_like(z)
        buf = z.new_empty(min(rows, n), c)
        scale = g_neg * (-2.0 / max(c - 1, 1))
        for s in starts:
            zb, gb, b = z[s : s + rows], grad[s : s + rows], buf[: min(rows, n - s)]
            torch.ops.aten._softmax.out(zb, 1, False, out=gb)
            gb.mul_(g_ce[s : s + rows, None])
            torch.sub(threshold[s : s + rows, None], zb, out=b)
            b.clamp_(min=0)
            gb.addcmul_(b, scale[s : s + rows, None])
        grad.scatter_add_(1, y[:, None], -g_ce[:, None])
        grad.scatter_add_(1, arg[:, None], (2.0 * ties_top * g_pos)[:, None])
        return grad, None, None


class ACLSLoss(CalibrationLoss):
    """Adaptive and conditional label smoothing (`"acls"`, Park et al., ICCV 2023), as the reference's `ACLS`.

    With `max_i = max_j z_ij`, per valid position:
    `loss = CE + alpha * (pos_lambda * t_i * relu(max_i - margin)^2
    + neg_lambda * sum_{k != argmax} relu(sg(max_i) - z_ik - margin)^2 / (C - 1))`, `sg` = stop-gradient and `t_i`
    the number of logits tied at the maximum. Averaged over positions this is the reference's
    `pos.sum() / N + neg.sum() / (N * (C - 1))`. Parts: `("ce", "pos", "neg")` with weights
    `(1, alpha * pos_lambda, alpha * neg_lambda)`; the reference logs `reg = pos_lambda * pos + neg_lambda * neg`.

    Reference code: github.com/cvlab-yonsei/ACLS, `calibrate/losses/acls.py` (formula only; that code is GPL-3.0),
    defaults from `configs/loss/acls.yaml` (`pos_lambda: 1.0, neg_lambda: 0.1, alpha: 0.1, margin: 10.0`). As in the
    reference and unlike MbLS, the max is detached in the term of the other classes (MbLS backpropagates through it),
    the top logit itself is pushed below the margin by the `pos` term, and distances are squared. Unlike the
    reference, ignored positions are excluded from the regulariser too (the reference averages it over every row).
    Forward and backward are fused by hand (`_ACLSCrossEntropy`); the `pos` gradient goes to the first maximal index.

    Args:
        pos_lambda (`float`, *optional*, defaults to `1.0`): weight of the top-logit term, `>= 0`.
        neg_lambda (`float`, *optional*, defaults to `0.1`): weight of the other-classes term, `>= 0`.
        alpha (`float`, *optional*, defaults to `0.1`): weight of the whole regulariser, `>= 0`.
        margin (`float`, *optional*, defaults to `10.0`): margin on the logits and logit distances, `>= 0`.
        ignore_index, reduction: see [`CalibrationLoss`].

    Examples:

    >>> import torch
    >>> from mbls_nlp.losses import ACLSLoss
    >>> loss_fn = ACLSLoss(margin=1.0)
    >>> _ = loss_fn(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))
    >>> loss_fn.last_parts["pos"].item(), loss_fn.last_parts["neg"].item()  # relu(3 - 1)^2, relu(3 - 0 - 1)^2 / 1
    (4.0, 4.0)
    """

    part_names = ("ce", "pos", "neg")

    def __init__(
        self,
        pos_lambda: float = 1.0,
        neg_lambda: float = 0.1,
        alpha: float = 0.1,
        margin: float = 10.0,
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
    ):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.pos_lambda = check_real("pos_lambda", pos_lambda)
        self.neg_lambda = check_real("neg_lambda", neg_lambda)
        self.alpha = check_real("alpha", alpha)
        self.margin = check_real("margin", margin)

    @property
    def part_weights(self):
        return {"ce": 1.0, "pos": self.alpha * self.pos_lambda, "neg": self.alpha * self.neg_lambda}

    def _per_position(self, z, y):
        ce, pos, neg = _ACLSCrossEntropy.apply(z.contiguous(), y, self.margin)
        return {"ce": ce, "pos": pos, "neg": neg}

    def extra_repr(self):
        return (
            f"pos_lambda={self.pos_lambda}, neg_lambda={self.neg_lambda}, alpha={self.alpha}, margin={self.margin}, "
            + super().extra_repr()
        )


class _DualFocal(torch.autograd.Function):
    """Per-row dual focal loss `-(1 - p_y + p_j)^gamma log p_y` with a hand-written backward (row blocks).

    `p_j` is the largest probability of a class whose logit is strictly below the target's (`0` when none is).
    With `s = 1 - p_y + p_j`, `w = s^gamma`, `A = -log p_y * gamma * s^(gamma - 1)` and `p = softmax(z)`:
    `d loss / d z_k = p_k (w + A (p_y - p_j)) + A p_j 1[k = j] - (w + A p_y) 1[k = y]`, since
    `d p_y / d z_k = p_y (1[k = y] - p_k)` and likewise for `p_j`; one softmax pass and two scatters, as the
    cross-entropy's backward.
    """

    @staticmethod
    def forward(ctx, z, y, gamma):
        n, c = z.shape
        rows, starts = _row_blocks(n, c)
        lse, key = z.new_empty(n), z.new_empty(n)
        j = torch.empty(n, dtype=torch.long, device=z.device)
        z_y = z.gather(1, y[:, None])
        # z_k - (-0) = z_k + 0 is +0 for z_k = -0 as well, while -0 - (+0) would be -0 (and -1/-0 = +inf).
        z_y_sub = torch.where(z_y == 0, -0.0, z_y)
        buf = z.new_empty(min(rows, n), c)
        for s in starts:
            zb, b = z[s : s + rows], buf[: min(rows, n - s)]
            torch.logsumexp(zb, 1, out=lse[s : s + rows])
            # The largest logit strictly below z_y without a boolean mask (a masked fill costs more than the
            # softmax): with d_k = z_k - z_y, -1/d_k is positive exactly for d_k < 0 and largest for the d_k
            # closest to 0; d_k = +0 (the target and its ties) gives -inf, d_k > 0 a negative value.
            torch.sub(zb, z_y_sub[s : s + rows], out=b)
            b.reciprocal_().neg_()
            torch.max(b, 1, out=(key[s : s + rows], j[s : s + rows]))
        logp_y = z_y[:, 0] - lse
        logp_j = torch.where(key > 0, z.gather(1, j[:, None])[:, 0] - lse, -math.inf)
        p_j = logp_j.exp()  # exp(-inf) = 0 when no class is below the target
        s_ = -torch.expm1(logp_y) + p_j  # 1 - p_y without cancellation for p_y close to 1
        w = s_**gamma
        loss = -w * logp_y
        ctx.gamma = gamma
        ctx.save_for_backward(z, y, j, logp_y, p_j, s_, w)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        z, y, j, logp_y, p_j, s_, w = ctx.saved_tensors
        gamma = ctx.gamma
        n, c = z.shape
        rows, starts = _row_blocks(n, c)
        p_y = logp_y.exp()
        if gamma == 0:
            a = torch.zeros_like(w)
        else:
            # -log p_y <= s, so A -> 0 as s -> 0 even for gamma < 1; s = 0 (p_y rounds to 1) gives A = 0.
            a = torch.where(s_ > 0, -logp_y * gamma * s_.clamp(min=torch.finfo(s_.dtype).tiny) ** (gamma - 1), 0.0)
        coef = g * (w + a * (p_y - p_j))
        grad = torch.empty_like(z)
        for s in starts:
            zb, gb = z[s : s + rows], grad[s : s + rows]
            torch.ops.aten._softmax.out(zb, 1, False, out=gb)
            gb.mul_(coef[s : s + rows, None])
        grad.scatter_add_(1, j[:, None], (g * a * p_j)[:, None])
        grad.scatter_add_(1, y[:, None], (-g * (w + a * p_y))[:, None])
        return grad, None, None


class DualFocalLoss(CalibrationLoss):
    """Dual focal loss (`"dfl"`, Tao et al., ICML 2023): `-(1 - p_y + p_j)^gamma * log p_y`. Parts: `("dfl",)`.

    `p_j` is, as in the reference code, the largest probability strictly below the target's (`0` when the target has
    the smallest probability); the focal weight is differentiated through `p_y` and `p_j` as in the reference. We
    compare logits (`z_k < z_y`) where the reference compares probabilities; they differ only when two distinct
    logits round to one probability. The reference sums over positions (`size_average=False`); `reduction="mean"`
    averages like the other losses here. Forward and backward are fused by hand (`_DualFocal`); among tied `p_j`
    the gradient goes to the first.

    Reference code: github.com/Linwei94/ICML2023-DualFocalLoss, `dual_focal_loss.py` (`Losses/dual_focal_loss.py`
    before the commit "remove unrelated files"). Default `gamma = 3` from its `train_scripts/cifar10.sh` 20 Newsgroups
    run (`--loss dual_focal_loss --gamma 3`); its CIFAR ResNet-50 runs use 5, the README's table 2.3 to 6.1.

    Args:
        gamma (`float`, *optional*, defaults to `3.0`): focusing parameter `>= 0`; `0` is cross-entropy.
        ignore_index, reduction: see [`CalibrationLoss`].

    Examples:

    >>> import math, torch
    >>> from mbls_nlp.losses import DualFocalLoss
    >>> z = torch.log(torch.tensor([[2.0, 1.0, 1.0]]))  # p = [1/2, 1/4, 1/4]; target 0: p_j = 1/4
    >>> expected = (1 - 0.5 + 0.25) ** 2 * math.log(2)  # (1 - p_y + p_j)^gamma * -log p_y
    >>> round(DualFocalLoss(gamma=2.0)(z, torch.tensor([0])).item(), 6) == round(expected, 6)
    True
    """

    part_names = ("dfl",)

    def __init__(self, gamma: float = 3.0, *, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.gamma = check_real("gamma", gamma)

    def _per_position(self, z, y):
        return {"dfl": _DualFocal.apply(z.contiguous(), y, self.gamma)}

    def extra_repr(self):
        return f"gamma={self.gamma}, " + super().extra_repr()


class _ClassMarginLagrangian(torch.autograd.Function):
    """Per-row cross-entropy and CALS penalty (PHR augmented Lagrangian of `h = (max_j z_j - z_k - margin) / margin`
    with one multiplier `lambda_k` and penalty parameter `rho_k` per class), hand-written backward, row blocks.

    With `r_ik = relu(lambda_k + rho_k h_ik)`, the penalty of a row is `pen_i = mean_k P(h_ik)` where
    `P = (r^2 - lambda^2) / (2 rho)` for `rho > 0` (the reference's `phr`) and its `rho -> 0` limit `lambda * h` for
    `rho = 0`; in both cases `dP / dh = r`. So `d pen_i / d z_ij = (R_i * 1[j is a maximum] / t_i - r_ij) /
    (C margin)` with `R_i = sum_k r_ik` and `t_i` the number of tied maxima (the reference's `amax` shares the max's
    gradient evenly among them).

    Side outputs (no gradient), the statistics of the multiplier update: `multiplier_sum_k = sum_i clamp(r_ik,
    lambda_min, lambda_max)` and `z_sum_k = sum_i z_ik` (the constraint sum is derived from it and `sum_i max_i`).
    """

    @staticmethod
    def forward(ctx, z, y, margin, lambd, rho, lambda_min, lambda_max):
        n, c = z.shape
        rows, starts = _row_blocks(n, c)
        mx = torch.amax(z, dim=1)
        threshold = mx - margin
        slope = rho / margin
        positive = rho > 0
        # P = c1 * r^2 + c2 * h + c0 per class: (1 / (2 rho), 0, -lambda^2 / (2 rho)) or, for rho = 0, (0, lambda, 0).
        c1 = torch.where(positive, 0.5 / rho.clamp(min=torch.finfo(z.dtype).tiny), 0.0)
        c0 = -(lambd * lambd * c1).sum()
        c2 = torch.where(positive, 0.0, lambd)
        ce, pen = z.new_empty(n), z.new_empty(n)
        multiplier_sum, z_sum = z.new_zeros(c), z.new_zeros(c)
        buf = z.new_empty(min(rows, n), c)
        clamped = torch.empty_like(buf)
        for s in starts:
            m = min(rows, n - s)
            zb, b, cb = z[s : s + rows], buf[:m], clamped[:m]
            torch.ops.aten._log_softmax.out(zb, 1, False, out=b)
            torch.gather(b, 1, y[s : s + rows, None], out=ce[s : s + rows, None])
            z_sum += zb.sum(0)
            torch.sub(threshold[s : s + rows, None], zb, out=b)
            b.mul_(slope).add_(lambd).clamp_(min=0)  # r = relu(lambda + rho * h)
            torch.clamp(b, lambda_min, lambda_max, out=cb)
            multiplier_sum += cb.sum(0)
            b.mul_(b)
            torch.mv(b, c1, out=pen[s : s + rows])
        ce.neg_()
        pen.add_(c0)
        if bool((c2 != 0).any()):
            # sum_k lambda_k h_ik for the rho = 0 classes: ((max_i - margin) sum_k c2_k - z_i . c2) / margin
            pen.add_((threshold * c2.sum() - torch.mv(z, c2)) / margin)
        pen.div_(c)
        ctx.margin = margin
        ctx.save_for_backward(z, y, mx, threshold, slope, lambd)
        ctx.mark_non_differentiable(multiplier_sum, z_sum)
        return ce, pen, multiplier_sum, z_sum

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ce, g_pen, _g_multiplier, _g_z):
        z, y, mx, threshold, slope, lambd = ctx.saved_tensors
        n, c = z.shape
        rows, starts = _row_blocks(n, c)
        grad = torch.empty_like(z)
        buf = z.new_empty(min(rows, n), c)
        scale = g_pen / (c * ctx.margin)
        for s in starts:
            m = min(rows, n - s)
            zb, gb, b = z[s : s + rows], grad[s : s + rows], buf[:m]
            sb = scale[s : s + rows]
            torch.ops.aten._softmax.out(zb, 1, False, out=gb)
            gb.mul_(g_ce[s : s + rows, None])
            torch.sub(threshold[s : s + rows, None], zb, out=b)
            b.mul_(slope).add_(lambd).clamp_(min=0)
            total = b.sum(1)
            gb.addcmul_(b, -sb[:, None])
            torch.eq(zb, mx[s : s + rows, None], out=b)
            ties = b.sum(1)
            gb.addcmul_(b, (sb * total / ties)[:, None])
        grad.scatter_add_(1, y[:, None], -g_ce[:, None])
        return grad, None, None, None, None, None, None


class ClassAdaptiveLoss(CalibrationLoss):
    """Class adaptive label smoothing (`"cals"`, Liu et al., CVPR 2023): CE plus an augmented Lagrangian of the
    margin constraints `h_k = (max_j z_j - z_k - margin) / margin <= 0`, one multiplier per class.

    Per valid position `loss = CE + mean_k P(h_k; lambda_k, rho_k)` with the PHR penalty
    `P = (relu(lambda + rho h)^2 - lambda^2) / (2 rho)` (for `rho = 0` its limit `lambda h`). Parts: `("ce",
    "penalty")`, weights `(1, 1)`. The multipliers `lambda` (`(C,)`, starting at `lambda_min`) and penalty parameters
    `rho` (`(C,)`, starting at `rho_min`) are fixed during an epoch and updated at its end by
    [`~ClassAdaptiveLoss.update_multipliers`] from statistics that forward passes accumulate:

    - `lambda_k <- clamp(mean_i clamp(relu(lambda_k + rho_k h_ik), lambda_min, lambda_max), lambda_min, lambda_max)`,
      the mean penalty gradient `dP / dh` over the positions of the validation pass that follows the epoch
      (`multipliers_from="validation"`, the reference's rule) or of the epoch's training batches
      (`multipliers_from="train"`, or when no validation statistics are given);
    - every `rho_step` epochs, `rho_k <- clamp(rho_gamma * rho_k, rho_min, rho_max)` for the classes whose mean
      constraint `mean_i h_ik` (over the same positions) is still above `tao * max(previous mean, 0)` (the previous
      epoch's).

    Forward passes in training mode (`loss.train()`, the default) add their statistics to running sums (kept in the
    `state_dict`, so a mid-epoch checkpoint keeps them); every forward also leaves its own in `last_statistics`.
    A training loop calls `update_multipliers(epoch)` at each epoch end; with several processes it sums
    `epoch_statistics` over them first and passes the sums. `CalibrationTrainer` does both.

    Reference code: github.com/by-liu/CALS (MIT), `calibrate/lagrangian/aug_lagrangian_class.py`
    (`AugLagrangianClass`), `penalty.py` (`phr`), defaults from `configs/lag/aug_lagrangian_class.yaml`
    (`margin: 20, penalty: phr, lambd_min: 1e-6, lambd_max: 1e6, lambd_step: 1, rho: 1, rho_step: 10, gamma: 1.2,
    tao: 0.9, normalize: True`,
    `rho_max` 10 from the class). The reference estimates both updates on the validation set, in its per-epoch
    validation pass (`update_lambd` in `eval_epoch`), which is the default here; `CalibrationTrainer` passes the
    statistics of the evaluation at the epoch's end (`eval_strategy="epoch"`) and falls back to the training ones
    when none follows. The validation set then steers training (as in the reference), besides choosing a searched
    candidate and fitting the temperature. Like the reference, the loss is the mean over positions and classes, the
    update's statistics use the multipliers of the epoch, and the max is not detached; ignored positions are
    excluded everywhere.

    Args:
        margin (`float`, *optional*, defaults to `20.0`): margin on the logit distances, `> 0` (it also normalises
            `h`).
        lambda_min (`float`, *optional*, defaults to `1e-6`): initial value and lower bound of the multipliers, `>= 0`.
        lambda_max (`float`, *optional*, defaults to `1e6`): upper bound of the multipliers, `>= lambda_min`.
        rho_min (`float`, *optional*, defaults to `1.0`): initial value and lower bound of `rho`, `>= 0`.
        rho_max (`float`, *optional*, defaults to `10.0`): upper bound of `rho`, `>= rho_min`.
        rho_step (`int`, *optional*, defaults to `10`): epochs between `rho` updates; `0` keeps `rho` fixed.
        rho_gamma (`float`, *optional*, defaults to `1.2`): growth factor of `rho`, `>= 1`.
        tao (`float`, *optional*, defaults to `0.9`): required improvement ratio of the mean constraint, `>= 0`.
        multipliers_from (`str`, *optional*, defaults to `"validation"`): whose statistics the end-of-epoch update
            reads when both are at hand: `"validation"` (the validation pass's, as the reference) or `"train"` (the
            epoch's training batches', the network's own fit of them).
        ignore_index, reduction: see [`CalibrationLoss`].

    Examples:

    >>> import torch
    >>> from mbls_nlp.losses import ClassAdaptiveLoss
    >>> loss_fn = ClassAdaptiveLoss(margin=1.0, lambda_min=0.5, rho_step=0)
    >>> _ = loss_fn(torch.tensor([[3.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
    >>> loss_fn.update_multipliers(epoch=0)  # class 1: r = relu(0.5 + (3 - 0 - 1) / 1) = 2.5 in row 0, 0 in row 1
    >>> loss_fn.lambd.tolist()  # class 0 max in both rows: r = relu(0.5 - 1) = 0 -> clamped to 0.5
    [0.5, 1.5]
    """

    part_names = ("ce", "penalty")
    statistic_names = ("count", "multiplier", "constraint")

    def __init__(
        self,
        margin: float = 20.0,
        lambda_min: float = 1e-6,
        lambda_max: float = 1e6,
        rho_min: float = 1.0,
        rho_max: float = 10.0,
        rho_step: int = 10,
        rho_gamma: float = 1.2,
        tao: float = 0.9,
        multipliers_from: str = "validation",
        *,
        ignore_index: int = -100,
        reduction: str = "mean",
    ):
        super().__init__(ignore_index=ignore_index, reduction=reduction)
        self.margin = check_real("margin", margin, strict=True)  # > 0: it normalises the constraint
        self.lambda_min = check_real("lambda_min", lambda_min)
        self.lambda_max = check_real("lambda_max", lambda_max)
        self.rho_min = check_real("rho_min", rho_min)
        self.rho_max = check_real("rho_max", rho_max)
        for low, high in (("lambda_min", "lambda_max"), ("rho_min", "rho_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"`{low}` must be <= `{high}`, got {getattr(self, low)} > {getattr(self, high)}.")
        if isinstance(rho_step, bool) or not isinstance(rho_step, int) or rho_step < 0:
            raise ValueError(f"`rho_step` must be an int >= 0 (0: rho fixed), got {rho_step!r}.")
        self.rho_step = rho_step
        self.rho_gamma = check_real("rho_gamma", rho_gamma)
        if self.rho_gamma < 1:
            raise ValueError(f"`rho_gamma` must be >= 1, got {self.rho_gamma}.")
        self.tao = check_real("tao", tao)
        self.multipliers_from = check_choice("multipliers_from", multipliers_from, CALS_MULTIPLIER_SOURCES)
        # (C,) tensors, created at the first forward (or by load_state_dict) once the number of classes is known.
        self.lambd: torch.Tensor | None = None
        self.rho: torch.Tensor | None = None
        self.previous_constraint: torch.Tensor | None = None
        self.epoch_statistics: dict[str, torch.Tensor] | None = None
        self.last_statistics: dict[str, torch.Tensor] = {}

    # ---- state ----

    def _ensure_state(self, num_classes: int, device) -> None:
        if self.lambd is None:
            self.lambd = torch.full((num_classes,), self.lambda_min, dtype=torch.float64)
            self.rho = torch.full((num_classes,), self.rho_min, dtype=torch.float64)
        if self.lambd.numel() != num_classes:
            raise ValueError(
                f"`logits` have {num_classes} classes but the CALS multipliers were set for {self.lambd.numel()}."
            )
        if self.epoch_statistics is None:
            self.epoch_statistics = self._zero_statistics(num_classes)
        if self.lambd.device != torch.device(device):
            self.lambd, self.rho = self.lambd.to(device), self.rho.to(device)
            self.epoch_statistics = {k: v.to(device) for k, v in self.epoch_statistics.items()}
            if self.previous_constraint is not None:
                self.previous_constraint = self.previous_constraint.to(device)

    @staticmethod
    def _zero_statistics(num_classes: int, device=None) -> dict[str, torch.Tensor]:
        def zeros(*shape):
            return torch.zeros(shape, dtype=torch.float64, device=device)

        return {"count": zeros(), "multiplier": zeros(num_classes), "constraint": zeros(num_classes)}

    def _no_valid_position(self, z):
        # the statistics of this forward are zero (a caller summing `last_statistics` must not add the previous ones)
        self.last_statistics = self._zero_statistics(z.shape[1], z.device)

    def get_extra_state(self):
        if self.lambd is None:
            return {}
        state = {"lambd": self.lambd.cpu(), "rho": self.rho.cpu()}
        state.update({f"epoch_{k}": v.cpu() for k, v in self.epoch_statistics.items()})
        if self.previous_constraint is not None:
            state["previous_constraint"] = self.previous_constraint.cpu()
        return state

    def set_extra_state(self, state):
        if not state:
            self.lambd = self.rho = self.previous_constraint = self.epoch_statistics = None
            return
        lambd, rho = state["lambd"].double(), state["rho"].double()
        if lambd.dim() != 1 or lambd.shape != rho.shape or not (lambd >= 0).all() or not (rho >= 0).all():
            raise ValueError("CALS state: `lambd` and `rho` must be 1-D tensors of one length with values >= 0.")
        self.lambd, self.rho = lambd, rho
        self.epoch_statistics = {k: state[f"epoch_{k}"].double() for k in self.statistic_names}
        previous = state.get("previous_constraint")
        self.previous_constraint = None if previous is None else previous.double()

    # ---- forward and update ----

    def _per_position(self, z, y):
        z = z.contiguous()
        self._ensure_state(z.shape[1], z.device)
        lambd, rho = self.lambd.to(z.dtype), self.rho.to(z.dtype)
        ce, pen, multiplier_sum, z_sum = _ClassMarginLagrangian.apply(
            z, y, self.margin, lambd, rho, self.lambda_min, self.lambda_max
        )
        with torch.no_grad():
            n = z.shape[0]
            # sum_i h_ik = (sum_i max_i - n * margin - sum_i z_ik) / margin
            max_sum = torch.amax(z.detach(), dim=1).double().sum()
            constraint = (max_sum - n * self.margin - z_sum.double()) / self.margin
            count = torch.tensor(float(n), dtype=torch.float64, device=z.device)
            self.last_statistics = {"count": count, "multiplier": multiplier_sum.double(), "constraint": constraint}
            if self.training:
                for k, v in self.last_statistics.items():
                    self.epoch_statistics[k] += v
        return {"ce": ce, "penalty": pen}

    def update_multipliers(
        self,
        epoch: int,
        statistics: Mapping[str, torch.Tensor] | None = None,
        validation: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        """The end-of-epoch update of `lambd` and (every `rho_step` epochs) `rho`; resets `epoch_statistics`.

        Args:
            epoch (`int`): the 0-based index of the epoch that just ended (`rho` moves when `(epoch + 1) % rho_step
                == 0`, as in the reference).
            statistics (`Mapping[str, torch.Tensor]`, *optional*): the epoch's sums `count`, `multiplier`,
                `constraint` (the `epoch_statistics` of every process, summed); defaults to this process's
                `epoch_statistics`.
            validation (`Mapping[str, torch.Tensor]`, *optional*): the same sums over the validation pass that
                follows the epoch (forwards in eval mode, `last_statistics` summed); with
                `multipliers_from="validation"` and at least one position, both updates read it instead of
                `statistics`.
        """
        statistics = self.epoch_statistics if statistics is None else statistics
        if self.lambd is None or statistics is None:
            return  # no forward yet: nothing to update
        device = self.lambd.device
        source = statistics
        if self.multipliers_from == "validation" and validation is not None and validation["count"] > 0:
            source = validation
        count = source["count"].to(device, torch.float64)
        if count > 0:
            mean_gradient = source["multiplier"].to(device, torch.float64) / count
            self.lambd = mean_gradient.clamp(min=self.lambda_min, max=self.lambda_max)
            constraint = source["constraint"].to(device, torch.float64) / count
            if self.rho_step > 0:
                if (epoch + 1) % self.rho_step == 0 and self.previous_constraint is not None:
                    grow = constraint > self.tao * self.previous_constraint.clamp(min=0)
                    self.rho = torch.where(grow, self.rho_gamma * self.rho, self.rho)
                    self.rho = self.rho.clamp(min=self.rho_min, max=self.rho_max)
                self.previous_constraint = constraint
        self.epoch_statistics = self._zero_statistics(self.lambd.numel(), device)

    def multiplier_summary(self) -> dict[str, float]:
        """`cals_lambda_mean`, `cals_lambda_max`, `cals_rho` (mean) and `cals_rho_max`, for the logs."""
        if self.lambd is None:
            return {}
        return {
            "cals_lambda_mean": self.lambd.mean().item(),
            "cals_lambda_max": self.lambd.max().item(),
            "cals_rho": self.rho.mean().item(),
            "cals_rho_max": self.rho.max().item(),
        }

    def extra_repr(self):
        return (
            f"margin={self.margin}, rho_step={self.rho_step}, multipliers_from={self.multipliers_from!r}, "
            + super().extra_repr()
        )


@dataclass(frozen=True)
class LossSpec:
    """One entry of [`LOSS_REGISTRY`]: what the config, the search and the help texts need to know about a loss.

    The config field of a hyper-parameter takes its default from the loss class's keyword (the paper default), so a
    default is written once, in the class signature.

    Args:
        name (`str`):
            The `loss_type` value: a short lowercase word (`"mbls"`).
        cls (`type[CalibrationLoss]`):
            The loss class; `build_loss(name, **kwargs)` returns `cls(**kwargs)`.
        hparams (`Mapping[str, str]`, *optional*, defaults to `{}`):
            `CalibrationConfig` field -> keyword of `cls`, for every hyper-parameter the config sets (all but
            `ignore_index`, which every loss takes from `loss_ignore_index`).
        search_grid (`Mapping[str, tuple[float, ...]]`, *optional*, defaults to `{}`):
            `CalibrationConfig` field -> the validation search's default candidates; its fields are the ones a
            search may vary. Empty when the loss has nothing to tune (its search trains nothing).
    """

    name: str
    cls: type[CalibrationLoss]
    hparams: Mapping[str, str] = field(default_factory=dict)
    search_grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"`name` must be a short lowercase word such as 'mbls', got {self.name!r}.")
        if not (isinstance(self.cls, type) and issubclass(self.cls, CalibrationLoss)):
            raise TypeError(f"`cls` must be a subclass of CalibrationLoss, got {self.cls!r}.")
        parameters = inspect.signature(self.cls).parameters
        keywords = [
            name
            for name, p in parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is not p.empty
            and name not in ("ignore_index", "reduction")
        ]
        for config_field, keyword in self.hparams.items():
            if keyword not in keywords:
                raise ValueError(
                    f"`hparams` maps {config_field!r} to {keyword!r}, which is not a keyword of "
                    f"{self.cls.__name__}; allowed: {keywords}."
                )
        grid = {}
        for config_field, values in self.search_grid.items():
            if config_field not in self.hparams:
                raise ValueError(
                    f"`search_grid` varies {config_field!r}, which is not in `hparams`; allowed: {list(self.hparams)}."
                )
            values = tuple(float(value) for value in values)
            if not values or len(set(values)) != len(values):
                raise ValueError(f"`search_grid` must give distinct values of {config_field!r}, got {values}.")
            grid[config_field] = values
        # Read-only views: the registry is shared by every module that reads it.
        object.__setattr__(self, "hparams", MappingProxyType(dict(self.hparams)))
        object.__setattr__(self, "search_grid", MappingProxyType(grid))

    @property
    def defaults(self) -> dict[str, Any]:
        """`CalibrationConfig` field -> the default of its keyword in `cls` (the paper default)."""
        parameters = inspect.signature(self.cls).parameters
        return {config_field: parameters[keyword].default for config_field, keyword in self.hparams.items()}

    @property
    def searchable(self) -> dict[str, str]:
        """`CalibrationConfig` field -> keyword of `cls`, for the fields a search may vary."""
        return {config_field: self.hparams[config_field] for config_field in self.search_grid}


def _registry(*specs: LossSpec) -> dict[str, LossSpec]:
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"Loss names must be unique in the registry; repeated: {repeated}.")
    return {spec.name: spec for spec in specs}


#: The one table of losses, in the order help texts list them: `loss_type` -> [`LossSpec`]. Adding a loss means its
#: class above and one entry here (plus a `CalibrationConfig` field for a new hyper-parameter); the config, the
#: search, `build_loss` and every help text read it. The grids surround the paper defaults (margin 10 / alpha 0.1,
#: epsilon 0.05, gamma 3, beta 0.1, weight 1; ACLS margin 10 / alpha 0.1, DFL gamma 3, CALS margin 20).
LOSS_REGISTRY: dict[str, LossSpec] = _registry(
    LossSpec("ce", CrossEntropyLoss),
    LossSpec("ls", LabelSmoothingLoss, {"ls_epsilon": "epsilon"}, {"ls_epsilon": (0.01, 0.05, 0.1, 0.2)}),
    LossSpec("focal", FocalLoss, {"focal_gamma": "gamma"}, {"focal_gamma": (1.0, 2.0, 3.0, 5.0)}),
    LossSpec("flsd", FLSDLoss),
    LossSpec("ecp", ConfidencePenaltyLoss, {"ecp_beta": "beta"}, {"ecp_beta": (0.05, 0.1, 0.2, 0.5)}),
    LossSpec("mmce", MMCELoss, {"mmce_weight": "weight"}, {"mmce_weight": (0.5, 1.0, 2.0, 4.0)}),
    LossSpec("brier", BrierLoss),
    LossSpec(
        "mbls",
        MarginLoss,
        {
            "margin": "margin",
            "alpha": "alpha",
            "alpha_schedule": "schedule",
            "alpha_mu": "mu",
            "alpha_max": "max_alpha",
            "alpha_step_size": "step_size",
        },
        {"margin": (0.0, 2.0, 4.0, 6.0, 8.0, 10.0), "alpha": (0.1, 0.5, 1.0)},
    ),
    LossSpec(
        "acls",
        ACLSLoss,
        {
            "acls_pos_lambda": "pos_lambda",
            "acls_neg_lambda": "neg_lambda",
            "acls_alpha": "alpha",
            "acls_margin": "margin",
        },
        {"acls_margin": (6.0, 8.0, 10.0, 12.0), "acls_alpha": (0.05, 0.1, 0.2)},
    ),
    LossSpec("dfl", DualFocalLoss, {"dfl_gamma": "gamma"}, {"dfl_gamma": (2.0, 3.0, 4.0, 5.0)}),
    LossSpec(
        "cals",
        ClassAdaptiveLoss,
        {
            "cals_margin": "margin",
            "cals_lambda_min": "lambda_min",
            "cals_lambda_max": "lambda_max",
            "cals_rho_min": "rho_min",
            "cals_rho_max": "rho_max",
            "cals_rho_step": "rho_step",
            "cals_rho_gamma": "rho_gamma",
            "cals_tao": "tao",
            "cals_multipliers_from": "multipliers_from",
        },
        {"cals_margin": (5.0, 10.0, 20.0)},
    ),
)
#: The registered loss names (the keys of `LOSS_REGISTRY`), kept as a tuple for the `choices` of the command lines.
LOSS_NAMES: tuple[str, ...] = tuple(LOSS_REGISTRY)


def build_loss(name: str, **kwargs) -> CalibrationLoss:
    """Builds a loss by its short name.

    Args:
        name (`str`): a key of [`LOSS_REGISTRY`] (the names are `LOSS_NAMES`).
        **kwargs: the loss class's keyword arguments (e.g. `margin`, `alpha` for `"mbls"`).

    Returns:
        [`CalibrationLoss`]: the loss module.

    Examples:

    >>> from mbls_nlp.losses import build_loss
    >>> build_loss("mbls", margin=6.0)
    MarginLoss(margin=6.0, alpha=0.1, ignore_index=-100, reduction='mean')
    """
    spec = LOSS_REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"Unknown loss name {name!r}; `name` must be one of {tuple(LOSS_REGISTRY)}.")
    return spec.cls(**kwargs)
