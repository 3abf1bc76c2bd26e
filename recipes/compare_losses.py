"""Run a recipe once per loss with the same seed, data and budget, and tabulate accuracy and calibration.

Every flag this script does not know is passed to the recipe unchanged; each loss gets its own
`<output_dir>/<loss_type>/` run folder (`<output_dir>/<loss_type>/seed_<s>/` with `--seeds`). Writes
`<output_dir>/comparison.md` (a table like the paper's: one row per loss, accuracy and calibration before and after
temperature scaling, in percent) and `<output_dir>/comparison.csv`.

Paired comparisons: every run saves its test logits (`--save_predictions`), and when `ce` is among the losses each
row also gives the loss's difference to CE, to CE + temperature scaling (the baseline a user would pick) and, after
its own temperature scaling, to CE + TS, on the same test examples, with a paired bootstrap interval
(`mbls_nlp.protocol.paired_comparisons`): `-3.10 [-3.90, -2.30]` is ECE(loss) - ECE(CE) in points. With
`--seeds 1,2,3` each loss runs once per seed, the metrics are `mean ± std` over seeds, each difference is taken
against CE of the same seed and shown as `mean ± std` with how many seeds' intervals lie below and above 0; the
per-seed differences and intervals are in `comparison_per_seed.csv`.

With the recipe's `--search_hparams`, each loss first chooses its own hyper-parameters on validation (its default
grid, the same epochs per candidate), so the table compares tuned against tuned; it then also lists the chosen values
and what the search cost.

Examples:

    # The paper's 20 Newsgroups comparison with the text CNN, offline, on one GPU or the CPU:
    python recipes/compare_losses.py --recipe text_classification --loss_types ce,ls,focal,flsd,ecp,mbls \\
        --output_dir runs/compare-20ng -- \\
        --train_file ../shared/data/20newsgroups/train.jsonl.gz \\
        --test_file ../shared/data/20newsgroups/test.jsonl.gz \\
        --newsgroups_cleanup headers --num_train_epochs 10 --per_device_train_batch_size 128

    # Tuned against tuned: each loss searches its own grid on validation first (ce has nothing to tune):
    python recipes/compare_losses.py --loss_types ce,ls,focal,mbls --output_dir runs/compare-tuned -- \\
        --search_hparams --train_file ... --test_file ... --newsgroups_cleanup headers

    # Three seeds per loss, mean ± std over seeds and paired differences to CE of the same seed:
    python recipes/compare_losses.py --loss_types ce,mbls --seeds 1,2,3 --output_dir runs/compare-seeds -- ...

    # Each run on two CPU processes:
    python recipes/compare_losses.py --launcher "accelerate launch --config_file \\
        recipes/accelerate_configs/cpu_2proc.yaml" --loss_types ce,mbls --output_dir runs/compare -- --use_cpu ...
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser

from mbls_nlp.calibration import METRIC_NAMES
from mbls_nlp.losses import LOSS_NAMES
from mbls_nlp.protocol import PAIRED_COMPARISONS, load_test_predictions, paired_comparisons

RECIPES = ("text_classification", "image_classification")
# (key in all_results.json without the "test_" prefix, column title, shown in percent)
COLUMNS = [
    ("accuracy", "Acc", True),
    ("ece", "ECE", True),
    ("aece", "AECE", True),
    ("cece", "CECE", True),
    ("nll", "NLL", False),
    ("brier", "Brier", False),
]
#: (key of PAIRED_COMPARISONS, how the column names the comparison) against the baseline CE
COMPARISON_TITLES = {
    "vs_baseline": "{m} - CE",
    "vs_baseline_ts": "{m} - (CE + TS)",
    "ts_vs_baseline_ts": "TS {m} - (CE + TS)",
}
#: how comparison_per_seed.csv names each comparison
COMPARISON_NAMES = {
    "vs_baseline": "loss - CE",
    "vs_baseline_ts": "loss - (CE + TS)",
    "ts_vs_baseline_ts": "(loss + TS) - (CE + TS)",
}
BASELINE = "ce"
TITLES = {key: (title, percent) for key, title, percent in COLUMNS} | {"dce": ("debiased CE", True)}


@dataclass
class CompareArguments:
    output_dir: str = field(metadata={"help": "Folder of the comparison; each loss runs in <output_dir>/<loss_type>."})
    recipe: str = field(default="text_classification", metadata={"help": "Recipe to run.", "choices": RECIPES})
    loss_types: str = field(
        default="ce,ls,focal,flsd,ecp,mbls",
        metadata={"help": f"Comma-separated losses to compare, from {', '.join(LOSS_NAMES)}."},
    )
    launcher: str = field(
        default="python",
        metadata={"help": "Command that runs the recipe: 'python' or e.g. 'accelerate launch --config_file ...'."},
    )
    skip_existing: bool = field(
        default=False, metadata={"help": "Reuse a loss's all_results.json when its run folder already has one."}
    )
    seeds: str = field(
        default="",
        metadata={
            "help": "Comma-separated seeds: each loss runs once per seed (--seed passed to the recipe) in "
            "<output_dir>/<loss_type>/seed_<s>, and the table shows mean ± std over seeds. Empty: one run per loss "
            "with the recipe's --seed."
        },
    )
    paired_metrics: str = field(
        default="accuracy,ece,nll",
        metadata={"help": f"Comma-separated metrics of the paired comparisons to CE, from {', '.join(METRIC_NAMES)}."},
    )
    n_bootstrap: int = field(
        default=1000, metadata={"help": "Paired bootstrap resamples of the test examples for each comparison."}
    )
    confidence: float = field(default=0.95, metadata={"help": "Coverage of the paired intervals, in (0, 1)."})


def parse_args(argv: list[str] | None = None) -> tuple[CompareArguments, list[str]]:
    parser = HfArgumentParser(CompareArguments)
    args, recipe_args = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if recipe_args and recipe_args[0] == "--":
        recipe_args = recipe_args[1:]
    losses = [name.strip() for name in args.loss_types.split(",") if name.strip()]
    unknown = [name for name in losses if name not in LOSS_NAMES]
    if not losses or unknown:
        raise ValueError(f"`loss_types` must be a comma-separated list from {LOSS_NAMES}, got {args.loss_types!r}.")
    seeds = [seed.strip() for seed in args.seeds.split(",") if seed.strip()]
    if not all(seed.lstrip("-").isdigit() for seed in seeds):
        raise ValueError(f"`seeds` must be a comma-separated list of integers, e.g. 1,2,3, got {args.seeds!r}.")
    args.seeds = ",".join(seeds)
    paired = [name.strip() for name in args.paired_metrics.split(",") if name.strip()]
    if not paired or [name for name in paired if name not in METRIC_NAMES]:
        raise ValueError(
            f"`paired_metrics` must be a comma-separated list from {METRIC_NAMES}, got {args.paired_metrics!r}."
        )
    args.paired_metrics = ",".join(paired)
    if isinstance(args.n_bootstrap, bool) or not isinstance(args.n_bootstrap, int) or args.n_bootstrap < 1:
        raise ValueError(f"`n_bootstrap` must be an integer >= 1, got {args.n_bootstrap!r}.")
    if not 0.0 < args.confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1) (a fraction, e.g. 0.95), got {args.confidence}.")
    for reserved in ("--loss_type", "--output_dir", *(["--seed"] if seeds else [])):
        if any(arg == reserved or arg.startswith(reserved + "=") for arg in recipe_args):
            raise ValueError(f"{reserved} is set per run by compare_losses.py; do not pass it to the recipe.")
    if "--save_predictions" not in recipe_args:  # the paired comparisons need the test logits
        recipe_args = [*recipe_args, "--save_predictions"]
    args.loss_types = ",".join(losses)
    return args, recipe_args


def launcher_command(launcher: str) -> list[str]:
    words = shlex.split(launcher)
    # Run the tools of this interpreter, whatever is first on PATH.
    if words[:1] == ["python"]:
        return [sys.executable, *words[1:]]
    if words[:2] == ["accelerate", "launch"]:
        return [sys.executable, "-m", "accelerate.commands.launch", *words[2:]]
    return words


def run_dir_of(args: CompareArguments, loss_type: str, seed: str | None) -> Path:
    return Path(args.output_dir) / loss_type / ("" if seed is None else f"seed_{seed}")


def run_one(args: CompareArguments, loss_type: str, recipe_args: list[str], seed: str | None = None) -> dict:
    run_dir = run_dir_of(args, loss_type, seed)
    results_file = run_dir / "all_results.json"
    if not (args.skip_existing and results_file.is_file()):
        script = Path(__file__).with_name(f"{args.recipe}.py")
        command = [*launcher_command(args.launcher), str(script), *recipe_args]
        command += ["--loss_type", loss_type, "--output_dir", str(run_dir)]
        command += [] if seed is None else ["--seed", seed]
        label = loss_type if seed is None else f"{loss_type}, seed {seed}"
        print(f"[compare_losses] {label}: {shlex.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        results = json.loads(results_file.read_text())
        results["wall_time_s"] = time.perf_counter() - start
        results_file.write_text(json.dumps(results, indent=4, sort_keys=True))
    return json.loads(results_file.read_text())


def _number(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _summary(values: list, percent: bool) -> str:
    """One value, or `mean ± std` (sample std) over seeds; `n/a` when a run lacks it."""
    if not values or any(value is None or not math.isfinite(value) for value in values):
        return "n/a"
    if len(values) == 1:
        return _number(values[0], percent)
    return f"{_number(float(np.mean(values)), percent)} ± {_number(float(np.std(values, ddof=1)), percent)}"


def _paired_cell(results: list, key: str, percent: bool) -> str:
    """One seed: `difference [low, high]`; several: `mean ± std (<0: k/n, >0: j/n)`, counting the seeds whose
    interval lies below or above zero."""
    if not results or any(result is None for result in results):
        return "n/a"
    if len(results) == 1:
        (result,) = results
        low, high = _number(result[key + "_low"], percent), _number(result[key + "_high"], percent)
        return f"{_number(result[key], percent)} [{low}, {high}]"
    below = sum(result[key + "_high"] < 0 for result in results)
    above = sum(result[key + "_low"] > 0 for result in results)
    cell = _summary([result[key] for result in results], percent)
    return f"{cell} (<0: {below}/{len(results)}, >0: {above}/{len(results)})"


def write_tables(
    output_dir: str | os.PathLike,
    rows: dict[str, dict | list[dict]],
    paired: dict[str, list[dict | None]] | None = None,
    paired_metrics=("accuracy", "ece", "nll"),
) -> tuple[Path, Path]:
    """Write `comparison.md` and `comparison.csv`: one row per loss (`rows`: its `all_results.json`, or one per
    seed), and with `paired` (per loss, one [`~mbls_nlp.protocol.paired_comparisons`] result per seed, `None`
    where a run saved no predictions) the differences to CE and CE + TS of `paired_metrics`."""
    output_dir = Path(output_dir)
    runs = {loss_type: results if isinstance(results, list) else [results] for loss_type, results in rows.items()}
    header = ["loss"]
    for title_prefix in ("", "TS "):
        header += [f"{title_prefix}{title}" + (" (%)" if percent else "") for _, title, percent in COLUMNS]
    header += ["T", "wall time (s)"]
    several = any(len(members) > 1 for members in runs.values())
    if several:
        header.insert(1, "seeds")
    searched = any("search_candidates" in results for members in runs.values() for results in members)
    if searched:  # runs with --search_hparams: the chosen values and what the search cost
        header += ["chosen on validation", "candidates", "search time (s)"]
    if paired:
        for title in COMPARISON_TITLES.values():
            for name in paired_metrics:
                metric, percent = TITLES.get(name, (name, True))
                header.append(title.format(m=metric) + (" (%)" if percent else ""))

    table = []
    for loss_type, members in runs.items():
        line = [loss_type] + ([str(len(members))] if several else [])
        for prefix in ("test_", "test_ts_"):
            line += [_summary([r.get(prefix + key) for r in members], percent) for key, _, percent in COLUMNS]
        line += [_summary([r.get("temperature") for r in members], False)]
        line += [f"{np.mean([r.get('wall_time_s', float('nan')) for r in members]):.0f}"]
        if searched:
            results = members[0]  # the chosen values of the first seed
            chosen = {k[len("search_") :]: v for k, v in results.items() if k.startswith("search_")}
            candidates, seconds = chosen.pop("candidates", None), chosen.pop("time_s", None)
            line += [", ".join(f"{name}={value:g}" for name, value in chosen.items()) or "(none)"]
            line += [
                "n/a" if candidates is None else f"{candidates:.0f}",
                "n/a" if seconds is None else f"{seconds:.0f}",
            ]
        if paired:
            comparisons = paired.get(loss_type) or [None]
            for key in COMPARISON_TITLES:
                for name in paired_metrics:
                    percent = TITLES.get(name, (name, True))[1]
                    line.append(_paired_cell([c and c[key] for c in comparisons], name, percent))
        table.append(line)
    csv_path, md_path = output_dir / "comparison.csv", output_dir / "comparison.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(table)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in table]
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def write_per_seed(output_dir: str | os.PathLike, seeds: list, paired: dict[str, list[dict | None]], metrics) -> Path:
    """`comparison_per_seed.csv`: for each loss and seed, every paired difference with its interval bounds."""
    path = Path(output_dir) / "comparison_per_seed.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["loss", "seed", "comparison", *(f"{m}{end}" for m in metrics for end in ("", "_low", "_high"))]
        )
        for loss_type, comparisons in paired.items():
            for seed, comparison in zip(seeds, comparisons):
                for key in PAIRED_COMPARISONS:
                    values = ["n/a"] * (3 * len(metrics)) if comparison is None else [
                        f"{comparison[key][m + end]:.6f}" for m in metrics for end in ("", "_low", "_high")
                    ]  # fmt: skip
                    writer.writerow([loss_type, seed, COMPARISON_NAMES[key], *values])
    return path


def compare_to_baseline(args: CompareArguments, losses: list[str], seeds: list) -> dict[str, list[dict | None]]:
    """Per loss and seed, `paired_comparisons` against CE of the same seed (`None` without saved predictions)."""
    metrics = args.paired_metrics.split(",")
    paired = {}
    for loss_type in losses:
        paired[loss_type] = []
        for seed in seeds:
            run = load_test_predictions(run_dir_of(args, loss_type, seed))
            baseline = load_test_predictions(run_dir_of(args, BASELINE, seed))
            if run is None or baseline is None:
                paired[loss_type].append(None)
                continue
            paired[loss_type].append(
                paired_comparisons(
                    run,
                    baseline,
                    metrics=metrics,
                    n_bootstrap=args.n_bootstrap,
                    confidence=args.confidence,
                    seed=0 if seed is None else int(seed),
                )
            )
    return paired


def main(argv: list[str] | None = None) -> dict[str, dict | list[dict]]:
    args, recipe_args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    losses = args.loss_types.split(",")
    seeds = args.seeds.split(",") if args.seeds else [None]
    runs = {loss_type: [run_one(args, loss_type, recipe_args, seed) for seed in seeds] for loss_type in losses}
    rows = {loss_type: members if args.seeds else members[0] for loss_type, members in runs.items()}
    paired = None
    if BASELINE in losses:
        paired = compare_to_baseline(args, losses, seeds)
        if args.seeds:
            write_per_seed(args.output_dir, seeds, paired, args.paired_metrics.split(","))
    else:
        print(f"[compare_losses] no paired comparisons: add {BASELINE!r} to --loss_types for them.")
    md_path, _ = write_tables(args.output_dir, rows, paired, args.paired_metrics.split(","))
    print(md_path.read_text())
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
