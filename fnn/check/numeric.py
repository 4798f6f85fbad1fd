"""Numerical gradients and the relative error every checker reports: the one place for both.

    rel_error(a, b)                  CS231n relative error of two arrays (or pytrees of them)
    differences(F, x, index, h)      F stepped up and down along single elements of x
    numerical_vjp(f, args, ct)       central differences of sum(f(*args) * ct), every element

check_grads (sampled elements, a step chosen from the dtype, kinks), the gate checker (every
element of every test case) and the tests all take their finite differences through
`differences`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.autodiff import is_float


def _leaves(tree) -> list:
    """The array leaves of a pytree, without float0 ones (they carry no value)."""
    return [
        x for x in jax.tree_util.tree_leaves(tree) if getattr(x, "dtype", None) != jax.dtypes.float0
    ]


def rel_error(a, b, *, special: bool = False):
    """CS231n-style relative error over whole arrays: max|a - b| / (max|a| + max|b|).

    Normalising by the arrays' magnitudes (not elementwise) keeps entries that are both ~0 from
    reporting rounding noise as a 100% error. Two all-zero arrays have error 0. Without
    `special`, a NaN anywhere gives NaN, which passes no tolerance.

    Args:
        a: an array, or a pytree of arrays (the maxima are then taken over all leaves together).
        b: the same, of the same shapes and structure.
        special: at kinks and special points, where JAX's own value may be NaN or infinite: NaNs
            in the same places and equal infinities count as equal (and are left out of the
            maxima); a NaN or an infinity facing anything else is an infinite error.

    Returns:
        The error. NumPy arrays and concrete JAX arrays give a Python float, computed in float64.
        JAX tracers (inside jit, vmap, grad, lax.cond) give a JAX scalar, so the measure runs in
        compiled code.

    Raises:
        ValueError: `a` and `b` have different numbers of leaves, or leaves of different shapes.
    """
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"rel_error: {len(la)} arrays vs {len(lb)}")
    for x, y in zip(la, lb):
        if np.shape(x) != np.shape(y):
            raise ValueError(f"rel_error: shapes differ, {np.shape(x)} vs {np.shape(y)}")
    pairs = [(x, y) for x, y in zip(la, lb) if np.size(x)]
    if any(isinstance(v, jax.core.Tracer) for pair in pairs for v in pair):
        return _relative(jnp, pairs, special)
    return float(_relative(np, [(_wide(x), _wide(y)) for x, y in pairs], special))


def _wide(x):
    """x in float64, or complex128 where it is complex (keeping its imaginary part)."""
    return np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)


def _relative(xp, pairs, special=False):
    """rel_error's formula with the array module xp (numpy or jax.numpy)."""
    if not pairs:
        return xp.asarray(0.0)
    if special:
        mismatch, finite = [], []
        for x, y in pairs:
            same = (xp.isnan(x) & xp.isnan(y)) | ((x == y) & xp.isinf(x))
            odd = (~xp.isfinite(x) | ~xp.isfinite(y)) & ~same
            mismatch.append(xp.any(odd))
            finite.append((xp.where(same | odd, 0.0, x), xp.where(same | odd, 0.0, y)))
        err = _relative(xp, finite)
        return xp.where(xp.any(xp.stack(mismatch)), xp.inf, err)

    def largest(arrays):
        return xp.max(xp.stack([xp.max(xp.abs(v)) for v in arrays]))

    diff = largest([x - y for x, y in pairs])
    scale = largest([x for x, _ in pairs]) + largest([y for _, y in pairs])
    return xp.where(scale > 0, diff / xp.where(scale > 0, scale, 1.0), diff)


def differences(F, x, index, h, *, vectorize: bool = True, structure: str | None = None):
    """F stepped up and down along single elements of x: the finite differences of fnn.

    F: a scalar function of an array shaped like x. index: flat indices of the elements to
    step, h: the step (a scalar, or one per index). Returns (f_plus, f_minus, h_plus,
    h_minus), one entry per index, where h_plus = (x + h) - x and h_minus = x - (x - h) are the
    steps actually representable in x's dtype, the ones a difference must be divided by:

        central  (f_plus - f_minus) / (h_plus + h_minus)
        one-sided  (f_plus - F(x)) / h_plus,  (F(x) - f_minus) / h_minus

    structure (a name of fnn.autodiff.gate.STRUCTURES, for an x that has it): element k is
    stepped along its direction within the structure instead (`direction`), so F is only
    evaluated at inputs that keep it; the central difference then measures the gradient
    projected onto the structure (`project`). Steps are exact there (h_plus = h_minus = h),
    and made small enough to keep x positive definite, or sorted.

    vectorize=True steps every index at once under jax.vmap (F must be traceable; this also
    runs inside jit); False calls F once per step (for an F that branches on values).
    """
    shape = jnp.shape(x)
    flat = jnp.reshape(jnp.asarray(x), -1)
    index = jnp.asarray(index, jnp.int32).reshape(-1)
    xk = flat[index]
    step = jnp.broadcast_to(jnp.asarray(h, xk.dtype), xk.shape)
    if structure is not None:
        x = jnp.asarray(x)
        step = jnp.minimum(step, _room(x, structure).reshape(-1)[index])

        def at(k, t):
            return F(_move(x, direction(x, k, structure), t, structure))

        if vectorize:
            return jax.vmap(at)(index, step), jax.vmap(at)(index, -step), step, step
        f_plus = jnp.stack([at(k, t) for k, t in zip(index, step)]) if index.size else step
        f_minus = jnp.stack([at(k, -t) for k, t in zip(index, step)]) if index.size else step
        return f_plus, f_minus, step, step
    up, down = xk + step, xk - step

    def at(k, v):
        return F(flat.at[k].set(v).reshape(shape))

    if vectorize:
        f_plus, f_minus = jax.vmap(at)(index, up), jax.vmap(at)(index, down)
    else:
        f_plus = jnp.stack([at(k, v) for k, v in zip(index, up)]) if index.size else up
        f_minus = jnp.stack([at(k, v) for k, v in zip(index, down)]) if index.size else down
    return f_plus, f_minus, up - xk, xk - down


