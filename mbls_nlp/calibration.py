"""Calibration metrics: accuracy, ECE (and its over/under split), adaptive ECE, classwise ECE, MCE, NLL, Brier score,
debiased and smooth calibration errors, reliability bins and bootstrap intervals.

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
- `ece_over = sum_b max(conf_b - acc_b, 0) * n_b / M` and `ece_under = sum_b max(acc_b - conf_b, 0) * n_b / M` over
  the equal-width bins of `ece`: the over- and under-confident parts, `ece = ece_over + ece_under`.
- `dsce`: the debiased squared calibration error of Kumar, Liang & Ma (NeurIPS 2019) over the equal-mass groups of
  `aece`, `sum_g n_g / M * ((conf_g - acc_g)^2 - acc_g (1 - acc_g) / (n_g - 1))` (groups of < 2 positions count 0);
  `dce = sqrt(max(dsce, 0))`. Unlike the binned ECE it is not biased upwards by the sampling noise of `acc_g`.
- `smece`: the smooth ECE of Blasiok & Nakkiran (2023): kernel regression of `conf - 1[pred = y]` on `conf` with a
  reflected Gaussian kernel whose width is the fixed point `smece_sigma = sigma` (see `smooth_calibration_error`).

Uncertainty: `calibration_report(..., n_bootstrap=B)` adds percentile bootstrap intervals (`<name>_low`,
`<name>_high`) from `B` resamples of the examples of dim 0 (whole sequences/images with trailing dims), and
`paired_bootstrap` the interval of a difference between two models on the same resamples. Each resample is a
vector of counts per example; every metric follows from count-weighted sums (matrix products, cumulative sums for
the equal-mass groups), so no Python loop runs per resample. Percentile intervals of the estimators that sampling
noise biases upwards (`cece` and `mce` always, `ece`/`aece`/`smece` of a well-calibrated model) sit above the
estimate and can exclude it: a resample repeats examples, so its bins are noisier and the bias is added once more.
Such an interval shows the spread; its offset from the estimate (replicates' mean minus estimate) estimates the
bias. On the 20 Newsgroups text CNN's 7,532 test messages (benchmarks/study_20ng, MbLS seed 1): `cece` 1.24%
[1.26, 1.42], `ece` 8.41% [7.38, 9.35]. Compare models with `paired_bootstrap` (much of the bias cancels in a
difference) or by `dce`, whose first-order bias is removed.

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
import statistics
import threading
import warnings
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
    "debiased_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "overconfidence_error",
    "paired_bootstrap",
    "reliability_bins",
    "smooth_calibration_error",
    "underconfidence_error",
]

#: Keys of `calibration_report`, in order.
METRIC_NAMES = (
    "accuracy",
    "ece",
    "aece",
    "cece",
    "mce",
    "nll",
    "brier",
    "ece_over",
    "ece_under",
    "dsce",
    "dce",
    "smece",
)

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
    # (measurement: benchmarks/RESULTS.md, "Design measurements behind the metric code").
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
    if "rows" in need:
        # per-row terms for the bootstrap (`_Sample`): a fresh float64 copy, as the buffers are reused
        rows_p = p.cpu().numpy().astype(np.float64)
        out["rows_p"] = rows_p
        out["rows_y"] = y_np
        with np.errstate(divide="ignore"):  # from probabilities, p_y = 0 gives an infinite NLL, as in `nll`
            out["rows_nll"] = x_pred - x_true - np.log(conf64) if from_logits else -np.log(p_true)
        out["rows_brier"] = np.einsum("ij,ij->i", rows_p, rows_p) - 2.0 * p_true + 1.0
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
    # OS has descheduled (on a shared CPU a scheduler slice per op; benchmarks/RESULTS.md, "Design measurements
    # behind the metric code"), and the pool still uses every core. The setting is restored afterwards to the
    # caller's value (read once in the calling thread: another worker may be mid-chunk at 1 thread).
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
    conf, correct, floats, rows = [], [], {}, {}
    for c in chunks:
        if c is None:
            continue
        conf.append(c["conf"])
        correct.append(c["correct"])
        for key in ("rows_p", "rows_y", "rows_nll", "rows_brier"):  # per-example values, for the bootstrap
            if key in c:
                rows.setdefault(key, []).append(c[key])
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
    out.update({key: np.concatenate(values) for key, values in rows.items()})
    return out


def _mass_groups(stats: dict, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sizes, confidence sums and correct counts of the equal-mass groups (shared by `aece` and `dsce`)."""
    if "mass_groups" in stats:
        return stats["mass_groups"]
    m = stats["m"]
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
    stats["mass_groups"] = (sizes.astype(np.float64), conf_sum, acc_sum)
    return stats["mass_groups"]


