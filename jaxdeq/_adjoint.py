import abc
import functools as ft
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.custom_derivatives
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, PyTree

from ._misc import (
    bookkeeping_dtype,
    check_positive_int,
    check_tolerances,
    check_unit_interval,
)
from ._solution import BackwardStats, is_successful, RESULTS
from ._solver.anderson import Anderson


# Krylov solvers accept an initial guess; start them from the Jacobian-free w = v.
_WARM_STARTABLE = tuple(
    t for t in (lx.GMRES, lx.BiCGStab, lx.CG) if isinstance(t, type)
)
# The backward tolerance when the forward solver states none (the old default).
_FALLBACK_RTOL = 1e-6
_BACKWARD_FAILED = (
    "The backward (adjoint) solve of the fixed point did not meet its tolerance, so "
    "the gradient would be wrong. Try a larger backward `max_steps`, a different "
    "`linear_solver` (e.g. lineax.GMRES with a larger `restart`), or regularise the "
    "cell towards contraction (jaxdeq.jacobian_regulariser). Pass `throw=False` to "
    "get the gradient anyway and inspect jaxdeq.BackwardStats."
)


def _is_stats(x):
    return isinstance(x, BackwardStats)


def _is_none(x):
    return x is None


def _stats(num_steps, residual, success) -> BackwardStats:
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    return BackwardStats(as32(num_steps), as32(residual), as32(success))


def _cast_like(tree, like):
    return jtu.tree_map(lambda x, y: x.astype(jnp.result_type(y)), tree, like)


def _upcast(tree):
    dtype = bookkeeping_dtype(tree)
    return jtu.tree_map(lambda x: x.astype(dtype), tree)


def _static_float(x) -> float | None:
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None


def follow_rtol(solver: Any, y: PyTree[Array]) -> float:
    r"""The relative tolerance of a backward (or tangent) solve that follows the
    forward solve: the forward solver's `rtol` (its `atol` when `rtol` is zero, read
    as relative to a state of order one), never tighter than ten machine epsilons of
    the state's least precise dtype (the Jacobian products run in that dtype, so no
    solve gets below it), and `1e-6` (floored likewise) for a solver that states no
    tolerance."""
    leaves = jtu.tree_leaves(y)
    eps = max(float(jnp.finfo(jnp.result_type(x)).eps) for x in leaves)
    floor = 10 * eps
    rtol = _static_float(getattr(solver, "rtol", None))
    atol = _static_float(getattr(solver, "atol", None))
    if rtol is not None and rtol > 0:
        follow = rtol
    elif atol is not None and atol > 0:
        follow = atol
    elif rtol is None and atol is None:
        follow = _FALLBACK_RTOL
    else:
        follow = floor
    return max(follow, floor)


class _Linear(eqx.Module):
    r"""The Jacobian $A$ of the fixed-point map at $y^*$ — $J$ (forward mode) or
    $J^\top$ (the backward pass) — as a matrix-free operator.

    Built from $\partial R / \partial y$ for the rewrite $R$ ($f(y) - y$ for fixed
    points), so $A u = u + (\partial R / \partial y) u$. Vectors may come in a wider
    dtype than the state (bookkeeping in at least float32 for a bfloat16 state):
    they are cast down for each product and the result is cast back up.
    """

    rewrite_mv: Callable
    root: PyTree[Array]
    transpose: bool = eqx.field(static=True)

    def r(self, u):
        r"""$(\partial R / \partial y) u$ (or its transpose)."""
        return _cast_like(self.rewrite_mv(_cast_like(u, self.root)), u)

    def j(self, u):
        r"""$A u$: $J u$ or $J^\top u$ for the fixed-point map $f = y + R$."""
        return (self.r(u) ** ω + u**ω).ω

    def residual(self, w, v):
        r"""$\|(I - A) w - v\| / \|v\|$."""
        lhs = (-(self.r(w) ** ω)).ω
        return optx.two_norm((lhs**ω - v**ω).ω) / (optx.two_norm(v) + 1e-30)


def _linear(rewrite_y, root, transpose: bool) -> _Linear:
    if transpose:
        _, vjp_fn = jax.vjp(rewrite_y, root)
        return _Linear(lambda u: vjp_fn(u)[0], root, True)
    _, jvp_fn = jax.linearize(rewrite_y, root)
    return _Linear(jvp_fn, root, False)


