"""Run by tests/test_calibration_trainer.py under `accelerate launch` with 1 or 2 processes.

The global batch is 8 either way (per-device 8 with one process, 4 with two); the test compares the results. An
optional second argument `cals` trains CALS for two epochs instead of MbLS for one and records its multipliers.
"""

import json
import sys
from pathlib import Path

import torch
from trainer_utils import flat_parameters, sequence_dataset, tiny_sequence_classifier

from mbls_nlp import CalibrationConfig, CalibrationTrainer


def main(output_dir: str, loss: str = "mbls") -> None:
    probe = CalibrationConfig(output_dir=output_dir, report_to="none")
    world_size = probe.world_size
    args = CalibrationConfig(
        output_dir=output_dir,
        report_to="none",
        optim="sgd",
        learning_rate=0.5,
        seed=0,
        disable_tqdm=True,
        per_device_train_batch_size=8 // world_size,
        per_device_eval_batch_size=8 // world_size,
        logging_steps=6,
        save_strategy="no",
        **(
            {
                "loss_type": "cals",
                "num_train_epochs": 2,
                "cals_margin": 0.05,
                "cals_rho_step": 1,
                "cals_rho_gamma": 2.0,
            }
            if loss == "cals"
            else {"num_train_epochs": 1, "margin": 0.0, "alpha": 0.5}
        ),
    )
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
    train_logs = next(entry for entry in trainer.state.log_history if "loss" in entry)
    if trainer.is_world_process_zero():
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(flat_parameters(model), out / "params.pt")
        metrics.update(world_size=world_size, train_logs=train_logs)
        if loss == "cals":
            metrics.update(lambd=trainer.loss_fn.lambd.tolist(), rho=trainer.loss_fn.rho.tolist())
        (out / "metrics.json").write_text(json.dumps(metrics))


if __name__ == "__main__":
    main(*sys.argv[1:])
