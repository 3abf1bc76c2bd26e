"""Choose a loss's hyper-parameters on validation: a grid search through `Trainer.hyperparameter_search` (optuna).

The rule (the MbLS paper picks its margin on validation; issue 7): train every grid candidate with the same budget,
keep the candidates whose validation accuracy is within `max_accuracy_drop` points of the best candidate's, and
choose the one among them with the lowest validation ECE (ties: the first in grid order). Test data never enters.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .losses import LOSS_REGISTRY, build_loss

__all__ = [
    "DEFAULT_SEARCH_GRIDS",
    "SEARCHABLE_HPARAMS",
    "SearchArguments",
    "SearchResult",
    "describe_default_grids",
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
            "--search_grid, keep those within --max_accuracy_drop points of the best validation accuracy, choose the "
            "lowest validation ECE among them, then train it again, fit the temperature and test it (test data "
            "never enters the choice). Writes search.md and search.csv. Needs optuna (pip install 'mbls-nlp[search]')."
        },
    )
    search_grid: str | None = field(
        default=None,
        metadata={
            "help": "Grid as 'name=v1,v2;name=v1,...' over the loss's config fields. Default, per loss (the "
            f"fields each one may vary): {describe_default_grids()} (no candidate is trained)."
        },
    )
    max_accuracy_drop: float = field(
        default=1.0,
        metadata={
            "help": "Candidates may trail the best validation accuracy by at most this many points (percent). On a "
            "small validation set one point can be below the accuracy's standard error (about 1.5 points at 55 percent on "
            "1,132 messages), and the rule then picks the most accurate candidate: consider 3-5 there."
        },
    )

    def __post_init__(self):
        if isinstance(self.max_accuracy_drop, bool) or not isinstance(self.max_accuracy_drop, (int, float)):
            raise TypeError(f"`max_accuracy_drop` must be a number of points, got {self.max_accuracy_drop!r}.")
        if not 0.0 <= self.max_accuracy_drop <= 100.0:
            raise ValueError(f"`max_accuracy_drop` must be in [0, 100] points, got {self.max_accuracy_drop}.")


@dataclass
class SearchResult:
    """What [`search_calibration_hparams`] found.

    Args:
        chosen (`dict[str, float]`): the chosen candidate's hyper-parameters (config field names).
        rows (`list[dict]`): one row per candidate in grid order: its hyper-parameters, `eval_accuracy`, `eval_ece`,
            `eval_nll`, `time_s` and `chosen`.
        chosen_index (`int` or `None`): index of the chosen row; `None` when the loss has nothing to search (no rows,
            nothing trained).
    """

    chosen: dict[str, float]
    rows: list[dict[str, Any]]
    chosen_index: int | None

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
                f"`search_grid` cannot vary {name!r} for loss_type={loss_type!r}; allowed: {sorted(allowed) or 'none'}."
            )
        if not values:
            raise ValueError(f"`search_grid` gives no value for {name!r}.")
        if len(set(values)) != len(values):
            raise ValueError(f"`search_grid` repeats a value of {name!r}: {values}.")
    for candidate in _candidates(grid):
        build_loss(loss_type, **{allowed[name]: value for name, value in candidate.items()})
    return grid


def _candidates(grid: dict[str, tuple[float, ...]]) -> list[dict[str, float]]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def select_candidate(rows: list[dict[str, Any]], max_accuracy_drop: float = 1.0) -> int:
    """Index of the row with the lowest `eval_ece` among those whose `eval_accuracy` (a fraction) is within
    `max_accuracy_drop` points of the best; ties go to the earliest row.

    Examples:

    ```python
    >>> rows = [{"eval_accuracy": 0.70, "eval_ece": 0.10}, {"eval_accuracy": 0.685, "eval_ece": 0.02},
    ...         {"eval_accuracy": 0.695, "eval_ece": 0.05}]
    >>> select_candidate(rows, max_accuracy_drop=1.0)  # 0.685 trails 0.70 by 1.5 points: out
    2

    ```
    """
    if not rows:
        raise ValueError("`rows` is empty: there is no candidate to choose.")
    for row in rows:
        for key in ("eval_accuracy", "eval_ece"):
            if not math.isfinite(row[key]):
                raise ValueError(f"Candidate {row} has a non-finite {key}.")
    best = max(row["eval_accuracy"] for row in rows)
    # 1e-9 absorbs float noise in `best - drop` so a candidate exactly at the edge stays in.
    floor = best - max_accuracy_drop / 100.0 - 1e-9
    eligible = [i for i, row in enumerate(rows) if row["eval_accuracy"] >= floor]
    return min(eligible, key=lambda i: (rows[i]["eval_ece"], i))


def search_calibration_hparams(
    trainer,
    grid: str | dict | None = None,
    *,
    max_accuracy_drop: float = 1.0,
    output_dir: str | os.PathLike | None = None,
) -> SearchResult:
    """Grid-search the loss's hyper-parameters of a `CalibrationTrainer` on its `eval_dataset`.

    Runs `trainer.hyperparameter_search` (optuna backend, `GridSampler`: each candidate once, with the trainer's
    seed and budget), records each candidate's validation metrics, chooses with [`select_candidate`], writes
    `search.md` and `search.csv` (every candidate, the chosen one marked) to `output_dir` (default
    `trainer.args.output_dir`, main process only) and sets the chosen values on `trainer.args` (rebuilding the loss).
    The chosen candidate is not kept: train it again with `trainer.train()` (same seed, so the same model on a
    deterministic device), then fit the temperature and test it. A loss with nothing to search (an empty grid, e.g.
    `ce`) trains nothing here: the result has no rows and `search.md` says so.

    `hyperparameter_search`'s own best run optimises one objective; the rule here needs every candidate's accuracy
    and ECE, so the objective (validation ECE) is only reported to optuna and the choice is made afterwards.

    Args:
        trainer ([`CalibrationTrainer`]): built with `model_init` (a fresh model per candidate) and an `eval_dataset`.
        grid (`str`, `dict` or `None`, *optional*): see [`parse_search_grid`]; `None` is the loss's default grid.
        max_accuracy_drop (`float`, *optional*, defaults to 1.0): accuracy points a candidate may trail the best by.
        output_dir (`str`, *optional*): where to write `search.md` and `search.csv`.

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
    SearchArguments(max_accuracy_drop=max_accuracy_drop)  # validates max_accuracy_drop
    args = trainer.args
    grid = parse_search_grid(grid, args.loss_type)
    if not grid:  # nothing to choose: training a candidate would only repeat the final training run
        result = SearchResult(chosen={}, rows=[], chosen_index=None)
        if trainer.is_world_process_zero():
            write_search_tables(result, [], output_dir or args.output_dir, args.loss_type, max_accuracy_drop)
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
            "eval_nll": metrics["eval_nll"],
            "time_s": time.perf_counter() - started.get(trial.number, time.perf_counter()),
        }
        return metrics["eval_ece"]

    sampler = optuna.samplers.GridSampler({n: list(v) for n, v in grid.items()}, seed=args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainer.hyperparameter_search(
        hp_space=hp_space,
        compute_objective=compute_objective,
        n_trials=len(candidates),
        direction="minimize",
        backend="optuna",
        sampler=sampler,
    )
    # Rows in grid order whatever order the sampler drew them in.
    by_params = {tuple(row[name] for name in grid): row for row in results.values()}
    missing = [c for c in candidates if tuple(c.values()) not in by_params]
    if missing:
        raise RuntimeError(f"The search did not evaluate every candidate; missing: {missing}.")
    rows = [by_params[tuple(candidate.values())] for candidate in candidates]
    chosen_index = select_candidate(rows, max_accuracy_drop)
    for i, row in enumerate(rows):
        row["chosen"] = i == chosen_index
    chosen = {name: rows[chosen_index][name] for name in grid}
    for name, value in chosen.items():
        setattr(args, name, value)
    trainer.rebuild_loss()
    result = SearchResult(chosen=chosen, rows=rows, chosen_index=chosen_index)
    if trainer.is_world_process_zero():
        write_search_tables(result, list(grid), output_dir or args.output_dir, args.loss_type, max_accuracy_drop)
    return result


def write_search_tables(
    result: SearchResult, names: list[str], output_dir: str | os.PathLike, loss_type: str, max_accuracy_drop: float
) -> None:
    """Write `search.csv` and `search.md` (every candidate, the chosen one marked) to `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)
    columns = [*names, "eval_accuracy", "eval_ece", "eval_nll", "time_s", "chosen"]
    with open(os.path.join(output_dir, "search.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: row[key] for key in columns} for row in result.rows)
    if not result.rows:
        with open(os.path.join(output_dir, "search.md"), "w") as handle:
            handle.write(f"Search for `{loss_type}`: nothing to search (the loss has no tunable hyper-parameters).\n")
        return
    header = [*names, "val Acc (%)", "val ECE (%)", "val NLL", "time (s)", "chosen"]
    lines = [
        f"Search for `{loss_type}`: {len(result.rows)} candidates; chosen by the lowest validation ECE among those "
        f"within {max_accuracy_drop:g} points of the best validation accuracy.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in result.rows:
        cells = [f"{row[name]:g}" for name in names]
        cells += [f"{100 * row['eval_accuracy']:.2f}", f"{100 * row['eval_ece']:.2f}", f"{row['eval_nll']:.4f}"]
        cells += [f"{row['time_s']:.0f}", "**yes**" if row["chosen"] else ""]
        lines.append("| " + " | ".join(cells) + " |")
    with open(os.path.join(output_dir, "search.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
