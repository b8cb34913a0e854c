from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._misc import (
    as_int,
    bookkeeping_dtype,
    check_growth_factor,
    check_positive_int,
    check_tolerances,
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


class _BroydenState(AbstractReportingState):
    g: Float[Array, " n"]
    aux: Any
    h0: Scalar
    us: Float[Array, "memory n"]
    vs: Float[Array, "memory n"]
    valid: Bool[Array, " memory"]
    index: Int[Array, ""]
    first_residual: Scalar
    initial_scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    num_backtracks: Int[Array, ""]
    num_restarts: Int[Array, ""]
    best_x: Float[Array, " n"]
    best_g: Float[Array, " n"]
    best_residual: Scalar
    trace: Float[Array, " trace_size"]

    @property
    def num_fn_evals(self) -> Int[Array, ""]:
        return 1 + self.step + self.num_backtracks  # init, steps, backtracks


def _apply_inverse(h0, us, vs, valid, a):
    # H a with H = h0 I + sum_{valid i} u_i v_i^H (h0 real).
    coeffs = jnp.where(valid, jnp.conj(vs) @ a, 0)
    return h0.astype(a.dtype) * a + coeffs @ us


def _apply_inverse_adjoint(h0, us, vs, valid, a):
    # H^H a.
    coeffs = jnp.where(valid, jnp.conj(us) @ a, 0)
    return h0.astype(a.dtype) * a + coeffs @ vs


class Broyden(optx.AbstractRootFinder):
    r"""Limited-memory "good" Broyden method for roots $g(y) = 0$ and fixed points.

    The inverse Jacobian of $g$ is approximated by
    $H = -I + \sum_{i=1}^{m} u_i v_i^\top$ with at most `memory` rank-one terms held in
    fixed-size buffers (the oldest term is dropped when they are full), so memory is
    bounded by `memory`, never by `max_steps`. Each step moves along $p = -H g(y)$,
    optionally with a backtracking line search on $\|g\|$, and applies the good
    Broyden update

    $$H \leftarrow H + \frac{(\Delta y - H \Delta g)\,\Delta y^\top H}
    {\Delta y^\top H \Delta g}.$$

    If the residual grows to more than `safeguard_factor` times the best seen, the
    solver returns to the best iterate and clears its memory.

    As a root finder it works in [`optimistix.root_find`][]; in
    [`optimistix.fixed_point`][] it solves $g(y) = f(y) - y = 0$, for which $H = -I$
    is plain fixed-point iteration and the first step is a Picard step. (If the first
    step reveals a Jacobian of the opposite sign, $\Delta y^\top \Delta g > 0$, as in
    root finds of increasing functions, $-I$ is replaced by the secant scaling
    $(\Delta y^\top \Delta g / \Delta g^\top \Delta g) I$.)

    Success test: the returned $y$ satisfies $\|g(y)\| \le \mathrm{atol} +
    \mathrm{rtol}\,\|y + g(y)\|$ in `norm` (for fixed points, $\|f(y) - y\| \le
    \mathrm{atol} + \mathrm{rtol}\,\|f(y)\|$; `abs_residual` is $\|g(y)\|$,
    `rel_residual` is $\|g(y)\| / \|y + g(y)\|$), with a residual below the first
    one unless it also passes with $\|y + g(y)\|$ replaced by the initial scale
    $s_0 = \|y_0\| + \|y_0 + g(y_0)\|$, and the solve has not diverged (a residual
    $10^8$ times the first one, or an iterate $10^8$ times $s_0$). The solver returns
    the iterate it last evaluated, whose residual it reports. The initial residual
    costs one function evaluation in `init`; each step costs one more, plus one per
    backtrack.

    For a batch of independent problems, `jax.vmap` the solve.

    ??? cite "References"

        ```bibtex
        @article{broyden1965class,
            author = {Broyden, Charles G.},
            title = {A Class of Methods for Solving Nonlinear Simultaneous Equations},
            journal = {Mathematics of Computation},
            volume = {19},
            number = {92},
            pages = {577--593},
            year = {1965},
        }

        @inproceedings{bai2019deep,
            author = {Bai, Shaojie and Kolter, J. Zico and Koltun, Vladlen},
            title = {Deep Equilibrium Models},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2019},
        }
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    memory: int = eqx.field(default=20, converter=as_int)
    line_search: bool = False
    max_backtracks: int = eqx.field(default=8, converter=as_int)
    safeguard_factor: float = 1e2
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "Broyden"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "memory", self.memory)
        check_positive_int(self._name, "max_backtracks", self.max_backtracks)
        check_positive_int(self._name, "trace_size", self.trace_size)
        check_growth_factor(self._name, "safeguard_factor", self.safeguard_factor)

    def _residual(self, fn, y, args, dtype):
        out, aux = fn(y, args)
        g = flatten(out, dtype)
        return g, self.norm(g), aux

    def init(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _BroydenState:
        del options, aux_struct, tags
        if jtu.tree_structure(y) != jtu.tree_structure(f_struct) or any(
            a.shape != b.shape
            for a, b in zip(jtu.tree_leaves(y), jtu.tree_leaves(f_struct))
        ):
            raise ValueError(
                "Broyden: the root function must return a pytree with the same "
                "structure and shapes as `y0`. For a least-squares problem with a "
                "different output size use `optimistix.least_squares`."
            )
        dtype = bookkeeping_dtype((y, f_struct))
        g, abs_residual, aux = self._residual(fn, y, args, dtype)
        x = flatten(y, dtype)
        n = x.shape[0]
        scale = self.norm(x + g)
        rel_residual = relative(abs_residual, scale)
        return _BroydenState(  # pyright: ignore[reportCallIssue]
            g=g,
            aux=aux,
            h0=jnp.array(-1.0, real_dtype(dtype)),
            us=jnp.zeros((self.memory, n), dtype),
            vs=jnp.zeros((self.memory, n), dtype),
            valid=jnp.zeros((self.memory,), bool),
            index=jnp.array(0),
            first_residual=abs_residual,
            initial_scale=self.norm(x) + scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            converged=abs_residual <= self.atol + self.rtol * scale,
            diverged=jnp.array(False),
            nonfinite=jnp.invert(jnp.isfinite(abs_residual)),
            step=jnp.array(0),
            num_backtracks=jnp.array(0),
            num_restarts=jnp.array(0),
            best_x=x,
            best_g=g,
            best_residual=abs_residual,
            trace=record(
                jnp.full((self.trace_size,), jnp.nan, real_dtype(dtype)),
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
        state: _BroydenState,
        tags: frozenset[object],
    ) -> tuple[PyTree[Array], _BroydenState, Any]:
        del options, tags
        dtype = state.g.dtype
        x = flatten(y, dtype)
        g = state.g
        direction = -_apply_inverse(state.h0, state.us, state.vs, state.valid, g)

        def evaluate(size):
            trial = unflatten(x + size.astype(dtype) * direction, y)
            new_g, new_norm, aux = self._residual(fn, trial, args, dtype)
            return trial, new_g, new_norm, aux

        size = jnp.array(1.0, real_dtype(dtype))
        trial, new_g, new_norm, aux = evaluate(size)
        num_backtracks = jnp.array(0)
        if self.line_search:
            # Backtrack while the residual does not decrease sufficiently.
            def cond(carry):
                _, _, norm_, _, size_, tries = carry
                sufficient = norm_ <= (1 - 1e-4 * size_) * state.abs_residual
                return jnp.invert(sufficient) & (tries < self.max_backtracks)

            def body(carry):
                *_, size_, tries = carry
                size_ = size_ / 2
                return (*evaluate(size_), size_, tries + 1)

            trial, new_g, new_norm, aux, size, num_backtracks = jax.lax.while_loop(
                cond, body, (trial, new_g, new_norm, aux, size, num_backtracks)
            )

        new_x = flatten(trial, dtype)
        dx = new_x - x
        dg = new_g - g
        # H0 = -I suits fixed points (g = f - y, Jacobian near -I). If the first step
        # shows a Jacobian of the other sign along it (dx . dg > 0, as in many root
        # finds), rescale H0 to the secant value dx.dg / dg.dg instead.
        curvature = jnp.real(jnp.vdot(dx, dg))
        dg_squared = jnp.real(jnp.vdot(dg, dg))
        secant = curvature / jnp.maximum(dg_squared, jnp.finfo(dg_squared.dtype).tiny)
        flip = (state.step == 0) & (curvature > 0) & jnp.isfinite(secant)
        h0 = jnp.where(flip, secant, state.h0)
        h_dg = _apply_inverse(h0, state.us, state.vs, state.valid, dg)
        denom = jnp.vdot(dx, h_dg)
        safe = jnp.abs(denom) > 1e-12 * jnp.linalg.norm(dx) * jnp.linalg.norm(h_dg)
        safe = safe & jnp.isfinite(denom)
        u = jnp.where(safe, (dx - h_dg) / jnp.where(safe, denom, 1), 0)
        v = jnp.where(
            safe, _apply_inverse_adjoint(h0, state.us, state.vs, state.valid, dx), 0
        )
        slot = jnp.where(safe, state.index, -1)  # -1 writes nothing
        us = write_row(state.us, slot, u)
        vs = write_row(state.vs, slot, v)
        valid = write_row(state.valid, slot, jnp.array(True))
        index = jnp.where(safe, (state.index + 1) % self.memory, state.index)

        # Safeguard: a residual far above the best seen means the inverse-Jacobian
        # estimate has gone bad. Go back to the best iterate and forget the memory.
        grew = new_norm > self.safeguard_factor * state.best_residual
        improved = new_norm < state.best_residual
        best_x = jnp.where(improved, new_x, state.best_x)
        best_g = jnp.where(improved, new_g, state.best_g)
        best_residual = jnp.where(improved, new_norm, state.best_residual)
        valid = valid & jnp.invert(grew)
        new_x = jnp.where(grew, state.best_x, new_x)
        new_g = jnp.where(grew, state.best_g, new_g)
        new_norm = jnp.where(grew, state.best_residual, new_norm)
        trial = jax.tree_util.tree_map(
            lambda a, b: jnp.where(grew, a, b), unflatten(new_x, y), trial
        )

        scale = self.norm(new_x + new_g)
        rel_residual = relative(new_norm, scale)
        nonfinite = jnp.invert(jnp.isfinite(new_norm))
        diverged = (new_norm > DIVERGENCE_RATIO * state.first_residual) | (
            iterate_diverged(self.norm(new_x), state.initial_scale)
        )
        converged = passes(
            new_norm,
            scale,
            state.first_residual,
            state.initial_scale,
            self.rtol,
            self.atol,
        ) & jnp.invert(diverged)
        new_state = _BroydenState(  # pyright: ignore[reportCallIssue]
            g=new_g,
            aux=aux,
            h0=h0,
            us=us,
            vs=vs,
            valid=valid,
            index=index,
            first_residual=state.first_residual,
            initial_scale=state.initial_scale,
            abs_residual=new_norm,
            rel_residual=rel_residual,
            converged=converged,
            diverged=diverged,
            nonfinite=nonfinite,
            step=state.step + 1,
            num_backtracks=state.num_backtracks + num_backtracks,
            num_restarts=state.num_restarts + grew.astype(state.num_restarts.dtype),
            best_x=best_x,
            best_g=best_g,
            best_residual=best_residual,
            trace=record(state.trace, state.step + 1, rel_residual),
        )
        return trial, new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: PyTree[Array],
        args: PyTree,
        options: dict[str, Any],
        state: _BroydenState,
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
        state: _BroydenState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[PyTree[Array], Any, dict[str, Any]]:
        del fn, aux, args, options, tags, result
        # The aux of the returned iterate (also when the solve stopped at `y0`).
        return y, state.aux, {}


Broyden.__init__.__doc__ = r"""**Arguments:**

- `rtol`: relative tolerance: stop when $\|g(y)\| \le$ `atol` $+$ `rtol`
    $\|y + g(y)\|$ (for fixed points, $\|f(y) - y\| \le$ `atol` $+$ `rtol`
    $\|f(y)\|$).
- `atol`: absolute tolerance, as above.
- `norm`: the norm of the stopping test, any `PyTree -> Scalar`; defaults to
    [`optimistix.two_norm`][].
- `memory`: the number of rank-one terms kept in the inverse-Jacobian estimate.
- `line_search`: whether to backtrack (halving the step) until
    $\|g\|$ decreases sufficiently.
- `max_backtracks`: the most halvings per step when `line_search=True`.
- `safeguard_factor`: when the residual exceeds this multiple of the best residual so
    far, return to the best iterate and clear the rank-one memory. Must be $> 1$.
- `trace_size`: length of the residual trace kept in the state; the residual after
    step $k$ goes to slot $\min(k, \text{trace\_size} - 1)$ (slot 0 holds the initial
    residual).
"""
