"""Tests of `mbls_nlp.calibration`: hand-computed examples, a float64 loop reference, torchmetrics and netcal side
by side, invariants (perfect calibration, ignored positions, numpy == torch) and bad input."""

import json
import math

import numpy as np
import pytest
import relplot
import torch

from mbls_nlp import calibration
from mbls_nlp.calibration import (
    METRIC_NAMES,
    accuracy,
    adaptive_calibration_error,
    brier_score,
    calibration_report,
    classwise_calibration_error,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    overconfidence_error,
    paired_bootstrap,
    reliability_bins,
    smooth_calibration_error,
    underconfidence_error,
)


# ----------------------------------------------------------------------------------------------------------------
# straightforward float64 reference: loops over bins and groups, written from the definitions in the issue
# ----------------------------------------------------------------------------------------------------------------
def reference(probs: np.ndarray, labels: np.ndarray, n_bins: int, nll_logits: np.ndarray | None = None) -> dict:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    m, c = p.shape
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)

    def in_bin(values, b):
        # (b/n, (b+1)/n] written on n * value so the edges are exact; 0 joins the first and 1.0 the last bin
        scaled = values * n_bins
        mask = (scaled > b) & (scaled <= b + 1)
        if b == 0:
            mask |= scaled <= 0
        return mask

    ece, gaps = 0.0, []
    for b in range(n_bins):
        mask = in_bin(conf, b)
        if mask.any():
            gap = abs(correct[mask].mean() - conf[mask].mean())
            ece += gap * mask.sum() / m
            gaps.append(gap)
    order = np.argsort(conf, kind="stable")
    aece = 0.0
    for group in np.array_split(order, n_bins):  # sizes differ by at most one, larger ones first
        if len(group):
            aece += abs(correct[group].mean() - conf[group].mean()) * len(group) / m
    cece = 0.0
    for k in range(c):
        for b in range(n_bins):
            mask = in_bin(p[:, k], b)
            if mask.any():
                cece += abs((y[mask] == k).mean() - p[mask, k].mean()) * mask.sum() / m
    cece /= c
    if nll_logits is not None:
        z = np.asarray(nll_logits, dtype=np.float64)
        zmax = z.max(axis=1, keepdims=True)
        log_p = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
        nll = -log_p[np.arange(m), y].mean()
    else:
        with np.errstate(divide="ignore"):
            nll = -np.log(p[np.arange(m), y]).mean()
    onehot = np.eye(c)[y]
    brier = ((p - onehot) ** 2).sum(axis=1).mean()
    over = under = 0.0
    for b in range(n_bins):
        mask = in_bin(conf, b)
        if mask.any():
            gap = conf[mask].mean() - correct[mask].mean()
            over += max(gap, 0.0) * mask.sum() / m
            under += max(-gap, 0.0) * mask.sum() / m
    dsce = 0.0
    for group in np.array_split(order, n_bins):
        if len(group) >= 2:  # Kumar et al. 2019: squared gap minus the unbiased variance of the group's accuracy
            a = correct[group].mean()
            dsce += ((conf[group].mean() - a) ** 2 - a * (1 - a) / (len(group) - 1)) * len(group) / m
    return {
        "accuracy": correct.mean(),
        "ece": ece,
        "aece": aece,
        "cece": cece,
        "mce": max(gaps),
        "nll": nll,
        "brier": brier,
        "ece_over": over,
        "ece_under": under,
        "dsce": dsce,
        "dce": math.sqrt(max(dsce, 0.0)),
        # the reference implementation (Apple's relplot); agreement to 2e-3 (its bisection stops at 2^-10)
        "smece": float(relplot.smECE(conf, correct)),
    }


# relplot's bandwidth search stops after 10 bisection steps, ours after 12: the two fixed points differ by <= 2^-10
SMECE_ATOL = 2e-3


def assert_reports_close(ours: dict, ref: dict, atol: float):
    assert tuple(ours) == METRIC_NAMES
    for name in METRIC_NAMES:
        assert isinstance(ours[name], float), name
        tol = max(atol, SMECE_ATOL) if name == "smece" else atol
        assert ours[name] == pytest.approx(ref[name], abs=tol, rel=0), name


def random_logits(n, c, seed, dtype=torch.float64, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).to(dtype)
    # labels drawn from the model's own distribution, sharpened a bit: realistic, partly miscalibrated
    labels = torch.multinomial(torch.softmax(logits.double() * 0.7, dim=1), 1, generator=gen).squeeze(1)
    return logits, labels


