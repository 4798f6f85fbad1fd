"""MkDocs hooks (mkdocs.yml: `hooks`), run by `mkdocs build`:

- `<!-- fnn:train-options -->` in a page becomes the table of every `python -m fnn train`
  option, generated from the command's own argparse parser (fnn.cli.build_parser), so the page
  cannot fall behind `--help`;
- `<!-- fnn:rule-library -->` becomes the table of the backward-rule library, generated from
  its one declaration (fnn.ops.rulebook.LIBRARY): name, gates, options, formula, paper, and
  whether `--rule` takes it;
- `<!-- no-run: REASON -->` before a code block (tests/test_docs_examples.py skips that block)
  becomes a visible note with the reason;
- a public name of fnn, fnn.nn, fnn.train, fnn.check or fnn.ops (their `__all__`) without a
  docstring is a warning, which `mkdocs build --strict` turns into a failed build
  (tests/test_docstrings.py checks the same without MkDocs).

Nothing here imports MkDocs, so the tests can import it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import types

log = logging.getLogger("mkdocs.hooks.fnn")

PUBLIC_MODULES = ("fnn", "fnn.nn", "fnn.train", "fnn.check", "fnn.ops")
NO_RUN = re.compile(r"^<!-- no-run: (.+?) -->[ \t]*$", re.M)
TRAIN_OPTIONS = "<!-- fnn:train-options -->"
OPS_API = "<!-- fnn:ops-api -->"
RULE_LIBRARY = "<!-- fnn:rule-library -->"


def undocumented() -> list[str]:
    """The public names (each module's `__all__`) whose object has no docstring of its own: a
    module, function, class or gate without `__doc__`; a data attribute (a dict, a tuple) without
    a docstring after its assignment (the string literal griffe reads; checked with griffe when
    it is installed, the `docs` extra)."""
    missing = []
    package = None
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in module.__all__:
            obj = getattr(module, attr)
            if isinstance(obj, (types.ModuleType, type, types.FunctionType)) or (
                callable(obj) and getattr(obj, "__doc__", None) is not type(obj).__doc__
            ):
                if not (getattr(obj, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{attr}")
                continue
            try:
                import griffe
            except ImportError:
                continue
            if package is None:
                package = griffe.load("fnn", resolve_aliases=True, resolve_external=False)
            member = package if name == "fnn" else package[name[len("fnn.") :]]
            docstring = member[attr].docstring
            if docstring is None or not docstring.value.strip():
                missing.append(f"{name}.{attr}")
    return missing


def train_options_markdown() -> str:
    """Every option of `python -m fnn train`, one table per topic of its --help, from the parser
    itself: flag, value (choices or metavar) and help."""
    from fnn.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train = sub.choices["train"]
    out = []
    for group in train._action_groups:
        rows = []
        for action in group._group_actions:
            if action.help == argparse.SUPPRESS:
                continue
            flags = ", ".join(f"`{f}`" for f in action.option_strings)
            if action.choices is not None:
                value = " \\| ".join(f"`{c}`" for c in action.choices)
            elif action.nargs == 0:
                value = ""
            else:
                value = f"`{action.metavar or action.dest.upper()}`"
            text = (action.help or "") % {**vars(action), "prog": train.prog}
            rows.append(f"| {flags} | {value} | {_cell(text)} |")
        if rows:
            out += [
                f"**{group.title}**",
                "",
                "| option | value | what it does |",
                "|---|---|---|",
                *rows,
                "",
            ]
    return "\n".join(out)


def ops_api_markdown() -> str:
    """The API of fnn.ops, family by family: fnn.ops.__all__ is computed from its registry, which
    reading the source cannot follow, so each family module is listed with its gates (the names
    fnn.ops exports; `round` is rulebook's `round_`), after the lecture's names of JAX's
    functions (fnn.ops.aliases)."""
    from fnn import ops

    exported = {id(getattr(ops, name)) for name in ops.__all__}
    out = []
    families = {"the lecture's names of JAX's functions": ops.aliases, **ops.FAMILIES}
    for family, module in families.items():
        members = sorted(
            name
            for name, obj in vars(module).items()
            if id(obj) in exported and not isinstance(obj, types.ModuleType)
        )
        out += [
            f"## {family}",
            "",
            f"::: {module.__name__}",
            "    options:",
            "      show_root_heading: false",
            "      heading_level: 3",
            f"      members: [{', '.join(members)}]",
            "",
        ]
    return "\n".join(out)


def rule_library_markdown() -> str:
    """The backward-rule library, one row per entry of fnn.ops.rulebook.LIBRARY (the list
    `--rule` and `gradcheck` iterate too): how it is made, the gates it is for, its formula
    and paper (of the rule as the checkers first judge it), and `--rule`'s spelling."""
    from fnn.ops import rulebook

    rows = [
        "| rule | for | formula (as the checkers judge it) | from | `--rule` |",
        "|---|---|---|---|---|",
    ]
    escape = lambda text: " ".join(text.split()).replace("|", "\\|")
    for entry in rulebook.LIBRARY:
        args = ([entry.needs] if entry.needs else []) + list(entry.options)
        made = (
            f"`{entry.name}({', '.join(args)})`"
            if args or not isinstance(entry.rule, rulebook.Rule)
            else f"`{entry.name}`"
        )
        gates = ", ".join(f"`{g}`" for g in entry.gates) or "any gate"
        gates += " (only)" if entry.only else ""
        example = entry.example
        if entry.refused:
            spec = "refused: " + entry.refused.split(". ")[0]
        else:
            target = entry.gates[0] if entry.only else "GATE"
            opts = ",".join(f"{o}=..." for o in entry.options)
            spec = f"`{target}={entry.name}" + (f":{opts}" if opts else "") + "`"
        rows.append(
            f"| {made} | {gates} | {escape(example.formula)} | "
            f"{escape(example.paper) or '-'} | {escape(spec)} |"
        )
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text[:1].upper() + text[1:] if text else text


def on_config(config, **kwargs):
    for name in undocumented():
        log.warning(f"public name without a docstring: {name}")
    return config


def on_page_markdown(markdown, page, config, files, **kwargs):
    if TRAIN_OPTIONS in markdown:
        markdown = markdown.replace(TRAIN_OPTIONS, train_options_markdown())
    if OPS_API in markdown:
        markdown = markdown.replace(OPS_API, ops_api_markdown())
    if RULE_LIBRARY in markdown:
        markdown = markdown.replace(RULE_LIBRARY, rule_library_markdown())
    return NO_RUN.sub(lambda m: f"*Not run by the docs tests: {m.group(1)}*\n", markdown)
