from typing import Any

import equinox as eqx
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Int

from .._solution import AbstractReportingState


class _Counted(eqx.Module):
    inner: Any
    count: Int[Array, ""]


class _CountedReporting(AbstractReportingState):
    inner: AbstractReportingState
    count: Int[Array, ""]

    @property
    def abs_residual(self):
        return self.inner.abs_residual

    @property
    def rel_residual(self):
        return self.inner.rel_residual

    @property
    def trace(self):
        return self.inner.trace

    @property
    def num_fn_evals(self):
        return self.inner.num_fn_evals


def _wrap(inner_state, count):
    if isinstance(inner_state, AbstractReportingState):
        return _CountedReporting(inner_state, count)
    return _Counted(inner_state, count)


class _AtLeastMixin(eqx.Module):
    # The wrapped solver; stopping is deferred until `min_steps` steps were taken.
    solver: Any
    min_steps: int = eqx.field(static=True)

    @property
    def rtol(self):
        return self.solver.rtol

    @property
    def atol(self):
        return self.solver.atol

    @property
    def norm(self):
        return self.solver.norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        state = self.solver.init(fn, y, args, options, f_struct, aux_struct, tags)
        return _wrap(state, jnp.array(0))

    def step(self, fn, y, args, options, state, tags):
        y, inner, aux = self.solver.step(fn, y, args, options, state.inner, tags)
        return y, _wrap(inner, state.count + 1), aux

    def terminate(
        self, fn, y, args, options, state, tags
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        done, result = self.solver.terminate(fn, y, args, options, state.inner, tags)
        # A failure (divergence, non-finite values) stops at once; success only after
        # `min_steps` steps.
        failed = result != optx.RESULTS.successful
        return done & ((state.count >= self.min_steps) | failed), result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return self.solver.postprocess(
            fn, y, aux, args, options, state.inner, tags, result
        )


class _AtLeastFixedPoint(_AtLeastMixin, optx.AbstractFixedPointSolver):
    pass


class _AtLeastRoot(_AtLeastMixin, optx.AbstractRootFinder):
    pass


def at_least(solver: Any, min_steps: int) -> Any:
    """`solver`, made to take at least `min_steps` steps before it may stop."""
    if min_steps <= 1:
        return solver
    if isinstance(solver, optx.AbstractFixedPointSolver):
        return _AtLeastFixedPoint(solver, min_steps)
    if isinstance(solver, optx.AbstractRootFinder):
        return _AtLeastRoot(solver, min_steps)
    raise TypeError(
        "AttractorRefiner: `min_steps > 1` needs a fixed-point solver or a root "
        f"finder, got {type(solver).__name__}."
    )
