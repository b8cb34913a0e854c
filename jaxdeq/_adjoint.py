import abc
import functools as ft
from collections.abc import Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from equinox.internal import ω
from jaxtyping import Array, PyTree

from ._misc import bookkeeping_dtype, check_positive_int, check_unit_interval
from ._solution import BackwardStats
from ._solver.anderson import Anderson


# Krylov solvers accept an initial guess; start them from the Jacobian-free w = v.
_WARM_STARTABLE = tuple(
    t for t in (lx.GMRES, lx.BiCGStab, lx.CG) if isinstance(t, type)
)


def _is_stats(x):
    return isinstance(x, BackwardStats)


def _zeros_if_none(cotangent, primal):
    return jtu.tree_map(
        lambda c, p: jnp.zeros_like(p) if c is None else c,
        cotangent,
        primal,
        is_leaf=lambda c: c is None,
    )


def _stats(num_steps, residual, success) -> BackwardStats:
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    return BackwardStats(as32(num_steps), as32(residual), as32(success))


def _cast_like(tree, like):
    return jtu.tree_map(lambda x, y: x.astype(jnp.result_type(y)), tree, like)


class _Linearised(eqx.Module):
    """The rewrite function R(y, θ) (f(y) - y for fixed points) linearised at y*.

    Vectors may come in a wider dtype than the primal (bookkeeping in at least
    float32 for a bfloat16 state): they are cast down for each product and the
    result is cast back up.
    """

    vjp_fn: Callable
    root: PyTree[Array]

    def transpose_jacobian(self, u):
        r"""$(\partial R / \partial y)^\top u$."""
        return _cast_like(self.vjp_fn(_cast_like(u, self.root))[0], u)

    def parameter_vjp(self, u):
        r"""$(\partial R / \partial \theta)^\top u$."""
        return self.vjp_fn(_cast_like(u, self.root))[1]

    def jt(self, u):
        r"""$J^\top u$ for the fixed-point map $f = y + R$."""
        return (self.transpose_jacobian(u) ** ω + u**ω).ω

    def system_residual(self, w, v):
        r"""$\|(I - J^\top) w - v\| / \|v\|$."""
        lhs = (-(self.transpose_jacobian(w) ** ω)).ω
        return optx.two_norm((lhs**ω - v**ω).ω) / (optx.two_norm(v) + 1e-30)


class AbstractDEQAdjoint(optx.AbstractAdjoint):
    r"""Base class of jaxdeq's backward modes.

    Each is an [`optimistix.AbstractAdjoint`][] and can be passed as `adjoint=` to
    [`optimistix.fixed_point`][], [`optimistix.root_find`][] or
    [`jaxdeq.fixed_point`][] with any solver. The forward solve runs without a tape;
    the backward pass sees the residual map $R(y, \theta)$ at the solution $y^*$ (for a
    fixed point, $R = f(y) - y$, so $J = \partial f / \partial y = I + \partial R /
    \partial y$; for a root find of $g$, the map is read as the fixed-point map
    $y + g(y)$), receives the cotangent $v = \partial L / \partial y^*$, and returns
    $w^\top \partial f / \partial \theta$ for some approximation $w$ of
    $(I - J^\top)^{-1} v$ — or, for [`jaxdeq.PhantomAdjoint`][], the gradient through a
    few damped steps. The gradient with respect to `y0` is zero.

    Statistics of the backward solve reach the caller through a
    [`jaxdeq.BackwardStats`][] probe. With `throw=True` a backward solve that fails
    raises an error; with `throw=False` the best available gradient is returned and
    the failure shows in the probe's `success`.
    """

    throw: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def _backward(
        self,
        rewrite: Callable[[PyTree, PyTree], PyTree],
        root: PyTree[Array],
        cotangent: PyTree[Array],
        diff: PyTree,
        inputs: tuple,
    ) -> tuple[PyTree, BackwardStats]:
        """Return the gradient with respect to `diff` and the backward statistics.

        `inputs` are optimistix's `(fn, solver, y0, args, options, ...)`, for backward
        modes that use the problem's structure.
        """

    def apply(self, primal_fn, rewrite_fn, inputs, tags):
        while_loop = ft.partial(eqxi.while_loop, kind="lax")
        root, residual = _solve(inputs, primal_fn, rewrite_fn, self, while_loop)
        return root, jtu.tree_map(eqxi.nondifferentiable_backward, residual)


@eqx.filter_custom_vjp
def _solve(inputs, primal_fn, rewrite_fn, adjoint, while_loop):
    del rewrite_fn, adjoint
    return jtu.tree_map(jnp.asarray, primal_fn(inputs + (while_loop,)))


@_solve.def_fwd
def _solve_fwd(perturbed, inputs, primal_fn, rewrite_fn, adjoint, while_loop):
    del perturbed, rewrite_fn, adjoint
    out = jtu.tree_map(jnp.asarray, primal_fn(inputs + (while_loop,)))
    return out, out[0]


