"""`CalibrationTrainer`: `transformers.Trainer` with a calibration loss, its parts in the logs and calibration metrics."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, EvalPrediction

from .calibration import calibration_report
from .calibration_config import CalibrationConfig
from .loss_adapter import align_logits_and_labels, logits_from_outputs
from .losses import build_loss
from .temperature import TemperatureScaler

__all__ = ["CalibrationTrainer"]

LOSS_STATE_NAME = "calibration_loss.pt"


class _AlphaScheduleCallback(TrainerCallback):
    """Advance the loss's alpha schedule at each epoch end, as the reference training loop does."""

    def __init__(self, trainer: CalibrationTrainer):
        self.trainer = trainer

    def on_epoch_end(self, args, state, control, **kwargs):
        schedule_alpha = getattr(self.trainer.loss_fn, "schedule_alpha", None)
        if schedule_alpha is not None:
            schedule_alpha(round(state.epoch) - 1)  # the 0-based index of the epoch that just ended


class CalibrationTrainer(Trainer):
    r"""
    A `transformers.Trainer` that trains with a calibration loss from `mbls_nlp.losses` (MbLS by default) and
    reports calibration metrics.

    Differences from `Trainer`:
    - The loss is `build_loss(args.loss_type, **args.loss_kwargs())`, computed on the model's logits (the model is
      called without `labels`). Token-classification logits `(B, L, C)` and low-resolution segmentation logits are
      aligned with their labels first (`mbls_nlp.loss_adapter.align_logits_and_labels`).
    - Gradient accumulation and multiple processes are exact: each micro-batch's summed loss is divided by the number
      of labels different from `args.loss_ignore_index` in the whole accumulation window over all processes.
    - Training logs carry the loss parts (`loss_ce`, `loss_margin` for MbLS, ...) next to `loss`, averaged the same
      way as `loss`; evaluations carry them with the evaluation prefix.
    - Every evaluation/prediction reports `accuracy, ece, aece, cece, mce, nll, brier` (see
      `mbls_nlp.calibration.calibration_report`), merged with a user `compute_metrics`; after
      [`~CalibrationTrainer.fit_temperature`] also the same metrics on temperature-scaled logits as `ts_*`.
    - The loss state (alpha schedule) is saved in checkpoints and restored by `resume_from_checkpoint`; the fitted
      temperature is stored in `model.config.calibration_temperature`, so it is saved with the model.

    Args:
        args ([`CalibrationConfig`]): the training and calibration configuration.
        *other arguments*: as `transformers.Trainer`, except `compute_loss_func` (the loss comes from `args`).

    Examples:

    ```python
    from mbls_nlp import CalibrationConfig, CalibrationTrainer

    args = CalibrationConfig(output_dir="out", loss_type="mbls", margin=10.0, alpha=0.1)
    trainer = CalibrationTrainer(model=model, args=args, train_dataset=train, eval_dataset=val)
    trainer.train()
    trainer.fit_temperature(val)          # temperature on held-out data, never on test
    trainer.predict(test).metrics         # test_ece, test_ts_ece, ...
    ```
    """

    # compute_loss normalises by the window's item count itself (see _get_num_items_in_batch).
    loss_is_scaled_for_ga = True

    def __init__(self, *args, compute_metrics=None, compute_loss_func=None, **kwargs):
        if compute_loss_func is not None:
            raise ValueError(
                "CalibrationTrainer builds its loss from `args.loss_type`; `compute_loss_func` is not accepted "
                "(use transformers.Trainer with mbls_nlp.LossAdapter to bring your own)."
            )
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(training_args, CalibrationConfig):
            raise TypeError(
                f"`args` must be a CalibrationConfig (a TrainingArguments subclass), got {type(training_args).__name__}."
            )
        self._user_compute_metrics = compute_metrics
        wants_metrics = training_args.calibration_metrics or compute_metrics is not None
        super().__init__(*args, compute_metrics=self._compute_metrics if wants_metrics else None, **kwargs)
        self.rebuild_loss()
        self.add_callback(_AlphaScheduleCallback(self))
        self.temperature: float | None = getattr(getattr(self.model, "config", None), "calibration_temperature", None)
        self._metric_prefix = "eval"
        self._parts = {"train": {}, "eval": {}}  # mode -> part name -> running (weighted) sum
        self._eval_count = torch.zeros((), dtype=torch.float64)
        self._parts_last_step = 0

    # ---- loss ----

    def rebuild_loss(self) -> None:
        """Build the loss from `self.args` again, e.g. after changing `args.margin`; resets the alpha schedule."""
        self.loss_fn = build_loss(self.args.loss_type, **self.args.loss_kwargs())
        self.loss_fn.reduction = "sum"

    def _hp_search_setup(self, trial) -> None:
        # Trainer sets the trial's values on self.args (e.g. margin, alpha): the loss must follow them.
        super()._hp_search_setup(trial)
        self.rebuild_loss()

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        # Trainer counts labels != -100 and only for some models; we always count, with our ignore_index, over the
        # whole accumulation window and all processes, so compute_loss can divide each micro-batch by it.
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        count = sum((batch["labels"] != self.args.loss_ignore_index).sum() for batch in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.gather(count.reshape(1)).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # prediction_step reads labels from the caller's dict afterwards
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("CalibrationTrainer needs `labels` in every batch to compute the calibration loss.")
        outputs = model(**inputs)
        logits, labels = align_logits_and_labels(logits_from_outputs(outputs), labels)
        loss_sum = self.loss_fn(logits, labels)
        if num_items_in_batch is None:
            num_items_in_batch = self._get_num_items_in_batch([{"labels": labels}], labels.device)
        # Gradients are averaged over processes by DDP, so each process's share is scaled back up by their number;
        # the clamp keeps an all-ignored window at a zero (not NaN) loss.
        scale = self.accelerator.num_processes / num_items_in_batch.to(loss_sum.device).clamp(min=1)
        self._store_parts(model.training, scale, labels)
        loss = loss_sum * scale
        return (loss, outputs) if return_outputs else loss

    def _store_parts(self, training: bool, scale: torch.Tensor, labels: torch.Tensor) -> None:
        # Training parts are scaled exactly like the returned loss, so that after the same reduction as Trainer's
        # `loss` they add up to it; evaluation parts are plain sums, divided by the gathered count at the end.
        mode = "train" if training else "eval"
        buffer = self._parts[mode]
        for name, value in self.loss_fn.last_parts.items():
            value = value.detach().double() * (scale.double() if training else 1.0)
            buffer[name] = buffer[name] + value if name in buffer else value
        if not training:
            self._eval_count = self._eval_count.to(labels.device) + (labels != self.args.loss_ignore_index).sum()

    def _pop_parts(self, mode: str, divisor: torch.Tensor | float) -> dict[str, float]:
        buffer = self._parts[mode]
        if not buffer:
            return {}
        names = list(buffer)
        totals = torch.stack([buffer[name] for name in names])
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        self._parts[mode] = {}
        return {f"loss_{name}": (total / divisor).item() for name, total in zip(names, totals)}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log from _maybe_log_save_evaluate: `loss` is a mean over processes and steps
            steps = max(self.state.global_step - self._parts_last_step, 1)
            logs.update(self._pop_parts("train", self.accelerator.num_processes * steps))
            self._parts_last_step = self.state.global_step
        super().log(logs, start_time)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:  # fmt: skip
        self._metric_prefix = metric_key_prefix
        self._parts["eval"], self._eval_count = {}, torch.zeros((), dtype=torch.float64)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        count = self._eval_count.to(self.args.device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        parts = self._pop_parts("eval", count.clamp(min=1))
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in parts.items()})
        return output

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            torch.save(self.loss_fn.state_dict(), os.path.join(checkpoint, LOSS_STATE_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, LOSS_STATE_NAME)
        if os.path.isfile(path):
            self.loss_fn.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ---- metrics ----

    def _compute_metrics(self, eval_pred: EvalPrediction) -> dict[str, float]:
        metrics = {}
        if self.args.calibration_metrics:
            predictions = eval_pred.predictions
            logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
            logits, labels = align_logits_and_labels(torch.as_tensor(logits), torch.as_tensor(eval_pred.label_ids))
            settings = {"n_bins": self.args.calibration_n_bins, "ignore_index": self.args.loss_ignore_index}
            metrics.update(calibration_report(logits, labels, **settings))
            self._maybe_save_diagram(logits, labels, "", settings)
            if self.temperature is not None:
                scaled = logits / self.temperature
                metrics.update({f"ts_{k}": v for k, v in calibration_report(scaled, labels, **settings).items()})
                metrics["temperature"] = float(self.temperature)
                self._maybe_save_diagram(scaled, labels, "_ts", settings)
        if self._user_compute_metrics is not None:
            metrics.update(self._user_compute_metrics(eval_pred))
        return metrics

    def _maybe_save_diagram(self, logits, labels, suffix: str, settings: dict[str, Any]) -> None:
        if self.args.save_reliability_diagrams and self.is_world_process_zero():
            from .plotting import save_reliability_diagram

            os.makedirs(self.args.output_dir, exist_ok=True)
            path = os.path.join(self.args.output_dir, f"reliability_{self._metric_prefix}{suffix}.png")
            # per-bin 95% intervals: a gap in a sparse bin of a small validation set is often noise (issue 15)
            save_reliability_diagram(path, logits, labels, **settings, confidence=0.95)

    # ---- temperature scaling ----

    def fit_temperature(self, eval_dataset=None, method: str | None = None) -> float:
        """Fit temperature scaling on held-out data (never the test set) and use it in later evaluations.

        Runs the model on `eval_dataset` (default: the trainer's `eval_dataset`), fits one temperature with
        `mbls_nlp.temperature.TemperatureScaler` (`method` defaults to `args.temperature_method`), stores it in
        `model.config.calibration_temperature` (so `save_model` keeps it and `from_pretrained` restores it) and
        from then on every evaluation also reports the temperature-scaled metrics as `ts_*`.

        Returns:
            `float`: the fitted temperature.
        """
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("`eval_dataset` is required: pass one or give the trainer an eval_dataset.")
        dataloader = self.get_eval_dataloader(eval_dataset)
        compute_metrics, self.compute_metrics = self.compute_metrics, None  # the raw logits are all we need here
        try:
            output = self.evaluation_loop(dataloader, "Temperature scaling", False, metric_key_prefix="temperature")
        finally:
            self.compute_metrics = compute_metrics
        predictions = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        logits, labels = align_logits_and_labels(torch.as_tensor(predictions), torch.as_tensor(output.label_ids))
        scaler = TemperatureScaler().fit(
            logits,
            labels,
            method=method or self.args.temperature_method,
            ignore_index=self.args.loss_ignore_index,
            n_bins=self.args.calibration_n_bins,
        )
        self.temperature = float(scaler.temperature)
        self.model.config.calibration_temperature = self.temperature
        return self.temperature
