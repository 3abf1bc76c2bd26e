"""Choose a loss's hyper-parameters on validation: a grid search through `Trainer.hyperparameter_search` (optuna).

The rule (the MbLS paper picks its margin on validation; issues 7 and 15): train every grid candidate with the same
budget, keep the candidates whose validation accuracy is not significantly below the best candidate's (a one-sided
two-proportion z-test at 5% on the validation examples, or an explicit `max_accuracy_drop` in points), and choose
the one among them with the lowest debiased calibration error `dce` on validation (ties: the lower NLL, then the
first in grid order); see [`select_candidate`]. Test data never enters. A choice at the lowest or highest value of
its grid is flagged ([`grid_edges`]: a warning, a line in `search.md`, `SearchResult.edges`): the rule's optimum
may lie beyond the grid.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainerCallback, TrainerState

from .losses import LOSS_REGISTRY, build_loss

logger = logging.getLogger(__name__)

__all__ = [
    "ACCURACY_TEST_Z",
    "DEFAULT_SEARCH_GRIDS",
    "SELECTION_METRICS",
    "SEARCHABLE_HPARAMS",
    "SearchArguments",
    "SearchResult",
    "describe_default_grids",
    "edge_note",
    "grid_edges",
    "parse_search_grid",
    "search_calibration_hparams",
    "select_candidate",
]

# Views of `LOSS_REGISTRY` (the one home of the grids) for the losses with something to tune, per loss:
# CalibrationConfig field -> build_loss keyword (what a search may vary), and the default grid. A loss absent here
# has no free hyper-parameter: its search trains nothing.
SEARCHABLE_HPARAMS: dict[str, dict[str, str]] = {
    name: spec.searchable for name, spec in LOSS_REGISTRY.items() if spec.search_grid
}
DEFAULT_SEARCH_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    name: dict(spec.search_grid) for name, spec in LOSS_REGISTRY.items() if spec.search_grid
}

#: z of the one-sided accuracy test of [`select_candidate`]: a candidate whose validation accuracy is below the best
#: one's at the 5% level is out.
ACCURACY_TEST_Z = 1.645
#: Validation metrics [`select_candidate`] can choose by, among the candidates that pass the accuracy test.
SELECTION_METRICS = ("dce", "nll", "ece")


def describe_default_grids() -> str:
    """The default grids of `LOSS_REGISTRY` in words, as the `--search_grid` help and recipes/README.md give them.

    Examples:

    ```python
    >>> describe_default_grids().split("; ")[:2]
    ['ls: ls_epsilon 0.01,0.05,0.1,0.2', 'focal: focal_gamma 1,2,3,5']

    ```
    """
    parts = []
    for name, spec in LOSS_REGISTRY.items():
        if spec.search_grid:
            grids = (
                f"{config_field} " + ",".join(f"{v:g}" for v in values)
                for config_field, values in spec.search_grid.items()
            )
            parts.append(f"{name}: " + " x ".join(grids))
    untuned = [name for name, spec in LOSS_REGISTRY.items() if not spec.search_grid]
    if untuned:
        names = untuned[0] if len(untuned) == 1 else f"{', '.join(untuned[:-1])} and {untuned[-1]}"
        parts.append(f"{names} {'has' if len(untuned) == 1 else 'have'} nothing to search")
    return "; ".join(parts)


@dataclass
class SearchArguments:
    """Command-line arguments of the recipes' search mode (parsed by `HfArgumentParser`)."""

    search_hparams: bool = field(
        default=False,
        metadata={
            "help": "Choose the loss's hyper-parameters on validation before the final run: train every candidate of "
            "--search_grid, keep those whose validation accuracy is not significantly below the best one's (see "
            "--max_accuracy_drop), choose the lowest validation --selection_metric among them, then fit the "
            "temperature on that candidate's trained model and test it (test data never enters the choice; see "
            "--search_keep_models). Writes search.md and search.csv. Needs optuna (pip install 'mbls-nlp[search]')."
        },
    )
    search_grid: str | None = field(
        default=None,
        metadata={
            "help": "Grid as 'name=v1,v2;name=v1,...' over the loss's config fields. Default, per loss (the "
            f"fields each one may vary): {describe_default_grids()} (no candidate is trained)."
        },
    )
    max_accuracy_drop: float | None = field(
        default=None,
        metadata={
            "help": "Default (unset): a candidate is kept when its validation accuracy is not significantly below the "
            "best one's, best - acc <= 1.645 * sqrt((best (1 - best) + acc (1 - acc)) / n) on the n validation "
            "examples (one-sided test at 5 percent; about 3.4 points at 55 percent on 1,132 messages). A number "
            "overrides it: candidates may trail the best validation accuracy by at most this many points (percent)."
        },
    )
    selection_metric: str = field(
        default="dce",
        metadata={
            "help": "Validation metric that chooses among the kept candidates, lowest wins: dce (the debiased "
            "calibration error of Kumar et al. 2019, not inflated by the sampling noise of a small validation set "
            "as the binned ECE is; ties broken by NLL), nll, or ece (the binned ECE, the rule before issue 15)."
        },
    )

    search_keep_models: bool = field(
        default=True,
        metadata={
            "help": "Keep each candidate's trained model on disk (output_dir/search_models, deleted once one is "
            "chosen) and go on with the chosen one: the model whose validation numbers chose it, with no second "
            "training. False: store nothing and train the chosen candidate again (same seed: the same model on a "
            "deterministic device; one more training)."
        },
    )

    def __post_init__(self):
        _check_rule(self.max_accuracy_drop, self.selection_metric)


