"""Run by tests/test_calibration_trainer.py under `accelerate launch` with 1 or 2 processes.

The global batch is 8 either way (per-device 8 with one process, 4 with two); the test compares the results.
`python ddp_train_script.py OUTPUT_DIR` trains and evaluates (also on sets that are not a multiple of the global
eval batch); `python ddp_train_script.py OUTPUT_DIR resume` trains with an alpha schedule, resumes a second trainer
from the step checkpoint on the first epoch's last step and records both; `python ddp_train_script.py OUTPUT_DIR
cals` trains CALS for two epochs (multipliers from the evaluation after each epoch end) and records its multipliers;
`python ddp_train_script.py OUTPUT_DIR search` runs `search_calibration_hparams` over two label-smoothing candidates
(kept models) and records the rows, the choice and the restored model.
"""

import json
import sys
from pathlib import Path

import torch
from trainer_utils import flat_parameters, sequence_dataset, tiny_sequence_classifier
from transformers import TrainerCallback

from mbls_nlp import CalibrationConfig, CalibrationTrainer


def make_args(output_dir, world_size: int, **kwargs) -> CalibrationConfig:
    return CalibrationConfig(
        output_dir=str(output_dir),
        report_to="none",
        optim="sgd",
        learning_rate=0.5,
        seed=0,
        disable_tqdm=True,
        per_device_train_batch_size=8 // world_size,
        per_device_eval_batch_size=8 // world_size,
        margin=0.0,
        alpha=0.5,
        **kwargs,
    )


def train_and_evaluate(output_dir: str, world_size: int) -> tuple[CalibrationTrainer, dict]:
    args = make_args(output_dir, world_size, num_train_epochs=1, logging_steps=6, save_strategy="no")
    model = tiny_sequence_classifier()
    # 48 rows with every 3rd label ignored: 6 steps of 8
    trainer = CalibrationTrainer(
        model=model,
        args=args,
        train_dataset=sequence_dataset(48, ignored_every=3),
        eval_dataset=sequence_dataset(40, seed=1, ignored_every=5),
    )
    trainer.train()
    metrics = trainer.evaluate()
    # 35 and 37 rows: with two processes accelerate pads the last batches (rows 32-34 + 1 and 4 rows from the start;
    # rows 32-35 and 36 + 3 from the start), which no metric may count.
    for n in (35, 37):
        metrics.update(trainer.evaluate(sequence_dataset(n, seed=2, ignored_every=4), metric_key_prefix=f"eval{n}"))
    metrics["train_logs"] = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return trainer, metrics


def train_cals(output_dir: str, world_size: int) -> tuple[CalibrationTrainer, dict]:
    cals = dict(loss_type="cals", cals_margin=0.05, cals_rho_step=1, cals_rho_gamma=2.0)
    args = make_args(
        output_dir, world_size, num_train_epochs=2, logging_steps=6, save_strategy="no", eval_strategy="epoch", **cals
    )
    # The multipliers are updated from the evaluation after each epoch end. 34 rows: with 2 processes of eval batch
    # 4, the last global batch holds 2 rows, so process 1's last batch is all padding (its labels ignored).
    trainer = CalibrationTrainer(
        model=tiny_sequence_classifier(),
        args=args,
        train_dataset=sequence_dataset(48, ignored_every=3),
        eval_dataset=sequence_dataset(34, seed=1, ignored_every=5),
    )
    trainer.train()
    metrics = trainer.evaluate()
    metrics["train_logs"] = next(entry for entry in trainer.state.log_history if "loss" in entry)
    metrics.update(lambd=trainer.loss_fn.lambd.tolist(), rho=trainer.loss_fn.rho.tolist())
    return trainer, metrics


def resume(output_dir: str, world_size: int) -> tuple[CalibrationTrainer, dict]:
    kwargs = dict(num_train_epochs=2, save_strategy="steps", save_steps=6, logging_steps=2, alpha_schedule="add",
                  alpha_mu=0.25)  # fmt: skip
    data = sequence_dataset(48, ignored_every=3)  # 6 steps per epoch: checkpoint-6 is the first epoch's last step
    runs = {}
    for name, seed, checkpoint in [("full", 0, None), ("resumed", 1, Path(output_dir) / "full" / "checkpoint-6")]:
        model = tiny_sequence_classifier(seed)
        args = make_args(Path(output_dir) / name, world_size, **kwargs)
        trainer = CalibrationTrainer(model=model, args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
        metrics = trainer.evaluate(sequence_dataset(37, seed=2, ignored_every=4))
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        runs[name] = (trainer, {"alpha": trainer.loss_fn.alpha, "logs": logs, **metrics})
    full, resumed = runs["full"][0].model, runs["resumed"][0].model
    metrics = {"full": runs["full"][1], "resumed": runs["resumed"][1]}
    metrics["resumed_params_diff"] = (flat_parameters(resumed) - flat_parameters(full)).abs().max().item()
    return runs["full"][0], metrics


def search(output_dir: str, world_size: int) -> tuple[CalibrationTrainer, dict]:
    from mbls_nlp.hparam_search import search_calibration_hparams

    args = make_args(
        output_dir, world_size, num_train_epochs=2, logging_strategy="epoch", save_strategy="no",
        eval_strategy="epoch", loss_type="ls",
    )  # fmt: skip
    trainer = CalibrationTrainer(
        model_init=lambda: tiny_sequence_classifier(0),
        args=args,
        train_dataset=sequence_dataset(48, ignored_every=3),
        eval_dataset=sequence_dataset(37, seed=1, ignored_every=5),
    )
    trained = []  # (epsilon, parameter sum) at the end of each candidate's training, in training order

    class Record(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            trained.append((args.ls_epsilon, flat_parameters(model).sum().item()))

    trainer.add_callback(Record())
    result = search_calibration_hparams(trainer, "ls_epsilon=0.0,0.3", max_accuracy_drop=100.0, selection_metric="nll")
    metrics = trainer.evaluate()
    rows = [{k: v for k, v in row.items() if k != "time_s"} for row in result.rows]
    metrics.update(
        rows=rows, chosen=result.chosen, loss_epsilon=trainer.loss_fn.epsilon, train_metrics=result.train_metrics,
        global_step=trainer.state.global_step, stored_left=(Path(output_dir) / "search_models").exists(),
    )  # fmt: skip
    # every process's own view of the choice, to check that they agree
    rank = trainer.args.process_index
    view = {"chosen": result.chosen, "params_sum": flat_parameters(trainer.model).sum().item(), "trained": trained}
    (Path(output_dir) / f"search-rank{rank}.json").write_text(json.dumps(view))
    return trainer, metrics


def main(output_dir: str, mode: str = "train") -> None:
    world_size = CalibrationConfig(output_dir=output_dir, report_to="none").world_size
    run = {"train": train_and_evaluate, "resume": resume, "cals": train_cals, "search": search}[mode]
    trainer, metrics = run(output_dir, world_size)
    if trainer.is_world_process_zero():
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(flat_parameters(trainer.model), out / "params.pt")
        metrics.update(world_size=world_size)
        (out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(*sys.argv[1:])
