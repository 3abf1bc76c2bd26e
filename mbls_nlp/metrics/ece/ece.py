# Copyright 2026 The mbls-nlp developers.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Calibration metrics (ECE, AECE, CECE, MCE, NLL, Brier, accuracy) as an `evaluate` metric.

`evaluate.load` copies this script into its modules cache and imports the copy, so the maths is imported from the
installed `mbls_nlp` package rather than from a relative file: the metric and `mbls_nlp.calibration_report` can
never drift apart.
"""

import datasets
import evaluate
import numpy as np

from mbls_nlp.calibration import calibration_report

_DESCRIPTION = """
Calibration metrics of a classifier's predicted probabilities, as reported in "The Devil is in the Margin:
Margin-based Label Smoothing for Network Calibration" (Liu et al., CVPR 2022). All values are fractions (not
percent); lower is better except for accuracy. With top-label confidence c_i = max_k p_ik, prediction
argmax_k p_ik, N samples and `n_bins` bins:

- accuracy: fraction of samples whose arg-max equals the reference.
- ece (Expected Calibration Error, Naeini et al. 2015; Guo et al. 2017): equal-width bins (b/n_bins, (b+1)/n_bins]
  over c_i (a confidence of exactly 0 goes to the first bin, exactly 1 to the last);
  ECE = sum_b |acc_b - conf_b| * n_b / N.
- aece (adaptive ECE): the same sum over equal-mass bins (samples sorted by confidence, split into `n_bins` groups
  whose sizes differ by at most one; every sample counted).
- cece (classwise ECE): for each class k, equal-width bins over p_ik for all samples,
  sum_b |mean 1[y_i = k] - mean p_ik| * n_b / N; averaged over all classes.
- mce (Maximum Calibration Error): max over non-empty equal-width bins of |acc_b - conf_b|.
- nll: mean of -log p_{i, y_i}.
- brier: mean over samples of sum_k (p_ik - 1[y_i = k])^2.
- ece_over, ece_under: the over- and under-confident parts of the ECE, sum_b max(conf_b - acc_b, 0) * n_b / N and
  sum_b max(acc_b - conf_b, 0) * n_b / N (ece = ece_over + ece_under).
- dsce (Kumar, Liang & Ma 2019): debiased squared calibration error over the equal-mass bins of aece,
  sum_b n_b / N * ((conf_b - acc_b)^2 - acc_b (1 - acc_b) / (n_b - 1)); dce = sqrt(max(dsce, 0)).
- smece (Blasiok & Nakkiran 2023): smooth ECE, a kernel regression of c_i - 1[correct] on c_i with a reflected
  Gaussian kernel at the fixed-point bandwidth (no bins).

With `n_bootstrap > 0`, each key also gets `<key>_low` and `<key>_high`: a percentile bootstrap interval over
resampled samples.

The values are exactly those of `mbls_nlp.calibration_report`, which this metric calls.
"""


_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Per-class probability vectors, one per sample (shape `(N, C)`); each row must lie in [0, 1] and sum to 1.
        With `from_logits=True`, un-normalised logits instead. For token or pixel classification, flatten the
        positions into samples first.
    references (`list` of `int`):
        Ground-truth class indices in [0, C), shape `(N,)`; samples equal to `ignore_index` are excluded. Integers
        only (Python or numpy ints): floats (even `1.0`), bools and strings are refused with a `ValueError`, as
        `mbls_nlp.calibration` refuses float labels, rather than truncated to an int.
    n_bins (`int`, *optional*, defaults to `15`):
        Number of bins for ece, aece, cece and mce, from 1 to 10_000 (`mbls_nlp.calibration.MAX_N_BINS`).
    from_logits (`bool`, *optional*, defaults to `False`):
        If `True`, `predictions` are logits and a softmax is applied first (in float64).
    ignore_index (`int`, *optional*, defaults to `-100`):
        Reference value of samples to exclude (padding, sub-word tokens, void pixels).
    n_bootstrap (`int`, *optional*, defaults to `0`):
        Number of bootstrap resamples of the samples; 0 computes no interval.
    confidence (`float`, *optional*, defaults to `0.95`):
        Coverage of the bootstrap intervals, in (0, 1).
    seed (`int`, *optional*, defaults to `0`):
        Seed of the bootstrap resampling.

Returns:
    `dict` of `float`: `accuracy`, `ece`, `aece`, `cece`, `mce`, `nll`, `brier`, `ece_over`, `ece_under`, `dsce`,
    `dce` and `smece`, all fractions (with `<key>_low`/`<key>_high` when `n_bootstrap > 0`). Lower is better for
    every key except `accuracy`.

Examples:

    Example 1 - Probabilities. Confidences 0.95, 0.75, 0.65, 0.85 each fall in their own of 15 bins; the third
    prediction (class 0) is wrong, so ECE = (|1 - 0.95| + |1 - 0.75| + |0 - 0.65| + |1 - 0.85|) / 4
    = 1.1 / 4 = 0.275, MCE = 0.65, Brier = (2 * 0.05**2 + 2 * 0.25**2 + 2 * 0.65**2 + 2 * 0.15**2) / 4 = 0.255,
    NLL = -(ln 0.95 + ln 0.75 + ln 0.35 + ln 0.85) / 4 = 0.3878,
    ECE over-confident part = 0.65 / 4 = 0.1625 (the wrong one), under-confident part = (0.05 + 0.25 + 0.15) / 4
    = 0.1125.

        >>> import evaluate
        >>> import mbls_nlp
        >>> ece_metric = evaluate.load(mbls_nlp.ECE_METRIC_PATH)
        >>> results = ece_metric.compute(
        ...     predictions=[[0.95, 0.05], [0.25, 0.75], [0.65, 0.35], [0.15, 0.85]],
        ...     references=[0, 1, 1, 1],
        ... )
        >>> print({name: round(value, 4) for name, value in list(results.items())[:7]})
        {'accuracy': 0.75, 'ece': 0.275, 'aece': 0.275, 'cece': 0.275, 'mce': 0.65, 'nll': 0.3878, 'brier': 0.255}
        >>> print({name: round(value, 4) for name, value in list(results.items())[7:]})
        {'ece_over': 0.1625, 'ece_under': 0.1125, 'dsce': 0.0, 'dce': 0.0, 'smece': 0.1265}

    Example 2 - Logits, accumulated batch by batch, with a padded sample excluded through `ignore_index`.
    ln(3) vs 0 gives probabilities (0.75, 0.25); both kept samples are right with confidence 0.75, so ECE = 0.25.

        >>> import math
        >>> ece_metric = evaluate.load(mbls_nlp.ECE_METRIC_PATH)
        >>> ece_metric.add_batch(predictions=[[math.log(3.0), 0.0]], references=[0])
        >>> ece_metric.add_batch(predictions=[[0.0, math.log(3.0)], [5.0, 0.0]], references=[1, -100])
        >>> results = ece_metric.compute(from_logits=True, n_bins=10)
        >>> print(round(results["accuracy"], 4), round(results["ece"], 4))
        1.0 0.25
"""