def _flatten(tree, dtype):
    leaves = [jnp.ravel(x).astype(dtype) for x in jtu.tree_leaves(tree)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,), dtype)


def _unflatten(flat, like):
    leaves, treedef = jtu.tree_flatten(like)
    out, start = [], 0
    for leaf in leaves:
        size = math.prod(leaf.shape)
        out.append(flat[start : start + size].reshape(leaf.shape))
        start += size
    return jtu.tree_unflatten(treedef, out)


def _forward_ok(residual) -> Array:
    """Whether the forward solve succeeded: its result is the first enumeration item
    of optimistix's residual `(num_steps, result, state, ...)`."""
    is_item = lambda x: hasattr(x, "_enumeration")
    for leaf in jtu.tree_leaves(residual, is_leaf=is_item):
        if is_item(leaf):
            return is_successful(leaf)
    return jnp.array(True)


class AbstractDEQAdjoint(optx.AbstractAdjoint):
    r"""Base class of jaxdeq's backward modes.

    Each is an [`optimistix.AbstractAdjoint`][] and can be passed as `adjoint=` to
    [`optimistix.fixed_point`][], [`optimistix.root_find`][] or
    [`jaxdeq.fixed_point`][] with any solver. The forward solve runs without a tape;
    the derivative sees the residual map $R(y, \theta)$ at the solution $y^*$ (for a
    fixed point, $R = f(y) - y$, so $J = \partial f / \partial y = I + \partial R /
    \partial y$; for a root find of $g$, the map is read as the fixed-point map
    $y + g(y)$). Each backward mode is a linear map $v \mapsto w$ approximating
    $(I - J^\top)^{-1}$ (exactly, for [`jaxdeq.ImplicitAdjoint`][]); the gradient is
    $w^\top \partial f / \partial \theta$ for the cotangent
    $v = \partial L / \partial y^*$. The gradient with respect to `y0` is zero.

    **Both modes of autodiff.** The derivative is defined as a JVP whose tangent
    solve is a `jax.lax.custom_linear_solve`: forward mode (`jax.jvp`,
    `jax.jacfwd`) applies the transpose of the backward map, $t = M b$ with
    $b = \partial f / \partial \theta\, \dot\theta$ (for the implicit adjoint,
    $(I - J) t = b$), and reverse mode applies the backward map itself, so
    `jacfwd` and `jacrev` agree for every backward mode. This needs `fn` to be
    differentiable in forward mode (as `optimistix.ImplicitAdjoint` does).

    **Reporting.** Statistics of the backward solve reach the caller through a
    [`jaxdeq.BackwardStats`][] probe. Its `success` is 0 when the forward solve
    failed (the forward result reaches the backward pass), when the backward solve
    missed its tolerance, or when a monitored residual exceeds the adjoint's `rtol`.
    With `throw=True` such a backward pass raises — with
    `jaxdeq.RESULTS.forward_failed`'s message when the forward solve failed; with
    `throw=False` the best available gradient is returned and the failure shows in
    the probe. Forward mode raises the same way but has no probe.
    """

    throw: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def _solve(
        self, lin: _Linear, v: PyTree[Array], inputs: tuple
    ) -> tuple[PyTree[Array], BackwardStats]:
        """Apply the backward map to `v` (when `lin.transpose`: approximately solve
        $(I - J^\top) w = v$) or its transpose (forward mode: $(I - J) t = v$).

        `inputs` are optimistix's `(fn, solver, y0, args, options, ...)`, for backward
        modes that use the problem's structure. Returns the solution, in `v`'s dtype,
        and the statistics; their `success` need not include the forward's.
        """

    def apply(self, primal_fn, rewrite_fn, inputs, tags):
        inputs = inputs + (ft.partial(eqxi.while_loop, kind="lax"),)
        root, residual = _implicit(primal_fn, rewrite_fn, inputs, tags, self)
        return root, jtu.tree_map(eqxi.nondifferentiable_backward, residual)


@eqx.filter_custom_jvp
def _implicit(fn_primal, fn_rewrite, inputs, tags, adjoint):
    del fn_rewrite, tags, adjoint
    return jtu.tree_map(jnp.asarray, fn_primal(inputs))


