"""Every public name of fnn, fnn.nn, fnn.train, fnn.check and fnn.ops (each module's `__all__`)
has a docstring: the API reference (docs/api/, mkdocstrings) is made of them. `mkdocs build
--strict` fails on the same check (docs/hooks.py), which this test runs without MkDocs."""

import ast
import builtins
import importlib.util
import inspect
import textwrap
import types
from pathlib import Path

import pytest

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


# --- Google-style sections (issue 27, item 3) -------------------------------------------------
# Every public function and class of fnn, fnn.check, fnn.nn, fnn.train and fnn.ops (their
# `__all__`; a gate of fnn.ops is held by its forward's docstring and signature) has a
# Google-style docstring, parsed here with griffe (the parser mkdocstrings renders the API
# pages with): a one-line summary, `Args:` naming exactly the parameters of its signature (a
# class: of its constructor; a dataclass may name its fields under `Attributes:`), `Returns:`
# (or `Yields:`) when it returns a value, and `Raises:` entries that name exception classes.
# fnn.cli is not yet held to this.


GOOGLE_NAMESPACES = ("fnn", "fnn.check", "fnn.nn", "fnn.train", "fnn.ops")

# name -> why it is not held to the rules above. Keep it short.
EXEMPT: dict[str, str] = {}


def _public_callables():
    found = {}
    for namespace in GOOGLE_NAMESPACES:
        module = importlib.import_module(namespace)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if isinstance(obj, types.ModuleType) or not callable(obj):
                continue  # modules and data (a dict, a tuple): documented by their own page
            found[f"{namespace}.{attr}"] = obj
    return found


PUBLIC = _public_callables()


def _sections(obj) -> dict:
    griffe = pytest.importorskip("griffe", reason="the docs extra (pip install -e '.[docs]')")

    text = inspect.getdoc(obj) or ""
    parsed = griffe.Docstring(text).parse("google", warnings=False)
    out = {}
    for section in parsed:
        out.setdefault(section.kind.value, []).extend(
            section.value if isinstance(section.value, list) else [section.value]
        )
    return out


def _parameters(obj) -> list[str]:
    """The names of the parameters a caller passes: the signature's (a class: its
    constructor's), without a leading underscore (private) and without `self`."""
    try:
        signature = inspect.signature(obj)
    except ValueError:  # a class with a builtin constructor (an exception without __init__)
        return []
    return [name for name, p in signature.parameters.items() if not name.startswith("_")]


def _returns_value(fn) -> bool:
    """Whether calling `fn` gives a value: its return annotation, or else a `return <value>`
    (or `yield <value>`) in its own body (not in a nested function)."""
    annotation = inspect.signature(fn).return_annotation
    if annotation is not inspect.Signature.empty:
        return annotation not in (None, "None")
    if getattr(fn, "__wrapped__", None) is not None:
        return True  # a decorator's wrapper, e.g. contextlib.contextmanager's
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]

    def own(n):
        for child in ast.iter_child_nodes(n):
            if not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
            ):
                yield child
                yield from own(child)

    return any(
        isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom))
        and n.value is not None
        and not (isinstance(n.value, ast.Constant) and n.value.value is None)
        for n in own(node)
    )


def _exception(name: str) -> bool:
    """Whether `name` (`TypeError`, `fnn.GateError`, `GateError`, `fnn.train.DataError`) is an
    exception class."""
    import fnn
    import fnn.errors
    import fnn.train

    last = name.rsplit(".", 1)[-1]
    obj = next(
        (
            getattr(space, last)
            for space in (builtins, fnn, fnn.errors, fnn.train)
            if hasattr(space, last)
        ),
        None,
    )
    return isinstance(obj, type) and issubclass(obj, BaseException)


def test_the_google_style_namespaces_have_public_callables():
    assert len(PUBLIC) > 80 and "fnn.grad" in PUBLIC and "fnn.nn.Dense" in PUBLIC
    assert "fnn.train.fit" in PUBLIC and "fnn.ops.relu" in PUBLIC  # a gate: its forward's doc
    assert not set(EXEMPT) - set(PUBLIC), "an exemption for a name that is not public"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_is_google_style(name):
    if name in EXEMPT:
        pytest.skip(EXEMPT[name])
    obj = PUBLIC[name]
    text = inspect.getdoc(obj) or ""
    lines = text.splitlines()
    assert lines and lines[0].strip(), f"{name}: no docstring"
    assert len(lines) == 1 or not lines[1].strip(), (
        f"{name}: the summary is not one line followed by a blank line: {lines[:2]}"
    )
    sections = _sections(obj)
    args = [p.name.lstrip("*") for p in sections.get("parameters", [])]
    attributes = [a.name for a in sections.get("attributes", [])]
    params = _parameters(obj)
    missing = [
        p for p in params if p not in args and not (isinstance(obj, type) and p in attributes)
    ]
    assert not missing, f"{name}: parameters not documented under Args: {missing}"
    unknown = [a for a in args if a not in params]
    assert not unknown, f"{name}: Args: documents what is not a parameter: {unknown}"
    assert len(args) == len(set(args)), f"{name}: a parameter documented twice: {args}"
    if not isinstance(obj, type) and _returns_value(obj):
        assert sections.get("returns") or sections.get("yields"), (
            f"{name}: returns a value but has no Returns: (or Yields:) section"
        )
    for raised in sections.get("raises", []):
        assert _exception(str(raised.annotation)), (
            f"{name}: Raises: names {raised.annotation!r}, not an exception class"
        )
