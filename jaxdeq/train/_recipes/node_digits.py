"""The `node-digits` recipe: a neural ODE classifier."""

import dataclasses
import functools

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr

from ...ode import ConcatField, NeuralODE
from .._config import check_options, Recipe
from ._classifier import Classifier, classifier_evaluate, classifier_loss, digits_data


# A fixed-horizon ODE solve has no residual (NaN in its report): not logged.
_MEASURED = ("num_steps", "num_fn_evals", "successful")


@dataclasses.dataclass(frozen=True)
class NODEDigitsOptions:
    """Options of the `node-digits` recipe.

    **Fields:**

    - `hidden`: the ODE state's size.
    - `width`: hidden width of the vector field's MLP (two layers, tanh).
    - `tol`: the adaptive step-size controller's tolerance (relative and absolute).
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 32
    width: int = 64
    tol: float = 1e-3
    test_fraction: float = 0.2

    def __post_init__(self):
        check_options(
            self,
            ints=(("hidden", 1), ("width", 1)),
            positive=("tol",),
            fractions=("test_fraction",),
        )


def _init(key, options: NODEDigitsOptions) -> Classifier:
    ekey, fkey, hkey = jr.split(key, 3)
    f32 = jnp.float32
    h = options.hidden
    # The ODE is always solved in float32 (under --precision bfloat16 too, whose
    # step-size control would stall on rounding noise).
    return Classifier(
        eqx.nn.Linear(64, h, dtype=f32, key=ekey),
        NeuralODE(
            ConcatField(h, 0, options.width, dtype=f32, key=fkey),
            solver=diffrax.Dopri5(),
            stepsize_controller=diffrax.PIDController(
                rtol=options.tol, atol=options.tol
            ),
        ),
        eqx.nn.Linear(h, 10, dtype=f32, key=hkey),
        layer_float32=True,
    )


NODE_DIGITS = Recipe(
    name="node-digits",
    description=(
        "A neural ODE classifier (linear encoder, MLP vector field on [0, 1] solved "
        "by diffrax Dopri5 with adaptive steps and backpropagated with recursive "
        "checkpointing, linear head) on the 8x8 digits bundled with scikit-learn."
    ),
    options=NODEDigitsOptions,
    init=_init,
    data=digits_data,
    loss=functools.partial(classifier_loss, names=_MEASURED),
    evaluate=functools.partial(classifier_evaluate, names=_MEASURED),
)
