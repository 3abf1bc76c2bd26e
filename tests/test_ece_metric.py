"""The `evaluate` ECE module, loaded by path the way users load it (layer (b) of the house test plan)."""

import doctest
import inspect
import re
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mbls_nlp
from mbls_nlp.calibration import METRIC_NAMES, calibration_report

evaluate = pytest.importorskip("evaluate")

CARD = Path(mbls_nlp.ECE_METRIC_PATH) / "README.md"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test here must work without a network: any connection attempt fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def metric(tmp_path):
    return evaluate.load(mbls_nlp.ECE_METRIC_PATH, cache_dir=str(tmp_path))


def _probs(n=500, c=7, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return logits.astype(dtype), p.astype(dtype), rng.integers(0, c, size=n)


def _assert_same_report(got, expected):
    assert list(got) == list(expected)  # same keys, same order
    for name in expected:
        assert isinstance(got[name], float)
        assert got[name] == pytest.approx(expected[name], rel=0, abs=1e-12), name


def test_loads_by_path_offline(metric):
    assert isinstance(metric, evaluate.Metric)
    assert type(metric).__name__ == "ECE"
    assert set(metric.features) == {"predictions", "references"}
    # evaluate imports a copy of the script from its modules cache; the copy must use the installed package's
    # maths (not a stale copy of it).
    module = sys.modules[type(metric).__module__]
    assert module.calibration_report is calibration_report
    assert "Guo" in metric.citation and "Naeini" in metric.citation and "Margin-based" in metric.citation


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_equals_calibration_report(metric, dtype, n_bins):
    _, probs, labels = _probs(dtype=dtype)
    labels[::9] = -100  # excluded positions must be excluded identically
    got = metric.compute(predictions=probs.tolist(), references=labels.tolist(), n_bins=n_bins)
    # The module stores predictions as float64 (float32 widens exactly), so it sees exactly these numbers.
    expected = calibration_report(probs.astype(np.float64), labels, n_bins=n_bins, from_logits=False)
    assert set(got) == set(METRIC_NAMES)
    _assert_same_report(got, expected)
    if dtype == np.float32:
        # calibration_report on the float32 array itself may do element-wise work in float32 (e.g. p * p for
        # Brier); its float64 accumulation keeps it within float32-rounding noise of the float64 result.
        same_data_f32 = calibration_report(probs, labels, n_bins=n_bins, from_logits=False)
        assert all(abs(got[name] - same_data_f32[name]) < 1e-8 for name in METRIC_NAMES)


def test_accepts_numpy_and_torch_inputs(metric):
    _, probs, labels = _probs(seed=1)
    expected = calibration_report(probs, labels, from_logits=False)
    _assert_same_report(metric.compute(predictions=probs, references=labels), expected)
    _assert_same_report(
        metric.compute(predictions=torch.from_numpy(probs), references=torch.from_numpy(labels)), expected
    )


def test_custom_ignore_index(metric):
    _, probs, labels = _probs(seed=2)
    labels[::5] = 255
    got = metric.compute(predictions=probs.tolist(), references=labels.tolist(), ignore_index=255)
    keep = labels != 255
    _assert_same_report(got, calibration_report(probs[keep], labels[keep], from_logits=False))


def test_add_batch_accumulation_equals_single_compute(tmp_path):
    _, probs, labels = _probs(n=301, seed=3)
    single = evaluate.load(mbls_nlp.ECE_METRIC_PATH, cache_dir=str(tmp_path / "a"))
    expected = single.compute(predictions=probs.tolist(), references=labels.tolist(), n_bins=12)

    batched = evaluate.load(mbls_nlp.ECE_METRIC_PATH, cache_dir=str(tmp_path / "b"))
    for start in range(0, len(labels), 64):  # uneven last batch (301 = 4 * 64 + 45)
        batched.add_batch(predictions=probs[start : start + 64].tolist(), references=labels[start : start + 64])
    _assert_same_report(batched.compute(n_bins=12), expected)

    one_by_one = evaluate.load(mbls_nlp.ECE_METRIC_PATH, cache_dir=str(tmp_path / "c"))
    for p, y in zip(probs[:40].tolist(), labels[:40].tolist()):
        one_by_one.add(predictions=p, references=y)
    _assert_same_report(
        one_by_one.compute(n_bins=12), calibration_report(probs[:40], labels[:40], n_bins=12, from_logits=False)
    )


def test_logits_through_from_logits(metric):
    logits, probs, labels = _probs(seed=4)
    got = metric.compute(predictions=logits.tolist(), references=labels.tolist(), from_logits=True)
    _assert_same_report(got, calibration_report(logits, labels, from_logits=True))
    # Same numbers as passing the probabilities: the softmax is the only difference between the two paths.
    from_probs = calibration_report(probs, labels, from_logits=False)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(from_probs[name], abs=1e-9)


def test_hand_computed_example(metric):
    # Confidences 0.95 / 0.75 / 0.65 / 0.85, each alone in its 15-bin bucket; the third (predicts 0, label 1) wrong.
    # ECE = (0.05 + 0.25 + 0.65 + 0.15) / 4 = 0.275; MCE = 0.65 (the wrong sample's bin);
    # Brier = 2 * (0.05^2 + 0.25^2 + 0.65^2 + 0.15^2) / 4 = 2 * 0.51 / 4 = 0.255;
    # NLL = -(ln 0.95 + ln 0.75 + ln 0.35 + ln 0.85) / 4.
    got = metric.compute(
        predictions=[[0.95, 0.05], [0.25, 0.75], [0.65, 0.35], [0.15, 0.85]], references=[0, 1, 1, 1], n_bins=15
    )
    assert got["accuracy"] == pytest.approx(0.75, abs=1e-12)
    assert got["ece"] == pytest.approx(0.275, abs=1e-12)
    assert got["mce"] == pytest.approx(0.65, abs=1e-12)
    assert got["brier"] == pytest.approx(0.255, abs=1e-12)
    assert got["nll"] == pytest.approx(-(np.log(0.95) + np.log(0.75) + np.log(0.35) + np.log(0.85)) / 4, abs=1e-12)


def _run_doctests(text, name, globs):
    test = doctest.DocTestParser().get_doctest(text, globs, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    return runner.summarize(verbose=False)


def test_kwargs_description_doctests_run(metric):
    module = sys.modules[type(metric).__module__]
    results = _run_doctests(module._KWARGS_DESCRIPTION, "ece._KWARGS_DESCRIPTION", {})
    assert results.attempted >= 5, "the metric's docstring lost its >>> examples"
    assert results.failed == 0


def test_metric_card_examples_run():
    # Markdown fences would be read as expected output; blank them so each example ends at its fence.
    text = re.sub(r"^```.*$", "", CARD.read_text(encoding="utf-8"), flags=re.MULTILINE)
    results = _run_doctests(text, "ece/README.md", {})
    assert results.attempted >= 8, "the metric card lost its >>> examples"
    assert results.failed == 0


def test_metric_card_documents_the_code_arguments(metric):
    # STYLE.md "Don't": a card whose argument names differ from the code (evaluate's brier_score card does).
    card = CARD.read_text(encoding="utf-8")
    assert card.startswith("---\n") and "\ntitle: ECE\n" in card.split("---")[1]
    inputs = card.split("### Inputs", 1)[1].split("###", 1)[0]
    documented = re.findall(r"^- \*\*(\w+)\*\*", inputs, flags=re.MULTILINE)
    params = [p for p in inspect.signature(type(metric)._compute).parameters if p != "self"]
    assert documented == params
    # The docstring's Args section names the same arguments, in the same order.
    module = sys.modules[type(metric).__module__]
    args = module._KWARGS_DESCRIPTION.split("Args:", 1)[1].split("Returns:", 1)[0]
    assert re.findall(r"^    (\w+) \(", args, flags=re.MULTILINE) == params
    # Every output key is documented in the card.
    outputs = card.split("### Output Values", 1)[1].split("###", 1)[0]
    assert all(f"**{name}**" in outputs for name in METRIC_NAMES)


def test_bad_input_raises_value_error(metric):
    good = [[0.7, 0.3], [0.2, 0.8]]
    with pytest.raises(ValueError, match="predictions|scores"):  # rows not summing to 1
        metric.compute(predictions=[[0.7, 0.7], [0.2, 0.8]], references=[0, 1])
    with pytest.raises(ValueError, match="labels|references"):
        metric.compute(predictions=good, references=[0, 2])
    with pytest.raises(ValueError, match="predictions|scores"):
        metric.compute(predictions=[[np.nan, 0.5], [0.2, 0.8]], references=[0, 1])
    with pytest.raises(ValueError, match="n_bins"):
        metric.compute(predictions=good, references=[0, 1], n_bins=0)
    with pytest.raises(ValueError, match=r"predictions.*same length"):
        metric.compute(predictions=[[0.7, 0.3], [1.0]], references=[0, 0])
    with pytest.raises(ValueError, match="predictions.*empty"):
        metric.compute(predictions=[], references=[])


@pytest.mark.parametrize(
    "references",
    [
        [0.0, 1.7],  # used to be truncated to [0, 1]
        [1.0, 0.0],  # integral floats too: the same rule as calibration_report's integer labels
        ["0", "1"],  # used to be parsed
        ["a", "b"],  # used to fail in int() without naming the argument
        [True, False],
        [0, None],
        np.array([0.0, 1.0]),
        torch.tensor([0.0, 1.0]),
    ],
)
def test_non_integer_references_are_refused(metric, references):
    good = [[0.7, 0.3], [0.2, 0.8]]
    with pytest.raises(ValueError, match=r"`references` must be integer class indices"):
        metric.compute(predictions=good, references=references)
    with pytest.raises(ValueError, match=r"`references` must be integer class indices"):
        metric.add_batch(predictions=good, references=references)
    if references[-1] is not None:  # add(reference=None) means "no reference given"
        with pytest.raises(ValueError, match=r"`reference` must be integer class indices"):
            metric.add(prediction=good[1], reference=references[-1])


def test_integer_references_of_any_integer_type_are_accepted(metric):
    good = [[0.7, 0.3], [0.2, 0.8]]
    expected = calibration_report(np.array(good), np.array([0, 1]), from_logits=False)
    for references in ([0, 1], [np.int32(0), np.int64(1)], np.array([0, 1], dtype=np.uint8), torch.tensor([0, 1])):
        assert metric.compute(predictions=good, references=references) == pytest.approx(expected, abs=1e-15)
    # n_bins above the documented bound is refused by calibration_report's own check
    with pytest.raises(ValueError, match="n_bins"):
        metric.compute(predictions=good, references=[0, 1], n_bins=10_001)
