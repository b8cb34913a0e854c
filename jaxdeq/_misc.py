"""Small private helpers shared by the solvers and adjoints."""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, PyTree, Scalar


# A fixed-point iteration whose residual has grown by this factor over the first
# residual is declared divergent. Large on purpose: accelerated methods are not
# monotone, and only a genuine blow-up should stop them.
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


def check_tolerances(name: str, rtol: float, atol: float) -> None:
    for label, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, (jax.Array,)) and value.ndim != 0:
            raise ValueError(
                f"{name}: `{label}` must be a scalar, got shape {value.shape}."
            )
        try:
            as_float = float(value)
        except TypeError as e:
            raise TypeError(
                f"{name}: `{label}` must be a number, got {value!r}."
            ) from e
        if not as_float >= 0:
            raise ValueError(
                f"{name}: `{label}` must be non-negative, got {value!r}. "
                f"Pass e.g. `{label}=1e-5`."
            )
    if float(rtol) == 0 and float(atol) == 0:
        raise ValueError(
            f"{name}: `rtol` and `atol` are both zero, so the solver could never stop. "
            "Set at least one of them, e.g. `rtol=1e-4, atol=1e-6`."
        )


def check_positive_int(name: str, label: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: `{label}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{name}: `{label}` must be at least {minimum}, got {value}.")


def check_unit_interval(name: str, label: str, value: float) -> None:
    if not (0.0 < float(value) <= 1.0):
        raise ValueError(
            f"{name}: `{label}` must lie in (0, 1], got {value!r}. "
            f"Use `{label}=1.0` for no damping or e.g. `{label}=0.5` to damp."
        )


NormFn = Callable[[PyTree], Scalar]


def check_growth_factor(name: str, label: str, value: float) -> None:
    if not float(value) > 1:
        raise ValueError(
            f"{name}: `{label}` must be > 1 (the residual growth that triggers a "
            f"restart), got {value!r}."
        )


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
    if not margin > 0:
        raise ValueError(
            f"{name}: `margin` must be > 0 (it is the m in I - W >= m I that makes "
            f"the fixed point unique), got {margin!r}. Use e.g. margin=0.5."
        )
