import json
import logging
import math
import os
import shutil
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
from transformers import (
    AutoModelForSequenceClassification,
    HfArgumentParser,
    Trainer,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

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


def test_eval_loss_is_the_exact_mean_over_valid_labels(tmp_path):
    # 13 rows in batches of 4, 4, 4, 1 holding 2, 3, 3, 1 valid labels (every 3rd ignored): a mean of batch means
    # weighted by batch size is not the mean over the 9 valid labels.
    data = sequence_dataset(13, seed=1, ignored_every=3)
    model = tiny_sequence_classifier()
    with torch.no_grad():  # spread the logits so that the margin term is not negligible
        model.classifier.weight.mul_(20.0)
    args = config(tmp_path, per_device_eval_batch_size=4, margin=0.0, alpha=0.5)
    metrics = CalibrationTrainer(model=model, args=args).evaluate(data)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"])).logits
    loss, ce, margin = mbls_reference(logits, torch.tensor(data["labels"]), margin=0.0, alpha=0.5)
    assert margin > 0.1  # the margin term counts
    assert metrics["eval_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert metrics["eval_loss"] == pytest.approx(
        metrics["eval_loss_ce"] + 0.5 * metrics["eval_loss_margin"], rel=1e-12
    )


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

    # a checkpoint of an earlier mbls-nlp held the loss's state_dict alone (alpha after epoch 2's update)
    state_file = tmp_path / "full" / "checkpoint-6" / "calibration_loss.pt"
    torch.save(torch.load(state_file, weights_only=True)["loss"], state_file)
    older = CalibrationTrainer(
        model=tiny_sequence_classifier(seed=1), args=config(tmp_path / "older", **kwargs), train_dataset=data
    )
    older.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    assert older.loss_fn.alpha == pytest.approx(0.5 + 3 * 0.25)
    torch.testing.assert_close(flat_parameters(older.model), full_params, atol=1e-6, rtol=0)


SCHEDULES = {"add": 0.25, "multiply": 2.0, "step": 2.0}  # alpha_mu of each; "step" multiplies after every 2nd epoch


def _resume_kwargs(schedule, accumulation, save_strategy):
    return dict(
        per_device_train_batch_size=8 // accumulation,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=4,
        num_train_epochs=3,
        save_strategy=save_strategy,
        save_steps=1,
        logging_steps=1,
        optim="adamw_torch",  # an optimizer with state to restore
        learning_rate=0.01,
        margin=0.0,  # every non-max class is penalised, so alpha matters
        alpha=0.5,
        alpha_schedule=schedule,
        alpha_mu=SCHEDULES[schedule],
        alpha_step_size=2,
    )


def _train_and_record(trainer, data, **train_kwargs):
    trainer.train(**train_kwargs)
    return {
        "params": flat_parameters(trainer.model),
        "optimizer": trainer.optimizer.state_dict()["state"],
        "alpha": trainer.loss_fn.alpha,
        "logs": [entry for entry in trainer.state.log_history if "loss" in entry],
        "metrics": trainer.evaluate(data),
    }


def _check_resume_from_every_checkpoint(tmp_path, schedule, accumulation, save_strategy):
    # 20 rows: 3 optimizer steps per epoch (8, 8, 4 rows; with 4 x 2 the last step has one micro-batch), 9 in all.
    data, eval_data = sequence_dataset(20, ignored_every=3), sequence_dataset(13, seed=1)
    kwargs = _resume_kwargs(schedule, accumulation, save_strategy)
    full = CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path / "full", **kwargs), train_dataset=data
    )
    expected = _train_and_record(full, eval_data)
    # the schedule moved alpha after each of the 3 epochs (add, multiply) or after the 2nd (step)
    assert expected["alpha"] == pytest.approx({"add": 0.5 + 3 * 0.25, "multiply": 0.5 * 2**3, "step": 1.0}[schedule])
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert [int(c.name.split("-")[1]) for c in checkpoints] == (
        [3, 6, 9] if save_strategy == "epoch" else list(range(1, 10))
    )
    for checkpoint in checkpoints:
        resumed = CalibrationTrainer(
            model=tiny_sequence_classifier(seed=1),  # another init: everything must come from the checkpoint
            args=config(tmp_path / f"resumed-{checkpoint.name}", **kwargs),
            train_dataset=data,
        )
        got = _train_and_record(resumed, eval_data, resume_from_checkpoint=str(checkpoint))
        where = f"resumed from {checkpoint.name}"
        assert got["alpha"] == pytest.approx(expected["alpha"], rel=1e-12), where
        torch.testing.assert_close(got["params"], expected["params"], atol=1e-6, rtol=0, msg=where)
        assert got["optimizer"].keys() == expected["optimizer"].keys(), where
        for index, state in expected["optimizer"].items():
            for name, value in state.items():
                torch.testing.assert_close(got["optimizer"][index][name], value, atol=1e-6, rtol=0, msg=where)
        # every training log, those after the resume point included, and the final evaluation
        assert len(got["logs"]) == len(expected["logs"]) == 9, where
        for a, b in zip(got["logs"], expected["logs"]):
            for key in ("step", "loss", "loss_ce", "loss_margin", "grad_norm", "learning_rate"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (where, a["step"], key)
        for key, value in expected["metrics"].items():
            if not key.endswith(("runtime", "per_second")):
                assert got["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (where, key)


def test_resume_from_every_step_checkpoint_is_exact(tmp_path):
    # "add" with gradient accumulation: step checkpoints at every position of an epoch, its last step included
    _check_resume_from_every_checkpoint(tmp_path, "add", accumulation=2, save_strategy="steps")


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule, accumulation, save_strategy",
    [("add", 1, "steps"), ("multiply", 1, "steps"), ("step", 1, "steps"), ("step", 2, "steps"),
     ("multiply", 1, "epoch"), ("add", 2, "epoch")],
)  # fmt: skip
def test_resume_from_every_checkpoint_is_exact(tmp_path, schedule, accumulation, save_strategy):
    _check_resume_from_every_checkpoint(tmp_path, schedule, accumulation, save_strategy)


def test_loss_state_is_written_before_trainer_state(tmp_path, monkeypatch):
    # trainer_state.json is the file whose presence makes a checkpoint look complete: the loss state must precede it.
    seen = []
    save_to_json = TrainerState.save_to_json

    def recording_save_to_json(self, json_path):
        seen.append(os.path.isfile(os.path.join(os.path.dirname(json_path), "calibration_loss.pt")))
        save_to_json(self, json_path)

    monkeypatch.setattr(TrainerState, "save_to_json", recording_save_to_json)
    args = config(tmp_path, per_device_train_batch_size=8, max_steps=2, save_strategy="steps", save_steps=1)
    CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=sequence_dataset(16)).train()
    assert seen == [True, True]


