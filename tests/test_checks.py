"""One set of input checks (mbls_nlp._checks): the losses, the metrics and temperature scaling accept the same input
types and give the same message for the same bad input."""

import math

import numpy as np
import pytest
import torch

from mbls_nlp import _checks
from mbls_nlp.calibration import MAX_N_BINS, calibration_report, expected_calibration_error, reliability_bins
from mbls_nlp.losses import build_loss
from mbls_nlp.temperature import TemperatureScaler

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
LABELS = torch.tensor([0, 2])


def _callers():
    # each takes (scores, labels) and raises on bad input
    return {
        "loss": lambda s, y: build_loss("mbls")(s, y),
        "metric": lambda s, y: calibration_report(s, y),
        "temperature": lambda s, y: TemperatureScaler().fit(s, y),
    }


def _message(fn, *args):
    with pytest.raises((TypeError, ValueError)) as info:
        fn(*args)
    return type(info.value), str(info.value).replace("`logits`", "`scores`")


@pytest.mark.parametrize(
    "scores, labels",
    [
        (LOGITS.long(), LABELS),  # integer scores
        (LOGITS, LABELS.float()),  # float labels
        (LOGITS, LABELS > 0),  # bool labels
        (LOGITS[0], LABELS),  # no class dim
        (LOGITS, torch.tensor([0, 1, 2])),  # N mismatch
        (LOGITS.tolist(), LABELS),  # a Python list
        (LOGITS, LABELS.tolist()),
        (LOGITS, torch.tensor([0, 3])),  # label out of range
        (LOGITS, torch.tensor([-1, 0])),
    ],
)
def test_same_bad_input_same_error_everywhere(scores, labels):
    messages = {name: _message(fn, scores, labels) for name, fn in _callers().items()}
    # the loss formats the offending labels as a list ([3]), the metrics as a range (from 3 to 3); the rest is equal
    heads = {name: (kind, text.split("; found")[0]) for name, (kind, text) in messages.items()}
    assert len(set(heads.values())) == 1, messages


def test_numpy_inputs_accepted_everywhere_and_longdouble_widened():
    z64 = LOGITS.double()
    loss = build_loss("ce")(z64.numpy().astype(np.longdouble), LABELS.numpy())
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(z64, LABELS))
    report = calibration_report(z64.numpy().astype(np.longdouble), LABELS.numpy())
    assert report == calibration_report(z64, LABELS)
    t_np = TemperatureScaler().fit(z64.numpy().astype(np.longdouble), LABELS.numpy()).temperature
    assert t_np == TemperatureScaler().fit(z64, LABELS).temperature


def test_object_arrays_rejected_naming_the_argument():
    for fn in _callers().values():
        with pytest.raises(TypeError, match=r"`labels` has numpy dtype object"):
            fn(LOGITS.numpy(), np.array([0, None], dtype=object))


def test_device_mismatch_names_both_devices():
    # The meta device carries shapes and dtypes but no data: enough to reach the device check on any machine.
    meta_labels = LABELS.to("meta")
    for fn in _callers().values():
        with pytest.raises(ValueError, match=r"`labels` is on device meta but `(logits|scores)` on device cpu"):
            fn(LOGITS, meta_labels)
    with pytest.raises(ValueError, match=r"`labels` is on device cpu but `logits` on device meta"):
        build_loss("ce")(LOGITS.to("meta"), LABELS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the meta-device test covers the rest)")
def test_device_mismatch_cuda():
    for fn in _callers().values():
        with pytest.raises(ValueError, match=r"device cpu but .* on device cuda:0"):
            fn(LOGITS.cuda(), LABELS)


def test_n_bins_upper_bound():
    assert MAX_N_BINS == 10_000
    # at the bound: 2 positions in 10_000 bins, confidences exp(2)/(exp(2)+1+exp(-1)) and 1/(2+e)
    table = reliability_bins(LOGITS, LABELS, n_bins=MAX_N_BINS)
    assert sum(table["count"]) == 2
    for big in (MAX_N_BINS + 1, 10**8, 2**31):
        with pytest.raises(ValueError, match=r"`n_bins` must be an integer >= 1 and <= 10000, got"):
            expected_calibration_error(LOGITS, LABELS, n_bins=big)
        with pytest.raises(ValueError, match=r"`n_bins` must be an integer >= 1 and <= 10000"):
            TemperatureScaler().fit(LOGITS, LABELS, method="ece_grid", n_bins=big)


@pytest.mark.parametrize(
    "kwargs, ok",
    [
        ({"minimum": 0.0}, [0, 0.5, np.float32(2.0), np.int64(3)]),
        ({"strict": True}, [1e-300, 7]),
        ({"below": 1.0}, [0.0, 0.999]),
        ({"allow_inf": True}, [math.inf, 0.0]),
    ],
)
def test_check_real_accepts(kwargs, ok):
    for value in ok:
        assert _checks.check_real("x", value, **kwargs) == float(value)


@pytest.mark.parametrize(
    "kwargs, value, error, match",
    [
        ({}, -1.0, ValueError, r"`x` must be >= 0 \(a finite real number\), got -1.0"),
        ({}, math.nan, ValueError, r">= 0 \(a finite real number\), got nan"),
        ({}, math.inf, ValueError, r">= 0 \(a finite real number\), got inf"),
        ({"strict": True}, 0.0, ValueError, r"> 0 \(a finite real number\), got 0.0"),
        ({"below": 1.0}, 1.0, ValueError, r"in \[0, 1\) \(a real number\), got 1.0"),
        ({"allow_inf": True}, -math.inf, ValueError, r">= 0 \(a real number; inf allowed\), got -inf"),
        ({}, True, TypeError, r"`x` must be .* got True \(bool\)"),
        ({}, "1", TypeError, r"got '1' \(str\)"),
        ({}, None, TypeError, r"got None \(NoneType\)"),
    ],
)
def test_check_real_rejects(kwargs, value, error, match):
    with pytest.raises(error, match=match):
        _checks.check_real("x", value, **kwargs)


def test_check_int():
    assert _checks.check_int("k", np.int32(4), minimum=1) == 4
    with pytest.raises(TypeError, match=r"`k` must be an integer >= 1, got True"):
        _checks.check_int("k", True, minimum=1)
    with pytest.raises(TypeError, match=r"`k` must be an integer, got 1.0"):
        _checks.check_int("k", 1.0)
    with pytest.raises(ValueError, match=r"`k` must be an integer >= 1 and <= 3, got 4"):
        _checks.check_int("k", 4, minimum=1, maximum=3)