def _check_rule(max_accuracy_drop: Any, selection_metric: Any) -> None:
    if max_accuracy_drop is not None:
        if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)):
            raise TypeError(
                "`max_accuracy_drop` must be None (the accuracy test) or a number of points, "
                f"got {max_accuracy_drop!r}."
            )
        if not 0.0 <= max_accuracy_drop <= 100.0:
            raise ValueError(
                f"`max_accuracy_drop` must be None (the accuracy test) or in [0, 100] points, got {max_accuracy_drop}."
            )
    if selection_metric not in SELECTION_METRICS:
        raise ValueError(f"`selection_metric` must be one of {SELECTION_METRICS}, got {selection_metric!r}.")


@dataclass
class SearchResult:
    """What [`search_calibration_hparams`] found.

    Args:
        chosen (`dict[str, float]`): the chosen candidate's hyper-parameters (config field names).
        rows (`list[dict]`): one row per candidate in grid order: its hyper-parameters, `eval_accuracy`, `eval_ece`,
            `eval_dce`, `eval_nll`, `eval_samples` (the number of validation examples), `time_s` and `chosen`.
        chosen_index (`int` or `None`): index of the chosen row; `None` when the loss has nothing to search (no rows,
            nothing trained).
        train_metrics (`dict` or `None`): with `keep_models=True`, the chosen candidate's training metrics (what
            `trainer.train()` returns as `.metrics`: `train_loss`, `train_runtime`, ...); the trainer then holds
            that candidate's trained model, training history and loss state. `None` when the chosen candidate is
            to be trained again.
        edges (`dict[str, str]`): the chosen hyper-parameters that sit at the lowest or highest value of their grid
            (see [`grid_edges`]), e.g. `{"margin": "highest"}`; empty when every choice is inside its grid.
    """

    chosen: dict[str, float]
    rows: list[dict[str, Any]]
    chosen_index: int | None
    train_metrics: dict[str, float] | None = None
    edges: dict[str, str] = field(default_factory=dict)

    def summary(self, prefix: str = "search_") -> dict[str, float]:
        """Flat numbers for `all_results.json`: the chosen values, the candidate count and the search's time."""
        out = {f"{prefix}{name}": value for name, value in self.chosen.items()}
        out[f"{prefix}candidates"] = len(self.rows)
        out[f"{prefix}time_s"] = sum(row["time_s"] for row in self.rows)
        return out


