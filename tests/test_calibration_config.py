import pytest
from transformers import HfArgumentParser, TrainingArguments

from mbls_nlp import CalibrationConfig
from mbls_nlp.losses import LOSS_NAMES, build_loss


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
        ({"calibration_n_bootstrap": -1}, ValueError, ["calibration_n_bootstrap", ">= 0"]),
        ({"calibration_n_bootstrap": 2.5}, TypeError, ["calibration_n_bootstrap", "integer"]),
        ({"calibration_confidence": 1.0}, ValueError, ["calibration_confidence", "(0, 1)"]),
        ({"calibration_confidence": 95}, ValueError, ["calibration_confidence", "(0, 1)"]),
        ({"calibration_confidence": "high"}, TypeError, ["calibration_confidence"]),
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


# ---- the loss registry drives the config (issue 12) ----


def test_every_registry_field_exists_with_the_loss_class_default(tmp_path):
    import dataclasses
    import inspect

    from mbls_nlp.losses import LOSS_REGISTRY

    fields = {f.name: f for f in dataclasses.fields(CalibrationConfig)}
    for name, spec in LOSS_REGISTRY.items():
        signature = inspect.signature(spec.cls).parameters
        for config_field, keyword in spec.hparams.items():
            assert config_field in fields, (name, config_field)
            assert fields[config_field].default == signature[keyword].default, (name, config_field)
            assert fields[config_field].metadata["help"], config_field
        config = make(tmp_path, loss_type=name)
        assert set(config.loss_kwargs()) == {"ignore_index", *spec.hparams.values()}
        assert type(build_loss(name, **config.loss_kwargs())) is spec.cls
    # the paper defaults, by hand
    assert (make(tmp_path).ls_epsilon, make(tmp_path).focal_gamma) == (0.05, 3.0)
    assert (make(tmp_path).ecp_beta, make(tmp_path).mmce_weight, make(tmp_path).alpha_step_size) == (0.1, 1.0, 100)


def test_a_new_registry_entry_needs_no_other_change(tmp_path, monkeypatch):
    """A throwaway loss registered in `LOSS_REGISTRY` alone is built by the config and searched by its grid."""
    from mbls_nlp import losses
    from mbls_nlp.hparam_search import parse_search_grid

    class HalfFocal(losses.FocalLoss):  # a stand-in loss whose hyper-parameter reuses an existing config field
        def __init__(self, gamma: float = 1.5, *, ignore_index: int = -100, reduction: str = "mean"):
            super().__init__(gamma, ignore_index=ignore_index, reduction=reduction)

    spec = losses.LossSpec("halffocal", HalfFocal, {"focal_gamma": "gamma"}, {"focal_gamma": (0.5, 1.5)})
    monkeypatch.setitem(losses.LOSS_REGISTRY, "halffocal", spec)
    config = make(tmp_path, loss_type="halffocal", focal_gamma=2.0, loss_ignore_index=7)
    assert config.loss_kwargs() == {"ignore_index": 7, "gamma": 2.0}
    loss = build_loss(config.loss_type, **config.loss_kwargs())
    assert type(loss) is HalfFocal and (loss.gamma, loss.ignore_index) == (2.0, 7)
    assert parse_search_grid(None, "halffocal") == {"focal_gamma": (0.5, 1.5)}
    assert parse_search_grid("focal_gamma=4", "halffocal") == {"focal_gamma": (4.0,)}
    with pytest.raises(ValueError, match="gamma"):
        make(tmp_path, loss_type="halffocal", focal_gamma=-1.0)
    with pytest.raises(ValueError, match="halffocal"):  # the unknown-name error lists the new entry too
        make(tmp_path, loss_type="hinge")


def test_docstring_lists_every_loss_and_every_default():
    import dataclasses
    import re

    doc = CalibrationConfig.__doc__
    listed = re.search(r"one of `mbls_nlp.losses.LOSS_NAMES`:(.*?)\.\n", doc, flags=re.DOTALL).group(1)
    assert re.findall(r"`(\w+)`", listed) == list(LOSS_NAMES)
    own = [f for f in dataclasses.fields(CalibrationConfig) if f.name not in TrainingArguments.__dataclass_fields__]
    assert {"loss_type", "margin", "mmce_weight", "loss_ignore_index", "save_reliability_diagrams"} <= {
        f.name for f in own
    }
    for f in own:
        default = f'"{f.default}"' if isinstance(f.default, str) else f"{f.default}"
        kind = type(f.default).__name__
        assert f"{f.name} (`{kind}`, *optional*, defaults to `{default}`):" in doc, f.name
