"""The one solve report of every jaxdeq family: the result enumeration (one chain,
jaxdeq ⊃ diffrax ⊃ optimistix ⊃ lineax), the report a layer returns next to its
output, the statistics of a backward solve, and the solver-state interface from
which `jaxdeq.fixed_point` reads its diagnostics."""

import warnings
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, Scalar


class RESULTS(dfx.RESULTS):  # pyright: ignore[reportGeneralTypeIssues]
    """Result codes of every jaxdeq solve, layer and fit.

    One chain: `jaxdeq.RESULTS` extends `diffrax.RESULTS`, which extends
    `optimistix.RESULTS`, which extends `lineax.RESULTS`; every code of those is a
    code here too, and every public jaxdeq function and layer returns this
    enumeration. Test for success the same way in every family:

    ```python
    out, report = layer(x)
    report.result == jaxdeq.RESULTS.successful   # or: report.successful
    ```

    An enumeration item compares only with items of its own class, so
    `jaxdeq.RESULTS.successful == optimistix.RESULTS.successful` raises. Lift a
    result of optimistix, diffrax or lineax first, with
    `jaxdeq.RESULTS.promote(result)`, or test any of them with
    [`jaxdeq.is_successful`][].
    """

    fixed_point_max_steps_reached = (
        "The fixed-point solve reached `max_steps` before its residual met the "
        "tolerance. Try a larger `max_steps`, an accelerated solver "
        "(jaxdeq.Anderson or jaxdeq.Broyden), a looser `rtol`/`atol`, or push the "
        "cell towards contraction (jaxdeq.jacobian_regulariser, "
        "equinox.nn.SpectralNorm)."
    )
    fixed_point_diverged = (
        "The fixed-point solve diverged: its residual or its iterate grew without "
        "bound. Try damping (jaxdeq.Anderson(damping=0.5) or "
        "jaxdeq.Broyden(line_search=True)), a smaller learning rate, or a "
        "contractive cell (equinox.nn.SpectralNorm, jaxdeq.jacobian_regulariser). "
        "If the map may have no fixed point at all (e.g. z = Qz + b with Q "
        "orthogonal), check the model."
    )
    fixed_point_nonfinite = (
        "NaN or Inf appeared in the fixed-point solve. Check the cell for overflow "
        "(e.g. exp of large values), use float32 or float64 instead of bfloat16 for "
        "the state, damp the solver (jaxdeq.Anderson(damping=0.5)) or lower the "
        "learning rate."
    )
    forward_failed = (
        "The forward solve did not converge, so the implicit gradient of its "
        "returned value is not the gradient of a fixed point. Fix the forward "
        "solve first (see its own result)."
    )
    backward_failed = (
        "The backward (adjoint) solve did not meet its tolerance. Try a larger "
        "`max_steps` for the adjoint, a Krylov solver "
        "(jaxdeq.ImplicitAdjoint(linear_solver=lineax.GMRES(...))), or a more "
        "contractive cell (jaxdeq.jacobian_regulariser)."
    )
    steady_state_not_reached = (
        "The steady-state solve reached its end time `t1` before the state stopped "
        "changing, so the returned state is not a steady state. Raise `t1` (or use "
        "`t1=inf` with a step budget), or check that the flow has a stable "
        "equilibrium."
    )
    fit_not_converged = (
        "The fit stopped before its loss or residual met the stated target. Train "
        "longer, raise the learning rate schedule's budget, or loosen the target."
    )


_CHAIN = (lx.RESULTS, optx.RESULTS, dfx.RESULTS, RESULTS)


def as_results(result: Any) -> RESULTS:
    """Lift a result of lineax, optimistix, diffrax or jaxdeq to `jaxdeq.RESULTS`."""
    enumeration = getattr(result, "_enumeration", None)
    if enumeration is RESULTS:
        return result
    if enumeration in _CHAIN:
        # `promote` lifts one level; walk up the chain.
        for lower, upper in zip(_CHAIN[:-1], _CHAIN[1:]):
            if enumeration is lower:
                result = upper.promote(result)
                enumeration = upper
        return result
    raise TypeError(
        "jaxdeq: expected a result of jaxdeq, diffrax, optimistix or lineax "
        f"(an `equinox.Enumeration` item), got {type(result).__name__}."
    )


def is_successful(result: Any) -> Bool[Array, "*batch"]:
    """Whether a result of any enumeration in the chain (jaxdeq, diffrax,
    optimistix, lineax) is `successful`, elementwise under `vmap`.

    **Arguments:**

    - `result`: a `jaxdeq.RESULTS`, `diffrax.RESULTS`, `optimistix.RESULTS` or
        `lineax.RESULTS` item, e.g. `report.result` or `sol.result`.

    **Returns:**

    A boolean array of the result's (batch) shape.
    """
    return as_results(result) == RESULTS.successful


