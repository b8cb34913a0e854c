import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from .._deq import DEQ
from .._results import RESULTS
from .._solver.anderson import Anderson
from ..data import load_digits
from ._loop import Recipe


@dataclasses.dataclass(frozen=True)
class DEQDigitsOptions:
    """Options of the `deq-digits` recipe.

    **Fields:**

    - `hidden`: width of the equilibrium state.
    - `tol`: forward solver tolerance (relative and absolute).
    - `max_solver_steps`: the forward solver's step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 64
    tol: float = 1e-4
    max_solver_steps: int = 50
    test_fraction: float = 0.2


class _Cell(eqx.Module):
    weight: jax.Array
    injection: eqx.nn.Linear

    def __init__(self, hidden, key):
        wkey, ukey = jr.split(key)
        # Spectral norm about 0.3 at the start: short first solves.
        self.weight = (
            0.25
            * jr.normal(wkey, (hidden, hidden), jnp.float32)
            / np.sqrt(hidden).astype(np.float32)
        )
        self.injection = eqx.nn.Linear(hidden, hidden, dtype=jnp.float32, key=ukey)

    def __call__(self, z, u):
        return jnp.tanh(self.weight.astype(z.dtype) @ z + self.injection(u))


class DEQDigitsClassifier(eqx.Module):
    """x (64 pixels) -> linear encoder -> DEQ tanh cell (Anderson, implicit
    gradients) -> linear head (10 classes): the `deq-digits` recipe's model."""

    encoder: eqx.nn.Linear
    deq: DEQ
    head: eqx.nn.Linear

    def __init__(self, options: DEQDigitsOptions, key):
        ekey, ckey, hkey = jr.split(key, 3)
        h = options.hidden
        # float32 throughout, also where float64 is enabled.
        self.encoder = eqx.nn.Linear(64, h, dtype=jnp.float32, key=ekey)
        self.deq = DEQ(
            _Cell(h, ckey),
            jnp.zeros(h, jnp.float32),
            solver=Anderson(rtol=options.tol, atol=options.tol),
            max_steps=options.max_solver_steps,
        )
        self.head = eqx.nn.Linear(h, 10, dtype=jnp.float32, key=hkey)

    def __call__(self, x):
        """Logits and solver statistics for one image."""
        z, sol = self.deq(self.encoder(x))
        stats = {
            "solver_steps": sol.stats["num_steps"].astype(jnp.float32),
            "residual": sol.stats["rel_residual"].astype(jnp.float32),
            "failed": (sol.result != RESULTS.successful).astype(jnp.float32),
        }
        return self.head(z), stats


def _deq_loss(model, batch, key):
    del key
    logits, stats = jax.vmap(model)(batch["x"])
    loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["y"]
        )
    )
    metrics = {k: jnp.mean(v) for k, v in stats.items()}
    metrics["accuracy"] = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
    return loss, metrics


def _deq_evaluate(model, data):
    logits, stats = jax.vmap(model)(jnp.asarray(data["x"]))
    return {
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(data["y"])),
        "solver_steps": jnp.mean(stats["solver_steps"]),
    }


def _deq_data(options):
    x, y, xt, yt = load_digits(test_fraction=options.test_fraction, seed=0)
    return {"x": x, "y": y}, {"x": xt, "y": yt}


DEQ_DIGITS = Recipe(
    name="deq-digits",
    description=(
        "A deep equilibrium classifier (tanh cell, Anderson forward solve, implicit "
        "gradients) on the 8x8 handwritten digits bundled with scikit-learn "
        "(1437 training and 360 held-out images, no download)."
    ),
    options=DEQDigitsOptions,
    init=lambda key, options: DEQDigitsClassifier(options, key),
    data=_deq_data,
    loss=_deq_loss,
    evaluate=_deq_evaluate,
)

RECIPES = {DEQ_DIGITS.name: DEQ_DIGITS}
