import math
import warnings
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._misc import check_positive_int
from .._solution import Report
from ._neural_ode import (
    _default_adjoint,
    _to_optional_float,
    check_ode_config,
    check_vector_field,
    NeuralODE,
)


_MISSING = object()


class ConcatField(eqx.Module):
    r"""A small vector field for neural ODEs: an MLP of the concatenation
    $[z, x, t]$.

    $$F_\theta(t, z, x) = \text{MLP}_\theta([z;\, x;\, t]),$$

    with `depth` hidden layers of `width` units and a smooth activation (tanh by
    default; a smooth field keeps adaptive solvers cheap). Used as the vector field
    of [`jaxdeq.ode.HomoODE`][] (`x` the input features) or of
    [`jaxdeq.ode.NeuralODE`][] (`x` the `args`; with `input_size=0` and
    `args=None` it is $F_\theta(t, z)$). Called on one sample, with `z` of shape
    `(state_size,)` and `x` of shape `(input_size,)`; `x` and `t` are cast to the
    state's dtype.
    """

    mlp: eqx.nn.MLP
    state_size: int = eqx.field(static=True)
    input_size: int = eqx.field(static=True)

    def __init__(
        self,
        state_size: int,
        input_size: int,
        width: int,
        depth: int = 2,
        *,
        activation: Callable[[Array], Array] = jax.nn.tanh,
        dtype: Any = None,
        key: PRNGKeyArray,
    ):
        check_positive_int("ConcatField", "state_size", state_size)
        check_positive_int("ConcatField", "input_size", input_size, minimum=0)
        check_positive_int("ConcatField", "width", width)
        check_positive_int("ConcatField", "depth", depth)
        self.state_size = state_size
        self.input_size = input_size
        self.mlp = eqx.nn.MLP(
            state_size + input_size + 1,
            state_size,
            width,
            depth,
            activation=activation,
            dtype=dtype,
            key=key,
        )

    def __call__(
        self, t: Float[Array, ""] | float, z: Float[Array, " state"], x: Any = None
    ) -> Float[Array, " state"]:
        """The time derivative of `z`.

        **Arguments:**

        - `t`: the time, a scalar.
        - `z`: the state, shape `(state_size,)`.
        - `x`: the input, shape `(input_size,)`; `None` when `input_size == 0`.

        **Returns:**

        $\\mathrm{d}z/\\mathrm{d}t$, shape `(state_size,)`, in the state's dtype.

        **Raises:**

        `ValueError` while tracing for a state or input of the wrong shape.
        """
        if jnp.shape(z) != (self.state_size,):
            raise ValueError(
                f"ConcatField: the state must have shape ({self.state_size},), got "
                f"{jnp.shape(z)}. Build the field with `state_size` equal to the "
                "state's size (augmented channels included)."
            )
        dtype = jnp.result_type(z)
        parts = [z]
        if self.input_size > 0:
            if x is None or jnp.shape(x) != (self.input_size,):
                raise ValueError(
                    f"ConcatField: the input must have shape ({self.input_size},), got "
                    f"{None if x is None else jnp.shape(x)}."
                )
            parts.append(jnp.asarray(x).astype(dtype))
        elif x is not None:
            raise ValueError(
                "ConcatField: built with `input_size=0`, so it takes no input; got "
                f"one of shape {jnp.shape(x)}. Build it with `input_size` set."
            )
        parts.append(jnp.reshape(jnp.asarray(t).astype(dtype), (1,)))
        return self.mlp(jnp.concatenate(parts)).astype(dtype)


ConcatField.__init__.__doc__ = r"""**Arguments:**

- `state_size`: the size of the state $z$ (augmented channels included).
- `input_size`: the size of the input $x$; 0 for a field without one.
- `width`: the width of the hidden layers.
- `depth`: the number of hidden layers (default 2).
- `activation`: the hidden activation (default `jax.nn.tanh`; `jax.nn.softplus`
    also keeps the field smooth).
- `dtype`: the parameters' dtype (default: JAX's default floating dtype).
- `key`: a `jax.random` key for the initial parameters.

**Raises:**

`TypeError`/`ValueError` for sizes that are not positive ints (`input_size` may be
0).
"""