_CITATION = r"""
@inproceedings{liu2022mbls,
  title={The Devil is in the Margin: Margin-based Label Smoothing for Network Calibration},
  author={Liu, Bingyuan and Ben Ayed, Ismail and Galdran, Adrian and Dolz, Jose},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2022}
}
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={Proceedings of the 34th International Conference on Machine Learning (ICML)},
  pages={1321--1330},
  year={2017}
}
@inproceedings{kumar2019verified,
  title={Verified Uncertainty Calibration},
  author={Kumar, Ananya and Liang, Percy and Ma, Tengyu},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},
  year={2019}
}
@article{blasiok2023smooth,
  title={Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing},
  author={B{\l}asiok, Jaros{\l}aw and Nakkiran, Preetum},
  journal={arXiv preprint arXiv:2309.12236},
  year={2023}
}
@inproceedings{naeini2015obtaining,
  title={Obtaining Well Calibrated Probabilities Using Bayesian Binning},
  author={Naeini, Mahdi Pakdaman and Cooper, Gregory F. and Hauskrecht, Milos},
  booktitle={Proceedings of the Twenty-Ninth AAAI Conference on Artificial Intelligence},
  pages={2901--2907},
  year={2015}
}
"""


def _check_references(references, name):
    """Refuses anything but integer class indices (bools, floats, strings, ...), naming the argument."""
    if references is None:
        return
    if isinstance(references, (list, tuple)):
        bad = [v for v in references if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))]
        if bad:
            raise ValueError(
                f"`{name}` must be integer class indices (Python or numpy ints; not floats, bools or strings), "
                f"got {bad[0]!r} ({type(bad[0]).__name__})."
            )
        return
    values = np.asarray(references)  # numpy arrays, CPU torch tensors
    if values.size and values.dtype.kind not in "iu":
        raise ValueError(
            f"`{name}` must be integer class indices (Python or numpy ints; not floats, bools or strings), "
            f"got an array of dtype {values.dtype}."
        )


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ECE(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 storage: float32 inputs are widened exactly, so results equal calibration_report's to the bit.
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2111.15430", "https://arxiv.org/abs/1706.04599"],
        )

    # The references feature is int64, and writing a batch casts to it: 1.7 would become 1 and "1" would be parsed.
    # So the raw references are checked before evaluate stores them (issue 14).
    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Adds a batch of predictions and references (integer class indices) for `compute`."""
        _check_references(references, "references")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Adds one prediction and its reference (an integer class index) for `compute`."""
        if reference is not None:
            _check_references([reference], "reference")
        return super().add(prediction=prediction, reference=reference, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        n_bins=15,
        from_logits=False,
        ignore_index=-100,
        n_bootstrap=0,
        confidence=0.95,
        seed=0,
    ):
        try:
            scores = np.asarray(predictions, dtype=np.float64)
        except ValueError as err:  # ragged rows: numpy cannot build a (N, C) array
            raise ValueError(
                "`predictions` must be per-class vectors of the same length C for every sample (shape (N, C))."
            ) from err
        labels = np.asarray(references, dtype=np.int64)
        if scores.size == 0:
            raise ValueError(
                "`predictions` is empty: add at least one sample (with `add`/`add_batch`) before `compute`."
            )
        if scores.ndim != 2:
            raise ValueError(f"`predictions` must have shape (N, C), got an array of shape {scores.shape}.")
        return calibration_report(
            scores,
            labels,
            n_bins=n_bins,
            from_logits=from_logits,
            ignore_index=ignore_index,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )
