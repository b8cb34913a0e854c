"""Small private helpers shared by the solvers and adjoints."""

import math
import numbers
from collections.abc import Callable

import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
from jaxtyping import Array, PyTree, Scalar


# A fixed-point iteration whose residual has grown by this factor over the first
# residual, or whose iterate has grown by it over the initial scale
# ||y0|| + ||f(y0)||, is declared divergent. Large on purpose: accelerated methods
# are not monotone, and only a genuine blow-up should stop them. The iterate test
# matters for relative tolerances: when the iterate explodes, ||f(y)|| does too, and
# `abs_residual <= atol + rtol * ||f(y)||` would otherwise pass on a map with no
# fixed point.
DIVERGENCE_RATIO = 1e8
# Keeps relative residuals finite at a zero fixed point.
TINY = 1e-30


def bookkeeping_dtype(tree: PyTree) -> jnp.dtype:
    """The dtype in which solver bookkeeping runs: the widest of the leaves' dtypes
    and float32 (complex if any leaf is complex). Computed by hand so that it works
    under `jax_numpy_dtype_promotion="strict"`."""
    dtypes = [jnp.result_type(x) for x in jtu.tree_leaves(tree)]
    bits = max([jnp.finfo(d).bits for d in dtypes] + [32])
    if any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes):
        return jnp.dtype(f"complex{2 * bits}")
    return jnp.dtype(f"float{bits}")


def real_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The real counterpart of a (possibly complex) floating dtype."""
    return jnp.finfo(dtype).dtype


def flatten(tree: PyTree[Array], dtype: jnp.dtype) -> Array:
    """Concatenate the leaves of `tree` into one vector of `dtype`."""
    leaves = jtu.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([jnp.ravel(x).astype(dtype) for x in leaves])


def unflatten(vector: Array, like: PyTree[Array]) -> PyTree[Array]:
    """Inverse of `flatten`: split `vector` into the shapes and dtypes of `like`."""
    leaves, treedef = jtu.tree_flatten(like)
    out = []
    start = 0
    for leaf in leaves:
        size = math.prod(jnp.shape(leaf))
        piece = vector[start : start + size].reshape(jnp.shape(leaf))
        out.append(piece.astype(jnp.result_type(leaf)))
        start += size
    return jtu.tree_unflatten(treedef, out)


def write_row(buffer: Array, index: Array, row: Array) -> Array:
    """`buffer.at[index].set(row)` as a masked select.

    Under `vmap` the index is per sample and `.at[].set` becomes a scatter, which
    XLA runs slowly on CPU; a one-hot select vectorises.
    """
    hot = jnp.arange(buffer.shape[0]) == index
    hot = hot.reshape(hot.shape + (1,) * (buffer.ndim - 1))
    return jnp.where(hot, row.astype(buffer.dtype), buffer)


def record(trace: Array, step: Array, value: Scalar) -> Array:
    """Write `value` into a fixed-size trace at `min(step, len(trace) - 1)`."""
    return write_row(trace, jnp.minimum(step, trace.shape[0] - 1), value)


def relative(abs_residual: Scalar, scale: Scalar) -> Scalar:
    return abs_residual / (scale + TINY)


def _is_tracer(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _as_number(name: str, label: str, value) -> float:
    """`value` as a Python float, or a TypeError naming the argument."""
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"{name}: `{label}` must be a scalar, got shape {jnp.shape(value)}."
            )
        if not (
            jnp.issubdtype(jnp.result_type(value), jnp.floating)
            or jnp.issubdtype(jnp.result_type(value), jnp.integer)
        ):
            raise TypeError(
                f"{name}: `{label}` must be a real number, got {value!r}. "
                f"Pass e.g. `{label}=1e-5`."
            )
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name}: `{label}` must be a real number, got {value!r} "
            f"({type(value).__name__}). Pass e.g. `{label}=1e-5`."
        )
    return float(value)


def check_tolerances(name: str, rtol: float, atol: float) -> None:
    """`rtol` and `atol`: finite, non-negative real numbers, not both zero."""
    values = {}
    for label, value in (("rtol", rtol), ("atol", atol)):
        if _is_tracer(value):
            # A traced tolerance (e.g. a solver passed through `jit`) was checked
            # when the solver was built.
            return
        as_float = _as_number(name, label, value)
        if not (math.isfinite(as_float) and as_float >= 0):
            raise ValueError(
                f"{name}: `{label}` must be finite and non-negative, got {value!r}. "
                f"Pass e.g. `{label}=1e-5`."
            )
        values[label] = as_float
    if values["rtol"] == 0 and values["atol"] == 0:
        raise ValueError(
            f"{name}: `rtol` and `atol` are both zero, so the solver could never stop. "
            "Set at least one of them, e.g. `rtol=1e-4, atol=1e-6`."
        )


def as_int(value):
    """Field converter: a NumPy integer becomes a Python int (a static
    hyperparameter, not an array leaf); anything else is left for
    `check_positive_int` to judge."""
    if isinstance(value, np.integer):
        return int(value)
    return value


def check_positive_int(name: str, label: str, value: int, minimum: int = 1) -> None:
    """An integer hyperparameter: a Python or NumPy integer, not a bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Integral, np.integer)
    ):
        raise TypeError(f"{name}: `{label}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}: `{label}` must be at least {minimum}, got {value}.")


