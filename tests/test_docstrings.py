"""Every public name of fnn, fnn.nn, fnn.train, fnn.check and fnn.ops (each module's `__all__`)
has a docstring: the API reference (docs/api/, mkdocstrings) is made of them. `mkdocs build
--strict` fails on the same check (docs/hooks.py), which this test runs without MkDocs."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _hooks():
    spec = importlib.util.spec_from_file_location("fnn_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_has_a_docstring():
    assert _hooks().undocumented() == []


def test_the_train_options_page_is_generated_from_the_parser():
    """Every option of `python -m fnn train` is in the generated table of docs/training.md."""
    from fnn.cli import build_parser

    table = _hooks().train_options_markdown()
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = [f for a in train._actions for f in a.option_strings if f not in ("-h", "--help")]
    assert flags and all(f"`{f}`" in table for f in flags)
    assert "<!-- fnn:train-options -->" in (ROOT / "docs" / "training.md").read_text()