# ----------------------------------------------------------------------------------------------------------------
# hand-computed examples
# ----------------------------------------------------------------------------------------------------------------
def test_hand_computed_small_example():
    probs = torch.tensor(
        [
            [0.70, 0.20, 0.10],  # y=0 right, conf 0.70
            [0.30, 0.60, 0.10],  # y=2 wrong, conf 0.60
            [0.20, 0.20, 0.60],  # y=2 right, conf 0.60
            [0.10, 0.05, 0.85],  # y=1 wrong, conf 0.85
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 2, 2, 1])
    r = calibration_report(probs, labels, n_bins=4, from_logits=False)
    # accuracy: 2 of 4
    assert r["accuracy"] == pytest.approx(0.5, abs=1e-12)
    # bins of width 0.25: (0.5, 0.75] holds 0.70, 0.60, 0.60: acc 2/3, conf 1.9/3 -> gap 0.1/3, weight 3/4
    #                     (0.75, 1.0] holds 0.85: acc 0 -> gap 0.85, weight 1/4
    # ece = 0.1/3 * 3/4 + 0.85/4 = 0.025 + 0.2125 = 0.2375 ; mce = 0.85
    assert r["ece"] == pytest.approx(0.2375, abs=1e-12)
    assert r["mce"] == pytest.approx(0.85, abs=1e-12)
    # aece, 4 groups of one (stable sort: 0.60 (row 1, wrong), 0.60 (row 2, right), 0.70 right, 0.85 wrong):
    # (0.6 + 0.4 + 0.3 + 0.85) / 4 = 2.15 / 4 = 0.5375
    assert r["aece"] == pytest.approx(0.5375, abs=1e-12)
    # aece with 2 groups: {0.60 wrong, 0.60 right}: |0.5 - 0.6| = 0.1; {0.70 right, 0.85 wrong}: |0.5 - 0.775| =
    # 0.275; weights 1/2 -> 0.1875
    assert adaptive_calibration_error(probs, labels, n_bins=2, from_logits=False) == pytest.approx(0.1875, abs=1e-12)
    # cece, 4 bins (0, .25], (.25, .5], (.5, .75], (.75, 1]:
    # class 0: p = .7 (y=0), .3, .2, .1 -> bin0 {.2, .1}: |0 - .15| * 2/4 = .075; bin1 {.3}: .3/4 = .075;
    #          bin2 {.7, y=0}: .3/4 = .075 -> .225
    # class 1: p = .2, .6, .2, .05 (y=1 on row 3) -> bin0 {.2, .2, .05 (y=1)}: |1/3 - .15| * 3/4 = .1375;
    #          bin2 {.6}: .6/4 = .15 -> .2875
    # class 2: p = .1, .1, .6 (y=2), .85 -> rows 1 and 2 have y=2; bin0 {.1 (y=2), .1}: |.5 - .1| * 2/4 = .2;
    #          bin2 {.6, y=2}: .4/4 = .1; bin3 {.85}: .85/4 = .2125 -> .5125
    # mean: (.225 + .2875 + .5125) / 3 = 1.025 / 3
    assert r["cece"] == pytest.approx(1.025 / 3, abs=1e-12)
    # nll: -(log .7 + log .1 + log .6 + log .05) / 4
    assert r["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.1) + math.log(0.6) + math.log(0.05)) / 4)
    # brier rows: (.3^2 + .2^2 + .1^2) = .14; (.3^2 + .6^2 + .9^2) = 1.26; (.2^2 + .2^2 + .4^2) = .24;
    # (.1^2 + .95^2 + .85^2) = 1.635 -> 3.275 / 4 = 0.81875
    assert r["brier"] == pytest.approx(0.81875, abs=1e-12)
    # the single-metric functions agree with the report
    for fn, name in [
        (accuracy, "accuracy"),
        (expected_calibration_error, "ece"),
        (adaptive_calibration_error, "aece"),
        (classwise_calibration_error, "cece"),
        (maximum_calibration_error, "mce"),
        (negative_log_likelihood, "nll"),
        (brier_score, "brier"),
    ]:
        assert fn(probs, labels, n_bins=4, from_logits=False) == r[name]


def test_hand_computed_from_logits():
    # logits (0, log 3): p = (1/4, 3/4); label 0 -> wrong with conf 0.75; nll = -log(1/4) = log 4
    # brier: (1/4 - 1)^2 + (3/4)^2 = 9/16 + 9/16 = 1.125
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    r = calibration_report(logits, torch.tensor([0]), n_bins=10)
    assert r["accuracy"] == 0.0
    assert r["ece"] == pytest.approx(0.75, abs=1e-12)
    assert r["nll"] == pytest.approx(math.log(4.0), abs=1e-12)
    assert r["brier"] == pytest.approx(1.125, abs=1e-12)


def test_nll_from_logits_is_finite_where_probability_underflows():
    # p_y = exp(-200) underflows to 0 in float32, but log-softmax gives exactly 200 (+ log(1 + e^-200))
    logits = torch.tensor([[200.0, 0.0]], dtype=torch.float32)
    assert negative_log_likelihood(logits, torch.tensor([1])) == pytest.approx(200.0, rel=1e-6)
    # from probabilities the definition gives inf, honestly
    assert negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), from_logits=False) == math.inf


def test_confidence_exactly_one_goes_to_last_bin():
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float32)
    labels = torch.tensor([0, 1, 1])
    table = reliability_bins(probs, labels, n_bins=5, from_logits=False)
    # all three confidences are 1.0 -> all in (0.8, 1.0]; two right -> acc 2/3, gap 1/3
    assert table["count"] == [0, 0, 0, 0, 3]
    assert table["confidence"][-1] == 1.0
    assert table["accuracy"][-1] == pytest.approx(2 / 3)
    assert expected_calibration_error(probs, labels, n_bins=5, from_logits=False) == pytest.approx(1 / 3)
    # classwise: class 0 p = 1, 1, 0 with y=0 only on row 0: bin (0.8, 1] |1/2 - 1| * 2/3 = 1/3; bin 0 {0}, y != 0:
    # 0; class 1 p = 0, 0, 1: bin 0 {0 (y=1), 0}: |1/2 - 0| * 2/3 = 1/3; last bin {1, y=1}: 0 -> mean 1/3
    assert classwise_calibration_error(probs, labels, n_bins=5, from_logits=False) == pytest.approx(1 / 3)


def test_bin_edges_are_right_closed():
    # with 4 bins, 0.5 is the upper edge of (0.25, 0.5] and 0.75 that of (0.5, 0.75]
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.75, 0.25, 0.0]], dtype=torch.float64)
    table = reliability_bins(probs, torch.tensor([0, 0]), n_bins=4, from_logits=False)
    assert table["count"] == [0, 1, 1, 0]
    assert table["bin_lower"] == [0.0, 0.25, 0.5, 0.75]
    assert table["bin_upper"] == [0.25, 0.5, 0.75, 1.0]


