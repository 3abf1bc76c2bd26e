"""benchmarks/study_20ng.py: finished runs are skipped; the report is recomputed from the stored logits."""

import json

import numpy as np
import pytest
import torch

from mbls_nlp.calibration import calibration_report


def _write_run(folder, loss, seed, logits, labels, temperature):
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{loss}-default-seed{seed}"
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.savez_compressed(folder / f"{name}.npz", logits=shifted.astype(np.float16), labels=labels.astype(np.int16))
    record = {
        "regime": "cnn",
        "loss_type": loss,
        "setting": "default",
        "seed": seed,
        "wall_time_s": 60.0,
        "recipe_arguments": [f"--loss_type={loss}", f"--seed={seed}", "--num_train_epochs=10"],
        "metrics": {"temperature": temperature},
        "validation_history": [{"epoch": e, "eval_ece": 0.01 * e, "eval_accuracy": 0.5} for e in (1, 2, 3)],
        "train_loss_history": [],
    }
    (folder / f"{name}.json").write_text(json.dumps(record))


def _logits(seed, n=400, c=5, scale=4.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * scale
    logits[np.arange(n), labels] += 2.0
    return logits, labels


def test_report_recomputes_metrics_and_pairs_against_ce(tmp_path, load_script):
    study = load_script("benchmarks/study_20ng.py")
    logits, labels = _logits(0)
    _write_run(tmp_path / "cnn", "ce", 1, logits, labels, temperature=2.0)
    _write_run(tmp_path / "cnn", "mbls", 1, logits, labels, temperature=2.0)  # the same model: every difference 0
    other, _ = _logits(1)
    _write_run(tmp_path / "cnn", "ls", 1, other, labels, temperature=1.0)
    out = study.write_report(tmp_path, n_bootstrap=50)
    text = out.read_text()
    # the table's ECE of ce is the library's ECE of the stored (float16, shifted) logits, in percent
    stored = np.load(tmp_path / "cnn" / "ce-default-seed1.npz")
    ece = calibration_report(torch.tensor(stored["logits"].astype(np.float32)), torch.tensor(stored["labels"]))["ece"]
    ce_row = next(line for line in text.splitlines() if line.startswith("| ce | default | 1 |"))
    assert ce_row.split(" | ")[4] == f"{100 * ece:.2f}"
    # mbls equals ce: zero difference with a zero-width interval, in every comparison that scales both or neither
    mbls_rows = [line for line in text.splitlines() if line.startswith("| mbls | default | loss - CE | 1 |")]
    assert mbls_rows and "0.00 [0.00, 0.00]" in mbls_rows[0]
    assert "(better 0/1, worse 0/1)" in text
    assert (tmp_path / "curves_cnn.png").stat().st_size > 0
    assert "--num_train_epochs=10" in text and "--seed=1" not in text


def test_finished_runs_are_skipped(tmp_path, load_script, capsys):
    study = load_script("benchmarks/study_20ng.py")
    logits, labels = _logits(0)
    _write_run(tmp_path / "cnn", "ce", 1, logits, labels, temperature=2.0)
    study.main(["--losses", "ce", "--seeds", "1", "--results_dir", str(tmp_path), "--encoder", "enc", "--dry_run"])
    assert "[skip] cnn/ce-default-seed1" in capsys.readouterr().out
    with pytest.raises(ValueError, match="`--losses`"):
        study.main(["--losses", "hinge", "--results_dir", str(tmp_path), "--encoder", "enc"])
