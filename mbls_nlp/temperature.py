"""Post-hoc temperature scaling (Guo et al., 2017), as used in the MbLS paper's evaluation.

Pure torch: usable from any training loop, never imports transformers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ._checks import check_choice, check_ignore_index, check_n_bins, check_real, non_finite_error, prepare
from .calibration import expected_calibration_error

__all__ = [
    "FIT_METHODS",
    "NLL_MAX_T",
    "NLL_MIN_T",
    "TemperatureScaler",
    "classification_head",
    "fold_temperature",
    "temperature_folded",
    "unfold_temperature",
]

#: Valid values of `TemperatureScaler.fit(method=...)`.
FIT_METHODS = ("nll", "ece_grid")
#: Range of the NLL fit: wide enough for any trained model (the paper's grid spans 0.1 ... 10).
NLL_MIN_T, NLL_MAX_T = 0.01, 100.0
logger = logging.getLogger(__name__)


def _paper_grid() -> list[float]:
    # T = 0.1, 0.2, ..., 10.0 as exact decimals: the reference code accumulates `T += 0.1`, which drifts
    # (0.30000000000000004, ...); k / 10 is the value the paper means.
    return [k / 10 for k in range(1, 101)]


def _check_temperature(temperature: Any, name: str = "temperature") -> float:
    return check_real(name, temperature, strict=True)


def _flatten_valid(logits: Any, labels: Any, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates `(N, C, ...)` logits and `(N, ...)` labels (`mbls_nlp._checks.prepare`); returns float64 `(M, C)`
    logits and `(M,)` labels of the positions whose label is not `ignore_index`."""
    logits, labels, valid = prepare(logits, labels, ignore_index, scores_name="logits")
    if valid is not None:
        logits, labels = logits[valid.to(logits.device)], labels[valid]
    if logits.device.type == "mps":  # MPS has no float64; the fit is a one-parameter problem, CPU is fine
        logits, labels = logits.cpu(), labels.cpu()
    logits = logits.to(torch.float64)
    if not torch.isfinite(logits).all():
        raise non_finite_error("logits")
    return logits, labels