def _rewrite_at(fn_rewrite, residual, inputs, y):
    return fn_rewrite(y, residual, inputs)


@_implicit.def_jvp
def _implicit_jvp(primals, tangents):
    fn_primal, fn_rewrite, inputs, tags, adjoint = primals
    _, _, t_inputs, _, _ = tangents
    root, residual = _implicit(fn_primal, fn_rewrite, inputs, tags, adjoint)

    no_tangent = jtu.tree_map(_is_none, t_inputs, is_leaf=_is_none)
    nondiff, diff = eqx.partition(inputs, no_tangent, is_leaf=_is_none)

    def rewrite_of_diff(_diff):
        return fn_rewrite(root, residual, eqx.combine(_diff, nondiff))

    # b = (∂f/∂θ) θ̇; the tangent of y* solves (I - J) ẏ = b.
    _, jvp_diff = jax.jvp(rewrite_of_diff, (diff,), (t_inputs,))
    # Probes ride in the same vector, so that the transposed solve can hand them the
    # backward statistics as their cotangent. One flat vector: every entry then
    # depends on the tangents, which custom_linear_solve's transpose requires.
    probes = [
        t
        for t in jtu.tree_leaves(t_inputs, is_leaf=_is_stats)
        if _is_stats(t) and not any(x is None for x in (t.num_steps, t.success))
    ]
    dtype = bookkeeping_dtype(root)
    size = sum(math.prod(jnp.shape(x)) for x in jtu.tree_leaves(root))
    b = jnp.concatenate([_flatten(jvp_diff, dtype), _flatten(probes, dtype)])
    rewrite_y = ft.partial(_rewrite_at, fn_rewrite, residual, inputs)
    forward_ok = _forward_ok(residual)

    def check(x, stats):
        if adjoint.throw:
            x = RESULTS.forward_failed.error_if(x, jnp.invert(forward_ok))
            x = eqx.error_if(x, forward_ok & (stats.success < 0.5), _BACKWARD_FAILED)
        return x

    def matvec(x):
        lhs = (-(_linear(rewrite_y, root, False).r(_unflatten(x[:size], root)) ** ω)).ω
        return jnp.concatenate([_flatten(lhs, dtype), x[size:]])

    def solve(_, x):
        lin = _linear(rewrite_y, root, False)
        t, stats = adjoint._solve(lin, _unflatten(x[:size], root), inputs)
        return jnp.concatenate([_flatten(check(t, stats), dtype), x[size:]])

    def transpose_solve(_, x):
        lin = _linear(rewrite_y, root, True)
        w, stats = adjoint._solve(lin, _unflatten(x[:size], root), inputs)
        w = check(w, stats)
        success = jnp.where(forward_ok, stats.success, 0.0).astype(jnp.float32)
        stats = BackwardStats(stats.num_steps, stats.rel_residual, success)
        return jnp.concatenate(
            [_flatten(w, dtype), _flatten([stats] * len(probes), dtype)]
        )

    x = jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)
    t_root = _cast_like(_unflatten(x[:size], root), root)
    if hasattr(jax.custom_derivatives, "zero_from_primal"):
        t_residual = jax.custom_derivatives.zero_from_primal(  # pyright: ignore
            residual, symbolic_zeros=True
        )
    else:
        t_residual = jtu.tree_map(jnp.zeros_like, residual)
    return (root, residual), (t_root, t_residual)