# ---- input structure: the directions a structured input is perturbed along --------------------
def _swap(a):
    return jnp.swapaxes(a, -1, -2)


def _skew(a):
    return (a - _swap(a)) / 2


def direction(x, k, structure: str):
    """The direction element k (flat index) of x is stepped along within `structure`:
    symmetric / positive definite: (E + E^T) / 2 with E the unit matrix of element k;
    orthogonal: the generator K = skew(x^T E) of the step x -> x expm(t K) (x times a rotation
    stays orthogonal); sorted: E itself."""
    e = jnp.zeros(jnp.size(x), x.dtype).at[k].set(1).reshape(jnp.shape(x))
    if structure in ("symmetric", "positive definite"):
        return (e + _swap(e)) / 2
    if structure == "orthogonal":
        return _skew(_swap(x) @ e)
    if structure == "sorted":
        return e
    raise ValueError(f"unknown input structure {structure!r}")


def _move(x, d, t, structure):
    if structure == "orthogonal":
        return x @ jax.scipy.linalg.expm(t * d)
    return x + t * d


def _room(x, structure):
    """The largest step each element may take and keep x's structure (inf: any)."""
    if structure == "positive definite":  # |t (E + E^T) / 2| <= |t|: keep t below the least
        least = jnp.linalg.eigvalsh(x)[..., :1, None]  # eigenvalue (a quarter of it)
        return jnp.broadcast_to(least / 4, jnp.shape(x))
    if structure == "sorted":  # a quarter of the gap to either neighbour along the last axis
        gaps = jnp.diff(x, axis=-1)
        inf = jnp.full(jnp.shape(x)[:-1] + (1,), jnp.inf, x.dtype)
        return jnp.minimum(jnp.concatenate([inf, gaps], -1), jnp.concatenate([gaps, inf], -1)) / 4
    return jnp.full(jnp.shape(x), jnp.inf, x.dtype)


def project(g, x, structure: str | None):
    """The gradient g of a function of x, projected onto the directions `structure` allows at
    x (what central differences within the structure measure): sym(g) for symmetric and
    positive definite x, x skew(x^T g) for orthogonal x, g itself for sorted x or None."""
    if structure in ("symmetric", "positive definite"):
        return (g + _swap(g)) / 2
    if structure == "orthogonal":
        return x @ _skew(_swap(x) @ g)
    return g


def _contracted(f, ct):
    """The scalar function Re(sum(f(*a) * ct)), summed over f's outputs when it has several
    (the entries of `ct` that are None or float0 left out)."""
    cts = tuple(ct) if isinstance(ct, (tuple, list)) else (ct,)

    def scalar(*a):
        out = f(*a)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return sum(
            jnp.real(jnp.sum(o * c))
            for o, c in zip(outs, cts)
            if c is not None and getattr(c, "dtype", None) != jax.dtypes.float0
        )

    return scalar


def numerical_vjp(f, args, ct, diff=None, h=1e-6, structure=None):
    """Central differences of `sum(f(*args) * ct)` wrt each float argument, every element.

    Complex values follow JAX's convention: the scalar is Re(sum(f(*args) * ct)), and a complex
    argument z = x + iy gets dS/dx - i dS/dy (its real and imaginary parts stepped in turn),
    which is what jax.vjp returns.

    All elements of an argument are stepped at once (one vmap), so this also runs inside jit.
    The checkers take it in float64 (inside `jax.enable_x64`).

    Args:
        f: traceable by JAX (jax.numpy, fnn's gates); a tuple of outputs is allowed.
        args: f's positional arguments (a sequence).
        ct: the cotangent, like f's output; for a tuple of outputs a tuple of the same length
            (None or float0 entries are skipped).
        diff: the positions to differentiate (default: every float or complex argument).
        h: the step.
        structure: one entry (None or a structure's name: "symmetric", "positive definite",
            "orthogonal", "sorted") per position of `diff`; such an argument is stepped within
            its structure, and its entry of the result is the projected gradient.

    Returns:
        A list with an array per position (None where not differentiated).

    Raises:
        ValueError: a structure's name is unknown.
    """
    args = list(args)
    if diff is None:
        diff = [i for i, a in enumerate(args) if is_float(a)]
    structure = tuple(structure) if structure is not None else (None,) * len(diff)
    scalar = _contracted(f, ct)

    def central(along, x, kind):
        f_plus, f_minus, h_plus, h_minus = differences(
            along, x, np.arange(x.size), h, structure=kind
        )
        return ((f_plus - f_minus) / (h_plus + h_minus)).reshape(x.shape)

    grads = [None] * len(args)
    for i, kind in zip(diff, structure):
        x = jnp.asarray(args[i])

        def along(xi, i=i):
            return scalar(*[xi if j == i else a for j, a in enumerate(args)])

        if jnp.iscomplexobj(x):
            if kind is not None:
                raise ValueError(
                    f"numerical_vjp: a structure ({kind!r}) of a complex argument is not supported"
                )
            re, im = jnp.real(x), jnp.imag(x)
            grads[i] = lax.complex(
                central(lambda r, im=im: along(lax.complex(r, im)), re, None),
                -central(lambda m, re=re: along(lax.complex(re, m)), im, None),
            )
        else:
            grads[i] = central(along, x, kind)
    return grads
