"""Parallel-in-time Newton solvers for sequential models: DEER, quasi-DEER and ELK.

A recurrence $h_t = f(h_{t-1}, x_t)$ is the root of the stacked residual
$F(H)_t = h_t - f(h_{t-1}, x_t)$ over the trajectory $H = (h_0, \\dots, h_{T-1})$.
The Jacobian of $F$ is block lower bidiagonal (identity blocks on the diagonal,
$-J_t = -\\partial f / \\partial h_{t-1}$ below it), so a Newton step is a linear
recurrence, evaluated by a parallel associative scan.
"""

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._bidiagonal import (
    BlockBidiagonalLinearOperator,
    linear_recurrence,
    ParallelScan,
)
from .._misc import (
    as_int,
    bookkeeping_dtype,
    check_positive_int,
    check_tolerances,
    DIVERGENCE_RATIO,
    iterate_diverged,
    passes,
    real_dtype,
    record,
    relative,
    stopping,
)
from .._solution import AbstractReportingState


# Bounds of ELK's adaptive damping, and its factors on an accepted and on a rejected
# step (Marquardt's classic choice).
_MIN_DAMPING = 1e-12
_MAX_DAMPING = 1e12
_DECREASE = 0.1
_INCREASE = 10.0


class _SequenceState(AbstractReportingState):
    f: Float[Array, "T n"]
    aux: Any
    jac: Float[Array, "T n ..."]
    damping: Scalar
    merit: Scalar
    first_residual: Scalar
    initial_scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    error_estimate: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    num_rejected: Int[Array, ""]
    trace: Float[Array, " trace_size"]

    @property
    def num_fn_evals(self) -> Int[Array, ""]:
        return 1 + self.step  # init, then one (linearised) evaluation per step


def check_trajectory(name: str, y: Any, f_struct: Any) -> None:
    """`y` is one array with a leading time axis and `fn` maps it to its shape."""
    if not isinstance(y, jax.Array) or jnp.ndim(y) < 1:
        raise ValueError(
            f"{name}: `y0` must be one array of shape (T, ...) holding the whole "
            "trajectory (time first); got "
            f"{jtu.tree_map(lambda x: jnp.shape(x), y)}. "
            "jaxdeq.recurrence_residual builds such a problem from a cell."
        )
    if not isinstance(f_struct, jax.ShapeDtypeStruct) or f_struct.shape != y.shape:
        raise ValueError(
            f"{name}: the residual must return one array of the trajectory's shape "
            f"{y.shape}, got {f_struct}."
        )


def _linearise(fn, y, args, dtype, diagonal):
    """$F(y)$, aux and the blocks $J_t = \\partial f / \\partial h_{t-1}$ (dense,
    `(T, n, n)`, or their diagonals, `(T, n)`), in the bookkeeping dtype.

    The Jacobian of $F$ has identity diagonal blocks, so a probe with $e_s$ at
    every time step returns $e_s - J_t e_s$ in row $t$: $n$ Jacobian-vector
    products give every block."""
    length = y.shape[0]
    size = y.size // max(length, 1)

    def flat(h):
        out, aux = fn(h.reshape(y.shape).astype(y.dtype), args)
        return out.reshape(length, size).astype(dtype), aux

    f, jvp, aux = jax.linearize(
        flat, y.reshape(length, size).astype(dtype), has_aux=True
    )
    eye = jnp.eye(size, dtype=dtype)

    def column(s):
        unit = jnp.broadcast_to(eye[s], (length, size))
        return unit - jvp(unit)

    if diagonal:
        # One column at a time keeps the memory at O(T n).
        jac = jax.lax.map(
            lambda s: jnp.sum(column(s) * eye[s][None], axis=-1),
            jnp.arange(size),
            batch_size=min(size, 8),
        ).T
    else:
        jac = jnp.transpose(jax.vmap(column)(jnp.arange(size)), (1, 2, 0))
    return f, aux, jac


def newton_step(jac: Array, f: Array) -> Array:
    r"""The (quasi-)Newton step $\Delta$ solving $\Delta_t - J_t \Delta_{t-1} = -F_t$,
    as a lineax solve of the block-bidiagonal Jacobian by a parallel scan."""
    operator = BlockBidiagonalLinearOperator(None, -jac[1:])
    return lx.linear_solve(operator, -f, ParallelScan(), throw=False).value