def parse_search_grid(grid: str | dict | None, loss_type: str) -> dict[str, tuple[float, ...]]:
    """The grid of `loss_type` from `'name=v1,v2;name=...'` (or a dict), or its default when `grid` is `None`.

    Every candidate is checked by building its loss, so a bad value fails before any training.

    Examples:

    ```python
    >>> parse_search_grid("margin=0,5;alpha=0.5", "mbls")
    {'margin': (0.0, 5.0), 'alpha': (0.5,)}
    >>> parse_search_grid(None, "ce")
    {}

    ```
    """
    spec = LOSS_REGISTRY.get(loss_type) if isinstance(loss_type, str) else None
    if spec is None:
        raise ValueError(f"`loss_type` must be one of {tuple(LOSS_REGISTRY)}, got {loss_type!r}.")
    allowed = spec.searchable
    if grid is None:
        return dict(spec.search_grid)
    if isinstance(grid, str):
        parsed = {}
        for item in filter(None, (part.strip() for part in grid.split(";"))):
            name, sep, values = item.partition("=")
            if not sep:
                raise ValueError(f"`search_grid` items must look like 'name=v1,v2', got {item!r}.")
            try:
                parsed[name.strip()] = tuple(float(value) for value in values.split(",") if value.strip())
            except ValueError as error:
                raise ValueError(
                    f"`search_grid` values of {name.strip()!r} must be numbers, got {values!r}."
                ) from error
        grid = parsed
    if not isinstance(grid, dict):
        raise TypeError(f"`search_grid` must be a string, a dict or None, got {type(grid).__name__}.")
    grid = {name: tuple(float(value) for value in values) for name, values in grid.items()}
    for name, values in grid.items():
        if name not in allowed:
            raise ValueError(
                f"`search_grid` cannot vary {name!r} for loss_type={loss_type!r}; "
                f"allowed: {sorted(allowed) or 'none'}."
            )
        if not values:
            raise ValueError(f"`search_grid` gives no value for {name!r}.")
        if len(set(values)) != len(values):
            raise ValueError(f"`search_grid` repeats a value of {name!r}: {values}.")
    for candidate in _candidates(grid):
        build_loss(loss_type, **{allowed[name]: value for name, value in candidate.items()})
    return grid


def grid_edges(grid: dict[str, Any], chosen: dict[str, float]) -> dict[str, str]:
    """The chosen values that lie at an end of their grid: `{name: "lowest" | "highest"}`.

    A choice at the grid's lowest or highest value says the rule might have chosen a value beyond it, had the grid
    gone further; a choice strictly inside has neighbours on both sides that the rule rejected. An axis with one
    value is no search and is skipped.

    Args:
        grid (`dict[str, Sequence[float]]`): the searched values per hyper-parameter (as [`parse_search_grid`]
            returns them).
        chosen (`dict[str, float]`): the chosen value of every hyper-parameter of `grid`.

    Returns:
        `dict[str, str]`: in `grid`'s order, only the names at an edge.

    Examples:

    ```python
    >>> grid_edges({"margin": (2, 4, 6, 10), "alpha": (0.1,)}, {"margin": 10, "alpha": 0.1})
    {'margin': 'highest'}
    >>> grid_edges({"margin": (2, 4, 6, 10)}, {"margin": 4})
    {}

    ```
    """
    if not isinstance(grid, dict):
        raise TypeError(f"`grid` must be a dict of name -> values, got {type(grid).__name__}.")
    if not isinstance(chosen, dict):
        raise TypeError(f"`chosen` must be a dict of name -> value, got {type(chosen).__name__}.")
    edges = {}
    for name, values in grid.items():
        values = [float(value) for value in values]
        if name not in chosen:
            raise ValueError(f"`chosen` has no value for {name!r}; it must give one for each of {list(grid)}.")
        value = float(chosen[name])
        if value not in values:
            raise ValueError(f"`chosen[{name!r}]` = {chosen[name]!r} is not a value of its grid {values}.")
        if len(values) < 2:
            continue
        if value == min(values):
            edges[name] = "lowest"
        elif value == max(values):
            edges[name] = "highest"
    return edges


