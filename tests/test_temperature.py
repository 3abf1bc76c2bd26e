import doctest
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mbls_nlp.temperature
from mbls_nlp.temperature import FIT_METHODS, TemperatureScaler


def _calibrated(n=20000, c=10, seed=0):
    """Logits `z` of a perfectly calibrated model: each label is drawn from softmax(z) itself."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return z, labels


def _nll64(logits, labels):
    """Mean -log softmax(logits)[label], float64 numpy (independent of torch's cross_entropy)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def _ece64(logits, labels, n_bins=15):
    """Equal-width top-label ECE in float64 numpy with bins (b/n, (b+1)/n], 0 in the first bin, written
    independently of mbls_nlp.calibration: a loop over bins, the textbook formula sum_b |acc_b - conf_b| n_b / N."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - conf[in_bin].mean()) * in_bin.sum() / len(y)
    return ece


# ---------------------------------------------------------------------------------------------------------------
# Fitting recovers a known temperature
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_t", [0.05, 0.3, 1.0, 3.0, 20.0])
def test_nll_fit_recovers_known_temperature(true_t):
    # logits = T * z with z calibrated: dividing by T restores calibration, so the NLL minimiser is T
    # (up to sampling noise of the labels, ~1% at N=20000). The range [0.05, 20] checks L-BFGS on log T
    # converges from T = 1 at both ends.
    z, labels = _calibrated()
    scaler = TemperatureScaler().fit((true_t * z).float(), labels)
    assert scaler.temperature == pytest.approx(true_t, rel=0.05)


def test_nll_fit_reaches_a_stationary_point():
    # dNLL/d(log T) = mean_i( z_iy / T - sum_k p_ik z_ik / T ), p = softmax(z / T): zero at the optimum.
    # Computed here in float64 numpy, independently of the autograd path the scaler uses.
    z, labels = _calibrated(seed=1)
    logits = (2.5 * z).numpy()
    t = TemperatureScaler().fit(logits, labels.numpy()).temperature
    s = logits / t
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    grad = np.mean(s[np.arange(len(labels)), labels.numpy()] - (p * s).sum(axis=1))
    assert abs(grad) < 1e-6
    # And it is a minimum: nudging T either way by 1% raises the NLL.
    nll = _nll64(s, labels)
    assert nll < _nll64(logits / (t * 1.01), labels)
    assert nll < _nll64(logits / (t * 0.99), labels)


@pytest.mark.parametrize("true_t", [0.2, 2.5])
def test_nll_fit_equals_scipy_bounded_minimiser(true_t):
    # Peer: scipy's bounded Brent search over log T on the numpy float64 NLL above (no autograd, no L-BFGS).
    optimize = pytest.importorskip("scipy.optimize")
    z, labels = _calibrated(n=5000, c=5, seed=10)
    logits = (true_t * z).numpy()
    res = optimize.minimize_scalar(
        lambda s: _nll64(logits / np.exp(s), labels), bounds=(-5, 5), method="bounded", options={"xatol": 1e-10}
    )
    assert TemperatureScaler().fit(logits, labels.numpy()).temperature == pytest.approx(np.exp(res.x), rel=1e-6)


def test_ece_grid_fit_recovers_known_temperature():
    z, labels = _calibrated(n=50000, seed=2)
    scaler = TemperatureScaler().fit(3.0 * z, labels, method="ece_grid")
    assert abs(scaler.temperature - 3.0) <= 0.1 + 1e-12


@pytest.mark.parametrize("method", FIT_METHODS)
def test_calibrated_logits_give_temperature_one(method):
    z, labels = _calibrated(n=20000, seed=3)
    t = TemperatureScaler(temperature=7.0).fit(z, labels, method=method).temperature
    assert t == pytest.approx(1.0, abs=0.05 if method == "nll" else 0.1 + 1e-12)


def test_fit_reduces_nll_of_over_confident_logits():
    z, labels = _calibrated(seed=4)
    over = 4.0 * z  # over-confident: NLL at T=1 is well above the calibrated NLL
    scaler = TemperatureScaler().fit(over, labels)
    before, after = _nll64(over, labels), _nll64(scaler(over), labels)
    assert after < before - 0.1
    # The fitted NLL is no worse than that of the true temperature (the MLE is optimal on this sample).
    assert after <= _nll64(over / 4.0, labels) + 1e-12


def test_ece_grid_fit_is_the_first_minimiser_over_the_grid():
    z, labels = _calibrated(n=5000, seed=5)
    logits = 2.0 * z
    scaler = TemperatureScaler().fit(logits, labels, method="ece_grid", n_bins=10)
    grid = [k / 10 for k in range(1, 101)]  # the paper's 0.1 ... 10.0
    eces = [_ece64(logits / t, labels, n_bins=10) for t in grid]
    ece_fit = _ece64(logits / scaler.temperature, labels, n_bins=10)
    assert scaler.temperature in grid
    assert all(ece_fit <= e + 1e-12 for e in eces)
    # Ties resolve to the first grid point: no earlier point is as good.
    first_best = grid[int(np.argmin(eces))]
    assert scaler.temperature == first_best


def test_ece_grid_ties_go_to_the_first_grid_point():
    # With an exact tie (all ECEs equal) the first candidate must win, wherever the grid starts.
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    # Uniform logits: conf = 0.5 at every T, accuracy 0.5 (argmax picks class 0) -> ECE = 0 at every T.
    scaler = TemperatureScaler().fit(logits, labels, method="ece_grid", grid=[5.0, 0.5, 2.0])
    assert scaler.temperature == 5.0


def test_ece_grid_custom_grid_is_used():
    z, labels = _calibrated(n=5000, seed=6)
    scaler = TemperatureScaler().fit(3.0 * z, labels, method="ece_grid", grid=[1.0, 3.0, 9.0])
    assert scaler.temperature == 3.0


@pytest.mark.parametrize("method", FIT_METHODS)
def test_ignore_index_positions_are_excluded(method):
    z, labels = _calibrated(n=4000, seed=7)
    logits = 3.0 * z
    # (N, C, L) layout: put the valid rows at scattered positions of a (N', C, 3) tensor, fill the rest with
    # absurd logits (huge, wrong) labelled -100. If they leaked into the fit, T would move far away.
    n_total = 2000 * 3
    g = torch.Generator().manual_seed(0)
    positions = torch.randperm(n_total, generator=g)[: len(labels)]
    flat_logits = torch.full((n_total, logits.shape[1]), 0.0, dtype=torch.float64)
    flat_logits[:, 0] = 1e3
    flat_labels = torch.full((n_total,), -100, dtype=torch.long)
    flat_logits[positions] = logits
    flat_labels[positions] = labels
    # Rows are in position order after the scatter; fit the same rows in that order as the reference.
    order = positions.argsort()
    expected = TemperatureScaler().fit(logits[order], labels[order], method=method).temperature
    ncl_logits = flat_logits.reshape(2000, 3, -1).movedim(2, 1)  # (N, C, L): classes on dim 1
    ncl_labels = flat_labels.reshape(2000, 3)
    got = TemperatureScaler().fit(ncl_logits, ncl_labels, method=method).temperature
    assert got == pytest.approx(expected, rel=1e-9)
    # A custom ignore_index works the same way.
    labels_255 = ncl_labels.masked_fill(ncl_labels == -100, 255)
    got_255 = TemperatureScaler().fit(ncl_logits, labels_255, method=method, ignore_index=255)
    assert got_255.temperature == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="labels"):
        TemperatureScaler().fit(ncl_logits, labels_255, method=method)  # 255 is not ignored by default


# ---------------------------------------------------------------------------------------------------------------
# Applying and serialising
# ---------------------------------------------------------------------------------------------------------------


def test_forward_divides_by_temperature_any_shape_and_keeps_dtype():
    scaler = TemperatureScaler(temperature=2.0)
    # [2, -4] / 2 = [1, -2]
    assert torch.equal(scaler(torch.tensor([[2.0, -4.0]])), torch.tensor([[1.0, -2.0]]))
    x = torch.randn(2, 5, 4, 3, dtype=torch.float16)
    out = scaler(x)
    assert out.shape == x.shape and out.dtype == torch.float16
    torch.testing.assert_close(out, x / 2)
    # The arg-max, hence accuracy, never changes.
    assert torch.equal(out.argmax(1), x.argmax(1))
    with pytest.raises(TypeError, match="logits"):
        scaler(np.zeros((2, 3)))


def test_serialisation_round_trips():
    z, labels = _calibrated(n=2000, seed=8)
    scaler = TemperatureScaler().fit(2.0 * z, labels)
    config = json.loads(json.dumps(scaler.to_dict()))
    assert TemperatureScaler.from_dict(config).temperature == scaler.temperature
    other = TemperatureScaler()
    other.load_state_dict(scaler.state_dict())
    assert other.temperature == scaler.temperature
    assert f"temperature={scaler.temperature}" in repr(scaler)
    with pytest.raises(ValueError, match="config"):
        TemperatureScaler.from_dict({"t": 2.0})


def test_docstring_examples_run():
    results = doctest.testmod(mbls_nlp.temperature, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted >= 4 and results.failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", FIT_METHODS)
def test_fit_on_cuda_matches_cpu(method):
    z, labels = _calibrated(n=4000, seed=9)
    logits = (2.0 * z).float()
    cpu = TemperatureScaler().fit(logits, labels, method=method).temperature
    cuda = TemperatureScaler().fit(logits.cuda(), labels.cuda(), method=method).temperature
    assert cuda == pytest.approx(cpu, rel=1e-6)


def test_temperature_setter_validates():
    scaler = TemperatureScaler()
    scaler.temperature = 0.5
    assert scaler.temperature == 0.5
    with pytest.raises(ValueError, match="temperature"):
        scaler.temperature = -1.0


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler(temperature=bad)


@pytest.mark.parametrize("bad", ["2", None, True])
def test_temperature_wrong_type(bad):
    with pytest.raises(TypeError, match="temperature"):
        TemperatureScaler(temperature=bad)


def test_bad_fit_arguments():
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    scaler = TemperatureScaler()
    with pytest.raises(ValueError, match=r"method.*'nll', 'ece_grid'"):
        scaler.fit(logits, labels, method="ece")
    with pytest.raises(ValueError, match="n_bins"):
        scaler.fit(logits, labels, method="ece_grid", n_bins=0)
    with pytest.raises(ValueError, match="grid"):
        scaler.fit(logits, labels, method="ece_grid", grid=[1.0, -0.5])
    with pytest.raises(ValueError, match="grid"):
        scaler.fit(logits, labels, method="ece_grid", grid=[])
    with pytest.raises(ValueError, match="grid"):
        scaler.fit(logits, labels, method="nll", grid=[1.0])
    # Failed fits leave the temperature untouched.
    assert scaler.temperature == 1.0


def test_bad_fit_inputs():
    scaler = TemperatureScaler()
    with pytest.raises(ValueError, match="empty"):
        scaler.fit(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        scaler.fit(torch.randn(4, 3), torch.full((4,), -100))
    nan_logits = torch.randn(4, 3)
    nan_logits[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logits.*NaN"):
        scaler.fit(nan_logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels.*\[0, 3\)"):
        scaler.fit(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels.*shape"):
        scaler.fit(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits.*shape"):
        scaler.fit(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        scaler.fit(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(TypeError, match="logits"):
        scaler.fit("logits", torch.zeros(4, dtype=torch.long))


def test_nll_fit_stays_in_range_for_chance_level_predictions(caplog):
    # Every label is the least likely class: any sharpening hurts, the NLL keeps falling as T grows (uniform is the
    # limit), so the fit takes the upper bound and says so, instead of a T of millions that rounds float32 logits
    # into ties and changes the arg-max.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 10, generator=g)
    labels = logits.argmin(dim=1)
    with caplog.at_level("WARNING", logger="mbls_nlp.temperature"):
        scaler = TemperatureScaler().fit(logits, labels)
    assert scaler.temperature == mbls_nlp.temperature.NLL_MAX_T
    assert "outside" in caplog.text
    # the arg-max (accuracy) is unchanged by the bounded temperature
    assert torch.equal(scaler(logits).argmax(1), logits.argmax(1))


# ---- folding the temperature into the classification head (issue 13) ----


def _tiny_bert(num_labels=3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=num_labels)  # fmt: skip
    return BertForSequenceClassification(config).eval()


def test_fold_temperature_divides_the_logits_exactly_and_unfolds():
    from mbls_nlp.temperature import fold_temperature, unfold_temperature

    model = _tiny_bert()
    x = torch.randint(1, 30, (4, 6))
    with torch.no_grad():
        raw = model(input_ids=x).logits.double()
        fold_temperature(model, 2.5)
        folded = model(input_ids=x).logits.double()
        # (W x + b) / T = (W / T) x + b / T, up to float32 rounding
        torch.testing.assert_close(folded, raw / 2.5, rtol=1e-6, atol=1e-6)
        assert model.config.calibration_temperature == 2.5 and model.config.calibration_temperature_folded
        with pytest.raises(ValueError, match="already folded"):
            fold_temperature(model, 2.5)
        unfold_temperature(model)
        torch.testing.assert_close(model(input_ids=x).logits.double(), raw, rtol=1e-6, atol=1e-6)
    assert model.config.calibration_temperature_folded is False


def test_temperature_folded_restores_the_head_bit_for_bit():
    from mbls_nlp.temperature import classification_head, temperature_folded

    model = _tiny_bert()
    before = classification_head(model).weight.detach().clone()
    with temperature_folded(model, 3.0) as folded:
        assert folded and model.config.calibration_temperature_folded
        torch.testing.assert_close(classification_head(model).weight, before / 3.0)
    assert torch.equal(classification_head(model).weight, before)
    assert model.config.calibration_temperature_folded is False


def test_classification_head_of_common_layouts():
    from transformers import (
        ResNetConfig,
        ResNetForImageClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    from mbls_nlp.temperature import classification_head, fold_temperature

    roberta = RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=30,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=4,
        )  # fmt: skip
    )
    assert classification_head(roberta) is roberta.classifier.out_proj  # after the dense + tanh layer
    resnet = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic", num_labels=5)
    )
    assert classification_head(resnet) is resnet.classifier[1]  # Sequential(Flatten, Linear)
    bare = torch.nn.Module()
    bare.config = SimpleNamespace(num_labels=3)
    bare.classifier = torch.nn.Conv1d(4, 3, 1)  # not a linear layer: nothing to fold
    assert classification_head(bare) is None
    with pytest.raises(ValueError, match="no linear classification head"):
        fold_temperature(bare, 2.0)
    with pytest.raises(ValueError, match="temperature"):
        fold_temperature(_tiny_bert(), -1.0)