@pytest.mark.parametrize("schedule", ["add", ""])
def test_incomplete_checkpoint_is_refused(tmp_path, schedule, caplog):
    kwargs = dict(per_device_train_batch_size=8, num_train_epochs=2, save_strategy="epoch", margin=0.0,
                  alpha_schedule=schedule, alpha_mu=0.25)  # fmt: skip
    data = sequence_dataset(16)
    CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path / "full", **kwargs), train_dataset=data
    ).train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    (checkpoint / "calibration_loss.pt").unlink()  # as if killed between writing the two files in the old order
    resumed = CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path / "resumed", **kwargs), train_dataset=data
    )
    if schedule:  # the scheduled alpha would silently restart from its initial value
        with pytest.raises(ValueError, match=r"resume_from_checkpoint.*calibration_loss\.pt.*alpha_schedule='add'"):
            resumed.train(resume_from_checkpoint=str(checkpoint))
    else:  # nothing to lose: a warning, and training resumes
        with caplog.at_level(logging.WARNING, logger="mbls_nlp.calibration_trainer"):
            resumed.train(resume_from_checkpoint=str(checkpoint))
        assert "calibration_loss.pt" in caplog.text and resumed.state.global_step == 4
    (checkpoint / "trainer_state.json").unlink()  # interrupted before its last file
    with pytest.raises(ValueError, match=r"resume_from_checkpoint.*incomplete.*trainer_state\.json"):
        CalibrationTrainer(
            model=tiny_sequence_classifier(), args=config(tmp_path / "again", **kwargs), train_dataset=data
        ).train(resume_from_checkpoint=str(checkpoint))