def test_reliability_bins_wilson_intervals_equal_scipy():
    from scipy.stats import binomtest

    logits, labels = random_logits(500, 4, seed=12)
    table = reliability_bins(logits, labels, n_bins=8, confidence=0.9)
    for k, n, low, high in zip(
        (a * c if c else 0 for a, c in zip(table["accuracy"], table["count"])),
        table["count"],
        table["accuracy_low"],
        table["accuracy_high"],
    ):
        if n == 0:
            assert low is None and high is None
            continue
        ref = binomtest(round(k), n).proportion_ci(0.9, method="wilson")
        assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert "accuracy_low" not in reliability_bins(logits, labels, n_bins=8)
    with pytest.raises(ValueError, match=r"`confidence` must be None or in \(0, 1\)"):
        reliability_bins(logits, labels, confidence=1.0)
    with pytest.raises(TypeError, match="`confidence`"):
        reliability_bins(logits, labels, confidence="0.9")


@pytest.mark.parametrize("n", [1, 7, 30, 1000])
def test_wilson_interval_contains_an_all_right_or_all_wrong_bin(n):
    # A bin whose positions are all right (accuracy 1) or all wrong (0): the Wilson interval's end is exactly that
    # accuracy (mathematically; rounding once gave 1 - 1.1e-16 and a negative error bar in the diagram).
    confidence = torch.tensor([[0.97, 0.03]]).repeat(n, 1)
    right = reliability_bins(confidence, torch.zeros(n, dtype=torch.long), from_logits=False, confidence=0.95)
    wrong = reliability_bins(confidence, torch.ones(n, dtype=torch.long), from_logits=False, confidence=0.95)
    (i,) = [b for b, c in enumerate(right["count"]) if c]
    assert right["accuracy_high"][i] == 1.0 and right["accuracy_low"][i] < 1.0
    assert wrong["accuracy_low"][i] == 0.0 and wrong["accuracy_high"][i] > 0.0
    reliability_diagram_module = pytest.importorskip("mbls_nlp.plotting")
    reliability_diagram_module.reliability_diagram(confidence, torch.zeros(n, dtype=torch.long), from_logits=False,
                                                   confidence=0.95)  # fmt: skip


def test_reliability_bins_json_and_empty_bins():
    logits, labels = random_logits(200, 4, seed=3)
    table = reliability_bins(logits, labels, n_bins=20)
    json.dumps(table)  # plain lists of int / float / None
    assert set(table) == {"bin_lower", "bin_upper", "count", "confidence", "accuracy"}
    assert sum(table["count"]) == 200
    # confidences >= 1/4 with 4 classes, so the first 5 bins ((0, 0.25]) are empty
    assert table["confidence"][:5] == [None] * 5 and table["accuracy"][:5] == [None] * 5
    for lo, hi, cnt, conf in zip(table["bin_lower"], table["bin_upper"], table["count"], table["confidence"]):
        if cnt:
            assert lo < conf <= hi


# ----------------------------------------------------------------------------------------------------------------
# float64 reference, torchmetrics, netcal
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_bins", [15, 7])
def test_equals_float64_reference_on_1e5_samples(n_bins):
    logits, labels = random_logits(100_000, 10, seed=n_bins)
    probs = torch.softmax(logits, dim=1)
    ref = reference(probs.numpy(), labels.numpy(), n_bins, nll_logits=logits.numpy())
    assert_reports_close(calibration_report(logits, labels, n_bins=n_bins), ref, atol=1e-9)
    ref_p = reference(probs.numpy(), labels.numpy(), n_bins)
    assert_reports_close(calibration_report(probs, labels, n_bins=n_bins, from_logits=False), ref_p, atol=1e-9)


def test_float32_probabilities_accumulate_in_float64():
    # float32 probabilities: binning exact on the float32 values, sums in float64 -> the float64 reference on the
    # very same values agrees to 1e-9 (float32 accumulation over 1e5 rows would be off by ~1e-6)
    logits, labels = random_logits(100_000, 10, seed=11, dtype=torch.float32)
    probs = torch.softmax(logits, dim=1)
    ref = reference(probs.double().numpy(), labels.numpy(), 15)
    assert_reports_close(calibration_report(probs, labels, from_logits=False), ref, atol=1e-9)


def test_float32_logits_use_float32_softmax():
    # from float32 logits the probabilities are torch.softmax in float32 (documented); everything else float64.
    # NLL uses the log-softmax identity, within float32 rounding of the true float64 log-softmax.
    logits, labels = random_logits(20_000, 10, seed=5, dtype=torch.float32)
    probs = torch.softmax(logits, dim=1)
    ref = reference(probs.double().numpy(), labels.numpy(), 15, nll_logits=logits.double().numpy())
    ours = calibration_report(logits, labels)
    nll_ours, nll_ref = ours.pop("nll"), ref.pop("nll")
    assert nll_ours == pytest.approx(nll_ref, rel=1e-6)
    for name in ours:
        tol = SMECE_ATOL if name == "smece" else 1e-9  # smece: against relplot, see SMECE_ATOL
        assert ours[name] == pytest.approx(ref[name], abs=tol), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torchmetrics_l1_and_max(dtype):
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits, labels = random_logits(20_000, 7, seed=1, dtype=dtype)
    probs = torch.softmax(logits, dim=1)
    assert probs.max() < 1.0  # torchmetrics agrees only without confidences of exactly 1.0 (issue #3510)
    for n_bins in (1, 10, 15):
        tm_l1 = multiclass_calibration_error(probs, labels, num_classes=7, n_bins=n_bins, norm="l1")
        tm_max = multiclass_calibration_error(probs, labels, num_classes=7, n_bins=n_bins, norm="max")
        # torchmetrics casts confidences to float32 and accumulates them with a float32 scatter_add (torchmetrics
        # 1.9, `_multiclass_calibration_error_update`): a bin of ~3000 rows is off by up to ~1e-4 from float64 sums
        # (seen: MCE 0.1434093 vs ours 0.1433287, and ours equals the float64 reference to 1e-16 there)
        tol = 1e-4
        assert expected_calibration_error(probs, labels, n_bins=n_bins, from_logits=False) == pytest.approx(
            tm_l1.item(), abs=tol
        )
        assert maximum_calibration_error(probs, labels, n_bins=n_bins, from_logits=False) == pytest.approx(
            tm_max.item(), abs=tol
        )