def _debiased_sq(count: np.ndarray, conf_sum: np.ndarray, acc_sum: np.ndarray, m) -> np.ndarray:
    """Kumar et al.'s debiased squared error from per-bin sums on the last axis (any leading batch axes)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = acc_sum / count
        # (conf_b - acc_b)^2 overestimates the squared gap by Var(acc_b) = acc_b (1 - acc_b) / (n_b - 1) (unbiased)
        term = (conf_sum / count - acc) ** 2 - acc * (1.0 - acc) / (count - 1.0)
    term = np.where(count >= 2, term, 0.0)  # a bin of fewer than 2 positions has no variance estimate: left out
    return (term * count).sum(axis=-1) / m


# Smooth ECE (Blasiok & Nakkiran 2023): the bandwidth search stops below this sigma, and evaluates the kernel
# regression on at least this many points of [0, 1] (both as in the reference `relplot` 1.0.3).
_SMECE_MIN_SIGMA = 1e-3
_SMECE_MIN_POINTS = 200
_SMECE_BISECTIONS = 12
# The bootstrap applies the smooth ECE as a `(grid, points)` matrix up to this many elements (32 MB), by FFT beyond.
_SMECE_MATRIX_ELEMENTS = 1 << 22


def _smece_grid_size(sigma: float) -> int:
    # grid that the positions are linearly split onto before the convolution: spacing <= sigma / 10
    return max(2000, round(20 / sigma)) // 2 + 1


def _to_grid(values: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell and weight of the right neighbour: `values` in [0, 1] split linearly onto `grid` points."""
    scaled = values * (grid - 1)
    left = np.clip(scaled.astype(np.int64), 0, grid - 2)
    return left, scaled - left


def _smece_kernel(grid: int, sigma: float) -> np.ndarray:
    """Gaussian kernel of width `sigma` at the grid offsets `-(grid - 1) .. grid - 1` (in units of the spacing)."""
    offsets = np.arange(-(grid - 1), grid) / (grid - 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)


def _smece_points(sigma: float) -> int:
    # the integral over [0, 1] is a mean over this many equally spaced points
    return max(round(10 / sigma), _SMECE_MIN_POINTS)


def _smece_from_grid(mass: np.ndarray, resid: np.ndarray, sigma: float) -> np.ndarray:
    """Smooth ECE at bandwidth `sigma` from grid masses `(..., G)` of the positions and of their residuals."""
    grid = mass.shape[-1]
    both = np.stack([mass, resid])
    # reflect about 0 and 1 (the kernel mass falling outside [0, 1] folds back), then a Gaussian convolution by FFT
    ext = np.concatenate([both[..., :0:-1], both, both[..., -2::-1]], axis=-1)
    kernel = _smece_kernel(grid, sigma)
    size = 1 << (ext.shape[-1] + kernel.size - 2).bit_length()  # a power of 2 >= the full length: fast FFTs
    conv = np.fft.irfft(np.fft.rfft(ext, size) * np.fft.rfft(kernel, size), size)
    smooth = conv[..., 2 * (grid - 1) : 3 * (grid - 1) + 1]  # the original [0, 1] part of the "full" convolution
    left, frac = _to_grid(np.linspace(0.0, 1.0, _smece_points(sigma)), grid)
    at_t = smooth[..., left] * (1.0 - frac) + smooth[..., left + 1] * frac
    return np.abs(at_t[1]).sum(axis=-1) / at_t[0].sum(axis=-1)


def _smece_matrix(grid: int, sigma: float) -> np.ndarray:
    """The linear map of `_smece_from_grid` from grid masses to the smoothed values at the integration points, as
    a `(G, P)` matrix: `at_t = mass @ matrix`. For many resamples at one bandwidth one matrix product replaces two
    FFTs per resample (1,000 resamples of 10,000 x 20 at G = 1001, P = 200: about 0.01 s against 2 s)."""
    g1 = grid - 1
    kernel = _smece_kernel(grid, sigma)  # kernel[q + g1] = K(q / g1)
    j = np.arange(grid)

    def rows(s: np.ndarray) -> np.ndarray:
        # smoothed value at grid node s from a unit mass at node j: the direct term, plus its reflections about 0
        # (offset s + j, j >= 1) and about 1 (offset s + j - 2 g1, j <= g1 - 1), each while |offset| <= 1 (the
        # kernel's support in the FFT above)
        s, plus = s[:, None], s[:, None] + j
        out = kernel[s - j + g1]
        out += np.where((j >= 1) & (plus <= g1), kernel[np.minimum(plus, g1) + g1], 0.0)
        out += np.where((j <= g1 - 1) & (plus >= g1), kernel[np.maximum(plus - g1, 0)], 0.0)
        return out

    left, frac = _to_grid(np.linspace(0.0, 1.0, _smece_points(sigma)), grid)
    return (rows(left) * (1.0 - frac)[:, None] + rows(left + 1) * frac[:, None]).T


def _smece(conf: np.ndarray, correct: np.ndarray, sigma: float | None) -> tuple[float, float]:
    """Smooth ECE and its bandwidth; `sigma=None` finds the fixed point `smECE_sigma = sigma` by bisection."""
    conf = conf.astype(np.float64)
    resid = conf - correct
    masses: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def at(width):
        grid = _smece_grid_size(width)
        if grid not in masses:
            # The grid depends on the width only below sigma = 0.01 (above, it has 1001 points), so a bisection
            # visits a few grids: the per-position split is done once per grid (issue 15: it was 13 passes over
            # the positions per report, as slow as the softmax at 1M x 100).
            left, frac = _to_grid(conf, grid)
            idx = np.concatenate([left, left + 1])
            split = np.concatenate([1.0 - frac, frac])
            masses[grid] = (
                np.bincount(idx, weights=split, minlength=grid),
                np.bincount(idx, weights=split * np.concatenate([resid, resid]), minlength=grid),
            )
        return float(_smece_from_grid(*masses[grid], width))

    if sigma is not None:
        return at(sigma), sigma
    # smECE_sigma decreases in sigma: bisect for the smallest sigma with sigma >= smECE_sigma (never below 1e-3)
    low, high = 0.0, 1.0
    for _ in range(_SMECE_BISECTIONS):
        mid = (low + high) / 2
        if mid < _SMECE_MIN_SIGMA or mid < at(mid):
            low = mid
        else:
            high = mid
    return at(high), high