def _kalman_filter_combine(dense):
    if not dense:

        def combine_diagonal(earlier, later):
            a1, b1, c1, eta1, j1 = earlier
            a2, b2, c2, eta2, j2 = later
            m = 1 / (1 + c1 * j2)
            return (
                a2 * m * a1,
                a2 * m * (b1 + c1 * eta2) + b2,
                a2 * m * c1 * a2 + c2,
                a1 * m * (eta2 - j2 * b1) + eta1,
                a1 * m * j2 * a1 + j1,
            )

        return combine_diagonal

    def mm(a, b):
        return jnp.einsum("...ij,...jk->...ik", a, b)

    def mv(a, x):
        return jnp.einsum("...ij,...j->...i", a, x)

    def tr(a):
        return jnp.swapaxes(a, -1, -2)

    def combine_dense(earlier, later):
        a1, b1, c1, eta1, j1 = earlier
        a2, b2, c2, eta2, j2 = later
        eye = jnp.eye(a1.shape[-1], dtype=a1.dtype)[None]
        # C and J are symmetric, so (I + J2 C1)^{-1} = ((I + C1 J2)^{-1})^T.
        m = jnp.linalg.inv(eye + mm(c1, j2))
        a2m = mm(a2, m)
        a1n = mm(tr(a1), tr(m))
        return (
            mm(a2m, a1),
            mv(a2m, b1 + mv(c1, eta2)) + b2,
            mm(mm(a2m, c1), tr(a2)) + c2,
            mv(a1n, eta2 - mv(j2, b1)) + eta1,
            mm(mm(a1n, j2), a1) + j1,
        )

    return combine_dense


def kalman_step(jac: Array, f: Array, damping: Scalar) -> Array:
    r"""The Levenberg–Marquardt step of ELK by a parallel Kalman smoother.

    Minimises $\sum_t \|\Delta_t - J_t \Delta_{t-1} + F_t\|^2 + \lambda \sum_t
    \|\Delta_t\|^2$ ($\Delta_{-1} = 0$): the MAP trajectory of the linear-Gaussian
    model $\Delta_t = J_t \Delta_{t-1} - F_t + q_t$, $q_t \sim N(0, I)$, observed as
    $0 = \Delta_t + r_t$, $r_t \sim N(0, \lambda^{-1} I)$. The filter is the
    associative scan of Särkkä and García-Fernández (2021), the smoother a reverse
    linear recurrence; at $\lambda = 0$ it is the Newton (DEER) step.
    """
    dense = jac.ndim == 3
    dtype = f.dtype
    kappa = (damping / (1 + damping)).astype(dtype)
    jac = jac.at[0].set(0)
    u = -f
    length, size = f.shape
    if dense:
        eye = jnp.broadcast_to(jnp.eye(size, dtype=dtype), (length, size, size))
        jt = jnp.swapaxes(jac, -1, -2)
        elements = (
            (1 - kappa) * jac,
            (1 - kappa) * u,
            (1 - kappa) * eye,
            -kappa * jnp.einsum("tij,tj->ti", jt, u),
            kappa * jnp.einsum("tij,tjk->tik", jt, jac),
        )
    else:
        elements = (
            (1 - kappa) * jac,
            (1 - kappa) * u,
            (1 - kappa) * jnp.ones_like(u),
            -kappa * jac * u,
            kappa * jac * jac,
        )
    _, mean, cov, _, _ = jax.lax.associative_scan(
        _kalman_filter_combine(dense), elements
    )
    # Smoother: s_t = E_t s_{t+1} + g_t with E_t = P_t J_{t+1}^T S^{-1},
    # S = J_{t+1} P_t J_{t+1}^T + I, g_t = m_t - E_t (J_{t+1} m_t + u_{t+1}).
    nxt = jac[1:]
    p, m = cov[:-1], mean[:-1]
    if dense:
        pj = jnp.einsum("tij,tkj->tik", p, nxt)  # P J^T
        s = jnp.einsum("tij,tjk->tik", nxt, pj) + jnp.eye(size, dtype=dtype)[None]
        gain = jnp.swapaxes(jnp.linalg.solve(s, jnp.swapaxes(pj, -1, -2)), -1, -2)
        predicted = jnp.einsum("tij,tj->ti", nxt, m) + u[1:]
        g = m - jnp.einsum("tij,tj->ti", gain, predicted)
    else:
        gain = p * nxt / (nxt * p * nxt + 1)
        g = m - gain * (nxt * m + u[1:])
    gain = jnp.concatenate([gain, jnp.zeros_like(gain[:1])])
    g = jnp.concatenate([g, mean[-1:]])
    return linear_recurrence(gain, g, reverse=True)