class HomoODE(eqx.Module):
    r"""HomoODE: an equilibrium model read out at the end of a learnt homotopy path.

    A deep equilibrium model solves $g_\theta(z, x) = 0$ for its equilibrium.
    Homotopy continuation finds that root by following a path $z(t)$,
    $t \in [0, 1]$, from an easy starting point to the root, and the path obeys an
    ODE. HomoODE (Ding et al., 2023) learns that ODE's vector field directly,

    $$\frac{\mathrm{d}z}{\mathrm{d}t} = F_\theta(t, z, x), \qquad z(0) = z_0, \qquad
    z^* = z(1),$$

    and reads the equilibrium out at $t = 1$: the input $x$ conditions the vector
    field, as in a DEQ, while the solve is a neural ODE's, stable and adaptive. The
    defaults are the authors': `diffrax.Dopri5()` with $\text{rtol} = \text{atol}
    = 10^{-3}$.

    **The shared initial point.** Every sample starts from the same learnable
    $z_0$ (`initial_point`). Starting near where the solutions end shortens the
    path, so the adaptive solver takes fewer steps and fewer evaluations of
    $F_\theta$. The initial point learns in two ways:

    1. by gradient: it is an array field, so `eqx.filter_grad` of a loss gives it a
        gradient (through the adjoint), and the optimiser updates it with the
        other parameters;
    2. by fitting recent solutions: [`jaxdeq.ode.HomoODE.update_initial_point`][]
        moves it towards the mean of a batch of solutions $z^*$ by an exponential
        moving average, with no gradient path. This is one gradient step of size
        `momentum` on $\tfrac12 \|z_0 - \bar z^*\|^2$, the fit the authors make
        with a separate optimiser every few iterations.

    Called on one sample, `(z1, report) = model(x)`; `jax.vmap` it over a batch.
    Built on [`jaxdeq.ode.NeuralODE`][] with $t \in [0, 1]$ and `args = x`, and
    reports the same way: a [`jaxdeq.Report`][] with the exact number of
    evaluations of $F_\theta$ in `num_fn_evals`, NaN residuals (the path has a
    fixed end, $t = 1$, not a residual) and `t_final`, `num_accepted_steps`,
    `num_rejected_steps`, `diffrax_result` in `extra`.

    **Per-call start.** `model(x, y0)` starts one solve from `y0` instead of the
    shared `initial_point` (the field keeps its name: it is a learnt parameter, not
    a per-call value; `y0` is optimistix's and diffrax's name for the latter).

    !!! Example

        ```python
        field = jaxdeq.ode.ConcatField(state_size=16, input_size=8, width=64, key=k1)
        model = jaxdeq.ode.HomoODE(field, initial_point=jnp.zeros(16))
        z, report = jax.vmap(model)(x)           # x: (batch, 8) -> z: (batch, 16)
        # ... gradient step on a loss of z ...
        model = model.update_initial_point(z)    # fit z0 to this batch's solutions
        ```

    ??? cite "References"

        ```bibtex
        @inproceedings{ding2023two,
            author = {Ding, Shutong and Cui, Tianyu and Wang, Jingya and Shi, Ye},
            title = {Two Sides of The Same Coin: Bridging Deep Equilibrium Models
                     and Neural {ODE}s via Homotopy Continuation},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2023},
        }
        ```
    """

    vector_field: Callable
    initial_point: Array
    solver: dfx.AbstractSolver = dfx.Dopri5()
    stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(
        rtol=1e-3, atol=1e-3
    )
    adjoint: dfx.AbstractAdjoint = eqx.field(default_factory=_default_adjoint)
    dt0: float | None = eqx.field(
        static=True, default=None, converter=_to_optional_float
    )
    max_steps: int = eqx.field(static=True, default=4096)
    throw: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_ode_config(
            "HomoODE",
            vector_field=self.vector_field,
            t0=0.0,
            t1=1.0,
            solver=self.solver,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            dt0=self.dt0,
            max_steps=self.max_steps,
            throw=self.throw,
            steady_state=False,
        )
        if not isinstance(self.initial_point, (jax.Array, np.ndarray)):
            raise TypeError(
                "HomoODE: `initial_point` must be an array with the shape of the "
                "state, e.g. `jnp.zeros(state_size)`; got "
                f"{type(self.initial_point).__name__}."
            )
        if not jnp.issubdtype(jnp.result_type(self.initial_point), jnp.floating):
            raise TypeError(
                "HomoODE: `initial_point` must be real floating point, got "
                f"{jnp.result_type(self.initial_point)}. Cast it, e.g. "
                "`initial_point.astype(jnp.float32)`."
            )
        if isinstance(self.vector_field, ConcatField) and jnp.shape(
            self.initial_point
        ) != (self.vector_field.state_size,):
            raise ValueError(
                "HomoODE: `initial_point` must have the shape of the vector field's "
                f"state, ({self.vector_field.state_size},); got "
                f"{jnp.shape(self.initial_point)}. Use e.g. "
                f"`jnp.zeros({self.vector_field.state_size})`."
            )

    def _ode(self) -> NeuralODE:
        return NeuralODE(
            self.vector_field,
            t0=0.0,
            t1=1.0,
            solver=self.solver,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            dt0=self.dt0,
            max_steps=self.max_steps,
            throw=self.throw,
        )

    def _start(self, y0, z0):
        if z0 is not _MISSING:
            warnings.warn(
                "HomoODE: the keyword `z0=` is deprecated; pass the start as `y0=` "
                "(or positionally, `model(x, y0)`).",
                DeprecationWarning,
                stacklevel=3,
            )
            if y0 is not None:
                raise TypeError("HomoODE: pass the start as `y0` only, not also `z0`.")
            y0 = z0
        if y0 is None:
            return self.initial_point
        if jnp.shape(y0) != jnp.shape(self.initial_point):
            raise ValueError(
                f"HomoODE: `y0` must have the shape of `initial_point`, "
                f"{jnp.shape(self.initial_point)}; got {jnp.shape(y0)}."
            )
        return y0

    def __call__(
        self,
        x: Any,
        y0: Array | None = None,
        *,
        z0: Any = _MISSING,
        key: Any = None,
    ) -> tuple[Array, Report]:
        """Follow the path from the initial point to the equilibrium of one sample.

        **Arguments:**

        - `x`: the input of one sample, passed to the vector field as its third
            argument.
        - `y0`: optional starting point of this call, replacing `initial_point`
            (same shape).
        - `z0`: deprecated keyword for `y0`; warns.
        - `key`: unused; accepted for compatibility with `eqx.nn.Sequential`.

        **Returns:**

        `(z1, report)`: the state at $t = 1$ and its [`jaxdeq.Report`][] (see
        [`jaxdeq.ode.NeuralODE`][]).

        **Raises:**

        `ValueError` while tracing when `y0` or the vector field's output does not
        have the shape of `initial_point`. With `throw=True`, a runtime error
        carrying the result's message when the solve fails.
        """
        del key
        start = self._start(y0, z0)
        check_vector_field(
            "HomoODE", self.vector_field, jnp.zeros((), start.dtype), start, x
        )
        return self._ode()(start, x)

    def solution(
        self,
        x: Any,
        y0: Array | None = None,
        saveat: dfx.SaveAt = dfx.SaveAt(t1=True),
        *,
        z0: Any = _MISSING,
    ) -> dfx.Solution:
        """The whole diffrax solution for one sample, e.g. the path to plot.

        **Arguments:**

        - `x`, `y0`, `z0`: as for `__call__`.
        - `saveat`: what to save, e.g. `diffrax.SaveAt(ts=jnp.linspace(0, 1, 20))`.

        **Returns:**

        A `diffrax.Solution`.
        """
        return self._ode().solution(self._start(y0, z0), x, saveat)

    def update_initial_point(
        self, solutions: Float[Array, "batch ..."], momentum: float = 0.1
    ) -> "HomoODE":
        r"""Move the initial point towards the mean of a batch of solutions.

        $$z_0 \leftarrow (1 - m)\, z_0 + m\, \bar z^*, \qquad
        \bar z^* = \tfrac1B \textstyle\sum_b z^*_b,$$

        an exponential moving average of recent solutions. Both $z_0$ and the
        solutions pass through `jax.lax.stop_gradient`: the update is a fit, not
        part of the loss, and no gradient flows through it.

        **Arguments:**

        - `solutions`: a batch of solutions, shape `(batch,) + initial_point.shape`
            (e.g. the first output of `jax.vmap(model)(x)`).
        - `momentum`: $m \in (0, 1]$, the weight of the new batch; `1.0` jumps to the
            batch mean.

        **Returns:**

        A new `HomoODE`, equal to this one but for its initial point.

        **Raises:**

        `ValueError` for solutions of the wrong shape or a momentum outside
        $(0, 1]$.
        """
        expected = jnp.shape(self.initial_point)
        if jnp.ndim(solutions) != len(expected) + 1 or (
            jnp.shape(solutions)[1:] != expected
        ):
            raise ValueError(
                "HomoODE.update_initial_point: `solutions` must have shape "
                f"(batch,) + {expected}, got {jnp.shape(solutions)}."
            )
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(
                "HomoODE.update_initial_point: `momentum` must be a Python number in "
                f"(0, 1], got {momentum!r}."
            )
        if not (math.isfinite(momentum) and 0 < momentum <= 1):
            raise ValueError(
                "HomoODE.update_initial_point: `momentum` must lie in (0, 1], got "
                f"{momentum!r}. Use e.g. `momentum=0.1`."
            )
        dtype = jnp.result_type(self.initial_point)
        mean = jnp.mean(jax.lax.stop_gradient(solutions).astype(dtype), axis=0)
        old = jax.lax.stop_gradient(self.initial_point)
        new = old + momentum * (mean - old)
        return eqx.tree_at(lambda m: m.initial_point, self, new)


