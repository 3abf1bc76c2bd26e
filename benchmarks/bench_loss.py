"""Forward+backward time of every loss in `build_loss`, relative to `torch.nn.functional.cross_entropy` (issue 5).

Every method runs on the same logits in the same process, interleaved repeat by repeat (the CPU is shared, so
the minimum over repeats is reported). Extra rows:

- `mbls (autograd)`: the straightforward MbLS formula through autograd, what the fused kernel replaces;
- `input checks`: the validation every loss runs (finite logits, label range, shapes), on its own.

Usage:

    python benchmarks/bench_loss.py                       # the four sizes of issue 5, 5 repeats
    python benchmarks/bench_loss.py --quick               # small sizes, 3 repeats (smoke test)
    python benchmarks/bench_loss.py --sizes 65536x1000 --repeats 9 --losses ce mbls
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _timing import interleaved_min

from mbls_nlp import losses as L
from mbls_nlp.losses import LOSS_NAMES, build_loss

DEFAULT_SIZES = ["256x20", "4096x1000", "65536x1000", "8x21x128x128"]
QUICK_SIZES = ["256x20", "4096x1000"]


def naive_mbls(logits, labels, margin=10.0, alpha=0.1, ignore_index=-100):
    """The straightforward autograd MbLS (reference-style), each op a separate pass with its own saved tensor."""
    c = logits.shape[1]
    z = logits.movedim(1, -1).reshape(-1, c) if logits.dim() > 2 else logits
    y = labels.reshape(-1)
    keep = y != ignore_index
    z, y = z[keep], y[keep]
    mx = z.max(dim=1).values
    return F.cross_entropy(z, y) + alpha * F.relu((mx[:, None] - z) - margin).mean()


def parse_size(text: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in text.lower().split("x"))
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"size must look like NxC or NxCxHxW, got {text!r}")
    return dims


def time_methods(methods: dict, logits: torch.Tensor, labels: torch.Tensor, repeats: int) -> dict[str, float]:
    """Minimum over `repeats` of the mean time per call; small inputs are called in a loop of about 10^6 elements
    per measurement so that the timer's resolution and one-off stalls do not dominate. One untimed warm-up call."""
    leaf = logits.clone().requires_grad_()

    def call(fn):
        leaf.grad = None
        out = fn(leaf, labels)
        if out is not None:
            out.backward()

    calls = {name: (lambda fn=fn: call(fn)) for name, fn in methods.items()}
    return interleaved_min(calls, repeats, inner=max(1, 1_000_000 // logits.numel()), warmup=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=None, help="logit shapes, e.g. 4096x1000")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per method (minimum is reported)")
    parser.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES, help="losses to time")
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES} and 3 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or [parse_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    repeats = 3 if args.quick and args.repeats == parser.get_default("repeats") else args.repeats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, min of {repeats} interleaved repeats")
    for shape in sizes:
        g = torch.Generator().manual_seed(args.seed)
        logits = torch.randn(*shape, generator=g) * 4
        labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)
        methods = {"F.cross_entropy": lambda z, y: F.cross_entropy(z, y)}
        for name in args.losses:
            methods[name] = build_loss(name)
        if "mbls" in args.losses:
            methods["mbls (autograd)"] = naive_mbls
        # The validation alone (no backward): one read of the logits and one of the labels, one host sync.
        methods["input checks"] = lambda z, y: (L._flatten_inputs(z.detach(), y, -100), None)[1]
        times = time_methods(methods, logits, labels, repeats)
        base = times["F.cross_entropy"]
        print(f"\nlogits {'x'.join(map(str, shape))} (float32)")
        print(f"| {'method':<18} | {'fwd+bwd ms':>10} | {'/ F.cross_entropy':>17} |")
        print(f"|{'-' * 20}|{'-' * 12}:|{'-' * 19}:|")
        for name, t in times.items():
            print(f"| {name:<18} | {t * 1e3:>10.2f} | {t / base:>17.2f} |")


if __name__ == "__main__":
    main()
