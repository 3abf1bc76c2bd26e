"""End-to-end recipe runs on a few hundred rows of the real shared data, as `accelerate launch` subprocesses."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
DATA = ROOT.parent / "shared" / "data"
NEWSGROUPS, CIFAR = DATA / "20newsgroups", DATA / "cifar10"
CPU_2PROC = RECIPES / "accelerate_configs" / "cpu_2proc.yaml"
METRICS = ("accuracy", "ece", "aece", "cece", "mce", "nll", "brier")

needs_newsgroups = pytest.mark.skipif(not NEWSGROUPS.is_dir(), reason=f"shared data not found at {NEWSGROUPS}")
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason=f"shared data not found at {CIFAR}")

TEXT_DATA = [
    f"--train_file={NEWSGROUPS / 'train.jsonl.gz'}",
    f"--test_file={NEWSGROUPS / 'test.jsonl.gz'}",
    "--newsgroups_cleanup=headers",
    "--max_train_samples=200",
    "--max_eval_samples=80",
    "--max_test_samples=80",
    "--max_seq_length=128",
]
IMAGE_DATA = [
    f"--train_file={CIFAR / 'train-*.parquet'}",
    f"--test_file={CIFAR / 'test.parquet'}",
    "--max_train_samples=160",
    "--max_eval_samples=64",
    "--max_test_samples=64",
]
# The global batch is 16 with one process and with two (2 x 8): the runs must agree. The last, partial batch is
# dropped: accelerate evens out a short last batch across processes by repeating samples from the start of the
# epoch, which one process does not see.
TRAIN = ["--num_train_epochs=2", "--learning_rate=0.002", "--seed=0", "--disable_tqdm=true", "--save_strategy=no"]
TRAIN += ["--dataloader_drop_last=true"]


def launch(script: str, args: list[str], output_dir: Path, processes: int) -> dict:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes == 1:
        command += ["--num_processes=1", "--num_machines=1", "--mixed_precision=no", "--dynamo_backend=no"]
    else:
        command += [f"--config_file={CPU_2PROC}"]
        args = [*args, "--use_cpu=true"]
    batch = 16 // processes
    command += [str(RECIPES / script), *args, *TRAIN, f"--per_device_train_batch_size={batch}"]
    command += [f"--per_device_eval_batch_size={batch}", f"--output_dir={output_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads((output_dir / "all_results.json").read_text())


def check_outputs(results: dict, output_dir: Path) -> None:
    for prefix in ("test_", "test_ts_"):
        for name in METRICS:
            value = results[prefix + name]
            assert math.isfinite(value), prefix + name
            if name != "nll":
                assert 0.0 <= value <= (2.0 if name == "brier" else 1.0), (prefix + name, value)
    assert 0.01 <= results["temperature"] <= 100.0
    # one key for the fitted temperature: the metrics' validation_temperature / test_temperature are not repeated
    assert "test_temperature" not in results and "validation_temperature" not in results
    # temperature scaling never changes the arg-max
    assert results["test_ts_accuracy"] == results["test_accuracy"]
    for name in ("reliability_test.png", "reliability_test_ts.png"):
        assert (output_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["calibration_temperature"] == pytest.approx(results["temperature"])


def assert_same_results(one: dict, two: dict) -> None:
    for key in [f"{p}{m}" for p in ("test_", "test_ts_") for m in METRICS]:
        assert two[key] == pytest.approx(one[key], abs=2e-4), key
    # The NLL is flat in T for these barely trained models: the fitted T moves more than the metrics it gives.
    assert two["temperature"] == pytest.approx(one["temperature"], rel=5e-3)


@pytest.mark.slow
@needs_newsgroups
def test_text_cnn_one_and_two_processes(tmp_path):
    one = launch("text_classification.py", TEXT_DATA, tmp_path / "one", processes=1)
    check_outputs(one, tmp_path / "one")
    assert (tmp_path / "one" / "tokenizer.json").is_file()
    two = launch("text_classification.py", TEXT_DATA, tmp_path / "two", processes=2)
    check_outputs(two, tmp_path / "two")
    assert_same_results(one, two)


@pytest.fixture
def tiny_bert_folder(tmp_path):
    # A tiny BERT with a word-level tokenizer trained on the real texts, saved like any local checkpoint.
    from transformers import BertConfig, BertForSequenceClassification

    from mbls_nlp.models import train_word_tokenizer
    from mbls_nlp.newsgroups import load_newsgroups

    texts = load_newsgroups(NEWSGROUPS)["train"].shuffle(seed=0).select(range(300))["text"]
    tokenizer = train_word_tokenizer(texts, vocab_size=2000, max_length=128)
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=2,
        )
    )
    folder = tmp_path / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
@needs_newsgroups
def test_text_any_encoder_from_a_local_folder(tmp_path, tiny_bert_folder):
    args = [*TEXT_DATA, f"--model_name_or_path={tiny_bert_folder}", "--loss_type=ls"]
    one = launch("text_classification.py", args, tmp_path / "one", processes=1)
    check_outputs(one, tmp_path / "one")
    config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert config["model_type"] == "bert" and len(config["id2label"]) == 20  # head resized to the 20 groups
    # Padding per batch differs between one and two processes; the attention mask makes it irrelevant.
    two = launch("text_classification.py", args, tmp_path / "two", processes=2)
    check_outputs(two, tmp_path / "two")
    assert_same_results(one, two)


@pytest.fixture
def tiny_image_folder(tmp_path, request):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification
    from transformers.models.vit import ViTImageProcessorPil

    torch.manual_seed(0)
    if request.param == "vit":
        model = ViTForImageClassification(
            ViTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=10,
            )  # fmt: skip
        )
    else:
        model = ResNetForImageClassification(
            ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10)
        )
    folder = tmp_path / request.param
    model.save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize("tiny_image_folder", ["vit"], indirect=True)
def test_image_classification_one_and_two_processes(tmp_path, tiny_image_folder):
    # A ViT (no batch norm: its statistics would depend on the per-process batch) without augmentation (the random
    # crops of one and two processes are drawn by different RNG streams).
    args = [*IMAGE_DATA, f"--model_name_or_path={tiny_image_folder}", "--augmentation=false"]
    one = launch("image_classification.py", args, tmp_path / "one", processes=1)
    check_outputs(one, tmp_path / "one")
    two = launch("image_classification.py", args, tmp_path / "two", processes=2)
    assert_same_results(one, two)


@pytest.mark.slow
@needs_cifar
@pytest.mark.parametrize("tiny_image_folder", ["resnet"], indirect=True)
def test_image_classification_with_augmentation(tmp_path, tiny_image_folder):
    # Batch norm statistics and random crops differ between one and two processes: valid outputs, not equal ones.
    args = [*IMAGE_DATA, f"--model_name_or_path={tiny_image_folder}", "--loss_type=focal"]
    for processes in (1, 2):
        results = launch("image_classification.py", args, tmp_path / str(processes), processes=processes)
        check_outputs(results, tmp_path / str(processes))


@pytest.mark.slow
@needs_newsgroups
def test_compare_losses_writes_the_table(tmp_path):
    command = [sys.executable, str(RECIPES / "compare_losses.py"), f"--output_dir={tmp_path}", "--loss_types=ce,mbls"]
    command += ["--", *TEXT_DATA, *TRAIN, "--per_device_train_batch_size=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| loss | Acc (%) | ECE (%)") and len(table) == 4
    assert table[2].startswith("| ce |") and table[3].startswith("| mbls |")
    for loss_type, line in zip(("ce", "mbls"), table[2:]):
        results = json.loads((tmp_path / loss_type / "all_results.json").read_text())
        assert f"| {100 * results['test_ece']:.2f} |" in line
    rows = (tmp_path / "comparison.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("ce,")


def test_recipes_help_documents_every_flag():
    for script in ("text_classification.py", "image_classification.py", "compare_losses.py"):
        result = subprocess.run(
            [sys.executable, str(RECIPES / script), "--help"], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "--output_dir" in result.stdout
    text_help = subprocess.run(
        [sys.executable, str(RECIPES / "text_classification.py"), "--help"], capture_output=True, text=True
    ).stdout
    for flag in (
        "--newsgroups_cleanup",
        "--embeddings_from",
        "--loss_type",
        "--margin",
        "--validation_split_percentage",
    ):
        assert flag in text_help


def test_compare_losses_rejects_bad_arguments(tmp_path, load_script):
    compare_losses = load_script("recipes/compare_losses.py")
    with pytest.raises(ValueError, match="loss_types"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--loss_types=ce,hinge"])
    with pytest.raises(ValueError, match="--loss_type"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--", "--loss_type=ce"])
    with pytest.raises(ValueError, match="`seeds` must be a comma-separated list of integers"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--seeds=1,two"])
    with pytest.raises(ValueError, match="--seed is set per run"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--seeds=1,2", "--", "--seed=3"])
    with pytest.raises(ValueError, match="`paired_metrics` must be a comma-separated list from"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--paired_metrics=ece,hinge"])
    with pytest.raises(ValueError, match="`n_bootstrap` must be an integer >= 1"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--n_bootstrap=0"])
    with pytest.raises(ValueError, match=r"`confidence` must be in \(0, 1\)"):
        compare_losses.parse_args([f"--output_dir={tmp_path}", "--confidence=95"])
    args, recipe_args = compare_losses.parse_args([f"--output_dir={tmp_path}", "--seeds=1, 2", "--", "--x=1"])
    assert args.seeds == "1,2" and recipe_args == ["--x=1", "--save_predictions"]  # the comparisons need the logits


def _fake_run(folder, logits, labels, temperature, save_predictions=True):
    """A finished recipe run as compare_losses reads it: all_results.json and predictions_test.npz."""
    import numpy as np

    from mbls_nlp.calibration import calibration_report

    folder.mkdir(parents=True)
    results = {f"test_{k}": v for k, v in calibration_report(logits, labels).items()}
    results |= {f"test_ts_{k}": v for k, v in calibration_report(logits / temperature, labels).items()}
    results |= {"temperature": temperature, "wall_time_s": 60.0}
    (folder / "all_results.json").write_text(json.dumps(results))
    if save_predictions:
        np.savez_compressed(folder / "predictions_test.npz", logits=logits.numpy(), labels=labels.numpy())
    return results


def _cells(md_path):
    lines = md_path.read_text().splitlines()
    header = lines[0].strip("| ").split(" | ")
    return {line.split(" | ")[0].lstrip("| "): dict(zip(header, line.strip("| ").split(" | "))) for line in lines[2:]}


def test_compare_losses_paired_differences_to_ce_and_ce_ts(tmp_path, load_script):
    from mbls_nlp.calibration import expected_calibration_error, paired_bootstrap

    compare_losses = load_script("recipes/compare_losses.py")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=generator)
    logits = (3 * torch.randn(300, 4, generator=generator)).float()
    logits[torch.arange(300), labels] += 1.5  # a model that learned something, over-confident: T > 1 helps
    _fake_run(tmp_path / "ce", logits, labels, 2.0)
    _fake_run(tmp_path / "mbls", logits.clone(), labels, 2.0)  # the same model: every difference to CE is 0
    _fake_run(tmp_path / "ls", logits, labels, 1.0, save_predictions=False)
    argv = [f"--output_dir={tmp_path}", "--loss_types=ce,mbls,ls", "--skip_existing", "--n_bootstrap=200"]
    compare_losses.main(argv)  # every run folder exists: nothing is trained
    cells = _cells(tmp_path / "comparison.md")
    assert list(cells) == ["ce", "mbls", "ls"]
    for loss in ("ce", "mbls"):
        assert cells[loss]["ECE - CE (%)"] == "0.00 [0.00, 0.00]"  # a model compared with itself
        assert cells[loss]["TS ECE - (CE + TS) (%)"] == "0.00 [0.00, 0.00]"
        assert cells[loss]["Acc - (CE + TS) (%)"] == "0.00 [0.00, 0.00]"  # TS does not change the argmax
    # CE + TS is the baseline: ECE(ce) - ECE(ce / T), the point from the metric itself, the interval paired
    point = expected_calibration_error(logits, labels) - expected_calibration_error(logits / 2.0, labels)
    expected = paired_bootstrap(logits, logits / 2.0, labels, metrics=["ece"], n_bootstrap=200, seed=0)
    assert expected["ece"] == pytest.approx(point, abs=1e-12) and expected["ece_low"] > 0  # TS helps, clearly
    cell = f"{100 * point:.2f} [{100 * expected['ece_low']:.2f}, {100 * expected['ece_high']:.2f}]"
    assert cells["ce"]["ECE - (CE + TS) (%)"] == cell == cells["mbls"]["ECE - (CE + TS) (%)"]
    assert cells["ls"]["ECE - CE (%)"] == "n/a"  # a run without predictions_test.npz
    assert cells["ce"]["NLL - CE"] == "0.0000 [0.0000, 0.0000]"
    csv_rows = (tmp_path / "comparison.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and "ECE - (CE + TS) (%)" in csv_rows[0] and cell in csv_rows[1]


def test_compare_losses_over_seeds_mean_std_and_per_seed_pairs(tmp_path, load_script):
    import numpy as np

    from mbls_nlp.calibration import paired_bootstrap

    compare_losses = load_script("recipes/compare_losses.py")
    results, differences = {"ce": [], "mbls": []}, []
    for seed in (1, 2):
        generator = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 3, (200,), generator=generator)
        logits = 2 * torch.randn(200, 3, generator=generator)
        logits[torch.arange(200), labels] += 1.0
        results["ce"].append(_fake_run(tmp_path / "ce" / f"seed_{seed}", logits, labels, 1.5))
        results["mbls"].append(_fake_run(tmp_path / "mbls" / f"seed_{seed}", 0.5 * logits, labels, 0.8))
        # against CE of the same seed, resampled with the seed's own bootstrap seed
        differences.append(paired_bootstrap(0.5 * logits, logits, labels, metrics=["ece"], n_bootstrap=100, seed=seed))
    argv = [f"--output_dir={tmp_path}", "--loss_types=ce,mbls", "--seeds=1,2", "--skip_existing"]
    compare_losses.main([*argv, "--n_bootstrap=100", "--paired_metrics=ece"])
    cells = _cells(tmp_path / "comparison.md")
    assert cells["mbls"]["seeds"] == "2"
    eces = [100 * r["test_ece"] for r in results["mbls"]]
    assert cells["mbls"]["ECE (%)"] == f"{np.mean(eces):.2f} ± {np.std(eces, ddof=1):.2f}"
    diffs = [100 * d["ece"] for d in differences]
    below = sum(d["ece_high"] < 0 for d in differences)
    above = sum(d["ece_low"] > 0 for d in differences)
    assert cells["mbls"]["ECE - CE (%)"] == (
        f"{np.mean(diffs):.2f} ± {np.std(diffs, ddof=1):.2f} (<0: {below}/2, >0: {above}/2)"
    )
    assert cells["ce"]["ECE - CE (%)"] == "0.00 ± 0.00 (<0: 0/2, >0: 0/2)"
    per_seed = (tmp_path / "comparison_per_seed.csv").read_text().splitlines()
    assert per_seed[0] == "loss,seed,comparison,ece,ece_low,ece_high" and len(per_seed) == 1 + 2 * 2 * 3
    seed_2 = [row for row in per_seed if row.startswith("mbls,2,loss - CE,")]
    assert seed_2 == [f"mbls,2,loss - CE,{differences[1]['ece']:.6f},{differences[1]['ece_low']:.6f},"
                      f"{differences[1]['ece_high']:.6f}"]  # fmt: skip


def test_paired_comparisons_refuse_runs_on_other_examples():
    import numpy as np

    from mbls_nlp.protocol import RunPredictions, paired_comparisons

    logits = np.zeros((4, 2), dtype=np.float32)
    run = RunPredictions(logits, np.array([0, 1, 0, 1]), 1.0)
    with pytest.raises(ValueError, match="same test examples"):
        paired_comparisons(run, RunPredictions(logits, np.array([1, 1, 0, 1]), 1.0), n_bootstrap=10)


# --- bad data fails before training, through the recipes (issue 14), in-process on tiny files ---------------------

TINY_TRAIN = ["--num_train_epochs=1", "--per_device_train_batch_size=8", "--save_strategy=no", "--disable_tqdm=true"]
TINY_TRAIN += ["--save_reliability_diagrams=false", "--seed=0"]


def _jsonl(path: Path, labels: list, text_column: str = "text") -> Path:
    path.write_text(
        "".join(json.dumps({text_column: f"word{i % 5} word{i % 3}", "label": y}) + "\n" for i, y in enumerate(labels))
    )
    return path


def test_text_recipe_refuses_a_stray_label_and_a_non_text_column_before_training(tmp_path, load_script):
    recipe = load_script("recipes/text_classification.py")
    train = _jsonl(tmp_path / "train.jsonl", [0, 1, 2] * 10)
    test = _jsonl(tmp_path / "test.jsonl", [0, 1, 25, 2])  # 25: a class train does not have
    base = [f"--train_file={train}", f"--test_file={test}", "--max_seq_length=8", "--embedding_dim=4", *TINY_TRAIN]
    with pytest.raises(ValueError, match=r"the test split \(file .*test\.jsonl'\): \[25\] at row 2 \(0-based\)"):
        recipe.main([*base, f"--output_dir={tmp_path / 'out'}"])
    _jsonl(test, [0, 1, 2, 2])
    with pytest.raises(ValueError, match=r"`text_column` 'label' must hold strings"):
        recipe.main([*base, "--text_column=label", f"--output_dir={tmp_path / 'out'}"])
    assert not (tmp_path / "out").exists()  # nothing was trained or written


def _image_parquet(path: Path, n: int, bad_row: int | None = None) -> Path:
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        data = buffer.getvalue()
        images.append({"bytes": data[: len(data) // 2] if i == bad_row else data, "path": None})  # truncated
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=[str(c) for c in range(10)])}
    )
    datasets.Dataset.from_dict({"img": images, "label": [i % 10 for i in range(n)]}, features=features).to_parquet(
        path
    )
    return path


@pytest.mark.parametrize("tiny_image_folder", ["resnet"], indirect=True)
def test_image_recipe_refuses_a_corrupted_image_before_training(tmp_path, tiny_image_folder, load_script):
    pytest.importorskip("PIL")
    recipe = load_script("recipes/image_classification.py")
    train = _image_parquet(tmp_path / "train.parquet", 40)
    test = _image_parquet(tmp_path / "test.parquet", 10, bad_row=7)
    base = [f"--train_file={train}", f"--test_file={test}", f"--model_name_or_path={tiny_image_folder}", *TINY_TRAIN]
    base += ["--validation_split_percentage=25"]  # 10 of 40 rows: one per class
    with pytest.raises(
        ValueError,
        match=r"an image of the test split cannot be decoded \(OSError: Truncated File Read\); it is "
        r"row 7 \(0-based\) of the test split \(file .*test\.parquet'\)",
    ):
        recipe.main([*base, f"--output_dir={tmp_path / 'bad'}"])
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match=r"`image_column` 'label' holds ClassLabel"):
        recipe.main([*base, "--image_column=label", f"--output_dir={tmp_path / 'bad'}"])
    # The same data without the bad image passes the check and trains.
    _image_parquet(test, 10)
    results = recipe.main([*base, f"--output_dir={tmp_path / 'good'}"])
    assert 0.0 <= results["test_accuracy"] <= 1.0 and (tmp_path / "good" / "all_results.json").is_file()
    # The model card names the files and how validation, on which the temperature was fitted, was carved.
    card = (tmp_path / "good" / "README.md").read_text()
    assert (
        "- Dataset: `train.parquet`, `test.parquet`; validation carved from train: 25% drawn at random, stratified "
        "by label (seed 0), 10 examples." in card
    )


@needs_cifar
def test_image_recipe_trains_its_cifar_resnet_without_a_model_path(tmp_path, load_script):
    # issue 13: no --model_name_or_path: a CIFAR ResNet-20 built from a config (num_labels from the data) with the
    # kind defaults (SGD, lr 0.1, cosine), a 32x32 processor with CIFAR-10's mean and std, saved with its code.
    recipe = load_script("recipes/image_classification.py")
    output_dir = tmp_path / "out"
    argv = [f"--train_file={CIFAR / 'train-*.parquet'}", f"--test_file={CIFAR / 'test.parquet'}"]
    argv += ["--max_train_samples=64", "--max_eval_samples=16", "--max_test_samples=32", "--num_train_epochs=2"]
    argv += ["--per_device_train_batch_size=16", "--save_strategy=no", "--disable_tqdm=true", "--seed=0"]
    results = recipe.main([*argv, f"--output_dir={output_dir}"])
    assert 0.0 <= results["test_accuracy"] <= 1.0 and 0.01 <= results["temperature"] <= 100.0
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "cifar_resnet" and config["depths"] == [3, 3, 3] and len(config["id2label"]) == 10
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("CifarResNetForImageClassification")
    assert config["calibration_temperature_folded"] is True
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32}
    assert processor["image_mean"] == list(recipe.CIFAR10_MEAN) and processor["image_std"] == list(recipe.CIFAR10_STD)
    # 64 training rows (kept after validation is carved): 4 steps of 16 per epoch, 8 in all. The log of each epoch
    # shows the lr of its last step under the cosine from 0.1: at 0-based step k of 8, 0.1 * (1 + cos(pi k / 8)) / 2,
    # i.e. 0.05 * (1 + cos(3 pi / 8)) = 0.069134 and 0.05 * (1 + cos(7 pi / 8)) = 0.003806.
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    logged = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    assert logged == pytest.approx([0.05 * (1 + math.cos(3 * math.pi / 8)), 0.05 * (1 + math.cos(7 * math.pi / 8))])


def test_data_seed_changes_the_training_order_only(tmp_path, load_script, monkeypatch):
    """`--data_seed` (what the study's `--data_seeds` varies) reorders the training batches and nothing else: the
    model's initialization and the validation carve follow `--seed`; without it the order follows `--seed` too."""
    recipe = load_script("recipes/text_classification.py")
    seen = {}
    real = recipe.train_calibrate_and_test

    def spy(trainer, validation, test, *args, **kwargs):  # the trainer before training, and the carved validation
        first = next(trainer.model.parameters()).detach().clone()
        seen[Path(trainer.args.output_dir).name] = (first, validation["input_ids"], validation["labels"])
        return real(trainer, validation, test, *args, **kwargs)

    monkeypatch.setattr(recipe, "train_calibrate_and_test", spy)
    rows = [{"text": f"w{i} w{i % 3} w{(i * 7) % 11}", "label": i % 3} for i in range(90)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    test = _jsonl(tmp_path / "test.jsonl", [0, 1, 2] * 4)
    base = [f"--train_file={train}", f"--test_file={test}", "--max_seq_length=8", "--embedding_dim=4", *TINY_TRAIN]
    base += ["--validation_split_percentage=20", "--save_predictions=true"]
    for name, extra in {"plain": [], "same": ["--data_seed=0"], "other": ["--data_seed=1000"]}.items():
        recipe.main([*base, *extra, f"--output_dir={tmp_path / name}"])
    logits = {name: np.load(tmp_path / name / "predictions_test.npz")["logits"] for name in seen}
    for name in ("same", "other"):
        assert torch.equal(seen[name][0], seen["plain"][0])  # the same initialization
        assert seen[name][1:] == seen["plain"][1:]  # the same validation examples, in the same order
    assert np.array_equal(logits["same"], logits["plain"])  # no --data_seed: the order of --seed
    assert not np.allclose(logits["other"], logits["plain"], atol=1e-4)  # another order: another training
