"""`CalibrationConfig`: `TrainingArguments` plus the calibration loss and metric settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from ._checks import MAX_N_BINS, check_n_bins
from .calibration import _check_bootstrap
from .losses import ALPHA_SCHEDULES, CALS_MULTIPLIER_SOURCES, LOSS_NAMES, LOSS_REGISTRY, build_loss
from .temperature import FIT_METHODS as TEMPERATURE_METHODS

__all__ = ["CalibrationConfig"]


def _loss_default(loss_type: str, config_field: str) -> Any:
    """A loss hyper-parameter's default: the loss class's own keyword default, read through `LOSS_REGISTRY`."""
    return LOSS_REGISTRY[loss_type].defaults[config_field]


@dataclass
class CalibrationConfig(TrainingArguments):
    r"""
    Configuration for [`CalibrationTrainer`]: every `transformers.TrainingArguments` field plus the calibration loss,
    its hyper-parameters (paper defaults) and the calibration metrics reported at evaluation.

    Being a `TrainingArguments` subclass, it works with `HfArgumentParser` and `accelerate launch` unchanged. Values
    are checked in `__post_init__`, before any model is loaded. Which field feeds which loss keyword, and the
    defaults (the loss classes' own), come from `mbls_nlp.losses.LOSS_REGISTRY`.

    Parameters:
        loss_type (`str`, *optional*, defaults to `"mbls"`):
            Training loss, one of `mbls_nlp.losses.LOSS_NAMES`: `ce`, `ls`, `focal`, `flsd`, `ecp`, `mmce`, `brier`,
            `mbls`, `acls`, `dfl`, `cals`.
        margin (`float`, *optional*, defaults to `10.0`):
            MbLS margin on the logit distances `max_j z_j - z_k`.
        alpha (`float`, *optional*, defaults to `0.1`):
            MbLS weight of the margin penalty.
        alpha_schedule (`str`, *optional*, defaults to `""`):
            MbLS schedule of `alpha` applied at the end of each epoch: `""` (constant), `"add"`, `"multiply"`,
            `"step"`, as in the reference code.
        alpha_mu (`float`, *optional*, defaults to `0.0`):
            Increment (`add`) or factor (`multiply`, `step`) of the alpha schedule.
        alpha_max (`float`, *optional*, defaults to `100.0`):
            Upper bound of `alpha` under the `add` and `multiply` schedules.
        alpha_step_size (`int`, *optional*, defaults to `100`):
            Epoch period of the `step` schedule.
        ls_epsilon (`float`, *optional*, defaults to `0.05`):
            Label-smoothing epsilon for `loss_type="ls"`.
        focal_gamma (`float`, *optional*, defaults to `3.0`):
            Focal-loss gamma for `loss_type="focal"`.
        ecp_beta (`float`, *optional*, defaults to `0.1`):
            Confidence-penalty weight for `loss_type="ecp"`.
        mmce_weight (`float`, *optional*, defaults to `1.0`):
            MMCE weight for `loss_type="mmce"`.
        acls_pos_lambda (`float`, *optional*, defaults to `1.0`):
            ACLS weight of the top-logit term `relu(max_j z_j - margin)^2` for `loss_type="acls"`.
        acls_neg_lambda (`float`, *optional*, defaults to `0.1`):
            ACLS weight of the other-classes term `relu(max_j z_j - z_k - margin)^2` (max detached).
        acls_alpha (`float`, *optional*, defaults to `0.1`):
            ACLS weight of the whole regulariser.
        acls_margin (`float`, *optional*, defaults to `10.0`):
            ACLS margin on the logits and logit distances.
        dfl_gamma (`float`, *optional*, defaults to `3.0`):
            Dual focal loss gamma for `loss_type="dfl"`.
        cals_margin (`float`, *optional*, defaults to `20.0`):
            CALS margin of the constraints `(max_j z_j - z_k - margin) / margin <= 0` for `loss_type="cals"`.
        cals_lambda_min (`float`, *optional*, defaults to `1e-06`):
            CALS initial value and lower bound of the per-class multipliers.
        cals_lambda_max (`float`, *optional*, defaults to `1000000.0`):
            CALS upper bound of the multipliers.
        cals_rho_min (`float`, *optional*, defaults to `1.0`):
            CALS initial value and lower bound of the per-class penalty parameter `rho`.
        cals_rho_max (`float`, *optional*, defaults to `10.0`):
            CALS upper bound of `rho`.
        cals_rho_step (`int`, *optional*, defaults to `10`):
            CALS epochs between `rho` updates (`0` keeps `rho` fixed).
        cals_rho_gamma (`float`, *optional*, defaults to `1.2`):
            CALS growth factor of `rho`.
        cals_tao (`float`, *optional*, defaults to `0.9`):
            CALS: `rho` grows for the classes whose mean constraint is above `tao` times the previous epoch's.
        cals_multipliers_from (`str`, *optional*, defaults to `"validation"`):
            CALS: the end-of-epoch multiplier update reads the statistics of the evaluation that follows the epoch
            (`"validation"`, the reference's rule; needs `eval_strategy="epoch"`, else the training ones are used) or
            of the epoch's training batches (`"train"`).
        loss_ignore_index (`int`, *optional*, defaults to `-100`):
            Label value excluded from the loss and the calibration metrics (255 for PASCAL VOC).
        calibration_metrics (`bool`, *optional*, defaults to `True`):
            Report accuracy, ECE, AECE, CECE, MCE, NLL and Brier score in every evaluation and prediction.
        calibration_n_bins (`int`, *optional*, defaults to `15`):
            Number of bins of the binned calibration errors, from 1 to `mbls_nlp.calibration.MAX_N_BINS` (10_000).
        calibration_n_bootstrap (`int`, *optional*, defaults to `0`):
            Bootstrap resamples for a percentile interval of every calibration metric (`<name>_low`, `<name>_high`,
            see `mbls_nlp.calibration.calibration_report`, seeded by `seed`) in every evaluation and prediction; 0
            computes none. 1000 resamples cost about 0.5 s per report on 7,532 x 20 logits on CPU (about 9 times
            the report itself), so it is off for the per-epoch evaluations; the recipes' final test report has its
            own `--test_n_bootstrap` (1000).
        calibration_confidence (`float`, *optional*, defaults to `0.95`):
            Coverage of the bootstrap intervals, in (0, 1); also that of the recipes' final test report.
        temperature_method (`str`, *optional*, defaults to `"nll"`):
            How `CalibrationTrainer.fit_temperature` chooses the temperature: `"nll"` (minimise NLL) or
            `"ece_grid"` (the paper's grid 0.1 ... 10.0 by lowest ECE).
        save_reliability_diagrams (`bool`, *optional*, defaults to `False`):
            Write a reliability diagram (PNG) and its bin table (JSON) to `output_dir` at every evaluation and
            prediction (needs the `plot` extra).
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Let `CalibrationTrainer.train` start afresh in an `output_dir` that holds `checkpoint-*` folders of an
            earlier run: they are deleted first. Without it (or `resume_from_checkpoint`) such a folder is refused, as
            the old checkpoints would mix with the new ones (and `resume_from_checkpoint=True` take the highest).
            transformers 5 no longer has this `TrainingArguments` field.

    Examples:

    ```python
    >>> from mbls_nlp import CalibrationConfig
    >>> args = CalibrationConfig(output_dir="out", loss_type="mbls", margin=6.0, alpha=0.5, report_to="none")
    >>> args.loss_kwargs()["margin"], args.loss_kwargs()["alpha"]
    (6.0, 0.5)
    >>> CalibrationConfig(output_dir="out", loss_type="hinge")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: `loss_type` must be one of ('ce', 'ls', 'focal', ..., 'mbls', ...), got 'hinge'.

    ```
    """

    loss_type: str = field(
        default="mbls", metadata={"help": f"Training loss, one of {', '.join(LOSS_NAMES)}.", "choices": LOSS_NAMES}
    )
    margin: float = field(
        default=_loss_default("mbls", "margin"),
        metadata={"help": "MbLS margin on the logit distances max_j z_j - z_k."},
    )
    alpha: float = field(
        default=_loss_default("mbls", "alpha"), metadata={"help": "MbLS weight of the margin penalty."}
    )
    alpha_schedule: str = field(
        default=_loss_default("mbls", "alpha_schedule"),
        metadata={
            "help": "MbLS alpha schedule applied at each epoch end: '' (constant), 'add', 'multiply' or 'step'.",
            "choices": ALPHA_SCHEDULES,
        },
    )
    alpha_mu: float = field(
        default=_loss_default("mbls", "alpha_mu"),
        metadata={"help": "Increment ('add') or factor ('multiply', 'step') of the alpha schedule."},
    )
    alpha_max: float = field(
        default=_loss_default("mbls", "alpha_max"),
        metadata={"help": "Upper bound of alpha for 'add' and 'multiply'."},
    )
    alpha_step_size: int = field(
        default=_loss_default("mbls", "alpha_step_size"),
        metadata={"help": "Epoch period of the 'step' alpha schedule."},
    )
    ls_epsilon: float = field(
        default=_loss_default("ls", "ls_epsilon"), metadata={"help": "Label-smoothing epsilon for loss_type='ls'."}
    )
    focal_gamma: float = field(
        default=_loss_default("focal", "focal_gamma"), metadata={"help": "Focal-loss gamma for loss_type='focal'."}
    )
    ecp_beta: float = field(
        default=_loss_default("ecp", "ecp_beta"), metadata={"help": "Confidence-penalty weight for loss_type='ecp'."}
    )
    mmce_weight: float = field(
        default=_loss_default("mmce", "mmce_weight"), metadata={"help": "MMCE weight for loss_type='mmce'."}
    )
    acls_pos_lambda: float = field(
        default=_loss_default("acls", "acls_pos_lambda"),
        metadata={"help": "ACLS weight of the top-logit term relu(max - margin)^2 for loss_type='acls'."},
    )
    acls_neg_lambda: float = field(
        default=_loss_default("acls", "acls_neg_lambda"),
        metadata={"help": "ACLS weight of the other-classes term relu(max - z_k - margin)^2."},
    )
    acls_alpha: float = field(
        default=_loss_default("acls", "acls_alpha"), metadata={"help": "ACLS weight of the whole regulariser."}
    )
    acls_margin: float = field(
        default=_loss_default("acls", "acls_margin"), metadata={"help": "ACLS margin on the logits and distances."}
    )
    dfl_gamma: float = field(
        default=_loss_default("dfl", "dfl_gamma"), metadata={"help": "Dual focal loss gamma for loss_type='dfl'."}
    )
    cals_margin: float = field(
        default=_loss_default("cals", "cals_margin"),
        metadata={
            "help": "CALS margin of the constraints (max_j z_j - z_k - margin) / margin <= 0 (loss_type='cals')."
        },
    )
    cals_lambda_min: float = field(
        default=_loss_default("cals", "cals_lambda_min"),
        metadata={"help": "CALS initial value and lower bound of the per-class multipliers."},
    )
    cals_lambda_max: float = field(
        default=_loss_default("cals", "cals_lambda_max"), metadata={"help": "CALS upper bound of the multipliers."}
    )
    cals_rho_min: float = field(
        default=_loss_default("cals", "cals_rho_min"),
        metadata={"help": "CALS initial value and lower bound of the per-class penalty parameter rho."},
    )
    cals_rho_max: float = field(
        default=_loss_default("cals", "cals_rho_max"), metadata={"help": "CALS upper bound of rho."}
    )
    cals_rho_step: int = field(
        default=_loss_default("cals", "cals_rho_step"),
        metadata={"help": "CALS epochs between rho updates (0: rho fixed)."},
    )
    cals_rho_gamma: float = field(
        default=_loss_default("cals", "cals_rho_gamma"), metadata={"help": "CALS growth factor of rho."}
    )
    cals_tao: float = field(
        default=_loss_default("cals", "cals_tao"),
        metadata={"help": "CALS: rho grows where the mean constraint is above tao times the previous one."},
    )
    cals_multipliers_from: str = field(
        default=_loss_default("cals", "cals_multipliers_from"),
        metadata={
            "help": "CALS: update the multipliers at each epoch end from the evaluation that follows it "
            "('validation', the reference's rule; training batches when no evaluation follows) or from the epoch's "
            "training batches ('train').",
            "choices": CALS_MULTIPLIER_SOURCES,
        },
    )
    loss_ignore_index: int = field(
        default=-100, metadata={"help": "Label value excluded from the loss and the metrics (255 for PASCAL VOC)."}
    )
    calibration_metrics: bool = field(
        default=True, metadata={"help": "Report accuracy, ECE, AECE, CECE, MCE, NLL and Brier in every evaluation."}
    )
    calibration_n_bins: int = field(
        default=15, metadata={"help": f"Number of bins of the binned calibration errors (1 to {MAX_N_BINS})."}
    )
    calibration_n_bootstrap: int = field(
        default=0,
        metadata={
            "help": "Bootstrap resamples for a percentile interval (<name>_low, <name>_high) of every calibration "
            "metric in every evaluation; 0: none (1000 cost about 0.5 s per report on 7,532 x 20 logits)."
        },
    )
    calibration_confidence: float = field(
        default=0.95, metadata={"help": "Coverage of the bootstrap intervals, in (0, 1)."}
    )
    temperature_method: str = field(
        default="nll",
        metadata={
            "help": "How fit_temperature chooses T: 'nll' (minimise NLL) or 'ece_grid' (grid 0.1..10 by lowest ECE).",
            "choices": TEMPERATURE_METHODS,
        },
    )
    save_reliability_diagrams: bool = field(
        default=False,
        metadata={"help": "Write reliability diagrams (PNG) and bin tables (JSON) to output_dir at each evaluation."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train afresh in an output_dir holding checkpoint-* folders of an earlier run, deleting them; "
            "without it (or --resume_from_checkpoint) such an output_dir is refused."
        },
    )

    def __post_init__(self):
        if self.loss_type not in LOSS_REGISTRY:
            raise ValueError(f"`loss_type` must be one of {tuple(LOSS_REGISTRY)}, got {self.loss_type!r}.")
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"`alpha_schedule` must be one of {ALPHA_SCHEDULES}, got {self.alpha_schedule!r}.")
        if self.temperature_method not in TEMPERATURE_METHODS:
            raise ValueError(
                f"`temperature_method` must be one of {TEMPERATURE_METHODS}, got {self.temperature_method!r}."
            )
        check_n_bins(self.calibration_n_bins, "calibration_n_bins")
        _check_bootstrap(
            self.calibration_n_bootstrap,
            self.calibration_confidence,
            self.seed,
            names=("calibration_n_bootstrap", "calibration_confidence", "seed"),
        )
        if getattr(self, "label_smoothing_factor", 0.0):
            # Trainer would build its own label smoother beside our loss; there is one place for the loss.
            raise ValueError(
                "`label_smoothing_factor` is not used by CalibrationTrainer: set `loss_type='ls'` and `ls_epsilon` "
                f"instead (got label_smoothing_factor={self.label_smoothing_factor})."
            )
        # The loss validates its own hyper-parameters (unknown name, negative margin, ...): build it once here so that
        # a bad value fails before any model is loaded, with the loss's own message.
        build_loss(self.loss_type, **self.loss_kwargs())
        super().__post_init__()

    def loss_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `mbls_nlp.build_loss(self.loss_type, ...)` for the configured loss.

        The fields read are the loss's `LOSS_REGISTRY` entry's `hparams`, plus `loss_ignore_index` for every loss.
        """
        hparams = LOSS_REGISTRY[self.loss_type].hparams
        return {
            "ignore_index": self.loss_ignore_index,
            **{keyword: getattr(self, config_field) for config_field, keyword in hparams.items()},
        }
