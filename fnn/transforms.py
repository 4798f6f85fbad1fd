"""fnn's public reverse mode: `vjp`, `grad`, `value_and_grad` and `trace`, bound once to the table
of primitive rules (fnn.ops.primitives.RULES), over the core's `make_transforms`."""

from fnn.autodiff.api import make_transforms, rules
from fnn.ops.primitives import RULES

trace, vjp, value_and_grad, grad = make_transforms(RULES)

__all__ = ["grad", "rules", "trace", "value_and_grad", "vjp"]
