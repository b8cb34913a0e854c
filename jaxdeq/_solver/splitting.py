import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._misc import (
    as_int,
    bookkeeping_dtype,
    check_positive_int,
    check_tolerances,
    check_unit_interval,
    DIVERGENCE_RATIO,
    iterate_diverged,
    passes,
    real_dtype,
    record,
    relative,
    stopping,
)
from .._solution import AbstractReportingState
from ._monotone_problem import AbstractResolvent, MonotoneProblem


def get_problem(name: str, options: dict[str, Any] | None) -> MonotoneProblem:
    problem = (options or {}).get("problem")
    if not isinstance(problem, MonotoneProblem):
        raise ValueError(
            f"{name} is an operator-splitting solver and needs the structure of the "
            "monotone problem: pass `options={'problem': problem}` with a "
            "jaxdeq.monotone.MonotoneProblem(operator, prox, bias), or call "
            "jaxdeq.monotone.solve(problem, solver). For a generic fixed point use "
            f"jaxdeq.Anderson instead; got options={options!r}."
        )
    return problem


class _SplittingState(AbstractReportingState):
    u: PyTree[Array]
    measured: PyTree[Array]
    resolvent: AbstractResolvent | None
    alpha: Scalar
    alpha_bound: Scalar
    first_residual: Scalar
    initial_scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    trace: Float[Array, " trace_size"]

    @property
    def num_fn_evals(self) -> Int[Array, ""]:
        return self.step  # one evaluation of `fn` per step, for the residual


def _where(pred, a, b):
    return jtu.tree_map(lambda x, y: jnp.where(pred, x, y), a, b)


def _axpby(a, x, b, y):
    """a x + b y for pytrees, scalars cast to each leaf's dtype."""
    return jtu.tree_map(
        lambda u, v: jnp.asarray(a, u.dtype) * u + jnp.asarray(b, v.dtype) * v, x, y
    )


class _AbstractSplitting(optx.AbstractFixedPointSolver):
    """Shared loop bookkeeping of the splitting solvers."""

    rtol: eqx.AbstractVar[float]
    atol: eqx.AbstractVar[float]
    norm: eqx.AbstractVar[Callable[[PyTree], Scalar]]
    alpha: eqx.AbstractVar[float | None]
    trace_size: eqx.AbstractVar[int]
    _name: eqx.AbstractClassVar[str]

    def _check(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "trace_size", self.trace_size)
        if self.alpha is not None and not (
            isinstance(self.alpha, (int, float)) and self.alpha > 0
        ):
            raise ValueError(
                f"{self._name}: the step size `alpha` must be a float > 0 (or None to "
                f"choose it from the margin and the Lipschitz bound), got "
                f"{self.alpha!r}."
            )

    def _residual(self, fn, y, args, state):
        fy, aux = fn(y, args)
        dtype = state.first_residual.dtype
        abs_residual = self.norm((fy**ω - y**ω).ω).astype(dtype)
        f_norm = self.norm(fy).astype(dtype)
        rel_residual = relative(abs_residual, f_norm)
        first = jnp.where(state.step == 0, abs_residual, state.first_residual)
        y_norm = self.norm(y).astype(dtype)
        initial_scale = jnp.where(state.step == 0, y_norm + f_norm, state.initial_scale)
        diverged = (abs_residual > DIVERGENCE_RATIO * first) | iterate_diverged(
            y_norm, initial_scale
        )
        converged = passes(
            abs_residual, f_norm, first, initial_scale, self.rtol, self.atol
        ) & jnp.invert(diverged)
        return aux, dict(
            measured=y,
            first_residual=first,
            initial_scale=initial_scale,
            abs_residual=abs_residual,
            rel_residual=rel_residual,
            converged=converged,
            diverged=diverged,
            nonfinite=jnp.invert(jnp.isfinite(abs_residual)),
            step=state.step + 1,
            trace=record(state.trace, state.step, rel_residual),
        )

    def _new_state(self, y, f_struct, u, resolvent, alpha, alpha_bound):
        dtype = real_dtype(bookkeeping_dtype((y, f_struct)))
        inf = jnp.array(jnp.inf, dtype)
        return _SplittingState(  # pyright: ignore[reportCallIssue]
            u=u,
            measured=y,
            resolvent=resolvent,
            alpha=jnp.asarray(alpha, dtype),
            alpha_bound=jnp.asarray(alpha_bound, dtype),
            first_residual=inf,
            initial_scale=inf,
            abs_residual=inf,
            rel_residual=inf,
            converged=jnp.array(False),
            diverged=jnp.array(False),
            nonfinite=jnp.array(False),
            step=jnp.array(0),
            trace=jnp.full((self.trace_size,), jnp.nan, dtype),
        )

    def _prox_step(self, alpha):
        # A static step lets a prox specialise (e.g. the group softmax at 1.0).
        return alpha if self.alpha is None else self.alpha

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        return stopping(state.converged, state.diverged, state.nonfinite)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, tags, result
        # The last iterate whose residual was measured (also at `max_steps`), so the
        # report is that of the returned value; `aux` is its aux.
        return _where(state.step > 0, state.measured, y), aux, {}


