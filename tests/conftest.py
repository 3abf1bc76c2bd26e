"""Fixtures shared by the test modules: loading a script of recipes/ or benchmarks/, the real 20 Newsgroups files."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEWSGROUPS_DIR = ROOT.parent / "shared" / "data" / "20newsgroups"


@pytest.fixture
def load_script(monkeypatch):
    """`load_script("recipes/text_classification.py")`: the script imported as a module (by path, relative to the
    repository root), registered in `sys.modules` for the test's duration since dataclasses resolve string
    annotations through it, with its folder on `sys.path` (its sibling modules import as when it runs)."""

    def load(path):
        path = ROOT / path
        monkeypatch.syspath_prepend(str(path.parent))  # as `python path` runs it: its folder first on sys.path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def newsgroups(tmp_path_factory):
    """The full 20 Newsgroups train and test files with named labels (skips when the shared data is absent)."""
    if not (NEWSGROUPS_DIR / "train.jsonl.gz").is_file():
        pytest.skip(f"real 20 Newsgroups data not found at {NEWSGROUPS_DIR} (shared data checkout absent)")
    from mbls_nlp.newsgroups import load_newsgroups

    return load_newsgroups(NEWSGROUPS_DIR, cache_dir=tmp_path_factory.mktemp("hf_cache"))
