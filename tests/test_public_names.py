"""Every public name of fnn is used by something: a name in the `__all__` of a module of fnn/ is
used when it occurs as an identifier (a Python name token, not inside a comment or a string) in

- a module of fnn/ other than the one that defines it and other than the packages' `__init__.py`
  files (a table of contents lists names; it does not use them),
- a file of tests/, scripts/ or docs/ (a test of what it does, a script that calls it), or
- a code span or code block of README.md or of a page of docs/ (an example shown to users is a
  use; docs/api/, whose pages name modules for mkdocstrings to expand, does not count).

A public name that fails this is used by nothing: give it a use (a test of what it promises) or
drop it from `__all__`. Plain text search: fast, and nothing is imported but fnn itself.
"""

import ast
import functools
import importlib
import inspect
import io
import pathlib
import re
import tokenize

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fnn"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _top_level_names(path: pathlib.Path) -> frozenset[str]:
    """The names `path` binds at its top level (def, class, assignment)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return frozenset(names)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if "__all__" in _top_level_names(p))


def identifiers(source: str) -> set[str]:
    """The name tokens of Python `source` (comments and strings left out)."""
    return {
        t.string
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.NAME
    }


def code_words(markdown: str) -> set[str]:
    """The words inside the code blocks and code spans of `markdown`."""
    blocks = re.findall(r"```.*?```", markdown, re.S)
    spans = re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", "", markdown, flags=re.S))
    return {w for text in blocks + spans for w in re.findall(r"\w+", text)}


@functools.cache
def fnn_identifiers() -> dict[pathlib.Path, set[str]]:
    """The identifiers of each module of fnn/, __init__.py files left out."""
    return {p: identifiers(p.read_text()) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


@functools.cache
def outside_identifiers() -> frozenset[str]:
    """The identifiers of tests/, scripts/ and docs/'s Python, and the code words of the
    README and docs/'s pages (docs/api/ left out)."""
    words = set()
    for folder in ("tests", "scripts", "docs"):
        for p in (REPO / folder).rglob("*.py"):
            words |= identifiers(p.read_text())
    for p in [REPO / "README.md", *(REPO / "docs").rglob("*.md")]:
        if "api" not in p.relative_to(REPO / "docs" if p.name != "README.md" else REPO).parts:
            words |= code_words(p.read_text())
    return frozenset(words)


def defining_files(module: str, name: str) -> set[pathlib.Path]:
    """The files that define `name` of `module`: the module of a function or class, else the
    files of the module's package that bind the name at their top level."""
    obj = getattr(importlib.import_module(module), name)
    home = (
        getattr(obj, "__module__", None)
        if (inspect.isfunction(obj) or inspect.isclass(obj))
        else None
    )
    if inspect.ismodule(obj):
        return {pathlib.Path(obj.__file__)}
    if home and home.split(".")[0] == "fnn":
        return {pathlib.Path(importlib.import_module(home).__file__)}
    folder = pathlib.Path(importlib.import_module(module).__file__).parent
    return {p for p in folder.rglob("*.py") if name in _top_level_names(p)}


def unused(module: str) -> list[str]:
    """The names of `module`'s __all__ that nothing uses (see the module's docstring)."""
    found = []
    for name in importlib.import_module(module).__all__:
        if name in outside_identifiers():
            continue
        homes = defining_files(module, name)
        if not any(name in words for path, words in fnn_identifiers().items() if path not in homes):
            found.append(name)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_is_used(module):
    names = unused(module)
    assert not names, (
        f"{module}.__all__ holds names nothing uses (no module of fnn/ but their "
        f"own, no test, script or example of the docs): {names}; give each a use "
        f"or drop it from __all__"
    )


def test_the_public_modules_are_all_there():
    assert {
        "fnn",
        "fnn.nn",
        "fnn.train",
        "fnn.check",
        "fnn.ops",
        "fnn.autodiff",
        "fnn.bench",
    } <= set(MODULES)


def test_a_name_only_listed_is_unused():
    """A comment, a string or a table of contents is not a use; code and code spans are."""
    assert identifiers("# check_gates\nx = 'check_gates'\ny = check_gates\n") == {
        "x",
        "y",
        "check_gates",
    }
    assert "check_gates" not in identifiers("# check_gates\nx = 'check_gates'\n")
    assert code_words("a check_gates b `fnn.check.check_gates(g)`\n```\nfit()\n```") == {
        "fnn",
        "check",
        "check_gates",
        "g",
        "fit",
    }
