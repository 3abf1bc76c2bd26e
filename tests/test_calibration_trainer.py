import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from trainer_utils import (
    CLASSES,
    flat_parameters,
    sequence_dataset,
    tiny_sequence_classifier,
    tiny_token_classifier,
    token_dataset,
)
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from mbls_nlp import CalibrationConfig, CalibrationTrainer, LossAdapter, build_loss, calibration_report

COMMON = {"report_to": "none", "optim": "sgd", "learning_rate": 0.5, "seed": 0, "disable_tqdm": True}


def config(tmp_path, **kwargs) -> CalibrationConfig:
    return CalibrationConfig(output_dir=str(tmp_path), **{**COMMON, **kwargs})


def mbls_reference(logits, labels, margin=10.0, alpha=0.1, ignore_index=-100):
    """Straightforward float64 MbLS (mean CE over valid rows + alpha * mean relu(max - z - margin)), written here
    independently of mbls_nlp.losses."""
    keep = labels != ignore_index
    z, y = logits[keep].double(), labels[keep]
    ce = F.cross_entropy(z, y)
    penalty = F.relu(z.max(dim=1, keepdim=True).values - z - margin).mean()
    return ce + alpha * penalty, ce, penalty


# ---- gradient accumulation ----


@pytest.mark.parametrize("ignored_every", [0, 3])
def test_gradient_accumulation_is_exact(tmp_path, ignored_every):
    # 45 rows: with batch 8 the sixth step has 5 rows; with 4 x 2 its second micro-batch has 1 row, and with
    # ignored labels the micro-batches of a step hold different numbers of valid labels.
    data = sequence_dataset(45, ignored_every=ignored_every)
    runs = {}
    for batch, accumulation in [(8, 1), (4, 2)]:
        model = tiny_sequence_classifier()
        args = config(
            tmp_path / f"{batch}x{accumulation}",
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=1,
            margin=0.0,  # every non-max class is penalised, so the margin gradient counts
            alpha=0.5,
            logging_steps=2,
        )
        trainer = CalibrationTrainer(model=model, args=args, train_dataset=data)
        trainer.train()
        assert trainer.state.global_step == 6
        runs[(batch, accumulation)] = (flat_parameters(model), trainer.state.log_history)
    reference, accumulated = runs[(8, 1)][0], runs[(4, 2)][0]
    assert not torch.allclose(reference, flat_parameters(tiny_sequence_classifier()))  # training moved them
    torch.testing.assert_close(accumulated, reference, atol=1e-5, rtol=0)
    # the logged loss and its parts agree too
    for key in ("loss", "loss_ce", "loss_margin"):
        a = [entry[key] for entry in runs[(8, 1)][1] if key in entry]
        b = [entry[key] for entry in runs[(4, 2)][1] if key in entry]
        assert len(a) == 3 and a == pytest.approx(b, abs=1e-6)


def test_loss_parts_are_logged_and_add_up(tmp_path):
    args = config(
        tmp_path, per_device_train_batch_size=8, gradient_accumulation_steps=2, max_steps=4, logging_steps=2,
        margin=0.0, alpha=0.5,
    )  # fmt: skip
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(64))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert entry["loss"] == pytest.approx(entry["loss_ce"] + 0.5 * entry["loss_margin"], rel=1e-5)
        assert entry["loss_margin"] > 0


