"""The shared battery every public layer passes (the layers are listed in
`tests/helpers.py`): one report contract, vmap = loop, no recompilation when only
data changes, gradients against central finite differences in float64, forced
failures reported per sample, and low-precision inputs."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import pytest

import jaxdeq

from .helpers import layers, slow_unless


BATCH = 4
TOL = 1e-11
_ids = [case.name for case in layers]
# The default run checks gradients and bfloat16 on the cheapest layers to compile;
# the slow stage checks every layer (each family's own module also checks its
# gradients against finite differences).
_CHEAP = {"DEQ", "MonDEQ"}
# Layers with a diffrax solve or a graph or DBM solve inside, whose programs take
# several seconds to compile.
_HEAVY_COMPILE = {"ConvergentGraphSolver", "MonotoneDBM", "NeuralODE", "HomoODE"}


def _batched(case, layer, inputs):
    return jax.vmap(lambda *xs: case.call(layer, *xs))(*inputs)


def _check_report(report, batch_shape):
    assert isinstance(report, jaxdeq.Report)
    assert report.result._enumeration is jaxdeq.RESULTS
    for name in ("num_steps", "num_fn_evals", "abs_residual", "rel_residual"):
        assert jnp.shape(getattr(report, name)) == batch_shape, name
    assert jnp.shape(report.residual_trace)[:-1] == batch_shape
    assert jnp.shape(report.successful) == batch_shape


@pytest.mark.parametrize("case", layers, ids=_ids)
def test_report_contract_and_vmap_equals_loop(case, getkey):
    layer = case.make(getkey(), jnp.float64, tol=TOL, max_steps=200, throw=False)
    inputs = case.inputs(getkey(), BATCH, jnp.float64)
    out, report = eqx.filter_jit(lambda m, xs: _batched(case, m, xs))(layer, inputs)
    _check_report(report, (BATCH,))
    assert bool(jnp.all(report.successful))
    if case.has_residual:
        # The reported residual is that of the returned value: within the test.
        assert bool(jnp.all(report.abs_residual <= TOL + TOL * 10))
    else:
        assert bool(jnp.all(jnp.isnan(report.rel_residual)))
    for i in range(BATCH):
        single = jtu.tree_map(lambda x, i=i: x[i], inputs)
        out_i, report_i = case.call(layer, *single)
        _check_report(report_i, ())
        for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(out_i)):
            np.testing.assert_allclose(a[i], b, rtol=1e-9, atol=1e-12)
        assert int(report.num_steps[i]) == int(report_i.num_steps)
        assert bool(report.successful[i]) == bool(report_i.successful)


@pytest.mark.parametrize("case", slow_unless(layers, {"DEQ", "NeuralODE"}, _ids))
def test_no_recompile_when_only_data_changes(case, getkey):
    layer = case.make(getkey(), jnp.float64, tol=1e-8, max_steps=100, throw=False)
    traces = []

    @eqx.filter_jit
    def run(model, xs):
        traces.append(None)
        return _batched(case, model, xs)

    run(layer, case.inputs(getkey(), BATCH, jnp.float64))
    other = case.make(getkey(), jnp.float64, tol=1e-8, max_steps=100, throw=False)
    run(other, case.inputs(getkey(), BATCH, jnp.float64))
    assert len(traces) == 1


@pytest.mark.parametrize("case", slow_unless(layers, _CHEAP, _ids))
def test_gradient_matches_finite_differences(case, getkey):
    layer = case.make(getkey(), jnp.float64, tol=TOL, max_steps=500, throw=False)
    inputs = case.inputs(getkey(), BATCH, jnp.float64)
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    out_struct = jax.eval_shape(
        lambda p: _batched(case, eqx.combine(p, static), inputs)[0], params
    )
    weights = [
        jr.normal(k, o.shape, o.dtype)
        for k, o in zip(jr.split(getkey(), 8), jtu.tree_leaves(out_struct))
    ]

    @jax.jit
    def loss(p):
        out, _ = _batched(case, eqx.combine(p, static), inputs)
        return sum(jnp.sum(w * o) for w, o in zip(weights, jtu.tree_leaves(out)))

    leaves, treedef = jtu.tree_flatten(params)
    keys = jr.split(getkey(), len(leaves))
    direction = jtu.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    grad = jax.grad(loss)(params)
    directional = sum(
        jnp.vdot(g, d)
        for g, d in zip(jtu.tree_leaves(grad), jtu.tree_leaves(direction))
    )
    eps = 1e-6
    shift = lambda s: jtu.tree_map(lambda p, d: p + s * eps * d, params, direction)
    fd = (loss(shift(1.0)) - loss(shift(-1.0))) / (2 * eps)
    # Central differences at eps = 1e-6 are accurate to ~1e-9 relative here; the
    # solves are at 1e-11.
    np.testing.assert_allclose(directional, fd, rtol=1e-6, atol=1e-8)


# Every family has its own forced-failure test; here three layers by default, all
# in the slow stage.
@pytest.mark.parametrize(
    "case", slow_unless(layers, {"DEQ", "AttractorRefiner", "HomoODE"}, _ids)
)
def test_forced_failure_is_reported_per_sample(case, getkey):
    kwargs, inputs, expected = case.failing(getkey(), BATCH, jnp.float64)
    settings = {"tol": 1e-10, "max_steps": 200, "throw": False} | kwargs
    key = getkey()
    layer = case.make(key, jnp.float64, **settings)
    _, report = eqx.filter_jit(lambda m, xs: _batched(case, m, xs))(layer, inputs)
    np.testing.assert_array_equal(np.asarray(report.successful), np.asarray(expected))
    failure = getattr(jaxdeq.RESULTS, case.failure)
    assert bool(jnp.all((report.result == failure) | expected))
    # With throw=True the same failure raises, naming what to try.
    raising = case.make(key, jnp.float64, **(settings | {"throw": True}))
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps"):
        out, _ = eqx.filter_jit(lambda m, xs: _batched(case, m, xs))(raising, inputs)
        jax.block_until_ready(out)


@pytest.mark.parametrize(
    "case, dtype",
    [
        pytest.param(
            case,
            dtype,
            id=f"{case.name}-{jnp.dtype(dtype).name}",
            # The default run: every dtype of the cheap layers, float32 of the
            # others whose compile is light; the slow stage runs the rest.
            marks=()
            if case.name in _CHEAP
            or (dtype != jnp.bfloat16 and case.name not in _HEAVY_COMPILE)
            else pytest.mark.slow,
        )
        for case in layers
        for dtype in case.dtypes
    ],
)
def test_low_precision_inputs(case, dtype, getkey):
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    layer = case.make(getkey(), dtype, tol=tol, max_steps=100, throw=False)
    inputs = case.inputs(getkey(), BATCH, dtype)
    out, report = eqx.filter_jit(lambda m, xs: _batched(case, m, xs))(layer, inputs)
    _check_report(report, (BATCH,))
    for leaf in jtu.tree_leaves(out):
        assert leaf.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32))))
    assert bool(jnp.all(report.successful))
