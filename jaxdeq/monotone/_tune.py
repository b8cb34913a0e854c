import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .._solution import RESULTS
from .._solver.splitting import (
    forward_backward_bound,
    ForwardBackward,
    PeacemanRachford,
)
from ._dbm import MonotoneDBM
from ._mondeq import MonDEQ


def tune_step_size(
    model: MonDEQ | MonotoneDBM,
    *inputs: PyTree[Array],
    factors: tuple[float, ...] = (0.5, 1.0, 2.0),
) -> tuple[MonDEQ | MonotoneDBM, dict[str, Any]]:
    r"""Pick the splitting step size that needs the fewest iterations on a batch.

    The convergence speed of Peaceman–Rachford depends on $\alpha$ and the best
    value drifts as the weights train; Winston & Kolter halve or double it during
    training. This tries $\alpha \cdot$ `factors` around the model's current step
    (its solver's `alpha`, or the one chosen from the operator when `alpha=None`) on
    the batch `inputs` and returns the model with the best one fixed. For
    forward–backward the candidates are capped at the convergent bound $2m/L^2$.
    Runs eagerly (outside `jit`); call it every few hundred training steps. A new
    $\alpha$ is a new static value, so the next training step compiles once.

    **Arguments:**

    - `model`: a [`jaxdeq.monotone.MonDEQ`][] or [`jaxdeq.monotone.MonotoneDBM`][]
        (anything with a `solver` field, a `problem(*sample)` method and a per-sample
        `__call__` returning `(value, report)` with a [`jaxdeq.Report`][]).
    - `inputs`: a batch of inputs, as passed to `jax.vmap(model)`.
    - `factors`: the multipliers of the current step to try.

    **Returns:**

    `(model, report)`: the model with `solver.alpha` set to the best candidate, and
    `{"alpha": best, "mean_steps": {alpha: mean steps, ...}}` (a failed solve
    counts as `max_steps`).

    **Raises:**

    `TypeError` if the model's solver is not a splitting solver.
    """
    solver = model.solver
    if not isinstance(solver, (ForwardBackward, PeacemanRachford)):
        raise TypeError(
            "tune_step_size: the model's solver must be jaxdeq.PeacemanRachford or "
            f"jaxdeq.ForwardBackward, got {type(solver).__name__}."
        )
    first = jax.tree.map(lambda x: x[0], inputs)
    problem = model.problem(*first)
    if isinstance(solver, PeacemanRachford):
        base = float(solver.step_size(problem))
        cap = np.inf
    else:
        cap = float(forward_backward_bound(problem))
        base = cap / 2 if solver.alpha is None else solver.alpha
    report: dict[float, float] = {}
    for factor in factors:
        alpha = min(base * factor, cap)
        candidate = eqx.tree_at(
            lambda m: m.solver, model, dataclasses.replace(solver, alpha=alpha)
        )
        _, solve_report = eqx.filter_jit(jax.vmap(candidate))(*inputs)
        ok = solve_report.result == RESULTS.successful
        steps = jnp.where(ok, solve_report.num_steps, model.max_steps)
        report[alpha] = float(jnp.mean(steps))
    best = min(report, key=report.__getitem__)
    tuned = eqx.tree_at(
        lambda m: m.solver, model, dataclasses.replace(solver, alpha=best)
    )
    return tuned, {"alpha": best, "mean_steps": report}
