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


# ---- the recipes' flags (parsing only: nothing is loaded or trained) ----


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
