import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class BackwardStats(eqx.Module):
    r"""Statistics of a backward (adjoint) solve, delivered as a gradient.

    A backward pass runs after the forward function has returned, so its statistics
    cannot be an ordinary output. Instead, pass a zero `BackwardStats` (from
    [`jaxdeq.BackwardStats.probe`][]) into [`jaxdeq.fixed_point`][] or
    [`jaxdeq.DEQ`][] and differentiate with respect to it as well: its "gradient" is a
    `BackwardStats` holding the statistics of the backward solve. Under `jax.vmap`
    give the probe a batch axis, so the statistics are per sample.

    !!! Example

        ```python
        def loss(params, probe):
            sol = jaxdeq.fixed_point(fn, solver, y0, params, backward_stats=probe)
            return jnp.sum(sol.value**2)

        grads, bstats = jax.grad(loss, argnums=(0, 1))(params, BackwardStats.probe())
        bstats.num_steps, bstats.residual, bstats.success
        ```

    **Attributes:**

    - `num_steps`: iterations of the backward solve (the number of terms or steps for
        the approximate adjoints).
    - `residual`: the relative residual $\|(I - J^\top) w - v\| / \|v\|$ of the
        adjoint linear system at the returned $w$. Approximate adjoints report it only
        when constructed with `monitor=True`; otherwise it is NaN ("not measured").
    - `success`: `1.0` if the backward solve met its tolerance (always `1.0` for the
        approximate adjoints, which solve nothing), else `0.0`.
    """

    num_steps: Float[Array, "*batch"]
    residual: Float[Array, "*batch"]
    success: Float[Array, "*batch"]

    @classmethod
    def probe(cls, batch_shape: tuple[int, ...] = ()) -> "BackwardStats":
        """A zero `BackwardStats` to differentiate against.

        **Arguments:**

        - `batch_shape`: leading shape when the solve is `vmap`-ed, e.g. `(batch,)`.

        **Returns:**

        A `BackwardStats` of float32 zeros.
        """
        zeros = jnp.zeros(batch_shape, jnp.float32)
        return cls(zeros, zeros, zeros)