def forward_backward_bound(problem: MonotoneProblem) -> Scalar:
    r"""The largest forward–backward step with guaranteed convergence, $2m/L^2$."""
    lip = problem.operator.lipschitz()
    return 2 * problem.operator.margin / lip**2


class ForwardBackward(_AbstractSplitting):
    r"""Forward–backward splitting for the monotone fixed point
    $z = \operatorname{prox}_f(W z + b)$.

    Iterates $z \leftarrow \operatorname{prox}_{\alpha f}\big((1 - \alpha) z + \alpha
    (W z + b)\big)$: a gradient-like step on the linear operator, then the prox. It
    converges for every $0 < \alpha \le 2m/L^2$, where $m$ is the monotonicity margin
    and $L = \|I - W\|_2$; the contraction is fastest near $\alpha = m / L^2$, which is
    the default (`alpha=None`). The step taken and the bound are reported in the
    solver state (`sol.state.alpha`, `sol.state.alpha_bound`). A larger `alpha` may
    still converge on a given problem — the bound is sufficient, not necessary —
    which [`jaxdeq.monotone.solve`][] checks before tracing.

    Needs the problem's structure in `options={"problem": problem}` (a
    [`jaxdeq.monotone.MonotoneProblem`][]); `fn` must be that problem's map.
    Two products with $W$ per step (one for the residual).

    Success test: the returned $z$ satisfies $\|f(z) - z\| \le \mathrm{atol} +
    \mathrm{rtol}\,\|f(z)\|$ in `norm` (`abs_residual` is $\|f(z) - z\|$,
    `rel_residual` is $\|f(z) - z\| / \|f(z)\|$), with a residual below the first
    one unless it also passes with $\|f(z)\|$ replaced by the initial scale
    $s_0 = \|z_0\| + \|f(z_0)\|$, and the solve has not diverged (a residual $10^8$
    times the first one, or an iterate $10^8$ times $s_0$). The solver returns the
    last iterate it measured, also when it stops at `max_steps`.

    ??? cite "References"

        ```bibtex
        @inproceedings{winston2020monotone,
            author = {Winston, Ezra and Kolter, J. Zico},
            title = {Monotone operator equilibrium networks},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2020},
        }

        @book{ryu2022large,
            author = {Ryu, Ernest K. and Yin, Wotao},
            title = {Large-Scale Convex Optimization: Algorithms and Analyses via
                     Monotone Operators},
            publisher = {Cambridge University Press},
            year = {2022},
        }
        ```
    """

    rtol: float
    atol: float
    alpha: float | None = None
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "ForwardBackward"

    def __check_init__(self):
        self._check()

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, aux_struct, tags
        problem = get_problem(self._name, options)
        bound = forward_backward_bound(problem)
        alpha = bound / 2 if self.alpha is None else self.alpha
        return self._new_state(y, f_struct, None, None, alpha, bound)

    def step(self, fn, y, args, options, state, tags):
        del tags
        problem = get_problem(self._name, options)
        aux, flags = self._residual(fn, y, args, state)
        alpha = state.alpha
        v = _axpby(1 - alpha, y, alpha, problem.pre_activation(y))
        new_y = problem.prox(v, self._prox_step(alpha))
        new_y = _where(flags["converged"], y, new_y)
        return new_y, dataclasses.replace(state, **flags), aux


