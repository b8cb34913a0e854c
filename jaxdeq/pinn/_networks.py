"""Networks for value functions: normalised inputs, hard conditions by an output
transform, and shape constraints (monotone, concave) by construction."""

from collections.abc import Callable, Sequence
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar


def _normaliser(lower, upper):
    lower = np.atleast_1d(np.asarray(lower, dtype=float))
    upper = np.atleast_1d(np.asarray(upper, dtype=float))
    if lower.shape != upper.shape or lower.ndim != 1 or np.any(lower >= upper):
        raise ValueError(
            f"Need 1-D lower < upper of equal length, got {lower} and {upper}."
        )
    return tuple(float(v) for v in lower), tuple(float(v) for v in upper)


class ValueNetwork(eqx.Module):
    r"""A scalar function of the state for PINNs: an MLP on inputs mapped
    affinely from the box `[lower, upper]` to $[-1, 1]^d$, followed by an output
    transform that imposes what is known exactly.

    $$V(x) = T\big(x, N((2x - l - u)/(u - l))\big)$$

    The transform $T(x, n)$ is where hard conditions go, by construction:

    - a Dirichlet condition $V = g$ on $x_1 = a$:
        `lambda x, n: g(x) + (x[0] - a) * n`;
    - a terminal condition $V(T, x) = G(x)$ for a time-dependent problem with
        state $(t, x)$: `lambda z, n: G(z[1:]) + (T - z[0]) * n`;
    - a state constraint at a borrowing limit $\underline{a}$ for CRRA utility
        $u$: `lambda x, n: u(x[0] - a_min) * jnp.exp(n) / rho` makes consumption
        vanish at the limit, which selects the economically right solution among
        the many functions that solve the HJB equation on a truncated domain.

    `transform=None` returns $N$ itself.

    **Arguments:**

    - `lower`, `upper`: the box that inputs are normalised from (inputs outside
        it are allowed; they are simply mapped outside $[-1, 1]$).
    - `width`, `depth`: hidden width and number of hidden layers.
    - `out_size`: `"scalar"` (default), or the length of the vector $n$ that the
        transform receives, for transforms that combine several network outputs
        (for example a singular part and a smooth part:
        `lambda x, n: u(x[0]) * jnp.exp(n[0]) / rho + scale * n[1]`).
    - `transform`: the output transform, or `None` (then `out_size` must be
        `"scalar"`).
    - `activation`: default `jnp.tanh` (smooth, so second derivatives exist).
    - `linear_skip`: add an affine map of the normalised input to the MLP's
        output (a skip connection), so that functions close to affine are easy
        to reach.
    - `key`: PRNG key for the initial weights.
    """

    mlp: eqx.nn.MLP
    skip: eqx.nn.Linear | None
    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    transform: Callable | None = eqx.field(static=True)

    def __init__(
        self,
        lower,
        upper,
        *,
        width: int = 32,
        depth: int = 3,
        out_size: int | Literal["scalar"] = "scalar",
        transform: Callable | None = None,
        activation: Callable = jnp.tanh,
        linear_skip: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        self.lower, self.upper = _normaliser(lower, upper)
        if width < 1 or depth < 1:
            raise ValueError(f"width={width} and depth={depth} must be >= 1.")
        key_mlp, key_skip = jr.split(key)
        self.mlp = eqx.nn.MLP(
            len(self.lower),
            out_size,
            width,
            depth,
            activation=activation,
            dtype=dtype,
            key=key_mlp,
        )
        self.skip = (
            eqx.nn.Linear(len(self.lower), out_size, key=key_skip, dtype=dtype)
            if linear_skip
            else None
        )
        if transform is None and out_size != "scalar":
            raise ValueError(
                f"out_size={out_size!r} needs a transform that maps the outputs to "
                "a scalar value."
            )
        self.transform = transform

    def features(self, x: Float[Array, " d"]) -> Float[Array, "*n"]:
        """The network's raw output at one point `x` of shape `(d,)`, before the
        output transform: a scalar for `out_size="scalar"`, else a vector of length
        `out_size`."""
        lower = jnp.asarray(self.lower, x.dtype)
        upper = jnp.asarray(self.upper, x.dtype)
        y = (2 * x - lower - upper) / (upper - lower)
        n = self.mlp(y)
        if self.skip is not None:
            n = n + self.skip(y)
        return n

    def __call__(self, x: Float[Array, " d"]) -> Scalar:
        """The value at one point `x` of shape `(d,)`."""
        n = self.features(x)
        return n if self.transform is None else self.transform(x, n)


def _concave_increasing(y):
    # -softplus(-y): concave and increasing, linear for y -> -inf, 0 for y -> inf.
    return -jax.nn.softplus(-y)


class ShapeConstrainedNetwork(eqx.Module):
    r"""A scalar network that is concave and/or monotone in chosen inputs for
    every value of its weights.

    Economic value functions are increasing in wealth and concave; a PINN that
    can only represent such functions cannot drift to a wrong solution that
    violates them, and first-order conditions such as $c = (V')^{-1/\gamma}$ stay
    defined. The construction is an input-concave network (the mirror image of
    the input-convex network of Amos, Xu & Kolter 2017):

    $$z_1 = \phi(W_0 x + b_0), \quad z_{k+1} = \phi(W_k^+ z_k + A_k x + b_k),
        \quad N(x) = w^+ \cdot z_L + a \cdot x + b,$$

    with $\phi(y) = -\operatorname{softplus}(-y)$ concave and increasing, and
    $W_k^+ , w^+ \ge 0$ (a softplus of free parameters). Then $N$ is concave in
    $x$. For `increasing` coordinates, the weights that multiply those inputs
    ($W_0$, $A_k$, $a$) are made non-negative as well, so $N$ is also
    non-decreasing in them. With `concave=False` only monotonicity is imposed
    (and $\phi$ may be any increasing function; `tanh` is used).

    **Arguments:**

    - `lower`, `upper`: the box inputs are normalised from.
    - `width`, `depth`: hidden width and number of hidden layers.
    - `increasing`: `True` (every input), `False`, or a tuple of booleans, one per
        input.
    - `concave`: whether $N$ is jointly concave.
    - `key`: PRNG key.

    ??? cite "References"

        ```bibtex
        @inproceedings{amos2017input,
            title={Input Convex Neural Networks},
            author={Amos, Brandon and Xu, Lei and Kolter, J. Zico},
            booktitle={International Conference on Machine Learning},
            pages={146--155},
            year={2017}
        }
        ```
    """

    first: eqx.nn.Linear
    hidden: tuple[eqx.nn.Linear, ...]
    skips: tuple[eqx.nn.Linear, ...]
    out_hidden: Array
    out_skip: Array
    out_bias: Array
    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    increasing: tuple[bool, ...] = eqx.field(static=True)
    concave: bool = eqx.field(static=True)

    def __init__(
        self,
        lower,
        upper,
        *,
        width: int = 32,
        depth: int = 2,
        increasing: bool | Sequence[bool] = True,
        concave: bool = True,
        dtype=None,
        key: PRNGKeyArray,
    ):
        self.lower, self.upper = _normaliser(lower, upper)
        d = len(self.lower)
        if isinstance(increasing, bool):
            increasing = (increasing,) * d
        if len(increasing) != d:
            raise ValueError(
                f"increasing has {len(increasing)} entries for {d} inputs; give one "
                "boolean per input (or a single boolean)."
            )
        if width < 1 or depth < 1:
            raise ValueError(f"width={width} and depth={depth} must be >= 1.")
        self.increasing = tuple(bool(v) for v in increasing)
        self.concave = bool(concave)
        keys = jr.split(key, 2 * depth + 1)
        self.first = eqx.nn.Linear(d, width, key=keys[0], dtype=dtype)
        self.hidden = tuple(
            eqx.nn.Linear(width, width, key=k, dtype=dtype) for k in keys[1:depth]
        )
        self.skips = tuple(
            eqx.nn.Linear(d, width, use_bias=False, key=k, dtype=dtype)
            for k in keys[depth : 2 * depth - 1]
        )
        dtype = self.first.weight.dtype
        self.out_hidden = jr.normal(keys[-1], (width,), dtype) / np.sqrt(width)
        self.out_skip = jnp.zeros((d,), dtype)
        self.out_bias = jnp.zeros((), dtype)

    def _input_weight(self, w):
        # Columns of increasing inputs are made non-negative.
        mask = jnp.asarray(self.increasing)
        return jnp.where(mask, jax.nn.softplus(w), w)

    def __call__(self, x: Float[Array, " d"]) -> Scalar:
        """The value at one point `x` of shape `(d,)`."""
        lower = jnp.asarray(self.lower, x.dtype)
        upper = jnp.asarray(self.upper, x.dtype)
        x = (2 * x - lower - upper) / (upper - lower)
        phi = _concave_increasing if self.concave else jnp.tanh
        w0 = self._input_weight(self.first.weight)
        assert self.first.bias is not None
        z = phi(w0 @ x + self.first.bias)
        for layer, skip in zip(self.hidden, self.skips):
            assert layer.bias is not None
            w = jax.nn.softplus(layer.weight)  # keeps phi(.) increasing in z
            z = phi(w @ z + self._input_weight(skip.weight) @ x + layer.bias)
        w_out = jax.nn.softplus(self.out_hidden)
        skip_out = self._input_weight(self.out_skip)
        return jnp.dot(w_out, z) + jnp.dot(skip_out, x) + self.out_bias
