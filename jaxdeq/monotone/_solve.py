from typing import Any

import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, PyTree

from .._adjoint_splitting import SplittingAdjoint
from .._deq import fixed_point
from .._solution import BackwardStats
from .._solver._monotone_problem import MonotoneProblem
from .._solver.splitting import (
    forward_backward_bound,
    ForwardBackward,
    PeacemanRachford,
)


def _is_concrete(tree) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(tree))


def check_step_size(problem: MonotoneProblem, solver: Any) -> None:
    """Reject a forward–backward step outside the convergent range, when the
    operator's parameters are concrete (outside `jit`)."""
    if not isinstance(solver, ForwardBackward) or solver.alpha is None:
        return
    if not _is_concrete(problem.operator):
        return
    with jax.ensure_compile_time_eval():
        bound = forward_backward_bound(problem)
    if not _is_concrete(bound):
        return
    bound = float(bound)
    lipschitz = (2 * problem.operator.margin / bound) ** 0.5
    if solver.alpha > bound:
        raise ValueError(
            f"ForwardBackward: step size alpha={solver.alpha} exceeds the convergent "
            f"bound 2m/L^2 = {bound:.4g} of this operator (margin m = "
            f"{problem.operator.margin}, L = ||I - W||_2 = "
            f"{float(lipschitz):.4g}). Use alpha <= {bound:.4g}, "
            "alpha=None (chosen from the bound), or jaxdeq.PeacemanRachford, which "
            "converges for every alpha > 0."
        )


def _problem_fn(z, problem):
    return problem(z)


def solve(
    problem: MonotoneProblem,
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder,
    y0: PyTree[Array] | None = None,
    *,
    max_steps: int | None = 256,
    adjoint: optx.AbstractAdjoint = SplittingAdjoint(),
    throw: bool = True,
    backward_stats: BackwardStats | None = None,
) -> optx.Solution:
    r"""Solve a monotone fixed point $z = \operatorname{prox}_f(W z + b)$.

    [`jaxdeq.fixed_point`][] on the problem's map, with the problem's structure
    passed to the splitting solvers (and, for [`jaxdeq.PeacemanRachford`][], the
    resolvent factorised once, outside the loop: under `vmap` over the bias it is
    shared by the whole batch). Any other fixed-point solver or root finder works
    too (e.g. [`jaxdeq.Anderson`][] as a generic reference).

    **Arguments:**

    - `problem`: a [`jaxdeq.monotone.MonotoneProblem`][].
    - `solver`: [`jaxdeq.PeacemanRachford`][], [`jaxdeq.ForwardBackward`][] or any
        optimistix/jaxdeq fixed-point solver or root finder.
    - `y0`: the starting point; zeros by default.
    - `max_steps`, `throw`, `backward_stats`: as for [`jaxdeq.fixed_point`][].
    - `adjoint`: the backward mode; [`jaxdeq.SplittingAdjoint`][] by default, which
        solves the backward linear system with the same splitting.

    **Returns:**

    The [`optimistix.Solution`][] of [`jaxdeq.fixed_point`][], with diagnostics in
    `sol.stats` and, for the splitting solvers, the step size in `sol.state.alpha`.
    (The layer [`jaxdeq.monotone.MonDEQ`][] returns them as a [`jaxdeq.Report`][]
    instead, the step size in `report.extra["alpha"]`.)

    **Raises:**

    `TypeError` if `problem` is not a `MonotoneProblem`; `ValueError` for a `y0` of
    the wrong shape, or a forward–backward step size above $2m/L^2$ when the
    operator is concrete (outside `jit`).
    """
    if not isinstance(problem, MonotoneProblem):
        raise TypeError(
            "jaxdeq.monotone.solve: `problem` must be a "
            f"jaxdeq.monotone.MonotoneProblem, got {type(problem).__name__}."
        )
    structure = problem.operator.in_structure()
    if y0 is None:
        y0 = jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), structure)
    shapes = jtu.tree_map(lambda s: s.shape, structure)
    if jtu.tree_map(jnp.shape, y0) != shapes:
        raise ValueError(
            f"jaxdeq.monotone.solve: `y0` has shape {jtu.tree_map(jnp.shape, y0)} but "
            f"the operator acts on states of shape {shapes}."
        )
    check_step_size(problem, solver)
    problem = MonotoneProblem(problem.operator.prepare(), problem.prox, problem.bias)
    options: dict[str, Any] = {"problem": problem}
    if isinstance(solver, PeacemanRachford):
        options["resolvent"] = problem.operator.resolvent(solver.step_size(problem))
    return fixed_point(
        _problem_fn,
        solver,
        y0,
        problem,
        options,
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
        backward_stats=backward_stats,
    )
