"""The shared input checks of the losses, the calibration metrics and temperature scaling (pure torch/numpy).

One home for each check and each message (issue 12): every public function of `losses.py`, `calibration.py` and
`temperature.py` validates its arguments here, so the same bad input gets the same error everywhere. What is
specific to a caller stays with it (the loss's fused single-synchronisation value check, the metrics' chunked
finiteness and probability checks).

Accepted array types, everywhere: a `torch.Tensor` (any device; labels must be on the scores' device) or a
`numpy.ndarray`. numpy float dtypes that torch cannot hold (e.g. `np.longdouble`) are widened to float64. Python
lists and tuples are rejected: their dtype is a guess (`[0, 1]` is integer, `[0.5, 1]` float64) and a ragged list
has no shape; call `torch.as_tensor` or `np.asarray` first. Scores must have a floating-point dtype, labels an
integer dtype (not bool).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: Upper bound of `n_bins`. The metrics keep per-bin tables of `n_bins` (top label) and `C * n_bins` (classwise)
#: float64 sums per chunk of rows, so memory grows linearly with it (at 10_000 bins and 100 classes a classwise table
#: is 16 MB); 10**8 bins on 1000 x 10 scores needed 23 GB (issue 14). An ECE needs many samples per bin to mean
#: anything: 10_000 bins already leave only 100 per bin on a million samples, so no sensible use is refused.
MAX_N_BINS = 10_000

_NUMPY_TORCH_FLOATS = (np.float16, np.float32, np.float64)


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """Returns `value` as a tensor: a `torch.Tensor` as it is (autograd graph kept), a `numpy.ndarray` shared
    without a copy where torch can hold its dtype (float dtypes such as `np.longdouble` are widened to float64)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and value.dtype not in _NUMPY_TORCH_FLOATS:
            value = value.astype(np.float64)
        try:
            return torch.as_tensor(value)
        except TypeError as err:  # object, string, ... arrays
            raise TypeError(
                f"`{name}` has numpy dtype {value.dtype}, which torch cannot hold: use a number dtype."
            ) from err
    raise TypeError(f"`{name}` must be a torch.Tensor or a numpy.ndarray, got {type(value).__name__}.")


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Returns `value` as an `int`; Python and numpy integers are accepted, bools are not."""
    bounds = "" if minimum is None else f" >= {minimum}"
    if maximum is not None:
        bounds += f" and <= {maximum}" if bounds else f" <= {maximum}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer{bounds}, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be an integer{bounds}, got {value}.")
    return value


def check_ignore_index(value: Any, name: str = "ignore_index") -> int:
    """Returns the label value to ignore as an `int` (any integer, negative included)."""
    return check_int(name, value)


def check_n_bins(value: Any, name: str = "n_bins") -> int:
    """Returns the number of bins as an `int` in `[1, MAX_N_BINS]`."""
    return check_int(name, value, minimum=1, maximum=MAX_N_BINS)


def check_bool(name: str, value: Any, meaning: str = "") -> bool:
    """Returns `value` as a `bool`; only `True`/`False` (and numpy bools) are accepted, not `0`/`1` or strings."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False{meaning}, got {value!r}.")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Returns `value` if it is one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_real(
    name: str,
    value: Any,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    below: float | None = None,
    allow_inf: bool = False,
) -> float:
    """Returns `value` as a `float` after checking `value >= minimum` (`> minimum` if `strict`), `value < below` when
    given, and finiteness unless `allow_inf`. Python and numpy ints and floats are accepted, bools and strings not."""
    if below is not None:
        wanted = f"in {'(' if strict else '['}{minimum:g}, {below:g}) (a real number)"
    else:
        kind = "a real number; inf allowed" if allow_inf else "a finite real number"
        wanted = f"{'>' if strict else '>='} {minimum:g} ({kind})"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be {wanted}, got {value!r} ({type(value).__name__}).")
    value = float(value)
    too_low = value <= minimum if strict else value < minimum
    if math.isnan(value) or too_low or (below is not None and value >= below) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"`{name}` must be {wanted}, got {value}.")
    return value