class _AbstractSequenceSolver(optx.AbstractRootFinder):
    """Shared loop of DEER, QuasiDEER and ELK: a (damped) Newton iteration on the
    stacked residual of a recurrence."""

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    norm: eqx.AbstractVar[Callable[[PyTree], Scalar]]
    trace_size: eqx.AbstractVar[int]

    _name: ClassVar[str]

    @abc.abstractmethod
    def _diagonal(self) -> bool:
        """Whether only the diagonals of the Jacobian blocks are used."""

    @abc.abstractmethod
    def _initial_damping(self) -> float | None:
        """The initial Levenberg–Marquardt damping, or None for undamped Newton."""

    @abc.abstractmethod
    def _adaptive(self) -> bool:
        """Whether steps are accepted only if they reduce the residual."""

    def _measure(self, y2d, f, error, first_residual, initial_scale):
        abs_residual = self.norm(f)
        scale = self.norm(y2d - f)
        nonfinite = jnp.invert(jnp.isfinite(abs_residual) & jnp.isfinite(error))
        diverged = (abs_residual > DIVERGENCE_RATIO * first_residual) | (
            iterate_diverged(self.norm(y2d), initial_scale)
        )
        within = passes(
            abs_residual, scale, first_residual, initial_scale, self.rtol, self.atol
        )
        small_error = error <= self.atol + self.rtol * self.norm(y2d)
        converged = within & small_error & jnp.invert(diverged)
        diverged = diverged & jnp.invert(nonfinite)
        rel_residual = relative(abs_residual, scale)
        return abs_residual, rel_residual, converged, diverged, nonfinite

    def init(
        self,
        fn: Callable,
        y: Array,
        args: PyTree,
        options: dict[str, Any],
        f_struct: PyTree[jax.ShapeDtypeStruct],
        aux_struct: PyTree[jax.ShapeDtypeStruct],
        tags: frozenset[object],
    ) -> _SequenceState:
        del options, aux_struct, tags
        check_trajectory(self._name, y, f_struct)
        dtype = bookkeeping_dtype((y, f_struct))
        if jnp.issubdtype(dtype, jnp.complexfloating):
            raise TypeError(f"{self._name}: complex trajectories are not supported.")
        f, aux, jac = _linearise(fn, y, args, dtype, self._diagonal())
        y2d = y.reshape(f.shape).astype(dtype)
        first_residual = self.norm(f)
        initial_scale = self.norm(y2d) + self.norm(y2d - f)
        # The error of the initial guess is unknown until the first step: at least
        # one step is always taken.
        error = jnp.array(jnp.inf, real_dtype(dtype))
        abs_residual, rel_residual, converged, diverged, nonfinite = self._measure(
            y2d, f, error, first_residual, initial_scale
        )
        damping = self._initial_damping()
        return _SequenceState(  # pyright: ignore[reportCallIssue]
            f=f,
            aux=aux,
            jac=jac,
            damping=jnp.array(0.0 if damping is None else damping, real_dtype(dtype)),
            merit=optx.two_norm(f),
            first_residual=first_residual,
            initial_scale=initial_scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            error_estimate=error,
            converged=converged,
            diverged=diverged,
            nonfinite=jnp.invert(jnp.isfinite(first_residual)),
            step=jnp.array(0),
            num_rejected=jnp.array(0),
            trace=record(
                jnp.full((self.trace_size,), jnp.nan, real_dtype(dtype)),
                jnp.array(0),
                rel_residual,
            ),
        )

    def step(
        self,
        fn: Callable,
        y: Array,
        args: PyTree,
        options: dict[str, Any],
        state: _SequenceState,
        tags: frozenset[object],
    ) -> tuple[Array, _SequenceState, Any]:
        del options, tags
        dtype = state.f.dtype
        y2d = y.reshape(state.f.shape).astype(dtype)
        damped = self._initial_damping() is not None
        if damped:
            delta = kalman_step(state.jac, state.f, state.damping)
        else:
            delta = newton_step(state.jac, state.f)
        trial = (y2d + delta).astype(y.dtype).reshape(y.shape)
        f, aux, jac = _linearise(fn, trial, args, dtype, self._diagonal())
        merit = optx.two_norm(f)
        if damped:
            # A damped step is no estimate of the error: the Newton step at the new
            # trajectory is (one more scan).
            error = self.norm(newton_step(jac, f))
        else:
            # Newton's step to the new trajectory; its error is smaller still.
            error = self.norm(delta)
        damping = state.damping
        rejected = jnp.array(0, state.num_rejected.dtype)
        if self._adaptive():
            accept = jnp.isfinite(merit) & (merit < state.merit)

            def keep(new, old):
                return jtu.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)

            trial, f, aux, jac, merit, error = keep(
                (trial, f, aux, jac, merit, error),
                (y, state.f, state.aux, state.jac, state.merit, state.error_estimate),
            )
            damping = jnp.where(accept, damping * _DECREASE, damping * _INCREASE)
            damping = jnp.clip(damping, _MIN_DAMPING, _MAX_DAMPING).astype(
                state.damping.dtype
            )
            rejected = jnp.invert(accept).astype(rejected.dtype)
        new2d = trial.reshape(f.shape).astype(dtype)
        abs_residual, rel_residual, converged, diverged, nonfinite = self._measure(
            new2d, f, error, state.first_residual, state.initial_scale
        )
        new_state = _SequenceState(  # pyright: ignore[reportCallIssue]
            f=f,
            aux=aux,
            jac=jac,
            damping=damping,
            merit=merit,
            first_residual=state.first_residual,
            initial_scale=state.initial_scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            error_estimate=error,
            converged=converged,
            diverged=diverged,
            nonfinite=nonfinite,
            step=state.step + 1,
            num_rejected=state.num_rejected + rejected,
            trace=record(state.trace, state.step + 1, rel_residual),
        )
        return trial, new_state, aux

    def terminate(
        self,
        fn: Callable,
        y: Array,
        args: PyTree,
        options: dict[str, Any],
        state: _SequenceState,
        tags: frozenset[object],
    ) -> tuple[Bool[Array, ""], optx.RESULTS]:
        del fn, y, args, options, tags
        return stopping(state.converged, state.diverged, state.nonfinite)

    def postprocess(
        self,
        fn: Callable,
        y: Array,
        aux: Any,
        args: PyTree,
        options: dict[str, Any],
        state: _SequenceState,
        tags: frozenset[object],
        result: optx.RESULTS,
    ) -> tuple[Array, Any, dict[str, Any]]:
        del fn, aux, args, options, tags, result
        return y, state.aux, {}


