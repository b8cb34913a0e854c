"""Equilibrium propagation: estimates against the implicit gradient, homeostasis."""

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import jaxdeq
from jaxdeq import ep


# Tight enough that solver error (amplified by 1/beta in the estimates) stays far
# below the O(beta^k) bias being measured: beta = 0.025 and a residual of 1e-13 give
# an error of ~1e-11, against biases of 1e-3 to 1e-8.
SOLVER = jaxdeq.Anderson(rtol=1e-13, atol=1e-14)
SIZES = (5, 7, 3)
# The reference gradient needs an exact backward solve too.
ADJOINT = jaxdeq.ImplicitAdjoint(linear_solver=lx.LU())


def _flat(tree):
    return jfu.ravel_pytree(eqx.filter(tree, eqx.is_inexact_array))[0]


@pytest.fixture(scope="module")
def problem():
    net = ep.LayeredNetwork(SIZES, gain=2.0, dtype=jnp.float64, key=jr.PRNGKey(0))
    x = jr.normal(jr.PRNGKey(1), (SIZES[0],), jnp.float64)
    y = jnp.array([1.0, 0.0, 0.0])
    _, g_true = ep.implicit_gradient(net, x, y, solver=SOLVER, adjoint=ADJOINT)
    return net, x, y, _flat(g_true)


def _rel_error(net, x, y, g_true, **kwargs):
    g, stats = ep.ep_gradient(net, x, y, solver=SOLVER, **kwargs)
    g = _flat(g)
    assert bool(jnp.all(stats.extra["nudged"].rel_residual < 1e-12))
    assert bool(stats.successful) and bool(jnp.all(stats.extra["nudged"].successful))
    error = float(jnp.linalg.norm(g - g_true) / jnp.linalg.norm(g_true))
    cosine = float(g @ g_true / (jnp.linalg.norm(g) * jnp.linalg.norm(g_true)))
    return error, cosine


