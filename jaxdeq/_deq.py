import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, PyTree

from ._adjoint import AbstractDEQAdjoint, ImplicitAdjoint
from ._misc import as_int, check_positive_int, record, relative
from ._solution import AbstractReportingState, BackwardStats, Report, RESULTS, translate
from ._solver.anderson import Anderson


_SOLVER_TYPES = (
    optx.AbstractFixedPointSolver,
    optx.AbstractRootFinder,
    optx.AbstractLeastSquaresSolver,
    optx.AbstractMinimiser,
)
_TRACE_SIZE = 64


class _WithProbe(eqx.Module):
    fn: Callable

    def __call__(self, y, args):
        inner_args, _probe = args
        return self.fn(y, inner_args)


def _check_inputs(fn, solver, y0, args, has_aux, max_steps, adjoint, backward_stats):
    if not isinstance(solver, _SOLVER_TYPES):
        raise TypeError(
            "jaxdeq.fixed_point: `solver` must be an optimistix or jaxdeq solver, e.g. "
            f"jaxdeq.Anderson(rtol=1e-4, atol=1e-6); got {type(solver).__name__}."
        )
    if not isinstance(adjoint, optx.AbstractAdjoint):
        raise TypeError(
            "jaxdeq.fixed_point: `adjoint` must be an optimistix adjoint, e.g. "
            f"jaxdeq.ImplicitAdjoint(); got {type(adjoint).__name__}."
        )
    if max_steps is not None:
        check_positive_int("jaxdeq.fixed_point", "max_steps", max_steps)
    if backward_stats is not None and not isinstance(backward_stats, BackwardStats):
        raise TypeError(
            "jaxdeq.fixed_point: `backward_stats` must be a jaxdeq.BackwardStats "
            "probe, e.g. jaxdeq.BackwardStats.probe()."
        )
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError("jaxdeq.fixed_point: `y0` has no arrays.")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                "jaxdeq.fixed_point: every leaf of `y0` must be floating point, got "
                f"{dtype}. Cast it, e.g. `y0.astype(jnp.float32)`."
            )
    out = eqx.filter_eval_shape(fn, y0, args)
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                "jaxdeq.fixed_point: with `has_aux=True`, `fn` must return a pair "
                "`(value, aux)`."
            )
        out = out[0]
    y_struct = jax.eval_shape(lambda: y0)
    if jtu.tree_structure(out) != jtu.tree_structure(y_struct) or any(
        a.shape != b.shape
        for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(y_struct))
    ):
        raise ValueError(
            "jaxdeq.fixed_point: `fn(y0, args)` must return a pytree with the same "
            f"structure and shapes as `y0`; got {out} for y0 of {y_struct}. A fixed "
            "point maps the state to itself: check the cell's output size."
        )
    for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(y_struct)):
        if a.dtype != b.dtype:
            raise TypeError(
                f"jaxdeq.fixed_point: `fn(y0, args)` returns {a.dtype} where `y0` is "
                f"{b.dtype}. Make them agree, e.g. build `y0` with dtype={a.dtype} or "
                "cast the parameters and inputs of the cell to the state's dtype."
            )


def _match_output_type(fn, y0, args, has_aux):
    """Give `y0` the full abstract type (sharding included) of `fn`'s output.

    Under `pmap`/`shard_map` a `y0` closed over as a constant (a layer's initial
    state) is replicated while `fn(y0)` varies along the mapped axis, and optimistix
    rejects the mismatch. Selecting `y0` against `fn(y0)` with a constant predicate
    fixes the type; XLA folds the select away, so `fn` is not evaluated.
    """
    out = eqx.filter_eval_shape(fn, y0, args)
    out = out[0] if has_aux else out
    if eqx.tree_equal(out, jax.eval_shape(lambda: y0)) is True:
        return y0
    f_y0 = fn(y0, args)
    f_y0 = f_y0[0] if has_aux else f_y0
    return jtu.tree_map(lambda y, f: jnp.where(True, y, f), y0, f_y0)


def _diagnostics(fn, sol, args, has_aux):
    state = sol.state
    if isinstance(state, AbstractReportingState):
        return {
            "abs_residual": state.abs_residual,
            "rel_residual": state.rel_residual,
            "residual_trace": state.trace,
            "num_fn_evals": state.num_fn_evals,
        }
    # Foreign solvers: measure the returned value with one more evaluation.
    y = jax.lax.stop_gradient(sol.value)
    out = fn(y, args)
    fy = out[0] if has_aux else out
    fy = jax.lax.stop_gradient(fy)
    abs_residual = optx.two_norm((fy**ω - y**ω).ω)
    rel_residual = relative(abs_residual, optx.two_norm(fy))
    num_steps = sol.stats["num_steps"]
    trace = jnp.full((_TRACE_SIZE,), jnp.nan, abs_residual.dtype)
    return {
        "abs_residual": abs_residual,
        "rel_residual": rel_residual,
        "residual_trace": record(trace, num_steps, rel_residual),
        "num_fn_evals": num_steps + 1,
    }