_PROBLEM = r"""
    The problem is a root find $F(H) = 0$ over a whole trajectory $H$, one array of
    shape `(T, ...)` with time first, whose residual has the form
    $F(H)_t = h_t - f(h_{t-1}, x_t)$ ($h_{-1}$ a given initial state): its Jacobian
    is block lower bidiagonal with identity diagonal blocks and
    $-J_t = -\partial f / \partial h_{t-1}$ below them.
    [`jaxdeq.recurrence_residual`][] builds it from a cell, and
    [`jaxdeq.solve_recurrence`][] (or the layer [`jaxdeq.ParallelRNN`][]) solves it
    with gradients, a report and a sequential fallback. The solver works unchanged
    in [`optimistix.root_find`][]; with [`jaxdeq.ScanAdjoint`][] as the adjoint its
    gradients equal backpropagation through the sequential loop.

    The blocks $J_t$ are read from $n$ Jacobian-vector products of $F$ ($n$ the
    state size), all time steps at once; a residual whose diagonal blocks are not
    the identity is outside the solver's assumptions.
"""

_SUCCESS = r"""
    Success test: the returned trajectory $H$ has $\|F(H)\| \le \mathrm{atol} +
    \mathrm{rtol}\,\|H - F(H)\|$ (the relative residual of a fixed point, in
    `norm`, by default the largest entry), and an estimate $\epsilon$ of its error
    against the exact trajectory has $\epsilon \le \mathrm{atol} +
    \mathrm{rtol}\,\|H\|$. The estimate is the norm of the (quasi-)Newton step
    that produced $H$ (for DEER the error left after it is smaller still, second
    order in that step); at least one step is taken. On a contracting recurrence
    the residual test alone would do. On a chaotic one the residual can reach
    rounding level while the trajectory is far from the sequential one (errors grow
    like $e^{\lambda t}$): Newton steps there stay large or overflow, so such a
    solve is reported as failed (non-convergence, divergence or non-finite values),
    never as a success. `abs_residual` is $\|F(H)\|$, `rel_residual`
    $\|F(H)\| / \|H - F(H)\|$, and the state's `error_estimate` $\epsilon$.
"""

