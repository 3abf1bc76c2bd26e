"""mbls-nlp: calibrated fine-tuning for Hugging Face models (Margin-based Label Smoothing and its baselines)."""

import os
from importlib.metadata import PackageNotFoundError, version

from .calibration import (
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
from .calibration_config import CalibrationConfig
from .calibration_trainer import CalibrationTrainer
from .hparam_search import SearchArguments, search_calibration_hparams, select_candidate
from .loss_adapter import LossAdapter
from .losses import LOSS_NAMES, CalibrationLoss, MarginLoss, build_loss
from .plotting import reliability_diagram, save_reliability_diagram
from .temperature import TemperatureScaler

try:
    __version__ = version("mbls-nlp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Absolute path of the `evaluate` metric module: ``evaluate.load(ECE_METRIC_PATH)`` works offline.
ECE_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "ece")

__all__ = [
    "ECE_METRIC_PATH",
    "LOSS_NAMES",
    "METRIC_NAMES",
    "CalibrationConfig",
    "CalibrationLoss",
    "CalibrationTrainer",
    "LossAdapter",
    "MarginLoss",
    "SearchArguments",
    "TemperatureScaler",
    "__version__",
    "accuracy",
    "adaptive_calibration_error",
    "brier_score",
    "build_loss",
    "calibration_report",
    "underconfidence_error",
    "smooth_calibration_error",
    "paired_bootstrap",
    "overconfidence_error",
    "debiased_calibration_error",
    "classwise_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
    "reliability_diagram",
    "save_reliability_diagram",
    "search_calibration_hparams",
    "select_candidate",
]
