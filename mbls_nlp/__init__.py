"""mbls-nlp: calibrated fine-tuning for Hugging Face models (Margin-based Label Smoothing and its baselines)."""

import os
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mbls-nlp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: Absolute path of the `evaluate` metric module: ``evaluate.load(ECE_METRIC_PATH)`` works offline.
ECE_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "ece")

__all__ = ["ECE_METRIC_PATH", "__version__"]