_REFERENCES_DEER = r"""
    ??? cite "References"

        ```bibtex
        @inproceedings{lim2024parallelizing,
            author = {Lim, Yi Heng and Zhu, Qi and Selfridge, Joshua and
                      Kasim, Muhammad Firmansyah},
            title = {Parallelizing non-linear sequential models over the sequence
                     length},
            booktitle = {International Conference on Learning Representations},
            year = {2024},
        }

        @inproceedings{gonzalez2024towards,
            author = {Gonzalez, Xavier and Warrington, Andrew and Smith, Jimmy T. H.
                      and Linderman, Scott W.},
            title = {Towards Scalable and Stable Parallelization of Nonlinear RNNs},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2024},
        }
        ```
"""


class DEER(_AbstractSequenceSolver):
    __doc__ = (
        r"""Newton's method over the whole trajectory of a recurrence (DEER), with
    dense Jacobian blocks and a parallel-scan linear solve.

    Each step linearises $f$ around the current trajectory and solves the linear
    recurrence $\Delta_t = J_t \Delta_{t-1} - F(H)_t$ with
    [`jaxdeq.ParallelScan`][] ($O(\log T)$ depth, $O(T n^3)$ work for a state of
    size $n$). Newton's method converges quadratically near the trajectory; on a
    contracting recurrence the number of steps grows like $O((\log T)^2)$ at most,
    and in exact arithmetic $T$ steps always suffice (step $k$ makes the first $k$
    states exact). Without damping it may oscillate or overflow on unstable
    dynamics: use [`jaxdeq.ELK`][] there.
"""
        + _PROBLEM
        + _SUCCESS
        + _REFERENCES_DEER
    )

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "DEER"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "trace_size", self.trace_size)

    def _diagonal(self) -> bool:
        return False

    def _initial_damping(self) -> float | None:
        return None

    def _adaptive(self) -> bool:
        return False


class QuasiDEER(_AbstractSequenceSolver):
    __doc__ = (
        r"""Quasi-Newton over the whole trajectory of a recurrence (quasi-DEER):
    DEER with only the diagonals of the Jacobian blocks.

    The linear recurrence $\Delta_t = \operatorname{diag}(J_t) \Delta_{t-1} -
    F(H)_t$ is elementwise, so a step costs $O(T n)$ work and memory in the scan
    (reading the diagonals still takes $n$ Jacobian-vector products, done one at a
    time). It converges linearly rather than quadratically, and needs more steps
    than [`jaxdeq.DEER`][] the further the Jacobians are from diagonal; it keeps
    DEER's property that $T$ steps suffice in exact arithmetic. Its step, and so
    its error estimate, uses the diagonal Jacobian.
"""
        + _PROBLEM
        + _SUCCESS
        + _REFERENCES_DEER
    )

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "QuasiDEER"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "trace_size", self.trace_size)

    def _diagonal(self) -> bool:
        return True

    def _initial_damping(self) -> float | None:
        return None

    def _adaptive(self) -> bool:
        return False