class TemperatureScaler(nn.Module):
    """Divides logits by one temperature `T > 0` fitted on held-out logits and labels (Guo et al., 2017).

    `T > 1` softens over-confident predictions, `T < 1` sharpens under-confident ones; the arg-max, hence the
    accuracy, never changes. The temperature is a plain Python float, so it can be stored anywhere a float can
    (e.g. a model config's `calibration_temperature`); `to_dict`/`from_dict` and `state_dict` round-trip it.

    Args:
        temperature (`float`, *optional*, defaults to `1.0`):
            Initial temperature; must be positive and finite.

    Examples:

    ```python
    >>> import torch
    >>> from mbls_nlp.temperature import TemperatureScaler
    >>> scaler = TemperatureScaler(temperature=2.0)
    >>> scaler(torch.tensor([[2.0, -4.0]]))
    tensor([[ 1., -2.]])
    >>> TemperatureScaler.from_dict(scaler.to_dict()).temperature
    2.0

    ```
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self._temperature = _check_temperature(temperature)

    @property
    def temperature(self) -> float:
        """The current temperature `T` (a Python float)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = _check_temperature(value)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Returns `logits / T`, same shape and dtype as `logits` (any shape, e.g. `(N, C)` or `(N, C, H, W)`)."""
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"`logits` must be a torch.Tensor, got {type(logits).__name__}.")
        return logits / self._temperature

    @torch.no_grad()
    def fit(
        self,
        logits: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        *,
        method: str = "nll",
        ignore_index: int = -100,
        n_bins: int = 15,
        grid: Sequence[float] | None = None,
    ) -> TemperatureScaler:
        """Fits `T` on held-out `logits` and `labels`, stores it and returns `self`.

        Args:
            logits (`torch.Tensor` or `np.ndarray` of shape `(N, C)` or `(N, C, d1, ...)`):
                Un-normalised scores, classes on dim 1, any float dtype (not a Python list: the same input types as
                the metrics and losses).
            labels (`torch.Tensor` or `np.ndarray` of shape `(N,)` or `(N, d1, ...)`):
                Integer class indices in `[0, C)`, or `ignore_index`, on the device of `logits`.
            method (`str`, *optional*, defaults to `"nll"`):
                `"nll"` minimises the mean negative log-likelihood of `softmax(logits / T)` with L-BFGS on `log T`
                in float64, starting from `T = 1` (Guo et al., 2017), within `[NLL_MIN_T, NLL_MAX_T]` = `[0.01, 100]`
                (a bound is taken, with a warning, when the NLL keeps falling beyond it: predictions no better than
                uniform); if every position is right with a huge margin the gradient vanishes and `T` stays near 1.
                `"ece_grid"` is the MbLS paper's procedure: evaluate the ECE (`n_bins` equal-width bins) at every `T`
                of `grid` and keep the lowest; ties go to the first (smallest index) grid point.
            ignore_index (`int`, *optional*, defaults to `-100`):
                Positions with this label are excluded.
            n_bins (`int`, *optional*, defaults to `15`):
                Number of ECE bins for `method="ece_grid"`, from 1 to `mbls_nlp.calibration.MAX_N_BINS` (10_000).
            grid (`Sequence[float]`, *optional*):
                Candidate temperatures for `method="ece_grid"`; defaults to the paper's `0.1, 0.2, ..., 10.0`.

        Returns:
            `TemperatureScaler`: `self`, with `temperature` set to the fitted value.
        """
        check_choice("method", method, FIT_METHODS)
        n_bins = check_n_bins(n_bins)
        ignore_index = check_ignore_index(ignore_index)
        if grid is not None and method != "ece_grid":
            raise ValueError(f"`grid` is only used with method='ece_grid', got method={method!r}.")
        flat_logits, flat_labels = _flatten_valid(logits, labels, ignore_index)
        if method == "nll":
            self.temperature = self._fit_nll(flat_logits, flat_labels)
        else:
            self.temperature = self._fit_ece_grid(flat_logits, flat_labels, n_bins=n_bins, grid=grid)
        return self

    @staticmethod
    def _fit_nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
        # Optimise log T: T stays positive without constraints, and the NLL is far better conditioned in log T
        # than in T (T in [0.05, 20] is [-3, 3] in log T), so one L-BFGS run from T = 1 reaches either end.
        # The NLL is convex in 1/T, so it is unimodal in log T and the strong-Wolfe line search cannot be trapped.
        log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [log_t],
            lr=1.0,
            max_iter=200,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(logits * torch.exp(-log_t), labels)
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        log_temperature = log_t.item()
        if not math.isfinite(log_temperature):
            raise ValueError(f"NLL fit did not converge to a finite temperature (got log T = {log_temperature}).")
        # The NLL is unimodal in log T, so the optimum over [NLL_MIN_T, NLL_MAX_T] is the nearest bound when the
        # unconstrained one lies outside. That happens when predictions are no better than uniform (T -> inf; a
        # huge T also rounds float32 logits into ties and changes the arg-max) or all right with a huge margin.
        temperature = min(max(math.exp(min(log_temperature, 700.0)), NLL_MIN_T), NLL_MAX_T)
        if temperature in (NLL_MIN_T, NLL_MAX_T):
            logger.warning(
                "Temperature scaling: the NLL optimum lies outside [%s, %s] (log T = %.3g); using T = %s. The "
                "held-out predictions are close to uniform (or all right with a huge margin).",
                NLL_MIN_T,
                NLL_MAX_T,
                log_temperature,
                temperature,
            )
        return temperature

    @staticmethod
    def _fit_ece_grid(
        logits: torch.Tensor, labels: torch.Tensor, *, n_bins: int, grid: Sequence[float] | None
    ) -> float:
        candidates = _paper_grid() if grid is None else [_check_temperature(t, "grid") for t in grid]
        if not candidates:
            raise ValueError("`grid` must contain at least one temperature.")
        best_t, best_ece = candidates[0], math.inf
        for t in candidates:
            ece = expected_calibration_error(logits / t, labels, n_bins=n_bins, from_logits=True)
            if ece < best_ece:  # strict: ties keep the first grid point, as the reference code does
                best_t, best_ece = t, ece
        return best_t

    def to_dict(self) -> dict[str, float]:
        """Returns `{"temperature": T}` (JSON-serialisable)."""
        return {"temperature": self._temperature}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> TemperatureScaler:
        """Builds a scaler from the output of `to_dict`."""
        if not isinstance(config, dict) or "temperature" not in config:
            raise ValueError(f"`config` must be a dict with a 'temperature' key, got {config!r}.")
        return cls(temperature=config["temperature"])

    # nn.Module hooks so that `state_dict()`/`load_state_dict()` carry the float (as "_extra_state").
    def get_extra_state(self) -> dict[str, float]:
        return self.to_dict()

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.temperature = state["temperature"]

    def extra_repr(self) -> str:
        return f"temperature={self._temperature}"


# ---- folding the temperature into a linear classification head ----

#: Where classification models keep the linear layer that outputs their logits, most specific first:
#: RoBERTa-like `classifier.out_proj`; BERT, DistilBERT, ViT, ConvNeXt, the text CNN `classifier` (ResNet: a
#: `Sequential(Flatten, Linear)`); GPT-2/Llama-like `score`; timm-like `head` and `fc`.
HEAD_NAMES = ("classifier.out_proj", "classifier", "score", "head", "fc")


def classification_head(model: nn.Module) -> nn.Linear | None:
    """The `nn.Linear` whose output is `model`'s logits, or `None` when there is none that can be folded.

    Looked up under [`HEAD_NAMES`] (the last layer of a `Sequential` whose other layers have no parameters counts);
    its `out_features` must equal `model.config.num_labels` when the model has a config, and its weight must not be
    shared with the input embeddings.
    """
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # image models have none (transformers raises NotImplementedError)
        embeddings = None
    for name in HEAD_NAMES:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, nn.Sequential) and len(module) and all(not list(m.parameters()) for m in module[:-1]):
            module = module[-1]
        if not isinstance(module, nn.Linear) or (num_labels is not None and module.out_features != num_labels):
            continue
        if embeddings is not None and getattr(embeddings, "weight", None) is module.weight:
            return None
        return module
    return None


def _head_or_error(model: nn.Module) -> nn.Linear:
    head = classification_head(model)
    if head is None:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no linear classification head to fold the temperature into: "
            f"expected an nn.Linear with num_labels outputs under one of {HEAD_NAMES}. Divide its logits by "
            "`config.calibration_temperature` instead."
        )
    return head


def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    r"""
    Fold temperature scaling into the model's linear classification head, in place: `(W x + b) / T = (W / T) x + b / T`
    exactly, so that the plain model (any `transformers` code path: `pipeline(...)`, `model(**x).logits.softmax(-1)`)
    gives the calibrated probabilities. Records `config.calibration_temperature = T` and
    `config.calibration_temperature_folded = True`, so that the temperature is never applied twice; the unscaled
    logits are the folded model's logits times `T` (or call [`unfold_temperature`]).

    Args:
        model (`torch.nn.Module`):
            A classifier with a `config` (e.g. a transformers model) whose logits come out of a linear layer found by
            [`classification_head`].
        temperature (`float`):
            The fitted temperature, positive.

    Returns:
        The same `model`.

    Raises:
        `ValueError`: when the model has no such head (then divide the logits by the temperature yourself), or
        when the temperature is already folded.

    Examples:

    ```python
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from mbls_nlp.temperature import fold_temperature
    >>> model = torch.nn.Module()
    >>> model.classifier, model.config = torch.nn.Linear(4, 3), SimpleNamespace(num_labels=3)
    >>> x = torch.randn(2, 4)
    >>> before = model.classifier(x)
    >>> _ = fold_temperature(model, 2.0)
    >>> torch.allclose(model.classifier(x), before / 2.0), model.config.calibration_temperature_folded
    (True, True)

    ```
    """
    temperature = _check_temperature(temperature)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("`model` must have a `config` to record the folded temperature in.")
    if getattr(config, "calibration_temperature_folded", False):
        raise ValueError(
            f"The temperature {getattr(config, 'calibration_temperature', None)} is already folded into `model`'s "
            "head; call unfold_temperature(model) first."
        )
    head = _head_or_error(model)
    with torch.no_grad():
        head.weight.div_(temperature)
        if head.bias is not None:
            head.bias.div_(temperature)
    config.calibration_temperature = temperature
    config.calibration_temperature_folded = True
    return model


def unfold_temperature(model: nn.Module) -> nn.Module:
    """Undo [`fold_temperature`] in place: multiply the head by `config.calibration_temperature` again (exact up to
    float rounding) and set `config.calibration_temperature_folded = False`; the temperature stays recorded.

    Returns:
        The same `model` (unchanged when its temperature is not folded).
    """
    config = getattr(model, "config", None)
    if not getattr(config, "calibration_temperature_folded", False):
        return model
    temperature = _check_temperature(config.calibration_temperature, "config.calibration_temperature")
    head = _head_or_error(model)
    with torch.no_grad():
        head.weight.mul_(temperature)
        if head.bias is not None:
            head.bias.mul_(temperature)
    config.calibration_temperature_folded = False
    return model


@contextmanager
def temperature_folded(model: nn.Module, temperature: float) -> Iterator[bool]:
    """Within the block, `model` has `temperature` folded into its head (see [`fold_temperature`]), e.g. to save
    it calibrated; afterwards its head and config are exactly as before (the original tensors are copied back).

    Yields:
        `bool`: whether the temperature could be folded; `False` (and nothing changed) when the model has no
        linear classification head, or it is already folded.
    """
    config = getattr(model, "config", None)
    head = classification_head(model)
    if head is None or config is None or getattr(config, "calibration_temperature_folded", False):
        yield False
        return
    saved = [p.detach().clone() for p in (head.weight, head.bias) if p is not None]
    fold_temperature(model, temperature)
    try:
        yield True
    finally:
        with torch.no_grad():
            for parameter, original in zip([p for p in (head.weight, head.bias) if p is not None], saved):
                parameter.copy_(original)
        config.calibration_temperature_folded = False
