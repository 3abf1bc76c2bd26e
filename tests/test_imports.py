"""The maths never imports transformers, and the lazy top-level API (PEP 562) resolves every public name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mbls_nlp

ROOT = Path(__file__).resolve().parents[1]
# The modules usable from any PyTorch loop (README "The pieces"), and the package itself.
TORCH_ONLY = [
    "mbls_nlp",
    "mbls_nlp.losses",
    "mbls_nlp.calibration",
    "mbls_nlp.temperature",
    "mbls_nlp.plotting",
    "mbls_nlp._checks",
    "mbls_nlp.recipe_defaults",
]


def loaded_after_import(statement: str) -> list[str]:
    """The top-level packages in `sys.modules` after running `statement` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    # This checkout first on the path, whatever copy of the package is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", TORCH_ONLY)
def test_maths_modules_do_not_import_transformers(module):
    assert "transformers" not in loaded_after_import(f"import {module}")


def test_the_check_sees_transformers_when_it_is_imported():
    # The same probe on a module that does need transformers: the check above can fail.
    assert "transformers" in loaded_after_import("import mbls_nlp.calibration_config")
    assert "transformers" in loaded_after_import("from mbls_nlp import CalibrationConfig")


def test_public_names_from_the_losses_do_not_import_transformers():
    loaded = loaded_after_import("from mbls_nlp import MarginLoss, build_loss, TemperatureScaler, calibration_report")
    assert "transformers" not in loaded


@pytest.mark.parametrize("name", mbls_nlp.__all__)
def test_every_public_name_resolves(name):
    value = getattr(mbls_nlp, name)
    assert value is not None
    assert name in dir(mbls_nlp)
    if callable(value):  # the object the submodule defines, not a namesake
        assert value.__module__.startswith("mbls_nlp."), (name, value.__module__)


def test_star_import_and_unknown_names():
    namespace = {}
    exec("from mbls_nlp import *", namespace)
    assert set(mbls_nlp.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="has no attribute 'not_a_name'"):
        mbls_nlp.not_a_name  # noqa: B018
    assert os.path.isfile(os.path.join(mbls_nlp.ECE_METRIC_PATH, "ece.py"))
    assert isinstance(mbls_nlp.__version__, str) and mbls_nlp.__version__
