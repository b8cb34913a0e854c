"""One training step: loss, gradient, backward statistics, optimiser update."""

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array

from .._solution import BackwardStats
from ._config import Recipe


def make_step(
    recipe: Recipe,
    optimiser: optax.GradientTransformation,
    precision: Literal["float32", "bfloat16"] = "float32",
    *,
    accumulate: int = 1,
    reduce_factor: float | None = None,
) -> Callable[..., tuple[eqx.Module, Any, Array, Array, dict[str, Array]]]:
    """The jitted training step of `recipe`, on one device or any mesh.

    The returned `step(model, opt_state, lr_scale, batch, key)` computes the
    recipe's loss and its gradient (the mean over `accumulate` micro-batches of
    `batch`, the `i`-th with key `fold_in(key, i)`), applies `optimiser` with its
    update multiplied by `lr_scale`, and returns `(model, opt_state, lr_scale,
    finite, metrics)`. A step whose loss, gradient, parameters or optimiser state
    would not be finite is not applied (`finite` is `False`, the model and state
    come back unchanged) and, with `reduce_factor`, multiplies `lr_scale` by it.

    `metrics` holds the recipe's metrics, `loss`, `grad_norm` and, for a recipe
    with `backward_stats`, the backward solves' statistics named after the fields
    of [`jaxdeq.BackwardStats`][] with a `backward_` prefix.

    **Arguments:**

    - `recipe`: a [`jaxdeq.train.Recipe`][].
    - `optimiser`: an `optax.GradientTransformation`, initialised on
        `eqx.filter(model, eqx.is_inexact_array)`.
    - `precision`: `"float32"`, or `"bfloat16"` to compute the loss in bfloat16;
        the parameters, optimiser state, loss and gradient stay float32.
    - `accumulate`: micro-batches per step (gradient accumulation); the batch size
        must be a multiple of it.
    - `reduce_factor`: in (0, 1), or `None` to leave `lr_scale` unchanged.

    **Returns:**

    The step function, wrapped in `equinox.filter_jit`.
    """
    if precision not in ("float32", "bfloat16"):
        raise ValueError(
            "make_step: `precision` must be 'float32' or 'bfloat16', got "
            f"{precision!r}."
        )
    if (
        isinstance(accumulate, bool)
        or not isinstance(accumulate, int)
        or accumulate < 1
    ):
        raise ValueError(
            f"make_step: `accumulate` must be an int >= 1, got {accumulate!r}."
        )
    if reduce_factor is not None and not 0 < reduce_factor < 1:
        raise ValueError(
            "make_step: `reduce_factor` must lie in (0, 1) or be None, got "
            f"{reduce_factor!r}."
        )
    compute = jnp.bfloat16 if precision == "bfloat16" else None

    def loss(params, static, batch, key, *probe):
        if compute is not None:
            params, batch = _cast((params, batch), compute)
        value, metrics = recipe.loss(eqx.combine(params, static), batch, key, *probe)
        return value.astype(jnp.float32), metrics

    def gradient(params, static, batch, key):
        if not recipe.backward_stats:
            (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(
                params, static, batch, key
            )
            return grads, value, metrics
        # The backward solves' statistics arrive as the gradient of a zero probe.
        probe = BackwardStats.probe((jax.tree.leaves(batch)[0].shape[0],))
        (value, metrics), (grads, stats) = jax.value_and_grad(
            loss, argnums=(0, 4), has_aux=True
        )(params, static, batch, key, probe)
        return grads, value, {**metrics, **_backward_metrics(stats)}

    @eqx.filter_jit
    def step(model, opt_state, lr_scale, batch, key):
        params, static = eqx.partition(model, eqx.is_inexact_array)
        if accumulate == 1:
            grads, value, metrics = gradient(params, static, batch, key)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape((accumulate, -1) + x.shape[1:]), batch
            )

            def body(total, inputs):
                i, part = inputs
                out = gradient(params, static, part, jr.fold_in(key, i))
                return jax.tree.map(jnp.add, total, out), None

            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(
                lambda part, k: gradient(params, static, part, k), first, key
            )
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
            (grads, value, metrics), _ = jax.lax.scan(
                body, zeros, (jnp.arange(accumulate), micro)
            )
        scale = 1.0 / accumulate
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, new_state = optimiser.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        new_params = eqx.apply_updates(params, updates)
        # Checked here, in the step: a non-finite loss, gradient or result is never
        # applied, whatever the policy; the caller decides what happens next.
        finite = _all_finite((value, grads, new_params, new_state))
        params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_params, params)
        opt_state = jax.tree.map(
            lambda n, o: jnp.where(finite, n, o), new_state, opt_state
        )
        if reduce_factor is not None:
            lr_scale = jnp.where(finite, lr_scale, lr_scale * reduce_factor)
        metrics = jax.tree.map(lambda m: m * scale, metrics)
        metrics["loss"] = value * scale
        metrics["grad_norm"] = optax.tree.norm(grads)
        return eqx.combine(params, static), opt_state, lr_scale, finite, metrics

    return step


def _backward_metrics(stats: BackwardStats) -> dict[str, Array]:
    # `BackwardStats`' own field names; NaN residuals mean "not measured".
    return {
        f"backward_{field.name}": jnp.nanmean(getattr(stats, field.name))
        for field in dataclasses.fields(stats)
    }


def _cast(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree
    )


def _all_finite(tree) -> Array:
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