def test_output_dir_with_checkpoints_of_another_run_is_refused(tmp_path):
    data = sequence_dataset(32)
    kwargs = dict(per_device_train_batch_size=8, save_strategy="steps", save_steps=1)
    CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path, max_steps=4, **kwargs), train_dataset=data
    ).train()
    assert get_last_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    fresh = CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path, max_steps=2, **kwargs), train_dataset=data
    )
    with pytest.raises(
        ValueError, match=r"`output_dir`.*checkpoint-1, checkpoint-2.*resume_from_checkpoint.*overwrite_output_dir"
    ):
        fresh.train()
    assert fresh.state.global_step == 0  # refused before training
    # resuming the same run is allowed
    resumed = CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path, max_steps=5, **kwargs), train_dataset=data
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 5
    # overwrite_output_dir (as the recipes parse it) deletes the old checkpoints: the latest is this run's
    (args,) = HfArgumentParser(CalibrationConfig).parse_args_into_dataclasses(
        [
            f"--output_dir={tmp_path}",
            "--overwrite_output_dir=true",
            "--max_steps=2",
            "--save_steps=1",
            "--report_to=none",
        ]
    )
    CalibrationTrainer(model=tiny_sequence_classifier(), args=args, train_dataset=data).train()
    assert sorted(path.name for path in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    # a folder without checkpoints (here the saved model only) is no earlier run to mix with
    for path in tmp_path.glob("checkpoint-*"):
        shutil.rmtree(path)
    trainer = CalibrationTrainer(
        model=tiny_sequence_classifier(), args=config(tmp_path, max_steps=1), train_dataset=data
    )
    trainer.save_model()
    trainer.train()


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


@pytest.mark.parametrize("missing", ["rows", "labels"])
def test_empty_or_unlabelled_evaluation_set_is_a_clear_error(tmp_path, missing):
    data = sequence_dataset(8).select([]) if missing == "rows" else sequence_dataset(8).remove_columns("labels")
    message = (
        r"`eval_dataset` of evaluate.* is empty" if missing == "rows" else r"`eval_dataset` of evaluate.* no labels"
    )
    trainer = CalibrationTrainer(model=tiny_sequence_classifier(), args=config(tmp_path))
    with pytest.raises(ValueError, match=message):
        trainer.evaluate(data)
    with pytest.raises(ValueError, match=message.replace("evaluate", "fit_temperature")):
        trainer.fit_temperature(data)
    assert trainer.temperature is None
    if missing == "labels":  # predictions need no labels
        assert trainer.predict(data).predictions.shape == (8, CLASSES)


# ---- two processes ----

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


def _run(args, tmp_path, name, *script_args):
    out = tmp_path / name
    # ACCELERATE_USE_CPU: without it TrainingArguments sees no GPU and falls back to one non-distributed process
    # per rank (each training on its own), even under `--multi_gpu`.
    # The caller's PYTHONPATH is kept so that the launched script imports the same mbls_nlp as the tests.
    path = os.pathsep.join(filter(None, [str(SCRIPT.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        args + [str(SCRIPT), str(out), *script_args], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return torch.load(out / "params.pt"), json.loads((out / "metrics.json").read_text())


LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no"]  # fmt: skip
TWO_PROCESSES = LAUNCH + ["--multi_gpu", "--num_processes", "2", "--main_process_port", "29533"]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    params_1, metrics_1 = _run(LAUNCH + ["--num_processes", "1"], tmp_path, "one")
    params_2, metrics_2 = _run(TWO_PROCESSES, tmp_path, "two")
    assert metrics_2["world_size"] == 2 and metrics_1["world_size"] == 1
    torch.testing.assert_close(params_2, params_1, atol=1e-5, rtol=0)
    # eval35/eval37: sets that are not a multiple of the global eval batch, whose last batches accelerate pads
    for prefix in ("eval", "eval35", "eval37"):
        for name in ("loss", "loss_ce", "loss_margin", "accuracy", "ece", "nll", "brier"):
            key = f"{prefix}_{name}"
            assert metrics_2[key] == pytest.approx(metrics_1[key], abs=1e-5), key
    assert metrics_1["eval35_loss"] == pytest.approx(
        metrics_1["eval35_loss_ce"] + 0.5 * metrics_1["eval35_loss_margin"]
    )
    for key in ("loss", "loss_ce", "loss_margin"):
        assert metrics_2["train_logs"][key] == pytest.approx(metrics_1["train_logs"][key], abs=1e-5), key


# ---- CALS multipliers (issue 16) ----

CALS = {"loss_type": "cals", "cals_margin": 0.05, "cals_lambda_min": 0.01, "cals_rho_step": 1, "cals_rho_gamma": 2.0}


def cals_reference_update(logits, labels, lambd, rho, margin, lambda_min=0.01, lambda_max=1e6):
    """Float64 CALS statistics written from the reference's update_lambd/set_lambd and get_constraints, independently
    of mbls_nlp.losses: the new multipliers and the mean constraint per class over the valid rows."""
    z = logits[labels != -100].double()
    h = (z.max(dim=1, keepdim=True).values - z - margin) / margin
    gradient = torch.clamp(F.relu(lambd + rho * h), min=lambda_min, max=lambda_max)
    return gradient.mean(0).clamp(min=lambda_min, max=lambda_max), h.mean(0)


@pytest.mark.parametrize("source", ["validation", "train"])
def test_cals_multipliers_follow_the_reference_update(tmp_path, source):
    # learning_rate 0: the logits stay those of the initial model, so every epoch's statistics are known in advance.
    # "validation" (the default, the reference's rule): both updates read the evaluation after each epoch end;
    # "train": the epoch's training batches. The validation set is read in 4 batches of 5 (sums over batches), and
    # its first batch has no valid label (its statistics are zero, not the previous forward's).
    train, val = sequence_dataset(24, ignored_every=5), sequence_dataset(20, seed=1, ignored_every=4)
    val = val.map(lambda row, i: {"labels": -100 if i < 5 else row["labels"]}, with_indices=True)
    model = tiny_sequence_classifier()
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)  # spread the logits so that some classes violate the 0.05 margin
        train_logits = model(input_ids=torch.tensor(train["input_ids"])).logits
        val_logits = model(input_ids=torch.tensor(val["input_ids"])).logits
    extra = {} if source == "validation" else {"cals_multipliers_from": "train"}
    args = config(
        tmp_path, learning_rate=0.0, num_train_epochs=2, per_device_train_batch_size=8, eval_strategy="epoch",
        per_device_eval_batch_size=5, logging_strategy="epoch", **CALS, **extra,
    )  # fmt: skip
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    trainer.train()
    logits, y = (val_logits, val["labels"]) if source == "validation" else (train_logits, train["labels"])
    y = torch.tensor(y)
    lambd, rho = torch.full((3,), 0.01, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    lambd_1, constraint = cals_reference_update(logits, y, lambd, rho, 0.05)
    lambd_2, _ = cals_reference_update(logits, y, lambd_1, rho, 0.05)
    # rho: epoch 0 has no previous constraint; after epoch 1 it doubles where the (unchanged) constraint is not
    # below 0.9 * max(previous, 0), i.e. where it is positive.
    rho_2 = torch.where(constraint > 0.9 * constraint.clamp(min=0), 2.0, 1.0).double()
    assert (rho_2 == 2.0).any() and (rho_2 == 1.0).any()  # the example exercises both branches
    other_logits, other_y = (train_logits, train["labels"]) if source == "validation" else (val_logits, val["labels"])
    other_lambd, _ = cals_reference_update(other_logits, torch.tensor(other_y), lambd, rho, 0.05)
    assert not torch.allclose(other_lambd, lambd_1, rtol=1e-3)  # the two sources are told apart
    torch.testing.assert_close(trainer.loss_fn.lambd.cpu(), lambd_2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(trainer.loss_fn.rho.cpu(), rho_2, rtol=0, atol=0)
    logged = [entry for entry in trainer.state.log_history if "cals_lambda_mean" in entry]
    assert [entry["cals_lambda_mean"] for entry in logged] == pytest.approx(
        [lambd_1.mean().item(), lambd_2.mean().item()], rel=1e-5
    )
    assert [entry["cals_rho"] for entry in logged] == pytest.approx([1.0, rho_2.mean().item()])


def test_cals_without_evaluation_takes_the_training_statistics(tmp_path):
    train = sequence_dataset(24)
    model = tiny_sequence_classifier()
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
        logits = model(input_ids=torch.tensor(train["input_ids"])).logits
    args = config(tmp_path, learning_rate=0.0, num_train_epochs=2, per_device_train_batch_size=8, **CALS)
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=train)
    trainer.train()
    # the default multipliers_from="validation" has no evaluation to read: both updates take the training batches
    y = torch.tensor(train["labels"])
    lambd_1, constraint = cals_reference_update(logits, y, 0.01, 1.0, 0.05)
    lambd_2, _ = cals_reference_update(logits, y, lambd_1, 1.0, 0.05)
    expected = torch.where(constraint > 0.9 * constraint.clamp(min=0), 2.0, 1.0).double()
    torch.testing.assert_close(trainer.loss_fn.rho.cpu(), expected, rtol=0, atol=0)
    torch.testing.assert_close(trainer.loss_fn.lambd.cpu(), lambd_2, rtol=1e-5, atol=1e-7)


def test_cals_gradient_accumulation_is_exact(tmp_path):
    data = sequence_dataset(45, ignored_every=3)
    runs = {}
    for batch, accumulation in [(8, 1), (4, 2)]:
        model = tiny_sequence_classifier()
        args = config(
            tmp_path / f"{batch}x{accumulation}", per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, num_train_epochs=2, **CALS,
        )  # fmt: skip
        trainer = CalibrationTrainer(model=model, args=args, train_dataset=data)
        trainer.train()
        runs[batch] = (flat_parameters(model), trainer.loss_fn.lambd.clone(), trainer.loss_fn.rho.clone())
    assert not torch.allclose(runs[8][1], torch.full((3,), 0.01, dtype=torch.float64))  # the multipliers moved
    torch.testing.assert_close(runs[4][0], runs[8][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(runs[4][1], runs[8][1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(runs[4][2], runs[8][2], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("checkpoint", "save"),
    [
        ("checkpoint-4", {"save_strategy": "steps", "save_steps": 4}),
        ("checkpoint-6", {"save_strategy": "epoch"}),
        ("checkpoint-3", {"save_strategy": "steps", "save_steps": 3}),
        ("checkpoint-6", {"save_strategy": "steps", "save_steps": 3}),
    ],
)
@pytest.mark.parametrize("evaluate", [False, True])
def test_resume_restores_cals_multipliers(tmp_path, checkpoint, save, evaluate):
    # 3 epochs of 3 steps. checkpoint-4 is inside epoch 2 (its running statistics are in the checkpoint); with
    # save_strategy="epoch", checkpoint-6 is written after epoch 2's multiplier update; a step checkpoint on an
    # epoch's last step (3, 6) is written before that epoch's update, which the resumed run must apply from the
    # statistics stored in the checkpoint or, with an evaluation after each epoch end (the default reads it), from
    # the same validation pass made again.
    data = sequence_dataset(24)
    kwargs = dict(per_device_train_batch_size=8, num_train_epochs=3, **save, **CALS)
    sets = {}
    if evaluate:
        kwargs.update(eval_strategy="epoch", per_device_eval_batch_size=8)
        sets["eval_dataset"] = sequence_dataset(20, seed=3, ignored_every=3)
    model = tiny_sequence_classifier()
    full = CalibrationTrainer(model=model, args=config(tmp_path / "full", **kwargs), train_dataset=data, **sets)
    full.train()
    resumed_model = tiny_sequence_classifier(seed=1)
    resumed = CalibrationTrainer(
        model=resumed_model, args=config(tmp_path / "resumed", **kwargs), train_dataset=data, **sets
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / checkpoint))
    torch.testing.assert_close(flat_parameters(resumed_model), flat_parameters(model), atol=1e-6, rtol=0)
    torch.testing.assert_close(resumed.loss_fn.lambd, full.loss_fn.lambd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(resumed.loss_fn.rho, full.loss_fn.rho, rtol=0, atol=0)


@pytest.mark.slow
def test_cals_two_processes_equal_one(tmp_path):
    # The multipliers are updated from the epoch statistics of both processes summed: the same as one process.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]  # fmt: skip
    params_1, metrics_1 = _run(launch + ["--num_processes", "1"], tmp_path, "one", "cals")
    two = launch + ["--multi_gpu", "--num_processes", "2", "--main_process_port", "29534"]
    params_2, metrics_2 = _run(two, tmp_path, "two", "cals")
    assert metrics_2["world_size"] == 2 and metrics_1["world_size"] == 1
    assert metrics_1["lambd"] != pytest.approx([1e-6] * 3)  # the multipliers moved
    torch.testing.assert_close(params_2, params_1, atol=1e-5, rtol=0)
    assert metrics_2["lambd"] == pytest.approx(metrics_1["lambd"], rel=1e-5)
    assert metrics_2["rho"] == metrics_1["rho"]


@pytest.mark.slow
def test_search_two_processes_equal_one(tmp_path):
    # search_calibration_hparams under 2 processes: transformers runs optuna on the main process and hands each trial
    # to the other; every process must see the same rows, make the same choice and restore the same kept model.
    params_1, metrics_1 = _run(LAUNCH + ["--num_processes", "1"], tmp_path, "one", "search")
    two = LAUNCH + ["--multi_gpu", "--num_processes", "2", "--main_process_port", "29535"]
    params_2, metrics_2 = _run(two, tmp_path, "two", "search")
    assert metrics_2["world_size"] == 2 and metrics_1["world_size"] == 1
    assert metrics_1["chosen"] == metrics_2["chosen"] == {"ls_epsilon": 0.3}
    assert metrics_1["loss_epsilon"] == metrics_2["loss_epsilon"] == 0.3  # the trainer's loss follows the choice
    for row_1, row_2 in zip(metrics_1["rows"], metrics_2["rows"], strict=True):
        assert row_1.keys() == row_2.keys()
        for key in row_1:
            assert row_2[key] == pytest.approx(row_1[key], abs=1e-6), key
    torch.testing.assert_close(params_2, params_1, atol=1e-5, rtol=0)
    assert metrics_2["global_step"] == metrics_1["global_step"] == 12  # 2 epochs of 6 steps: the kept state's
    assert not metrics_1["stored_left"] and not metrics_2["stored_left"]
    assert metrics_2["train_metrics"]["train_loss"] == pytest.approx(metrics_1["train_metrics"]["train_loss"], 1e-6)
    chosen_row = next(row for row in metrics_2["rows"] if row["chosen"])
    assert metrics_2["eval_nll"] == pytest.approx(chosen_row["eval_nll"], abs=1e-6)  # the restored model's numbers
    views = [json.loads((tmp_path / "two" / f"search-rank{rank}.json").read_text()) for rank in (0, 1)]
    for view in views:
        assert view["chosen"] == {"ls_epsilon": 0.3}
        # GridSampler(seed=0) trains 0.3 first: the restored model is the chosen candidate's, not the last trained
        assert [epsilon for epsilon, _ in view["trained"]] == [0.3, 0.0]
        assert view["params_sum"] == pytest.approx(view["trained"][0][1], abs=1e-9)
        assert view["params_sum"] != pytest.approx(view["trained"][1][1], abs=1e-6)
    assert views[1]["params_sum"] == pytest.approx(views[0]["params_sum"], abs=1e-9)