def _metric(name: str, stats: dict, n_bins: int) -> float:
    m = stats["m"]
    if name == "accuracy":
        return float(np.count_nonzero(stats["correct"]) / m)
    if name == "ece":
        return float(np.abs(stats["acc_sum"] - stats["conf_sum"]).sum() / m)
    if name == "ece_over":
        return float(np.maximum(stats["conf_sum"] - stats["acc_sum"], 0.0).sum() / m)
    if name == "ece_under":
        return float(np.maximum(stats["acc_sum"] - stats["conf_sum"], 0.0).sum() / m)
    if name == "mce":
        nonempty = stats["count"] > 0
        gaps = np.abs(stats["acc_sum"][nonempty] - stats["conf_sum"][nonempty]) / stats["count"][nonempty]
        return float(gaps.max())
    if name == "aece":
        _, conf_sum, acc_sum = _mass_groups(stats, n_bins)
        return float(np.abs(acc_sum - conf_sum).sum() / m)
    if name == "dsce":
        return float(_debiased_sq(*_mass_groups(stats, n_bins), m))
    if name == "dce":
        return math.sqrt(max(float(_debiased_sq(*_mass_groups(stats, n_bins), m)), 0.0))
    if name == "smece":
        if "smece" not in stats:
            stats["smece"] = _smece(stats["conf"], stats["correct"], stats.get("sigma"))
        return stats["smece"][0]
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
    "ece_over": {"top"},
    "ece_under": {"top"},
    "dsce": {"top"},
    "dce": {"top"},
    "smece": {"top"},
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
# bootstrap
# ----------------------------------------------------------------------------------------------------------------
# Resamples per chunk: about this many (resample, position) weights at a time, so the working set stays in cache.
_BOOTSTRAP_CHUNK = 1 << 20


def _check_bootstrap(n_bootstrap: Any, confidence: Any, seed: Any, names=("n_bootstrap", "confidence", "seed")):
    """The bootstrap arguments' checks; `names` are the argument names the errors give (a config's field names)."""
    n_name, confidence_name, seed_name = names
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)):
        raise TypeError(f"`{n_name}` must be an integer >= 0 (0: no intervals), got {n_bootstrap!r}.")
    if n_bootstrap < 0:
        raise ValueError(f"`{n_name}` must be an integer >= 0 (0: no intervals), got {n_bootstrap}.")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise TypeError(f"`{confidence_name}` must be a number in (0, 1), e.g. 0.95, got {confidence!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`{confidence_name}` must be in (0, 1) (a fraction, e.g. 0.95), got {confidence}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`{seed_name}` must be an integer (the bootstrap's random seed), got {seed!r}.")


