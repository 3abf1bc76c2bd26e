"""Where the time of `calibration_report(..., n_bootstrap=B)` goes: each stage of the bootstrap timed on its own.

Issue 15 asks for B=1000 resamples on 10,000x20 logits at "a few times" the report itself; bench_calibration.py
measures the whole (22-26x on the idle machine). This script splits it into the stages of
`mbls_nlp.calibration._bootstrap` (the per-sample preparation, the random draws, the counts per slot, the products
that give every metric's replicates, the equal-mass groups of AECE and the debiased error) and prints each stage's
best time over `--repeats` runs and its ratio to the report without intervals, measured in the same run.

    python benchmarks/profile_bootstrap.py --rows 10000 --classes 20 --n_bootstrap 1000

Each stage is timed on all B resamples at once, while the report runs them in chunks; the stages overlap (the
replicates include the equal-mass groups and the sparse product), so they do not add up to the total. Run it on an
idle machine: the numbers move with the load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mbls_nlp import calibration as C


def best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--n_bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n, c, b = args.rows, args.classes, args.n_bootstrap
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(n, c)) * 3).float()
    labels = torch.from_numpy(rng.integers(0, c, n))

    sample = C._sample(logits, labels, 15, True, -100)
    draws = np.random.default_rng(1).integers(0, n, size=(b, n))
    slots = sample["slot_of_unit"][draws]
    offsets = (np.arange(b) * n)[:, None]
    weights = np.bincount((slots + offsets).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
    threads = torch.get_num_threads()
    weights_t = torch.from_numpy(weights)

    def counts():
        return np.bincount((slots + offsets).ravel(), minlength=b * n).reshape(b, n).astype(np.float64)

    def transposed():
        return weights_t.T.contiguous()

    def single(fn):
        return lambda: C._in_single_threaded_torch(threads, fn)

    stages = [
        ("report, no intervals (the reference)", lambda: C.calibration_report(logits, labels)),
        (f"report with n_bootstrap={b} (total)", lambda: C.calibration_report(logits, labels, n_bootstrap=b)),
        ("per-sample preparation (_sample)", lambda: C._sample(logits, labels, 15, True, -100)),
        (f"draw {b}x{n} indices (numpy integers)", lambda: np.random.default_rng(1).integers(0, n, size=(b, n))),
        ("map units to slots (gather)", lambda: sample["slot_of_unit"][draws]),
        ("counts per slot (bincount + float64)", counts),
        ("dense products (weights @ per-row terms)", single(lambda: weights_t @ sample["dense"])),
        ("sparse products (per-bin sums)", single(lambda: torch.sparse.mm(sample["sparse"], transposed()))),
        ("equal-mass groups (aece, dsce, dce)", lambda: C._mass_group_sums(sample, weights, 15)),
        ("every replicate (_replicates)", single(lambda: C._replicates(sample, weights, C.METRIC_NAMES, 15))),
    ]
    times = [(name, best_ms(fn, args.repeats)) for name, fn in stages]
    reference = times[0][1]
    print(f"{n}x{c} logits, B={b}, {torch.get_num_threads()} torch threads, best of {args.repeats}")
    print(f"| {'stage':<46} | {'ms':>8} | {'x report':>8} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 10}|")
    for name, ms in times:
        print(f"| {name:<46} | {ms:8.1f} | {ms / reference:7.1f}x |")


if __name__ == "__main__":
    main()