def test_torchmetrics_differs_exactly_at_confidence_one():
    # documents why we do not simply call torchmetrics: its bins are [b/n, (b+1)/n) and 1.0 lands in a hidden bin
    from torchmetrics.functional.classification import multiclass_calibration_error

    probs = torch.tensor([[1.0, 0.0], [0.95, 0.05]], dtype=torch.float64)
    labels = torch.tensor([1, 0])
    # ours: both in (0.9, 1]: acc 1/2, conf 0.975 -> gap 0.475, weight 1 -> 0.475
    assert expected_calibration_error(probs, labels, n_bins=10, from_logits=False) == pytest.approx(0.475)
    # torchmetrics: 0.95 (right) in [0.9, 1): 0.05 * 1/2; 1.0 (wrong) alone in the hidden bin: 1 * 1/2 -> 0.525
    tm = multiclass_calibration_error(probs, labels, num_classes=2, n_bins=10).item()
    assert tm == pytest.approx(0.525)


def test_matches_netcal_ece_and_mce():
    # netcal (1.4) agrees on ECE and MCE with equal-width bins, given float64 probabilities without values on a bin
    # edge (its histogram bins are [a, b), last one closed, and it clips to [eps, 1 - eps]) and more than two
    # distinct labels (with <= 2 distinct labels it treats the problem as binary). Its ACE is a different metric
    # (mean over non-empty quantile bins, unweighted), so AECE is not compared; it has no classwise ECE.
    from netcal.metrics import ECE, MCE

    logits, labels = random_logits(20_000, 6, seed=2)
    probs = torch.softmax(logits, dim=1)
    for n_bins in (5, 15):
        assert expected_calibration_error(probs, labels, n_bins=n_bins, from_logits=False) == pytest.approx(
            ECE(bins=n_bins).measure(probs.numpy(), labels.numpy()), abs=1e-12
        )
        assert maximum_calibration_error(probs, labels, n_bins=n_bins, from_logits=False) == pytest.approx(
            MCE(bins=n_bins).measure(probs.numpy(), labels.numpy()), abs=1e-12
        )


# ----------------------------------------------------------------------------------------------------------------
# invariants
# ----------------------------------------------------------------------------------------------------------------
def test_perfectly_calibrated_input_has_zero_ece():
    # in every bin, the fraction correct equals the (constant) confidence exactly: confidence c on 20 rows of
    # which 20*c are right, for c in {0.6, 0.75, 0.9, 1.0}; two classes, so the top class carries p = c
    rows, labels = [], []
    for conf, n_right in [(0.6, 12), (0.75, 15), (0.9, 18), (1.0, 20)]:
        for i in range(20):
            rows.append([conf, 1.0 - conf])
            labels.append(0 if i < n_right else 1)
    probs = torch.tensor(rows, dtype=torch.float64)
    labels = torch.tensor(labels)
    assert expected_calibration_error(probs, labels, n_bins=10, from_logits=False) == pytest.approx(0.0, abs=1e-15)
    assert maximum_calibration_error(probs, labels, n_bins=10, from_logits=False) == pytest.approx(0.0, abs=1e-15)
    # equal-mass bins of 20 coincide with the confidence levels here
    assert adaptive_calibration_error(probs, labels, n_bins=4, from_logits=False) == pytest.approx(0.0, abs=1e-15)
    # class 1 has p = 1 - c and frequency 1 - c in each group, also calibrated
    assert classwise_calibration_error(probs, labels, n_bins=10, from_logits=False) == pytest.approx(0.0, abs=1e-15)


def test_aece_counts_every_sample_and_handles_fewer_samples_than_bins():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])
    # 3 samples, 15 bins -> 3 groups of one: (|0 - .7| (row 2 is right: |1 - .7| = .3) ...):
    # sorted .7 right -> .3, .8 right -> .2, .9 wrong -> .9 -> (0.3 + 0.2 + 0.9) / 3 = 1.4 / 3
    assert adaptive_calibration_error(probs, labels, from_logits=False) == pytest.approx(1.4 / 3, abs=1e-12)
    # 1 group: |2/3 - 2.4/3| = 0.4/3 -- the lowest sample is not dropped (it would give |1/2 - 1.7/2| = 0.35)
    assert adaptive_calibration_error(probs, labels, n_bins=1, from_logits=False) == pytest.approx(0.4 / 3)


@pytest.mark.parametrize("n_bins", [1, 4, 7, 15, 2000])
def test_aece_ties_follow_stable_sort_in_float32_and_float64(n_bins):
    # few distinct confidences -> many ties across group boundaries; float32 takes the partition path, float64 the
    # stable sort; both must equal the reference's stable argsort (2000 bins > 1001 samples: empty groups too)
    gen = np.random.default_rng(0)
    conf = gen.choice([0.5, 0.625, 0.75, 0.875], size=1001)  # exact in float32
    probs64 = np.stack([conf, 1.0 - conf], axis=1)
    labels = gen.integers(0, 2, size=1001)
    expected = reference(probs64, labels, n_bins)["aece"]
    for dtype in (np.float32, np.float64):
        ours = adaptive_calibration_error(probs64.astype(dtype), labels, n_bins=n_bins, from_logits=False)
        assert ours == pytest.approx(expected, abs=1e-12), dtype