def _sample(scores, labels, n_bins: int, from_logits: bool, ignore_index: int) -> dict:
    """Full-sample statistics plus what a resample needs. The resampled unit is an example of dim 0 (a whole
    sequence or image with trailing dims). Each unit has a slot, a column of the resample weights: without
    trailing dims the slots are the positions in confidence order (the order of `aece`'s groups), so that the
    equal-mass groups of a resample are runs of its weight rows; with them, the slot is the unit."""
    x, y, valid = _prepare(scores, labels, ignore_index)
    with torch.no_grad():
        stats = _scan(x, y, valid, from_logits, n_bins, {"top", "nll", "brier", "cece", "rows"})
    units = int(scores.shape[0])
    rows = np.flatnonzero(valid.cpu().numpy()) if valid is not None else np.arange(x.shape[0])
    unit = rows // (x.shape[0] // units)
    p, yy, conf = stats["rows_p"], stats["rows_y"], stats["conf"].astype(np.float64)
    m, num_classes = p.shape
    correct = stats["correct"].astype(np.float64)
    order = np.argsort(stats["conf"], kind="stable")  # the positions as `aece` groups them
    if m == units and np.array_equal(unit, np.arange(units)):
        slot_of_unit = np.empty(units, dtype=np.int64)
        slot_of_unit[order] = np.arange(units)
        slot, sorted_slot = slot_of_unit, None  # a position's slot; the slots are already in confidence order
    else:
        slot_of_unit, slot, sorted_slot = None, unit, unit[order]
    per_row = np.column_stack([np.ones(m), correct, stats["rows_nll"], stats["rows_brier"], p])
    if slot_of_unit is not None:
        dense = per_row[order]  # slot i holds the position order[i]
    else:
        dense = np.zeros((units, per_row.shape[1]))
        np.add.at(dense, slot, per_row)
    # sparse per-slot sums, one key per (statistic, bin): top-label bins, classwise hits and large p_k, smooth-ECE grid
    _, sigma = stats["smece"] = _smece(stats["conf"], stats["correct"], None)
    grid = _smece_grid_size(sigma)
    bins = _bin_index(conf, n_bins)
    cw = num_classes * n_bins
    p_true = p[np.arange(m), yy]
    threshold = (1.0 / n_bins) * (1.0 - 1e-6)  # as in `_scan_chunk`: p_k below it are surely in bin 0
    sel_row, sel_cls = np.nonzero(p > threshold)
    sel_val = p[sel_row, sel_cls]
    left, frac = _to_grid(conf, grid)
    resid = conf - correct
    base = 3 * n_bins + 2 * cw
    keys = np.concatenate(
        [
            bins,
            n_bins + bins,
            2 * n_bins + bins,
            3 * n_bins + yy * n_bins + _bin_index(p_true, n_bins),
            3 * n_bins + cw + sel_cls * n_bins + _bin_index(sel_val, n_bins),
            base + left,
            base + left + 1,
            base + grid + left,
            base + grid + left + 1,
        ]
    )
    cols = np.concatenate([slot, slot, slot, slot, slot[sel_row], slot, slot, slot, slot])
    vals = np.concatenate(
        [np.ones(m), conf, correct, np.ones(m), sel_val, 1.0 - frac, frac, (1.0 - frac) * resid, frac * resid]
    )
    # CSR (key, slot) built in numpy (torch's coalesce sorts far slower); duplicates only arise with trailing dims
    num_keys = base + 2 * grid
    flat = keys * units + cols
    key_order = np.argsort(flat, kind="stable")
    flat, vals = flat[key_order], vals[key_order]
    if flat.size > 1 and np.any(flat[1:] == flat[:-1]):
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        flat, vals = flat[starts], np.add.reduceat(vals, starts)
    crow = np.searchsorted(flat // units, np.arange(num_keys + 1))
    # check_invariants=False: the indices are valid by construction (and the check would cost a pass over them)
    with warnings.catch_warnings():  # torch warns once per process that sparse CSR support is in beta
        warnings.simplefilter("ignore", UserWarning)
        sparse = torch.sparse_csr_tensor(
            torch.from_numpy(crow),
            torch.from_numpy(flat % units),
            torch.from_numpy(vals),
            (num_keys, units),
            check_invariants=False,
        )
    # the smooth ECE's map from grid masses to the integration points, as a matrix when it fits in 32 MB
    matrix = _smece_matrix(grid, sigma).T.copy() if grid * _smece_points(sigma) <= _SMECE_MATRIX_ELEMENTS else None
    stats.update(
        units=units,
        dense=torch.from_numpy(dense),
        sparse=sparse,
        grid=grid,
        sigma=sigma,
        smece_matrix=None if matrix is None else torch.from_numpy(matrix),
        num_classes=num_classes,
        slot_of_unit=slot_of_unit,
        sorted_slot=sorted_slot,
        sorted_conf=conf[order],
        sorted_correct=correct[order],
    )
    return stats


def _mass_group_sums(sample: dict, weights: np.ndarray, n_bins: int):
    """Sizes, confidence sums and correct counts `(b, n_bins)` of the equal-mass groups of each resample."""
    # A resample's positions in confidence order are the sample's, each repeated w times; group k holds the sorted
    # copies [B_k, B_k+1). Its sums are the sums over the positions strictly inside (one `reduceat` over the
    # flattened weights) plus the share of the positions straddling B_k and B_k+1 (their copies are adjacent).
    w = weights if sample["sorted_slot"] is None else np.take(weights, sample["sorted_slot"], axis=1)
    b, m = w.shape
    conf, correct = sample["sorted_conf"], sample["sorted_correct"]
    cum = np.empty(b * m + 1)  # cum[i] = weight of the flat positions before i (exact: integers below 2^53)
    cum[0] = 0.0
    np.cumsum(w.ravel(), out=cum[1:])
    row = np.arange(b)[:, None]
    offset = cum[::m]  # (b + 1,): weight before each row
    total = (offset[1:] - offset[:-1]).astype(np.int64)
    k = np.arange(n_bins + 1)
    bounds = k * (total[:, None] // n_bins) + np.minimum(k, (total % n_bins)[:, None])  # (b, n_bins + 1)
    # j: the flat position whose copies contain copy B_k (cum[j] <= B_k < cum[j + 1]); the first and last
    # boundaries are the row's ends, and a degenerate row (no weight) stays inside itself
    j = np.searchsorted(cum, offset[:-1, None] + bounds, side="right") - 1
    j = np.clip(j, row * m, (row + 1) * m)
    j[:, 0], j[:, -1] = row[:, 0] * m, (row[:, 0] + 1) * m
    part = bounds - (cum[j] - offset[:-1, None])  # copies of position j before B_k
    starts, ends = j[:, :-1].ravel(), j[:, 1:].ravel()
    safe = np.minimum(starts, b * m - 1)

    def group_sums(values):
        inside = np.add.reduceat((w * values).ravel(), safe)
        inside = np.where(ends > starts, inside, 0.0).reshape(b, n_bins)  # reduceat gives a[i] for empty runs
        share = values[j % m] * part
        return inside - share[:, :-1] + share[:, 1:]

    return np.diff(bounds, axis=1).astype(np.float64), group_sums(conf), group_sums(correct), total


def _replicates(sample: dict, weights: np.ndarray, names, n_bins: int) -> dict[str, np.ndarray]:
    """Every metric in `names` for each row of `weights` (resample counts of the slots, shape `(b, units)`).
    The products run in torch, called single-threaded by `_bootstrap`: numpy's multi-threaded BLAS took 20x longer
    on a loaded CPU (OpenMP barrier stalls, see `_in_single_threaded_torch`)."""
    b = weights.shape[0]
    nb, num_classes, grid = n_bins, sample["num_classes"], sample["grid"]
    weights_t = torch.from_numpy(weights)
    dense = (weights_t @ sample["dense"]).numpy()
    by_key = torch.sparse.mm(sample["sparse"], weights_t.T.contiguous())  # (keys, b): the sparse per-key sums
    sparse = by_key.numpy().T
    m = dense[:, 0]
    count, conf_sum, acc_sum = sparse[:, :nb], sparse[:, nb : 2 * nb], sparse[:, 2 * nb : 3 * nb]
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        out["accuracy"] = dense[:, 1] / m
        out["nll"] = dense[:, 2] / m
        out["brier"] = dense[:, 3] / m
        out["ece"] = np.abs(acc_sum - conf_sum).sum(axis=1) / m
        out["ece_over"] = np.maximum(conf_sum - acc_sum, 0.0).sum(axis=1) / m
        out["ece_under"] = np.maximum(acc_sum - conf_sum, 0.0).sum(axis=1) / m
        out["mce"] = np.where(count > 0, np.abs(acc_sum - conf_sum) / count, -np.inf).max(axis=1)
    cw = num_classes * nb
    hits = sparse[:, 3 * nb : 3 * nb + cw].reshape(b, num_classes, nb)
    p_sum = sparse[:, 3 * nb + cw : 3 * nb + 2 * cw].reshape(b, num_classes, nb).copy()
    p_sum[:, :, 0] += dense[:, 4:] - p_sum.sum(axis=2)  # what is not above the threshold lies in bin 0
    out["cece"] = np.abs(hits - p_sum).sum(axis=(1, 2)) / (m * num_classes)
    base = 3 * nb + 2 * cw
    if sample["smece_matrix"] is None:
        out["smece"] = _smece_from_grid(sparse[:, base : base + grid], sparse[:, base + grid :], sample["sigma"])
    else:
        at_mass = (sample["smece_matrix"] @ by_key[base : base + grid]).numpy()  # (points, b)
        at_resid = (sample["smece_matrix"] @ by_key[base + grid :]).numpy()
        out["smece"] = np.abs(at_resid).sum(axis=0) / at_mass.sum(axis=0)
    if {"aece", "dsce", "dce"} & set(names):
        g_n, g_conf, g_acc, total = _mass_group_sums(sample, weights, nb)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["aece"] = np.abs(g_acc - g_conf).sum(axis=1) / total
            out["dsce"] = _debiased_sq(g_n, g_conf, g_acc, total)
        out["dce"] = np.sqrt(np.maximum(out["dsce"], 0.0))
    return {name: out[name] for name in names}


def _bootstrap(samples: list[dict], names, n_bins: int, n_bootstrap: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Replicates of every metric for each sample, all from the same resamples (so paired across samples)."""
    units = samples[0]["units"]
    rng = np.random.default_rng(int(seed))
    per_chunk = max(1, _BOOTSTRAP_CHUNK // max(units, samples[0]["m"]))
    parts: list[list[dict]] = [[] for _ in samples]
    threads = torch.get_num_threads()
    for start in range(0, n_bootstrap, per_chunk):
        b = min(per_chunk, n_bootstrap - start)
        # Resample i draws `units` units uniformly with replacement; its weights count the draws per slot.
        draws = rng.integers(0, units, size=(b, units))
        offsets = (np.arange(b) * units)[:, None]
        for part, sample in zip(parts, samples):
            slots = draws if sample["slot_of_unit"] is None else sample["slot_of_unit"][draws]
            weights = np.bincount((slots + offsets).ravel(), minlength=b * units).reshape(b, units)
            weights = weights.astype(np.float64)
            part.append(_in_single_threaded_torch(threads, _replicates, sample, weights, names, n_bins))
    return [{n: np.concatenate([c[n] for c in part]) for n in names} for part in parts]


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


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


def calibration_report(
    scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100, n_bootstrap=0, confidence=0.95, seed=0
) -> dict[str, float]:
    """All calibration metrics from one pass over the scores (definitions in the module docstring), optionally with
    percentile bootstrap intervals.
    {args}
        n_bootstrap (`int`, *optional*, defaults to 0):
            Number of bootstrap resamples; 0 computes no interval. A resample draws `N` examples of dim 0 with
            replacement: whole sequences or images when the scores have trailing dims (their positions are not
            independent), rows otherwise. Every metric is recomputed on each resample (smooth ECE at the
            full-sample bandwidth); the interval is the pair of `(1 - confidence) / 2` and `(1 + confidence) / 2`
            percentiles of the replicates. Costs about `n_bootstrap * N * (10 + C)` float operations.
        confidence (`float`, *optional*, defaults to 0.95):
            Coverage of the intervals, in (0, 1).
        seed (`int`, *optional*, defaults to 0):
            Seed of the resampling (numpy's `default_rng`): the same inputs and seed give the same intervals.

    Returns:
        `dict[str, float]`: keys `METRIC_NAMES` = `accuracy, ece, aece, cece, mce, nll, brier, ece_over, ece_under,
        dsce, dce, smece`, as fractions; with `n_bootstrap > 0` also `<name>_low` and `<name>_high` for each.

    Raises:
        `ValueError` or `TypeError` on bad input, naming the argument and the expected values.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import calibration_report
    >>> probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    >>> # brier: ((0.9 - 1)^2 + 0.1^2 + (0.4 - 1)^2 + 0.6^2) / 2 = (0.02 + 0.72) / 2 = 0.37; nll: -log(0.9 * 0.4) / 2
    >>> # ece_over: conf 0.6 > acc 0 -> 0.6 / 2 = 0.3; ece_under: acc 1 > conf 0.9 -> 0.1 / 2 = 0.05; dsce: each
    >>> # group of 1 position has no variance estimate, so 0
    >>> report = calibration_report(probs, torch.tensor([0, 0]), n_bins=10, from_logits=False)
    >>> {{k: round(v, 4) for k, v in report.items()}}
    {{'accuracy': 0.5, 'ece': 0.35, 'aece': 0.35, 'cece': 0.35, 'mce': 0.6, 'nll': 0.5108, 'brier': 0.37, \
'ece_over': 0.3, 'ece_under': 0.05, 'dsce': 0.0, 'dce': 0.0, 'smece': 0.2492}}
    """
    _check_bootstrap(n_bootstrap, confidence, seed)
    if not n_bootstrap:
        return _compute(METRIC_NAMES, scores, labels, n_bins, from_logits, ignore_index)
    n_bins = _check_options(n_bins, from_logits, ignore_index)
    sample = _sample(scores, labels, n_bins, bool(from_logits), int(ignore_index))
    report = {name: _metric(name, sample, n_bins) for name in METRIC_NAMES}
    (replicates,) = _bootstrap([sample], METRIC_NAMES, n_bins, int(n_bootstrap), seed)
    for name in METRIC_NAMES:
        report[f"{name}_low"], report[f"{name}_high"] = _interval(replicates[name], confidence)
    return report


def paired_bootstrap(
    scores_a,
    scores_b,
    labels,
    *,
    metrics=None,
    n_bootstrap=1000,
    confidence=0.95,
    seed=0,
    n_bins=15,
    from_logits=True,
    ignore_index=-100,
) -> dict[str, float]:
    """Difference `metric(a) - metric(b)` of two models on the same examples, with a paired percentile bootstrap
    interval: each resample draws the same examples for both models, so what the examples share (their
    difficulty) cancels and the interval is that of the difference itself.

    Args:
        scores_a (`torch.Tensor` or `np.ndarray`):
            Logits or probabilities of model a, shape `(N, C)` or `(N, C, d1, ...)`.
        scores_b (`torch.Tensor` or `np.ndarray`):
            Those of model b, the same shape.
        labels (`torch.Tensor` or `np.ndarray`):
            Integer class indices of shape `(N,)` or `(N, d1, ...)`, shared by both models.
        metrics (`list[str]`, *optional*):
            Names among `METRIC_NAMES` (default: all).
        n_bootstrap (`int`, *optional*, defaults to 1000):
            Number of resamples (>= 1); resampling as in [`calibration_report`].
        confidence (`float`, *optional*, defaults to 0.95):
            Coverage of the intervals, in (0, 1).
        seed (`int`, *optional*, defaults to 0):
            Seed of the resampling.
        n_bins (`int`, *optional*, defaults to 15):
            Number of bins (>= 1).
        from_logits (`bool` or `tuple[bool, bool]`, *optional*, defaults to `True`):
            Whether the scores are logits; a pair sets it per model, e.g. `(True, False)`.
        ignore_index (`int`, *optional*, defaults to -100):
            Label value of positions excluded from every metric.

    Returns:
        `dict[str, float]`: for each metric `<name>` (the difference a - b), `<name>_low` and `<name>_high`.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import paired_bootstrap
    >>> labels = torch.tensor([0, 1, 0, 1])
    >>> a = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    >>> diff = paired_bootstrap(a, a, labels, metrics=["ece"], n_bootstrap=100)  # a model against itself
    >>> diff["ece"], diff["ece_low"], diff["ece_high"]
    (0.0, 0.0, 0.0)
    """
    _check_bootstrap(n_bootstrap, confidence, seed)
    if n_bootstrap < 1:
        raise ValueError(f"`n_bootstrap` must be an integer >= 1 for a paired bootstrap, got {n_bootstrap}.")
    if metrics is None:
        metrics = METRIC_NAMES
    if isinstance(metrics, str) or not all(name in METRIC_NAMES for name in metrics):
        raise ValueError(f"`metrics` must be a list of names among {METRIC_NAMES}, got {metrics!r}.")
    pair = tuple(from_logits) if isinstance(from_logits, (tuple, list)) else (from_logits, from_logits)
    if len(pair) != 2:
        raise ValueError(f"`from_logits` must be a bool or a pair of bools (a, b), got {from_logits!r}.")
    n_bins = _check_options(n_bins, pair[0], ignore_index)
    _check_options(n_bins, pair[1], ignore_index)
    if tuple(scores_a.shape) != tuple(scores_b.shape):
        raise ValueError(
            f"`scores_a` and `scores_b` must have the same shape, got {tuple(scores_a.shape)} and "
            f"{tuple(scores_b.shape)}."
        )
    samples = [_sample(s, labels, n_bins, bool(fl), int(ignore_index)) for s, fl in zip((scores_a, scores_b), pair)]
    rep_a, rep_b = _bootstrap(samples, tuple(metrics), n_bins, int(n_bootstrap), seed)
    out = {}
    for name in metrics:
        out[name] = _metric(name, samples[0], n_bins) - _metric(name, samples[1], n_bins)
        out[f"{name}_low"], out[f"{name}_high"] = _interval(rep_a[name] - rep_b[name], confidence)
    return out


def overconfidence_error(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """The over-confident part of the ECE: `sum_b max(conf_b - acc_b, 0) * n_b / M` over the equal-width bins of
    the top-label confidence; with [`underconfidence_error`] it adds up to the ECE.
    {args}
    Returns:
        `float`: a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import overconfidence_error
    >>> # bin (0.5, 0.6]: conf 0.6 > acc 0 -> 0.6 / 2; bin (0.8, 0.9] is under-confident (acc 1 > conf 0.9)
    >>> round(overconfidence_error(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]),
    ...                            n_bins=10, from_logits=False), 6)
    0.3
    """
    return _compute(("ece_over",), scores, labels, n_bins, from_logits, ignore_index)["ece_over"]


def underconfidence_error(scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100) -> float:
    """The under-confident part of the ECE: `sum_b max(acc_b - conf_b, 0) * n_b / M` over the equal-width bins of
    the top-label confidence; with [`overconfidence_error`] it adds up to the ECE.
    {args}
    Returns:
        `float`: a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import underconfidence_error
    >>> # bin (0.8, 0.9]: acc 1 > conf 0.9 -> 0.1 / 2
    >>> round(underconfidence_error(torch.tensor([[0.9, 0.1], [0.4, 0.6]]), torch.tensor([0, 0]),
    ...                             n_bins=10, from_logits=False), 6)
    0.05
    """
    return _compute(("ece_under",), scores, labels, n_bins, from_logits, ignore_index)["ece_under"]


def debiased_calibration_error(
    scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100, squared=False
) -> float:
    """Debiased top-label L2 calibration error of Kumar, Liang & Ma (NeurIPS 2019, "Verified Uncertainty
    Calibration"), over the equal-mass groups of `aece`: `dsce = sum_g n_g / M * ((conf_g - acc_g)^2 -
    acc_g (1 - acc_g) / (n_g - 1))`, groups of fewer than 2 positions contributing 0; the squared plug-in gap is
    biased upwards by the variance of `acc_g`, which the second term estimates and removes. `dsce` can be slightly
    negative for a well-calibrated model (it is unbiased); the root `dce = sqrt(max(dsce, 0))`.

    Equals `calibration.lower_bound_scaling_ce(probs, labels, p=2, debias=True, num_bins=n_bins,
    mode="top-label")` of the `uncertainty-calibration` package on the same probabilities, except that the
    reference puts a run of equal confidences straddling a group boundary into the lower group, where the stable
    sort here splits it by position (identical without such ties), and that it uses at most `M` groups.
    {args}
        squared (`bool`, *optional*, defaults to `False`):
            Return `dsce` (the unbiased estimate of the squared error) instead of its root `dce`.

    Returns:
        `float`: `dce` (a fraction), or `dsce` with `squared=True`.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import debiased_calibration_error
    >>> # 1 group of 4, conf 0.75, acc 0.5: (0.75 - 0.5)^2 - 0.5 * 0.5 / 3 = 0.0625 - 0.0833 < 0 -> 0
    >>> probs = torch.tensor([[0.75, 0.25]] * 4)
    >>> debiased_calibration_error(probs, torch.tensor([0, 0, 1, 1]), n_bins=1, from_logits=False)
    0.0
    """
    if not isinstance(squared, (bool, np.bool_)):
        raise TypeError(f"`squared` must be True (dsce) or False (dce), got {squared!r}.")
    name = "dsce" if squared else "dce"
    return _compute((name,), scores, labels, n_bins, from_logits, ignore_index)[name]


def smooth_calibration_error(scores, labels, *, bandwidth=None, from_logits=True, ignore_index=-100) -> float:
    """Smooth ECE of Blasiok & Nakkiran (2023, "Smooth ECE: Principled Reliability Diagrams via Kernel
    Smoothing"), of the top-label confidence: the residuals `r_i = conf_i - 1[pred_i = y_i]` are smoothed with a
    Gaussian kernel of width `sigma` reflected at 0 and 1, `r(t) = sum_i K(t, c_i) r_i / sum_i K(t, c_i)`, and
    `smece = integral |r(t)| * density(t) dt`. The bandwidth is the fixed point `smece_sigma = sigma` (found by
    bisection on [0, 1], 12 steps, never below 1e-3), which makes the estimator consistent without a bin count.

    Numerics follow the reference `relplot` (1.0.3): the positions are split linearly onto a grid of spacing about
    `sigma / 10`, the reflected convolution is exact on that grid (by FFT here) and the integral is a sum over
    `max(10 / sigma, 200)` points. Against `relplot.smECE_sigma` at a fixed bandwidth the difference is below 1e-6
    (relplot adds 1e-4 to each density value, omitted here) for sigma <= 0.05; relplot truncates its kernel at
    +-0.5, which moves wide kernels (sigma = 0.2) by ~1e-4 relative; against `relplot.smECE` below 1e-3, as relplot
    stops its bisection after 10 steps.

    Args:
        scores (`torch.Tensor` or `np.ndarray`):
            Logits, or probabilities when `from_logits=False`, of shape `(N, C)` or `(N, C, d1, ...)`.
        labels (`torch.Tensor` or `np.ndarray`):
            Integer class indices of shape `(N,)` or `(N, d1, ...)`, in `[0, C)` or equal to `ignore_index`.
        from_logits (`bool`, *optional*, defaults to `True`):
            Whether `scores` are logits (a softmax is applied) or probabilities.
        ignore_index (`int`, *optional*, defaults to -100):
            Label value of positions excluded from the metric.
        bandwidth (`float`, *optional*):
            A fixed kernel width `sigma` in (0, 1] instead of the fixed point.

    Returns:
        `float`: the smooth ECE, a fraction.

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import smooth_calibration_error
    >>> # a calibrated pair: confidence 0.5, one right and one wrong, the residuals cancel
    >>> smooth_calibration_error(torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([0, 1]), from_logits=False)
    0.0
    """
    if bandwidth is not None:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float, np.floating)):
            raise TypeError(f"`bandwidth` must be None (the fixed point) or a number in (0, 1], got {bandwidth!r}.")
        if not 0.0 < bandwidth <= 1.0:
            raise ValueError(f"`bandwidth` must be None (the fixed point) or in (0, 1], got {bandwidth}.")
    _check_options(1, from_logits, ignore_index)
    x, y, valid = _prepare(scores, labels, int(ignore_index))
    with torch.no_grad():
        stats = _scan(x, y, valid, bool(from_logits), 1, {"top"})
    return _smece(stats["conf"], stats["correct"], None if bandwidth is None else float(bandwidth))[0]


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


def reliability_bins(
    scores, labels, *, n_bins=15, from_logits=True, ignore_index=-100, confidence=None
) -> dict[str, list]:
    """Per equal-width bin of the top-label confidence, the table behind a reliability diagram.
    {args}
        confidence (`float`, *optional*):
            A coverage in (0, 1), e.g. 0.95: adds the Wilson score interval of each bin's accuracy (`k` correct of
            `n`, `z` the normal quantile of `(1 + confidence) / 2`: `(k/n + z^2/2n +- z sqrt(k/n (1 - k/n) / n +
            z^2/4n^2)) / (1 + z^2/n)`). It treats the positions of a bin as independent draws, which they are not
            quite for the tokens of one sequence or the pixels of one image (the interval is then too narrow).

    Returns:
        `dict[str, list]`: JSON-serialisable lists of length `n_bins`: `bin_lower` (`b/n`), `bin_upper`
        (`(b+1)/n`), `count` (int), `confidence` (mean confidence) and `accuracy` (fraction correct); the last two
        are `None` for empty bins. With `confidence`, also `accuracy_low` and `accuracy_high` (`None` for empty
        bins).

    Examples:

    >>> import torch
    >>> from mbls_nlp.calibration import reliability_bins
    >>> # both confidences are 0.75, in bin (0.5, 1.0]; one of the two predictions is right
    >>> table = reliability_bins(torch.tensor([[0.75, 0.25], [0.25, 0.75]]), torch.tensor([0, 0]), n_bins=2,
    ...                          from_logits=False)
    >>> table["count"], table["confidence"], table["accuracy"]
    ([0, 2], [None, 0.75], [None, 0.5])
    >>> # 1 of 2 right, z = 1.96: (0.5 + 0.9604 +- 1.96 sqrt(0.125 + 0.2401)) / 2.9208 = 0.5 +- 0.4055
    >>> table = reliability_bins(torch.tensor([[0.75, 0.25], [0.25, 0.75]]), torch.tensor([0, 0]), n_bins=2,
    ...                          from_logits=False, confidence=0.95)
    >>> [round(v, 4) for v in table["accuracy_low"] + table["accuracy_high"] if v is not None]
    [0.0945, 0.9055]
    """
    n_bins = _check_options(n_bins, from_logits, ignore_index)
    if confidence is not None:
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
            raise TypeError(f"`confidence` must be None or a number in (0, 1), e.g. 0.95, got {confidence!r}.")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"`confidence` must be None or in (0, 1) (a fraction, e.g. 0.95), got {confidence}.")
    x, y, valid = _prepare(scores, labels, int(ignore_index))
    with torch.no_grad():
        stats = _scan(x, y, valid, bool(from_logits), n_bins, {"top"})
        count, conf_sum, acc_sum = (stats[k].tolist() for k in ("count", "conf_sum", "acc_sum"))
    table = {
        "bin_lower": [b / n_bins for b in range(n_bins)],
        "bin_upper": [(b + 1) / n_bins for b in range(n_bins)],
        "count": [int(c) for c in count],
        "confidence": [s / c if c else None for s, c in zip(conf_sum, count)],
        "accuracy": [s / c if c else None for s, c in zip(acc_sum, count)],
    }
    if confidence is not None:
        z = statistics.NormalDist().inv_cdf((1.0 + float(confidence)) / 2.0)
        bounds = [_wilson(k, n, z) if n else (None, None) for k, n in zip(acc_sum, count)]
        table["accuracy_low"] = [low for low, _ in bounds]
        table["accuracy_high"] = [high for _, high in bounds]
    return table


def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion `k / n` at normal quantile `z` (Wilson 1927)."""
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # The interval contains p exactly; at p = 0 or 1 rounding put its end 1e-16 on the wrong side (a negative
    # error bar that matplotlib refuses), so the ends are clamped to p as well as to [0, 1].
    return max(min(center - half, p), 0.0), min(max(center + half, p), 1.0)


for _fn in (
    calibration_report,
    overconfidence_error,
    underconfidence_error,
    debiased_calibration_error,
    smooth_calibration_error,
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
