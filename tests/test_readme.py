"""README.md never rots: its Python examples run, its recipe commands parse, its test command is the one CI runs."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RECIPES_README = (ROOT / "recipes" / "README.md").read_text()


def code_blocks(language: str, text: str = README) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write to ./out
    blocks = code_blocks("python")
    assert len(blocks) >= 2
    for block in blocks:
        namespace = {"__name__": "readme_example"}
        exec(compile(block, "README.md", "exec"), namespace)
        if "CalibrationTrainer(" in block:
            metrics = namespace["metrics"]
            for key in ("eval_accuracy", "eval_ece", "eval_ts_ece", "eval_loss_margin"):
                assert key in metrics, key
            assert namespace["trainer"].temperature is not None
        if "evaluate.load" in block:
            results = namespace["results"]
            # the first seven keys, then those of issue 15
            assert sorted(results) == sorted(
                ["accuracy", "aece", "brier", "cece", "ece", "mce", "nll"]
                + ["ece_over", "ece_under", "dsce", "dce", "smece"]
            )
            # confidences 0.9 (right), 0.7 (right), 0.6 (class 0, wrong) in three bins: (0.1 + 0.3 + 0.6) / 3
            assert results["ece"] == pytest.approx(1.0 / 3.0)


def test_readme_test_command_is_what_ci_runs():
    test_commands = [line for block in code_blocks("bash") for line in block.splitlines() if "pytest" in line]
    assert test_commands == ["python -m pytest tests"]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert ci_lines[-1] == test_commands[0]
    assert 'pip install -q -e ".[dev]"' in (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in README


def recipe_commands() -> list[list[str]]:
    """`[script, *arguments]` of every `accelerate launch` / `python recipes/...` command in both READMEs."""
    commands = []
    for block in code_blocks("bash") + code_blocks("bash", RECIPES_README):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command)
            if words[:2] == ["accelerate", "launch"] or words[:1] == ["python"]:
                scripts = [i for i, word in enumerate(words) if word.startswith("recipes/") and word.endswith(".py")]
                if scripts:
                    commands.append(words[scripts[0] :])
    return commands


def test_readme_launch_configs_exist():
    for block in code_blocks("bash", RECIPES_README):
        for path in re.findall(r"--config_file (\S+)", block):
            assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("words", recipe_commands(), ids=lambda words: " ".join(words)[:60])
def test_readme_recipe_commands_parse(words, load_script):
    script = ROOT / words[0]
    assert script.is_file(), script
    recipe = load_script(words[0])
    arguments = words[1:]
    if script.name == "compare_losses.py":  # its own flags, then the recipe's after `--`
        args, arguments = recipe.parse_args(arguments)
        recipe = load_script(f"recipes/{args.recipe}.py")
        arguments = [*arguments, "--output_dir=unused"]
    recipe.parse_args(arguments)  # every flag exists, every value has the right type and passes validation


def test_readme_loss_lists_match_the_registry():
    from mbls_nlp.hparam_search import describe_default_grids
    from mbls_nlp.losses import LOSS_NAMES

    def words(text: str) -> str:
        return " ".join(text.split())

    listed = ", ".join(f"`{name}`" for name in LOSS_NAMES)
    assert f"`build_loss(name, **kwargs)` for {listed}" in words(README)
    assert f"default grids, per loss and config field: {describe_default_grids()};" in words(RECIPES_README)
