"""The `>>>` examples of every public module run (modules with their own doctest test are listed there)."""

import doctest
import importlib

import pytest

MODULES = [
    "mbls_nlp.losses",
    "mbls_nlp.loss_adapter",
    "mbls_nlp.data",
    "mbls_nlp.newsgroups",
    "mbls_nlp.models.text_cnn.configuration_text_cnn",
    "mbls_nlp.models.text_cnn.modeling_text_cnn",
    "mbls_nlp.models.text_cnn.tokenization_text_cnn",
    "mbls_nlp.models.cifar_resnet.configuration_cifar_resnet",
    "mbls_nlp.models.cifar_resnet.modeling_cifar_resnet",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