@pytest.mark.parametrize(
    "estimator, num_nudges, order",
    [
        ("one_sided", 2, 1),
        ("symmetric", 2, 2),
        ("holomorphic", 3, 3),
        pytest.param("holomorphic", 4, 4, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("form", ["energy", "vector_field"])
def test_estimate_converges_at_its_order(problem, estimator, num_nudges, order, form):
    net, x, y, g_true = problem
    betas = (0.1, 0.05, 0.025)
    errors, cosines = zip(
        *[
            _rel_error(
                net,
                x,
                y,
                g_true,
                beta=b,
                estimator=estimator,
                num_nudges=num_nudges,
                form=form,
            )
            for b in betas
        ]
    )
    assert min(cosines) > 0.999
    # Halving beta divides the bias by 2^order; observed rates within 0.25 of it.
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(rates - order) < 0.25), (errors, rates)


@pytest.mark.slow
def test_holomorphic_with_two_nudges_is_symmetric(problem):
    net, x, y, _ = problem
    g_sym, _ = ep.ep_gradient(net, x, y, beta=0.1, estimator="symmetric", solver=SOLVER)
    g_hol, _ = ep.ep_gradient(
        net, x, y, beta=0.1, estimator="holomorphic", num_nudges=2, solver=SOLVER
    )
    np.testing.assert_allclose(_flat(g_hol), _flat(g_sym), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_implicit_gradient_matches_finite_differences_and_unrolled(problem):
    net, x, y, g_true = problem
    flat, unravel = jfu.ravel_pytree(eqx.filter(net, eqx.is_inexact_array))
    static = eqx.filter(net, eqx.is_inexact_array, inverse=True)

    @jax.jit
    def loss(v):
        m = eqx.combine(unravel(v), static)
        s = ep.free_phase(m, x, solver=SOLVER).value
        return ep.squared_error(m.output(s), y)

    h = 1e-6
    for i in range(0, flat.size, 7):
        e = jnp.zeros_like(flat).at[i].set(h)
        fd = (loss(flat + e) - loss(flat - e)) / (2 * h)
        np.testing.assert_allclose(g_true[i], fd, rtol=1e-6, atol=1e-10)
    _, g_unrolled = ep.implicit_gradient(
        net, x, y, solver=SOLVER, adjoint=optx.RecursiveCheckpointAdjoint()
    )
    np.testing.assert_allclose(_flat(g_unrolled), g_true, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_energy_network_structure(problem):
    net, x, _, _ = problem
    s0 = ep.free_phase(net, x, solver=SOLVER).value
    # The vector field is -grad E, and the free fixed point is a strict minimum of E.
    grad_e = jax.grad(net.energy)(s0, x)
    field = net.vector_field(s0, x)
    for g, f in zip(grad_e, field):
        np.testing.assert_allclose(-g, f, atol=1e-12)
    flat, unravel = jfu.ravel_pytree(s0)
    hessian = jax.hessian(lambda v: net.energy(unravel(v), x))(flat)
    assert float(jnp.min(jnp.linalg.eigvalsh(hessian))) > 0
    s_other = jax.tree.map(lambda a: 0.9 * a + 0.05, s0)
    assert float(net.energy(s_other, x)) > float(net.energy(s0, x))


@pytest.mark.slow
def test_generalised_ep_formula_and_bias():
    net = ep.LayeredNetwork(
        SIZES, symmetric=False, gain=2.0, dtype=jnp.float64, key=jr.PRNGKey(3)
    )
    assert not net.has_energy
    x = jr.normal(jr.PRNGKey(4), (SIZES[0],), jnp.float64)
    y = jnp.array([0.0, 1.0, 0.0])
    s0 = ep.free_phase(net, x, solver=SOLVER).value
    flat_s, unravel = jfu.ravel_pytree(s0)
    jac = jax.jacfwd(lambda v: jfu.ravel_pytree(net.vector_field(unravel(v), x))[0])(
        flat_s
    )
    grad_c = jfu.ravel_pytree((jnp.zeros(7), s0[1] - y))[0]
    _, vjp = jax.vjp(
        lambda m: jfu.ravel_pytree(m.vector_field(s0, x))[0],
        eqx.filter(net, eqx.is_inexact_array),
    )
    expected_ep = -_flat(vjp(jnp.linalg.solve(jac, grad_c))[0])
    expected_true = -_flat(vjp(jnp.linalg.solve(jac.T, grad_c))[0])
    g, _ = ep.ep_gradient(
        net, x, y, beta=1e-3, estimator="holomorphic", num_nudges=4, solver=SOLVER
    )
    np.testing.assert_allclose(_flat(g), expected_ep, rtol=1e-8, atol=1e-12)
    _, g_true = ep.implicit_gradient(net, x, y, solver=SOLVER, adjoint=ADJOINT)
    np.testing.assert_allclose(_flat(g_true), expected_true, rtol=1e-8, atol=1e-12)
    # Asymmetry biases the estimate; aligning the feedback with W^T removes the bias.
    bias = jnp.linalg.norm(_flat(g) - _flat(g_true)) / jnp.linalg.norm(_flat(g_true))
    assert float(bias) > 1e-2
    aligned = eqx.tree_at(lambda m: m.feedback, net, (net.weights[1].T,))
    g, _ = ep.ep_gradient(
        aligned, x, y, beta=1e-3, estimator="holomorphic", num_nudges=4, solver=SOLVER
    )
    _, g_true = ep.implicit_gradient(aligned, x, y, solver=SOLVER, adjoint=ADJOINT)
    # Solver residuals of 1e-13 divided by beta = 1e-3: errors of ~1e-10.
    np.testing.assert_allclose(_flat(g), _flat(g_true), rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_homeostatic_loss():
    sym = ep.LayeredNetwork(SIZES, dtype=jnp.float64, key=jr.PRNGKey(5))
    asym = ep.LayeredNetwork(
        SIZES, symmetric=False, dtype=jnp.float64, key=jr.PRNGKey(5)
    )
    x = jr.normal(jr.PRNGKey(6), (SIZES[0],), jnp.float64)
    s_sym = ep.free_phase(sym, x, solver=SOLVER).value
    assert float(ep.homeostatic_loss(sym, s_sym, x)) == 0.0
    assert abs(float(ep.homeostatic_loss(sym, s_sym, x, key=jr.PRNGKey(0)))) < 1e-14

    s = ep.free_phase(asym, x, solver=SOLVER).value
    exact = ep.homeostatic_loss(asym, s, x)
    # ||J - J^T||_F^2 / (2n): here only the off-diagonal blocks W_1 and B_1 differ.
    n = sum(SIZES[1:])
    direct = 2 * jnp.sum((asym.feedback[0] - asym.weights[1].T) ** 2) / (2 * n)
    np.testing.assert_allclose(exact, direct, rtol=1e-12)
    # The two-JVP estimate is unbiased: the mean of many probes is near the exact value.
    for method in ("antisymmetric", "two_jvp"):
        estimate = ep.homeostatic_loss(
            asym, s, x, key=jr.PRNGKey(1), num_samples=20000, method=method
        )
        np.testing.assert_allclose(estimate, exact, rtol=0.05)
    # Its gradient reduces the asymmetry.
    grads = eqx.filter_grad(lambda m: ep.homeostatic_loss(m, s, x))(asym)
    stepped = eqx.apply_updates(asym, jax.tree.map(lambda g: -0.5 * g, grads))
    assert float(ep.homeostatic_loss(stepped, s, x)) < 0.9 * float(exact)


@pytest.mark.slow
def test_vmap_float32_and_training_step():
    net = ep.LayeredNetwork((6, 8, 2), dtype=jnp.float32, key=jr.PRNGKey(7))
    xs = jr.normal(jr.PRNGKey(8), (4, 6), jnp.float32)
    ys = jax.nn.one_hot(jnp.array([0, 1, 1, 0]), 2, dtype=jnp.float32)
    solver = jaxdeq.Anderson(rtol=1e-5, atol=1e-6)
    batched = jax.vmap(lambda a, b: ep.ep_gradient(net, a, b, beta=0.2, solver=solver))
    grads, stats = batched(xs, ys)
    assert grads.weights[0].shape == (4, 8, 6)
    assert grads.weights[0].dtype == jnp.float32
    one, _ = ep.ep_gradient(net, xs[2], ys[2], beta=0.2, solver=solver)
    np.testing.assert_allclose(
        grads.weights[0][2], one.weights[0], rtol=1e-4, atol=1e-6
    )
    # A few EP steps lower the loss.
    mean = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
    loss0 = jnp.mean(stats.extra["loss"])
    assert stats.num_steps.shape == (4,) and bool(jnp.all(stats.successful))
    assert stats.extra["nudged"].num_steps.shape == (4, 2)  # symmetric: +-beta
    for _ in range(5):
        net = eqx.apply_updates(net, jax.tree.map(lambda g: -1.0 * g, mean))
        grads, stats = batched(xs, ys)
        mean = jax.tree.map(lambda g: jnp.mean(g, 0), grads)
    assert float(jnp.mean(stats.extra["loss"])) < float(loss0)


@pytest.mark.slow
def test_forced_failure_is_reported_per_sample_and_throw_raises(problem):
    net, x, y, _ = problem
    xs = jnp.stack([x, x.at[0].set(jnp.nan), 0.5 * x])
    ys = jnp.stack([y, y, y])

    def estimate(**kwargs):
        return jax.vmap(
            lambda a, b: ep.ep_gradient(net, a, b, solver=SOLVER, **kwargs)
        )(xs, ys)

    _, report = estimate(throw=False)
    assert isinstance(report, jaxdeq.Report)
    np.testing.assert_array_equal(report.successful, [True, False, True])
    nonfinite = report.result == jaxdeq.RESULTS.fixed_point_nonfinite
    np.testing.assert_array_equal(nonfinite, [False, True, False])
    np.testing.assert_array_equal(report.extra["free"].successful, [True, False, True])
    assert report.extra["nudged"].successful.shape == (3, 2)
    _, report = estimate(throw=False, max_steps=2)
    failed = report.result == jaxdeq.RESULTS.fixed_point_max_steps_reached
    np.testing.assert_array_equal(failed, [True, False, True])
    with pytest.raises(Exception, match="fixed-point solve"):
        estimate(max_steps=2)  # functions throw by default

    # A nudged phase that fails fails the estimate, though the free phase succeeded.
    def cost(prediction, target):
        # Its value is the squared error; its gradient is NaN (sqrt at 0).
        return ep.squared_error(prediction, target) + jnp.sqrt(
            jnp.sum((prediction - prediction) ** 2)
        )

    _, report = ep.ep_gradient(net, x, y, solver=SOLVER, cost=cost, throw=False)
    assert bool(report.extra["free"].successful)
    assert not bool(jnp.any(report.extra["nudged"].successful))
    assert report.result == jaxdeq.RESULTS.fixed_point_nonfinite
    with pytest.warns(DeprecationWarning, match="EPStats"):
        ep.EPStats(*(jnp.zeros(()),) * 6)


@pytest.mark.unchecked
def test_errors(problem):
    net, x, y, _ = problem
    with pytest.raises(ValueError, match="beta"):
        ep.ep_gradient(net, x, y, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        ep.ep_gradient(net, x, y, beta=0.1j)
    with pytest.raises(ValueError, match="estimator"):
        ep.ep_gradient(net, x, y, estimator="two_sided")
    with pytest.raises(ValueError, match="num_nudges"):
        ep.ep_gradient(net, x, y, estimator="holomorphic", num_nudges=1)
    asym = ep.LayeredNetwork(SIZES, symmetric=False, key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="vector_field"):
        ep.ep_gradient(asym, x, y, form="energy")
    with pytest.raises(TypeError, match="AbstractEnergyNetwork"):
        ep.free_phase(lambda s: s, x)
    with pytest.raises(ValueError, match="sizes"):
        ep.LayeredNetwork((5,), key=jr.PRNGKey(0))
    with pytest.raises(ValueError, match="activation"):
        ep.LayeredNetwork(SIZES, activation="relu", key=jr.PRNGKey(0))
