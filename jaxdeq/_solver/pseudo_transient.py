from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Int, PyTree, Scalar

from .._misc import (
    as_int,
    bookkeeping_dtype,
    check_positive_int,
    check_tolerances,
    DIVERGENCE_RATIO,
    flatten,
    iterate_diverged,
    real_dtype,
    record,
    relative,
    stopping,
)
from .._solution import AbstractReportingState


class _PseudoTransientState(AbstractReportingState):
    f: PyTree[Array]
    aux: Any
    first_residual: Scalar
    initial_scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    step_size: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    trace: Array

    @property
    def num_fn_evals(self) -> Int[Array, ""]:
        return 1 + self.step


class PseudoTransientNewton(optx.AbstractRootFinder):
    r"""Newton's method with pseudo-time stepping (pseudo-transient continuation):
    each step solves

    $$\Big(\tfrac{1}{\Delta} I + \tfrac{\partial f}{\partial y}(y_n)\Big)
    (y_{n+1} - y_n) = -f(y_n),$$

    an implicit Euler step of size $\Delta$ of $\dot y = -f(y)$, which is Newton's
    method as $\Delta \to \infty$ and gradient-flow-like and globally convergent
    for small $\Delta$.

    For the HJB equation of a finite-difference scheme, $f(V) = \rho V - u(c(V)) -
    A(V) V$ with $\partial f/\partial V = \rho I - A(V)$ (the envelope theorem),
    and one step is exactly the implicit upwind iteration of Achdou, Han, Lasry,
    Lions and Moll (2022): $(\tfrac1\Delta + \rho - A_n) V_{n+1} = u(c_n) +
    V_n/\Delta$. With [`jaxdeq.BlockTridiagonal`][] as `linear_solver` each step
    costs $O(N J^3)$ for $N$ grid points and $J$ discrete states.

    The Jacobian is the [`lineax.JacobianLinearOperator`][] of `fn`: the linear
    solver decides how it is materialised (all of it for [`lineax.LU`][], $3J$
    products for [`jaxdeq.BlockTridiagonal`][]).

    Success test: the last update to the returned $y$ satisfies
    $\|y_{n+1} - y_n\| \le \mathrm{atol} + \mathrm{rtol}\,\|y_{n+1}\|$ in `norm` (a
    Newton step test, as in Achdou et al.; `abs_residual` is $\|f(y)\|$ and
    `rel_residual` is $\|f(y)\| / \|y + f(y)\|$ of the returned $y$, which for a
    fixed point is $\|f(y) - y\| / \|f(y)\|$), and the solve has not diverged (a
    residual $10^8$ times the first one, or an iterate $10^8$ times the initial scale
    $\|y_0\| + \|y_0 + f(y_0)\|$). A step that would produce NaN or Inf is not
    taken, and the solve stops at the last finite iterate with
    `optimistix.RESULTS.nonfinite`.
    """

    rtol: float
    atol: float
    delta: float = 1000.0
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    linear_solver: lx.AbstractLinearSolver = lx.AutoLinearSolver(well_posed=True)
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "PseudoTransientNewton"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "trace_size", self.trace_size)
        if not (isinstance(self.delta, (int, float)) and self.delta > 0):
            raise ValueError(
                f"{self._name}: `delta` (the pseudo-time step) must be a Python "
                f"number > 0, or float('inf') for plain Newton; got {self.delta!r}."
            )

    def _evaluate(self, fn, y, args, dtype):
        f, aux = fn(y, args)
        return f, self.norm(f), aux

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _PseudoTransientState:
        del options, aux_struct, tags
        if jax.tree.structure(y) != jax.tree.structure(f_struct) or any(
            a.shape != b.shape
            for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(f_struct))
        ):
            raise ValueError(
                f"{self._name}: the root function must return a pytree with the "
                "same structure and shapes as `y0`."
            )
        dtype = bookkeeping_dtype((y, f_struct))
        f, abs_residual, aux = self._evaluate(fn, y, args, dtype)
        rdtype = real_dtype(dtype)
        x, g = flatten(y, dtype), flatten(f, dtype)
        rel_residual = relative(abs_residual, self.norm(x + g))
        return _PseudoTransientState(  # pyright: ignore[reportCallIssue]
            f=f,
            aux=aux,
            first_residual=abs_residual,
            initial_scale=(self.norm(x) + self.norm(x + g)).astype(rdtype),
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            step_size=jnp.array(jnp.inf, rdtype),
            converged=jnp.array(False),
            diverged=jnp.array(False),
            nonfinite=jnp.invert(jnp.isfinite(abs_residual)),
            step=jnp.array(0),
            trace=record(
                jnp.full((self.trace_size,), jnp.nan, rdtype),
                jnp.array(0),
                rel_residual,
            ),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _PseudoTransientState,
        tags: frozenset[object],
    ):
        del options
        jacobian = lx.JacobianLinearOperator(
            lambda y_, a_: fn(y_, a_)[0], y, args, tags=tags
        )
        if self.delta == float("inf"):
            operator = jacobian
        else:
            identity = lx.IdentityLinearOperator(jacobian.in_structure())
            operator = jacobian + identity * (1.0 / self.delta)
        minus_f = jax.tree.map(jnp.negative, state.f)
        update = lx.linear_solve(
            operator, minus_f, self.linear_solver, throw=False
        ).value
        new_y = jax.tree.map(jnp.add, y, update)
        dtype = bookkeeping_dtype((y, state.f))
        f, abs_residual, aux = self._evaluate(fn, new_y, args, dtype)
        step_size = self.norm(update)
        nonfinite = jnp.invert(jnp.isfinite(abs_residual) & jnp.isfinite(step_size))
        # A non-finite step is not taken: the solve stops at the last finite
        # iterate (and reports `nonfinite`), so that nothing downstream, implicit
        # derivatives included, sees NaN.
        keep = lambda old, new: jnp.where(nonfinite, old, new)  # noqa: E731
        new_y = jax.tree.map(keep, y, new_y)
        f = jax.tree.map(keep, state.f, f)
        aux = jax.tree.map(keep, state.aux, aux)
        abs_residual = keep(state.abs_residual, abs_residual)
        y_norm = self.norm(new_y)
        rel_residual = relative(
            abs_residual, self.norm(flatten(new_y, dtype) + flatten(f, dtype))
        )
        diverged = (
            abs_residual
            > DIVERGENCE_RATIO
            * jnp.maximum(state.first_residual, jnp.finfo(real_dtype(dtype)).tiny)
        ) | iterate_diverged(y_norm, state.initial_scale)
        new_state = _PseudoTransientState(  # pyright: ignore[reportCallIssue]
            f=f,
            aux=aux,
            first_residual=state.first_residual,
            initial_scale=state.initial_scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            step_size=step_size,
            converged=(step_size <= self.atol + self.rtol * y_norm)
            & jnp.invert(diverged),
            diverged=diverged & jnp.invert(nonfinite),
            nonfinite=nonfinite,
            step=state.step + 1,
            trace=record(state.trace, state.step + 1, rel_residual),
        )
        return new_y, new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _PseudoTransientState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return stopping(state.converged, state.diverged, state.nonfinite)

    def postprocess(
        self,
        fn: Callable,
        y: PyTree[Array],
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _PseudoTransientState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, aux, args, options, tags, result
        return y, state.aux, {}


PseudoTransientNewton.__init__.__doc__ = r"""**Arguments:**

- `rtol`, `atol`: stop when the update is at most `atol` $+$ `rtol`
    $\|y_{n+1}\|$ in `norm`.
- `delta`: the pseudo-time step $\Delta > 0$; `float("inf")` gives plain Newton
    (policy iteration for an HJB scheme). Moll's codes use $\Delta = 1000$.
- `norm`: the norm of updates and residuals (default: max norm).
- `linear_solver`: the lineax solver for each step, for example
    [`jaxdeq.BlockTridiagonal`][] for a finite-difference scheme on an `(N, J)`
    grid (default: LU with partial pivoting on the materialised Jacobian).
- `trace_size`: the length of the relative-residual trace kept in the state.
"""
