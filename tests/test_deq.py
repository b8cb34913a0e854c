import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxdeq

from .helpers import finite_difference, tight_implicit


class Cell(eqx.Module):
    linear: eqx.nn.Linear
    inject: eqx.nn.Linear

    def __init__(self, hidden, features, *, key):
        k1, k2 = jr.split(key)
        self.linear = eqx.nn.Linear(hidden, hidden, key=k1)
        self.inject = eqx.nn.Linear(features, hidden, key=k2)

    def __call__(self, z, x):
        return jnp.tanh(0.5 * self.linear(z) + self.inject(x))


def _deq(key, **kwargs):
    defaults = dict(
        solver=jaxdeq.Anderson(rtol=1e-10, atol=1e-12),
        adjoint=tight_implicit,
        max_steps=200,
    )
    return jaxdeq.DEQ(Cell(8, 3, key=key), y0=jnp.zeros(8), **{**defaults, **kwargs})


def test_layer_solves_and_reports(getkey):
    deq = _deq(getkey())
    xs = jr.normal(getkey(), (4, 3))
    zs, report = jax.vmap(deq)(xs)
    assert zs.shape == (4, 8)
    np.testing.assert_allclose(jax.vmap(deq.cell)(zs, xs), zs, atol=1e-9)
    assert isinstance(report, jaxdeq.Report)
    assert report.num_steps.shape == (4,)
    assert report.num_fn_evals.shape == (4,)
    assert report.abs_residual.shape == (4,)
    assert report.rel_residual.shape == (4,)
    assert report.residual_trace.shape == (4, 64)
    assert jnp.all(report.successful)


def test_layer_deprecated_z0(getkey):
    cell = Cell(8, 3, key=getkey())
    with pytest.warns(DeprecationWarning, match="y0"):
        deq = jaxdeq.DEQ(cell, z0=jnp.zeros(8))
    np.testing.assert_array_equal(deq.y0, jnp.zeros(8))
    with pytest.warns(DeprecationWarning, match="y0"):
        np.testing.assert_array_equal(deq.z0, jnp.zeros(8))
    with pytest.raises(TypeError, match="y0"):
        jaxdeq.DEQ(cell, y0=jnp.zeros(8), z0=jnp.zeros(8))
    _, report = deq(jr.normal(getkey(), (3,)))
    with pytest.warns(DeprecationWarning, match="report.num_steps"):
        steps = report.stats["num_steps"]
    assert steps == report.num_steps


def test_layer_matches_functional_entry_point(getkey):
    deq = _deq(getkey())
    x = jr.normal(getkey(), (3,))
    z, _ = deq(x)
    sol = jaxdeq.fixed_point(lambda z, a: deq.cell(z, a), deq.solver, deq.y0, x)
    np.testing.assert_allclose(z, sol.value, atol=1e-12)


def test_layer_gradient_matches_finite_differences(getkey):
    deq = _deq(getkey())
    xs = jr.normal(getkey(), (3, 3))

    def loss(model):
        zs, _ = jax.vmap(model)(xs)
        return jnp.sum(zs**2)

    grads = eqx.filter_grad(loss)(deq)
    params, static = eqx.partition(deq, eqx.is_inexact_array)
    g_params = eqx.filter(grads, eqx.is_inexact_array)
    direction = jax.tree_util.tree_map(lambda p: jr.normal(getkey(), p.shape), params)
    along = lambda t: loss(
        eqx.combine(
            jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction), static
        )
    )
    fd = finite_difference(along, 0.0, 1.0)
    analytic = sum(
        jnp.vdot(g, d)
        for g, d in zip(
            jax.tree_util.tree_leaves(g_params), jax.tree_util.tree_leaves(direction)
        )
    )
    np.testing.assert_allclose(analytic, fd, rtol=1e-6)
    # No gradient reaches the initial state.
    np.testing.assert_array_equal(grads.y0, jnp.zeros(8))


def test_layer_warm_start(getkey):
    deq = _deq(getkey())
    x = jr.normal(getkey(), (3,))
    z, cold = deq(x)
    z_warm, warm = deq(x, y0=z)
    assert warm.num_steps <= 1 < cold.num_steps
    np.testing.assert_allclose(z_warm, z, atol=1e-10)


