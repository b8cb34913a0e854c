"""jaxdeq.train.make_step on its own (no mesh), and the solve report's names from
the command line to metrics.jsonl."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxdeq
import jaxdeq.train as jtrain
from jaxdeq.cli import main


@pytest.fixture(autouse=True)
def standard_promotion():
    # Training runs as a user runs it: optax relies on standard dtype promotion.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


@dataclasses.dataclass(frozen=True)
class _Options:
    pass


class _Linear(eqx.Module):
    w: jax.Array
    name: str = "toy"  # a non-array field: static in the step


# What a solve's backward pass reports through the probe, per example.
_BACKWARD = {"num_steps": 3.0, "rel_residual": 1e-6, "success": 1.0}


def _loss(model, batch, key, probe=None):
    del key
    value = jnp.mean((batch["x"] @ model.w - batch["y"]) ** 2)
    if probe is not None:
        # A stand-in for a solve's backward pass, which writes its statistics
        # into the probe's cotangent: zero in value, `_BACKWARD` in gradient.
        value = value + sum(
            jnp.sum(getattr(probe, name) * stat) for name, stat in _BACKWARD.items()
        )
    return value, {"w_sum": jnp.sum(model.w)}


def _data(options):
    del options
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    return {"x": x, "y": x @ np.array([1.0, -2.0, 0.5], np.float32)}, {}


TOY = jtrain.Recipe(
    name="toy",
    description="linear regression",
    options=_Options,
    init=lambda key, options: _Linear(jr.normal(key, (3,), jnp.float32)),
    data=_data,
    loss=_loss,
    backward_stats=True,
)
_REPORT_NAMES = {"num_steps", "num_fn_evals", "abs_residual", "rel_residual"}


@pytest.mark.unchecked
def test_make_step_without_a_mesh():
    model = TOY.init(jr.PRNGKey(0), _Options())
    batch = {k: jnp.asarray(v) for k, v in _data(None)[0].items()}
    optimiser = optax.sgd(0.1)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_inexact_array))
    step = jtrain.make_step(TOY, optimiser, reduce_factor=0.5)
    one = jnp.ones((), jnp.float32)
    key = jr.PRNGKey(1)
    new, _, lr_scale, finite, metrics = step(model, opt_state, one, batch, key)

    # One SGD step on the loss's own gradient, the static field untouched.
    (loss, _), grads = eqx.filter_value_and_grad(_loss, has_aux=True)(model, batch, key)
    np.testing.assert_allclose(new.w, model.w - 0.1 * grads.w, rtol=1e-6)
    assert new.name == "toy" and bool(finite) and float(lr_scale) == 1.0
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], jnp.linalg.norm(grads.w))
    # The backward statistics arrive as the probe's gradient, under the names of
    # jaxdeq.BackwardStats' fields.
    backward = {f"backward_{f.name}" for f in dataclasses.fields(jaxdeq.BackwardStats)}
    assert set(metrics) == {"loss", "grad_norm", "w_sum"} | backward
    for name, stat in _BACKWARD.items():
        np.testing.assert_allclose(metrics[f"backward_{name}"], stat, rtol=1e-6)

    # Two micro-batches: the mean of their gradients, i.e. the same step.
    halves = jtrain.make_step(TOY, optimiser, accumulate=2)
    again, *_ = halves(model, opt_state, one, batch, key)
    np.testing.assert_allclose(again.w, new.w, rtol=1e-5)

    # A non-finite batch is not applied, and the learning rate is halved.
    bad = {**batch, "y": batch["y"].at[0].set(jnp.nan)}
    same, _, lr_scale, finite, _ = step(model, opt_state, one, bad, key)
    assert not bool(finite) and float(lr_scale) == 0.5
    np.testing.assert_array_equal(same.w, model.w)

    # bfloat16 compute, float32 parameters.
    half = jtrain.make_step(TOY, optimiser, "bfloat16")
    low, *_, metrics = half(model, opt_state, one, batch, key)
    assert low.w.dtype == jnp.float32 and metrics["loss"].dtype == jnp.float32

    with pytest.raises(ValueError, match="precision"):
        jtrain.make_step(TOY, optimiser, "float16")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="accumulate"):
        jtrain.make_step(TOY, optimiser, accumulate=0)


@pytest.mark.slow
def test_train_deq_digits_logs_the_solve_reports_names(tmp_path, capsys):
    argv = ["train", "deq-digits", "--steps", "5", "--hidden", "8", "--log-every"]
    argv += ["1", "--eval-every", "5", "--run-dir", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    # The names of jaxdeq.Report's fields (the per-step trace and the family's
    # extras aside; `successful` is the report's own property of `result`) and of
    # jaxdeq.BackwardStats' fields, unchanged on the way.
    report = {f.name for f in dataclasses.fields(jaxdeq.Report)}
    report = report - {"result", "residual_trace", "extra"} | {"successful"}
    assert report == _REPORT_NAMES | {"successful"}
    backward = {f"backward_{f.name}" for f in dataclasses.fields(jaxdeq.BackwardStats)}
    own = {"step", "time", "loss", "grad_norm", "accuracy"}
    for record in records[:-1]:
        assert set(record) == own | report | backward
    evaluated = {f"eval_{name}" for name in report | {"accuracy"}}
    assert set(records[-1]) == own | report | backward | evaluated
    assert all(r["successful"] == 1.0 and r["backward_success"] == 1.0 for r in records)
    out = capsys.readouterr().out
    assert "num_steps" in out and "backward_rel_residual" in out
