"""How much of a tuned loss's accuracy is the search picking the best of several trainings? (issue 17)

The study's `tuned` setting trains one candidate per grid point, all with the same seed, and keeps the candidate the
selection rule chooses on validation; cross-entropy has nothing to search and gets one training per seed. When the
candidates of one seed end at different accuracies, and validation accuracy predicts test accuracy, the search also
selects a lucky training, and a tuned loss's paired accuracy difference to CE includes that selection. This script
measures it from the stored results (nothing is trained): for every `<loss>-tuned-seed<k>.json` of a regime it reads
the candidates' result files and prints, per search, the chosen candidate's validation and test accuracy above the
candidates' mean, the spread of test accuracy among the candidates, the correlation between the candidates'
validation and test accuracy, and the chosen candidate's test ECE after temperature scaling against the candidates'
mean and best (the best is a test-set oracle, for reference only).

`--setting tuned_reseeded` reads CE's search over data orders instead (benchmarks/study_20ng.py `--data_seeds`): the
same measure for trainings that differ by their luck only.

`--pairwise RUN RUN ...` (result files of one test set, e.g. CE's trainings of one seed under several data orders)
sets every pair of them against each other with the study's per-seed interval (a 95% paired bootstrap over the test
messages): accuracy, ECE, and ECE after each run's own temperature. Between trainings of one configuration every
difference is training luck, so the share of pairs whose interval excludes zero says how much of a "better"/"worse"
verdict of that interval a loss's comparison with one CE training can owe to luck.

Run from the repository root (seconds):

    python benchmarks/search_spread_20ng.py --regime cnn
    python benchmarks/search_spread_20ng.py --regime cnn --setting tuned_reseeded
    cd benchmarks/study_20ng/cnn && python ../../search_spread_20ng.py --pairwise ce-default-seed1.json \
        candidates/ce-data_seed{1000,2000,3000,4000}-seed1.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "study_20ng"


def search_spread(regime_dir: Path, setting: str = "tuned") -> list[dict]:
    """One row per search of `setting` (`<loss>-<setting>-seed<k>.json`: `tuned`, or a variant such as
    `tuned_reseeded`; the other settings excluded) of `regime_dir` that has two candidates or more. Accuracies and
    ECEs are in percent."""
    regime_dir = Path(regime_dir)
    if not regime_dir.is_dir():
        raise ValueError(f"`regime_dir` must be a folder of study results, got {str(regime_dir)!r} (not a folder).")
    if not isinstance(setting, str) or not (setting == "tuned" or setting.startswith("tuned_")):
        raise ValueError(f"`setting` must be 'tuned' or a search variant 'tuned_NAME', got {setting!r}.")
    rows = []
    for result_file in sorted(regime_dir.glob(f"*-{setting}-seed*.json")):
        record = json.loads(result_file.read_text())
        candidates = record.get("search_candidates") or []
        if len(candidates) < 2:
            continue
        val, test, ts_ece, chosen = [], [], [], None
        for candidate in candidates:
            candidate_file = regime_dir / f"{candidate['run']}.json"
            if not candidate_file.is_file():
                raise ValueError(
                    f"{result_file.name} lists candidate {candidate['run']!r}, whose result file {candidate_file} "
                    "is missing: run benchmarks/study_20ng.py for that search again (it trains only what is missing)."
                )
            metrics = json.loads(candidate_file.read_text())["metrics"]
            val.append(100 * candidate["eval_accuracy"])
            test.append(100 * metrics["test_accuracy"])
            ts_ece.append(100 * metrics["test_ts_ece"])
            if candidate.get("chosen"):
                if chosen is not None:
                    raise ValueError(f"{result_file.name}: more than one candidate is marked `chosen`.")
                chosen = len(val) - 1
        if chosen is None:
            raise ValueError(f"{result_file.name}: no candidate is marked `chosen`.")
        val, test, ts_ece = np.array(val), np.array(test), np.array(ts_ece)
        same = np.ptp(val) == 0 or np.ptp(test) == 0
        rows.append(
            {
                "search": result_file.stem,
                "candidates": len(val),
                "val_gain": float(val[chosen] - val.mean()),
                "test_gain": float(test[chosen] - test.mean()),
                "test_range": float(np.ptp(test)),
                "corr": float("nan") if same else float(np.corrcoef(val, test)[0, 1]),
                "ts_ece_chosen": float(ts_ece[chosen]),
                "ts_ece_mean": float(ts_ece.mean()),
                "ts_ece_best": float(ts_ece.min()),
            }
        )
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean and median over searches of the chosen candidate's test accuracy above its candidates' mean, how many
    searches chose above the mean, the mean correlation (searches where it is defined) and the mean test ECE after
    TS of the chosen candidate, of the candidates' mean and of the best candidate."""
    if not rows:
        raise ValueError("`rows` is empty: the regime has no tuned search with two candidates or more.")
    gains = [row["test_gain"] for row in rows]
    corrs = [row["corr"] for row in rows if not np.isnan(row["corr"])]
    return {
        "searches": len(rows),
        "test_gain_mean": statistics.fmean(gains),
        "test_gain_median": statistics.median(gains),
        "above_mean": sum(gain > 0 for gain in gains),
        "corr_mean": statistics.fmean(corrs) if corrs else float("nan"),
        "ts_ece_chosen": statistics.fmean(row["ts_ece_chosen"] for row in rows),
        "ts_ece_mean": statistics.fmean(row["ts_ece_mean"] for row in rows),
        "ts_ece_best": statistics.fmean(row["ts_ece_best"] for row in rows),
    }