class PeacemanRachford(_AbstractSplitting):
    r"""Peaceman–Rachford splitting for the monotone fixed point
    $z = \operatorname{prox}_f(W z + b)$.

    With the resolvent $V = (I + \alpha (I - W))^{-1}$, factorised once per solve,
    each step is

    $$u_{1/2} = 2 z - u,\quad z_{1/2} = V (u_{1/2} + \alpha b),\quad
    u \leftarrow (1 - \theta) u + \theta (2 z_{1/2} - u_{1/2}),\quad
    z \leftarrow \operatorname{prox}_{\alpha f}(u),$$

    with relaxation $\theta = 1$ (Peaceman–Rachford, linear convergence for a strongly
    monotone $I - W$) or $\theta = 1/2$ (Douglas–Rachford, slower but convergent
    for merely monotone operators). It converges for every $\alpha > 0$; the default
    `alpha=None` takes $\alpha = 1 / \sqrt{m L}$, which minimises the contraction
    factor $\max_\lambda |1 - \alpha\lambda| / (1 + \alpha\lambda)$ of the linear part
    over the spectrum $\lambda \in [m, L]$ of $I - W$.
    The step is reported in `sol.state.alpha`.

    Needs the problem in `options={"problem": problem}`; a precomputed
    `options["resolvent"]` (`problem.operator.resolvent(alpha)` for this step size)
    is used instead of factorising inside the solve — under `vmap`, this keeps one
    shared factorisation instead of one per sample, as
    [`jaxdeq.monotone.solve`][] does.

    Success test: the returned $z$ satisfies $\|f(z) - z\| \le \mathrm{atol} +
    \mathrm{rtol}\,\|f(z)\|$ in `norm` (`abs_residual` is $\|f(z) - z\|$,
    `rel_residual` is $\|f(z) - z\| / \|f(z)\|$), with a residual below the first
    one unless it also passes with $\|f(z)\|$ replaced by the initial scale
    $s_0 = \|z_0\| + \|f(z_0)\|$, and the solve has not diverged (a residual $10^8$
    times the first one, or an iterate $10^8$ times $s_0$). The solver returns the
    last iterate it measured, also when it stops at `max_steps`.

    ??? cite "References"

        ```bibtex
        @inproceedings{winston2020monotone,
            author = {Winston, Ezra and Kolter, J. Zico},
            title = {Monotone operator equilibrium networks},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2020},
        }

        @book{ryu2022large,
            author = {Ryu, Ernest K. and Yin, Wotao},
            title = {Large-Scale Convex Optimization: Algorithms and Analyses via
                     Monotone Operators},
            publisher = {Cambridge University Press},
            year = {2022},
        }
        ```
    """

    rtol: float
    atol: float
    alpha: float | None = None
    relaxation: float = 1.0
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    trace_size: int = eqx.field(default=64, converter=as_int)

    _name: ClassVar[str] = "PeacemanRachford"

    def __check_init__(self):
        self._check()
        check_unit_interval(self._name, "relaxation", self.relaxation)

    def step_size(self, problem: MonotoneProblem) -> Scalar:
        """The step size $\\alpha$ used on `problem`."""
        if self.alpha is not None:
            return jnp.asarray(self.alpha)
        margin = problem.operator.margin
        return 1 / jnp.sqrt(margin * problem.operator.lipschitz())

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del fn, args, aux_struct, tags
        problem = get_problem(self._name, options)
        if "resolvent" in options:
            # The step must be the resolvent's, or the iteration has the wrong fixed
            # point; with a fixed `alpha` the caller built the resolvent for it.
            resolvent = None
            alpha = self.alpha
            if alpha is None:
                alpha = options["resolvent"].alpha
        else:
            alpha = self.step_size(problem)
            resolvent = problem.operator.resolvent(alpha)
        return self._new_state(y, f_struct, y, resolvent, alpha, jnp.inf)

    def step(self, fn, y, args, options, state, tags):
        del tags
        problem = get_problem(self._name, options)
        resolvent = options.get("resolvent", state.resolvent)
        aux, flags = self._residual(fn, y, args, state)
        alpha = state.alpha
        u_half = _axpby(2, y, -1, state.u)
        z_half = resolvent.mv(_axpby(1, u_half, alpha, problem.bias))
        reflected = _axpby(2, z_half, -1, u_half)
        theta = self.relaxation
        u = _axpby(1 - theta, state.u, theta, reflected)
        new_y = problem.prox(u, self._prox_step(alpha))
        new_y = _where(flags["converged"], y, new_y)
        u = _where(flags["converged"], state.u, u)
        return new_y, dataclasses.replace(state, u=u, **flags), aux


_ARGS = r"""**Arguments:**

- `rtol`, `atol`: stop when $\|f(z) - z\| \le$ `atol` $+$ `rtol` $\|f(z)\|$.
- `alpha`: the step size $\alpha > 0$, or `None` to choose it from the operator's
    margin and Lipschitz bound (see above).
- `norm`: the norm of the stopping test; defaults to [`optimistix.two_norm`][].
- `trace_size`: length of the residual trace kept in the state.
"""
ForwardBackward.__init__.__doc__ = _ARGS
PeacemanRachford.__init__.__doc__ = _ARGS + (
    "- `relaxation`: $\\theta \\in (0, 1]$; 1 is Peaceman–Rachford, 0.5 is "
    "Douglas–Rachford.\n"
)