def test_cece_uses_all_classes_from_the_shape():
    # labels only use classes 0 and 1, but there are 4 classes: the mean is over 4
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    # 10 bins: class 0: p .7 (y=0) -> .3/2, p .1 (y=1) in bin 0 -> .1/2: .2; class 1 the same: .2;
    # classes 2, 3: p .1, .1 in bin 0, no label -> .1 each -> (0.2 + 0.2 + 0.1 + 0.1) / 4 = 0.15
    assert classwise_calibration_error(probs, labels, n_bins=10, from_logits=False) == pytest.approx(0.15)


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (4, 5, 7)])
def test_spatial_input_with_ignored_positions_equals_flattened_valid_rows(shape):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
    labels[torch.rand(labels.shape, generator=gen) < 0.3] = -100
    flat_logits = logits.movedim(1, -1).reshape(-1, shape[1])
    flat_labels = labels.reshape(-1)
    keep = flat_labels != -100
    expected = calibration_report(flat_logits[keep], flat_labels[keep], n_bins=5)
    assert calibration_report(logits, labels, n_bins=5) == pytest.approx(expected, abs=1e-12)
    assert reliability_bins(logits, labels, n_bins=5) == reliability_bins(
        flat_logits[keep], flat_labels[keep], n_bins=5
    )


def test_custom_ignore_index_and_chunk_boundaries(monkeypatch):
    import mbls_nlp.calibration as calibration

    logits, labels = random_logits(1_000, 5, seed=4)
    labels[::3] = 255
    keep = labels != 255
    expected = calibration_report(logits[keep], labels[keep])
    # many tiny chunks, some fully ignored, must give the same numbers as one chunk
    monkeypatch.setattr(calibration, "_CHUNK_ELEMENTS", 7)
    assert calibration_report(logits, labels, ignore_index=255) == pytest.approx(expected, abs=1e-12)


def test_numpy_equals_torch_and_dtypes():
    logits, labels = random_logits(500, 6, seed=9)
    expected = calibration_report(logits, labels)
    assert calibration_report(logits.numpy(), labels.numpy()) == expected
    assert calibration_report(logits.numpy(), labels.numpy().astype(np.int32)) == expected
    assert calibration_report(logits.T.contiguous().T, labels) == expected  # non-contiguous input
    half = calibration_report(logits.to(torch.bfloat16), labels)
    assert half == pytest.approx(calibration_report(logits.to(torch.bfloat16).float(), labels), abs=1e-12)
    probs = torch.softmax(logits, dim=1)
    assert reliability_bins(probs.numpy(), labels.numpy(), from_logits=False) == reliability_bins(
        probs, labels, from_logits=False
    )


def test_requires_grad_input_is_accepted():
    logits, labels = random_logits(50, 3, seed=0)
    assert calibration_report(logits.requires_grad_(), labels) == calibration_report(logits.detach(), labels)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------
GOOD_LOGITS = torch.tensor([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]])
GOOD_LABELS = torch.tensor([1, 2])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("from_logits", [True, False])
def test_non_finite_scores(bad, from_logits):
    scores = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    scores[1, 1] = bad
    with pytest.raises(ValueError, match=r"`scores`.*finite"):
        calibration_report(scores, GOOD_LABELS, from_logits=from_logits)


@pytest.mark.parametrize("label", [3, -1, -7])
def test_labels_out_of_range(label):
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\).*ignore_index=-100"):
        expected_calibration_error(GOOD_LOGITS, torch.tensor([0, label]))


@pytest.mark.parametrize(
    "scores, labels",
    [
        (GOOD_LOGITS, torch.tensor([0, 1, 2])),  # N mismatch
        (GOOD_LOGITS, torch.tensor([[0], [1]])),  # extra dim
        (torch.zeros(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)),  # spatial mismatch
    ],
)
def test_shape_mismatch(scores, labels):
    with pytest.raises(ValueError, match=r"`labels` must have shape"):
        calibration_report(scores, labels)


def test_scores_without_class_dim():
    with pytest.raises(ValueError, match=r"`scores` must have the classes on dim 1"):
        calibration_report(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]))


