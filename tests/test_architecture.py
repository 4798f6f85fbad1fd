"""The layering of ARCHITECTURE.md, enforced on every import in fnn/.

The layers and the narrower rules are read from ARCHITECTURE.md's two tables, so the document
and the code cannot drift apart: every import of an fnn module (top-level or inside a function;
`import fnn` and `from fnn import x` count as the package root) must go to the importer's own
layer or a lower one, no two packages may import each other through any chain, and every module
must have a layer. An import inside a function may not hide a circle between modules either:
the modules of fnn/ and their imports at any depth form one graph, and an import inside a
function that lies on a circle of it (an import that, written at the top of its file, would be
a circular import) fails, named with its file, line, function and the circle. And no function
of fnn/ is longer than MAX_FUNCTION_LINES (60).
"""

import ast
import collections
import functools
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fnn"


def _table(section: str) -> list[list[str]]:
    """The rows (cells) of the first table under `## section` in ARCHITECTURE.md."""
    text = (REPO / "ARCHITECTURE.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in body.splitlines()
        if line.startswith("|")
    ]
    return rows[2:]  # past the header and the |---| line


def _names(cell: str) -> list[str]:
    return re.findall(r"fnn(?:\.[A-Za-z_]+)*", cell)


LAYERS = {name: int(row[0]) for row in _table("Layers") for name in _names(row[1])}
NARROW = {row[0]: set(_names(row[1])) for row in _table("Narrower rules")}


def unit(module: str) -> str | None:
    """The entry of LAYERS that `module` belongs to (the longest dotted prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str) -> list[tuple[int, str]]:
    """(line, imported fnn module) of every import in `source`, at any depth."""
    package = module if module in _packages() else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package (and up)
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.append((node.lineno, name))  # `from fnn import x`: the root, as documented
    return [(line, name) for line, name in found if name == "fnn" or name.startswith("fnn.")]


@functools.cache
def _packages() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("__init__.py")}


def violations(module: str, source: str) -> list[str]:
    """The imports of `module` (its `source`) that go against ARCHITECTURE.md."""
    src = unit(module)
    found = []
    for line, target in imports(module, source):
        dst = unit(target)
        if dst is None:
            found.append(f"{module}:{line} imports {target}, which has no layer")
        elif src in NARROW and dst not in NARROW[src]:
            found.append(
                f"{module}:{line} imports {target}: {src} may import only "
                f"{', '.join(sorted(NARROW[src])) or 'nothing from fnn'}"
            )
        elif LAYERS[dst] > LAYERS[src]:
            found.append(
                f"{module}:{line} imports {target}: {src} (layer {LAYERS[src]}) -> "
                f"{dst} (layer {LAYERS[dst]}) goes upward"
            )
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), path


def test_the_tables_are_read():
    assert LAYERS["fnn.errors"] == 1 and LAYERS["fnn.check"] < LAYERS["fnn.train"]
    assert LAYERS["fnn"] == max(LAYERS.values()) and NARROW["fnn.autodiff"] == {
        "fnn.autodiff",
        "fnn.errors",
    }


@pytest.mark.parametrize("module,path", list(_modules()), ids=[m for m, _ in _modules()])
def test_imports_go_down_the_layers(module, path):
    assert unit(module) is not None, f"{path.relative_to(REPO)}: no layer in ARCHITECTURE.md"
    bad = violations(module, path.read_text())
    assert not bad, "\n".join(f"{path.relative_to(REPO)}: {b}" for b in bad)


def test_no_import_circle_between_packages():
    edges = {}
    for module, path in _modules():
        for _, target in imports(module, path.read_text()):
            if unit(target) not in (None, unit(module)):
                edges.setdefault(unit(module), set()).add(unit(target))

    def circle(start, node, seen):
        for nxt in edges.get(node, ()):
            if nxt == start:
                return seen + [nxt]
            if nxt not in seen:
                found = circle(start, nxt, seen + [nxt])
                if found:
                    return found
        return None

    for start in edges:
        found = circle(start, start, [start])
        assert found is None, "import circle: " + " -> ".join(found)


def test_an_upward_import_is_caught():
    """The checker itself: upward, root and narrow-rule imports, in functions too."""
    source = "import jax\nfrom fnn.nn import serial\n\ndef f():\n    from fnn.train import fit\n"
    assert violations("fnn.check.health", source) == [
        "fnn.check.health:5 imports fnn.train: fnn.check (layer 6) -> fnn.train (layer 7) goes "
        "upward"
    ]
    assert violations("fnn.nn.layers", "from fnn import ops\n")[0].endswith(
        "fnn.nn (layer 5) -> fnn (layer 10) goes upward"
    )
    assert "may import only" in violations("fnn.autodiff.tape", "import fnn.pytrees\n")[0]
    assert violations("fnn.cli.train", "import fnn.train.run\nimport fnn\n")[0].endswith(
        "fnn.cli (layer 9) -> fnn (layer 10) goes upward"
    )


# ---- circles hidden by an import inside a function ---------------------------------------------
Edge = collections.namedtuple("Edge", "target line function")  # function: None at the top

# function-level imports that close a circle, known and being removed: (file, imported module)
HIDDEN_CIRCLES_ALLOWED: set = set()  # none: keep it so


def import_edges(module: str, source: str, modules: set[str]) -> list[Edge]:
    """The imports of `module` (its `source`) of the modules in `modules`, each with its line and
    the function it is in (None at the top of the file). `from P import name` imports the module
    P.name where there is one, else P; `import fnn.x.y` imports fnn.x.y; a parent package that
    Python runs first is not an edge (every package's submodules import their siblings)."""
    package = module if module in _packages() else module.rsplit(".", 1)[0]
    found = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, function or getattr(child, "name", "<lambda>"))
                continue
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module
                targets = [
                    f"{name}.{a.name}" if f"{name}.{a.name}" in modules else name
                    for a in child.names
                ]
            else:
                targets = []
            found.extend(
                Edge(t, child.lineno, function) for t in dict.fromkeys(targets) if t in modules
            )
            visit(child, function)

    visit(ast.parse(source), None)
    return found