@_solve.def_bwd
def _solve_bwd(
    root, grad_obj, perturbed, inputs, primal_fn, rewrite_fn, adjoint, while_loop
):
    del primal_fn, while_loop
    cotangent = _zeros_if_none(grad_obj[0], root)
    diff, nondiff = eqx.partition(inputs, perturbed)

    def rewrite(y, _diff):
        return rewrite_fn(y, None, eqx.combine(_diff, nondiff))

    grads, stats = adjoint._backward(rewrite, root, cotangent, diff, inputs)
    if adjoint.throw:
        grads = eqx.error_if(
            grads,
            stats.success < 1,
            "The backward (adjoint) solve of the fixed point did not converge, so the "
            "gradient would be wrong. Try a larger backward `max_steps`, a looser "
            "backward tolerance, a different `linear_solver` (e.g. lineax.GMRES with a "
            "larger `restart`), or regularise the cell towards contraction "
            "(jaxdeq.jacobian_regulariser). Pass `throw=False` to get the gradient "
            "anyway and inspect jaxdeq.BackwardStats.",
        )
    # Deliver the statistics as the "gradient" of any BackwardStats probe.
    grads = jtu.tree_map(
        lambda g: stats if _is_stats(g) else g, grads, is_leaf=_is_stats
    )
    return grads


def _linearise(rewrite, root, diff) -> _Linearised:
    _, vjp_fn = jax.vjp(rewrite, root, diff)
    return _Linearised(vjp_fn, root)


def _upcast(tree):
    dtype = bookkeeping_dtype(tree)
    return jtu.tree_map(lambda x: x.astype(dtype), tree)


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
    least float32, also for a bfloat16 state.

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

    linear_solver: lx.AbstractLinearSolver | optx.AbstractFixedPointSolver = Anderson(
        rtol=1e-6, atol=0.0
    )
    max_steps: int = 1000
    throw: bool = True

    def __check_init__(self):
        if not isinstance(
            self.linear_solver,
            (lx.AbstractLinearSolver, optx.AbstractFixedPointSolver),
        ):
            raise TypeError(
                "ImplicitAdjoint: `linear_solver` must be a lineax linear solver (e.g. "
                "lineax.GMRES(rtol=1e-6, atol=1e-8)) or a fixed-point solver (e.g. "
                f"jaxdeq.Anderson(rtol=1e-6, atol=1e-8)); got {self.linear_solver!r}."
            )
        check_positive_int("ImplicitAdjoint", "max_steps", self.max_steps)

    def _backward(self, rewrite, root, cotangent, diff, inputs):
        del inputs
        lin = _linearise(rewrite, root, diff)
        v = _upcast(cotangent)
        if isinstance(self.linear_solver, optx.AbstractFixedPointSolver):
            fixed = lambda w, v: (v**ω + lin.jt(w) ** ω).ω
            sol = optx.fixed_point(
                fixed,
                self.linear_solver,
                v,
                v,
                max_steps=self.max_steps,
                adjoint=optx.RecursiveCheckpointAdjoint(),
                throw=False,
            )
            w = sol.value
            num_steps = sol.stats["num_steps"]
            residual = lin.system_residual(w, v)
            converged = sol.result == optx.RESULTS.successful
        else:
            operator = lx.FunctionLinearOperator(
                lambda u: (-(lin.transpose_jacobian(u) ** ω)).ω,
                jax.eval_shape(lambda: v),
            )
            solver = self.linear_solver
            options = {"y0": v} if isinstance(solver, _WARM_STARTABLE) else {}
            sol = lx.linear_solve(operator, v, solver, options=options, throw=False)
            w = sol.value
            num_steps = sol.stats.get("num_steps", 1)
            residual = lin.system_residual(w, v)
            converged = (sol.result == lx.RESULTS.successful) | (
                residual <= getattr(solver, "rtol", 0.0)
            )
        success = converged & jnp.isfinite(residual)
        return lin.parameter_vjp(w), _stats(num_steps, residual, success)


ImplicitAdjoint.__init__.__doc__ = r"""**Arguments:**

- `linear_solver`: how to solve $(I - J^\top) w = v$: an optimistix/jaxdeq
    fixed-point solver iterating $w \leftarrow v + J^\top w$ (default
    `jaxdeq.Anderson(rtol=1e-6, atol=0.0)`; keep `atol` at zero or tiny, since
    cotangents of a mean loss scale like one over the batch size), or a lineax
    solver such as `lineax.GMRES(rtol=1e-6, atol=1e-6, restart=30)`, `BiCGStab`, or
    `lineax.LU()` (which materialises $J$).
- `max_steps`: step budget when `linear_solver` is a fixed-point solver (lineax
    solvers carry their own `max_steps`).
- `throw`: raise if the backward solve fails. [`jaxdeq.fixed_point`][] sets this to
    `False` when called with `throw=False`.
"""


