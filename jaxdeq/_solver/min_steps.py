from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from equinox import AbstractVar
from jaxtyping import Array, Bool, Int, PyTree

from .._solution import AbstractReportingState


class _MinStepsState(eqx.Module):
    state: Any
    num_steps: Int[Array, ""]


class _MinStepsReportingState(AbstractReportingState):
    # The wrapped solver's diagnostics stay readable by `jaxdeq.fixed_point`.
    state: AbstractReportingState
    num_steps: Int[Array, ""]

    @property
    def abs_residual(self):
        return self.state.abs_residual

    @property
    def rel_residual(self):
        return self.state.rel_residual

    @property
    def trace(self):
        return self.state.trace

    @property
    def num_fn_evals(self):
        return self.state.num_fn_evals


def _wrap(state: Any, num_steps: Array) -> _MinStepsState | _MinStepsReportingState:
    if isinstance(state, AbstractReportingState):
        return _MinStepsReportingState(state, num_steps)  # pyright: ignore[reportCallIssue]
    return _MinStepsState(state, num_steps)


class _AbstractMinSteps(optx.AbstractIterativeSolver):
    """Defers the success of the solver it wraps until `min_steps` steps were taken;
    failures (divergence, non-finite values) still stop at once."""

    solver: AbstractVar[optx.AbstractIterativeSolver]
    min_steps: AbstractVar[int]

    @property
    def rtol(self):
        return self.solver.rtol

    @property
    def atol(self):
        return self.solver.atol

    @property
    def norm(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.solver.norm

    def init(
        self,
        fn: Any,
        y: PyTree,
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _MinStepsState | _MinStepsReportingState:
        state = self.solver.init(fn, y, args, options, f_struct, aux_struct, tags)
        return _wrap(state, jnp.array(0))

    def step(
        self,
        fn: Any,
        y: PyTree,
        args: PyTree,
        options: dict[str, Any],
        state: _MinStepsState | _MinStepsReportingState,
        tags: frozenset[object],
    ) -> tuple[PyTree, _MinStepsState | _MinStepsReportingState, Any]:
        y, inner, aux = self.solver.step(fn, y, args, options, state.state, tags)
        return y, _wrap(inner, state.num_steps + 1), aux

    def terminate(
        self,
        fn: Any,
        y: PyTree,
        args: PyTree,
        options: dict[str, Any],
        state: _MinStepsState | _MinStepsReportingState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        done, result = self.solver.terminate(fn, y, args, options, state.state, tags)
        failed = result != optx.RESULTS.successful
        return done & ((state.num_steps >= self.min_steps) | failed), result

    def postprocess(
        self,
        fn: Any,
        y: PyTree,
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _MinStepsState | _MinStepsReportingState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree, Any, dict[str, Any]]:
        return self.solver.postprocess(
            fn, y, aux, args, options, state.state, tags, result
        )


def _check_min_steps(name: str, min_steps: Any) -> None:
    if isinstance(min_steps, bool) or not isinstance(min_steps, int):
        raise TypeError(
            f"{name}: `min_steps` must be a Python int, got {type(min_steps).__name__}."
        )
    if min_steps < 0:
        raise ValueError(
            f"{name}: `min_steps` must be >= 0, got {min_steps!r}. Use 0 or 1 for no "
            "minimum."
        )


class MinStepsFixedPoint(_AbstractMinSteps, optx.AbstractFixedPointSolver):
    """Wraps a fixed-point solver so that it takes at least `min_steps` steps before
    it may stop with success. A failure (divergence, non-finite values) still stops
    at once. Useful when the first iterates meet the tolerance by accident, e.g. a
    refiner started from a proposal it must move.
    """

    solver: optx.AbstractFixedPointSolver
    min_steps: int = eqx.field(static=True)

    def __init__(self, solver: optx.AbstractFixedPointSolver, min_steps: int):
        self.solver = solver
        self.min_steps = min_steps

    def __check_init__(self):
        _check_min_steps("MinStepsFixedPoint", self.min_steps)
        if not isinstance(self.solver, optx.AbstractFixedPointSolver):
            raise TypeError(
                "MinStepsFixedPoint: `solver` must be an "
                f"optimistix.AbstractFixedPointSolver, got {type(self.solver).__name__}"
                ". Wrap a root finder with jaxdeq.MinStepsRootFinder."
            )

    # Redeclared to work around the Equinox bug fixed in
    # https://github.com/patrick-kidger/equinox/pull/544, as optimistix does.
    @property
    def rtol(self):
        return self.solver.rtol

    @property
    def atol(self):
        return self.solver.atol

    @property
    def norm(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.solver.norm


MinStepsFixedPoint.__init__.__doc__ = """**Arguments:**

- `solver`: the fixed-point solver to wrap; its `rtol`, `atol` and `norm` are this
    solver's.
- `min_steps`: the fewest steps before the solve may stop with success (0 or 1: no
    minimum).
"""


class MinStepsRootFinder(_AbstractMinSteps, optx.AbstractRootFinder):
    """Wraps a root finder so that it takes at least `min_steps` steps before it may
    stop with success. A failure (divergence, non-finite values) still stops at once.
    """

    solver: optx.AbstractRootFinder
    min_steps: int = eqx.field(static=True)

    def __init__(self, solver: optx.AbstractRootFinder, min_steps: int):
        self.solver = solver
        self.min_steps = min_steps

    def __check_init__(self):
        _check_min_steps("MinStepsRootFinder", self.min_steps)
        if not isinstance(self.solver, optx.AbstractRootFinder):
            raise TypeError(
                "MinStepsRootFinder: `solver` must be an "
                f"optimistix.AbstractRootFinder, got {type(self.solver).__name__}. "
                "Wrap a fixed-point solver with jaxdeq.MinStepsFixedPoint."
            )

    # Redeclared to work around the Equinox bug fixed in
    # https://github.com/patrick-kidger/equinox/pull/544, as optimistix does.
    @property
    def rtol(self):
        return self.solver.rtol

    @property
    def atol(self):
        return self.solver.atol

    @property
    def norm(self):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.solver.norm


MinStepsRootFinder.__init__.__doc__ = """**Arguments:**

- `solver`: the root finder to wrap; its `rtol`, `atol` and `norm` are this solver's.
- `min_steps`: the fewest steps before the solve may stop with success (0 or 1: no
    minimum).
"""


def at_least(
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder, min_steps: int
) -> optx.AbstractFixedPointSolver | optx.AbstractRootFinder:
    """`solver`, made to take at least `min_steps` steps before it may stop with
    success: wrapped in [`jaxdeq.MinStepsFixedPoint`][] or
    [`jaxdeq.MinStepsRootFinder`][] by its type, or returned as it is for
    `min_steps <= 1`."""
    if min_steps <= 1:
        return solver
    if isinstance(solver, optx.AbstractFixedPointSolver):
        return MinStepsFixedPoint(solver, min_steps)
    if isinstance(solver, optx.AbstractRootFinder):
        return MinStepsRootFinder(solver, min_steps)
    raise TypeError(
        "jaxdeq: a minimum number of steps needs a fixed-point solver or a root "
        f"finder, got {type(solver).__name__}."
    )