def edge_note(edges: dict[str, str], chosen: dict[str, float]) -> str:
    """A sentence for a report on the choices at a grid's edge ([`grid_edges`]); `""` when there are none.

    Examples:

    ```python
    >>> print(edge_note({"margin": "highest"}, {"margin": 10.0}))  # doctest: +NORMALIZE_WHITESPACE
    At the grid's edge: margin=10 is the highest value of its grid. The rule's optimum may lie beyond it:
    a grid extended past it (`--search_grid`) would tell.
    >>> edge_note({}, {"margin": 4.0})
    ''

    ```
    """
    if not edges:
        return ""
    parts = [f"{name}={chosen[name]:g} is the {where} value of its grid" for name, where in edges.items()]
    beyond = "it" if len(edges) == 1 else "them"
    return (
        f"At the grid's edge: {'; '.join(parts)}. The rule's optimum may lie beyond {beyond}: a grid extended past "
        f"{beyond} (`--search_grid`) would tell."
    )


def _candidates(grid: dict[str, tuple[float, ...]]) -> list[dict[str, float]]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def select_candidate(
    rows: list[dict[str, Any]], max_accuracy_drop: float | None = None, *, selection_metric: str = "dce"
) -> int:
    """Index of the chosen row: the lowest `eval_<selection_metric>` among the rows whose validation accuracy passes
    the accuracy test.

    The accuracy test (`max_accuracy_drop=None`): a row with accuracy `a` (`eval_accuracy`, a fraction, on `n =
    eval_samples` validation examples) is kept when it is not significantly below the best row's accuracy `b` (on
    its own `n_b`) in a one-sided two-proportion z-test at 5%: `b - a <= ACCURACY_TEST_Z * sqrt(b (1 - b) / n_b +
    a (1 - a) / n)`, `ACCURACY_TEST_Z = 1.645`. Both accuracies are measured on the same examples, where the paired
    difference is less noisy than this unpaired standard error (the pairing needs per-example correctness, which the
    rows do not carry): the test is conservative, it keeps a row in doubt. The best row always passes. With a
    number, `max_accuracy_drop` overrides the test: rows within that many points of the best are kept.

    The choice: `selection_metric="dce"` (the debiased calibration error of Kumar et al. 2019): the binned ECE is
    biased upwards by the noise of each bin's accuracy, by several points on ~1,000 validation examples, and more
    for a candidate whose confidences crowd into few bins; `dce` removes the first-order bias. Rows at the same
    `dce` (e.g. two at 0, where the estimate is clipped) go to the lower `eval_nll`. `"nll"` chooses by the NLL
    (a proper score, unbiased as a mean over examples, but it rewards accuracy too), `"ece"` by the binned ECE (the
    rule before issue 15). Remaining ties go to the earliest row.

    Args:
        rows (`list[dict]`):
            One per candidate, with `eval_accuracy`, `eval_<selection_metric>` (and `eval_nll` for `"dce"`), and
            `eval_samples` when `max_accuracy_drop` is `None`.
        max_accuracy_drop (`float`, *optional*):
            Accuracy points a row may trail the best by, instead of the test.
        selection_metric (`str`, *optional*, defaults to `"dce"`):
            One of `SELECTION_METRICS` = `("dce", "nll", "ece")`.

    Returns:
        `int`: the chosen row's index.

    Examples:

    ```python
    >>> rows = [{"eval_accuracy": 0.70, "eval_ece": 0.10}, {"eval_accuracy": 0.685, "eval_ece": 0.02},
    ...         {"eval_accuracy": 0.695, "eval_ece": 0.05}]
    >>> select_candidate(rows, max_accuracy_drop=1.0, selection_metric="ece")  # 0.685 trails 0.70 by 1.5 points: out
    2
    >>> # the test on 400 examples: 0.70 - 0.64 = 0.06 > 1.645 * sqrt((0.70 * 0.30 + 0.64 * 0.36) / 400) = 0.0546
    >>> rows = [{"eval_accuracy": 0.70, "eval_dce": 0.08, "eval_nll": 0.9, "eval_samples": 400},
    ...         {"eval_accuracy": 0.64, "eval_dce": 0.01, "eval_nll": 1.0, "eval_samples": 400},
    ...         {"eval_accuracy": 0.66, "eval_dce": 0.03, "eval_nll": 1.1, "eval_samples": 400}]
    >>> select_candidate(rows)  # row 1 is significantly less accurate; row 2 (0.04 <= 0.0542) is kept
    2

    ```
    """
    _check_rule(max_accuracy_drop, selection_metric)
    if not rows:
        raise ValueError("`rows` is empty: there is no candidate to choose.")
    keys = ["eval_accuracy", f"eval_{selection_metric}"] + (["eval_nll"] if selection_metric == "dce" else [])
    if max_accuracy_drop is None:
        keys.append("eval_samples")
    for row in rows:
        for key in keys:
            if key not in row:
                raise ValueError(
                    f"Candidate {row} has no {key}: the rule (selection_metric={selection_metric!r}, "
                    f"max_accuracy_drop={max_accuracy_drop!r}) needs {keys}."
                )
            if not math.isfinite(row[key]):
                raise ValueError(f"Candidate {row} has a non-finite {key}.")
        if max_accuracy_drop is None and not row["eval_samples"] >= 1:
            raise ValueError(f"Candidate {row} has eval_samples < 1: the accuracy test needs the validation size.")
    best_row = rows[max(range(len(rows)), key=lambda i: rows[i]["eval_accuracy"])]
    best = best_row["eval_accuracy"]

    # 1e-9 absorbs float noise so that a candidate exactly at the edge stays in.
    def kept(row) -> bool:
        if max_accuracy_drop is not None:
            return row["eval_accuracy"] >= best - max_accuracy_drop / 100.0 - 1e-9
        a = row["eval_accuracy"]
        se = math.sqrt(best * (1.0 - best) / best_row["eval_samples"] + a * (1.0 - a) / row["eval_samples"])
        return best - a <= ACCURACY_TEST_Z * se + 1e-9

    eligible = [i for i, row in enumerate(rows) if kept(row)]
    metric = f"eval_{selection_metric}"
    if selection_metric == "dce":
        return min(eligible, key=lambda i: (rows[i][metric], rows[i]["eval_nll"], i))
    return min(eligible, key=lambda i: (rows[i][metric], i))


