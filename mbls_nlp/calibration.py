"""Calibration metrics: accuracy, ECE, adaptive ECE, classwise ECE, MCE, NLL, Brier score and reliability bins.

Pure torch/numpy: usable from any training or evaluation loop. Every public function takes the same inputs:

- `scores`: logits (default) or probabilities (`from_logits=False`), a torch tensor (any float dtype, any device) or
  a numpy array, with the classes on dim 1: `(N, C)` or `(N, C, d1, d2, ...)`.
- `labels`: integer class indices of shape `(N,)` or `(N, d1, d2, ...)`, a torch tensor on the scores' device or a
  numpy array (with CPU scores); positions whose label equals `ignore_index` are excluded from every metric.
- Python lists are not accepted (their dtype is a guess): the same input types as the losses and temperature
  scaling (`mbls_nlp._checks`).
- `n_bins`: from 1 to `MAX_N_BINS` (10_000): the per-bin tables grow with it, and more bins than that leave too few
  samples per bin for any realistic evaluation set.

Exact definitions (`M` = number of valid positions, `p` = probability vectors, `conf = max_k p_k` the top-label
confidence, `pred = argmax_k p_k` (first index on ties), `1[.]` the indicator):

- equal-width bins: bin `b` (0-based, of `n_bins`) holds the confidences with `b/n_bins < c <= (b+1)/n_bins`, i.e.
  `b = ceil(n_bins * c) - 1`; a confidence of exactly 0 goes to the first bin and exactly 1.0 to the last one.
  (torchmetrics uses left-closed bins and puts 1.0 in a hidden extra bin, Lightning-AI/torchmetrics#3510.)
- `accuracy = mean 1[pred = y]`.
- `ece = sum_b |acc_b - conf_b| * n_b / M` over equal-width bins of `conf` (`acc_b`, `conf_b` the bin means).
- `aece`: the same sum over equal-mass bins: the positions are sorted by `conf` with a stable sort (ties keep their
  input order) and split into `n_bins` consecutive groups whose sizes differ by at most one (the first
  `M mod n_bins` groups get one more); every position is counted; with fewer positions than bins some groups are
  empty and contribute nothing.
- `cece`: classwise ECE over all `C` classes of the scores' shape: for each class `k`, equal-width bins over `p_k` of
  every position, `sum_b |mean_b 1[y = k] - mean_b p_k| * n_b / M`; then the mean over the `C` classes.
- `mce = max_b |acc_b - conf_b|` over the non-empty equal-width bins.
- `nll = mean -log p_y`; from logits it is computed as a log-softmax (`x_y - logsumexp(x)`), so it stays finite
  however confident the model is; from probabilities it is infinite when some `p_y` is 0.
- `brier = mean sum_k (p_k - 1[y = k])^2` (between 0 and 2).

Numerics: probabilities are computed in the scores' dtype (float16/bfloat16 are upcast to float32), exactly like
`torch.softmax`; bin indices are computed in float64 (exact for float32 values); every sum is accumulated in
float64, so results equal a float64 computation on the same probabilities to ~1e-12.

Speed: the scores are processed in row chunks of about a megabyte, so each chunk stays in cache across the passes
(validation, softmax, argmax, column sums); the full `(N, C)` probability matrix is never materialised and nothing
of size `N * C` is copied to float64. Classwise bins only need the few `p_k > 1/n_bins` (fewer than `n_bins` per
row); everything else is in bin 0, whose sum comes from the column sums. On CPU the chunks are shared by a pool of
`torch.get_num_threads()` worker threads that each run torch single-threaded (the caller's setting is restored).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ._checks import MAX_N_BINS, check_bool, check_ignore_index, check_n_bins, non_finite_error, prepare

__all__ = [
    "MAX_N_BINS",
    "METRIC_NAMES",
    "accuracy",
    "adaptive_calibration_error",
    "brier_score",
    "calibration_report",
    "classwise_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
]

#: Keys of `calibration_report`, in order.
METRIC_NAMES = ("accuracy", "ece", "aece", "cece", "mce", "nll", "brier")

# Rows of a probability vector must sum to 1 within this tolerance when `from_logits=False`.
_ROW_SUM_TOL = 1e-3
# Elements per chunk (about 1 MB of float32): small enough to stay in L2/L3 across the per-chunk passes, large
# enough that per-op dispatch overhead is negligible (a rough sweep of 2^17..2^22 on a loaded CPU; not critical).
_CHUNK_ELEMENTS = 1 << 18


# ----------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------
def _check_options(n_bins: Any, from_logits: Any, ignore_index: Any) -> int:
    """Checks the keyword arguments shared by every metric; returns `n_bins` as an int."""
    check_bool("from_logits", from_logits, " (True: logits, False: probabilities)")
    check_ignore_index(ignore_index)
    return check_n_bins(n_bins)


def _prepare(scores: Any, labels: Any, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Returns `(x, y, valid)`: scores as `(rows, C)`, labels as `(rows,)` on the scores' device, and the mask of
    valid rows (`None` when every row is valid); see `mbls_nlp._checks.prepare`."""
    return prepare(scores, labels, ignore_index, scores_name="scores")