def test_layer_backward_stats(getkey):
    deq = _deq(getkey())
    xs = jr.normal(getkey(), (5, 3))

    def loss(model, probe):
        zs, _ = jax.vmap(lambda x, p: model(x, backward_stats=p))(xs, probe)
        return jnp.sum(zs)

    stats = jax.grad(lambda p: loss(deq, p))(jaxdeq.BackwardStats.probe((5,)))
    assert stats.num_steps.shape == (5,)
    assert jnp.all(stats.success == 1)


def test_layer_with_spectral_norm_cell(getkey):
    # equinox's own SpectralNorm keeps the cell contractive.
    linear = eqx.nn.SpectralNorm(
        eqx.nn.Linear(8, 8, key=getkey()), weight_name="weight", key=getkey()
    )
    state = eqx.nn.State(linear)

    class SNCell(eqx.Module):
        linear: eqx.nn.SpectralNorm
        state: eqx.nn.State

        def __call__(self, z, x):
            out, _ = self.linear(z, self.state, inference=True)
            return jnp.tanh(0.9 * out + x)

    deq = jaxdeq.DEQ(SNCell(linear, state), y0=jnp.zeros(8), max_steps=100)
    x = jr.normal(getkey(), (8,))
    z, report = deq(x)
    assert report.successful
    # The layer's default tolerance is rtol=1e-4.
    residual = jnp.linalg.norm(deq.cell(z, x) - z)
    assert residual <= 1e-6 + 1e-4 * jnp.linalg.norm(deq.cell(z, x))


@pytest.mark.parametrize(
    "solver",
    [
        jaxdeq.Anderson(rtol=1e-4, atol=1e-6),
        pytest.param(jaxdeq.Broyden(rtol=1e-4, atol=1e-6), marks=pytest.mark.slow),
        pytest.param(
            optx.FixedPointIteration(rtol=1e-4, atol=1e-6), marks=pytest.mark.slow
        ),
    ],
)
def test_layer_trains_under_jit_without_recompiling(solver, getkey):
    deq = _deq(getkey(), solver=solver, max_steps=100)
    traces = []

    @eqx.filter_jit
    def step(model, xs):
        traces.append(None)
        return eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(xs)[0] ** 2))(model)

    step(deq, jr.normal(getkey(), (4, 3)))
    step(deq, jr.normal(getkey(), (4, 3)))
    assert len(traces) == 1


def test_pmap_compatible(getkey):
    deq = _deq(getkey())
    xs = jr.normal(getkey(), (1, 2, 3))
    out = jax.pmap(jax.vmap(lambda x: deq(x)[0]))(xs)
    np.testing.assert_allclose(out[0], jax.vmap(lambda x: deq(x)[0])(xs[0]), atol=1e-12)


def test_cell_with_non_array_leaves(getkey):
    # An eqx.nn.MLP holds its activation function as a field, and a lambda cell is a
    # plain function: neither is an array, and both must pass the input checks.
    mlp = eqx.nn.MLP(8, 4, 16, 1, activation=jax.nn.tanh, key=getkey())

    class Cell(eqx.Module):
        mlp: eqx.nn.MLP

        def __call__(self, z, x):
            return 0.5 * self.mlp(jnp.concatenate([z, x]))

    x = jr.normal(getkey(), (4,))
    z, report = jaxdeq.DEQ(Cell(mlp), y0=jnp.zeros(4))(x)
    assert report.successful
    fz = Cell(mlp)(z, x)
    # The layer's default test: ||f(z) - z|| <= 1e-6 + 1e-4 ||f(z)||.
    assert jnp.linalg.norm(fz - z) <= 1e-6 + 1e-4 * jnp.linalg.norm(fz)
    w = jr.normal(getkey(), (4, 4)) * 0.1
    out = jaxdeq.fixed_point(
        lambda z, a: jnp.tanh(w @ z + a), jaxdeq.Anderson(1e-8, 1e-8), jnp.zeros(4), x
    )
    np.testing.assert_allclose(out.value, jnp.tanh(w @ out.value + x), atol=1e-7)