def check_scores_and_labels(scores: torch.Tensor, labels: torch.Tensor, scores_name: str, labels_name: str = "labels"):
    """Checks the dtypes, the classes-on-dim-1 shapes `(N, C, d1, ...)` vs `(N, d1, ...)` and the devices."""
    if not scores.is_floating_point():
        raise TypeError(f"`{scores_name}` must be a floating-point array (torch or numpy), got dtype {scores.dtype}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"`{labels_name}` must be an integer array of class indices (e.g. torch.long), got dtype {labels.dtype}."
        )
    if scores.dim() < 2:
        raise ValueError(
            f"`{scores_name}` must have the classes on dim 1: shape (N, C) or (N, C, d1, ...), "
            f"got shape {tuple(scores.shape)}."
        )
    expected = (scores.shape[0], *scores.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"`{labels_name}` must have shape {expected} for `{scores_name}` of shape {tuple(scores.shape)} (the "
            f"expected shape is the scores' without the class dim 1), got {tuple(labels.shape)}."
        )
    if labels.device != scores.device:
        raise ValueError(
            f"`{labels_name}` is on device {labels.device} but `{scores_name}` on device {scores.device}: "
            "move both to the same device."
        )


def flatten_classes(scores: torch.Tensor) -> torch.Tensor:
    """`(N, C)` as it is; `(N, C, d1, ...)` -> `(N * d1 * ..., C)`, one row per position (a copy)."""
    return scores if scores.dim() == 2 else scores.movedim(1, -1).reshape(-1, scores.shape[1])


def non_finite_error(name: str, what: str = "") -> ValueError:
    """The error for NaN or +-inf in `name` (`what` says e.g. "logits" or "probabilities")."""
    return ValueError(f"`{name}`{f' ({what})' if what else ''} must be finite: found NaN or inf.")


def label_range_error(num_classes: int, ignore_index: int, found: str, labels_name: str = "labels") -> ValueError:
    """The error for labels outside `[0, C)` that are not `ignore_index`; `found` describes the offending values."""
    return ValueError(
        f"`{labels_name}` must lie in [0, {num_classes}) (C={num_classes} from the scores' dim 1) or equal "
        f"ignore_index={ignore_index}; found {found}."
    )


def prepare(
    scores: Any, labels: Any, ignore_index: int, *, scores_name: str = "scores", labels_name: str = "labels"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validates evaluation inputs (no autograd) and returns `(x, y, valid)`.

    `x` is the detached scores as `(M, C)` rows (classes-first flattening), `y` the labels as int64 `(M,)` on the
    scores' device, `valid` the mask of rows whose label is not `ignore_index` (`None` when every row is valid).
    Raises when the scores are empty, no row is valid, or a valid label lies outside `[0, C)`. Finiteness of the
    scores is left to the caller, which reads them anyway.
    """
    x = as_tensor(scores, scores_name).detach()
    y = as_tensor(labels, labels_name).detach()
    check_scores_and_labels(x, y, scores_name, labels_name)
    num_classes = x.shape[1]
    if x.numel() == 0 or num_classes == 0:
        raise ValueError(
            f"`{scores_name}` is empty (shape {tuple(x.shape)}): at least one position and one class needed."
        )
    x, y = flatten_classes(x), y.reshape(-1)
    if y.device.type == "cpu":
        # numpy for the label checks: single-threaded and free of per-op OpenMP barrier stalls on a busy CPU
        y_np = y.numpy().astype(np.int64, copy=False)
        valid_np = y_np != ignore_index
        num_valid = int(np.count_nonzero(valid_np))
        y_valid = y_np[valid_np] if 0 < num_valid < y_np.size else y_np
        y, valid = torch.from_numpy(y_np), torch.from_numpy(valid_np)
    else:
        y = y.long()
        valid = y != ignore_index
        num_valid = int(valid.sum())
        y_valid = y[valid] if 0 < num_valid < y.numel() else y
    if num_valid == 0:
        raise ValueError(
            f"`{labels_name}` has no position to evaluate: all {y.numel()} labels equal ignore_index={ignore_index}, "
            "which leaves an empty set."
        )
    low, high = int(y_valid.min()), int(y_valid.max())
    if low < 0 or high >= num_classes:
        raise label_range_error(num_classes, ignore_index, f"values from {low} to {high}", labels_name)
    return x, y, (valid if num_valid < y.numel() else None)
