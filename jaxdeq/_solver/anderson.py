from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._misc import (
    as_int,
    bookkeeping_dtype,
    check_growth_factor,
    check_positive_int,
    check_tolerances,
    check_unit_interval,
    DIVERGENCE_RATIO,
    flatten,
    iterate_diverged,
    passes,
    real_dtype,
    record,
    relative,
    stopping,
    unflatten,
    write_row,
)
from .._solution import AbstractReportingState


# Mixing coefficients larger than this (in sum of absolute values) mean the
# least-squares system was numerically singular: the extrapolation is not trusted.
_MAX_COEFF = 1e4
# The normalised Gram matrix counts as singular when its smallest elimination pivot
# falls below this multiple of machine epsilon times its largest diagonal entry.
_COND_MARGIN = 100.0


def _spd_solve(h: Array, rhs: Array) -> tuple[Array, Array]:
    """Solve `h x = rhs` for a small Hermitian positive definite `h`.

    Gaussian elimination without pivoting (stable for positive definite matrices)
    in a `fori_loop` over the rows: under `vmap` each elimination step is a handful
    of vectorised ops (faster on CPU than batched LAPACK calls), and the compiled
    program does not grow with the memory (a Python-unrolled elimination compiles
    in time linear in it: about 9 s at memory 64). Also returns the smallest pivot,
    a cheap witness of (near-)singularity.
    """
    index = jnp.arange(h.shape[0])

    def eliminate(k, carry):
        h, rhs, min_pivot = carry
        row = h[k]
        pivot = row[k]
        factor = jnp.where(index == k, 0, h[:, k] / pivot)
        h = h - factor[:, None] * row[None, :]
        rhs = rhs - factor * rhs[k]
        return h, rhs, jnp.minimum(min_pivot, jnp.real(pivot))

    min_pivot = jnp.asarray(jnp.inf, jnp.real(h).dtype)
    h, rhs, min_pivot = jax.lax.fori_loop(0, h.shape[0], eliminate, (h, rhs, min_pivot))
    return rhs / jnp.diagonal(h), min_pivot


class _AndersonState(AbstractReportingState):
    iterates: Float[Array, "memory n"]
    residuals: Float[Array, "memory n"]
    gram: Float[Array, "memory memory"]
    valid: Bool[Array, " memory"]
    index: Int[Array, ""]
    best_y: Float[Array, " n"]
    best_g: Float[Array, " n"]
    best_residual: Scalar
    first_residual: Scalar
    initial_scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    num_restarts: Int[Array, ""]
    trace: Float[Array, " trace_size"]

    @property
    def num_fn_evals(self) -> Int[Array, ""]:
        return self.step  # one evaluation per step