def test_empty_input():
    with pytest.raises(ValueError, match=r"`scores` is empty"):
        calibration_report(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`labels` has no position to evaluate.*ignore_index=-100"):
        calibration_report(GOOD_LOGITS, torch.tensor([-100, -100]))


@pytest.mark.parametrize("n_bins, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)])
def test_bad_n_bins(n_bins, error):
    with pytest.raises(error, match=r"`n_bins` must be an integer >= 1"):
        expected_calibration_error(GOOD_LOGITS, GOOD_LABELS, n_bins=n_bins)


def test_n_bins_numpy_integer_accepted():
    assert expected_calibration_error(GOOD_LOGITS, GOOD_LABELS, n_bins=np.int64(3)) == expected_calibration_error(
        GOOD_LOGITS, GOOD_LABELS, n_bins=3
    )


@pytest.mark.parametrize(
    "probs, match",
    [
        ([[1.2, -0.2, 0.0], [0.2, 0.3, 0.5]], r"probabilities in \[0, 1\]"),
        ([[0.5, 0.6, 0.0], [0.2, 0.3, 0.5]], r"rows must sum to 1 \(tolerance 0.001\)"),
        ([[0.5, 0.4, 0.0], [0.2, 0.3, 0.5]], r"rows must sum to 1"),
    ],
)
def test_bad_probabilities(probs, match):
    with pytest.raises(ValueError, match=match):
        calibration_report(torch.tensor(probs), GOOD_LABELS, from_logits=False)


def test_probabilities_within_tolerance_accepted():
    probs = torch.tensor([[0.5, 0.5004, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)  # off by 4e-4 < 1e-3
    assert expected_calibration_error(probs, GOOD_LABELS, from_logits=False) >= 0.0


@pytest.mark.parametrize("labels", [torch.tensor([1.0, 2.0]), torch.tensor([True, False]), np.array([1.0, 2.0])])
def test_non_integer_labels(labels):
    with pytest.raises(TypeError, match=r"`labels` must be an integer array"):
        calibration_report(GOOD_LOGITS, labels)


def test_non_float_scores_and_wrong_types():
    with pytest.raises(TypeError, match=r"`scores` must be a floating-point"):
        calibration_report(torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match=r"`scores` must be a torch.Tensor or a numpy.ndarray"):
        calibration_report([[0.1, 0.9]], torch.tensor([1]))
    with pytest.raises(TypeError, match=r"`from_logits` must be True"):
        calibration_report(GOOD_LOGITS, GOOD_LABELS, from_logits="yes")
    with pytest.raises(TypeError, match=r"`ignore_index` must be an integer"):
        calibration_report(GOOD_LOGITS, GOOD_LABELS, ignore_index=None)


def test_docstring_examples_run():
    import doctest

    import mbls_nlp.calibration as calibration

    result = doctest.testmod(calibration)
    assert result.attempted >= 9 and result.failed == 0


def test_thread_settings_are_restored():
    import threading

    before = torch.get_num_threads()
    logits, labels = random_logits(300_000, 3, seed=0, dtype=torch.float32)  # several chunks -> the worker pool
    calibration_report(logits, labels)
    assert torch.get_num_threads() == before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [before]  # a fresh thread still gets the process default


@pytest.mark.parametrize("n_bins, num_classes", [(1, 5), (3, 2), (100, 5), (15, 40)])
def test_equals_reference_for_other_bin_and_class_counts(n_bins, num_classes):
    # n_bins=1 and 100 exercise the sparse classwise path's threshold at both extremes
    logits, labels = random_logits(3_000, num_classes, seed=n_bins + num_classes, dtype=torch.float32)
    probs = torch.softmax(logits, dim=1)
    ref = reference(probs.double().numpy(), labels.numpy(), n_bins)
    ours = calibration_report(probs, labels, n_bins=n_bins, from_logits=False)
    assert_reports_close(ours, ref, atol=1e-9)


def test_single_class():
    # one class: p = 1 everywhere, always right -> every calibration error 0, nll 0, brier 0
    r = calibration_report(torch.randn(7, 1), torch.zeros(7, dtype=torch.long))
    assert r == {"accuracy": 1.0, "ece": 0.0, "aece": 0.0, "cece": 0.0, "mce": 0.0, "nll": 0.0, "brier": 0.0} | {
        "ece_over": 0.0,
        "ece_under": 0.0,
        "dsce": 0.0,
        "dce": 0.0,
        "smece": 0.0,
    }


# ----------------------------------------------------------------------------------------------------------------
# bias-aware estimators against their reference implementations (issue 15)
# ----------------------------------------------------------------------------------------------------------------
def test_over_and_under_confidence_split_the_ece():
    logits, labels = random_logits(2000, 7, seed=11)
    over, under = overconfidence_error(logits, labels), underconfidence_error(logits, labels)
    assert over + under == pytest.approx(expected_calibration_error(logits, labels), abs=1e-12)
    # sharper logits (x3) make the model over-confident: the over part grows, the under part vanishes
    assert overconfidence_error(logits * 3, labels) > over
    assert underconfidence_error(logits * 3, labels) < 1e-3


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_debiased_error_equals_uncertainty_calibration(n_bins):
    import calibration as kumar  # the `uncertainty-calibration` package (Kumar et al. 2019)

    logits, labels = random_logits(3000, 10, seed=n_bins)
    probs = torch.softmax(logits, dim=1).numpy()
    ref = kumar.lower_bound_scaling_ce(probs, labels.numpy(), p=2, debias=True, num_bins=n_bins, mode="top-label")
    # continuous confidences: no tie straddles a group boundary, so the groups are the same and so is the value
    assert debiased_calibration_error(logits, labels, n_bins=n_bins) == pytest.approx(ref, abs=1e-12)
    dsce = debiased_calibration_error(logits, labels, n_bins=n_bins, squared=True)
    assert math.sqrt(max(dsce, 0.0)) == pytest.approx(ref, abs=1e-12)


def test_debiased_error_is_less_biased_than_the_plugin_estimate():
    import calibration as kumar

    # A perfectly calibrated model (labels drawn from its own probabilities): the true squared error is 0. Over 20
    # datasets of 500 the plug-in squared error is far above 0 while the debiased one averages to 0 within noise.
    debiased, plugin = [], []
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(500, 5, generator=gen, dtype=torch.float64) * 2
        labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=gen).squeeze(1)
        probs = torch.softmax(logits, dim=1).numpy()
        debiased.append(debiased_calibration_error(logits, labels, squared=True))
        plugin.append(kumar.lower_bound_scaling_ce(probs, labels.numpy(), p=2, debias=False, mode="top-label") ** 2)
    se = np.std(debiased, ddof=1) / math.sqrt(len(debiased))
    assert abs(np.mean(debiased)) < 3 * se
    assert np.mean(plugin) > 3 * se + np.mean(debiased)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.2])
def test_smooth_ece_at_fixed_bandwidth_equals_relplot(sigma):
    logits, labels = random_logits(5000, 10, seed=3)
    probs = torch.softmax(logits, dim=1).numpy()
    conf, correct = relplot.multiclass_logits_to_confidences(probs, labels.numpy(), probs=True)
    ref = relplot.smECE_sigma(conf, correct, sigma)
    # relplot adds 1e-4 to each of its ~200 density values (relative effect < 1e-6) and truncates its kernel at
    # +-0.5, which only matters for wide kernels (sigma = 0.2: the cut is at 2.5 sigma)
    rel = 1e-6 if sigma <= 0.05 else 1e-4
    assert smooth_calibration_error(logits, labels, bandwidth=sigma) == pytest.approx(ref, rel=rel, abs=1e-9)


@pytest.mark.parametrize("n", [100, 5000])
def test_smooth_ece_fixed_point_equals_relplot(n):
    logits, labels = random_logits(n, 10, seed=n)
    probs = torch.softmax(logits, dim=1).numpy()
    conf, correct = relplot.multiclass_logits_to_confidences(probs, labels.numpy(), probs=True)
    ref, sigma = relplot.smECE(conf, correct, return_width=True)
    assert smooth_calibration_error(logits, labels) == pytest.approx(ref, abs=SMECE_ATOL)


def test_smooth_ece_bad_bandwidth():
    logits, labels = random_logits(10, 3, seed=0)
    with pytest.raises(ValueError, match="`bandwidth`"):
        smooth_calibration_error(logits, labels, bandwidth=0.0)
    with pytest.raises(TypeError, match="`bandwidth`"):
        smooth_calibration_error(logits, labels, bandwidth="0.1")


# ----------------------------------------------------------------------------------------------------------------
# bootstrap intervals and paired differences (issue 15)
# ----------------------------------------------------------------------------------------------------------------
def resampled_reports(scores, labels, n_bootstrap, seed, **kwargs):
    """Slow float64 loop: the report on each resample, drawing the examples of dim 0 exactly like the library
    (numpy default_rng(seed).integers, all resamples in one chunk for these small inputs)."""
    n = scores.shape[0]
    draws = np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))
    return [calibration_report(scores[d], labels[d], **kwargs) for d in draws]


