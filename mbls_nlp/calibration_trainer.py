"""`CalibrationTrainer`: `transformers.Trainer` with a calibration loss, its parts in the logs and calibration
metrics."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, EvalPrediction, PredictionOutput

from .calibration import calibration_report
from .calibration_config import CalibrationConfig
from .loss_adapter import align_logits_and_labels, logits_from_outputs
from .losses import LOSS_REGISTRY, build_loss
from .temperature import TemperatureScaler, unfold_temperature

__all__ = ["CalibrationTrainer"]

logger = logging.getLogger(__name__)

LOSS_STATE_NAME = "calibration_loss.pt"
_UNKNOWN = -1  # a checkpoint that does not say which epochs' alpha updates its loss state holds
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-\d+")  # the folders get_last_checkpoint chooses from


class _TrainingStateCallback(TrainerCallback):
    """Keeps the trainer's own training state in step with `Trainer`'s: the alpha schedule, the CALS multipliers
    (both advanced at each epoch end, as the reference training loops do) and the logged parts."""

    def __init__(self, trainer: CalibrationTrainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._begin_training()

    def on_epoch_end(self, args, state, control, **kwargs):
        # The epoch that just ended is epoch ceil(state.epoch) - 1 (0-based); state.epoch is a whole number after a
        # full epoch and fractional after one cut short by max_steps. DefaultFlowCallback (called before this one) has
        # decided whether an evaluation follows right now; if so a CALS multiplier update waits for it, so that it
        # can use its validation statistics.
        self.trainer._advance_epochs(math.ceil(state.epoch), defer_last=bool(control.should_evaluate))

    def on_evaluate(self, args, state, control, **kwargs):
        self.trainer._apply_pending_multiplier_update()


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
      way as `loss`; evaluations carry them with the evaluation prefix, and their `eval_loss` is the exact mean of
      the loss over the set's valid labels (the weighted sum of the parts), the same for any number of processes.
    - Every evaluation/prediction reports `accuracy, ece, aece, cece, mce, nll, brier` (see
      `mbls_nlp.calibration.calibration_report`), merged with a user `compute_metrics`; after
      [`~CalibrationTrainer.fit_temperature`] also the same metrics on temperature-scaled logits as `ts_*`. With
      `args.calibration_n_bootstrap > 0`, each with its percentile bootstrap interval (`<name>_low`, `<name>_high`
      at `args.calibration_confidence`, seeded by `args.seed`).
    - CALS (`loss_type="cals"`): the per-class multipliers and `rho` are updated at each epoch end from the
      statistics, summed over all processes, of the evaluation that follows the epoch end (`eval_strategy="epoch"`;
      its first evaluation set), as the reference does, or of the epoch's training batches when no evaluation
      follows or `args.cals_multipliers_from="train"`. Each update logs `cals_lambda_mean`, `cals_lambda_max`,
      `cals_rho`, `cals_rho_max`.
    - The loss state (alpha schedule, CALS multipliers and the running statistics of the current epoch, summed over
      processes) is saved in checkpoints (`calibration_loss.pt`, written before
      `trainer_state.json`) and restored by `resume_from_checkpoint`, so that a resumed run continues exactly as
      the uninterrupted one from any step or epoch checkpoint (from a step checkpoint on an epoch's last step, a
      CALS update that reads the epoch-end evaluation makes that validation pass again, unlogged); an incomplete
      checkpoint is refused. The fitted
      temperature is stored in `model.config.calibration_temperature`, so it is saved with the model. A model saved
      with the temperature folded into its head (`config.calibration_temperature_folded`, see
      [`~mbls_nlp.temperature.fold_temperature`]) is unfolded when the trainer is built, so that its logits are the
      unscaled ones again and the temperature is applied once.
    - [`~CalibrationTrainer.create_model_card`] (also called by `push_to_hub`) adds the calibration: the loss and its
      hyper-parameters, the test metrics before and after temperature scaling (`calibration_results`), the
      temperature, the reliability diagram and the paper's citation.

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
                "`args` must be a CalibrationConfig (a TrainingArguments subclass), "
                f"got {type(training_args).__name__}."
            )
        self._user_compute_metrics = compute_metrics
        wants_metrics = training_args.calibration_metrics or compute_metrics is not None
        super().__init__(*args, compute_metrics=self._compute_metrics if wants_metrics else None, **kwargs)
        self.rebuild_loss()
        self.add_callback(_TrainingStateCallback(self))
        config = getattr(self.model, "config", None)
        if getattr(config, "calibration_temperature_folded", False):
            unfold_temperature(self.model)  # metrics are computed on unscaled logits, the temperature applied once
        self.temperature: float | None = getattr(config, "calibration_temperature", None)
        #: What the model card reports (set by `mbls_nlp.protocol.train_calibrate_and_test`): the results metrics.
        self.calibration_results: dict[str, Any] | None = None
        self._metric_prefix = "eval"
        self._parts = {"train": {}, "eval": {}}  # mode -> part name -> running (weighted) sum
        self._eval_count = torch.zeros((), dtype=torch.float64)
        self._parts_last_step = 0
        self._labelled_set: str | None = None  # while evaluate/fit_temperature run: how to name their dataset
        self._pending_multiplier_epoch: int | None = None  # CALS: an epoch-end update waiting for its evaluation
        self._eval_statistics: dict[str, torch.Tensor] | None = None

    # ---- loss ----

    def rebuild_loss(self) -> None:
        """Build the loss from `self.args` again, e.g. after changing `args.margin`; resets the alpha schedule."""
        self.loss_fn = build_loss(self.args.loss_type, **self.args.loss_kwargs())
        self.loss_fn.reduction = "sum"
        self._scheduled_epochs = 0  # epochs whose end-of-epoch alpha update the loss has received
        # Set by _load_from_checkpoint for the next train(): the checkpoint's _scheduled_epochs, or _UNKNOWN.
        self._resumed_scheduled_epochs: int | None = None

    def _loss_has_state(self) -> bool:
        # Only a scheduled alpha and the CALS multipliers change during training; every other loss setting comes from
        # `args` again.
        scheduled = bool(getattr(self.loss_fn, "schedule", "")) and hasattr(self.loss_fn, "schedule_alpha")
        return scheduled or hasattr(self.loss_fn, "update_multipliers")

    def _advance_epochs(self, epochs_done: int, defer_last: bool = False) -> None:
        """Give the loss the end-of-epoch updates (alpha schedule, CALS multipliers) of epochs
        `_scheduled_epochs .. epochs_done - 1`; with `defer_last`, the last epoch's multiplier update waits for the
        evaluation that follows it."""
        schedule_alpha = getattr(self.loss_fn, "schedule_alpha", None)
        while self._scheduled_epochs < epochs_done:
            epoch = self._scheduled_epochs
            if schedule_alpha is not None:
                schedule_alpha(epoch)
            self._end_epoch_multipliers(epoch, defer=defer_last and epoch == epochs_done - 1)
            self._scheduled_epochs += 1

    def _begin_training(self) -> None:
        # Called from on_train_begin, once Trainer has set (or restored) self.state. Parts are logged per step since
        # the last log, counted from the resumed step like Trainer's _globalstep_last_logged (not from 0).
        self._parts["train"], self._parts_last_step = {}, self.state.global_step
        if self._resumed_scheduled_epochs is None:  # a fresh run: its epochs count from 0
            self._scheduled_epochs = 0
            return
        resumed, self._resumed_scheduled_epochs = self._resumed_scheduled_epochs, None
        completed = math.floor(self.state.epoch or 0)
        if resumed == _UNKNOWN:  # no or an older loss state: take the completed epochs' updates as applied
            self._scheduled_epochs = completed
            return
        self._scheduled_epochs = resumed
        # A step checkpoint on an epoch's last step is written before that epoch's on_epoch_end (Trainer's
        # _maybe_log_save_evaluate runs first) and the resumed run starts with the next epoch: apply the update here.
        # Where the uninterrupted run evaluated after that epoch end and CALS reads that evaluation, the same pass is
        # made here (same weights: the evaluation came after the checkpoint's last step), so the update is the same.
        followed = self._epoch_end_evaluation_follows(completed) and self._multipliers_read_validation()
        self._advance_epochs(completed, defer_last=resumed < completed and followed)
        if self._pending_multiplier_epoch is not None:
            self._collect_validation_statistics()
            self._apply_pending_multiplier_update()

    def _epoch_end_evaluation_follows(self, epochs_done: int) -> bool:
        # DefaultFlowCallback.on_epoch_end: an evaluation follows an epoch end with eval_strategy="epoch" once
        # state.epoch has reached eval_delay.
        strategy = getattr(self.args.eval_strategy, "value", self.args.eval_strategy)
        return strategy == "epoch" and self.eval_dataset is not None and (self.args.eval_delay or 0) <= epochs_done

    def _multipliers_read_validation(self) -> bool:
        return hasattr(self.loss_fn, "update_multipliers") and self.loss_fn.multipliers_from == "validation"

    def _collect_validation_statistics(self) -> None:
        """The validation pass of a pending CALS update, without logging: the evaluation loop over the first
        evaluation set (as `evaluate` would run it), keeping only the loss's statistics."""
        eval_dataset, prefix = self.eval_dataset, "eval"
        if isinstance(eval_dataset, dict):
            name, eval_dataset = next(iter(eval_dataset.items()))
            prefix = f"eval_{name}"
        dataloader = self.get_eval_dataloader(eval_dataset)
        outer, self._labelled_set = self._labelled_set, "`eval_dataset` (the CALS validation pass on resume)"
        try:
            self.evaluation_loop(dataloader, "CALS validation statistics", prediction_loss_only=True,
                                 metric_key_prefix=prefix)  # fmt: skip
        finally:
            self._labelled_set = outer
        for callback in self.callback_handler.callbacks:  # a progress bar opened for this pass closes at on_evaluate
            bar = getattr(callback, "prediction_bar", None)
            if bar is not None:
                bar.close()
                callback.prediction_bar = None

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """As `Trainer.train`; a fresh run (no `resume_from_checkpoint`) in an output folder holding `checkpoint-*`
        folders of an earlier run is a `ValueError` unless `args.overwrite_output_dir`, which deletes them first."""
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            self._claim_output_dir(self._get_output_dir(trial))
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)

    def _claim_output_dir(self, run_dir: str) -> None:
        if not os.path.isdir(run_dir):
            return
        checkpoints = sorted(
            name for name in os.listdir(run_dir)
            if _CHECKPOINT_NAME.fullmatch(name) and os.path.isdir(os.path.join(run_dir, name))
        )  # fmt: skip
        if not checkpoints:
            return
        if not self.args.overwrite_output_dir:
            raise ValueError(
                f"`output_dir` {run_dir!r} holds checkpoints of an earlier run ({', '.join(checkpoints[:5])}"
                f"{', ...' if len(checkpoints) > 5 else ''}), which would mix with this run's: pass "
                "`resume_from_checkpoint` to continue that run, set `overwrite_output_dir=True` to delete them and "
                "start afresh, or choose another `output_dir`."
            )
        if self.args.should_save:
            for name in checkpoints:
                shutil.rmtree(os.path.join(run_dir, name))
        self.accelerator.wait_for_everyone()

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
        if not model.training:
            labels = self._ignore_eval_padding(labels)
        logits, labels = align_logits_and_labels(logits_from_outputs(outputs), labels)
        self.loss_fn.train(model.training)  # CALS accumulates its epoch statistics from training forwards only
        loss_sum = self.loss_fn(logits, labels)
        if num_items_in_batch is None:
            num_items_in_batch = self._get_num_items_in_batch([{"labels": labels}], labels.device)
        # Gradients are averaged over processes by DDP, so each process's share is scaled back up by their number;
        # the clamp keeps an all-ignored window at a zero (not NaN) loss.
        scale = self.accelerator.num_processes / num_items_in_batch.to(loss_sum.device).clamp(min=1)
        self._store_parts(model.training, scale, labels)
        loss = loss_sum * scale
        return (loss, outputs) if return_outputs else loss

    def _ignore_eval_padding(self, labels: torch.Tensor) -> torch.Tensor:
        # With several processes accelerate fills the last evaluation batch of every process up to full size with
        # rows from the start of the set (even_batches), and gather_for_metrics keeps only the first `remainder` rows
        # of the gathered last batch, process 0's first. The loss sums must skip the same rows, so that eval_loss and
        # its parts are the mean over the set's own valid labels whatever the number of processes.
        state = self.accelerator.gradient_state
        if self.accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
            return labels
        batch = labels.shape[0]
        keep = min(max(state.remainder - self.accelerator.process_index * batch, 0), batch)
        if keep == batch:
            return labels
        labels = labels.clone()
        labels[keep:] = self.args.loss_ignore_index
        return labels

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
            if self._eval_statistics is not None:
                for name, value in self.loss_fn.last_statistics.items():
                    self._eval_statistics[name] = self._eval_statistics.get(name, 0) + value

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

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """As `Trainer.evaluate`; raises a `ValueError` naming `eval_dataset` when it is empty or has no labels (the
        loss and the calibration metrics need them; `predict` accepts unlabelled data)."""
        outer, self._labelled_set = (
            self._labelled_set,
            f"`eval_dataset` of evaluate(metric_key_prefix={metric_key_prefix!r})",
        )
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._labelled_set = outer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if self._labelled_set is not None and inputs.get("labels") is None:
            raise ValueError(
                f"{self._labelled_set} has no labels: its batches need a `labels` column (a `label` column is renamed "
                "by the default data collators) for the loss and the calibration metrics."
            )
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval") -> EvalLoopOutput:  # fmt: skip
        self._metric_prefix = metric_key_prefix
        # Validation statistics for a pending CALS update: only the evaluation that follows the epoch end.
        collect = self._pending_multiplier_epoch is not None and metric_key_prefix.startswith("eval")
        self._eval_statistics = {} if collect else None
        self._parts["eval"], self._eval_count = {}, torch.zeros((), dtype=torch.float64)
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self._labelled_set is not None and output.num_samples == 0:
            raise ValueError(
                f"{self._labelled_set} is empty: the loss and the calibration metrics need labelled rows."
            )
        count = self._eval_count.to(self.args.device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        weights = self.loss_fn.part_weights
        parts = self._pop_parts("eval", count.clamp(min=1))
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in parts.items()})
        if parts:
            # Trainer's eval_loss averages per-batch means weighted by batch size (and counts the padding rows of
            # several processes); the weighted parts give the exact mean over valid labels, as the loss defines it.
            loss = sum(weight * parts[f"loss_{name}"] for name, weight in weights.items())
            output.metrics[f"{metric_key_prefix}_loss"] = float(loss)
        return output

    # ---- CALS multipliers (the maths is ClassAdaptiveLoss.update_multipliers; here only gathering and timing) ----

    def _sum_over_processes(self, statistics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.accelerator.num_processes == 1:
            return dict(statistics)
        names = list(statistics)
        device = self.args.device
        flat = torch.cat([statistics[name].to(device, torch.float64).reshape(-1) for name in names])
        flat = self.accelerator.reduce(flat, reduction="sum")
        sizes = [statistics[name].numel() for name in names]
        return {name: part.reshape(statistics[name].shape) for name, part in zip(names, flat.split(sizes))}

    def _end_epoch_multipliers(self, epoch: int, defer: bool) -> None:
        if not hasattr(self.loss_fn, "update_multipliers"):
            return
        if defer:
            self._pending_multiplier_epoch = epoch
        else:
            self._update_multipliers(epoch, validation=None)

    def _apply_pending_multiplier_update(self) -> None:
        if self._pending_multiplier_epoch is None:
            return
        epoch, self._pending_multiplier_epoch = self._pending_multiplier_epoch, None
        validation, self._eval_statistics = self._eval_statistics or None, None
        self._update_multipliers(epoch, validation)

    def _update_multipliers(self, epoch: int, validation: dict[str, torch.Tensor] | None) -> None:
        statistics = self.loss_fn.epoch_statistics
        if statistics is None:  # no training forward yet
            return
        if validation is not None:
            validation = self._sum_over_processes(validation)
        self.loss_fn.update_multipliers(epoch, self._sum_over_processes(statistics), validation)
        self.log(self.loss_fn.multiplier_summary())

    # ---- checkpoints ----

    def _save_checkpoint(self, model, trial):
        # The loss state is written before Trainer writes trainer_state.json, its last file: a checkpoint with a
        # trainer_state.json is complete, one interrupted while saving has none and is refused on resume.
        loss_state = self.loss_fn.state_dict()
        statistics = getattr(self.loss_fn, "epoch_statistics", None)
        if statistics is not None and self.accelerator.num_processes > 1:
            # CALS: the running statistics of the epoch differ per process; the checkpoint holds their sum (every
            # process takes part in the reduction, process 0 writes) and a resumed process 0 alone starts from it.
            summed = self._sum_over_processes(statistics)
            extra = {**loss_state["_extra_state"], **{f"epoch_{k}": v.cpu() for k, v in summed.items()}}
            loss_state = {**loss_state, "_extra_state": extra}
        if self.args.should_save:
            checkpoint = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(checkpoint, exist_ok=True)
            state = {"loss": loss_state, "scheduled_epochs": self._scheduled_epochs}
            torch.save(state, os.path.join(checkpoint, LOSS_STATE_NAME))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not os.path.isfile(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)):
            raise ValueError(
                f"`resume_from_checkpoint` {resume_from_checkpoint!r} is incomplete: it has no {TRAINER_STATE_NAME} "
                "(the last file a checkpoint writes; the run was probably stopped while saving it). Resume from an "
                "earlier checkpoint or delete this one."
            )
        path = os.path.join(resume_from_checkpoint, LOSS_STATE_NAME)
        if not os.path.isfile(path):
            message = (
                f"`resume_from_checkpoint` {resume_from_checkpoint!r} has no {LOSS_STATE_NAME}, the calibration loss "
                "state written by CalibrationTrainer"
            )
            if self._loss_has_state():
                raise ValueError(
                    f"{message}; the scheduled alpha (`alpha_schedule={self.args.alpha_schedule!r}`) cannot be "
                    "restored. Resume from a checkpoint written by CalibrationTrainer."
                )
            logger.warning(f"{message}; this loss has no state to restore, so training continues.")
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._resumed_scheduled_epochs = _UNKNOWN
        if os.path.isfile(path):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if "scheduled_epochs" in state:
                self.loss_fn.load_state_dict(state["loss"])
                self._resumed_scheduled_epochs = int(state["scheduled_epochs"])
            else:  # written by mbls-nlp before issue 14: the loss's state_dict alone
                self.loss_fn.load_state_dict(state)
            statistics = getattr(self.loss_fn, "epoch_statistics", None)
            if statistics is not None and self.accelerator.process_index != 0:
                self.loss_fn.epoch_statistics = {k: torch.zeros_like(v) for k, v in statistics.items()}

    # ---- metrics ----

    def _compute_metrics(self, eval_pred: EvalPrediction) -> dict[str, float]:
        metrics = {}
        if self.args.calibration_metrics:
            predictions = eval_pred.predictions
            logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
            logits, labels = align_logits_and_labels(torch.as_tensor(logits), torch.as_tensor(eval_pred.label_ids))
            settings = {"n_bins": self.args.calibration_n_bins, "ignore_index": self.args.loss_ignore_index}
            # intervals on request (`calibration_n_bootstrap`), the same resamples before and after scaling
            bootstrap = {
                "n_bootstrap": self.args.calibration_n_bootstrap,
                "confidence": self.args.calibration_confidence,
                "seed": self.args.seed,
            }
            metrics.update(calibration_report(logits, labels, **settings, **bootstrap))
            self._maybe_save_diagram(logits, labels, "", settings)
            if self.temperature is not None:
                scaled = logits / self.temperature
                report = calibration_report(scaled, labels, **settings, **bootstrap)
                metrics.update({f"ts_{k}": v for k, v in report.items()})
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
            title = self._diagram_title(suffix == "_ts")
            save_reliability_diagram(path, logits, labels, title=title, confidence=0.95, **settings)

    def loss_description(self) -> str:
        """The loss and its hyper-parameters as text, e.g. `mbls (margin=10.0, alpha=0.1)`."""
        fields = LOSS_REGISTRY[self.args.loss_type].hparams  # config field -> loss keyword
        if not getattr(self.args, "alpha_schedule", ""):  # a constant alpha: the schedule's settings are unused
            fields = {f: k for f, k in fields.items() if not f.startswith("alpha_")}
        described = ", ".join(f"{f}={getattr(self.args, f)}" for f in fields)
        return f"{self.args.loss_type} ({described})" if described else self.args.loss_type

    def _diagram_title(self, scaled: bool) -> str:
        # split, loss, and whether (with which T) the logits were temperature-scaled
        after = f"after temperature scaling, T = {self.temperature:.3f}" if scaled else "before temperature scaling"
        return f"{self._metric_prefix}: {self.args.loss_type} loss, {after}"

    # ---- temperature scaling ----

    def fit_temperature(
        self, eval_dataset=None, method: str | None = None, *, predictions: PredictionOutput | None = None
    ) -> float:
        """Fit temperature scaling on held-out data (never the test set) and use it in later evaluations.

        Runs the model on `eval_dataset` (default: the trainer's `eval_dataset`), or takes the logits of
        `predictions` (the output of an earlier `predict` on held-out data, so that it is not predicted twice), fits
        one temperature with `mbls_nlp.temperature.TemperatureScaler` (`method` defaults to
        `args.temperature_method`), stores it in `model.config.calibration_temperature` (so `save_model` keeps it
        and `from_pretrained` restores it) and from then on every evaluation also reports the temperature-scaled
        metrics as `ts_*`. An empty or unlabelled `eval_dataset` (or `predictions` without labels) is a
        `ValueError`.

        Args:
            eval_dataset (`datasets.Dataset`, *optional*): held-out data; ignored when `predictions` is given.
            method (`str`, *optional*): `"nll"` or `"ece_grid"`; defaults to `args.temperature_method`.
            predictions (`transformers.trainer_utils.PredictionOutput`, *optional*): logits and labels already
                predicted on held-out data.

        Returns:
            `float`: the fitted temperature.
        """
        if predictions is None:
            eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            if eval_dataset is None:
                raise ValueError("`eval_dataset` is required: pass one or give the trainer an eval_dataset.")
            compute_metrics, self.compute_metrics = self.compute_metrics, None  # the raw logits are all we need here
            self._labelled_set = "`eval_dataset` of fit_temperature()"
            try:
                # predict (not evaluation_loop): its callbacks close the progress bar of this pass
                predictions = self.predict(eval_dataset, metric_key_prefix="temperature")
            finally:
                self.compute_metrics, self._labelled_set = compute_metrics, None
        elif predictions.label_ids is None or predictions.predictions is None or len(predictions.label_ids) == 0:
            raise ValueError("`predictions` of fit_temperature() must hold the logits and labels of a labelled set.")
        logits, labels = align_logits_and_labels(
            torch.as_tensor(_logits_of(predictions.predictions)), torch.as_tensor(predictions.label_ids)
        )
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

    def evaluate_predictions(self, predictions: PredictionOutput, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The metrics of predictions made earlier (no forward pass): their loss, loss parts and speed, and the
        calibration metrics recomputed with the current temperature (e.g. after [`~CalibrationTrainer.fit_temperature`]
        on those same predictions), each key prefixed by `metric_key_prefix`."""
        self._metric_prefix = metric_key_prefix
        metrics = {k: v for k, v in predictions.metrics.items() if "loss" in k or "runtime" in k or "per_second" in k}
        if self.compute_metrics is not None:
            computed = self.compute_metrics(EvalPrediction(predictions.predictions, predictions.label_ids))
            metrics.update({f"{metric_key_prefix}_{k}": v for k, v in computed.items()})
        return metrics

    # ---- model card ----

    def create_model_card(self, *args, **kwargs) -> None:
        """`Trainer.create_model_card` (README.md in `output_dir`), followed by the calibration section of
        [`mbls_nlp.protocol.model_card_section`]: the loss, the test metrics before and after temperature scaling
        (from `calibration_results`), the temperature, the reliability diagram and the citation."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        from .protocol import model_card_section  # the protocol imports this module

        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n" + model_card_section(self) + "\n")


def _logits_of(predictions):
    return predictions[0] if isinstance(predictions, (tuple, list)) else predictions