# ----------------------------------------------------------------------------------------------------------------
# the single pass over the scores
# ----------------------------------------------------------------------------------------------------------------
def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    # b = ceil(n * c) - 1 realises (b/n, (b+1)/n] with 0 -> first and 1.0 -> last bin. In float64 the product of a
    # float32 confidence and n_bins < 2^29 is exact, so the bin is exact, not subject to float32 rounding.
    bins = np.ceil(np.asarray(values, dtype=np.float64) * n_bins).astype(np.int64) - 1
    return np.clip(bins, 0, n_bins - 1, out=bins)


def _buffer(buffers: dict, name: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    # Reused per worker: a fresh ~1 MB tensor per op per chunk costs page faults that dominate the arithmetic
    # (measured single-threaded on 1M x 100: softmax into a new tensor 250 ms, into a reused buffer 88 ms).
    dtype = like.dtype if dtype is None else dtype
    buf = buffers.get(name)
    if buf is None or buf.dtype != dtype or buf.numel() < like.numel():
        buf = buffers[name] = torch.empty(like.numel(), dtype=dtype, device=like.device)
    return buf[: like.numel()].view(like.shape)


def _scan_chunk(x, y, valid, start, stop, from_logits, n_bins, need, need_py, buffers) -> dict | None:
    """Validates rows `start:stop` of the scores and returns their statistics (small tensors)."""
    xc, yc = x[start:stop], y[start:stop]
    if valid is not None:
        vc = valid[start:stop]
        xc, yc = xc[vc], yc[vc]
        if yc.numel() == 0:
            return None
    if xc.dtype in (torch.float16, torch.bfloat16):
        xc = xc.float()
    xc = xc.contiguous()
    on_cpu = xc.device.type == "cpu"
    low, high = torch.aminmax(xc)  # NaN propagates into both; one pass over a chunk that then stays in cache
    if not (torch.isfinite(low) & torch.isfinite(high)):
        raise non_finite_error("scores", "logits" if from_logits else "probabilities, from_logits=False")
    if from_logits:
        p = torch.softmax(xc, dim=1, out=_buffer(buffers, "p", xc))
    else:
        if low < 0 or high > 1:
            raise ValueError(
                f"`scores` must be probabilities in [0, 1] when from_logits=False; found values from "
                f"{float(low):.6g} to {float(high):.6g} (pass from_logits=True for logits)."
            )
        # row sums of C terms in the scores' dtype are far more precise than the 1e-3 tolerance
        worst = (xc.sum(dim=1) - 1.0).abs_().max()
        if worst > _ROW_SUM_TOL:
            raise ValueError(
                f"`scores` rows must sum to 1 (tolerance {_ROW_SUM_TOL}) when from_logits=False; found a row "
                f"off by {float(worst):.6g} (pass from_logits=True for logits)."
            )
        p = xc
    yc1 = yc.unsqueeze(1)
    if on_cpu:
        # numpy's row argmax (first maximum, like torch) is ~4x faster than torch.max(dim=1) on CPU (torch 2.13)
        pred = torch.from_numpy(p.numpy().argmax(axis=1))
        conf = p.gather(1, pred.unsqueeze(1)).squeeze(1)
    else:
        conf, pred = p.max(dim=1)
    # Everything below is reduced per chunk, inside the worker, to a few float64 numbers or per-bin sums: fresh
    # N-sized float64 arrays are expensive here (page faults) and the reductions then run in parallel.
    conf_np = conf.cpu().numpy()
    correct_np = (pred == yc).cpu().numpy()
    conf64 = conf_np.astype(np.float64)
    bins = _bin_index(conf64, n_bins)
    out = {
        "conf": conf_np,
        "correct": correct_np,
        "count": np.bincount(bins, minlength=n_bins),
        "conf_sum": np.bincount(bins, weights=conf64, minlength=n_bins),
        "acc_sum": np.bincount(bins, weights=correct_np, minlength=n_bins),
    }
    y_np = yc.cpu().numpy()
    if need_py:
        p_true = p.gather(1, yc1).squeeze(1).cpu().numpy().astype(np.float64)
        out["p_true_sum"] = p_true.sum()
    if "nll" in need and from_logits:
        # log p_y = x_y - logsumexp(x), and logsumexp(x) = x_k - log p_k for any k; k = pred has p_k >= 1/C, so the
        # log is well conditioned and the NLL finite even where p_y underflows to 0.
        x_true = xc.gather(1, yc1).squeeze(1).cpu().numpy().astype(np.float64)
        x_pred = xc.gather(1, pred.unsqueeze(1)).squeeze(1).cpu().numpy().astype(np.float64)
        out["nll_sum"] = np.sum(x_pred - x_true - np.log(conf64))
    elif "nll" in need:
        with np.errstate(divide="ignore"):
            out["nll_sum"] = -np.sum(np.log(p_true))
    if need & {"brier", "cece"}:
        # float64 copy of the chunk into a reused buffer: column sums and sum of squares accumulate in float64
        p64 = _buffer(buffers, "p64", p, torch.float64).copy_(p)
        if "cece" in need:
            out["col_sum"] = p64.sum(dim=0).cpu().numpy()
        if "brier" in need:
            out["sq_sum"] = float(p64.mul_(p64).sum())
    if "cece" in need:
        num_classes = p.shape[1]
        # Elements at or below this threshold are surely in classwise bin 0 (p <= 1/n); only those above it (fewer
        # than n_bins per row, since a row sums to 1) are binned one by one; bin 0's sum comes from column sums.
        threshold = (1.0 / n_bins) * (1.0 - 1e-6)
        flat = p.view(-1)
        if on_cpu:  # numpy's compare + flatnonzero: ~4x faster than torch.nonzero here
            mask = _buffer(buffers, "mask", flat, torch.bool).numpy()
            idx = np.flatnonzero(np.greater(flat.numpy(), threshold, out=mask))
            sel_vals = flat.numpy()[idx].astype(np.float64)
        else:
            idx_t = torch.nonzero(flat > threshold).squeeze(1)
            idx, sel_vals = idx_t.cpu().numpy(), flat[idx_t].cpu().numpy().astype(np.float64)
        sel_cls = idx % num_classes
        keys = sel_cls * n_bins + _bin_index(sel_vals, n_bins)
        # astype: np.bincount returns int64 when nothing was selected, even with (empty) float weights
        p_sum = np.bincount(keys, weights=sel_vals, minlength=num_classes * n_bins).astype(np.float64)
        p_sum = p_sum.reshape(num_classes, n_bins)
        # everything not selected lies in bin 0: its sum is the column sum minus the selected part
        p_sum[:, 0] += out["col_sum"] - np.bincount(sel_cls, weights=sel_vals, minlength=num_classes)
        out["p_sum"] = p_sum
        hit_keys = y_np * n_bins + _bin_index(p_true, n_bins)
        out["hits"] = np.bincount(hit_keys, minlength=num_classes * n_bins).reshape(num_classes, n_bins)
    return out


def _in_single_threaded_torch(restore_to: int, fn, *args):
    # Each worker runs its torch ops single-threaded: then no op waits at an OpenMP barrier for a thread that the
    # OS has descheduled. On a shared CPU those waits cost a scheduler slice per op (measured: a 100k-element op
    # taking 8 ms instead of 0.05 ms), and the pool still uses every core. The setting is restored afterwards to
    # the caller's value (read once in the calling thread: another worker may be mid-chunk at 1 thread).
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(restore_to)


def _scan(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor | None, from_logits: bool, n_bins: int, need: set):
    """One chunked pass over the scores: validates them and returns, as numpy arrays and float64 sums, the per-row
    and per-class statistics that the metrics in `need` (a subset of {"top", "nll", "brier", "cece"}) require."""
    num_classes = x.shape[1]
    rows = max(1, _CHUNK_ELEMENTS // num_classes)
    need_py = bool(need & {"brier", "cece"}) or ("nll" in need and not from_logits)
    starts = range(0, x.shape[0], rows)
    args = (x, y, valid, from_logits, n_bins, need, need_py)
    threads = torch.get_num_threads()
    workers = min(len(starts), threads)
    if workers <= 1 or x.device.type != "cpu":
        buffers: dict = {}
        return _combine(_scan_chunk(x, y, valid, s, s + rows, *args[3:], buffers) for s in starts)
    local = threading.local()  # one set of reusable buffers per worker thread

    def work(s):
        if not hasattr(local, "buffers"):
            local.buffers = {}
        return _in_single_threaded_torch(threads, _scan_chunk, x, y, valid, s, s + rows, *args[3:], local.buffers)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return _combine(pool.map(work, starts))


def _combine(chunks) -> dict:
    """Adds up the chunks' statistics as they arrive. The per-bin tables (`C * n_bins` for classwise) are summed in
    place rather than kept per chunk until the end, so memory does not grow with the number of rows (issue 14)."""
    out: dict = {}
    conf, correct, floats = [], [], {}
    for c in chunks:
        if c is None:
            continue
        conf.append(c["conf"])
        correct.append(c["correct"])
        for key in ("count", "conf_sum", "acc_sum", "p_sum", "hits"):
            if key in c:
                if key in out:
                    out[key] += c[key]
                else:
                    out[key] = c[key]
        for key in ("p_true_sum", "nll_sum", "sq_sum"):
            if key in c:
                floats.setdefault(key, []).append(float(c[key]))
    out["conf"], out["correct"] = np.concatenate(conf), np.concatenate(correct)
    out["m"] = out["conf"].size
    out.update({key: math.fsum(values) for key, values in floats.items()})
    return out


def _metric(name: str, stats: dict, n_bins: int) -> float:
    m = stats["m"]
    if name == "accuracy":
        return float(np.count_nonzero(stats["correct"]) / m)
    if name == "ece":
        return float(np.abs(stats["acc_sum"] - stats["conf_sum"]).sum() / m)
    if name == "mce":
        nonempty = stats["count"] > 0
        gaps = np.abs(stats["acc_sum"][nonempty] - stats["conf_sum"][nonempty]) / stats["count"][nonempty]
        return float(gaps.max())
    if name == "aece":
        sizes = np.full(n_bins, m // n_bins, dtype=np.int64)
        sizes[: m % n_bins] += 1
        conf = stats["conf"]
        if conf.dtype == np.float32:
            # Only group membership matters, not the order inside a group: partition (O(M) per boundary) instead of
            # sorting. Key = (float bits, position): the bits of a non-negative float32 order like its value, and
            # the position breaks ties exactly as a stable sort does. Measured on 1e6: 0.07 s vs 0.27 s.
            key = (conf.view(np.int32).astype(np.int64) << 32) | np.arange(m, dtype=np.int64)
            kth = np.unique(np.cumsum(sizes)[:-1])
            kth = kth[(kth > 0) & (kth < m)]
            order = np.argpartition(key, kth) if kth.size else np.arange(m)
        else:
            order = np.argsort(conf, kind="stable")
        group = np.repeat(np.arange(n_bins), sizes)
        conf_sum = np.bincount(group, weights=conf[order].astype(np.float64), minlength=n_bins)
        acc_sum = np.bincount(group, weights=stats["correct"][order], minlength=n_bins)
        return float(np.abs(acc_sum - conf_sum).sum() / m)
    if name == "cece":
        num_classes = stats["p_sum"].shape[0]
        return float(np.abs(stats["hits"] - stats["p_sum"]).sum() / (m * num_classes))
    if name == "nll":
        return stats["nll_sum"] / m
    if name == "brier":
        # sum_k (p_k - 1[y=k])^2 = sum_k p_k^2 - 2 p_y + 1
        return (stats["sq_sum"] - 2.0 * stats["p_true_sum"]) / m + 1.0
    raise AssertionError(name)  # unreachable: names come from METRIC_NAMES


_NEEDS = {
    "accuracy": {"top"},
    "ece": {"top"},
    "aece": {"top"},
    "mce": {"top"},
    "cece": {"cece"},
    "nll": {"nll"},
    "brier": {"brier"},
}


def _compute(names, scores, labels, n_bins, from_logits, ignore_index) -> dict[str, float]:
    n_bins = _check_options(n_bins, from_logits, ignore_index)
    x, y, valid = _prepare(scores, labels, int(ignore_index))
    need = set().union(*(_NEEDS[n] for n in names))
    with torch.no_grad():
        stats = _scan(x, y, valid, bool(from_logits), n_bins, need)
        return {n: _metric(n, stats, n_bins) for n in names}


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
_ARGS_DOC = """
    Args:
        scores (`torch.Tensor` or `np.ndarray`):
            Logits, or probabilities when `from_logits=False`, of shape `(N, C)` or `(N, C, d1, ...)` (classes on
            dim 1); any float dtype and device. Must be finite; probabilities must lie in [0, 1] with rows summing
            to 1 (tolerance 1e-3).
        labels (`torch.Tensor` or `np.ndarray`):
            Integer class indices of shape `(N,)` or `(N, d1, ...)`, in `[0, C)` or equal to `ignore_index`, on the
            device of `scores`.
        n_bins (`int`, *optional*, defaults to 15):
            Number of bins, from 1 to `MAX_N_BINS` (10_000).
        from_logits (`bool`, *optional*, defaults to `True`):
            Whether `scores` are logits (a softmax is applied) or probabilities.
        ignore_index (`int`, *optional*, defaults to -100):
            Label value of positions excluded from the metric.
"""


def calibration_report(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> dict[str, float]:
    """All calibration metrics from one pass over the scores (definitions in the module docstring).
    {args}
    Returns:
        `dict[str, float]`: keys `METRIC_NAMES` = `accuracy, ece, aece, cece, mce, nll, brier`, as fractions.

    Raises:
        `ValueError` or `TypeError` on bad input, naming the argument and the expected values.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import calibration_report
    >>> probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    >>> # brier: ((0.9 - 1)^2 + 0.1^2 + (0.4 - 1)^2 + 0.6^2) / 2 = (0.02 + 0.72) / 2 = 0.37; nll: -log(0.9 * 0.4) / 2
    >>> report = calibration_report(probs, torch.tensor([0, 0]), n_bins=10, from_logits=False)
    >>> {{k: round(v, 4) for k, v in report.items()}}
    {{'accuracy': 0.5, 'ece': 0.35, 'aece': 0.35, 'cece': 0.35, 'mce': 0.6, 'nll': 0.5108, 'brier': 0.37}}
    """
    return _compute(METRIC_NAMES, scores, labels, n_bins, from_logits, ignore_index)


def accuracy(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Top-1 accuracy `mean 1[argmax_k p_k = y]` over the valid positions (`n_bins` is accepted for uniformity
    and only validated).
    {args}
    Returns:
        `float`: the accuracy, a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import accuracy
    >>> accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]))
    0.5
    """
    return _compute(("accuracy",), scores, labels, n_bins, from_logits, ignore_index)["accuracy"]


def expected_calibration_error(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Expected calibration error of the top-label confidence over equal-width bins `(b/n, (b+1)/n]` (0 in the
    first bin, 1.0 in the last): `sum_b |acc_b - conf_b| * n_b / M`.
    {args}
    Returns:
        `float`: the ECE, a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import expected_calibration_error
    >>> # bin (0.8, 0.9]: conf 0.9, acc 1 -> 0.1; bin (0.5, 0.6]: conf 0.6, acc 0 -> 0.6; (0.1 + 0.6) / 2
    >>> round(expected_calibration_error(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]),
    ...                                  n_bins=10, from_logits=False), 6)
    0.35
    """
    return _compute(("ece",), scores, labels, n_bins, from_logits, ignore_index)["ece"]


def adaptive_calibration_error(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Adaptive (equal-mass) ECE: positions stably sorted by top-label confidence and split into `n_bins`
    consecutive groups whose sizes differ by at most one (the first `M mod n_bins` are one larger); every position
    counts; `sum_g |acc_g - conf_g| * n_g / M`. Fewer positions than bins leave some groups empty.
    {args}
    Returns:
        `float`: the adaptive ECE, a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import adaptive_calibration_error
    >>> # sorted confs 0.6 (wrong), 0.9 (right); 1 bin: |1 - 1.5| / 2 = 0.25
    >>> round(adaptive_calibration_error(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]),
    ...                                  n_bins=1, from_logits=False), 6)
    0.25
    """
    return _compute(("aece",), scores, labels, n_bins, from_logits, ignore_index)["aece"]


def classwise_calibration_error(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Classwise ECE: for every class `k` of the scores' `C`, equal-width bins over `p_k` of all positions,
    `sum_b |mean_b 1[y=k] - mean_b p_k| * n_b / M`; then averaged over the `C` classes.
    {args}
    Returns:
        `float`: the classwise ECE, a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import classwise_calibration_error
    >>> # class 0: p 0.9 (y=0), 0.4 (y=0) in separate bins -> (0.1 + 0.6) / 2; class 1 the same by symmetry
    >>> round(classwise_calibration_error(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]),
    ...                                   n_bins=10, from_logits=False), 6)
    0.35
    """
    return _compute(("cece",), scores, labels, n_bins, from_logits, ignore_index)["cece"]


def maximum_calibration_error(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Maximum calibration error: `max_b |acc_b - conf_b|` over the non-empty equal-width bins of the top-label
    confidence.
    {args}
    Returns:
        `float`: the MCE, a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import maximum_calibration_error
    >>> round(maximum_calibration_error(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]),
    ...                                 n_bins=10, from_logits=False), 6)
    0.6
    """
    return _compute(("mce",), scores, labels, n_bins, from_logits, ignore_index)["mce"]


def negative_log_likelihood(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Mean negative log-likelihood `-log p_y` of the true class; from logits via the log-softmax, so it is finite
    for finite logits; from probabilities it is infinite where `p_y = 0`. `n_bins` is only validated.
    {args}
    Returns:
        `float`: the NLL in nats.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import negative_log_likelihood
    >>> # -log(0.5) = 0.693147...
    >>> round(negative_log_likelihood(torch.tensor([[0.0, 0.0]]), torch.tensor([1])), 6)
    0.693147
    """
    return _compute(("nll",), scores, labels, n_bins, from_logits, ignore_index)["nll"]