def loop_interval(values, confidence):
    tail = 50 * (1 - confidence)
    return tuple(np.percentile(values, [tail, 100 - tail]))


@pytest.mark.parametrize("shape", [(120, 4), (30, 4, 5)])
def test_bootstrap_intervals_equal_a_loop_over_resamples(shape):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape) * 2
    labels = rng.integers(0, shape[1], size=(shape[0],) + shape[2:])
    labels.reshape(-1)[::7] = -100  # ignored positions stay ignored in every resample
    ours = calibration_report(logits, labels, n_bootstrap=40, confidence=0.9, seed=5)
    loop = resampled_reports(logits, labels, 40, 5)
    for name in METRIC_NAMES:
        assert ours[name] == calibration_report(logits, labels)[name]  # the point estimates are unchanged
        if name == "smece":
            # the replicates keep the full-sample bandwidth, the loop re-chooses it: compare at a fixed sigma
            continue
        low, high = loop_interval([r[name] for r in loop], 0.9)
        assert ours[f"{name}_low"] == pytest.approx(low, abs=1e-12), name
        assert ours[f"{name}_high"] == pytest.approx(high, abs=1e-12), name


@pytest.mark.parametrize(("n", "n_bins"), [(20, 15), (7, 10), (300, 4)])
def test_bootstrap_equal_mass_groups_with_repeated_examples(n, n_bins):
    # n = 20 with 15 bins: groups of 1-2 copies, so one example's copies straddle several group boundaries and
    # some runs strictly inside a group are empty; n = 7 < 10 bins: some groups are empty in every resample
    logits, labels = random_logits(n, 3, seed=n)
    ours = calibration_report(logits, labels, n_bins=n_bins, n_bootstrap=60, confidence=0.8, seed=9)
    loop = resampled_reports(logits, labels, 60, 9, n_bins=n_bins)
    for name in ("aece", "dsce", "dce", "ece", "mce", "cece"):
        low, high = loop_interval([r[name] for r in loop], 0.8)
        assert ours[f"{name}_low"] == pytest.approx(low, abs=1e-12), name
        assert ours[f"{name}_high"] == pytest.approx(high, abs=1e-12), name


def test_bootstrap_smooth_ece_equals_a_loop_at_the_sample_bandwidth(monkeypatch):
    # the replicates apply the smoothing as one (grid, points) matrix; the loop runs the FFT of
    # `smooth_calibration_error` at the same bandwidth on each resample: the two agree to rounding
    logits, labels = random_logits(400, 5, seed=11, scale=1.5)
    sigma = calibration._sample(logits, labels, 15, True, -100)["sigma"]
    draws = np.random.default_rng(4).integers(0, 400, size=(50, 400))
    values = [smooth_calibration_error(logits[d], labels[d], bandwidth=sigma) for d in draws]
    low, high = loop_interval(values, 0.9)
    ours = calibration_report(logits, labels, n_bootstrap=50, seed=4, confidence=0.9)
    assert ours["smece_low"] == pytest.approx(low, abs=1e-12)
    assert ours["smece_high"] == pytest.approx(high, abs=1e-12)
    # above the matrix's size limit the replicates fall back to the FFT: the same numbers
    monkeypatch.setattr(calibration, "_SMECE_MATRIX_ELEMENTS", 0)
    fft = calibration_report(logits, labels, n_bootstrap=50, seed=4, confidence=0.9)
    assert fft["smece_low"] == pytest.approx(low, abs=1e-12)
    assert fft["smece_high"] == pytest.approx(high, abs=1e-12)