def fixed_point(
    fn: Callable,
    solver: optx.AbstractFixedPointSolver
    | optx.AbstractRootFinder
    | optx.AbstractLeastSquaresSolver
    | optx.AbstractMinimiser,
    y0: PyTree[Array],
    args: PyTree[Any] = None,
    options: dict[str, Any] | None = None,
    *,
    has_aux: bool = False,
    max_steps: int | None = 256,
    adjoint: optx.AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
    tags: frozenset[object] = frozenset(),
    backward_stats: BackwardStats | None = None,
) -> optx.Solution:
    r"""Find a fixed point $y = f(y, \text{args})$ and report how the solve went.

    The same call as [`optimistix.fixed_point`][] — any optimistix or jaxdeq solver,
    any adjoint — with jaxdeq's defaults (implicit, matrix-free backward pass) and
    diagnostics in `sol.stats`:

    - `num_steps`: solver steps taken; `num_fn_evals`: evaluations of `fn`;
    - `abs_residual` $\|f(y) - y\|_2$ and `rel_residual`
        $\|f(y) - y\|_2 / \|f(y)\|_2$ at the returned value;
    - `residual_trace`: a fixed-size (64 by default, the solver's `trace_size`)
        vector of relative residuals per step, NaN where no step was taken. Solvers
        that do not record a trace (e.g. optimistix's) get only their final residual
        written, at slot `min(num_steps, 63)`; their final residual costs one extra
        evaluation of `fn`.

    The solve is a single problem; `jax.vmap` it for a batch of independent problems,
    which gives per-sample norms, per-sample stopping and per-sample diagnostics.

    **Arguments:**

    - `fn`: the map, `fn(y, args) -> y` (or `(y, aux)` when `has_aux=True`).
    - `solver`: e.g. [`jaxdeq.Anderson`][], [`jaxdeq.Broyden`][],
        `optimistix.FixedPointIteration`, `optimistix.Newton`.
    - `y0`: the initial guess, a pytree of floating-point arrays.
    - `args`: passed to `fn`.
    - `options`: solver-specific runtime options.
    - `has_aux`: whether `fn` returns `(value, aux)`.
    - `max_steps`: the step budget. Runtime depends on the steps taken, not on this.
    - `adjoint`: the backward mode: [`jaxdeq.ImplicitAdjoint`][] (default),
        [`jaxdeq.PhantomAdjoint`][], [`jaxdeq.JacobianFreeAdjoint`][],
        [`jaxdeq.NeumannAdjoint`][], or any optimistix adjoint
        (`optimistix.RecursiveCheckpointAdjoint()` backpropagates through the
        iterations). jaxdeq's adjoints support forward mode too (`jax.jvp`,
        `jax.jacfwd`), and their backward tolerance follows the solver's.
    - `throw`: if `True`, a failed forward solve raises with a message that says what
        to try, and so does a failed backward solve of a jaxdeq adjoint. If `False`,
        failures are returned in `sol.result`, and the backward statistics of a
        jaxdeq adjoint report `success = 0` for a sample whose forward solve failed
        (its gradient is not that of a fixed point).
    - `tags`: lineax tags for the Jacobian of `y -> fn(y, args) - y`.
    - `backward_stats`: a [`jaxdeq.BackwardStats`][] probe; differentiating with
        respect to it yields the backward solve's statistics.

    **Returns:**

    An [`optimistix.Solution`][] whose `result` is a [`jaxdeq.RESULTS`][] and whose
    `stats` hold the diagnostics above.

    **Raises:**

    `TypeError`/`ValueError` before tracing for a wrong solver or adjoint type,
    non-float `y0`, `fn` output that does not match `y0`, or a bad `max_steps`.
    """
    _check_inputs(fn, solver, y0, args, has_aux, max_steps, adjoint, backward_stats)
    max_steps = as_int(max_steps)
    return _fixed_point(
        fn,
        solver,
        y0,
        args,
        options,
        has_aux=has_aux,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        tags=tags,
        backward_stats=backward_stats,
    )


@eqx.filter_jit
def _fixed_point(
    fn,
    solver,
    y0,
    args,
    options,
    *,
    has_aux,
    max_steps,
    adjoint,
    throw,
    tags,
    backward_stats,
):
    if isinstance(adjoint, AbstractDEQAdjoint) and not throw:
        adjoint = eqx.tree_at(lambda a: a.throw, adjoint, False)
    y0 = _match_output_type(fn, y0, args, has_aux)
    if backward_stats is None:
        solve_fn, solve_args = fn, args
    else:
        solve_fn, solve_args = _WithProbe(fn), (args, backward_stats)
    sol = optx.fixed_point(
        solve_fn,
        solver,
        y0,
        solve_args,
        options,
        has_aux=has_aux,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=False,
        tags=tags,
    )
    stats = {**sol.stats, **_diagnostics(fn, sol, args, has_aux)}
    result = translate(sol.result)
    sol = optx.Solution(
        value=sol.value, result=result, aux=sol.aux, stats=stats, state=sol.state
    )
    if throw:
        sol = result.error_if(sol, result != RESULTS.successful)
    return sol


