"""fnn's public reverse mode: `vjp`, `grad`, `value_and_grad` and `trace`, bound once to fnn's
gates (the core's `make_transforms` with the gates layer's array operators and registry)."""

from fnn.autodiff.api import make_transforms
from fnn.ops import registry
from fnn.ops.operators import ArrayTraced

trace, vjp, value_and_grad, grad = make_transforms(box=ArrayTraced, registry=registry)

__all__ = ["grad", "trace", "value_and_grad", "vjp"]