class ImplicitAdjoint(AbstractDEQAdjoint):
    r"""Implicit differentiation, matrix-free: solve $(I - J^\top) w = v$.

    With $v = \partial L / \partial y^*$ and $J = \partial f / \partial y$ at the fixed
    point, the implicit function theorem gives
    $\partial L / \partial \theta = w^\top \partial f / \partial \theta$ where
    $(I - J^\top) w = v$. The system is solved without forming $J$, one
    vector–Jacobian product per iteration: by default with Anderson acceleration on
    the linear fixed point $w = v + J^\top w$ (a Krylov-like method that needs the
    spectral radius of $J$ below one, as a DEQ's forward iteration does), or by any
    other fixed-point solver, or by a [lineax](https://docs.kidger.site/lineax/)
    solver on the operator $w \mapsto w - J^\top w$ (e.g. `lineax.GMRES`, which
    also handles expansive $J$ with $I - J$ invertible). A dense solver such as
    `lineax.LU()` materialises $J$ only when asked for. The backward solve runs in at
    least float32, also for a bfloat16 state. Forward mode (`jax.jvp`) solves
    $(I - J) \dot y = (\partial f / \partial \theta) \dot\theta$ with the same
    solver, one Jacobian–vector product per iteration.

    By default the backward tolerance follows the forward solve: the forward
    solver's `rtol`, never tighter than ten machine epsilons of the state's dtype
    (see `linear_solver` below), so a float64 solve at `rtol=1e-12` gets a gradient
    accurate to about that, and a float32 one at `rtol=1e-4` does not pay for a
    backward solve to `1e-6`.

    The number of steps, the relative residual
    $\|(I - J^\top) w - v\| / \|v\|$ (measured, not estimated) and whether the
    solve converged are reported through [`jaxdeq.BackwardStats`][]; a failed solve
    raises when `throw=True`. A lineax solve counts as converged if lineax says so or
    if the measured relative residual is at most the solver's `rtol` (lineax's own
    test is elementwise and can be unreachable in float32).

    ??? cite "References"

        ```bibtex
        @inproceedings{bai2019deep,
            author = {Bai, Shaojie and Kolter, J. Zico and Koltun, Vladlen},
            title = {Deep Equilibrium Models},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2019},
        }
        ```
    """

    linear_solver: lx.AbstractLinearSolver | optx.AbstractFixedPointSolver | None = None
    max_steps: int = 1000
    throw: bool = True

    def __check_init__(self):
        if self.linear_solver is not None and not isinstance(
            self.linear_solver,
            (lx.AbstractLinearSolver, optx.AbstractFixedPointSolver),
        ):
            raise TypeError(
                "ImplicitAdjoint: `linear_solver` must be None (Anderson at the "
                "forward solve's tolerance), a lineax linear solver (e.g. "
                "lineax.GMRES(rtol=1e-6, atol=1e-8)) or a fixed-point solver (e.g. "
                f"jaxdeq.Anderson(rtol=1e-6, atol=0.0)); got {self.linear_solver!r}."
            )
        check_positive_int("ImplicitAdjoint", "max_steps", self.max_steps)

    def _solve(self, lin, v, inputs):
        v = _upcast(v)
        solver = self.linear_solver
        if solver is None:
            solver = Anderson(rtol=follow_rtol(inputs[1], lin.root), atol=0.0)
        if isinstance(solver, optx.AbstractFixedPointSolver):
            fixed = lambda w, v: (v**ω + lin.j(w) ** ω).ω
            sol = optx.fixed_point(
                fixed,
                solver,
                v,
                v,
                max_steps=self.max_steps,
                adjoint=optx.RecursiveCheckpointAdjoint(),
                throw=False,
            )
            w = sol.value
            num_steps = sol.stats["num_steps"]
            residual = lin.residual(w, v)
            converged = sol.result == optx.RESULTS.successful
        else:
            operator = lx.FunctionLinearOperator(
                lambda u: (-(lin.r(u) ** ω)).ω, jax.eval_shape(lambda: v)
            )
            options = {"y0": v} if isinstance(solver, _WARM_STARTABLE) else {}
            sol = lx.linear_solve(operator, v, solver, options=options, throw=False)
            w = sol.value
            num_steps = sol.stats.get("num_steps", 1)
            residual = lin.residual(w, v)
            converged = (sol.result == lx.RESULTS.successful) | (
                residual <= getattr(solver, "rtol", 0.0)
            )
        success = converged & jnp.isfinite(residual)
        return w, _stats(num_steps, residual, success)


