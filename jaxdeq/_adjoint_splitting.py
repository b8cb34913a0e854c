import dataclasses

import jax.numpy as jnp
import optimistix as optx
from equinox.internal import ω

from ._adjoint import _linearise, _stats, _upcast, AbstractDEQAdjoint
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
    rtol: float = 1e-6
    atol: float = 0.0
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
        check_tolerances("SplittingAdjoint", self.rtol, self.atol)
        check_positive_int("SplittingAdjoint", "max_steps", self.max_steps)

    def _backward(self, rewrite, root, cotangent, diff, inputs):
        _, forward_solver, _, _, options, *_ = inputs
        problem = get_problem("SplittingAdjoint", options)
        solver = self.solver
        if solver is None:
            if isinstance(forward_solver, (ForwardBackward, PeacemanRachford)):
                solver = forward_solver
            else:
                solver = PeacemanRachford(rtol=self.rtol, atol=self.atol)
        solver = dataclasses.replace(solver, rtol=self.rtol, atol=self.atol)
        lin = _linearise(rewrite, root, diff)
        v = _upcast(cotangent)
        operator = Transposed(problem.operator)
        prox = problem.prox.linearise(problem.pre_activation(root))
        back = MonotoneProblem(operator, prox, v)
        back_options = {"problem": back}
        if isinstance(solver, PeacemanRachford):
            forward_resolvent = options.get("resolvent")
            if forward_resolvent is not None and solver.alpha == getattr(
                forward_solver, "alpha", False
            ):
                back_options["resolvent"] = _TransposedResolvent(forward_resolvent)
            else:
                back_options["resolvent"] = operator.resolvent(solver.step_size(back))
        sol = optx.fixed_point(
            back,
            solver,
            prox(v, 1.0),
            None,
            back_options,
            max_steps=self.max_steps,
            adjoint=optx.RecursiveCheckpointAdjoint(),
            throw=False,
        )
        u = sol.value
        w = (v**ω + operator.mv(u) ** ω).ω
        residual = lin.system_residual(w, v)
        success = (sol.result == optx.RESULTS.successful) & jnp.isfinite(residual)
        return lin.parameter_vjp(w), _stats(sol.stats["num_steps"], residual, success)


SplittingAdjoint.__init__.__doc__ = r"""**Arguments:**

- `solver`: the splitting for the backward fixed point; `None` (default) reuses the
    forward solver's splitting and step size (and its factorisation), or
    Peaceman–Rachford if the forward solver was not a splitting solver.
- `rtol`, `atol`: the backward solve's tolerances (they replace the solver's).
- `max_steps`: the backward step budget.
- `throw`: raise if the backward solve fails (see [`jaxdeq.AbstractDEQAdjoint`][]).
"""