def translate(result: Any) -> RESULTS:
    """Lift a result to jaxdeq's, replacing the generic nonlinear-solve messages
    of optimistix with the fixed-point specific ones."""
    promoted = as_results(result)
    for generic, specific in (
        (RESULTS.nonlinear_max_steps_reached, RESULTS.fixed_point_max_steps_reached),
        (RESULTS.nonlinear_divergence, RESULTS.fixed_point_diverged),
        (RESULTS.nonfinite, RESULTS.fixed_point_nonfinite),
    ):
        promoted = RESULTS.where(promoted == generic, specific, promoted)
    return promoted


def first_failure(result: RESULTS) -> RESULTS:
    """One result for a batch of results: `successful` if every one succeeded, else
    the code of the first that failed."""
    ok = jnp.ravel(result == RESULTS.successful)
    index = jnp.argmin(ok)
    return jtu.tree_map(lambda v: jnp.ravel(v)[index], result)


class AbstractReportingState(eqx.Module):
    """The state of a jaxdeq solver, which carries its own diagnostics: the final
    residuals of the value the solver returns, a fixed-size residual trace and the
    evaluations of `fn` so far. `jaxdeq.fixed_point` reads them from any state of
    this type."""

    abs_residual: eqx.AbstractVar[Scalar]
    rel_residual: eqx.AbstractVar[Scalar]
    trace: eqx.AbstractVar[Array]
    num_fn_evals: eqx.AbstractVar[Array]


TRACE_SIZE = 64
REPORT_KEYS = (
    "result",
    "num_steps",
    "num_fn_evals",
    "abs_residual",
    "rel_residual",
    "residual_trace",
)