class ELK(_AbstractSequenceSolver):
    __doc__ = (
        r"""Levenberg–Marquardt over the whole trajectory of a recurrence (ELK),
    each step solved by a parallel Kalman smoother.

    Each step minimises $\|F(H) + (\partial F / \partial H) \Delta\|^2 +
    \lambda \|\Delta\|^2$ over the step $\Delta$: the linearised recurrence as the
    dynamics of a linear-Gaussian state-space model (unit process noise) and the
    current trajectory as observations with noise $1/\lambda$. Its MAP trajectory
    comes from a Kalman filter written as an associative scan and a
    Rauch–Tung–Striebel smoother written as a reverse linear recurrence, both in
    $O(\log T)$ depth. $\lambda = 0$ is the DEER (Newton) step; larger $\lambda$
    shortens and turns the step towards steepest descent, which keeps the
    iteration stable where Newton oscillates or overflows.

    With `adaptive=True` (default) the damping is Marquardt's: a step that reduces
    $\|F(H)\|_2$ is accepted and $\lambda$ divided by 10, otherwise the step is
    rejected and $\lambda$ multiplied by 10, so the residual never grows and the
    solve ends in Newton's quadratic convergence. With `adaptive=False` every step
    is taken with the fixed `damping`, as in the paper. `diagonal=True` uses only
    the diagonals of the Jacobian blocks (quasi-ELK: $O(T n)$ work in the scans).
"""
        + _PROBLEM
        + _SUCCESS
        + r"""
    A damped step is no measure of the error, so ELK's estimate $\epsilon$ is the
    norm of the undamped Newton step at the returned trajectory (one more linear
    scan per step).
"""
        + _REFERENCES_DEER
    )

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.max_norm
    damping: float = 1.0
    adaptive: bool = True
    diagonal: bool = False
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "ELK"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "trace_size", self.trace_size)
        if isinstance(self.damping, bool) or not isinstance(self.damping, (int, float)):
            raise TypeError(
                f"ELK: `damping` must be a Python float, got {self.damping!r}."
            )
        if not (0 <= self.damping < float("inf")):
            raise ValueError(
                "ELK: `damping` must be finite and >= 0 (0 is Newton's step), got "
                f"{self.damping!r}. Use e.g. damping=1.0."
            )
        if self.adaptive and self.damping == 0:
            raise ValueError(
                "ELK: adaptive damping multiplies `damping`, so it must start above "
                "0; use e.g. damping=1.0, or adaptive=False for fixed damping."
            )

    def _diagonal(self) -> bool:
        return self.diagonal

    def _initial_damping(self) -> float | None:
        return float(self.damping)

    def _adaptive(self) -> bool:
        return self.adaptive


_COMMON_ARGS = r"""- `rtol`, `atol`: the success test above: $\|F(H)\| \le$ `atol` $+$
    `rtol` $\|H - F(H)\|$ and $\epsilon \le$ `atol` $+$ `rtol` $\|H\|$.
- `norm`: the norm of both tests, any `PyTree -> Scalar`; default
    [`optimistix.max_norm`][] (the largest error over time steps and entries, so
    the tolerance does not depend on $T$).
"""
_TRACE_ARG = r"""- `trace_size`: length of the residual trace kept in the state (slot 0:
    the initial guess, slot $k$: after step $k$; the last slot keeps the latest).
"""

DEER.__init__.__doc__ = "**Arguments:**\n\n" + _COMMON_ARGS + _TRACE_ARG
QuasiDEER.__init__.__doc__ = "**Arguments:**\n\n" + _COMMON_ARGS + _TRACE_ARG
ELK.__init__.__doc__ = (
    "**Arguments:**\n\n"
    + _COMMON_ARGS
    + r"""- `damping`: the Levenberg–Marquardt parameter $\lambda \ge 0$ (the initial
    one when `adaptive`).
- `adaptive`: accept only steps that reduce the residual and adapt $\lambda$
    (Marquardt); `False` takes every step with the fixed `damping`.
- `diagonal`: use only the diagonals of the Jacobian blocks (quasi-ELK).
"""
    + _TRACE_ARG
)
