"""The benchmarks' shared clock. The CPU is shared with other jobs, so contenders are timed round-robin (every repeat
runs every one, and load from other processes hits all alike) and the minimum or median over repeats is reported."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_times(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    *,
    inner: int = 1,
    warmup: bool = False,
    alternate: bool = False,
    sync: Callable[[], None] | None = None,
    on_time: Callable[[str, int, float], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each callable, one entry per repeat.

    Args:
        fns: name -> callable without arguments.
        repeats: timed rounds; each round calls every callable.
        inner: calls per measurement (the mean is recorded), so that short calls exceed the timer's resolution.
        warmup: one untimed call of each callable first (first-call allocations, data loader set-up).
        alternate: reverse the order every other round, so that neither contender always runs first.
        sync: called before starting and before stopping the clock (e.g. `torch.cuda.synchronize`).
        on_time: called as `on_time(name, repeat, seconds)` after each measurement (progress lines, derived times).
    """
    if warmup:
        for fn in fns.values():
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[::-1] if alternate and repeat % 2 else names:
            if sync is not None:
                sync()
            start = time.perf_counter()
            for _ in range(inner):
                fns[name]()
            if sync is not None:
                sync()
            times[name].append((time.perf_counter() - start) / inner)
            if on_time is not None:
                on_time(name, repeat, times[name][-1])
    return times


def interleaved_min(fns: dict[str, Callable[[], object]], repeats: int, **kwargs) -> dict[str, float]:
    """The minimum over repeats of [`interleaved_times`]: the run least disturbed by other processes."""
    return {name: min(values) for name, values in interleaved_times(fns, repeats, **kwargs).items()}


def min_and_median(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)