class DEQ(eqx.Module):
    r"""A deep equilibrium layer: $z^* = f(z^*, x)$, differentiated implicitly.

    Wraps a cell `f(z, x) -> z` (any callable, typically an equinox Module), an initial
    state, a solver, a backward mode and a step budget. Called on one sample; `vmap`
    it over a batch, which makes every sample converge on its own (a converged
    sample stops changing; the batch stops when all have converged) and gives
    per-sample diagnostics.

    !!! Example

        ```python
        cell = MyCell(key=key)                        # cell(z, x) -> z
        deq = jaxdeq.DEQ(cell, y0=jnp.zeros(64))
        z, report = jax.vmap(deq)(xs)                 # per-sample solves
        report.num_steps, report.rel_residual, report.successful
        ```
    """

    cell: Callable
    y0: PyTree[Array]
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder
    adjoint: optx.AbstractAdjoint
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        cell: Callable,
        y0: PyTree[Array] = None,
        solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = Anderson(
            rtol=1e-4, atol=1e-6
        ),
        adjoint: optx.AbstractAdjoint = ImplicitAdjoint(),
        max_steps: int = 50,
        throw: bool = False,
        *,
        z0: PyTree[Array] = None,
    ):
        if z0 is not None:
            if y0 is not None:
                raise TypeError("DEQ: pass `y0` only (`z0` is its deprecated name).")
            warnings.warn(
                "DEQ(z0=...) is deprecated; the initial state is `y0` in every jaxdeq "
                "layer, as in optimistix: DEQ(cell, y0=...).",
                DeprecationWarning,
                stacklevel=2,
            )
            y0 = z0
        if y0 is None:
            raise TypeError(
                "DEQ: the initial state `y0` is required, e.g. "
                "`DEQ(cell, y0=jnp.zeros(64))`."
            )
        self.cell = cell
        self.y0 = y0
        self.solver = solver
        self.adjoint = adjoint
        self.max_steps = as_int(max_steps)
        self.throw = throw

    def __check_init__(self):
        check_positive_int("DEQ", "max_steps", self.max_steps)
        if not callable(self.cell):
            raise TypeError("DEQ: `cell` must be callable as `cell(z, x)`.")

    @property
    def z0(self) -> PyTree[Array]:
        """Deprecated name of `y0`."""
        warnings.warn(
            "DEQ.z0 is deprecated; use DEQ.y0.", DeprecationWarning, stacklevel=2
        )
        return self.y0

    def __call__(
        self,
        x: PyTree[Array],
        y0: PyTree[Array] | None = None,
        *,
        backward_stats: BackwardStats | None = None,
        key: Any = None,
    ) -> tuple[PyTree[Array], Report]:
        """Solve for the equilibrium of one sample.

        **Arguments:**

        - `x`: the input injected into every cell call.
        - `y0`: optional warm start replacing the layer's `y0`.
        - `backward_stats`: optional [`jaxdeq.BackwardStats`][] probe.
        - `key`: unused; accepted for compatibility with `eqx.nn.Sequential`.

        **Returns:**

        `(z_star, report)`: the equilibrium and its [`jaxdeq.Report`][] (the keys of
        [`jaxdeq.fixed_point`][]'s `sol.stats`).
        """
        del key
        start = self.y0 if y0 is None else y0
        sol = fixed_point(
            _cell_fn,
            self.solver,
            start,
            (self.cell, x),
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            throw=self.throw,
            backward_stats=backward_stats,
        )
        return sol.value, Report.from_solution(sol)


DEQ.__init__.__doc__ = r"""**Arguments:**

- `cell`: the cell, `cell(z, x) -> z`; any callable, typically an equinox Module.
- `y0`: the initial state of one sample; fixes the state's shape and dtype. It is an
    array field, so optimisers see it, but its gradient is zero under jaxdeq's
    adjoints (the fixed point does not depend on where the solve starts). (`z0=` is
    its deprecated name.)
- `solver`: the forward solver (default `jaxdeq.Anderson(rtol=1e-4, atol=1e-6)`); any
    optimistix fixed-point solver or root finder, e.g. [`jaxdeq.SteadyState`][] (the
    equilibrium as the steady state of $dz/dt = f(z, x) - z$) or
    [`jaxdeq.Homotopy`][] (homotopy continuation, for hard starts).
- `adjoint`: the backward mode (default [`jaxdeq.ImplicitAdjoint`][]).
- `max_steps`: the forward step budget.
- `throw`: whether a failed solve raises. Default `False`: in training, failures are
    reported per sample in `report.result` and the run goes on.
"""


def _cell_fn(z, args):
    cell, x = args
    return cell(z, x)