class JacobianFreeAdjoint(AbstractDEQAdjoint):
    r"""Jacobian-free backpropagation: $w = v$.

    Replaces $(I - J^\top)^{-1}$ by the identity, so the gradient is
    $v^\top \partial f / \partial \theta$ at $y^*$: one vector–Jacobian product, no
    solve. A descent direction when $f$ is contractive enough.

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
    throw: bool = True

    def _backward(self, rewrite, root, cotangent, diff, inputs):
        del inputs
        lin = _linearise(rewrite, root, diff)
        residual = (
            lin.system_residual(cotangent, cotangent) if self.monitor else jnp.nan
        )
        return lin.parameter_vjp(cotangent), _stats(0, residual, 1)


JacobianFreeAdjoint.__init__.__doc__ = r"""**Arguments:**

- `monitor`: also measure how far $w = v$ is from solving $(I - J^\top) w = v$ (one
    extra vector–Jacobian product), reported as `BackwardStats.rel_residual`.
- `throw`: unused by this adjoint (it cannot fail); kept for a uniform interface.
"""


class NeumannAdjoint(AbstractDEQAdjoint):
    r"""Truncated Neumann series: $w = \sum_{i=0}^{k} (J^\top)^i v$.

    $k$ vector–Jacobian products. $k = 0$ is [`jaxdeq.JacobianFreeAdjoint`][]; as
    $k \to \infty$ it tends to the implicit gradient when the spectral radius of $J$
    is below one.

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
    throw: bool = True

    def __check_init__(self):
        check_positive_int("NeumannAdjoint", "terms", self.terms, minimum=0)
        if self.clip is not None and not float(self.clip) > 0:
            raise ValueError(
                "NeumannAdjoint: `clip` must be None or > 0 (e.g. clip=1.0), got "
                f"{self.clip!r}."
            )

    def _backward(self, rewrite, root, cotangent, diff, inputs):
        del inputs
        lin = _linearise(rewrite, root, diff)

        def body(_, carry):
            term, total = carry
            term = lin.jt(term)
            return term, (total**ω + term**ω).ω

        _, w = jax.lax.fori_loop(0, self.terms, body, (cotangent, cotangent))
        if self.clip is not None:
            correction = (w**ω - cotangent**ω).ω
            limit = self.clip * optx.two_norm(cotangent)
            size = optx.two_norm(correction)
            scale = jnp.where(size > limit, limit / jnp.where(size > 0, size, 1), 1)
            w = (cotangent**ω + (scale * correction**ω)).ω
        residual = lin.system_residual(w, cotangent) if self.monitor else jnp.nan
        return lin.parameter_vjp(w), _stats(self.terms, residual, 1)


NeumannAdjoint.__init__.__doc__ = r"""**Arguments:**

- `terms`: $k \ge 0$, the highest power of $J^\top$ in the series.
- `clip`: if set, the correction $w - v = \sum_{i \ge 1} (J^\top)^i v$ is rescaled
    to norm at most `clip` $\cdot \|v\|_2$ (a guard against an expansive $J$
    early in training, where the series can blow up); `None` (default) keeps it.
- `monitor`: also measure the residual of $(I - J^\top) w = v$ (one extra
    vector–Jacobian product), reported as `BackwardStats.rel_residual`.
- `throw`: unused by this adjoint (it cannot fail); kept for a uniform interface.
"""


class PhantomAdjoint(AbstractDEQAdjoint):
    r"""Phantom gradient: backpropagate through $k$ damped steps from the solution.

    From $z_0 = y^*$ (treated as a constant) run
    $z_{i+1} = (1 - \tau) z_i + \tau f(z_i, \theta)$ for $i < k$ with the tape on, and
    return the gradient of $z_k$ with respect to $\theta$, applied to
    $v = \partial L / \partial y^*$. The forward value is still $y^*$ exactly. $k = 1$,
    $\tau = 1$ is [`jaxdeq.JacobianFreeAdjoint`][]; the cost is $k$ function
    evaluations and their tape.

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
    throw: bool = True

    def __check_init__(self):
        check_positive_int("PhantomAdjoint", "steps", self.steps)
        check_unit_interval("PhantomAdjoint", "damping", self.damping)

    def _backward(self, rewrite, root, cotangent, diff, inputs):
        del inputs

        def unrolled(_diff):
            z = root
            for _ in range(self.steps):
                z = (z**ω + self.damping * rewrite(z, _diff) ** ω).ω
            return z

        _, vjp_fn = jax.vjp(unrolled, diff)
        (grads,) = vjp_fn(cotangent)
        return grads, _stats(self.steps, jnp.nan, 1)


PhantomAdjoint.__init__.__doc__ = r"""**Arguments:**

- `steps`: $k \ge 1$, the number of damped steps backpropagated through.
- `damping`: $\tau \in (0, 1]$.
- `throw`: unused by this adjoint (it cannot fail); kept for a uniform interface.
"""