#: Folder (under the search's output folder) where each candidate's trained model waits until one is chosen.
SEARCH_MODELS_DIR = "search_models"


class _KeepCandidates(TrainerCallback):
    """Stores each candidate's trained model, training state, loss state and training metrics at the end of its
    training (main process), and puts the chosen one's back into the trainer ([`restore`])."""

    def __init__(self, trainer, folder: str):
        self.trainer, self.folder = trainer, folder
        self._train_metrics: dict | None = None

    def _trial_dir(self, number: int) -> str:
        return os.path.join(self.folder, f"trial-{number}")

    def on_train_begin(self, args, state, control, **kwargs):
        self._train_metrics = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Trainer logs its training metrics once, at the end: the dict `train()` returns as `.metrics` (the same
        # object, which a PrinterCallback edits in place, so its final contents are read at on_train_end).
        if logs is not None and "train_runtime" in logs:
            self._train_metrics = logs

    def on_train_end(self, args, state, control, **kwargs):
        trial = self.trainer._trial
        if trial is None or not args.should_save:
            return
        if self._train_metrics is None:  # stopped before the end of its training (e.g. by an optuna pruner)
            return
        folder = self._trial_dir(trial.number)
        os.makedirs(folder, exist_ok=True)
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)  # this trial's, as `save_model` saves it
        weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        torch.save(weights, os.path.join(folder, "model.pt"))
        state.save_to_json(os.path.join(folder, "trainer_state.json"))
        loss = {"loss": self.trainer.loss_fn.state_dict(), "scheduled_epochs": self.trainer._scheduled_epochs}
        torch.save(loss, os.path.join(folder, "loss.pt"))
        with open(os.path.join(folder, "train_metrics.json"), "w") as handle:
            json.dump(self._train_metrics, handle)  # written last: a complete candidate

    def discard(self) -> None:
        """Delete the stored candidates (main process), e.g. after a failed search."""
        if self.trainer.args.should_save:
            shutil.rmtree(self.folder, ignore_errors=True)

    def restore(self, number: int) -> dict[str, float]:
        """Load candidate `number` into the trainer (every process), delete the stored candidates, and return the
        candidate's training metrics (what `trainer.train()` returned as `.metrics`)."""
        trainer = self.trainer
        trainer.accelerator.wait_for_everyone()  # the main process has written the files
        folder = self._trial_dir(number)
        if not os.path.isfile(os.path.join(folder, "train_metrics.json")):
            raise RuntimeError(f"The chosen candidate (trial {number}) did not finish its training; nothing to keep.")
        # Drop the last trial's prepared model, optimizer and scheduler on every process (the search frees them on
        # the main process only), so that evaluation prepares the restored model alike on every process.
        trainer.accelerator.free_memory()
        trainer.optimizer = trainer.lr_scheduler = None
        model = trainer.call_model_init()
        model.load_state_dict(torch.load(os.path.join(folder, "model.pt"), map_location="cpu", weights_only=True))
        if trainer.place_model_on_device:
            model = model.to(trainer.args.device)
        trainer.model = trainer.model_wrapped = model
        for attribute in ("model", "optimizer", "lr_scheduler"):
            setattr(trainer.callback_handler, attribute, getattr(trainer, attribute))
        state = TrainerState.load_from_json(os.path.join(folder, "trainer_state.json"))
        state.is_world_process_zero = trainer.is_world_process_zero()  # the file is the main process's
        state.is_local_process_zero = trainer.is_local_process_zero()
        state.is_hyper_param_search, state.trial_name, state.trial_params = False, None, None
        trainer.state = state
        loss = torch.load(os.path.join(folder, "loss.pt"), map_location="cpu", weights_only=True)
        trainer.loss_fn.load_state_dict(loss["loss"])
        trainer._scheduled_epochs = loss["scheduled_epochs"]
        with open(os.path.join(folder, "train_metrics.json")) as handle:
            metrics = json.load(handle)
        trainer.accelerator.wait_for_everyone()  # every process has read them
        self.discard()
        return metrics