ImplicitAdjoint.__init__.__doc__ = r"""**Arguments:**

- `linear_solver`: how to solve $(I - J^\top) w = v$. `None` (default):
    `jaxdeq.Anderson(rtol=r, atol=0.0)` iterating $w \leftarrow v + J^\top w$, where
    `r` follows the forward solve — the forward solver's `rtol` (its `atol` if
    `rtol` is zero), at least ten machine epsilons of the state's dtype, `1e-6` if
    the forward solver states no tolerance; `atol` is zero because cotangents of a
    mean loss scale like one over the batch size. Or any optimistix/jaxdeq
    fixed-point solver with its own tolerances, or a lineax solver such as
    `lineax.GMRES(rtol=1e-6, atol=1e-6, restart=30)`, `BiCGStab`, or `lineax.LU()`
    (which materialises $J$).
- `max_steps`: step budget when `linear_solver` is a fixed-point solver (lineax
    solvers carry their own `max_steps`).
- `throw`: raise if the backward solve fails or the forward solve it differentiates
    failed. [`jaxdeq.fixed_point`][] sets this to `False` when called with
    `throw=False`.
"""


def _monitored(lin, w, v, monitor, rtol):
    """Residual and success of an approximate backward map: measured when
    `monitor`, else NaN and success."""
    if not monitor:
        return jnp.nan, jnp.array(True)
    residual = lin.residual(w, v)
    return residual, residual <= rtol


def _check_rtol(name, rtol):
    check_tolerances(name, rtol, 0.0)


class JacobianFreeAdjoint(AbstractDEQAdjoint):
    r"""Jacobian-free backpropagation: $w = v$.

    Replaces $(I - J^\top)^{-1}$ by the identity, so the gradient is
    $v^\top \partial f / \partial \theta$ at $y^*$: one vector–Jacobian product, no
    solve. A descent direction when $f$ is contractive enough. In forward mode the
    tangent is $\dot y = (\partial f / \partial \theta) \dot\theta$, the transpose.

    ??? cite "References"

        ```bibtex
        @inproceedings{fung2022jfb,
            author = {Fung, Samy Wu and Heaton, Howard and Li, Qiuwei and McKenzie,
                      Daniel and Osher, Stanley and Yin, Wotao},
            title = {JFB: Jacobian-Free Backpropagation for Implicit Networks},
            booktitle = {AAAI Conference on Artificial Intelligence},
            year = {2022},
        }
        ```
    """

    monitor: bool = False
    rtol: float = 1.0
    throw: bool = True

    def __check_init__(self):
        _check_rtol("JacobianFreeAdjoint", self.rtol)

    def _solve(self, lin, v, inputs):
        del inputs
        residual, success = _monitored(lin, v, v, self.monitor, self.rtol)
        return v, _stats(0, residual, success)


_APPROXIMATE_ARGS = r"""- `monitor`: also measure how far $w$ is from solving
    $(I - J^\top) w = v$ (one extra vector–Jacobian product), reported as
    `BackwardStats.rel_residual`; a measured residual above `rtol` is a failed
    backward pass.
- `rtol`: the largest monitored relative residual that counts as success. Default
    `1.0`: beyond it, $w$ solves the system worse than $w = 0$ does (the series or
    the iteration is expanding), whatever the dtype.
- `throw`: raise when the backward pass fails (a failed forward solve; with
    `monitor=True`, a residual above `rtol`).
"""

JacobianFreeAdjoint.__init__.__doc__ = "**Arguments:**\n\n" + _APPROXIMATE_ARGS


class NeumannAdjoint(AbstractDEQAdjoint):
    r"""Truncated Neumann series: $w = \sum_{i=0}^{k} (J^\top)^i v$.

    $k$ vector–Jacobian products. $k = 0$ is [`jaxdeq.JacobianFreeAdjoint`][]; as
    $k \to \infty$ it tends to the implicit gradient when the spectral radius of $J$
    is below one. The error of the series is $(J^\top)^{k+1}$ applied to the exact
    $w$, whatever the dtype, so $k$ is the user's accuracy–cost trade-off; the
    default $k = 1$ is the cheapest correction of the Jacobian-free gradient. In
    forward mode the tangent is $\sum_{i=0}^{k} J^i b$ for
    $b = (\partial f / \partial \theta) \dot\theta$, the transpose.

    ??? cite "References"

        ```bibtex
        @inproceedings{geng2021training,
            author = {Geng, Zhengyang and Zhang, Xin-Yu and Bai, Shaojie and Wang,
                      Yisen and Lin, Zhouchen},
            title = {On Training Implicit Models},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2021},
        }
        ```
    """

    terms: int = 1
    clip: float | None = None
    monitor: bool = False
    rtol: float = 1.0
    throw: bool = True

    def __check_init__(self):
        check_positive_int("NeumannAdjoint", "terms", self.terms, minimum=0)
        if self.clip is not None and not float(self.clip) > 0:
            raise ValueError(
                "NeumannAdjoint: `clip` must be None or > 0 (e.g. clip=1.0), got "
                f"{self.clip!r}."
            )
        _check_rtol("NeumannAdjoint", self.rtol)

    def _solve(self, lin, v, inputs):
        del inputs

        def body(_, carry):
            term, total = carry
            term = lin.j(term)
            return term, (total**ω + term**ω).ω

        _, w = jax.lax.fori_loop(0, self.terms, body, (v, v))
        if self.clip is not None:
            correction = (w**ω - v**ω).ω
            limit = self.clip * optx.two_norm(v)
            size = optx.two_norm(correction)
            scale = jnp.where(size > limit, limit / jnp.where(size > 0, size, 1), 1)
            w = (v**ω + (scale * correction**ω)).ω
        residual, success = _monitored(lin, w, v, self.monitor, self.rtol)
        return w, _stats(self.terms, residual, success)


