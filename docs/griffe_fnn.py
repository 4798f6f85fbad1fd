"""A griffe extension for the API reference (mkdocs.yml: mkdocstrings' `extensions`).

fnn's four transforms are made by one call, `trace, vjp, value_and_grad, grad =
make_transforms(...)` (fnn/transforms.py), so reading the source (griffe's static analysis) sees
four attributes without a signature or a docstring. This extension replaces each with a function
built from the runtime object: its signature and its docstring, as `help(fnn.grad)` shows them.
"""

from __future__ import annotations

import importlib
import inspect

import griffe

# the objects made at run time, by their path in the source
DYNAMIC = (
    "fnn.transforms.trace",
    "fnn.transforms.vjp",
    "fnn.transforms.value_and_grad",
    "fnn.transforms.grad",
)

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
    inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
    inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
    inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
}


def _function(path: str, like: griffe.Docstring | None = None) -> griffe.Function:
    """The function at `path`, its docstring parsed as `like` is (the style mkdocs.yml sets)."""
    module, name = path.rsplit(".", 1)
    obj = getattr(importlib.import_module(module), name)
    params = griffe.Parameters(
        *(
            griffe.Parameter(
                p.name,
                kind=_KINDS[p.kind],
                default=None if p.default is p.empty else repr(p.default),
            )
            for p in inspect.signature(obj).parameters.values()
        )
    )
    function = griffe.Function(name, parameters=params)
    function.docstring = griffe.Docstring(
        inspect.getdoc(obj) or "",
        parent=function,
        parser=like.parser if like else None,
        parser_options=like.parser_options if like else None,
    )
    return function


class RuntimeTransforms(griffe.Extension):
    """Give fnn.transforms' trace, vjp, value_and_grad and grad their runtime signature and
    docstring."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "fnn":
            return
        for path in DYNAMIC:
            module, name = path.rsplit(".", 1)
            parent = pkg.get_member(module.split(".", 1)[1])
            function = _function(path, like=pkg.docstring)
            function.lineno = parent.members[name].lineno if name in parent.members else None
            parent.set_member(name, function)
