"""mbls-nlp: calibrated fine-tuning for Hugging Face models (Margin-based Label Smoothing and its baselines).

The public names below are imported on first use (PEP 562 module `__getattr__`), so that `import mbls_nlp` and the
maths modules (`mbls_nlp.losses`, `mbls_nlp.calibration`, `mbls_nlp.temperature`) never load transformers; only the
config, the trainer and the search do.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("mbls-nlp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Absolute path of the `evaluate` metric module: ``evaluate.load(ECE_METRIC_PATH)`` works offline.
ECE_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "ece")

# Public name -> the submodule that defines it.
_LAZY_NAMES = {
    "METRIC_NAMES": "calibration",
    "accuracy": "calibration",
    "adaptive_calibration_error": "calibration",
    "brier_score": "calibration",
    "calibration_report": "calibration",
    "classwise_calibration_error": "calibration",
    "expected_calibration_error": "calibration",
    "maximum_calibration_error": "calibration",
    "negative_log_likelihood": "calibration",
    "reliability_bins": "calibration",
    "debiased_calibration_error": "calibration",
    "overconfidence_error": "calibration",
    "paired_bootstrap": "calibration",
    "smooth_calibration_error": "calibration",
    "underconfidence_error": "calibration",
    "CalibrationConfig": "calibration_config",
    "CalibrationTrainer": "calibration_trainer",
    "SearchArguments": "hparam_search",
    "grid_edges": "hparam_search",
    "search_calibration_hparams": "hparam_search",
    "select_candidate": "hparam_search",
    "LossAdapter": "loss_adapter",
    "LOSS_NAMES": "losses",
    "CalibrationLoss": "losses",
    "MarginLoss": "losses",
    "margin_optimum": "losses",
    "build_loss": "losses",
    "reliability_diagram": "plotting",
    "save_reliability_diagram": "plotting",
    "TemperatureScaler": "temperature",
}

__all__ = [
    "CalibrationConfig",
    "CalibrationLoss",
    "CalibrationTrainer",
    "ECE_METRIC_PATH",
    "LOSS_NAMES",
    "LossAdapter",
    "METRIC_NAMES",
    "MarginLoss",
    "SearchArguments",
    "TemperatureScaler",
    "__version__",
    "accuracy",
    "adaptive_calibration_error",
    "brier_score",
    "build_loss",
    "calibration_report",
    "classwise_calibration_error",
    "debiased_calibration_error",
    "expected_calibration_error",
    "grid_edges",
    "margin_optimum",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "overconfidence_error",
    "paired_bootstrap",
    "reliability_bins",
    "reliability_diagram",
    "save_reliability_diagram",
    "search_calibration_hparams",
    "select_candidate",
    "smooth_calibration_error",
    "underconfidence_error",
]


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
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
    from .hparam_search import SearchArguments, grid_edges, search_calibration_hparams, select_candidate
    from .loss_adapter import LossAdapter
    from .losses import LOSS_NAMES, CalibrationLoss, MarginLoss, build_loss
    from .plotting import reliability_diagram, save_reliability_diagram
    from .temperature import TemperatureScaler
