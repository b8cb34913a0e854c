import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree, Scalar

from .._misc import (
    bookkeeping_dtype,
    check_positive_int,
    check_tolerances,
    flatten,
    real_dtype,
    record,
    relative,
    stopping,
    unflatten,
    write_row,
)
from .._solution import AbstractReportingState
from ._autodiff import safe_size


_KINDS = ("fixed_point", "newton")
# Step acceptance (after Allgower & Georg's step-size control): a corrector step at most
# this fraction of the previous one; a total correction at most this fraction of the
# predictor step; successive tangents at most acos(_MIN_COS_TURN) apart.
_CONTRACTION = 0.5
_MAX_CORRECTION = 0.25
_MIN_COS_TURN = 0.8
# Run-away detection: a path whose ||z|| reaches a new maximum at every one of
# _RUNAWAY_STEPS accepted steps in a row while λ recedes, or while λ(||z||) flattens
# so fast that even followed to ||z|| = ∞ it would not reach λ = 1 + _RUNAWAY_MARGIN,
# goes to infinity before λ = 1.
_RUNAWAY_STEPS = 6
_RUNAWAY_MARGIN = 0.02


def _check_kind(name: str, kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(
            f"{name}: `kind` must be 'fixed_point' or 'newton', got {kind!r}."
        )


def _homotopy(kind: str, g: Callable, z0: Array, g0: Array) -> Callable:
    """H(z, λ) for a root g(z) = 0 started from z0 (g0 = g(z0)).

    Fixed-point homotopy (f = g + id): H = z - λ f(z) - (1 - λ) z0
    = (1 - λ)(z - z0) - λ g(z). Newton homotopy: H = g(z) - (1 - λ) g(z0).
    """
    if kind == "fixed_point":

        def h(z, lam):
            return (1 - lam) * (z - z0) - lam * g(z)

    else:

        def h(z, lam):
            return g(z) - (1 - lam) * g0

    return h


def _unit(v: Array) -> Array:
    return v / _size(v).astype(v.dtype)


def _size(v: Array) -> Array:
    # Differentiable at v = 0 (a zero correction, a zero error estimate), for solves
    # differentiated through their iterations.
    return safe_size(v)


def _runaway(lam0, lam1, r0, r1, r_max, slope_prev, r_prev):
    """Whether one accepted step from (λ0, r0 = ||z0||) to (λ1, r1) looks like a path
    that runs off to infinity before λ = 1, and the slope dλ/dr and radius r of this
    step for the next call.

    ||z|| must reach a new maximum, and either λ recedes, or λ(r) flattens like
    r^(-p) with p > 1 (fitted on this step and the last), whose limit at r = ∞ lies
    below λ = 1 + margin. A path that reaches λ = 1 at finite ||z|| (λ(r) linear or
    steepening, or a bounded path) never qualifies for long.
    """
    growing = (r1 > r_max) & (r1 > r0)
    slope = (lam1 - lam0) / jnp.where(r1 > r0, r1 - r0, 1)
    r_mid = 0.5 * (r0 + r1)
    lam_mid = 0.5 * (lam0 + lam1)
    ok = growing & (slope > 0) & (slope_prev > 0) & (r_prev > 0) & (r_mid > r_prev)
    safe = lambda v: jnp.where(ok, v, 1)
    p = -jnp.log(safe(slope) / safe(slope_prev)) / jnp.log(safe(r_mid) / safe(r_prev))
    tail = slope * r_mid / jnp.where(ok & (p > 1), p - 1, 1)
    flattening = ok & (p > 1) & (lam_mid + tail < 1 + _RUNAWAY_MARGIN)
    receding = growing & (lam1 <= lam0)
    slope = jnp.where(growing, slope, 0)
    return receding | flattening, slope, jnp.where(growing, r_mid, 0)


class _Path(eqx.Module):
    """The zero curve of H in scaled coordinates y = (z, μ), μ = scale · λ.

    Scaling λ by the size of the problem (‖g(z₀)‖, the initial speed dz/dλ of the
    fixed-point homotopy) keeps arclength steps meaningful in both coordinates.
    Every linear system is the bordered one, [∂H/∂z, ∂H/∂μ; rᵀ], with r the tangent
    of the current step (arclength) or e_μ (λ fixed); it stays regular at the turning
    points of λ where ∂H/∂z alone is singular.
    """

    h: Callable = eqx.field(static=True)
    scale: Scalar
    linear_solver: lx.AbstractLinearSolver

    def residual(self, y):
        return self.h(y[:-1], y[-1] / self.scale.astype(y.dtype))

    def solve(self, y, r, rhs_h, rhs_r):
        def bordered(v, _):
            return jnp.concatenate([self.residual(v), jnp.sum(r * v)[None]])

        operator = lx.JacobianLinearOperator(bordered, y, None)
        rhs = jnp.concatenate([rhs_h, jnp.asarray(rhs_r, y.dtype)[None]])
        return lx.linear_solve(operator, rhs, self.linear_solver, throw=False).value

    def direction(self, y, r):
        """A tangent of the curve at y with r·t = 1 (for r = e_μ: (dz/dμ, 1))."""
        return self.solve(y, r, jnp.zeros_like(y[:-1]), 1)

    def term(self, arclength: bool):
        """dy/ds: the unit tangent (arclength) or dy/dμ (λ as the parameter)."""

        def field(s, y, r):
            del s
            v = self.direction(y, r)
            return _unit(v) if arclength else v

        return diffrax.ODETerm(field)


def _predictor_evals(predictor: diffrax.AbstractSolver) -> int:
    """Vector-field evaluations of a single step of an explicit Runge–Kutta method."""
    if isinstance(predictor, diffrax.Euler):
        return 1
    return len(predictor.tableau.a_lower) + 1  # pyright: ignore


def _predictor_order(predictor: diffrax.AbstractSolver) -> int | None:
    """The order of the predictor's error estimate (local error ~ h^(order+1)), or
    None without one."""
    if isinstance(predictor, diffrax.Euler):
        return None
    tableau = predictor.tableau  # pyright: ignore
    if tableau.b_error is None:
        return None
    return predictor.order(None)  # pyright: ignore


def _check_predictor(name: str, predictor: Any) -> None:
    if not isinstance(predictor, (diffrax.Euler, diffrax.AbstractERK)):
        raise TypeError(
            f"{name}: `predictor` must be an explicit diffrax Runge–Kutta solver, e.g. "
            f"diffrax.Tsit5(), diffrax.Heun() or diffrax.Euler(); got "
            f"{type(predictor).__name__}."
        )


def _one_step(term, predictor, s0, s1, y, r):
    """One step of the diffrax solver `predictor` over [s0, s1], and the norm of its
    embedded error estimate (zero for a method without one, e.g. Euler).

    Called through the solver's own `init`/`step` rather than `diffeqsolve`: a single
    fixed step needs no step-size control, and this compiles several times faster.
    """
    if getattr(predictor, "scan_kind", "") is None:
        # Stages in a loop that both forward and reverse mode can go through, for when
        # the solver itself is differentiated (an unrolled adjoint), as DirectAdjoint
        # arranges inside diffrax.
        predictor = eqx.tree_at(
            lambda p: p.scan_kind, predictor, "bounded", is_leaf=lambda v: v is None
        )
    solver_state = predictor.init(term, s0, s1, y, r)
    y1, y_error, _, _, _ = predictor.step(term, s0, s1, y, r, solver_state, False)
    if y_error is None:
        return y1, jnp.zeros((), jnp.real(y).dtype)
    # The error estimate only sizes the next step: no derivative.
    return y1, _size(jax.lax.stop_gradient(y_error))


class _HomotopyState(AbstractReportingState):
    # `n` is bound before the fields that use it (checked in field order).
    z0: Float[Array, " n"]
    g0: Float[Array, " n"]
    path_y: Float[Array, " n+1"]
    tangent: Float[Array, " n+1"]
    scale: Scalar
    step_size: Scalar
    at_end: Bool[Array, ""]
    before_end: Float[Array, " n+1"]
    path_length: Scalar
    num_accepted: Int[Array, ""]
    num_corrector_failures: Int[Array, ""]
    num_fn_evals: Int[Array, ""]
    num_linear_solves: Int[Array, ""]
    radius_max: Scalar
    runaway_slope: Scalar
    runaway_radius: Scalar
    runaway_steps: Int[Array, ""]
    abs_residual: Scalar
    rel_residual: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    trace: Float[Array, " trace_size"]
    path_lam: Float[Array, " path_size"]
    path_z: Float[Array, "path_size n"]

    @property
    def lam(self) -> Scalar:
        """The homotopy parameter λ of the current point."""
        return jnp.real(self.path_y[..., -1]) / self.scale


class Homotopy(optx.AbstractRootFinder):
    r"""Homotopy continuation: follow the zeros of $H(z, \lambda)$ from $\lambda = 0$,
    where the answer is the starting point, to $\lambda = 1$, where they are the roots
    of $g$.

    For a root $g(z) = 0$ started from $z_0$ (a fixed point $z = f(z)$ is the root of
    $g = f - \mathrm{id}$, which is what `optimistix.fixed_point` passes):

    - Newton homotopy (`kind="newton"`, the default):
        $H(z, \lambda) = g(z) - (1 - \lambda) g(z_0)$. With $\lambda = 1 - e^{-t}$
        its path is the continuous Newton flow, $g(z(t)) = e^{-t} g(z_0)$;
    - fixed-point homotopy (`kind="fixed_point"`):
        $H(z, \lambda) = z - \lambda f(z) - (1 - \lambda) z_0$.

    Each solver step is a predictor–corrector step along the zero curve of $H$ in
    $(z, \lambda)$:

    - **predictor**: one step of an explicit diffrax Runge–Kutta method (`predictor`)
        on the Davidenko ODE. With `parametrisation="arclength"` (default) the curve
        is followed by arclength, $dy/ds = t(y)$ with $y = (z, \lambda)$ and $t$ the
        unit tangent, $[\partial_z H, \partial_\lambda H]\,t = 0$; it goes round
        turning points, where $\lambda$ runs backwards for a while and
        $\partial H/\partial z$ is singular. With `"lambda"`, the textbook
        $dz/d\lambda = -(\partial H/\partial z)^{-1} \partial H/\partial\lambda$,
        cheaper but stopped by the first turning point.
    - **corrector**: Newton steps on $H = 0$ in the hyperplane through the prediction
        orthogonal to the tangent (at fixed $\lambda$ for `"lambda"`), at most
        `corrector_steps`, each required to contract.
    - **step control**: a step is accepted if the corrector reaches `corrector_tol`
        (relative to $1 + \|z\|$) without moving far from the prediction and the
        tangent did not turn sharply; otherwise it is retried shorter. The next step
        comes from the predictor's embedded error estimate and the turn of the
        tangent, grown by at most `growth`, capped by `max_step`.

    Every linear system is the bordered one $[\partial_z H, \partial_\lambda H;
    r^\top]$, which stays regular at turning points. The parameter is measured in
    units of the initial speed $\|dz/d\lambda\|$ ($\|g(z_0)\|$ for the fixed-point
    homotopy, the length of the Newton step for the Newton homotopy) so that arclength
    steps weigh $z$ and $\lambda$ alike. When
    the curve crosses $\lambda = 1$ the crossing point is interpolated and Newton
    steps on $g$ run until $\|g(z)\| \le \text{atol} + \text{rtol}\,\|z\|$; if they
    cannot converge from there, the solver goes back before the crossing and
    approaches again with shorter steps. A step
    below `min_step` means the curve could not be followed, and a curve that runs off
    to infinity before $\lambda = 1$ ($\|z\|$ reaching a new maximum at each of six
    accepted steps in a row while $\lambda$ recedes, or while $\lambda(\|z\|)$
    flattens so fast that it would not pass $\lambda = 1$ even at $\|z\| = \infty$)
    has no root at its end: both stop the solve with `RESULTS.nonlinear_divergence`.

    **Which homotopy.** The default, the Newton homotopy, is the one that is sound
    for root problems: on a root problem with a nonsingular Jacobian along the way it
    is the continuous Newton flow, which does not run off to infinity while a root
    lies ahead. The fixed-point homotopy is sound only for a fixed-point problem of a
    map into a bounded set (a DEQ cell of $\tanh$ units, say): then its curve from
    almost every $z_0$ reaches $\lambda = 1$ (Chow, Mallet-Paret & Yorke), which is
    why it arrives from starts where Newton, Broyden and Anderson do not; on a root
    problem $g$ it follows the map $g + \mathrm{id}$, which is rarely bounded (for
    $\arctan(z) - a$ its curve goes to infinity). The solver cannot choose for you:
    `optimistix.fixed_point` (and so `jaxdeq.fixed_point`) hands a root finder the
    function $f(y) - y$, closure-converted, which is indistinguishable from a root
    problem. So ask for `kind="fixed_point"` yourself when `fn` is a bounded map;
    [`jaxdeq.homotopy_path`][], which is told the problem, picks it by itself.

    Linear solves go through lineax on
    [`lineax.JacobianLinearOperator`][]: the default materialises the Jacobian
    (dense LU/QR, best for states up to a few thousand entries); pass
    `linear_solver=lineax.GMRES(...)` (or another iterative lineax solver) for a
    matrix-free solve that uses only Jacobian-vector products.

    The solver state (`sol.state`) reports `path_length` (the arc length of the
    accepted path in the norm), `num_accepted` steps, `num_corrector_failures`
    (rejected steps), `num_fn_evals` (evaluations of $g$ outside Jacobian products),
    `num_linear_solves` (each needs one Jacobian), `abs_residual` $\|g(z)\|$ and
    `rel_residual` $\|g(z)\| / \|z\|$ of exactly the value returned, the residual
    `trace` and, with
    `path_size > 0`, the first `path_size` accepted points (`path_lam`, `path_z`,
    flattened states).

    ??? cite "References"

        ```bibtex
        @book{allgower2003introduction,
            title={Introduction to Numerical Continuation Methods},
            author={Allgower, Eugene L. and Georg, Kurt},
            publisher={SIAM},
            year={2003}
        }
        ```

        ```bibtex
        @inproceedings{ding2023two,
            title={Two Sides of The Same Coin: Bridging Deep Equilibrium Models and
                Neural {ODE}s via Homotopy Continuation},
            author={Ding, Shutong and Cui, Tianyu and Wang, Jingya and Shi, Ye},
            booktitle={Advances in Neural Information Processing Systems},
            year={2023}
        }
        ```
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    kind: Literal["fixed_point", "newton"] = eqx.field(static=True, default="newton")
    parametrisation: Literal["arclength", "lambda"] = eqx.field(
        static=True, default="arclength"
    )
    predictor: diffrax.AbstractSolver = diffrax.Tsit5()
    initial_step: float = 0.1
    min_step: float = 1e-4
    max_step: float = 0.5
    growth: float = 2.0
    corrector_steps: int = eqx.field(static=True, default=4)
    corrector_tol: float = 1e-3
    linear_solver: lx.AbstractLinearSolver = lx.AutoLinearSolver(well_posed=None)
    trace_size: int = eqx.field(static=True, default=64)
    path_size: int = eqx.field(static=True, default=0)

    _name: ClassVar[str] = "Homotopy"

    def __check_init__(self):
        for label in ("rtol", "atol"):
            value = getattr(self, label)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise ValueError(
                    f"Homotopy: `{label}` must be finite, got {value!r}. Pass e.g. "
                    f"`{label}=1e-6`."
                )
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "corrector_steps", self.corrector_steps)
        check_positive_int(self._name, "trace_size", self.trace_size)
        check_positive_int(self._name, "path_size", self.path_size, minimum=0)
        _check_kind(self._name, self.kind)
        if self.parametrisation not in ("arclength", "lambda"):
            raise ValueError(
                "Homotopy: `parametrisation` must be 'arclength' or 'lambda', got "
                f"{self.parametrisation!r}."
            )
        _check_predictor(self._name, self.predictor)
        steps = (self.min_step, self.initial_step, self.max_step)
        if not 0 < self.min_step <= self.initial_step <= self.max_step <= 1:
            raise ValueError(
                "Homotopy: need 0 < min_step <= initial_step <= max_step <= 1, got "
                f"min_step, initial_step, max_step = {steps}."
            )
        if not self.growth >= 1:
            raise ValueError(
                f"Homotopy: `growth` must be >= 1, got {self.growth!r}. Use e.g. 2.0."
            )
        if not 0 < self.corrector_tol < 1:
            raise ValueError(
                "Homotopy: `corrector_tol` must lie in (0, 1), got "
                f"{self.corrector_tol!r}. Use e.g. 1e-3."
            )

    def _arclength(self, dtype) -> bool:
        # A complex state is followed in λ: with z complex and λ real the curve
        # generically misses the singular Jacobians that arclength goes round (their
        # real codimension is two), and stepping in λ keeps λ real.
        return self.parametrisation == "arclength" and not jnp.issubdtype(
            dtype, jnp.complexfloating
        )

    def _path(self, fn, y, args, z0, g0, scale):
        dtype = z0.dtype

        def g(z):
            return flatten(fn(unflatten(z, y), args)[0], dtype)

        h = _homotopy(self.kind, g, z0, g0)
        return _Path(h, scale, self.linear_solver)

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del options, aux_struct, tags
        dtype = bookkeeping_dtype((y, f_struct))
        rdtype = real_dtype(dtype)
        z0 = flatten(y, dtype)
        g0 = flatten(fn(y, args)[0], dtype)
        abs_residual = self.norm(g0)
        path_y = jnp.concatenate([z0, jnp.zeros((1,), dtype)])
        e_mu = jnp.zeros_like(path_y).at[-1].set(1)
        if self._arclength(dtype):
            # λ is measured in units of the initial speed ||dz/dλ||: g(z0) for the
            # fixed-point homotopy (∂H/∂z = I at λ = 0), the Newton step -J⁻¹g(z0)
            # for the Newton homotopy.
            one = jnp.array(1.0, rdtype)
            speed = self._path(fn, y, args, z0, g0, one).direction(path_y, e_mu)
            if self.kind == "fixed_point":
                speed_size = _size(g0).astype(rdtype)
            else:
                speed_size = _size(speed[:-1]).astype(rdtype)
                # A singular Jacobian at z0: fall back to the size of g(z0).
                speed_size = jnp.where(
                    jnp.isfinite(speed_size) & (speed_size > 0),
                    speed_size,
                    _size(g0).astype(rdtype),
                )
            scale = jnp.maximum(speed_size, jnp.finfo(rdtype).tiny)
            # The unit tangent at the start, (dz/dμ, 1) normalised: towards λ > 0.
            tangent = jnp.concatenate(
                [speed[:-1] / scale.astype(dtype), jnp.ones((1,), dtype)]
            )
            tangent = _unit(jnp.where(jnp.isfinite(tangent), tangent, e_mu))
            solves = 1
        else:
            scale = jnp.array(1.0, rdtype)
            tangent, solves = e_mu, 0
        rel = relative(abs_residual, self.norm(z0))
        return _HomotopyState(
            path_y=path_y,
            tangent=tangent,
            scale=scale,
            step_size=jnp.array(self.initial_step, rdtype),
            at_end=jnp.array(False),
            before_end=path_y,
            z0=z0,
            g0=g0,
            path_length=jnp.array(0.0, rdtype),
            num_accepted=jnp.array(0),
            num_corrector_failures=jnp.array(0),
            num_fn_evals=jnp.array(1),
            num_linear_solves=jnp.array(solves),
            radius_max=_size(z0).astype(rdtype),
            runaway_slope=jnp.array(0.0, rdtype),
            runaway_radius=jnp.array(0.0, rdtype),
            runaway_steps=jnp.array(0),
            abs_residual=abs_residual,
            rel_residual=rel,
            converged=abs_residual <= self.atol + self.rtol * self.norm(z0),
            diverged=jnp.array(False),
            nonfinite=jnp.invert(jnp.isfinite(abs_residual)),
            step=jnp.array(0),
            trace=jnp.full((self.trace_size,), jnp.nan, rdtype),
            path_lam=jnp.full((self.path_size,), jnp.nan, rdtype),
            path_z=jnp.full((self.path_size, z0.size), jnp.nan, dtype),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        arclength = self._arclength(state.z0.dtype)
        path = self._path(fn, y, args, state.z0, state.g0, state.scale)
        y_now = state.path_y
        z_now = y_now[:-1]
        mu_end = state.scale
        on_path = jnp.invert(state.at_end)
        e_mu = jnp.zeros_like(y_now).at[-1].set(1)
        if arclength:
            # The tangent's orientation is carried from step to step.
            r = jnp.where(on_path, state.tangent, e_mu)
        else:
            r = e_mu

        # Predictor: one Runge–Kutta step along the curve, skipped at the end.
        size = state.step_size * state.scale
        mu_now = jnp.real(y_now[-1])
        if arclength:
            # Aim just past λ = 1 when heading there, so the crossing is short.
            speed = jnp.real(state.tangent[-1])
            to_end = jnp.where(speed > 0, 1.05 * (mu_end - mu_now) / speed, jnp.inf)
            size = jnp.minimum(size, jnp.maximum(to_end, self.min_step * state.scale))
            landing = jnp.array(False)
        else:
            # The last step lands on λ = 1 exactly (up to rounding, taken as arrived).
            landing = mu_end - mu_now <= size
            size = jnp.minimum(size, mu_end - mu_now)
        # Under vmap both branches run: give the idle one a harmless interval.
        size = jnp.where(on_path, size, self.min_step * state.scale)
        s0 = jnp.zeros((), size.dtype)
        pred, pred_error = jax.lax.cond(
            on_path,
            lambda: _one_step(path.term(arclength), self.predictor, s0, size, y_now, r),
            lambda: (y_now, jnp.zeros((), size.dtype)),
        )

        # Corrector: Newton on H in the hyperplane r·(y - pred) = 0.
        loose = self.corrector_tol * (1 + self.norm(z_now))
        final = self.atol + self.rtol * self.norm(pred[:-1])
        target = jnp.where(on_path, loose, jnp.minimum(final, loose))
        h_pred = path.residual(pred)

        def cond(carry):
            k, _, hx, _, progress = carry
            return (k < self.corrector_steps) & (self.norm(hx) > target) & progress

        def body(carry):
            k, x, hx, last_dx, _ = carry
            dx = path.solve(x, r, hx, 0)
            dx_norm = _size(dx)
            h_new = path.residual(x - dx)
            # Newton must contract (each step at most half the last): a corrector that
            # does not is converging slowly, or towards another part of the curve.
            progress = (
                jnp.isfinite(self.norm(h_new))
                & (self.norm(h_new) < self.norm(hx))
                & (dx_norm <= _CONTRACTION * last_dx)
            )
            x = jnp.where(progress, x - dx, x)
            hx = jnp.where(progress, h_new, hx)
            return k + 1, x, hx, dx_norm, progress

        inf = jnp.array(jnp.inf, state.scale.dtype)
        init = (jnp.array(0), pred, h_pred, inf, jnp.array(True))
        num_newton, corrected, h_corr, _, progress = jax.lax.while_loop(
            cond, body, init
        )
        h_norm = self.norm(h_corr)
        # Accept a converged corrector that stayed near the prediction: a corrector that
        # moves far relative to the predictor step risks jumping to another part of the
        # curve (and reversing the direction of travel).
        step_length = _size(pred - y_now)
        moved = _size(corrected - pred)
        near = moved <= _MAX_CORRECTION * step_length + loose
        accept = jnp.isfinite(h_norm) & (h_norm <= loose) & near
        if self.kind == "fixed_point":
            # H(., 0) = z - z0 vanishes only at z0: the curve never returns to λ <= 0,
            # so a corrected point there is on the wrong part of the curve.
            accept = accept & (jnp.real(corrected[-1]) > 0)
        num_solves = num_newton
        if arclength:
            tangent = _unit(path.direction(corrected, r))
            num_solves = num_solves + 1
            # A sharp turn within one step means the step was too long.
            cos_turn = jnp.clip(jnp.real(jnp.sum(tangent * r)), -1.0, 1.0)
            accept = accept & (cos_turn >= _MIN_COS_TURN)
        else:
            tangent = r
            cos_turn = None
        accept = accept & on_path
        rejected = on_path & jnp.invert(accept)

        mu_new = jnp.real(corrected[-1])
        crossed = accept & (landing | (mu_new >= mu_end))
        # The point at λ = 1 between the last two points, for the end game.
        frac = jnp.where(
            crossed & (mu_new > mu_now), (mu_end - mu_now) / (mu_new - mu_now), 1
        )
        landed = y_now + frac.astype(y_now.dtype) * (corrected - y_now)
        landed = landed.at[-1].set(mu_end.astype(landed.dtype))
        new_y = jnp.where(crossed, landed, corrected)
        new_y = jnp.where(accept | state.at_end, new_y, y_now)
        # If Newton cannot converge at λ = 1 from the interpolated point, go back to
        # the last point before the crossing and approach again with shorter steps.
        residual_now = self.norm(h_corr)
        retreat = (
            state.at_end
            & jnp.invert(progress)
            & (residual_now > self.atol + self.rtol * self.norm(corrected[:-1]))
        )
        before_end = jnp.where(crossed, y_now, state.before_end)
        new_y = jnp.where(retreat, state.before_end, new_y)
        at_end = (state.at_end | crossed) & jnp.invert(retreat)
        # The next step from the predictor's error estimate, as an ODE solver's
        # controller would: the error aimed at is a tenth of the corrector's tolerance,
        # which keeps predictions within the corrector's easy reach. Without an
        # estimate (Euler), grow after every accepted step.
        order = _predictor_order(self.predictor)
        if order is None:
            factor = jnp.full_like(state.step_size, self.growth)
        else:
            ratio = pred_error / (0.1 * loose)
            factor = 0.9 * jnp.where(ratio > 0, ratio, 1e-10) ** (-1.0 / order)
            factor = jnp.clip(factor, 0.2, self.growth)
        if arclength:
            # And from the turn of the tangent: aim at half the largest turn allowed.
            assert cos_turn is not None
            # (arccos has an infinite derivative at 1, a straight path; the step size
            # carries no derivative anyway, see below.)
            turn = jnp.arccos(jax.lax.stop_gradient(cos_turn))
            aim = 0.5 * math.acos(_MIN_COS_TURN)
            factor = jnp.minimum(
                factor, jnp.clip(aim / (turn + 1e-12), 0.2, self.growth)
            )
        new_size = jnp.where(
            rejected,
            state.step_size * jnp.minimum(factor, 0.5),
            jnp.minimum(state.step_size * factor, self.max_step),
        )
        new_size = jnp.where(retreat, 0.25 * state.step_size, new_size)
        # Step-size control is bookkeeping: when the solve is differentiated through
        # its iterations, the derivative follows the path, not the controller.
        new_size = jax.lax.stop_gradient(new_size)

        # The residual of exactly the value returned (and its auxiliary output): one
        # evaluation of g at the new point.
        new_z = new_y[:-1]
        z0, g0 = state.z0, state.g0
        g_new, aux = fn(unflatten(new_z, y), args)
        abs_residual = self.norm(flatten(g_new, z0.dtype))
        z_norm = self.norm(new_z)
        converged = at_end & (abs_residual <= self.atol + self.rtol * z_norm)
        stalled = (on_path | retreat) & (new_size < self.min_step)
        accepted = accept & on_path
        # A path running off to infinity before λ = 1 is reported within
        # _RUNAWAY_STEPS accepted steps, not after max_steps.
        radius_now, radius_new = _size(z_now), _size(corrected[:-1])
        # Divergence detection is bookkeeping too: no derivatives.
        away, slope, radius = jax.lax.stop_gradient(
            _runaway(
                mu_now / state.scale,
                mu_new / state.scale,
                radius_now,
                radius_new,
                state.radius_max,
                state.runaway_slope,
                state.runaway_radius,
            )
        )
        counted = accepted & jnp.invert(crossed)
        runaway_steps = jnp.where(
            counted, jnp.where(away, state.runaway_steps + 1, 0), state.runaway_steps
        )
        runaway = runaway_steps >= _RUNAWAY_STEPS
        slot = jnp.where(accepted, state.num_accepted, self.path_size)
        stages = jnp.where(on_path, _predictor_evals(self.predictor), 0)
        # Each stage and each Newton step is one bordered solve (one Jacobian); g is
        # evaluated once for H at the prediction, once per Newton step and once at
        # the returned point.
        rel = relative(abs_residual, z_norm)
        new_state = _HomotopyState(
            path_y=new_y,
            tangent=jnp.where(accept, tangent, state.tangent),
            scale=state.scale,
            step_size=new_size,
            at_end=at_end,
            before_end=before_end,
            z0=z0,
            g0=g0,
            path_length=state.path_length
            + jnp.where(accepted, self.norm(new_z - z_now), 0),
            num_accepted=state.num_accepted + accepted.astype(int),
            num_corrector_failures=state.num_corrector_failures
            + (rejected | retreat).astype(int),
            num_fn_evals=state.num_fn_evals + 2 + num_newton,
            num_linear_solves=state.num_linear_solves + stages + num_solves,
            radius_max=jnp.where(
                accepted,
                jnp.maximum(state.radius_max, radius_new),
                state.radius_max,
            ),
            runaway_slope=jnp.where(counted, slope, state.runaway_slope),
            runaway_radius=jnp.where(counted, radius, state.runaway_radius),
            runaway_steps=runaway_steps,
            abs_residual=abs_residual,
            rel_residual=rel,
            converged=converged,
            diverged=stalled | runaway,
            nonfinite=jnp.invert(jnp.isfinite(abs_residual)),
            step=state.step + 1,
            trace=record(state.trace, state.step, rel),
            path_lam=write_row(state.path_lam, slot, jnp.real(new_y[-1]) / state.scale),
            path_z=write_row(state.path_z, slot, new_z),
        )
        return unflatten(new_z, y), new_state, aux

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        return stopping(state.converged, state.diverged, state.nonfinite)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, state, tags, result
        return y, aux, {}


Homotopy.__init__.__doc__ = r"""**Arguments:**

- `rtol`, `atol`: stop at $\lambda = 1$ once
    $\|g(z)\| \le \text{atol} + \text{rtol}\,\|z\|$ (finite, not both zero).
- `norm`: the norm of the tolerances and of the path length (default two-norm).
- `kind`: `"newton"` (default) or `"fixed_point"` (only for fixed-point problems of
    maps into a bounded set), see above.
- `predictor`: an explicit diffrax Runge–Kutta solver taking one step of the
    Davidenko ODE per solver step (default `diffrax.Tsit5()`; `diffrax.Heun()` or
    `diffrax.Euler()` are cheaper per step and need smaller steps).
- `parametrisation`: `"arclength"` (default) or `"lambda"`, see above.
- `initial_step`, `min_step`, `max_step`: the first step, the step below which the
    curve counts as lost, and the largest step; in units of $\lambda$ for
    `"lambda"`, of the initial speed $\|dz/d\lambda\|$ along the curve for
    `"arclength"`;
    $0 < \text{min} \le \text{initial} \le \text{max} \le 1$.
- `growth`: the largest factor by which the step grows after an accepted step
    (default 2).
- `corrector_steps`: Newton corrector steps per solver step (default 4).
- `corrector_tol`: the corrector's tolerance on $\|H\|$ relative to $1 + \|z\|$ on
    the path (default 1e-3).
- `linear_solver`: a lineax solver for the Jacobian systems; the default materialises
    the Jacobian, `lineax.GMRES(rtol, atol)` is matrix-free.
- `trace_size`: length of the residual trace.
- `path_size`: how many accepted points $(\lambda, z)$ to keep in the state, for
    plotting (default 0).
"""


def homotopy_path(
    fn: Callable[[PyTree[Array], Any], PyTree[Array]],
    y0: PyTree[Array],
    lambdas: Float[ArrayLike, " k"],
    args: PyTree[Any] = None,
    *,
    kind: Literal["fixed_point", "newton"] | None = None,
    problem: Literal["root", "fixed_point"] = "root",
    solver: diffrax.AbstractSolver = diffrax.Tsit5(),
    rtol: float = 1e-8,
    atol: float = 1e-10,
    linear_solver: lx.AbstractLinearSolver = lx.AutoLinearSolver(well_posed=None),
    max_steps: int = 4096,
) -> PyTree[Array]:
    r"""The homotopy path $z(\lambda)$ at the given $\lambda$ values, by integrating
    the Davidenko ODE with an adaptive diffrax solver (no corrector).

    Used to draw a path, or to check a [`jaxdeq.Homotopy`][] run. With
    `kind="newton"` and $\lambda = 1 - e^{-t}$ this is the continuous Newton flow
    $\dot z = -J_g(z)^{-1} g(z)$, along which $g(z(t)) = e^{-t} g(z_0)$.

    **Arguments:**

    - `fn`: the map, `fn(y, args)`: a root function $g$ (`problem="root"`) or a
        fixed-point map $f$ (`problem="fixed_point"`, then $g = f - \mathrm{id}$).
    - `y0`: the starting point $z_0$.
    - `lambdas`: increasing values in $[0, 1]$ at which to report $z$.
    - `args`: passed to `fn`.
    - `kind`: `"fixed_point"` or `"newton"` homotopy (see [`jaxdeq.Homotopy`][]).
        Default: the fixed-point homotopy for `problem="fixed_point"`, the Newton
        homotopy for `problem="root"`.
    - `problem`: whether `fn` is a root function or a fixed-point map.
    - `solver`, `rtol`, `atol`: the diffrax solver and the tolerances of its
        `diffrax.PIDController`.
    - `linear_solver`: lineax solver for the Jacobian systems.
    - `max_steps`: the integrator's step budget.

    **Returns:**

    A pytree like `y0` with a leading axis of length `len(lambdas)`.

    **Raises:**

    `ValueError` for a bad `kind` or `problem`, or `lambdas` that are not increasing
    within $[0, 1]$. At run time, a Jacobian that turns singular on the path (a turning
    point) gives non-finite values.
    """
    if problem not in ("root", "fixed_point"):
        raise ValueError(
            "homotopy_path: `problem` must be 'root' or 'fixed_point', got "
            f"{problem!r}."
        )
    if kind is None:
        kind = "fixed_point" if problem == "fixed_point" else "newton"
    _check_kind("homotopy_path", kind)
    lambdas_np = jnp.asarray(lambdas)
    if lambdas_np.ndim != 1 or lambdas_np.size == 0:
        raise ValueError("homotopy_path: `lambdas` must be a non-empty 1-D array.")
    check_positive_int("homotopy_path", "max_steps", max_steps)
    return _homotopy_path(
        fn,
        y0,
        lambdas_np,
        args,
        kind,
        problem,
        solver,
        rtol,
        atol,
        linear_solver,
        max_steps,
    )


@eqx.filter_jit
def _homotopy_path(
    fn, y0, lambdas, args, kind, problem, solver, rtol, atol, linear_solver, max_steps
):
    dtype = bookkeeping_dtype(y0)
    rdtype = real_dtype(dtype)
    lambdas = lambdas.astype(rdtype)
    lambdas = eqx.error_if(
        lambdas,
        (lambdas[0] < 0) | (lambdas[-1] > 1) | jnp.any(jnp.diff(lambdas) < 0),
        "homotopy_path: `lambdas` must increase within [0, 1].",
    )

    def g(z):
        out = flatten(fn(unflatten(z, y0), args), dtype)
        return out - z if problem == "fixed_point" else out

    z0 = flatten(y0, dtype)
    path = _Path(_homotopy(kind, g, z0, g(z0)), jnp.array(1.0, rdtype), linear_solver)
    e_lam = jnp.zeros((z0.size + 1,), dtype).at[-1].set(1)
    sol = diffrax.diffeqsolve(
        path.term(arclength=False),
        solver,
        t0=jnp.array(0.0, rdtype),
        t1=lambdas[-1],
        dt0=None,
        y0=jnp.concatenate([z0, jnp.zeros((1,), dtype)]),
        args=e_lam,
        saveat=diffrax.SaveAt(ts=lambdas),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    return jax.vmap(lambda y: unflatten(y[:-1], y0))(sol.ys)