def test_bootstrap_smooth_ece_uses_the_full_sample_bandwidth():
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(150, 3)) * 2, rng.integers(0, 3, size=150)
    probs = torch.softmax(torch.tensor(logits), dim=1).numpy()
    conf, correct = relplot.multiclass_logits_to_confidences(probs, labels, probs=True)
    _, sigma = relplot.smECE(conf, correct, return_width=True)
    ours = calibration_report(logits, labels, n_bootstrap=30, seed=2)
    draws = np.random.default_rng(2).integers(0, 150, size=(30, 150))
    # our sigma and relplot's differ by < 2^-10; at relplot's sigma the loop agrees to that order
    values = [smooth_calibration_error(logits[d], labels[d], bandwidth=float(sigma)) for d in draws]
    low, high = loop_interval(values, 0.95)
    assert ours["smece_low"] == pytest.approx(low, abs=SMECE_ATOL)
    assert ours["smece_high"] == pytest.approx(high, abs=SMECE_ATOL)


def test_bootstrap_is_seeded_and_covers_the_estimate():
    logits, labels = random_logits(500, 5, seed=4)
    a = calibration_report(logits, labels, n_bootstrap=200, seed=1)
    assert a == calibration_report(logits, labels, n_bootstrap=200, seed=1)
    b = calibration_report(logits, labels, n_bootstrap=200, seed=2)
    assert a["ece_low"] != b["ece_low"]
    for name in METRIC_NAMES:
        assert a[f"{name}_low"] <= a[f"{name}_high"], name
    # a wider coverage gives a wider interval on the same resamples
    wide = calibration_report(logits, labels, n_bootstrap=200, seed=1, confidence=0.99)
    assert wide["ece_low"] <= a["ece_low"] and wide["ece_high"] >= a["ece_high"]
    # the accuracy's interval is about +-1.96 standard errors: sqrt(acc (1 - acc) / 500)
    se = math.sqrt(a["accuracy"] * (1 - a["accuracy"]) / 500)
    assert (a["accuracy_high"] - a["accuracy_low"]) == pytest.approx(2 * 1.96 * se, rel=0.25)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_bootstrap": -1}, ValueError, "`n_bootstrap`"),
        ({"n_bootstrap": 1.5}, TypeError, "`n_bootstrap`"),
        ({"n_bootstrap": 10, "confidence": 1.0}, ValueError, r"`confidence` must be in \(0, 1\)"),
        ({"n_bootstrap": 10, "confidence": 0.0}, ValueError, "`confidence`"),
        ({"n_bootstrap": 10, "seed": 1.5}, TypeError, "`seed` must be an integer"),
        ({"n_bootstrap": 10, "seed": None}, TypeError, "`seed`"),
    ],
)
def test_bootstrap_bad_options(kwargs, error, match):
    logits, labels = random_logits(20, 3, seed=0)
    with pytest.raises(error, match=match):
        calibration_report(logits, labels, **kwargs)


def test_paired_bootstrap_equals_a_loop_and_its_invariants():
    logits, labels = random_logits(200, 4, seed=7)
    other = logits * 0.5  # a less confident model on the same examples
    probs = torch.softmax(other, dim=1)
    ours = paired_bootstrap(logits, probs, labels, n_bootstrap=50, seed=3, from_logits=(True, False))
    draws = np.random.default_rng(3).integers(0, 200, size=(50, 200))
    for name in ("accuracy", "ece", "aece", "cece", "mce", "nll", "brier", "ece_over", "dsce"):
        diffs = [
            calibration_report(logits[d], labels[d])[name] - calibration_report(other[d], labels[d])[name]
            for d in draws
        ]
        point = calibration_report(logits, labels)[name] - calibration_report(other, labels)[name]
        assert ours[name] == pytest.approx(point, abs=1e-12), name
        low, high = loop_interval(diffs, 0.95)
        assert ours[f"{name}_low"] == pytest.approx(low, abs=1e-9), name
        assert ours[f"{name}_high"] == pytest.approx(high, abs=1e-9), name
    # a model against itself: 0 [0, 0]; swapping the models negates the difference and mirrors the interval
    same = paired_bootstrap(logits, logits, labels, n_bootstrap=50, seed=3)
    assert all(value == 0.0 for value in same.values())
    swapped = paired_bootstrap(probs, logits, labels, n_bootstrap=50, seed=3, from_logits=(False, True))
    for name in METRIC_NAMES:
        assert swapped[name] == pytest.approx(-ours[name], abs=1e-12)
        assert swapped[f"{name}_low"] == pytest.approx(-ours[f"{name}_high"], abs=1e-9)


def test_paired_bootstrap_bad_input():
    logits, labels = random_logits(20, 3, seed=0)
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(logits, logits[:10], labels)
    with pytest.raises(ValueError, match="`metrics`"):
        paired_bootstrap(logits, logits, labels, metrics=["bogus"])
    with pytest.raises(ValueError, match="`n_bootstrap` must be an integer >= 1"):
        paired_bootstrap(logits, logits, labels, n_bootstrap=0)


def test_memory_does_not_grow_with_the_number_of_chunks():
    # 20_000 x 200 float32 scores in chunks of 2^18 / 200 = 1310 rows: 16 chunks, each with classwise tables of
    # 200 classes x 1000 bins x (8 + 8) bytes = 3.2 MB. Kept per chunk until the end they peaked at ~80 MB (16 x 3.2
    # MB plus the final sum); added up as they arrive, at ~28 MB (a few tables in flight). torch's own buffers are
    # not traced by tracemalloc, numpy's are.
    import tracemalloc

    logits, labels = random_logits(20_000, 200, seed=5, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers, as on the 2-core CI machine: more workers hold more tables at once
    tracemalloc.start()
    try:
        calibration_report(logits, labels, n_bins=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)
    assert peak < 45e6
