"""fnn's gradients never come from JAX's autodiff: no module of fnn/autodiff or fnn/ops calls
or imports jax.grad, vjp, jvp, linearize, custom_vjp/custom_jvp or the jacobian transforms (read
from the source, so a new module is covered as soon as it exists)."""

import ast
import pathlib

import fnn

ROOT = pathlib.Path(fnn.__file__).parent
AUTODIFF = {
    "grad",
    "value_and_grad",
    "vjp",
    "jvp",
    "linearize",
    "linear_transpose",
    "custom_vjp",
    "custom_jvp",
    "jacfwd",
    "jacrev",
    "hessian",
}


def _uses(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in AUTODIFF
            and isinstance(node.value, ast.Name)
            and node.value.id == "jax"
        ):
            yield node.lineno, f"jax.{node.attr}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jax"):
            for alias in node.names:
                if alias.name in AUTODIFF or (node.module or "").startswith(
                    ("jax.interpreters.ad", "jax._src.interpreters.ad")
                ):
                    yield node.lineno, f"from {node.module} import {alias.name}"


def test_no_jax_autodiff_in_the_core_or_the_rules():
    found = [
        f"{p.relative_to(ROOT)}:{line}: {what}"
        for package in ("autodiff", "ops")
        for p in sorted((ROOT / package).rglob("*.py"))
        for line, what in _uses(p)
    ]
    assert not found, found