def hidden_circles(sources: dict[str, str], files: dict[str, str] | None = None) -> list[tuple]:
    """(file, imported module, message) of every import inside a function of `sources` (module ->
    source) that lies on a circle of the module graph (imports at any depth counted). `files`
    names each module's file in the messages (default: the module's name)."""
    files = files or {m: m for m in sources}
    graph = {m: import_edges(m, s, set(sources)) for m, s in sources.items()}

    def path(start, goal):
        """The shortest chain of edges from `start` to `goal`, or None (breadth first)."""
        came = {start: None}
        queue = collections.deque([start])
        while queue:
            node = queue.popleft()
            for edge in graph.get(node, ()):
                if edge.target not in came:
                    came[edge.target] = (node, edge)
                    if edge.target == goal:
                        chain, at = [], goal
                        while came[at]:
                            chain.append(came[at])
                            at = came[at][0]
                        return chain[::-1]
                    queue.append(edge.target)
        return None

    found = []
    for module, edges in graph.items():
        for edge in edges:
            if edge.function is None:
                continue
            back = [] if edge.target == module else path(edge.target, module)
            if back is None:
                continue
            chain = "; ".join(
                f"{m} -> {e.target} ({files[m]}:{e.line}"
                f"{', in ' + e.function + '()' if e.function else ''})"
                for m, e in back
            )
            found.append(
                (
                    files[module],
                    edge.target,
                    f"{files[module]}:{edge.line}: {edge.function}() imports "
                    f"{edge.target} inside the function, closing a circle of imports: "
                    f"{module} -> {edge.target} (here)"
                    + (f"; {chain}" if chain else "")
                    + ". At the top of the file it would be a circular import; pass "
                    "what it needs in instead",
                )
            )
    return found


def test_no_circle_hidden_by_an_import_inside_a_function():
    sources, files = {}, {}
    for module, path in _modules():
        sources[module], files[module] = path.read_text(), str(path.relative_to(REPO))
    found = hidden_circles(sources, files)
    bad = [
        message for file, target, message in found if (file, target) not in HIDDEN_CIRCLES_ALLOWED
    ]
    assert not bad, "\n".join(bad)
    stale = HIDDEN_CIRCLES_ALLOWED - {(file, target) for file, target, _ in found}
    assert not stale, f"allowed but no longer there (remove them from the list): {stale}"


def test_a_hidden_circle_is_caught():
    """The checker itself: a function-level import that closes a circle through a package's
    __init__, named with its line, function and chain; one that closes none passes."""
    sources = {
        "fnn.a": "from fnn.a import b\n",
        "fnn.a.b": "import jax\n\ndef rules():\n    from fnn.a import TABLE\n    return TABLE\n",
        "fnn.c": "def f():\n    from fnn.a import b\n",
    }
    assert [message for _, _, message in hidden_circles(sources)] == [
        "fnn.a.b:4: rules() imports fnn.a inside the function, closing a circle of imports: "
        "fnn.a.b -> fnn.a (here); fnn.a -> fnn.a.b (fnn.a:1). At the top of the file it would "
        "be a circular import; pass what it needs in instead"
    ]


# ---- function length ---------------------------------------------------------------------------
MAX_FUNCTION_LINES = 60  # a def's lines, its docstring and nested functions included


def function_lengths(source: str) -> list[tuple[str, int, int]]:
    """(name, line, lines) of every function of `source`, nested ones too: from its `def` to its
    last line (decorators left out), docstring included."""
    return [
        (node.name, node.lineno, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_no_function_is_longer_than_60_lines():
    bad = [
        f"{path.relative_to(REPO)}:{line}: {name} is {lines} lines long (at most "
        f"{MAX_FUNCTION_LINES}): split it into functions that each say one thing"
        for _, path in _modules()
        for name, line, lines in function_lengths(path.read_text())
        if lines > MAX_FUNCTION_LINES
    ]
    assert not bad, "\n".join(bad)


def test_function_lengths_are_counted_from_the_def():
    source = "@decorator\ndef f(x):\n    '''Doc.'''\n\n    def g():\n        pass\n    return x\n"
    assert function_lengths(source) == [("f", 2, 6), ("g", 5, 2)]
