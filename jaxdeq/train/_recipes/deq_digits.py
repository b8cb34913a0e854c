"""The `deq-digits` recipe: a deep equilibrium classifier on the digits."""

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optimistix as optx

from ..._adjoint import (
    ImplicitAdjoint,
    JacobianFreeAdjoint,
    NeumannAdjoint,
    PhantomAdjoint,
)
from ..._deq import DEQ
from ..._solver.anderson import Anderson
from ..._solver.broyden import Broyden
from .._config import check_options, Recipe
from ._classifier import Classifier, classifier_evaluate, classifier_loss, digits_data


SOLVERS = ("anderson", "broyden", "picard")
ADJOINTS = ("implicit", "phantom", "jfb", "neumann")


@dataclasses.dataclass(frozen=True)
class DEQDigitsOptions:
    """Options of the `deq-digits` recipe.

    **Fields:**

    - `hidden`: width of the equilibrium state.
    - `solver`: the forward solver, `"anderson"` ([`jaxdeq.Anderson`][]),
        `"broyden"` ([`jaxdeq.Broyden`][]) or `"picard"`
        (`optimistix.FixedPointIteration`).
    - `adjoint`: the backward mode, `"implicit"` ([`jaxdeq.ImplicitAdjoint`][]
        solving the adjoint system by Anderson to a tenth of `tol`), `"phantom"`
        ([`jaxdeq.PhantomAdjoint`][]), `"jfb"` ([`jaxdeq.JacobianFreeAdjoint`][])
        or `"neumann"` ([`jaxdeq.NeumannAdjoint`][]).
    - `tol`: the forward solve's relative tolerance (its absolute tolerance is a
        hundredth of it).
    - `max_solver_steps`: the forward solver's step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 64
    solver: Literal["anderson", "broyden", "picard"] = "anderson"
    adjoint: Literal["implicit", "phantom", "jfb", "neumann"] = "implicit"
    tol: float = 1e-4
    max_solver_steps: int = 50
    test_fraction: float = 0.2

    def __post_init__(self):
        check_options(
            self,
            ints=(("hidden", 1), ("max_solver_steps", 1)),
            positive=("tol",),
            fractions=("test_fraction",),
            choices=(("solver", SOLVERS), ("adjoint", ADJOINTS)),
        )


class _Cell(eqx.Module):
    """`z -> tanh(W z + U u + b)`, the equilibrium map."""

    weight: jax.Array
    injection: eqx.nn.Linear

    def __init__(self, hidden, key):
        wkey, ukey = jr.split(key)
        # Well inside the contractive regime (spectral norm about 0.3) at the
        # start, so the first solves are short; training may grow W.
        bound = 1.0 / hidden**0.5
        self.weight = 0.25 * jr.uniform(
            wkey, (hidden, hidden), jnp.float32, -bound, bound
        )
        self.injection = eqx.nn.Linear(hidden, hidden, dtype=jnp.float32, key=ukey)

    def __call__(self, z, u):
        return jnp.tanh(self.weight.astype(z.dtype) @ z + self.injection(u))


def _max_norm(tree):
    # optimistix.FixedPointIteration starts its error at `jnp.array(inf)`, of the
    # default float dtype; match it so that a float32 state also works when
    # `jax_enable_x64` is on.
    return optx.max_norm(tree).astype(jnp.asarray(jnp.inf).dtype)


def _solver(options: DEQDigitsOptions):
    rtol, atol = options.tol, 1e-2 * options.tol
    if options.solver == "anderson":
        return Anderson(rtol=rtol, atol=atol)
    if options.solver == "broyden":
        return Broyden(rtol=rtol, atol=atol)
    return optx.FixedPointIteration(rtol=rtol, atol=atol, norm=_max_norm)


def _adjoint(options: DEQDigitsOptions):
    if options.adjoint == "implicit":
        # The adjoint system solved by Anderson to a tenth of the forward
        # tolerance, relative only (the cotangents of a mean loss are tiny).
        return ImplicitAdjoint(linear_solver=Anderson(rtol=0.1 * options.tol, atol=0.0))
    if options.adjoint == "phantom":
        return PhantomAdjoint(steps=5, damping=0.5)
    if options.adjoint == "jfb":
        return JacobianFreeAdjoint(monitor=True)
    return NeumannAdjoint(terms=5, monitor=True)


def _init(key, options: DEQDigitsOptions) -> Classifier:
    ekey, ckey, hkey = jr.split(key, 3)
    h = options.hidden
    # float32 throughout, also where float64 is enabled.
    return Classifier(
        eqx.nn.Linear(64, h, dtype=jnp.float32, key=ekey),
        DEQ(
            _Cell(h, ckey),
            jnp.zeros(h, jnp.float32),
            solver=_solver(options),
            adjoint=_adjoint(options),
            max_steps=options.max_solver_steps,
        ),
        eqx.nn.Linear(h, 10, dtype=jnp.float32, key=hkey),
    )


DEQ_DIGITS = Recipe(
    name="deq-digits",
    description=(
        "A deep equilibrium classifier (linear encoder, tanh cell solved by "
        "Anderson, Broyden or Picard, implicit or approximate gradients, linear "
        "head) on the 8x8 handwritten digits bundled with scikit-learn (1437 "
        "training and 360 held-out images, no download)."
    ),
    options=DEQDigitsOptions,
    init=_init,
    data=digits_data,
    loss=classifier_loss,
    evaluate=classifier_evaluate,
    backward_stats=True,
)