class Report(eqx.Module):
    r"""The solve report of every jaxdeq layer and iterative function.

    Every layer returns `(output, report)`; [`jaxdeq.fixed_point`][] returns an
    `optimistix.Solution` whose `stats` hold the same keys and
    [`jaxdeq.Report.from_solution`][] turns it into one. Under `jax.vmap` every
    field gets the batch axis: the report is per sample.

    **Fields:**

    - `result`: a [`jaxdeq.RESULTS`][]; `report.successful` is
        `result == RESULTS.successful`, and it holds exactly when the returned
        value passes the family's documented test (for a fixed-point solve:
        `abs_residual <= atol + rtol * ||f(y)||` in the solver's norm).
    - `num_steps`: steps (iterations) the solve took.
    - `num_fn_evals`: evaluations of the user's function (the cell, the vector
        field, the network); `-1` where it is not counted.
    - `abs_residual`, `rel_residual`: the residual of exactly the value returned,
        $\|f(y) - y\|$ and $\|f(y) - y\| / \|f(y)\|$ for fixed points; NaN where
        the family has no residual (e.g. a fixed-horizon ODE solve).
    - `residual_trace`: relative residuals per step, a fixed-size vector (NaN
        where no step was taken).
    - `extra`: family-specific values, e.g. the ODE's `t_final`, the attractor's
        `internalization`, EP's nested phase reports (`"free"`, `"nudged"`), a
        fit's final `loss`.
    """

    result: RESULTS
    num_steps: Int[Array, "*batch"]
    num_fn_evals: Int[Array, "*batch"]
    abs_residual: Float[Array, "*batch"]
    rel_residual: Float[Array, "*batch"]
    residual_trace: Float[Array, "*batch trace"]
    extra: dict[str, Any] = eqx.field(default_factory=dict)

    @property
    def successful(self) -> Bool[Array, "*batch"]:
        """`result == jaxdeq.RESULTS.successful`, per sample."""
        return self.result == RESULTS.successful

    @property
    def stats(self) -> dict[str, Any]:
        """Deprecated: the report's fields as the old `sol.stats` dictionary.
        Read the fields (`report.num_steps`, ...) instead."""
        warnings.warn(
            "`report.stats[...]` is deprecated: layers now return a jaxdeq.Report; "
            "read its fields instead, e.g. `report.num_steps`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return {k: getattr(self, k) for k in REPORT_KEYS} | dict(self.extra)

    @classmethod
    def from_solution(cls, sol: optx.Solution, **extra: Any) -> "Report":
        """The report of a [`jaxdeq.fixed_point`][] solution (its `stats` carry the
        report's keys) or of any optimistix solution (residuals NaN when unknown).

        **Arguments:**

        - `sol`: an `optimistix.Solution`.
        - `extra`: family-specific values to keep in `report.extra`.

        **Returns:**

        A `jaxdeq.Report`.
        """
        stats = sol.stats
        num_steps = jnp.asarray(stats["num_steps"])
        nan = jnp.full(num_steps.shape, jnp.nan, jnp.float32)
        abs_residual = jnp.asarray(stats.get("abs_residual", nan))
        rel_residual = jnp.asarray(stats.get("rel_residual", nan))
        trace = stats.get("residual_trace")
        if trace is None:
            trace = jnp.full(num_steps.shape + (TRACE_SIZE,), jnp.nan, jnp.float32)
        num_fn_evals = jnp.asarray(stats.get("num_fn_evals", num_steps + 1))
        return cls(
            result=translate(sol.result),
            num_steps=num_steps,
            num_fn_evals=num_fn_evals,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            residual_trace=jnp.asarray(trace),
            extra=dict(extra),
        )

    @classmethod
    def unmeasured(
        cls,
        result: Any,
        num_steps: Any,
        num_fn_evals: Any = -1,
        *,
        dtype: Any = jnp.float32,
        **extra: Any,
    ) -> "Report":
        """A report for a solve that has no residual of its own (NaN residuals and
        trace), e.g. a fixed-horizon ODE solve.

        **Arguments:**

        - `result`: any result of the chain; lifted to [`jaxdeq.RESULTS`][].
        - `num_steps`, `num_fn_evals`: counts (`-1` for "not counted").
        - `dtype`: dtype of the NaN residuals.
        - `extra`: family-specific values.

        **Returns:**

        A `jaxdeq.Report`.
        """
        num_steps = jnp.asarray(num_steps, jnp.int32)
        nan = jnp.full(num_steps.shape, jnp.nan, dtype)
        return cls(
            result=as_results(result),
            num_steps=num_steps,
            num_fn_evals=jnp.broadcast_to(
                jnp.asarray(num_fn_evals, jnp.int32), num_steps.shape
            ),
            abs_residual=nan,
            rel_residual=nan,
            residual_trace=jnp.full(num_steps.shape + (TRACE_SIZE,), jnp.nan, dtype),
            extra=dict(extra),
        )


class BackwardStats(eqx.Module):
    r"""Statistics of a backward (adjoint) solve, delivered as a gradient.

    A backward pass runs after the forward function has returned, so its statistics
    cannot be an ordinary output. Instead, pass a zero `BackwardStats` (from
    [`jaxdeq.BackwardStats.probe`][]) into [`jaxdeq.fixed_point`][] or a layer and
    differentiate with respect to it as well: its "gradient" is a `BackwardStats`
    holding the statistics of the backward solve. Under `jax.vmap` give the probe a
    batch axis, so the statistics are per sample.

    !!! Example

        ```python
        def loss(params, probe):
            sol = jaxdeq.fixed_point(fn, solver, y0, params, backward_stats=probe)
            return jnp.sum(sol.value**2)

        grads, bstats = jax.grad(loss, argnums=(0, 1))(params, BackwardStats.probe())
        bstats.num_steps, bstats.rel_residual, bstats.result
        ```

    **Attributes:**

    - `num_steps`: iterations of the backward solve (the number of terms or steps for
        the approximate adjoints).
    - `rel_residual`: the relative residual $\|(I - J^\top) w - v\| / \|v\|$ of the
        adjoint linear system at the returned $w$. Approximate adjoints report it only
        when constructed with `monitor=True`; otherwise it is NaN ("not measured").
    - `success`: `1.0` if the backward solve met its tolerance *and* the forward
        solve it differentiates succeeded, else `0.0`. The approximate adjoints
        solve no system: without `monitor=True` their success is that of the forward
        solve; with it, also that their measured residual met the tolerance.
    - `result` (property): `success` as a [`jaxdeq.RESULTS`][].
    """

    num_steps: Float[Array, "*batch"]
    rel_residual: Float[Array, "*batch"]
    success: Float[Array, "*batch"]

    @property
    def result(self) -> RESULTS:
        """`RESULTS.successful` where `success` is 1, else `RESULTS.backward_failed`."""
        # Elementwise (`RESULTS.where` needs a scalar predicate), for batched stats.
        value = jnp.where(
            jnp.asarray(self.success) > 0.5,
            RESULTS.successful._value,
            RESULTS.backward_failed._value,
        )
        return eqx.tree_at(lambda r: r._value, RESULTS.successful, value)

    @property
    def residual(self) -> Float[Array, "*batch"]:
        """Deprecated alias of `rel_residual`."""
        warnings.warn(
            "`BackwardStats.residual` is deprecated; use `rel_residual`.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.rel_residual

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


def forward_success(result: Any) -> Array:
    """`1.0` where a forward result is successful, else `0.0` (float32), for
    `BackwardStats.success`."""
    return is_successful(result).astype(jnp.float32)


def deprecated_z0(name: str, y0: Any, z0: Any) -> Any:
    """`y0`, or the deprecated `z0=` keyword of a layer's call with a warning."""
    if z0 is None:
        return y0
    if y0 is not None:
        raise TypeError(f"{name}: pass `y0` only (`z0` is its deprecated name).")
    warnings.warn(
        f"{name}(x, z0=...) is deprecated; the initial state is `y0` in every "
        "jaxdeq layer, as in optimistix.",
        DeprecationWarning,
        stacklevel=3,
    )
    return z0
