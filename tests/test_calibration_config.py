import pytest
from transformers import HfArgumentParser, TrainingArguments

from mbls_nlp import CalibrationConfig
from mbls_nlp.losses import LOSS_NAMES


def make(tmp_path, **kwargs):
    return CalibrationConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def test_is_training_arguments_with_paper_defaults(tmp_path):
    config = make(tmp_path)
    assert isinstance(config, TrainingArguments)
    assert (config.loss_type, config.margin, config.alpha, config.calibration_n_bins) == ("mbls", 10.0, 0.1, 15)
    assert config.loss_kwargs() == {
        "ignore_index": -100,
        "margin": 10.0,
        "alpha": 0.1,
        "schedule": "",
        "mu": 0.0,
        "max_alpha": 100.0,
        "step_size": 100,
    }
    assert make(tmp_path, loss_type="ls", ls_epsilon=0.1).loss_kwargs() == {"ignore_index": -100, "epsilon": 0.1}
    assert make(tmp_path, loss_type="ce", loss_ignore_index=255).loss_kwargs() == {"ignore_index": 255}


def test_hf_argument_parser_round_trip(tmp_path):
    parser = HfArgumentParser(CalibrationConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--loss_type", "focal", "--focal_gamma", "2", "--calibration_n_bins", "10"]
    )
    assert (config.loss_type, config.focal_gamma, config.calibration_n_bins) == ("focal", 2.0, 10)
    # every calibration field documents itself in --help
    help_text = parser.format_help()
    for flag in ("--loss_type", "--margin", "--alpha", "--alpha_schedule", "--ls_epsilon", "--calibration_n_bins"):
        assert flag in help_text
    with pytest.raises(SystemExit):  # argparse rejects a loss outside the choices
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--loss_type", "hinge"])


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"loss_type": "hinge"}, ValueError, ["hinge", *LOSS_NAMES]),
        ({"margin": -1.0}, ValueError, ["margin"]),
        ({"alpha": -0.1}, ValueError, ["alpha"]),
        ({"loss_type": "ls", "ls_epsilon": 1.0}, ValueError, ["epsilon"]),
        ({"loss_type": "focal", "focal_gamma": -1.0}, ValueError, ["gamma"]),
        ({"alpha_schedule": "cosine"}, ValueError, ["alpha_schedule", "multiply"]),
        ({"calibration_n_bins": 0}, ValueError, ["calibration_n_bins"]),
        ({"calibration_n_bins": 2.5}, TypeError, ["calibration_n_bins"]),
        ({"calibration_n_bins": 10_001}, ValueError, ["calibration_n_bins", "<= 10000"]),  # MAX_N_BINS
        ({"temperature_method": "ece"}, ValueError, ["temperature_method", "ece_grid"]),
        ({"label_smoothing_factor": 0.1}, ValueError, ["label_smoothing_factor", "ls_epsilon"]),
    ],
)
def test_bad_values_fail_at_construction(tmp_path, kwargs, error, words):
    with pytest.raises(error) as info:
        make(tmp_path, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    import mbls_nlp.calibration_config

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(mbls_nlp.calibration_config)
    assert result.attempted >= 3 and result.failed == 0