#: (key of the row, metric, whether each run is scaled by its own temperature first)
PAIRWISE = [("accuracy", "accuracy", False), ("ece", "ece", False), ("ts_ece", "ece", True)]


def pairwise_differences(paths: list[Path], n_bootstrap: int = 1000) -> list[dict]:
    """Every pair (a, b) of the result files `paths` (each a JSON beside its .npz of test logits and labels, as the
    study writes them; the labels must agree): `metric(a) - metric(b)` in percent with its 95% paired bootstrap
    interval (resamples seeded 0), for accuracy, ECE and ECE after each run's own temperature (`metrics.temperature`
    of its JSON), as `<key>`, `<key>_low`, `<key>_high`."""
    from mbls_nlp.calibration import paired_bootstrap

    paths = [Path(path) for path in paths]
    if len(paths) < 2 or len(set(paths)) != len(paths):
        raise ValueError(f"`paths` must name two result files or more, each once, got {[str(p) for p in paths]}.")
    runs = []
    for path in paths:
        if not path.is_file() or not path.with_suffix(".npz").is_file():
            raise ValueError(f"{path} is not a study result file with its .npz beside it.")
        stored = np.load(path.with_suffix(".npz"))
        temperature = float(json.loads(path.read_text())["metrics"]["temperature"])
        runs.append((stored["logits"].astype(np.float64), stored["labels"].astype(np.int64), temperature))
    if any(not np.array_equal(labels, runs[0][1]) for _, labels, _ in runs):
        raise ValueError("The result files are not runs of one test set: their labels differ.")
    rows = []
    for i, j in itertools.combinations(range(len(runs)), 2):
        (za, labels, ta), (zb, _, tb) = runs[i], runs[j]
        row = {"a": str(paths[i]), "b": str(paths[j])}
        for scaled in (False, True):  # one bootstrap per pair of scores, for all of its metrics
            wanted = [(key, metric) for key, metric, on_scaled in PAIRWISE if on_scaled == scaled]
            a, b = (za / ta, zb / tb) if scaled else (za, zb)
            result = paired_bootstrap(a, b, labels, metrics=[m for _, m in wanted], n_bootstrap=n_bootstrap, seed=0)
            row.update(
                {key + end: 100 * result[metric + end] for key, metric in wanted for end in ("", "_low", "_high")}
            )
        rows.append(row)
    return rows


def excludes_zero(row: dict, key: str) -> bool:
    return row[key + "_low"] > 0 or row[key + "_high"] < 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regime", default="cnn", help="a folder under --results_dir (default: cnn)")
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--setting", default="tuned", help="the searches read: tuned (default), or a variant, e.g. tuned_reseeded"
    )
    parser.add_argument(
        "--pairwise", nargs="+", type=Path, metavar="RUN", help="result files to set against each other, every pair"
    )
    parser.add_argument("--n_bootstrap", type=int, default=1000, help="--pairwise: bootstrap resamples per interval")
    args = parser.parse_args(argv)
    if args.pairwise:
        rows = pairwise_differences(args.pairwise, args.n_bootstrap)
        print("| a | b | Δ accuracy | Δ ECE | Δ ECE, each after its own TS |")
        print("|---|---|---|---|---|")
        for row in rows:
            cells = [f"{row[k]:+.2f} [{row[k + '_low']:.2f}, {row[k + '_high']:.2f}]" for k, _, _ in PAIRWISE]
            print(f"| {Path(row['a']).stem} | {Path(row['b']).stem} | " + " | ".join(cells) + " |")
        counts = ", ".join(
            f"{name} {sum(excludes_zero(row, key) for row in rows)}"
            for (key, _, _), name in zip(PAIRWISE, ("accuracy", "ECE", "ECE after TS"))
        )
        print(f"\n{len(rows)} pairs; intervals that exclude zero: {counts}")
        return
    rows = search_spread(args.results_dir / args.regime, args.setting)
    print(
        "| search | candidates | chosen val acc − mean | chosen test acc − mean | test acc range | corr(val, test) "
        "| ECE after TS: chosen / mean / best |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['search']} | {row['candidates']} | {row['val_gain']:+.2f} | {row['test_gain']:+.2f} | "
            f"{row['test_range']:.2f} | {row['corr']:.2f} | {row['ts_ece_chosen']:.2f} / {row['ts_ece_mean']:.2f} / "
            f"{row['ts_ece_best']:.2f} |"
        )
    total = summary(rows)
    print(
        f"\n{total['searches']} searches: chosen test accuracy − candidates' mean {total['test_gain_mean']:+.2f} "
        f"points on average (median {total['test_gain_median']:+.2f}; above the mean in {total['above_mean']} of "
        f"{total['searches']}); mean corr(val, test) {total['corr_mean']:.2f}; test ECE after TS, mean over searches: "
        f"chosen {total['ts_ece_chosen']:.2f}, candidates' mean {total['ts_ece_mean']:.2f}, best (oracle) "
        f"{total['ts_ece_best']:.2f}"
    )


if __name__ == "__main__":
    main()
