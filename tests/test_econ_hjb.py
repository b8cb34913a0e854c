"""jaxdeq.econ continuous-time models: every residual vanishes at the closed form,
wrong value functions are visibly wrong, hard conditions hold by construction, and a
short PINN solve reaches the closed form."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq
from jaxdeq import econ, pinn


MODELS = {
    "cake": econ.CakeEating(),
    "cake_gamma_half": econ.CakeEating(gamma=0.5),
    "growth": econ.Growth(),
    "merton": econ.Merton(),
    "merton_finite": econ.Merton(horizon=10.0, bequest=2.0),
    "merton_3_assets": econ.Merton(
        mu=(0.06, 0.07, 0.08),
        volatility=(0.15, 0.2, 0.25),
        correlation=((1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1)),
    ),
    "lqr_20": econ.LQR(dim=20),
    "lqr_noise": econ.LQR(dim=4, noise=0.3, seed=3),
}


@pytest.mark.parametrize(
    "name",
    [
        n if n != "lqr_noise" else pytest.param(n, marks=pytest.mark.slow)
        for n in MODELS
    ],
)
def test_residual_vanishes_at_closed_form(name):
    model = MODELS[name]
    hjb = model.hjb()
    z = model.evaluation_points(64)

    def residual(value, p):
        return hjb.residual(value, p, normalise=model.residual_scale)

    r = jax.vmap(lambda p: residual(model.value_true, p))(z)
    assert jnp.max(jnp.abs(r)) < 1e-10
    # The policies from the first-order conditions at the true value function are
    # the closed-form policies.
    got = jax.vmap(lambda p: model.policies(model.value_true, p))(z)
    want = jax.vmap(model.policies_true)(z)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-12)
    # A deliberately wrong value function (2% off, or off by a smooth bump) has a
    # visibly non-zero residual: the loss cannot be small for the wrong reason here.
    for wrong in (
        lambda p: 1.02 * model.value_true(p),
        lambda p: model.value_true(p) * (1 + 0.02 * jnp.sin(jnp.sum(p))),
    ):
        r = jax.vmap(lambda p, wrong=wrong: residual(wrong, p))(z)
        assert jnp.sqrt(jnp.mean(r**2)) > 1e-3


def test_value_true_and_shape():
    # Cake-eating: V = kappa^-gamma u(a), and the value is increasing and concave.
    m = econ.CakeEating()
    assert m.kappa == pytest.approx(0.04)
    a = jnp.array([2.0])
    assert m.value_true(a) == pytest.approx(0.04**-2 * (-1 / 2.0))
    assert pinn.shape_violation(m.value_true, a) == 0.0
    # Merton's nu for the default parameters (references: 0.0428125).
    assert econ.Merton().nu == pytest.approx(0.0428125, rel=1e-12)
    assert econ.Merton().policies_true(jnp.array([1.0]))["risky_share"][
        0
    ] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="gamma == alpha.*has_closed_form"):
        econ.Growth(gamma=2.0).value_true(jnp.array([1.0]))


@pytest.mark.slow
def test_hard_conditions_hold_by_construction(getkey):
    # Cake-eating: consumption vanishes at the borrowing limit for any weights.
    m = econ.CakeEating()
    net = m.value_network(getkey(), 8, 2)
    c = m.policies(net, jnp.array([1e-9]))["consumption"]
    assert 0 < c < 1e-6
    # Finite-horizon Merton: the terminal condition is exact.
    m = econ.Merton(horizon=5.0, bequest=2.0)
    net = m.value_network(getkey(), 8, 2)
    for W in (0.3, 1.0, 3.0):
        z = jnp.array([5.0, W])
        assert net(z) == pytest.approx(float(m.value_true(z)), rel=1e-14)
    # LQR: V <= 0 with V(0) = 0 = grad V(0) (no noise).
    m = econ.LQR(dim=6)
    net = m.value_network(getkey(), 8, 2)
    x = jr.normal(getkey(), (32, 6))
    assert jnp.all(jax.vmap(net)(x) <= 0)
    v0, g0 = jax.value_and_grad(net)(jnp.zeros(6))
    assert v0 == 0 and jnp.all(g0 == 0)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="positive"):
        econ.CakeEating(gamma=0.5, rho=0.01, r=0.1)  # kappa < 0
    with pytest.raises(ValueError, match="a_min < a_max"):
        econ.CakeEating(a_min=5.0)
    with pytest.raises(ValueError, match="no solution"):
        econ.Merton(gamma=0.5, rho=0.01, mu=(0.3,))
    with pytest.raises(ValueError, match="one entry per asset"):
        econ.Merton(mu=(0.07, 0.08), volatility=(0.2,))
    with pytest.raises(ValueError, match="positive definite"):
        econ.Merton(
            mu=(0.07, 0.08), volatility=(0.2, 0.2), correlation=((1, 2), (2, 1))
        )
    with pytest.raises(ValueError, match="0 < alpha < 1"):
        econ.Growth(alpha=1.5)
    with pytest.raises(ValueError, match="R must be"):
        econ.LQR(dim=2, R=((-1.0, 0.0), (0.0, 1.0)))


@pytest.mark.unchecked
def test_pinn_settings_are_checked():
    with pytest.raises(ValueError, match="PINN: `num_points` must be at least 1"):
        econ.PINN(num_points=0)
    with pytest.raises(TypeError, match="PINN: `width` must be an int"):
        econ.PINN(width=32.0)
    with pytest.raises(ValueError, match="PINN: `learning_rate` must be finite"):
        econ.PINN(learning_rate=-1e-3)
    with pytest.raises(ValueError, match="PINN: `resample_every` must be at least"):
        econ.PINN(resample_every=0)
    with pytest.raises(ValueError, match="PINN: `adam_steps` and `lbfgs_steps`"):
        econ.PINN(adam_steps=0, lbfgs_steps=0)
    with pytest.raises(TypeError, match="solve_hjb: `solver` must be a .*PINN"):
        econ.solve_hjb(econ.CakeEating(), econ.DEQN(), key=jr.PRNGKey(0))
    with pytest.raises(TypeError, match="solve_hjb: `model` must subclass"):
        econ.solve_hjb(econ.BrockMirman(), key=jr.PRNGKey(0))
    # The key is required: the network and the training points are random.
    with pytest.raises(TypeError, match="key"):
        econ.solve_hjb(econ.CakeEating())  # pyright: ignore[reportCallIssue]


def test_short_pinn_solve_follows_its_settings():
    # A few Adam steps on a small network (no L-BFGS: its compilation is the slow
    # part): the settings reach the network and the fit.
    solver = econ.PINN(
        num_points=16, width=4, depth=1, adam_steps=4, lbfgs_steps=0, log_every=2
    )
    sol = econ.solve_hjb(econ.CakeEating(), solver, key=jr.PRNGKey(0))
    assert sol.fit.num_steps == 4
    assert list(sol.fit.history["step"]) == [2, 4]
    assert list(sol.fit.history["phase"]) == [0, 0]
    assert sol.fit.points.shape == (16, 1)
    assert sol.value.mlp.width_size == 4 and sol.value.mlp.depth == 1
    assert set(sol.report) >= {"value", "consumption", "residual", "wall_time"}
    assert sol.result == jaxdeq.RESULTS.successful


@pytest.mark.slow
def test_growth_pinn_reaches_the_closed_form():
    # The growth model has a spurious smooth solution; the initial guess and the
    # shape penalty keep the fit on the value function.
    solver = econ.PINN(adam_steps=1500, lbfgs_steps=1500)
    sol = econ.solve_hjb(econ.Growth(), solver, key=jr.PRNGKey(0))
    assert sol.report["value"]["rel_l2"] < 1e-4  # the target
    # Consumption is a derivative of V: half the run of the benchmark (where it is
    # 1.7e-4) leaves it a few 1e-4 to 1e-3 off, depending on the seed.
    assert sol.report["consumption"]["rel_l2"] < 3e-3
    assert sol.report["residual"]["max_abs"] < 1e-2
    assert set(sol.fit.history) >= {"hjb", "shape", "loss", "grad_norm"}
    # The policy crosses from saving to dissaving at the steady state.
    m = sol.model
    c = sol.policies(jnp.array([[0.5 * m.k_ss], [1.5 * m.k_ss]]))["consumption"]
    drift = jnp.array([m._output(0.5 * m.k_ss), m._output(1.5 * m.k_ss)]) - c
    assert drift[0] > 0 > drift[1]
