from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._misc import (
    as_int,
    check_positive_int,
    check_tolerances,
    record,
    relative,
)
from .._solution import AbstractReportingState


class _BracketedNewtonState(AbstractReportingState):
    lower: Scalar
    upper: Scalar
    f: Scalar
    df: Scalar
    aux: Any
    f_lower: Scalar
    f_upper: Scalar
    scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    step_size: Scalar
    converged: Bool[Array, ""]
    bracketed: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    num_bisections: Int[Array, ""]
    trace: Array

    @property
    def num_fn_evals(self) -> Int[Array, ""]:
        return 3 + self.step  # both ends, the start, one per step


def _value_and_derivative(fn, y, args):
    (f, aux), (df, _) = jax.jvp(lambda y_: fn(y_, args), (y,), (jnp.ones_like(y),))
    return f, df, aux


class BracketedNewton(optx.AbstractRootFinder):
    r"""Newton's method for one scalar equation, safeguarded by a bracket.

    The root is kept in a bracket $[\ell, u]$ on which $f$ changes sign. Each step
    takes the Newton step $y - f(y)/f'(y)$ (with $f'$ from one forward-mode
    derivative, which for an equilibrium condition goes through the implicit
    derivative of everything inside $f$) when it lands strictly inside the
    bracket, and bisects otherwise; the bracket then shrinks to the side where the
    sign changes. So it converges like Newton near a simple root and cannot leave
    the bracket, which matters when $f$ is undefined outside it (an interest rate
    above the discount rate, say).

    The bracket is passed like [`optimistix.Bisection`][]'s:
    `options=dict(lower=..., upper=...)`. $f$ must change sign between them;
    otherwise the solve fails with `optimistix.RESULTS.nonlinear_divergence`.
    Success test: the returned $y$ has $f(y) = 0$, or the step that produced it or
    the bracket around it is at most $\mathrm{atol} + \mathrm{rtol}\,|y|$
    (`abs_residual` is $|f(y)|$ and `rel_residual` is $|f(y)| / (|f(\ell_0)| +
    |f(u_0)|)$, relative to $f$ at the initial bracket), and the initial bracket
    held a sign change. The solver returns the iterate it last evaluated.
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "BracketedNewton"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "trace_size", self.trace_size)

    def init(
        self,
        fn: Callable,
        y: Scalar,
        args: PyTree,
        options: dict[str, Any],
        f_struct: jax.ShapeDtypeStruct,
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _BracketedNewtonState:
        del aux_struct, tags
        if jnp.shape(y) != () or f_struct.shape != ():
            raise ValueError(
                f"{self._name} solves one scalar equation in one scalar unknown; got "
                f"y0 of shape {jnp.shape(y)} and f of shape {f_struct.shape}."
            )
        try:
            lower, upper = options["lower"], options["upper"]
        except KeyError:
            raise ValueError(
                f"{self._name} needs a bracket: pass options=dict(lower=..., "
                "upper=...) with f changing sign between them."
            ) from None
        lower = jnp.asarray(lower, y.dtype)
        upper = jnp.asarray(upper, y.dtype)
        # Both ends in one batched evaluation: one copy of fn in the compiled
        # program instead of two (fn may be a whole model solve).
        ends = jax.vmap(lambda y_: fn(y_, args)[0])(jnp.stack([lower, upper]))
        f_lower, f_upper = ends[0], ends[1]
        bracketed = jnp.sign(f_lower) * jnp.sign(f_upper) <= 0
        # Orient the bracket so that f(lower) <= 0 <= f(upper).
        flip = f_lower > 0
        lower, upper = jnp.where(flip, upper, lower), jnp.where(flip, lower, upper)
        y = jnp.clip(y, jnp.minimum(lower, upper), jnp.maximum(lower, upper))
        f, df, aux = _value_and_derivative(fn, y, args)
        abs_residual = jnp.abs(f)
        scale = jnp.abs(f_lower) + jnp.abs(f_upper)
        rel_residual = relative(abs_residual, scale)
        return _BracketedNewtonState(  # pyright: ignore[reportCallIssue]
            lower=lower,
            upper=upper,
            f=f,
            df=df,
            aux=aux,
            f_lower=f_lower,
            f_upper=f_upper,
            scale=scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            step_size=jnp.array(jnp.inf, y.dtype),
            converged=f == 0,
            bracketed=bracketed,
            nonfinite=jnp.invert(jnp.isfinite(f) & jnp.isfinite(df)),
            step=jnp.array(0),
            num_bisections=jnp.array(0),
            trace=record(
                jnp.full((self.trace_size,), jnp.nan, y.dtype),
                jnp.array(0),
                abs_residual,
            ),
        )

    def step(
        self,
        fn: Callable,
        y: Scalar,
        args: PyTree,
        options: dict[str, Any],
        state: _BracketedNewtonState,
        tags: frozenset[object],
    ):
        del options, tags
        # Shrink the bracket with the sign of f at the current point.
        lower = jnp.where(state.f <= 0, y, state.lower)
        upper = jnp.where(state.f > 0, y, state.upper)
        lo, hi = jnp.minimum(lower, upper), jnp.maximum(lower, upper)
        newton = y - state.f / jnp.where(state.df == 0, jnp.inf, state.df)
        inside = (newton > lo) & (newton < hi) & jnp.isfinite(newton)
        new_y = jnp.where(inside, newton, 0.5 * (lo + hi))
        f, df, aux = _value_and_derivative(fn, new_y, args)
        step_size = jnp.abs(new_y - y)
        width = hi - lo
        tol = self.atol + self.rtol * jnp.abs(new_y)
        abs_residual = jnp.abs(f)
        new_state = _BracketedNewtonState(  # pyright: ignore[reportCallIssue]
            lower=lower,
            upper=upper,
            f=f,
            df=df,
            aux=aux,
            f_lower=state.f_lower,
            f_upper=state.f_upper,
            scale=state.scale,
            abs_residual=abs_residual,
            rel_residual=relative(abs_residual, state.scale),
            step_size=step_size,
            converged=(f == 0) | (step_size <= tol) | (width <= tol),
            bracketed=state.bracketed,
            nonfinite=jnp.invert(jnp.isfinite(f) & jnp.isfinite(df)),
            step=state.step + 1,
            num_bisections=state.num_bisections
            + jnp.invert(inside).astype(state.num_bisections.dtype),
            trace=record(state.trace, state.step + 1, abs_residual),
        )
        return new_y, new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: Scalar,
        args: PyTree,
        options: dict[str, Any],
        state: _BracketedNewtonState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        result = optx.RESULTS.where(
            state.bracketed, optx.RESULTS.successful, optx.RESULTS.nonlinear_divergence
        )
        result = optx.RESULTS.where(state.nonfinite, optx.RESULTS.nonfinite, result)
        stop = state.converged | jnp.invert(state.bracketed) | state.nonfinite
        return stop, result

    def postprocess(
        self,
        fn: Callable,
        y: Scalar,
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _BracketedNewtonState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[Scalar, Any, dict[str, Any]]:
        del fn, aux, args, options, tags, result
        return y, state.aux, {}


BracketedNewton.__init__.__doc__ = r"""**Arguments:**

- `rtol`, `atol`: stop when the last step, or the bracket, is at most `atol`
    $+$ `rtol` $|y|$.
- `norm`: unused (a scalar has one norm); kept for optimistix's interface.
- `trace_size`: the length of the $|f|$ trace kept in the state.
"""
