from types import MappingProxyType
from fnn.autodiff.registry import collect_gates
from fnn.ops import elementwise
from fnn.ops.elementwise import (abs, add, astype, divide, exp, log, maximum, minimum, multiply,
                                 negative, power, sqrt, subtract, where)
FAMILIES = {"elementwise": elementwise}
registry = MappingProxyType(collect_gates(*FAMILIES.values()))