NeumannAdjoint.__init__.__doc__ = (
    r"""**Arguments:**

- `terms`: $k \ge 0$, the highest power of $J^\top$ in the series.
- `clip`: if set, the correction $w - v = \sum_{i \ge 1} (J^\top)^i v$ is rescaled
    to norm at most `clip` $\cdot \|v\|_2$ (a guard against an expansive $J$
    early in training, where the series can blow up); `None` (default) keeps it.
    Clipping is not linear, so with it `jacfwd` and `jacrev` agree only where no
    clipping happens.
"""
    + _APPROXIMATE_ARGS
)


class PhantomAdjoint(AbstractDEQAdjoint):
    r"""Phantom gradient: backpropagate through $k$ damped steps at the solution.

    Differentiates $k$ steps $z_{i+1} = (1 - \tau) z_i + \tau f(z_i, \theta)$ started
    from $z_0 = y^*$ (a constant), linearised at the fixed point $y^*$ (where every
    $z_i$ equals $y^*$): with $A = (1 - \tau) I + \tau J$, the gradient is
    $w^\top \partial f / \partial \theta$ for
    $w = \tau \sum_{i=0}^{k-1} (A^\top)^i v$ and $v = \partial L / \partial y^*$.
    The forward value is still $y^*$ exactly. $k = 1$, $\tau = 1$ is
    [`jaxdeq.JacobianFreeAdjoint`][]; as $k \to \infty$ it tends to the implicit
    gradient when $A$ is contractive. The cost is $k$ vector–Jacobian products. In
    forward mode the tangent is $\tau \sum_{i<k} A^i b$, the transpose.

    ??? cite "References"

        ```bibtex
        @inproceedings{geng2021training,
            author = {Geng, Zhengyang and Zhang, Xin-Yu and Bai, Shaojie and Wang,
                      Yisen and Lin, Zhouchen},
            title = {On Training Implicit Models},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2021},
        }
        ```
    """

    steps: int = 1
    damping: float = 1.0
    monitor: bool = False
    rtol: float = 1.0
    throw: bool = True

    def __check_init__(self):
        check_positive_int("PhantomAdjoint", "steps", self.steps)
        check_unit_interval("PhantomAdjoint", "damping", self.damping)
        _check_rtol("PhantomAdjoint", self.rtol)

    def _solve(self, lin, v, inputs):
        del inputs
        tau = self.damping

        def body(_, carry):
            term, total = carry
            term = ((1 - tau) * term**ω + tau * lin.j(term) ** ω).ω
            return term, (total**ω + term**ω).ω

        _, total = jax.lax.fori_loop(0, self.steps - 1, body, (v, v))
        w = (tau * total**ω).ω
        residual, success = _monitored(lin, w, v, self.monitor, self.rtol)
        return w, _stats(self.steps, residual, success)


PhantomAdjoint.__init__.__doc__ = (
    r"""**Arguments:**

- `steps`: $k \ge 1$, the number of damped steps differentiated through.
- `damping`: $\tau \in (0, 1]$.
"""
    + _APPROXIMATE_ARGS
)
