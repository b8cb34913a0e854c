"""The `monotone-digits` recipe: a monotone deep equilibrium classifier."""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from ..._solver.splitting import PeacemanRachford
from ...monotone import MonDEQ, MonotoneLinear
from .._config import check_options, Recipe
from ._classifier import Classifier, classifier_evaluate, classifier_loss, digits_data


@dataclasses.dataclass(frozen=True)
class MonotoneDigitsOptions:
    r"""Options of the `monotone-digits` recipe.

    **Fields:**

    - `hidden`: width of the equilibrium state.
    - `margin`: the monotonicity margin $m$ of the weight ($I - W \succeq m I$).
    - `tol`: the splitting solver's tolerance (relative and absolute).
    - `max_solver_steps`: its step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 64
    margin: float = 0.5
    tol: float = 1e-4
    max_solver_steps: int = 100
    test_fraction: float = 0.2

    def __post_init__(self):
        check_options(
            self,
            ints=(("hidden", 1), ("max_solver_steps", 1)),
            positive=("margin", "tol"),
            fractions=("test_fraction",),
        )


def _init(key, options: MonotoneDigitsOptions) -> Classifier:
    okey, ikey, hkey = jr.split(key, 3)
    f32 = jnp.float32
    h = options.hidden
    # The injection is the monotone layer's own: no encoder. The resolvent is a
    # dense factorisation, which LAPACK has no bfloat16 for: the equilibrium is
    # always solved in float32, the head computes in the run's precision.
    return Classifier(
        eqx.nn.Identity(),
        MonDEQ(
            MonotoneLinear(h, options.margin, key=okey, dtype=f32),
            eqx.nn.Linear(64, h, dtype=f32, key=ikey),
            solver=PeacemanRachford(rtol=options.tol, atol=options.tol),
            max_steps=options.max_solver_steps,
        ),
        eqx.nn.Linear(h, 10, dtype=f32, key=hkey),
        layer_float32=True,
    )


MONOTONE_DIGITS = Recipe(
    name="monotone-digits",
    description=(
        "A monotone deep equilibrium classifier (dense monotone weight with a "
        "guaranteed unique fixed point, ReLU, Peaceman-Rachford splitting forward, "
        "transposed splitting backward) on the 8x8 digits bundled with scikit-learn."
    ),
    options=MonotoneDigitsOptions,
    init=_init,
    data=digits_data,
    loss=classifier_loss,
    evaluate=classifier_evaluate,
    backward_stats=True,
)