def brier_score(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """Multiclass Brier score `mean sum_k (p_k - 1[y=k])^2` (between 0 and 2). `n_bins` is only validated.
    {args}
    Returns:
        `float`: the Brier score.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import brier_score
    >>> # (0.9 - 1)^2 + 0.1^2 = 0.02
    >>> round(brier_score(torch.tensor([[0.9, 0.1]]), torch.tensor([0]), from_logits=False), 6)
    0.02
    """
    return _compute(("brier",), scores, labels, n_bins, from_logits, ignore_index)["brier"]


def reliability_bins(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> dict[str, list]:
    """Per equal-width bin of the top-label confidence, the table behind a reliability diagram.
    {args}
    Returns:
        `dict[str, list]`: JSON-serialisable lists of length `n_bins`: `bin_lower` (`b/n`), `bin_upper`
        (`(b+1)/n`), `count` (int), `confidence` (mean confidence) and `accuracy` (fraction correct); the last two
        are `None` for empty bins.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import reliability_bins
    >>> # both confidences are 0.75, in bin (0.5, 1.0]; one of the two predictions is right
    >>> table = reliability_bins(torch.tensor([[0.75, 0.25], [0.25, 0.75]]), torch.tensor([0, 0]), n_bins=2,
    ...                          from_logits=False)
    >>> table["count"], table["confidence"], table["accuracy"]
    ([0, 2], [None, 0.75], [None, 0.5])
    """
    n_bins = _check_options(n_bins, from_logits, ignore_index)
    x, y, valid = _prepare(scores, labels, int(ignore_index))
    with torch.no_grad():
        stats = _scan(x, y, valid, bool(from_logits), n_bins, {"top"})
        count, conf_sum, acc_sum = (stats[k].tolist() for k in ("count", "conf_sum", "acc_sum"))
    return {
        "bin_lower": [b / n_bins for b in range(n_bins)],
        "bin_upper": [(b + 1) / n_bins for b in range(n_bins)],
        "count": [int(c) for c in count],
        "confidence": [s / c if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [s / c if c else None for s, c in zip(acc_sum, count)],
    }


for _fn in (
    calibration_report,
    accuracy,
    expected_calibration_error,
    adaptive_calibration_error,
    classwise_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    brier_score,
    reliability_bins,
):
    _fn.__doc__ = _fn.__doc__.format(args=_ARGS_DOC.rstrip() + "\n")
del _fn