HomoODE.__init__.__doc__ = r"""**Arguments:**

- `vector_field`: $F_\theta$, called as `vector_field(t, z, x)` and returning
    $\mathrm{d}z/\mathrm{d}t$ with the shape of `z`; any callable, typically an
    equinox Module such as [`jaxdeq.ode.ConcatField`][].
- `initial_point`: the shared initial point $z_0$, an array with the shape of one
    sample's state (e.g. `jnp.zeros(state_size)`). A learnable parameter.
- `solver`: a diffrax solver (default `diffrax.Dopri5()`, the authors' choice).
- `stepsize_controller`: a diffrax step-size controller (default
    `diffrax.PIDController(rtol=1e-3, atol=1e-3)`, the authors' tolerances).
- `adjoint`: `diffrax.RecursiveCheckpointAdjoint(checkpoints=32)` (default) or
    `diffrax.BacksolveAdjoint()`; see [`jaxdeq.ode.NeuralODE`][]. (The path ends at
    $t = 1$, not at a steady state, so `diffrax.ImplicitAdjoint()` does not apply.)
- `dt0`: the first step; `None` lets an adaptive controller choose (needed with
    `diffrax.ConstantStepSize()`).
- `max_steps`: the step budget of one solve.
- `throw`: whether a failed solve raises (default `False`: reported per sample in
    `report.result`).

**Raises:**

`TypeError`/`ValueError` naming the fix for a non-array or non-float
`initial_point`, an `initial_point` whose shape differs from a
[`jaxdeq.ode.ConcatField`][]'s state, and the configuration errors of
[`jaxdeq.ode.NeuralODE`][] (other vector fields are checked against the initial
point when first called).
"""