class Anderson(optx.AbstractFixedPointSolver):
    r"""Type-II Anderson acceleration for fixed points $y = f(y)$.

    Keeps the last `memory` iterates $x_i$ and residuals $g_i = f(x_i) - x_i$ in
    fixed-size buffers written cyclically, solves the regularised constrained least
    squares

    $$\min_\alpha \Big\|\sum_i \alpha_i g_i\Big\|^2 + \lambda \bar{g}^2 \|\alpha\|^2
    \quad\text{s.t.}\quad \sum_i \alpha_i = 1$$

    (with $\bar g^2 = \|g_k\|^2$ the newest squared residual norm, so the ridge is
    scale free and never outweighs a long history) as a bordered
    $(m + 1) \times (m + 1)$ linear system in at least float32 (Jacobi-scaled, so
    residuals of very different sizes are not mistaken for a singular history),
    and moves to $x^+ = \sum_i \alpha_i (x_i + \beta g_i)$.

    Safeguards: if the mixing coefficients are non-finite or huge (an
    ill-conditioned history) the step falls back to a damped Picard step
    $x + \beta_s g$ and the history restarts; if the residual grows to more than
    `safeguard_factor` times the best residual seen, the solver returns to the best
    iterate, takes a damped Picard step from there and restarts the history.

    Success test: the returned $y$ satisfies $\|f(y) - y\| \le \mathrm{atol} +
    \mathrm{rtol}\,\|f(y)\|$ in `norm` (`abs_residual` is $\|f(y) - y\|$,
    `rel_residual` is $\|f(y) - y\| / \|f(y)\|$), with a residual below the first
    one unless it also passes with $\|f(y)\|$ replaced by the initial scale
    $s_0 = \|y_0\| + \|f(y_0)\|$, and the solve has not diverged (a residual $10^8$
    times the first one, or an iterate $10^8$ times $s_0$). The solver returns the
    last iterate it evaluated (never an untested extrapolation), also when it stops
    at `max_steps`, so the report is exactly that of the returned value. One
    function evaluation per step.

    The state is a single problem: for a batch of independent problems, `jax.vmap`
    the solve (as [`jaxdeq.DEQ`][] does), which gives each sample its own norm, its own
    least squares and its own stopping time.

    ??? cite "References"

        ```bibtex
        @article{anderson1965iterative,
            author = {Anderson, Donald G.},
            title = {Iterative Procedures for Nonlinear Integral Equations},
            journal = {Journal of the ACM},
            volume = {12},
            number = {4},
            pages = {547--560},
            year = {1965},
        }

        @article{walker2011anderson,
            author = {Walker, Homer F. and Ni, Peng},
            title = {Anderson Acceleration for Fixed-Point Iterations},
            journal = {SIAM Journal on Numerical Analysis},
            volume = {49},
            number = {4},
            pages = {1715--1735},
            year = {2011},
        }
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    memory: int = eqx.field(default=5, converter=as_int)
    ridge: float = 1e-4
    damping: float = 1.0
    safeguard_factor: float = 1e3
    safeguard_damping: float = 0.5
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "Anderson"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "memory", self.memory)
        check_positive_int(self._name, "trace_size", self.trace_size)
        check_unit_interval(self._name, "damping", self.damping)
        check_unit_interval(self._name, "safeguard_damping", self.safeguard_damping)
        if not float(self.ridge) >= 0:
            raise ValueError(f"Anderson: `ridge` must be >= 0, got {self.ridge!r}.")
        check_growth_factor(self._name, "safeguard_factor", self.safeguard_factor)

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _AndersonState:
        del fn, args, options, aux_struct, tags
        dtype = bookkeeping_dtype((y, f_struct))
        x = flatten(y, dtype)
        n = x.shape[0]
        m = self.memory
        inf = jnp.array(jnp.inf, real_dtype(dtype))
        return _AndersonState(  # pyright: ignore[reportCallIssue]
            iterates=jnp.zeros((m, n), dtype),
            residuals=jnp.zeros((m, n), dtype),
            gram=jnp.zeros((m, m), dtype),
            valid=jnp.zeros((m,), bool),
            index=jnp.array(0),
            best_y=x,
            best_g=jnp.zeros_like(x),
            best_residual=inf,
            first_residual=inf,
            initial_scale=inf,
            abs_residual=inf,
            rel_residual=inf,
            converged=jnp.array(False),
            diverged=jnp.array(False),
            nonfinite=jnp.array(False),
            step=jnp.array(0),
            num_restarts=jnp.array(0),
            trace=jnp.full((self.trace_size,), jnp.nan, real_dtype(dtype)),
        )

    def step(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _AndersonState, Any]:
        del options, tags
        fy, aux = fn(y, args)
        dtype = state.iterates.dtype
        x = flatten(y, dtype)
        f = flatten(fy, dtype)
        g = f - x
        abs_residual = self.norm(g)
        f_norm = self.norm(f)
        rel_residual = relative(abs_residual, f_norm)
        first_residual = jnp.where(state.step == 0, abs_residual, state.first_residual)
        x_norm = self.norm(x)
        initial_scale = jnp.where(state.step == 0, x_norm + f_norm, state.initial_scale)
        nonfinite = jnp.invert(jnp.isfinite(abs_residual))
        diverged = (abs_residual > DIVERGENCE_RATIO * first_residual) | (
            iterate_diverged(x_norm, initial_scale)
        )
        converged = passes(
            abs_residual, f_norm, first_residual, initial_scale, self.rtol, self.atol
        ) & jnp.invert(diverged)

        # Residual grew far beyond the best seen: go back to the best iterate.
        grew = abs_residual > self.safeguard_factor * state.best_residual
        improved = abs_residual < state.best_residual
        best_y = jnp.where(improved, x, state.best_y)
        best_g = jnp.where(improved, g, state.best_g)
        best_residual = jnp.where(improved, abs_residual, state.best_residual)

        # Write (x, g) into the history and update the Gram matrix in O(m n).
        index = state.index
        iterates = write_row(state.iterates, index, x)
        residuals = write_row(state.residuals, index, g)
        valid = write_row(state.valid, index, jnp.array(True))
        # row[j] = <g_j, g> (conjugate-linear in the first argument for complex y).
        row = jnp.conj(residuals) @ g
        gram = write_row(state.gram.T, index, row).T
        gram = write_row(gram, index, jnp.conj(row))

        alpha, well_conditioned = self._mixing(gram, valid, index)
        mixed_x = alpha @ iterates
        mixed_g = alpha @ residuals
        anderson_x = mixed_x + self.damping * mixed_g
        picard_x = x + self.safeguard_damping * g
        restart_x = best_y + self.safeguard_damping * best_g
        new_x = jnp.where(
            grew, restart_x, jnp.where(well_conditioned, anderson_x, picard_x)
        )
        restart = grew | jnp.invert(well_conditioned)
        # On an ill-conditioned restart keep the newest pair; after a residual blow-up
        # keep nothing.
        keep_newest = jnp.arange(self.memory) == index
        valid = jnp.where(
            grew, jnp.zeros_like(valid), jnp.where(restart, keep_newest, valid)
        )

        new_y = jax.tree_util.tree_map(
            lambda a, b: jnp.where(converged, a, b), y, unflatten(new_x, y)
        )
        new_state = _AndersonState(  # pyright: ignore[reportCallIssue]
            iterates=iterates,
            residuals=residuals,
            gram=gram,
            valid=valid,
            index=(index + 1) % self.memory,
            best_y=best_y,
            best_g=best_g,
            best_residual=best_residual,
            first_residual=first_residual,
            initial_scale=initial_scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            converged=converged,
            diverged=diverged,
            nonfinite=nonfinite,
            step=state.step + 1,
            num_restarts=state.num_restarts
            + (restart & jnp.invert(converged)).astype(state.num_restarts.dtype),
            trace=record(state.trace, state.step, rel_residual),
        )
        return new_y, new_state, aux

    def _mixing(
        self,
        gram: Float[Array, "m m"],
        valid: Bool[Array, " m"],
        newest: Int[Array, ""],
    ) -> tuple[Float[Array, " m"], Bool[Array, ""]]:
        # The constrained least squares min |G^T a|^2 + ridge |g_k|^2 |a|^2, sum(a) = 1
        # (g_k the newest residual) has the solution a = H^-1 1 / (1^T H^-1 1) with H
        # the Gram matrix plus the ridge. It is solved in Jacobi-scaled form,
        # D^-1/2 H D^-1/2 with D = diag(Gram), so that residuals of very different
        # sizes (the history of a converging solve) do not look like a singular
        # system: only residuals that are genuinely (nearly) linearly dependent do.
        # The ridge is relative to the newest residual, which bounds the least
        # squares objective: it never outweighs the history, however long.
        # Invalid slots get an identity row and a zero right-hand side, which forces
        # their coefficient to zero.
        mask = valid[:, None] & valid[None, :]
        gram = jnp.where(mask, gram, 0)
        diagonal = jnp.real(jnp.diagonal(gram))
        diagonal = jnp.where(valid & (diagonal > 0), diagonal, 1)
        newest_sq = jnp.sum(jnp.where(jnp.arange(self.memory) == newest, diagonal, 0))
        inv_sqrt = (1 / jnp.sqrt(diagonal)).astype(gram.dtype)
        scaled = gram * inv_sqrt[:, None] * inv_sqrt[None, :]
        ridge = jnp.where(valid, self.ridge * newest_sq / diagonal, 1.0)
        h = jnp.where(mask, scaled, 0) + jnp.diag(ridge.astype(gram.dtype))
        rhs = jnp.where(valid, inv_sqrt, 0)
        solution, min_pivot = _spd_solve(h, rhs)
        solution = solution * inv_sqrt
        total = jnp.sum(solution)
        alpha = solution / jnp.where(total == 0, 1, total)
        eps = float(jnp.finfo(gram.dtype).eps)
        ok = (
            (min_pivot > _COND_MARGIN * eps * jnp.max(jnp.real(jnp.diagonal(h))))
            & jnp.all(jnp.isfinite(alpha))
            & (jnp.sum(jnp.abs(alpha)) < _MAX_COEFF)
        )
        alpha = jnp.where(ok, alpha, 0)
        return alpha, ok

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _AndersonState,
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
        state: _AndersonState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, args, options, tags, result
        # A solve that stops without converging (max_steps, divergence) returns the
        # last iterate it measured, whose residual it reports, not the untested
        # extrapolation after it; `aux` is that iterate's too. No extra evaluation.
        measured = state.iterates[(state.index - 1) % self.memory]
        keep = state.converged | (state.step == 0)
        y = jax.tree_util.tree_map(
            lambda a, b: jnp.where(keep, a, b), y, unflatten(measured, y)
        )
        return y, aux, {}


Anderson.__init__.__doc__ = r"""**Arguments:**

- `rtol`: relative tolerance: stop when $\|f(y) - y\| \le$ `atol` $+$ `rtol`
    $\|f(y)\|$.
- `atol`: absolute tolerance, as above.
- `norm`: the norm of the stopping test, any `PyTree -> Scalar`; defaults to
    [`optimistix.two_norm`][].
- `memory`: the number $m \ge 1$ of past iterates mixed. `memory=1` is damped
    fixed-point (Picard) iteration.
- `ridge`: the relative Tikhonov regularisation $\lambda \ge 0$ of the least squares.
- `damping`: the mixing parameter $\beta \in (0, 1]$; $1$ is undamped.
- `safeguard_factor`: restart from the best iterate when the residual exceeds this
    multiple of the best residual so far. Must be $> 1$.
- `safeguard_damping`: the damping of the Picard step taken on a restart, in
    $(0, 1]$.
- `trace_size`: length of the residual trace kept in the state; step $k$ writes its
    relative residual to slot $\min(k, \text{trace\_size} - 1)$.
"""