def test_first_step_loss_equals_reference(tmp_path):
    # One logged step: Trainer's `loss` is the loss before the update, so it must equal the float64 reference.
    data = sequence_dataset(16, ignored_every=4)
    model = tiny_sequence_classifier()
    batch = data[:16]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(batch["input_ids"])).logits
    expected, ce, margin = mbls_reference(logits, torch.tensor(batch["labels"]), margin=0.0, alpha=0.5)
    args = config(tmp_path, per_device_train_batch_size=16, max_steps=1, logging_steps=1, margin=0.0, alpha=0.5)
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert entry["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert entry["loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert entry["loss_margin"] == pytest.approx(margin.item(), rel=1e-5)


def test_compute_loss_func_adapter_with_plain_trainer(tmp_path):
    data = sequence_dataset(45, ignored_every=3)
    params = {}
    for batch, accumulation in [(8, 1), (4, 2)]:
        model = tiny_sequence_classifier()
        args = TrainingArguments(
            output_dir=str(tmp_path / f"{batch}"),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            num_train_epochs=1,
            **COMMON,
        )
        loss = LossAdapter(build_loss("mbls", margin=0.0, alpha=0.5))
        Trainer(model=model, args=args, train_dataset=data, compute_loss_func=loss).train()
        params[batch] = flat_parameters(model)
    torch.testing.assert_close(params[4], params[8], atol=1e-5, rtol=0)
    # and it trains the same model as CalibrationTrainer does
    model = tiny_sequence_classifier()
    args = config(tmp_path / "ours", per_device_train_batch_size=8, num_train_epochs=1, margin=0.0, alpha=0.5)
    CalibrationTrainer(model=model, args=args, train_dataset=data).train()
    torch.testing.assert_close(flat_parameters(model), params[8], atol=1e-5, rtol=0)


def test_adapter_rejects_other_ignore_index():
    with pytest.raises(ValueError, match="ignore_index"):
        LossAdapter(build_loss("mbls", ignore_index=255))


# ---- evaluation ----


def test_evaluation_reports_calibration_and_user_metrics(tmp_path):
    data = sequence_dataset(40, seed=1, ignored_every=5)

    def user_metrics(eval_pred):
        return {"n_rows": float(len(eval_pred.label_ids))}

    args = config(tmp_path, per_device_eval_batch_size=16, calibration_n_bins=10)
    model = tiny_sequence_classifier()
    trainer = CalibrationTrainer(model=model, args=args, eval_dataset=data, compute_metrics=user_metrics)
    metrics = trainer.evaluate()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"])).logits
    labels = torch.tensor(data["labels"])
    expected = calibration_report(logits, labels, n_bins=10)
    for key, value in expected.items():
        assert metrics[f"eval_{key}"] == pytest.approx(value, abs=1e-6)
    assert metrics["eval_n_rows"] == 40.0
    # the loss parts of the evaluation are per-label means over the valid rows
    loss, ce, margin = mbls_reference(logits, labels)
    assert metrics["eval_loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    assert metrics["eval_loss_margin"] == pytest.approx(margin.item(), abs=1e-7)
    assert metrics["eval_loss"] == pytest.approx(loss.item(), rel=1e-5)
    # predict uses its own prefix
    output = trainer.predict(data, metric_key_prefix="test")
    assert output.metrics["test_ece"] == pytest.approx(expected["ece"], abs=1e-6)


def test_calibration_metrics_can_be_switched_off(tmp_path):
    args = config(tmp_path, calibration_metrics=False)
    metrics = CalibrationTrainer(model=tiny_sequence_classifier(), args=args).evaluate(sequence_dataset(8))
    assert "eval_loss" in metrics and "eval_ece" not in metrics


def test_token_classification_excludes_ignored_positions(tmp_path):
    data = token_dataset(24)
    model = tiny_token_classifier()
    args = config(tmp_path, per_device_eval_batch_size=7, per_device_train_batch_size=8, max_steps=2)
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"]), attention_mask=torch.tensor(data["attention_mask"]))
    labels = torch.tensor(data["labels"])
    flat_logits, flat_labels = logits.logits.reshape(-1, CLASSES), labels.reshape(-1)
    metrics = trainer.evaluate()
    expected = calibration_report(flat_logits, flat_labels)
    for key in ("accuracy", "ece", "nll", "brier"):
        assert metrics[f"eval_{key}"] == pytest.approx(expected[key], abs=1e-6)
    _, ce, _ = mbls_reference(flat_logits, flat_labels)
    assert metrics["eval_loss_ce"] == pytest.approx(ce.item(), rel=1e-5)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_segmentation_upsamples_logits_and_uses_ignore_index(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    seg_config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        patch_sizes=[3],
        strides=[2],
        num_attention_heads=[1],
        mlp_ratios=[1],
        decoder_hidden_size=8,
        num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    model = SegformerForSemanticSegmentation(seg_config)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(6, 3, 16, 16, generator=generator)
    labels = torch.randint(0, 4, (6, 16, 16), generator=generator)
    labels[:, :3] = 255  # the VOC "void" label
    from datasets import Dataset

    data = Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()}).with_format("torch")
    args = config(tmp_path, loss_ignore_index=255, per_device_eval_batch_size=4, per_device_train_batch_size=3)
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    with torch.no_grad():
        low_res = model.eval()(pixel_values=pixels).logits  # eval: the decode head has BatchNorm
    assert low_res.shape[-1] < 16
    upsampled = F.interpolate(low_res, size=(16, 16), mode="bilinear", align_corners=False)
    expected_loss, _, _ = mbls_reference(
        upsampled.permute(0, 2, 3, 1).reshape(-1, 4), labels.reshape(-1), ignore_index=255
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(expected_loss.item(), rel=1e-4)
    assert metrics["eval_accuracy"] == pytest.approx(
        calibration_report(upsampled, labels, ignore_index=255)["accuracy"], abs=1e-9
    )
    trainer.args.max_steps = 2
    trainer.train()


def test_image_classification_trains(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(
        ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=3,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=3,
        )  # fmt: skip
    )
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict(
        {"pixel_values": torch.randn(12, 3, 8, 8, generator=generator).tolist(), "labels": [0, 1, 2] * 4}
    ).with_format("torch")
    args = config(tmp_path, per_device_train_batch_size=4, max_steps=3, logging_steps=1)
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    assert all("loss_margin" in e for e in trainer.state.log_history if "loss" in e)
    assert 0.0 <= trainer.evaluate()["eval_ece"] <= 1.0


# ---- temperature scaling ----


def test_fit_temperature_reports_scaled_metrics_and_is_saved(tmp_path):
    data = sequence_dataset(64, seed=2)
    model = tiny_sequence_classifier()
    with torch.no_grad():  # make the model over-confident, so the fitted temperature is clearly above 1
        model.classifier.weight.mul_(40.0)
    args = config(tmp_path, per_device_eval_batch_size=16)
    trainer = CalibrationTrainer(model=model, args=args, eval_dataset=data)
    before = trainer.evaluate()
    assert "eval_ts_ece" not in before
    temperature = trainer.fit_temperature()
    assert temperature > 1.0 and model.config.calibration_temperature == temperature
    after = trainer.evaluate()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"])).logits
    expected = calibration_report(logits / temperature, torch.tensor(data["labels"]))
    assert after["eval_ts_nll"] == pytest.approx(expected["nll"], abs=1e-6)
    assert after["eval_ts_nll"] < after["eval_nll"]  # NLL was minimised on these very rows
    assert after["eval_temperature"] == temperature
    assert after["eval_ece"] == pytest.approx(before["eval_ece"], abs=1e-12)  # raw metrics untouched
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved"))
    assert reloaded.config.calibration_temperature == pytest.approx(temperature)
    assert CalibrationTrainer(model=reloaded, args=args).temperature == pytest.approx(temperature)


# ---- checkpoints ----


def test_resume_restores_alpha_schedule(tmp_path):
    data = sequence_dataset(24)
    kwargs = dict(
        per_device_train_batch_size=8,
        num_train_epochs=3,
        save_strategy="epoch",
        margin=0.0,
        alpha=0.5,
        alpha_schedule="add",
        alpha_mu=0.25,
    )
    model = tiny_sequence_classifier()
    trainer = CalibrationTrainer(model=model, args=config(tmp_path / "full", **kwargs), train_dataset=data)
    trainer.train()
    full_params = flat_parameters(model)
    assert trainer.loss_fn.alpha == pytest.approx(0.5 + 3 * 0.25)

    resumed_model = tiny_sequence_classifier(seed=1)  # different init: everything must come from the checkpoint
    resumed = CalibrationTrainer(model=resumed_model, args=config(tmp_path / "resumed", **kwargs), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))  # after epoch 2 of 3
    assert resumed.loss_fn.alpha == pytest.approx(0.5 + 3 * 0.25)
    torch.testing.assert_close(flat_parameters(resumed_model), full_params, atol=1e-6, rtol=0)


def test_reliability_diagrams_written_when_asked(tmp_path):
    pytest.importorskip("matplotlib")
    args = config(tmp_path, save_reliability_diagrams=True)
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=args, eval_dataset=sequence_dataset(16))
    trainer.evaluate()
    trainer.fit_temperature()
    trainer.predict(sequence_dataset(16, seed=3), metric_key_prefix="test")
    for name in ("reliability_eval", "reliability_test", "reliability_test_ts"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        table = json.loads((tmp_path / f"{name}.json").read_text())
        assert sum(table["count"]) == 16
        # the recipes' diagrams carry the per-bin 95% intervals of the accuracy (issue 15)
        filled = [i for i, n in enumerate(table["count"]) if n]
        assert all(table["accuracy_low"][i] <= table["accuracy"][i] <= table["accuracy_high"][i] for i in filled)


# ---- bad input ----


def test_rejects_plain_training_arguments_and_loss_func(tmp_path):
    with pytest.raises(TypeError, match="CalibrationConfig"):
        CalibrationTrainer(model=tiny_sequence_classifier(), args=TrainingArguments(output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="compute_loss_func"):
        CalibrationTrainer(model=tiny_sequence_classifier(), args=config(tmp_path), compute_loss_func=lambda *a: 0)


def test_missing_labels_is_a_clear_error(tmp_path):
    data = sequence_dataset(8).remove_columns("labels")
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=config(tmp_path))
    batch = {"input_ids": torch.tensor(data["input_ids"])}
    with pytest.raises(ValueError, match="labels"):
        trainer.compute_loss(trainer.model, batch)


# ---- two processes ----

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


def _run(args, tmp_path, name):
    out = tmp_path / name
    # ACCELERATE_USE_CPU: without it TrainingArguments sees no GPU and falls back to one non-distributed process
    # per rank (each training on its own), even under `--multi_gpu`.
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(args + [str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return torch.load(out / "params.pt"), json.loads((out / "metrics.json").read_text())


def test_two_processes_equal_one(tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]  # fmt: skip
    params_1, metrics_1 = _run(launch + ["--num_processes", "1"], tmp_path, "one")
    two = launch + ["--multi_gpu", "--num_processes", "2", "--main_process_port", "29533"]
    params_2, metrics_2 = _run(two, tmp_path, "two")
    assert metrics_2["world_size"] == 2 and metrics_1["world_size"] == 1
    torch.testing.assert_close(params_2, params_1, atol=1e-5, rtol=0)
    for key in (
        "eval_loss",
        "eval_loss_ce",
        "eval_loss_margin",
        "eval_accuracy",
        "eval_ece",
        "eval_nll",
        "eval_brier",
    ):
        assert metrics_2[key] == pytest.approx(metrics_1[key], abs=1e-5), key
    for key in ("loss", "loss_ce", "loss_margin"):
        assert metrics_2["train_logs"][key] == pytest.approx(metrics_1["train_logs"][key], abs=1e-5), key
