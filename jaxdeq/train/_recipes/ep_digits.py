"""The `ep-digits` recipe: a Hopfield network trained by equilibrium propagation."""

import dataclasses
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ..._solution import Report
from ..._solver.anderson import Anderson
from ...ep import ep_gradient, free_phase, LayeredNetwork
from .._config import check_options, Recipe
from ._classifier import (
    classifier_evaluate,
    digits_data,
    float32,
    REPORT_METRICS,
    report_metrics,
)


@dataclasses.dataclass(frozen=True)
class EPDigitsOptions:
    """Options of the `ep-digits` recipe.

    **Fields:**

    - `hidden`: width of the hidden layer of the 64-hidden-10 network.
    - `beta`: the nudging strength.
    - `estimator`: `"symmetric"`, `"one_sided"` or `"holomorphic"` (see
        [`jaxdeq.ep.ep_gradient`][]).
    - `num_nudges`: complex nudges of the holomorphic estimator.
    - `tol`: the relaxations' tolerance (relative; absolute 1e-2 times it).
    - `max_solver_steps`: each relaxation's step budget.
    - `test_fraction`: digits held out for evaluation.
    """

    hidden: int = 128
    beta: float = 0.2
    estimator: Literal["one_sided", "symmetric", "holomorphic"] = "symmetric"
    num_nudges: int = 4
    tol: float = 1e-5
    max_solver_steps: int = 100
    test_fraction: float = 0.2

    def __post_init__(self):
        check_options(
            self,
            ints=(("hidden", 1), ("num_nudges", 1), ("max_solver_steps", 1)),
            positive=("beta", "tol"),
            fractions=("test_fraction",),
            choices=(("estimator", ("symmetric", "one_sided", "holomorphic")),),
        )


class EPDigitsClassifier(eqx.Module):
    """A layered continuous Hopfield network 64-hidden-10 (sigmoid units, symmetric
    weights: an energy-based model) trained by equilibrium propagation: the
    `ep-digits` recipe's model. Its prediction is the output layer at the free
    fixed point; the training gradient is the EP estimate from nudged relaxations
    towards the one-hot target (squared error), not backpropagation. The
    relaxations run in float32 also under `--precision bfloat16` (the EP estimate
    is a difference of small quantities)."""

    network: Any
    beta: float = eqx.field(static=True)
    estimator: Literal["one_sided", "symmetric", "holomorphic"] = eqx.field(static=True)
    num_nudges: int = eqx.field(static=True)
    tol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __init__(self, options: EPDigitsOptions, key):
        estimators = ("symmetric", "one_sided", "holomorphic")
        if options.estimator not in estimators:
            raise ValueError(
                f"ep-digits: `estimator` must be one of {estimators}, got "
                f"{options.estimator!r}."
            )
        if not options.beta > 0:
            raise ValueError(f"ep-digits: `beta` must be > 0, got {options.beta}.")
        self.network = LayeredNetwork(
            (64, options.hidden, 10), symmetric=True, dtype=jnp.float32, key=key
        )
        self.beta = float(options.beta)
        self.estimator = options.estimator
        self.num_nudges = int(options.num_nudges)
        self.tol = float(options.tol)
        self.max_steps = int(options.max_solver_steps)

    def _solver(self):
        return Anderson(rtol=self.tol, atol=1e-2 * self.tol)

    def __call__(self, x) -> tuple[Array, Report]:
        """The output layer at the free fixed point, and the relaxation's solve
        report, for one image."""
        network = float32(self.network)
        sol = free_phase(
            network,
            x.astype(jnp.float32),
            solver=self._solver(),
            max_steps=self.max_steps,
            throw=False,
        )
        return network.output(sol.value), Report.from_solution(sol)

    def ep_estimate(self, x, target):
        """The EP gradient estimate for one image and its one-hot `target`, with the
        relaxations' report ([`jaxdeq.ep.ep_gradient`][])."""
        network = jax.tree.map(
            lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a,
            float32(self.network),
        )
        return ep_gradient(
            network,
            x.astype(jnp.float32),
            target,
            beta=self.beta,
            estimator=self.estimator,
            num_nudges=self.num_nudges,
            solver=self._solver(),
            max_steps=self.max_steps,
            throw=False,
        )


def _ep_loss(model, batch, key):
    # The loop differentiates this loss; its value is the cost at the free fixed
    # point and its gradient the batch mean of the EP estimates: <stop_gradient(g),
    # theta> - stop_gradient(<g, theta>) is zero with gradient g.
    del key
    targets = jax.nn.one_hot(batch["y"], 10, dtype=jnp.float32)
    grads, report = jax.vmap(model.ep_estimate)(batch["x"], targets)
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads)
    params = eqx.filter(model.network, eqx.is_inexact_array)
    inner = sum(
        jnp.sum(jax.lax.stop_gradient(g) * p.astype(jnp.float32))
        for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(params))
    )
    loss = jnp.mean(report.extra["loss"]) + inner - jax.lax.stop_gradient(inner)
    # The free phase's report (its result covers the nudged phases too), and the
    # nudged phases' under the report's `extra` key.
    nudged = report_metrics(report.extra["nudged"], REPORT_METRICS)
    metrics = {
        **report_metrics(report),
        **{f"nudged_{k}": v for k, v in nudged.items()},
        "accuracy": jnp.mean(jnp.argmax(report.extra["prediction"], -1) == batch["y"]),
    }
    return loss, metrics


EP_DIGITS = Recipe(
    name="ep-digits",
    description=(
        "A layered continuous Hopfield network (64-128-10, sigmoid, symmetric "
        "weights) trained by equilibrium propagation (symmetric nudges by default; "
        "the gradient comes from nudged relaxations, not backpropagation) on the 8x8 "
        "digits bundled with scikit-learn."
    ),
    options=EPDigitsOptions,
    init=lambda key, options: EPDigitsClassifier(options, key),
    data=digits_data,
    loss=_ep_loss,
    evaluate=classifier_evaluate,
)
