import dataclasses
from typing import Any

import jax.numpy as jnp
import optimistix as optx
from equinox.internal import ω

from ._adjoint import _stats, _upcast, AbstractDEQAdjoint, follow_rtol
from ._misc import check_positive_int, check_tolerances
from ._solver._monotone_problem import (
    _TransposedResolvent,
    MonotoneProblem,
    Transposed,
)
from ._solver.splitting import ForwardBackward, get_problem, PeacemanRachford


class SplittingAdjoint(AbstractDEQAdjoint):
    r"""The backward pass of a monotone DEQ, solved by operator splitting.

    At the fixed point $z^* = \operatorname{prox}_f(W z^* + b)$ let $J$ be the
    Jacobian of the prox at $W z^* + b$ (symmetric, eigenvalues in $[0, 1]$; for the
    ReLU, $J = \operatorname{diag}(\mathbb 1[W z^* + b > 0])$). The gradient needs
    $w = (I - W^\top J)^{-1} v$ for the cotangent $v = \partial L / \partial z^*$.
    Writing $u = J w$ turns this into another monotone fixed point,

    $$u = J (W^\top u + v),$$

    with the transposed operator (same margin) and the linear prox $x \mapsto Jx$ —
    so it is solved, matrix-free, with the same splitting as the forward pass,
    reusing the forward resolvent's factorisation (transposed). Then
    $w = v + W^\top u$ and the parameter gradient is $w^\top \partial f / \partial
    \theta$.

    Needs the problem in `options={"problem": problem}` (as
    [`jaxdeq.monotone.solve`][] and [`jaxdeq.monotone.MonDEQ`][] pass it). The
    residual $\|(I - J^\top) w - v\| / \|v\|$ is measured with the true Jacobian of
    `fn` and reported through [`jaxdeq.BackwardStats`][] like every jaxdeq adjoint.

    Forward mode (`jax.jvp`) solves $(I - J W) t = b$ the same way: with
    $u = J W t$, $u = J (W u + W b)$ is a monotone fixed point with the forward
    operator (and the forward resolvent, untransposed), and $t = b + u$.

    ??? cite "References"

        ```bibtex
        @inproceedings{winston2020monotone,
            author = {Winston, Ezra and Kolter, J. Zico},
            title = {Monotone operator equilibrium networks},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2020},
        }
        ```
    """

    solver: ForwardBackward | PeacemanRachford | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 1000
    throw: bool = True

    def __check_init__(self):
        if self.solver is not None and not isinstance(
            self.solver, (ForwardBackward, PeacemanRachford)
        ):
            raise TypeError(
                "SplittingAdjoint: `solver` must be jaxdeq.ForwardBackward, "
                "jaxdeq.PeacemanRachford or None (reuse the forward splitting), got "
                f"{self.solver!r}."
            )
        if self.rtol is not None or self.atol is not None:
            check_tolerances(
                "SplittingAdjoint",
                1.0 if self.rtol is None else self.rtol,
                0.0 if self.atol is None else self.atol,
            )
        check_positive_int("SplittingAdjoint", "max_steps", self.max_steps)

    def _solve(self, lin, v, inputs):
        _, forward_solver, _, _, options, *_ = inputs
        problem = get_problem("SplittingAdjoint", options)
        rtol = follow_rtol(forward_solver, lin.root) if self.rtol is None else self.rtol
        atol = 0.0 if self.atol is None else self.atol
        solver = self.solver
        if solver is None:
            if isinstance(forward_solver, (ForwardBackward, PeacemanRachford)):
                solver = forward_solver
            else:
                solver = PeacemanRachford(rtol=rtol, atol=atol)
        solver = dataclasses.replace(solver, rtol=rtol, atol=atol)
        v = _upcast(v)
        prox = problem.prox.linearise(problem.pre_activation(lin.root))
        if lin.transpose:
            # w = (I - W^T D)^{-1} v: u = D (W^T u + v), w = v + W^T u.
            operator = Transposed(problem.operator)  # pyright: ignore[reportCallIssue]
            bias = v
        else:
            # t = (I - D W)^{-1} v: u = D (W u + W v), t = v + u.
            operator = problem.operator
            bias = operator.mv(v)
        back = MonotoneProblem(operator, prox, bias)
        back_options: dict[str, Any] = {"problem": back}
        if isinstance(solver, PeacemanRachford):
            forward_resolvent = options.get("resolvent")
            if forward_resolvent is not None and solver.alpha == getattr(
                forward_solver, "alpha", False
            ):
                back_options["resolvent"] = (
                    _TransposedResolvent(forward_resolvent)  # pyright: ignore[reportCallIssue]
                    if lin.transpose
                    else forward_resolvent
                )
            else:
                back_options["resolvent"] = operator.resolvent(solver.step_size(back))
        sol = optx.fixed_point(
            back,
            solver,
            prox(bias, 1.0),
            None,
            back_options,
            max_steps=self.max_steps,
            adjoint=optx.RecursiveCheckpointAdjoint(),
            throw=False,
        )
        u = sol.value
        if lin.transpose:
            w = (v**ω + operator.mv(u) ** ω).ω
        else:
            w = (v**ω + u**ω).ω
        residual = lin.residual(w, v)
        success = (sol.result == optx.RESULTS.successful) & jnp.isfinite(residual)
        return w, _stats(sol.stats["num_steps"], residual, success)


SplittingAdjoint.__init__.__doc__ = r"""**Arguments:**

- `solver`: the splitting for the backward fixed point; `None` (default) reuses the
    forward solver's splitting and step size (and its factorisation), or
    Peaceman–Rachford if the forward solver was not a splitting solver.
- `rtol`, `atol`: the backward solve's tolerances (they replace the solver's).
    `None` (default): `rtol` follows the forward solve (the forward solver's `rtol`,
    at least ten machine epsilons of the state's dtype; see
    [`jaxdeq.ImplicitAdjoint`][]) and `atol` is zero.
- `max_steps`: the backward step budget.
- `throw`: raise if the backward solve fails (see [`jaxdeq.AbstractDEQAdjoint`][]).
"""
