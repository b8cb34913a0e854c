"""What the recipes share: a classifier around any jaxdeq layer, its loss and
evaluation, solve reports as metrics, and the precision policies."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, Int

from ..._adjoint import ImplicitAdjoint
from ..._solution import Report
from ...data import load_digits


# The solve report's statistics that are logged, under the report's own names.
REPORT_METRICS = ("num_steps", "num_fn_evals", "abs_residual", "rel_residual")
_BFLOAT16_TOL = 1e-2


def report_metrics(
    report: Report, names: tuple[str, ...] = REPORT_METRICS + ("successful",)
) -> dict[str, Array]:
    """A batch of solve reports as training metrics, under the report's own names.

    Every field named is averaged over the batch, in float32: `num_steps`,
    `num_fn_evals`, `abs_residual`, `rel_residual` (the fields of
    [`jaxdeq.Report`][]) and `successful` (the fraction of examples whose `result`
    is `jaxdeq.RESULTS.successful`). The per-step `residual_trace` and the
    family's `extra` values are not included.

    **Arguments:**

    - `report`: a [`jaxdeq.Report`][] with a batch axis (from a `vmap`-ed layer).
    - `names`: which of the above to include, e.g. without the residuals of a
        family that does not measure them (NaN in its report).

    **Returns:**

    A dict of float32 scalars.
    """
    return {name: jnp.mean(getattr(report, name).astype(jnp.float32)) for name in names}


def loosened(obj):
    """A solver or adjoint asking for what bfloat16 can resolve.

    bfloat16 has about three significant digits, so relative residuals below about
    1e-2 are rounding noise: `rtol` is raised to at least 1e-2 (in a nested linear
    solver too) instead of letting the solves run to their step limits. `atol` is
    kept: it is in the units of the problem, and raising it would stop a solve
    whose vectors are small (the backward solve of a mean loss) after one step.
    """
    if isinstance(obj, ImplicitAdjoint):
        if obj.linear_solver is None:  # follows the (loosened) forward solver
            return obj
        return eqx.tree_at(lambda a: a.linear_solver, obj, loosened(obj.linear_solver))
    if not hasattr(obj, "rtol"):
        return obj
    return eqx.tree_at(lambda o: o.rtol, obj, max(float(obj.rtol), _BFLOAT16_TOL))


def float32(tree):
    """`tree` with its floating-point arrays in float32: for the solves that run in
    float32 whatever the run's precision (dense factorisations, step-size control,
    EP's differences of small quantities)."""
    return jax.tree.map(
        lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, tree
    )


class Classifier(eqx.Module):
    """`x -> encoder -> layer -> head`: a classifier around any jaxdeq layer, the
    model of the digits recipes.

    **Fields:**

    - `encoder`: a callable Module, e.g. `equinox.nn.Linear`, or
        `equinox.nn.Identity` for a layer with its own input injection.
    - `layer`: any jaxdeq layer called on one sample, `layer(u) -> (z, report)`
        with a [`jaxdeq.Report`][] (and `backward_stats=` when the recipe asks for
        backward statistics): [`jaxdeq.DEQ`][], [`jaxdeq.monotone.MonDEQ`][],
        [`jaxdeq.ode.NeuralODE`][], ...
    - `head`: an `equinox.nn.Linear` from the layer's output to the logits.
    - `layer_float32`: solve the layer in float32 also when the run computes in
        bfloat16 (a dense factorisation has no bfloat16 kernel; an adaptive
        step-size control stalls on rounding noise). Otherwise, in bfloat16, the
        layer's `solver` and `adjoint` tolerances are raised to 1e-2, what
        bfloat16's three significant digits can resolve.
    """

    encoder: Callable
    layer: Callable[..., tuple[Any, Report]]
    head: eqx.nn.Linear
    layer_float32: bool = eqx.field(static=True, default=False)

    def __call__(self, x, backward_stats=None) -> tuple[Array, Report]:
        """The logits and the layer's solve report for one sample (`backward_stats`:
        an optional [`jaxdeq.BackwardStats`][] probe for the backward solve)."""
        u = self.encoder(x)
        layer = self.layer
        if self.layer_float32:
            layer, u = float32(layer), u.astype(jnp.float32)
        elif u.dtype == jnp.bfloat16:
            names = [n for n in ("solver", "adjoint") if hasattr(layer, n)]
            layer = eqx.tree_at(
                lambda m: [getattr(m, n) for n in names],
                layer,
                [loosened(getattr(layer, n)) for n in names],
            )
        extra = {} if backward_stats is None else {"backward_stats": backward_stats}
        z, report = layer(u, **extra)
        return self.head(z.astype(self.head.weight.dtype)), report


def classifier_loss(
    model: Classifier,
    batch: dict[str, Array],
    key,
    backward_stats=None,
    *,
    names: tuple[str, ...] = REPORT_METRICS + ("successful",),
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Cross-entropy of a [`jaxdeq.train.Classifier`][] on `batch["x"]`,
    `batch["y"]`, with the accuracy and [`jaxdeq.train.report_metrics`][] of its
    solves (`names` of them)."""
    del key
    logits, report = jax.vmap(model)(batch["x"], backward_stats)
    loss = jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), batch["y"]
        )
    )
    metrics = report_metrics(report, names)
    metrics["accuracy"] = _accuracy(logits, batch["y"])
    return loss, metrics


def classifier_evaluate(
    model: Callable[[Array], tuple[Array, Report]],
    data: dict,
    *,
    names: tuple[str, ...] = REPORT_METRICS + ("successful",),
) -> dict[str, Array]:
    """Accuracy and [`jaxdeq.train.report_metrics`][] (`names` of them) of a
    classifier on all of `data`: a [`jaxdeq.train.Classifier`][] or any model that
    maps one example to `(logits, report)`."""
    logits, report = jax.vmap(model)(jnp.asarray(data["x"]))
    metrics = report_metrics(report, names)
    metrics["accuracy"] = _accuracy(logits, jnp.asarray(data["y"]))
    return metrics


def _accuracy(logits, labels: Int[Array, " batch"]) -> Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


def digits_data(options):
    """The scikit-learn digits as `({"x", "y"}, {"x", "y"})`, `options.test_fraction`
    of them held out (always the same split)."""
    x, y, xt, yt = load_digits(test_fraction=options.test_fraction, seed=0)
    return {"x": x, "y": y}, {"x": xt, "y": yt}