def search_calibration_hparams(
    trainer,
    grid: str | dict | None = None,
    *,
    max_accuracy_drop: float | None = None,
    selection_metric: str = "dce",
    output_dir: str | os.PathLike | None = None,
    keep_models: bool = True,
) -> SearchResult:
    """Grid-search the loss's hyper-parameters of a `CalibrationTrainer` on its `eval_dataset`.

    Runs `trainer.hyperparameter_search` (optuna backend, `GridSampler`: each candidate once, with the trainer's
    seed and budget), records each candidate's validation metrics, chooses with [`select_candidate`], writes
    `search.md` and `search.csv` (every candidate, the chosen one marked) to `output_dir` (default
    `trainer.args.output_dir`, main process only) and sets the chosen values on `trainer.args` (rebuilding the loss).

    With `keep_models=True` (the default) the trainer ends holding the chosen candidate as trained: its weights,
    `trainer.state` (the per-epoch history) and the loss's state (an alpha schedule, CALS multipliers), so the
    model whose validation numbers were chosen is the one to fit the temperature on and test, without a second
    training (on a non-deterministic device a second training would give another model). Each candidate's weights
    wait in `<output_dir>/search_models/` (one copy of the model per candidate on disk, deleted once one is chosen).
    With `keep_models=False` nothing is stored: train the chosen candidate again with `trainer.train()` (same
    seed: the same model on a deterministic device). A loss with nothing to search (an empty grid, e.g. `ce`) trains
    nothing here: the result has no rows and `search.md` says so.

    `hyperparameter_search`'s own best run optimises one objective; the rule here needs every candidate's accuracy
    and calibration, so the objective (the validation `selection_metric`) is only reported to optuna and the
    choice is made afterwards.

    Args:
        trainer ([`CalibrationTrainer`]): built with `model_init` (a fresh model per candidate) and an `eval_dataset`.
        grid (`str`, `dict` or `None`, *optional*): see [`parse_search_grid`]; `None` is the loss's default grid.
        max_accuracy_drop (`float`, *optional*): accuracy points a candidate may trail the best by; `None` (the
            default) keeps the candidates not significantly less accurate than the best (see [`select_candidate`]).
        selection_metric (`str`, *optional*, defaults to `"dce"`): the validation metric that chooses, one of
            `SELECTION_METRICS`.
        output_dir (`str`, *optional*): where to write `search.md` and `search.csv`.
        keep_models (`bool`, *optional*, defaults to `True`): leave the chosen candidate's trained model in the
            trainer (see above) instead of training it again.

    Returns:
        [`SearchResult`]
    """
    try:
        import optuna
    except ImportError as error:
        raise ImportError(
            "The hyper-parameter search needs optuna: pip install 'mbls-nlp[search]' (or pip install optuna)."
        ) from error
    if trainer.model_init is None:
        raise ValueError("The search trains a fresh model per candidate: build the trainer with `model_init=`.")
    if trainer.eval_dataset is None:
        raise ValueError("The search chooses on validation: build the trainer with `eval_dataset=`.")
    _check_rule(max_accuracy_drop, selection_metric)
    if not isinstance(keep_models, bool):
        raise TypeError(f"`keep_models` must be True or False, got {keep_models!r}.")
    args = trainer.args
    grid = parse_search_grid(grid, args.loss_type)
    if not grid:  # nothing to choose: training a candidate would only repeat the final training run
        result = SearchResult(chosen={}, rows=[], chosen_index=None)
        if trainer.is_world_process_zero():
            write_search_tables(
                result, [], output_dir or args.output_dir, args.loss_type, max_accuracy_drop, selection_metric
            )
        return result
    candidates = _candidates(grid)
    results: dict[int, dict[str, Any]] = {}  # trial number -> last evaluation of that trial
    started: dict[int, float] = {}

    def hp_space(trial):
        started.setdefault(trial.number, time.perf_counter())
        return {name: trial.suggest_categorical(name, list(values)) for name, values in grid.items()}

    def compute_objective(metrics: dict[str, float]) -> float:
        trial = trainer._trial  # set by Trainer._hp_search_setup for the running candidate
        results[trial.number] = {
            **{name: float(value) for name, value in trial.params.items()},
            "eval_accuracy": metrics["eval_accuracy"],
            "eval_ece": metrics["eval_ece"],
            "eval_dce": metrics["eval_dce"],
            "eval_nll": metrics["eval_nll"],
            "eval_samples": len(trainer.eval_dataset),
            "time_s": time.perf_counter() - started.get(trial.number, time.perf_counter()),
        }
        return metrics[f"eval_{selection_metric}"]

    sampler = optuna.samplers.GridSampler({n: list(v) for n, v in grid.items()}, seed=args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    models_dir = os.path.join(output_dir or args.output_dir, SEARCH_MODELS_DIR)
    keeper = _KeepCandidates(trainer, models_dir) if keep_models else None
    if keeper is not None:
        trainer.add_callback(keeper)
    try:
        trainer.hyperparameter_search(
            hp_space=hp_space,
            compute_objective=compute_objective,
            n_trials=len(candidates),
            direction="minimize",
            backend="optuna",
            sampler=sampler,
            # No pruning: optuna's default MedianPruner would stop a candidate whose intermediate validation number
            # is worse than the median of the earlier ones, and the rule needs every candidate's end-of-training row.
            pruner=optuna.pruners.NopPruner(),
        )
    except BaseException:
        if keeper is not None:
            keeper.discard()
        raise
    finally:
        if keeper is not None:
            trainer.remove_callback(keeper)
    # Rows in grid order whatever order the sampler drew them in.
    by_params = {tuple(row[name] for name in grid): row for row in results.values()}
    missing = [c for c in candidates if tuple(c.values()) not in by_params]
    if missing:
        raise RuntimeError(f"The search did not evaluate every candidate; missing: {missing}.")
    rows = [by_params[tuple(candidate.values())] for candidate in candidates]
    chosen_index = select_candidate(rows, max_accuracy_drop, selection_metric=selection_metric)
    for i, row in enumerate(rows):
        row["chosen"] = i == chosen_index
    chosen = {name: rows[chosen_index][name] for name in grid}
    for name, value in chosen.items():
        setattr(args, name, value)
    trainer.rebuild_loss()
    trainer._trial = None  # Trainer leaves the last trial set; what follows is no trial
    train_metrics = None
    if keeper is not None:
        trial = next(number for number, row in results.items() if row is rows[chosen_index])
        train_metrics = keeper.restore(trial)
    edges = grid_edges(grid, chosen)
    result = SearchResult(
        chosen=chosen, rows=rows, chosen_index=chosen_index, train_metrics=train_metrics, edges=edges
    )
    if trainer.is_world_process_zero():
        if edges:
            logger.warning(edge_note(edges, chosen))
        write_search_tables(
            result, list(grid), output_dir or args.output_dir, args.loss_type, max_accuracy_drop, selection_metric
        )
    return result


def write_search_tables(
    result: SearchResult,
    names: list[str],
    output_dir: str | os.PathLike,
    loss_type: str,
    max_accuracy_drop: float | None,
    selection_metric: str = "dce",
) -> None:
    """Write `search.csv` and `search.md` (every candidate, the chosen one marked) to `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    columns = [*names, "eval_accuracy", "eval_ece", "eval_dce", "eval_nll", "eval_samples", "time_s", "chosen"]
    with open(os.path.join(output_dir, "search.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: row[key] for key in columns} for row in result.rows)
    if not result.rows:
        with open(os.path.join(output_dir, "search.md"), "w") as handle:
            handle.write(f"Search for `{loss_type}`: nothing to search (the loss has no tunable hyper-parameters).\n")
        return
    header = [*names, "val Acc (%)", "val ECE (%)", "val dCE (%)", "val NLL", "time (s)", "chosen"]
    if max_accuracy_drop is None:
        n = result.rows[0]["eval_samples"]
        window = (
            f"whose validation accuracy is not significantly below the best one's (one-sided z-test at 5%, "
            f"{n} validation examples)"
        )
    else:
        window = f"within {max_accuracy_drop:g} points of the best validation accuracy"
    criterion = {"dce": "debiased calibration error (ties: NLL)", "nll": "NLL", "ece": "ECE"}[selection_metric]
    lines = [
        f"Search for `{loss_type}`: {len(result.rows)} candidates; chosen by the lowest validation {criterion} "
        f"among those {window}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result.rows:
        cells = [f"{row[name]:g}" for name in names]
        cells += [f"{100 * row[key]:.2f}" for key in ("eval_accuracy", "eval_ece", "eval_dce")]
        cells.append(f"{row['eval_nll']:.4f}")
        cells += [f"{row['time_s']:.0f}", "**yes**" if row["chosen"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    if result.edges:
        lines += ["", edge_note(result.edges, result.chosen)]
    with open(os.path.join(output_dir, "search.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
