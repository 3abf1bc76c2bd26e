"""Which validation criterion picks the best-calibrated candidate on real 20 Newsgroups predictions? (issue 15)

The search (`mbls_nlp.hparam_search.select_candidate`) keeps the candidates whose validation accuracy is not
significantly below the best one's, then picks the lowest validation `dce` (debiased calibration error). This script
checks that choice on real predictions: the study's stored test logits (`benchmarks/study_20ng/<regime>/*.npz`, 7,532
test messages each). Each repeat splits the test messages at random into a "validation" part of the 20NG
validation size (1,132) and a held-out rest (6,400); every criterion chooses on the first part, and the chosen
candidate is judged on the rest (its held-out ECE and NLL, and whether it is the candidate with the lowest held-out
ECE). Two candidate sets:

- `temperatures`: one stored model (default: the first MbLS run) at logit temperatures spread around its own
  fitted temperature, a family of the same accuracy whose calibration differs by a few ECE points, like the better
  candidates of a margin sweep (5.3–7.4% ECE for margins 6–10 in the recorded sweep);
- `runs`: every stored run of the regime as it was trained (different losses and seeds; accuracy differs too, so
  the rule's accuracy test applies first, as in the search).

Run from the repository root (a few minutes on 2 cores; nothing is trained):

    python benchmarks/selection_rule_20ng.py --repeats 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mbls_nlp.calibration import calibration_report
from mbls_nlp.hparam_search import select_candidate

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ("dce", "nll", "ece", "smece")


def load(results_dir: Path, regime: str) -> dict[str, dict]:
    runs = {}
    for result_file in sorted((results_dir / regime).glob("*-default-seed*.json")):
        record = json.loads(result_file.read_text())
        stored = np.load(result_file.with_suffix(".npz"))
        runs[result_file.stem] = {
            "logits": torch.from_numpy(stored["logits"].astype(np.float32)),
            "labels": torch.from_numpy(stored["labels"].astype(np.int64)),
            "temperature": record["metrics"]["temperature"],
        }
    if not runs:
        raise ValueError(f"No stored runs in {results_dir / regime}: run benchmarks/study_20ng.py first.")
    return runs


def evaluate(candidates: dict[str, torch.Tensor], labels: torch.Tensor, repeats: int, size: int, seed: int):
    """Per criterion: how often it chose the held-out best (lowest ECE), and the chosen one's held-out ECE/NLL."""
    rng = np.random.default_rng(seed)
    names = list(candidates)
    n = labels.shape[0]
    chosen_stats = {c: {"best": 0, "ece": [], "nll": []} for c in (*CRITERIA, "oracle")}
    for _ in range(repeats):
        order = rng.permutation(n)
        val, rest = torch.from_numpy(order[:size]), torch.from_numpy(order[size:])
        reports = {k: calibration_report(z[val], labels[val]) for k, z in candidates.items()}
        held = {k: calibration_report(z[rest], labels[rest]) for k, z in candidates.items()}
        best = min(names, key=lambda k: held[k]["ece"])
        for criterion in CRITERIA:
            # smECE is not a search option: the same rule with its values in the `ece` slot
            metric = "ece" if criterion == "smece" else criterion
            rows = [
                {
                    "eval_accuracy": reports[k]["accuracy"],
                    f"eval_{metric}": reports[k][criterion],
                    "eval_nll": reports[k]["nll"],
                    "eval_samples": size,
                }
                for k in names
            ]
            pick = names[select_candidate(rows, selection_metric=metric)]
            stats = chosen_stats[criterion]
            stats["best"] += pick == best
            stats["ece"].append(held[pick]["ece"])
            stats["nll"].append(held[pick]["nll"])
        chosen_stats["oracle"]["best"] += 1
        chosen_stats["oracle"]["ece"].append(held[best]["ece"])
        chosen_stats["oracle"]["nll"].append(held[best]["nll"])
    return chosen_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "study_20ng"))
    parser.add_argument("--regime", default="cnn")
    parser.add_argument("--model", default=None, help="Stored run of the temperature family (default: first mbls).")
    parser.add_argument("--scales", default="0.6,0.8,0.9,1.0,1.1,1.25,1.5", help="Multiples of the fitted T.")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--size", type=int, default=1132, help="Validation size (the 20NG split carved from train).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runs = load(Path(args.results_dir), args.regime)
    model = args.model or next(k for k in runs if k.startswith("mbls-"))
    base = runs[model]
    labels = base["labels"]
    scales = [float(s) for s in args.scales.split(",")]
    families = {
        f"temperatures ({model}, T = fitted x {args.scales})": {
            f"x{s:g}": base["logits"] / (base["temperature"] * s) for s in scales
        },
        f"runs ({', '.join(runs)})": {k: r["logits"] for k, r in runs.items() if torch.equal(r["labels"], labels)},
    }
    print(f"{args.repeats} random splits of the {labels.shape[0]} test messages: {args.size} to choose on, the rest "
          "to judge; held-out ECE / NLL of the chosen candidate, mean over splits; 'best' = share of splits where it "
          "is the candidate with the lowest held-out ECE")  # fmt: skip
    for title, candidates in families.items():
        stats = evaluate(candidates, labels, args.repeats, args.size, args.seed)
        print(f"\n{title}\n")
        print("| criterion | chose the held-out best | held-out ECE (%) | held-out NLL |")
        print("|---|---|---|---|")
        for criterion, s in stats.items():
            print(
                f"| {criterion} | {100 * s['best'] / args.repeats:.0f}% | {100 * np.mean(s['ece']):.2f} "
                f"| {np.mean(s['nll']):.4f} |"
            )


if __name__ == "__main__":
    main()
