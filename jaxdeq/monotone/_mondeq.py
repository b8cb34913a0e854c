from collections.abc import Callable
from typing import Any

import equinox as eqx
import optimistix as optx
from jaxtyping import Array, PyTree

from .._adjoint_splitting import SplittingAdjoint
from .._misc import check_positive_int
from .._solution import BackwardStats, deprecated_z0, Report
from .._solver._monotone_problem import (
    AbstractMonotoneLinear,
    AbstractProx,
    MonotoneProblem,
)
from .._solver.splitting import PeacemanRachford
from ._relu import ReLU
from ._solve import solve


class MonDEQ(eqx.Module):
    r"""A monotone deep equilibrium layer, $z^* = \operatorname{prox}_f(W z^* + U x)$.

    The weight $W$ is a monotone parameterisation
    ([`jaxdeq.monotone.MonotoneLinear`][], [`jaxdeq.monotone.MonotoneConv`][], …)
    with $I - W \succeq m I$, so the equilibrium exists and is unique for every input
    and every parameter value — training cannot break the layer. The forward pass is
    an operator splitting ([`jaxdeq.PeacemanRachford`][] by default), the backward
    pass the transposed splitting ([`jaxdeq.SplittingAdjoint`][]); any jaxdeq
    adjoint or fixed-point solver may be used instead. The layer is
    $\|U\|_2 / m$-Lipschitz in $x$.

    Called on one sample; `vmap` over a batch (the resolvent is factorised once and
    shared by the batch).

    !!! Example

        ```python
        k1, k2 = jax.random.split(key)
        layer = jaxdeq.monotone.MonDEQ(
            jaxdeq.monotone.MonotoneLinear(64, margin=1.0, key=k1),
            eqx.nn.Linear(64, 64, key=k2),
        )
        z, sol = jax.vmap(layer)(x)   # x: (batch, 64)
        ```

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

    operator: AbstractMonotoneLinear
    injection: Callable
    prox: AbstractProx = ReLU()
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = PeacemanRachford(
        rtol=1e-4, atol=1e-6
    )
    adjoint: optx.AbstractAdjoint = SplittingAdjoint()
    max_steps: int = eqx.field(static=True, default=100)
    throw: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.operator, AbstractMonotoneLinear):
            raise TypeError(
                "MonDEQ: `operator` must be a jaxdeq.monotone.AbstractMonotoneLinear "
                "(e.g. jaxdeq.monotone.MonotoneLinear(n, margin=0.5, key=key)), got "
                f"{type(self.operator).__name__}."
            )
        if not isinstance(self.prox, AbstractProx):
            raise TypeError(
                "MonDEQ: `prox` must be a jaxdeq.monotone.AbstractProx (e.g. "
                f"jaxdeq.monotone.ReLU()), got {type(self.prox).__name__}."
            )
        if not callable(self.injection):
            raise TypeError("MonDEQ: `injection` must be callable as `injection(x)`.")
        check_positive_int("MonDEQ", "max_steps", self.max_steps)

    def problem(self, x: PyTree[Array]) -> MonotoneProblem:
        """The monotone fixed-point problem of one input `x`."""
        return MonotoneProblem(self.operator, self.prox, self.injection(x))

    def __call__(
        self,
        x: PyTree[Array],
        y0: PyTree[Array] | None = None,
        *,
        backward_stats: BackwardStats | None = None,
        key: Any = None,
        z0: PyTree[Array] | None = None,
    ) -> tuple[PyTree[Array], Report]:
        """Solve for the equilibrium of one sample.

        **Arguments:**

        - `x`: the input of one sample.
        - `y0`: optional warm start (zeros by default). (`z0=` is its deprecated
            name.)
        - `backward_stats`: optional [`jaxdeq.BackwardStats`][] probe.
        - `key`: unused; accepted for compatibility with `eqx.nn.Sequential`.

        **Returns:**

        `(z_star, report)`, as for [`jaxdeq.DEQ`][]; for the splitting solvers the
        step size used is in `report.extra["alpha"]`.
        """
        del key
        y0 = deprecated_z0("MonDEQ", y0, z0)
        sol = solve(
            self.problem(x),
            self.solver,
            y0,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            throw=self.throw,
            backward_stats=backward_stats,
        )
        extra = {}
        if hasattr(sol.state, "alpha"):
            extra["alpha"] = sol.state.alpha
        return sol.value, Report.from_solution(sol, **extra)


MonDEQ.__init__.__doc__ = r"""**Arguments:**

- `operator`: the monotone weight $W$, an
    [`jaxdeq.monotone.AbstractMonotoneLinear`][].
- `injection`: $x \mapsto U x + b$, any callable returning a state-shaped array
    (e.g. `equinox.nn.Linear`, `equinox.nn.Conv2d`).
- `prox`: the activation (default [`jaxdeq.monotone.ReLU`][]).
- `solver`: the forward solver (default `jaxdeq.PeacemanRachford(rtol=1e-4,
    atol=1e-6)` with its step size chosen from the operator).
- `adjoint`: the backward mode (default [`jaxdeq.SplittingAdjoint`][]).
- `max_steps`: the forward step budget.
- `throw`: whether a failed solve raises (default `False`: reported per sample).
"""
