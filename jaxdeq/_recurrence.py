"""Sequential models as one root find: the stacked residual of a recurrence, its
solve with a report and a sequential fallback, and a layer around it."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, PyTree, Scalar

from ._adjoint import AbstractDEQAdjoint
from ._adjoint_scan import ScanAdjoint
from ._misc import as_int, check_positive_int
from ._solution import as_results, BackwardStats, first_failure, Report, RESULTS
from ._solver.deer import _AbstractSequenceSolver, DEER, ELK, QuasiDEER


_SOLVERS = (DEER, QuasiDEER, ELK)


def _residual(trajectory, args):
    cell, h0, xs = args
    previous = jnp.concatenate([h0[None], trajectory[:-1]])
    return trajectory - jax.vmap(cell)(previous, xs)


def _length(xs: PyTree[Array]) -> int:
    leaves = jtu.tree_leaves(xs)
    if not leaves:
        raise ValueError(
            "jaxdeq: `xs` has no arrays, so the sequence length is unknown. For an "
            "autonomous recurrence pass e.g. `xs=jnp.zeros((T, 0))`."
        )
    lengths = {jnp.shape(x)[0] if jnp.ndim(x) else -1 for x in leaves}
    if -1 in lengths or len(lengths) != 1:
        raise ValueError(
            "jaxdeq: every leaf of `xs` must have the same leading (time) axis, got "
            f"shapes {[jnp.shape(x) for x in leaves]}."
        )
    (length,) = lengths
    if length < 1:
        raise ValueError("jaxdeq: `xs` has a time axis of length 0.")
    return length


def _check_cell(name, cell, h0, xs):
    if not callable(cell):
        raise TypeError(f"{name}: `cell` must be callable as `cell(h, x) -> h`.")
    if not isinstance(h0, jax.Array) or jnp.ndim(h0) != 1:
        raise ValueError(
            f"{name}: `h0` must be a 1-D array (the state), got "
            f"{jtu.tree_map(jnp.shape, h0)}. Reshape a scalar state to shape (1,)."
        )
    if not jnp.issubdtype(h0.dtype, jnp.floating):
        raise TypeError(
            f"{name}: `h0` must be a real floating-point array, got {h0.dtype}. "
            "Cast it, e.g. `h0.astype(jnp.float32)`."
        )
    _length(xs)
    x0 = jtu.tree_map(lambda x: x[0], xs)
    out = eqx.filter_eval_shape(cell, h0, x0)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != h0.shape:
        raise ValueError(
            f"{name}: `cell(h0, xs[0])` must return one array of the state's shape "
            f"{h0.shape}; got {out}."
        )
    if out.dtype != h0.dtype:
        raise TypeError(
            f"{name}: `cell(h0, xs[0])` returns {out.dtype} where `h0` is {h0.dtype}. "
            "Make them agree."
        )


def recurrence_residual(
    cell: Callable, h0: Array, xs: PyTree[Array]
) -> tuple[Callable, Array, tuple]:
    r"""The stacked residual of a recurrence, as an optimistix root-find problem.

    The recurrence $h_t = f(h_{t-1}, x_t)$, $t = 0, \dots, T - 1$, from $h_{-1} =$
    `h0`, is the root of $F(H)_t = h_t - f(h_{t-1}, x_t)$ over the trajectory
    $H = (h_0, \dots, h_{T-1})$, an array of shape `(T, n)`.

    !!! Example

        ```python
        fn, y0, args = jaxdeq.recurrence_residual(cell, h0, xs)
        sol = optx.root_find(fn, jaxdeq.DEER(rtol=1e-8, atol=1e-8), y0, args,
                             adjoint=jaxdeq.ScanAdjoint())
        sol.value  # (T, n): the trajectory, as jax.lax.scan would give it
        ```

    **Arguments:**

    - `cell`: the step, `cell(h, x) -> h` for a state `h` of shape `(n,)`; any
        callable, typically an equinox Module (its parameters are differentiated).
    - `h0`: the initial state $h_{-1}$, shape `(n,)`.
    - `xs`: the inputs, a pytree of arrays with a leading time axis of length $T$
        (`jnp.zeros((T, 0))` for an autonomous recurrence).

    **Returns:**

    `(fn, y0, args)`: the residual `fn(H, args)`, an initial guess (`h0` at every
    time step) and the arguments `(cell, h0, xs)`.

    **Raises:**

    `ValueError`/`TypeError` if `h0` is not a 1-D float array, the leaves of `xs`
    disagree on $T$, or `cell(h0, xs[0])` does not return the state's shape and
    dtype.
    """
    _check_cell("jaxdeq.recurrence_residual", cell, h0, xs)
    length = _length(xs)
    y0 = jnp.broadcast_to(h0, (length,) + h0.shape)
    return _residual, y0, (cell, h0, xs)


class _Given(optx.AbstractRootFinder):
    """Returns the initial guess at once, with the result in `options["result"]`:
    attaches an adjoint (the implicit gradient) to a root found elsewhere."""

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, y, args, options, f_struct, aux_struct, tags
        return jnp.array(0)

    def step(self, fn, y, args, options, state, tags):
        del fn, args, options, tags
        return y, state, None

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, state, tags
        return jnp.array(True), options["result"]

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, state, tags, result
        return y, aux, {}


class _WithProbe(eqx.Module):
    def __call__(self, y, args):
        inner, _probe = args
        return _residual(y, inner)


def _sequential(cell, h0, xs, trajectory, needed):
    """`trajectory` replaced by the sequential loop where `needed`: a while loop,
    so that under `vmap` it runs only as long as some sample needs it."""
    length = trajectory.shape[0]

    def cond(carry):
        t, _, _ = carry
        return needed & (t < length)

    def body(carry):
        t, h, out = carry
        x = jtu.tree_map(lambda v: jax.lax.dynamic_index_in_dim(v, t, 0, False), xs)
        h = cell(h, x)
        return t + 1, h, jax.lax.dynamic_update_index_in_dim(out, h, t, 0)

    _, _, out = jax.lax.while_loop(cond, body, (jnp.array(0), h0, trajectory))
    return out


def _stop(tree):
    dynamic, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(jax.lax.stop_gradient(dynamic), static)


def solve_recurrence(
    cell: Callable,
    h0: Array,
    xs: PyTree[Array],
    solver: _AbstractSequenceSolver | None = None,
    *,
    y0: Array | None = None,
    max_steps: int = 100,
    adjoint: AbstractDEQAdjoint = ScanAdjoint(),
    throw: bool = True,
    fallback: bool = True,
    chunk_size: int | None = None,
    backward_stats: BackwardStats | None = None,
) -> tuple[Array, Report]:
    r"""Evaluate a recurrence $h_t = f(h_{t-1}, x_t)$ over a whole sequence as one
    root find, parallel in time, and report how the solve went.

    Solves the stacked residual of [`jaxdeq.recurrence_residual`][] with
    [`jaxdeq.DEER`][], [`jaxdeq.QuasiDEER`][] or [`jaxdeq.ELK`][], then attaches
    the implicit gradient at the returned trajectory (by default
    [`jaxdeq.ScanAdjoint`][]: the adjoint recurrence as a reverse parallel scan, so
    gradients equal backpropagation through `jax.lax.scan`).

    **Sequential fallback.** With `fallback=True` (default), a solve that does not
    pass its success test within `max_steps` (non-convergence, divergence,
    non-finite values, e.g. on chaotic dynamics) is replaced by the sequential loop
    $h_t = f(h_{t-1}, x_t)$: the returned trajectory is then exactly that of
    `jax.lax.scan`, the result is `successful`, and the report says so in
    `report.extra["fallback"]` (`True`). Under `jax.vmap` the loop is a
    `while_loop` that runs only when some sample needs it. With `fallback=False`
    the failure is the result (raised when `throw=True`).

    **Chunks.** With `chunk_size=C`, the sequence is cut into $T / C$ chunks solved
    one after the other (a `jax.lax.scan` over chunks), each from the last state of
    the one before: memory and the scan's depth follow $C$, not $T$, and the
    fallback, if needed, replaces only the chunks that failed. The report then sums
    `num_steps` and `num_fn_evals` over chunks, takes the largest residuals and
    error estimate, the first failure as `result`, the largest residual per slot
    of the trace, and `extra["fallback"]` is whether any chunk fell back
    (`extra["fallback_chunks"]` counts them).

    Called on one sequence; `jax.vmap` it for a batch (per-sample solves, stopping
    and reports).

    **Arguments:**

    - `cell`, `h0`, `xs`: the recurrence, as in [`jaxdeq.recurrence_residual`][].
    - `solver`: a [`jaxdeq.DEER`][], [`jaxdeq.QuasiDEER`][] or [`jaxdeq.ELK`][].
        Default: `DEER(rtol=tol, atol=tol)` with `tol` = $\epsilon^{3/4}$ for the
        machine epsilon $\epsilon$ of the state's dtype (about `6e-6` in float32,
        `2e-12` in float64).
    - `y0`: initial guess of the trajectory, shape `(T, n)`; default `h0` at every
        step. Its gradient is zero.
    - `max_steps`: the budget of (quasi-)Newton steps.
    - `adjoint`: the backward mode; any jaxdeq adjoint. Its `throw` is set from
        `throw`.
    - `throw`: raise if the solve fails (after the fallback, if any) or if the
        backward solve fails.
    - `fallback`: replace a failed parallel solve by the sequential loop.
    - `chunk_size`: solve in chunks of this many steps (it must divide $T$);
        `None` (default): the whole sequence at once.
    - `backward_stats`: a [`jaxdeq.BackwardStats`][] probe; its gradient holds the
        backward solve's statistics (not with `chunk_size`).

    **Returns:**

    `(trajectory, report)`: the trajectory, shape `(T, n)`, and its
    [`jaxdeq.Report`][]: `num_steps` (Newton steps), `num_fn_evals` (calls of the
    cell: $T$ per evaluation of the residual, plus $2T$ for a fallback),
    `abs_residual`/`rel_residual` of the returned trajectory (max norm over
    $h_t - f(h_{t-1}, x_t)$ against $f(h_{t-1}, x_t)$), `residual_trace`, and in
    `extra`: `"fallback"` (whether the sequential loop replaced the parallel solve)
    and `"error_estimate"` (the norm of the Newton step at the parallel solve's
    last iterate, its first-order error).

    **Raises:**

    `ValueError`/`TypeError` before tracing for a bad `cell`, `h0`, `xs`, `y0`,
    solver, adjoint, `max_steps` or `chunk_size`.
    """
    name = "jaxdeq.solve_recurrence"
    _check_cell(name, cell, h0, xs)
    if solver is None:
        tol = float(jnp.finfo(h0.dtype).eps) ** 0.75
        solver = DEER(rtol=tol, atol=tol)
    if not isinstance(solver, _SOLVERS):
        raise TypeError(
            f"{name}: `solver` must be jaxdeq.DEER, jaxdeq.QuasiDEER or jaxdeq.ELK, "
            f"got {type(solver).__name__}."
        )
    if not isinstance(adjoint, AbstractDEQAdjoint):
        raise TypeError(
            f"{name}: `adjoint` must be a jaxdeq adjoint (default "
            f"jaxdeq.ScanAdjoint()), got {type(adjoint).__name__}."
        )
    check_positive_int(name, "max_steps", max_steps)
    if backward_stats is not None and not isinstance(backward_stats, BackwardStats):
        raise TypeError(
            f"{name}: `backward_stats` must be a jaxdeq.BackwardStats probe, e.g. "
            "jaxdeq.BackwardStats.probe()."
        )
    length = _length(xs)
    if chunk_size is not None:
        check_positive_int(name, "chunk_size", chunk_size)
        if length % chunk_size:
            raise ValueError(
                f"{name}: `chunk_size` must divide the sequence length {length}, "
                f"got {chunk_size}. Pad the sequence or pick a divisor."
            )
        if backward_stats is not None:
            raise ValueError(
                f"{name}: `backward_stats` is per solve; with `chunk_size` there is "
                "one solve per chunk. Drop one of them."
            )
    if y0 is None:
        y0 = jnp.broadcast_to(h0, (length,) + h0.shape)
    elif jnp.shape(y0) != (length,) + h0.shape:
        raise ValueError(
            f"{name}: `y0` must have shape {(length,) + h0.shape} (T, n), got "
            f"{jnp.shape(y0)}."
        )
    settings = dict(
        max_steps=as_int(max_steps),
        adjoint=eqx.tree_at(lambda a: a.throw, adjoint, throw),
        throw=throw,
        fallback=fallback,
    )
    y0 = jnp.asarray(y0, h0.dtype)
    if chunk_size is None or chunk_size == length:
        return _solve_recurrence(
            cell, h0, xs, solver, y0, backward_stats=backward_stats, **settings
        )
    return _solve_chunks(cell, h0, xs, solver, y0, as_int(chunk_size), **settings)


@eqx.filter_jit
def _solve_chunks(cell, h0, xs, solver, y0, chunk_size, **settings):
    length = y0.shape[0]
    chunks = length // chunk_size
    split = lambda v: v.reshape((chunks, chunk_size) + v.shape[1:])  # noqa: E731
    throw = settings["throw"]
    settings = settings | {"throw": False}

    def body(h, inputs):
        xs_chunk, y0_chunk = inputs
        # A failed chunk is raised once, after all chunks, naming the first failure.
        hs, report = _solve_recurrence(
            cell, h, xs_chunk, solver, y0_chunk, backward_stats=None, **settings
        )
        return hs[-1], (hs, report)

    _, (hs, reports) = jax.lax.scan(body, h0, (jtu.tree_map(split, xs), split(y0)))
    fallbacks = reports.extra["fallback"]
    report = Report(
        result=first_failure(reports.result),
        num_steps=jnp.sum(reports.num_steps),
        num_fn_evals=jnp.sum(reports.num_fn_evals),
        abs_residual=jnp.max(reports.abs_residual),
        rel_residual=jnp.max(reports.rel_residual),
        residual_trace=jnp.nanmax(reports.residual_trace, axis=0),
        extra={
            "fallback": jnp.any(fallbacks),
            "fallback_chunks": jnp.sum(fallbacks.astype(jnp.int32)),
            "error_estimate": jnp.max(reports.extra["error_estimate"]),
        },
    )
    out = hs.reshape(y0.shape)
    if throw:
        out = report.result.error_if(out, report.result != RESULTS.successful)
    return out, report


@eqx.filter_jit
def _solve_recurrence(
    cell, h0, xs, solver, y0, *, max_steps, adjoint, throw, fallback, backward_stats
):
    length = y0.shape[0]
    args = (cell, h0, xs)
    # The forward solve sees no tangents; the gradient is attached below, at the
    # trajectory actually returned.
    sol = optx.root_find(
        _residual,
        solver,
        jax.lax.stop_gradient(y0),
        _stop(args),
        max_steps=max_steps,
        adjoint=optx.RecursiveCheckpointAdjoint(),
        throw=False,
    )
    state = sol.state
    solved = sol.result == optx.RESULTS.successful
    trajectory = jax.lax.stop_gradient(sol.value)
    abs_residual, rel_residual = state.abs_residual, state.rel_residual
    num_fn_evals = length * state.num_fn_evals
    result = sol.result
    if fallback:
        used = jnp.invert(solved)
        stopped = _stop(args)
        trajectory = _sequential(stopped[0], stopped[1], stopped[2], trajectory, used)
        f = _residual(trajectory, stopped).astype(abs_residual.dtype)
        image = trajectory.astype(f.dtype) - f
        measured = solver.norm(f)
        abs_residual = jnp.where(used, measured, abs_residual)
        rel_residual = jnp.where(
            used, measured / (solver.norm(image) + 1e-30), rel_residual
        )
        finite = jnp.all(jnp.isfinite(trajectory))
        result = optx.RESULTS.where(used & finite, optx.RESULTS.successful, result)
        num_fn_evals = num_fn_evals + 2 * length * used.astype(num_fn_evals.dtype)
    else:
        used = jnp.array(False)
    given = _Given(rtol=solver.rtol, atol=solver.atol)
    if backward_stats is None:
        fn, solve_args = _residual, args
    else:
        fn, solve_args = _WithProbe(), (args, backward_stats)
    attached = optx.root_find(
        fn,
        given,
        trajectory,
        solve_args,
        options={"result": result},
        max_steps=1,
        adjoint=adjoint,
        throw=False,
    )
    report = Report(
        result=as_results(result),
        num_steps=jnp.asarray(sol.stats["num_steps"]),
        num_fn_evals=num_fn_evals,
        abs_residual=abs_residual,
        rel_residual=rel_residual,
        residual_trace=state.trace,
        extra={"fallback": used, "error_estimate": state.error_estimate},
    )
    out = attached.value
    if throw:
        out = report.result.error_if(out, report.result != RESULTS.successful)
    return out, report


class ParallelRNN(eqx.Module):
    r"""A recurrent layer evaluated parallel in time: the trajectory of
    $h_t = f(h_{t-1}, x_t)$ by [`jaxdeq.solve_recurrence`][].

    Holds a cell `cell(h, x) -> h` (any callable, typically an equinox Module), the
    initial state, the solver, the backward mode, the step budget and the fallback
    policy. Called on one sequence; `vmap` it over a batch.

    !!! Example

        ```python
        rnn = jaxdeq.ParallelRNN(cell, h0=jnp.zeros(32))
        hs, report = jax.vmap(rnn)(xs)          # xs: (batch, T, features)
        report.num_steps, report.extra["fallback"], report.successful
        ```
    """

    cell: Callable
    h0: Array
    solver: _AbstractSequenceSolver | None
    adjoint: AbstractDEQAdjoint
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    fallback: bool = eqx.field(static=True)
    chunk_size: int | None = eqx.field(static=True)

    def __init__(
        self,
        cell: Callable,
        h0: Array,
        solver: _AbstractSequenceSolver | None = None,
        adjoint: AbstractDEQAdjoint = ScanAdjoint(),
        max_steps: int = 100,
        throw: bool = False,
        fallback: bool = True,
        chunk_size: int | None = None,
    ):
        self.cell = cell
        self.h0 = h0
        self.solver = solver
        self.adjoint = adjoint
        self.max_steps = as_int(max_steps)
        self.throw = throw
        self.fallback = fallback
        self.chunk_size = as_int(chunk_size)

    def __check_init__(self):
        check_positive_int("ParallelRNN", "max_steps", self.max_steps)
        if not callable(self.cell):
            raise TypeError("ParallelRNN: `cell` must be callable as `cell(h, x)`.")

    def __call__(
        self,
        xs: PyTree[Array],
        y0: Array | None = None,
        *,
        backward_stats: BackwardStats | None = None,
        key: Any = None,
    ) -> tuple[Array, Report]:
        """Run the recurrence over one sequence.

        **Arguments:**

        - `xs`: the inputs, a pytree of arrays with a leading time axis.
        - `y0`: optional initial guess of the trajectory, shape `(T, n)`.
        - `backward_stats`: optional [`jaxdeq.BackwardStats`][] probe.
        - `key`: unused; accepted for compatibility with `eqx.nn.Sequential`.

        **Returns:**

        `(trajectory, report)`, as [`jaxdeq.solve_recurrence`][].
        """
        del key
        return solve_recurrence(
            self.cell,
            self.h0,
            xs,
            self.solver,
            y0=y0,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            throw=self.throw,
            fallback=self.fallback,
            chunk_size=self.chunk_size,
            backward_stats=backward_stats,
        )


ParallelRNN.__init__.__doc__ = r"""**Arguments:**

- `cell`: the step, `cell(h, x) -> h` for a state of shape `(n,)`.
- `h0`: the initial state $h_{-1}$, shape `(n,)`; an array field (trained with the
    cell).
- `solver`: [`jaxdeq.DEER`][] (default, with tolerances from the dtype, see
    [`jaxdeq.solve_recurrence`][]), [`jaxdeq.QuasiDEER`][] or [`jaxdeq.ELK`][].
- `adjoint`: the backward mode (default [`jaxdeq.ScanAdjoint`][]).
- `max_steps`: the budget of Newton steps.
- `throw`: whether a failed solve raises. Default `False`: in training, failures
    are reported per sample and the run goes on.
- `fallback`: replace a failed parallel solve by the sequential loop, reported in
    `report.extra["fallback"]` (default `True`).
- `chunk_size`: solve in chunks of this many steps, one after the other (see
    [`jaxdeq.solve_recurrence`][]); `None` (default): the whole sequence at once.
"""