def check_unit_interval(name: str, label: str, value: float) -> None:
    if _is_tracer(value):
        return
    if not (0.0 < _as_number(name, label, value) <= 1.0):
        raise ValueError(
            f"{name}: `{label}` must lie in (0, 1], got {value!r}. "
            f"Use `{label}=1.0` for no damping or e.g. `{label}=0.5` to damp."
        )


NormFn = Callable[[PyTree], Scalar]


def check_growth_factor(name: str, label: str, value: float) -> None:
    if _is_tracer(value):
        return
    if not (_as_number(name, label, value) > 1 and math.isfinite(float(value))):
        raise ValueError(
            f"{name}: `{label}` must be > 1 (the residual growth that triggers a "
            f"restart), got {value!r}."
        )


def iterate_diverged(iterate_norm: Scalar, initial_scale: Scalar) -> Array:
    """Whether an iterate has grown beyond `DIVERGENCE_RATIO` times the initial
    scale `||y0|| + ||f(y0)||` (a zero scale counts as the smallest normal)."""
    tiny = jnp.finfo(jnp.result_type(initial_scale)).tiny
    return iterate_norm > DIVERGENCE_RATIO * jnp.maximum(initial_scale, tiny)


def passes(
    abs_residual: Scalar,
    scale: Scalar,
    first_residual: Scalar,
    initial_scale: Scalar,
    rtol: float,
    atol: float,
) -> Array:
    """The success test of jaxdeq's residual-based solvers, on the returned value:
    `abs_residual <= atol + rtol * scale` (`scale` is `||f(y)||`), where a pass that
    needs more than the initial scale `||y0|| + ||f(y0)||` also needs a residual
    below the first one. So a relative test cannot pass merely because the iterate,
    and with it `||f(y)||`, grew without the residual shrinking (`z -> z + 1`)."""
    within = abs_residual <= atol + rtol * scale
    progress = (abs_residual < first_residual) | (
        abs_residual <= atol + rtol * initial_scale
    )
    return within & progress


def stopping(converged, diverged, nonfinite) -> tuple[Array, optx.RESULTS]:
    """The `terminate` of a solver that tracks these three flags in its state."""
    result = optx.RESULTS.where(
        diverged, optx.RESULTS.nonlinear_divergence, optx.RESULTS.successful
    )
    result = optx.RESULTS.where(nonfinite, optx.RESULTS.nonfinite, result)
    return converged | diverged | nonfinite, result


def check_margin(name: str, margin: float) -> None:
    """A monotonicity margin: a Python number > 0 (the m in I - W >= m I)."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(
            f"{name}: `margin` must be a Python float, got {type(margin).__name__}. "
            "Pass e.g. `margin=0.5`; it is a fixed hyperparameter, not a parameter."
        )
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(
            f"{name}: `margin` must be finite and > 0 (it is the m in I - W >= m I "
            f"that makes the fixed point unique), got {margin!r}. Use e.g. "
            "margin=0.5."
        )
