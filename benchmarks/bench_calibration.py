"""Speed of `mbls_nlp.calibration` against torchmetrics, netcal and a bare `torch.softmax` (issue 2).

Claims checked on 1,000,000 x 100 float32:
- `expected_calibration_error` on probabilities <= 0.5x torchmetrics' `multiclass_calibration_error`;
- the full `calibration_report` from logits <= 3x a bare `torch.softmax` of the same logits.

And on 10,000 x 20 logits (issue 15): the cost of `calibration_report(..., n_bootstrap=1000)` against the report
without intervals (the ratio is printed; the goal is "a few times").

Run from the repository root (one process; the CPU may be shared, so the contenders are interleaved and each
time is the minimum over the repeats):

    python benchmarks/bench_calibration.py
    python benchmarks/bench_calibration.py --repeats 7 --netcal-max-rows 100000
"""

import argparse

import torch
from _timing import interleaved_min
from netcal.metrics import ECE as NetcalECE
from torchmetrics.functional.classification import multiclass_calibration_error

from mbls_nlp.calibration import calibration_report, expected_calibration_error

SHAPES = ((100_000, 10), (1_000_000, 100), (100_000, 1_000))


def bench_shape(n: int, c: int, args) -> str:
    """One table row for `n` x `c` float32 logits (labels uniform at random)."""
    logits = torch.randn(n, c) * 3
    labels = torch.randint(0, c, (n,))
    probs = torch.softmax(logits, dim=1)
    netcal_rows = min(n, args.netcal_max_rows)
    probs_np = probs[:netcal_rows].double().numpy()  # netcal is numpy; float64 avoids its float32 clipping quirks
    labels_np = labels[:netcal_rows].numpy()
    netcal = NetcalECE(bins=args.n_bins)
    fns = {
        "softmax": lambda: torch.softmax(logits, dim=1),
        "report": lambda: calibration_report(logits, labels, n_bins=args.n_bins),
        "ece": lambda: expected_calibration_error(probs, labels, n_bins=args.n_bins, from_logits=False),
        "torchmetrics": lambda: multiclass_calibration_error(probs, labels, num_classes=c, n_bins=args.n_bins),
    }
    times = interleaved_min(fns, args.repeats)
    # netcal separately and twice only: it is orders of magnitude slower
    netcal_time = interleaved_min({"netcal": lambda: netcal.measure(probs_np, labels_np)}, 2)["netcal"]
    netcal_full = netcal_time * n / netcal_rows
    netcal_note = "" if netcal_rows == n else f" (timed on {netcal_rows:,} rows, scaled x{n / netcal_rows:g})"
    return (
        f"| {n:,} x {c} | {times['softmax']:.4f} | {times['report']:.4f} | {times['report'] / times['softmax']:.2f} "
        f"| {times['ece']:.4f} | {times['torchmetrics']:.4f} | {times['ece'] / times['torchmetrics']:.2f} "
        f"| {netcal_full:.3f}{netcal_note} | {times['ece'] / netcal_full:.4f} |"
    )


def bench_bootstrap(args, n: int = 10_000, c: int = 20, n_bootstrap: int = 1000) -> str:
    """One row: the report with and without `n_bootstrap` resamples on `n` x `c` logits."""
    logits = torch.randn(n, c) * 3
    labels = torch.randint(0, c, (n,))
    fns = {
        "report": lambda: calibration_report(logits, labels, n_bins=args.n_bins),
        "bootstrap": lambda: calibration_report(logits, labels, n_bins=args.n_bins, n_bootstrap=n_bootstrap),
    }
    times = interleaved_min(fns, max(2, args.repeats // 2))
    return (
        f"| {n:,} x {c} | {n_bootstrap} | {times['report']:.4f} | {times['bootstrap']:.4f} "
        f"| {times['bootstrap'] / times['report']:.1f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per contender (minimum is reported)")
    parser.add_argument("--n-bins", type=int, default=15, help="number of bins")
    parser.add_argument(
        "--netcal-max-rows",
        type=int,
        default=100_000,
        help="netcal runs on at most this many rows (it is slow); its time is scaled linearly to all rows",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n_bins={args.n_bins}, min of {args.repeats}")
    header = (
        "| N x C | softmax (s) | ours report (s) | report / softmax | ours ECE (s) | torchmetrics ECE (s) "
        "| ours / torchmetrics | netcal ECE (s) | ours / netcal |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for n, c in SHAPES:
        print(bench_shape(n, c, args), flush=True)
    print()
    header = "| N x C | resamples | report (s) | report + bootstrap (s) | bootstrap / report |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    print(bench_bootstrap(args), flush=True)


if __name__ == "__main__":
    main()
