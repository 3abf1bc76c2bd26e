"""Run a recipe once per loss with the same seed, data and budget, and tabulate accuracy and calibration.

Every flag this script does not know is passed to the recipe unchanged; each loss gets its own
`<output_dir>/<loss_type>/` run folder. Writes `<output_dir>/comparison.md` (a table like the paper's: one row per
loss, accuracy and calibration before and after temperature scaling, in percent) and `<output_dir>/comparison.csv`.

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

from transformers import HfArgumentParser

from mbls_nlp.losses import LOSS_NAMES

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


def parse_args(argv: list[str] | None = None) -> tuple[CompareArguments, list[str]]:
    parser = HfArgumentParser(CompareArguments)
    args, recipe_args = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if recipe_args and recipe_args[0] == "--":
        recipe_args = recipe_args[1:]
    losses = [name.strip() for name in args.loss_types.split(",") if name.strip()]
    unknown = [name for name in losses if name not in LOSS_NAMES]
    if not losses or unknown:
        raise ValueError(f"`loss_types` must be a comma-separated list from {LOSS_NAMES}, got {args.loss_types!r}.")
    for reserved in ("--loss_type", "--output_dir"):
        if any(arg == reserved or arg.startswith(reserved + "=") for arg in recipe_args):
            raise ValueError(f"{reserved} is set per run by compare_losses.py; do not pass it to the recipe.")
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


def run_one(args: CompareArguments, loss_type: str, recipe_args: list[str]) -> dict:
    run_dir = Path(args.output_dir) / loss_type
    results_file = run_dir / "all_results.json"
    if not (args.skip_existing and results_file.is_file()):
        script = Path(__file__).with_name(f"{args.recipe}.py")
        command = [*launcher_command(args.launcher), str(script), *recipe_args]
        command += ["--loss_type", loss_type, "--output_dir", str(run_dir)]
        print(f"[compare_losses] {loss_type}: {shlex.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        results = json.loads(results_file.read_text())
        results["wall_time_s"] = time.perf_counter() - start
        results_file.write_text(json.dumps(results, indent=4, sort_keys=True))
    return json.loads(results_file.read_text())


def write_tables(output_dir: str | os.PathLike, rows: dict[str, dict]) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    header = ["loss"]
    for title_prefix in ("", "TS "):
        header += [f"{title_prefix}{title}" + (" (%)" if percent else "") for _, title, percent in COLUMNS]
    header += ["T", "wall time (s)"]
    searched = any("search_candidates" in results for results in rows.values())
    if searched:  # runs with --search_hparams: the chosen values and what the search cost
        header += ["chosen on validation", "candidates", "search time (s)"]

    def cell(results: dict, key: str, percent: bool) -> str:
        value = results.get(key)
        if value is None or not math.isfinite(value):
            return "n/a"
        return f"{100 * value:.2f}" if percent else f"{value:.4f}"

    table = []
    for loss_type, results in rows.items():
        line = [loss_type]
        for prefix in ("test_", "test_ts_"):
            line += [cell(results, prefix + key, percent) for key, _, percent in COLUMNS]
        line += [f"{results.get('temperature', float('nan')):.2f}"]
        line += [f"{results.get('wall_time_s', float('nan')):.0f}"]
        if searched:
            chosen = {k[len("search_") :]: v for k, v in results.items() if k.startswith("search_")}
            candidates, seconds = chosen.pop("candidates", None), chosen.pop("time_s", None)
            line += [", ".join(f"{name}={value:g}" for name, value in chosen.items()) or "(none)"]
            line += [
                "n/a" if candidates is None else f"{candidates:.0f}",
                "n/a" if seconds is None else f"{seconds:.0f}",
            ]
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


def main(argv: list[str] | None = None) -> dict[str, dict]:
    args, recipe_args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    rows = {loss_type: run_one(args, loss_type, recipe_args) for loss_type in args.loss_types.split(",")}
    md_path, _ = write_tables(args.output_dir, rows)
    print(md_path.read_text())
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
