"""Deep Equilibrium Nets: quadrature moments, Fischer–Burmeister, the Brock–Mirman
residuals at the closed form, simulation, Euler-error summaries, loss gradients,
a short training run to the accuracy targets, and input errors."""

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxdeq
import jaxdeq.econ as econ
from jaxdeq.pinn import NonFiniteLossError


MODEL = econ.BrockMirman()


def _moment(rule, fn):
    return float(rule.expect(fn))


# --- Quadrature -------------------------------------------------------------------


def test_gauss_hermite_moments():
    rule = econ.gauss_hermite(10)
    assert rule.nodes.shape == (10, 1) and rule.weights.shape == (10,)
    assert rule.nodes.dtype == jnp.float64
    assert abs(float(jnp.sum(rule.weights)) - 1) < 1e-15
    assert abs(_moment(rule, lambda e: e[0])) < 1e-15
    assert abs(_moment(rule, lambda e: e[0] ** 2) - 1) < 1e-13
    assert abs(_moment(rule, lambda e: e[0] ** 4) - 3) < 1e-12
    assert abs(_moment(rule, lambda e: e[0] ** 6) - 15) < 1e-11
    # The error is about sigma^20 10! / 20! = 1.5e-12 sigma^20.
    for sigma, tol in ((0.02, 1e-15), (0.5, 1e-15), (1.0, 3e-12)):
        exact = math.exp(sigma**2 / 2)
        assert abs(_moment(rule, lambda e, s=sigma: jnp.exp(s * e[0])) - exact) < tol

    grid = econ.gauss_hermite(4, dim=2)
    assert grid.nodes.shape == (16, 2) and grid.dim == 2 and grid.num_nodes == 16
    assert abs(_moment(grid, lambda e: e[0] ** 2 * e[1] ** 2) - 1) < 1e-13
    assert abs(_moment(grid, lambda e: e[1] ** 4) - 3) < 1e-13
    assert abs(_moment(grid, lambda e: e[0] * e[1])) < 1e-15


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_monomial_rule_moments(dim):
    m1 = econ.monomial_rule(dim, kind=1)
    assert m1.nodes.shape == (2 * dim, dim)
    second = m1.expect(lambda e: jnp.outer(e, e))
    np.testing.assert_allclose(second, np.eye(dim), atol=1e-14)
    np.testing.assert_allclose(m1.expect(lambda e: e**3), 0, atol=1e-14)

    m2 = econ.monomial_rule(dim, kind=2)
    assert m2.nodes.shape == (2 * dim**2 + 1, dim)
    assert abs(float(jnp.sum(m2.weights)) - 1) < 1e-14
    np.testing.assert_allclose(
        m2.expect(lambda e: jnp.outer(e, e)), np.eye(dim), atol=1e-14
    )
    # Degree 5: fourth moments 3 on the diagonal, 1 off it; odd moments vanish.
    fourth = m2.expect(lambda e: jnp.outer(e**2, e**2))
    np.testing.assert_allclose(
        fourth, np.ones((dim, dim)) + 2 * np.eye(dim), atol=1e-13
    )
    np.testing.assert_allclose(m2.expect(lambda e: e**5), 0, atol=1e-13)
    if dim == 1:  # M2 in one dimension is the three-node Gauss-Hermite rule
        np.testing.assert_allclose(
            m2.expect(lambda e: jnp.exp(e[0])),
            econ.gauss_hermite(3).expect(lambda e: jnp.exp(e[0])),
            rtol=1e-14,
        )


def test_monte_carlo(getkey):
    key = getkey()
    rule = econ.monte_carlo(key, 4000, dim=2)
    assert rule.nodes.shape == (4000, 2)
    np.testing.assert_array_equal(rule.weights, np.full(4000, 1 / 4000))
    np.testing.assert_array_equal(rule.nodes, econ.monte_carlo(key, 4000, 2).nodes)
    assert abs(_moment(rule, lambda e: e[0] ** 2) - 1) < 0.1


@pytest.mark.unchecked
def test_quadrature_errors():
    with pytest.raises(ValueError, match="`n` must be at least 1"):
        econ.gauss_hermite(0)
    with pytest.raises(ValueError, match="`dim` must be at least 1"):
        econ.gauss_hermite(5, dim=0)
    with pytest.raises(ValueError, match="monomial_rule"):
        econ.gauss_hermite(10, dim=6)
    with pytest.raises(TypeError, match="must be an int"):
        econ.gauss_hermite(5.0)
    with pytest.raises(ValueError, match="`kind` must be 1"):
        econ.monomial_rule(3, kind=3)
    with pytest.raises(ValueError, match="`n` must be at least 1"):
        econ.monte_carlo(jr.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="same, non-zero number of rows"):
        econ.Quadrature(jnp.zeros((3, 1)), jnp.ones(2))
    with pytest.raises(ValueError, match=r"shape \(N, dim\)"):
        econ.Quadrature(jnp.zeros(3), jnp.ones(3))


# --- Fischer-Burmeister -----------------------------------------------------------


def test_fischer_burmeister_complementarity():
    values = jnp.array([0.0, 1e-300, 1e-8, 0.3, 1.0, 7.5, 1e300])
    zeros = jnp.zeros_like(values)
    # Exactly zero at complementary pairs, whatever the magnitude.
    assert jnp.all(econ.fischer_burmeister(values, zeros) == 0.0)
    assert jnp.all(econ.fischer_burmeister(zeros, values) == 0.0)
    # Positive when both are positive, negative when either is negative.
    a = jnp.array([0.5, 1e-3, 2.0, -0.1, 1.0, -1.0, -1e-6])
    b = jnp.array([0.5, 3.0, 1e-3, 2.0, -0.5, -1.0, 0.0])
    phi = econ.fischer_burmeister(a, b)
    np.testing.assert_array_equal(np.sign(phi), [1, 1, 1, -1, -1, -1, -1])
    np.testing.assert_allclose(phi, a + b - np.sqrt(a**2 + b**2), rtol=1e-12)


def test_fischer_burmeister_gradient():
    grad = jax.grad(econ.fischer_burmeister, argnums=(0, 1))
    ga, gb = grad(0.0, 0.0)
    assert (float(ga), float(gb)) == (1.0, 1.0)
    a, b = 0.3, -0.7
    ga, gb = grad(jnp.asarray(a), jnp.asarray(b))
    r = math.hypot(a, b)
    assert abs(float(ga) - (1 - a / r)) < 1e-14
    assert abs(float(gb) - (1 - b / r)) < 1e-14


# --- Brock-Mirman at the closed form ----------------------------------------------


@pytest.fixture(scope="module")
def ergodic_states():
    states = econ.simulate(
        MODEL,
        MODEL.policy_true,
        jr.PRNGKey(0),
        num_paths=32,
        path_length=8,
        burn_in=50,
    )
    box = MODEL.initial_states(jr.PRNGKey(1), 64)
    return jnp.concatenate([states.reshape(-1, 2), box])


def test_brock_mirman_residual_vanishes_at_closed_form(ergodic_states):
    for rule in (econ.gauss_hermite(7), econ.monte_carlo(jr.PRNGKey(2), 50)):
        res = econ.evaluate_residuals(MODEL, MODEL.policy_true, ergodic_states, rule)
        assert set(res) == {"euler"} and res["euler"].shape == (len(ergodic_states),)
        assert float(jnp.max(jnp.abs(res["euler"]))) <= 1e-12
        errors = econ.evaluate_euler_errors(
            MODEL, MODEL.policy_true, ergodic_states, rule
        )
        assert errors.shape == (len(ergodic_states), 1)
        assert float(jnp.max(jnp.abs(errors))) <= 1e-12
    # A constant share s gives e = s / (alpha beta) - 1 exactly.
    wrong = lambda state: jnp.full((1,), 0.3, state.dtype)
    errors = econ.evaluate_euler_errors(
        MODEL, wrong, ergodic_states, econ.gauss_hermite(5)
    )
    np.testing.assert_allclose(errors, 0.3 / (0.36 * 0.96) - 1, rtol=1e-12)
    summary = econ.euler_error_summary(errors)
    assert summary.log10_mean > -1.1


def test_brock_mirman_value_solves_bellman(ergodic_states):
    rule = econ.gauss_hermite(7)

    def bellman_gap(state):
        share = MODEL.policy_true(state)
        output = state[1] * state[0] ** MODEL.alpha
        future = rule.expect(
            lambda e: MODEL.value_true(MODEL.transition(state, share, e))
        )
        return (
            jnp.log((1 - share[0]) * output)
            + MODEL.beta * future
            - (MODEL.value_true(state))
        )

    gaps = jax.vmap(bellman_gap)(ergodic_states)
    assert float(jnp.max(jnp.abs(gaps))) < 1e-11
    assert float(jnp.max(jnp.abs(jax.vmap(MODEL.value_true)(ergodic_states)))) > 1


def test_simulated_ergodic_set(ergodic_states):
    states = ergodic_states[:256]
    assert bool(jnp.all(jnp.isfinite(states)))
    k_star = MODEL.steady_state_capital
    assert abs(k_star - (0.36 * 0.96) ** (1 / 0.64)) < 1e-15
    assert float(states[:, 0].min()) > 0.7 * k_star
    assert float(states[:, 0].max()) < 1.4 * k_star
    assert float(jnp.max(jnp.abs(jnp.log(states[:, 1])))) < 5 * MODEL.log_z_std
    # Period 0 is the initial state when there is no burn-in.
    start = MODEL.initial_states(jr.PRNGKey(3), 4)
    path = econ.simulate(
        MODEL,
        MODEL.policy_true,
        jr.PRNGKey(4),
        num_paths=4,
        path_length=3,
        initial_states=start,
    )
    assert path.shape == (4, 3, 2)
    np.testing.assert_array_equal(path[:, 0], start)
    np.testing.assert_allclose(
        path[:, 1, 0], jax.vmap(MODEL.capital_true)(start), rtol=1e-14
    )


# --- Summaries and gradients ------------------------------------------------------


def test_euler_error_summary():
    errors = np.array([1e-6, -1e-5, 1e-4, -1e-3] * 25)
    summary = econ.euler_error_summary(errors)
    assert summary.num == 100
    assert summary.max == 1e-3 and summary.log10_max == pytest.approx(-3)
    assert summary.mean == pytest.approx(np.mean(np.abs(errors)))
    assert summary.p50 == pytest.approx(5.5e-5)
    assert summary.to_dict()["log10_p99"] == pytest.approx(-3)
    assert "mean" in str(summary)
    with pytest.raises(ValueError, match="1 of 3 Euler errors are not finite"):
        econ.euler_error_summary(np.array([1e-3, np.nan, 1e-4]))
    with pytest.raises(ValueError, match="empty"):
        econ.euler_error_summary(np.zeros(0))


def test_policy_out_of_range(ergodic_states):
    # A share above one means negative consumption: reported, not scored.
    too_high = lambda state: jnp.full((1,), 1.2, state.dtype)
    errors = econ.evaluate_euler_errors(
        MODEL, too_high, ergodic_states[:8], econ.gauss_hermite(3)
    )
    with pytest.raises(ValueError, match="out of range"):
        econ.euler_error_summary(errors)
    negative = lambda state: jnp.full((1,), -0.5, state.dtype)
    with pytest.raises(ValueError, match="not finite"):
        econ.simulate(MODEL, negative, jr.PRNGKey(0), num_paths=4, path_length=3)


def test_loss_gradient_matches_finite_differences(ergodic_states, getkey):
    mlp = eqx.nn.MLP(2, 1, 4, 1, activation=jnp.tanh, key=getkey(), dtype=jnp.float64)
    policy = econ.DEQNPolicy(mlp, jnp.array([0.2, 1.0]), jnp.array([0.05, 0.05]), MODEL)
    states, rule = ergodic_states[::8], econ.gauss_hermite(3)
    flat, unravel = ravel_pytree(eqx.filter(mlp, eqx.is_inexact_array))
    _, static = eqx.partition(mlp, eqx.is_inexact_array)

    @jax.jit
    def loss(flat):
        p = eqx.tree_at(lambda p: p.mlp, policy, eqx.combine(unravel(flat), static))
        return jnp.mean(econ.evaluate_residuals(MODEL, p, states, rule)["euler"] ** 2)

    grad = jax.grad(loss)(flat)
    eps = 1e-6
    eye = jnp.eye(flat.size, dtype=flat.dtype)
    fd = jax.vmap(lambda d: (loss(flat + eps * d) - loss(flat - eps * d)) / (2 * eps))(
        eye
    )
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert float(jnp.linalg.norm(grad)) > 1e-3


# --- Training ---------------------------------------------------------------------


@pytest.mark.slow
def test_brock_mirman_training_reaches_targets(tmp_path):
    solver = econ.DEQN.brock_mirman(small=True)
    sol = econ.solve_deqn(MODEL, solver, key=jr.PRNGKey(0))
    assert sol.euler.mean < 1e-5, sol.euler
    assert sol.euler.max < 1e-4, sol.euler
    # The savings share against the closed form alpha * beta on the fresh paths;
    # its relative error is that of next period's capital, K' = s z K^alpha.
    share = sol.closed_form_errors()["s"]
    assert share["rel_l2"] < 1e-5 and share["max_rel"] < 1e-4
    assert sol.states.shape == (128, 16, 2) and sol.errors.shape == (128 * 16, 1)
    history = sol.history
    for name in ("step", "phase", "loss", "loss_euler", "euler_mean", "euler_max"):
        assert len(history[name]) == len(history["step"]) > 2
    assert history["loss"][-1] < 1e-3 * history["loss"][0]
    assert set(history["phase"]) == {0, 1}
    assert bool(np.all(np.isfinite(sol.training_states)))
    share = jax.vmap(sol.policy)(jnp.asarray(sol.training_states))
    assert bool(jnp.all((share > 0) & (share < 1)))
    pytest.importorskip("matplotlib")
    paths = econ.plot_brock_mirman(sol, tmp_path / "figures")
    assert [p.name for p in paths] == [
        "brock_mirman_policy.png",
        "brock_mirman_euler_errors.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)


@pytest.mark.unchecked
def test_brock_mirman_settings_are_named():
    full, small = econ.DEQN.brock_mirman(), econ.DEQN.brock_mirman(small=True)
    assert isinstance(full, econ.DEQN) and isinstance(small, econ.DEQN)
    assert (full.adam_steps, full.lbfgs_steps) == (2000, 2000)
    assert (small.adam_steps, small.lbfgs_steps) == (500, 1000)
    assert (small.num_paths, small.path_length) == (128, 4)
    assert (small.report_paths, small.report_length) == (128, 16)
    assert full.quadrature.num_nodes == 5 and full.report_quadrature.num_nodes == 10
    with pytest.raises(TypeError, match="DEQN.brock_mirman: `small` must be"):
        econ.DEQN.brock_mirman(small="yes")


def _solution_with_policy(model, bias):
    """A DEQNSolution whose policy's raw output is `bias` at every state."""
    dim = len(model.state_names)
    mlp = eqx.nn.MLP(dim, 1, 2, 1, key=jr.PRNGKey(0))
    mlp = eqx.tree_at(lambda m: m.layers[-1].weight, mlp, replace_fn=jnp.zeros_like)
    mlp = eqx.tree_at(lambda m: m.layers[-1].bias, mlp, jnp.array([bias]))
    policy = econ.DEQNPolicy(mlp, jnp.zeros(dim), jnp.ones(dim), model)
    states = model.initial_states(jr.PRNGKey(1), 12).reshape(3, 4, dim)
    summary = econ.euler_error_summary(np.ones(1))
    return econ.DEQNSolution(
        policy=policy,
        euler=summary,
        errors=np.ones((12, 1)),
        states=np.asarray(states),
        training_states=np.asarray(states.reshape(-1, dim)),
        history={},
        num_steps=0,
        wall_time=0.0,
        result=jaxdeq.RESULTS.successful,
        loss=0.0,
        terms={},
    )


def test_closed_form_errors():
    # A constant share s against the closed form alpha * beta: the relative error
    # is |s / (alpha beta) - 1| at every state.
    ab = MODEL.alpha * MODEL.beta
    exact = _solution_with_policy(MODEL, math.log(ab / (1 - ab)))
    assert exact.closed_form_errors()["s"]["max_rel"] < 1e-14
    off = _solution_with_policy(MODEL, math.log(1.01 * ab / (1 - 1.01 * ab)))
    errors = off.closed_form_errors()["s"]
    assert errors["rel_l2"] == pytest.approx(0.01, rel=1e-10)
    assert errors["max_rel"] == pytest.approx(0.01, rel=1e-10)
    assert errors["mean_rel"] == pytest.approx(0.01, rel=1e-10)
    # A model without a closed form says so.
    with pytest.raises(TypeError, match="has no closed form"):
        _solution_with_policy(_NaNModel(), 0.0).closed_form_errors()
    assert isinstance(MODEL, econ.AbstractClosedFormDEQNModel)
    assert not isinstance(_NaNModel(), econ.AbstractClosedFormDEQNModel)


class _NaNModel(econ.AbstractDEQNModel):
    """A one-state model whose Euler residual is NaN everywhere."""

    state_names: ClassVar[tuple[str, ...]] = ("x",)
    policy_names: ClassVar[tuple[str, ...]] = ("p",)
    shock_dim: ClassVar[int] = 1

    def initial_states(self, key, num):
        return 1 + jr.uniform(key, (num, 1))

    def policy(self, raw, state):
        del state
        return jax.nn.softplus(raw)

    def transition(self, state, policy, shock):
        return 0.5 * state + 0.1 * policy + 0.01 * shock

    def residuals(self, state, policy, expect):
        return {"euler": jnp.log(-state[0]) + expect(lambda s, p: p[0])}

    def euler_errors(self, state, policy, expect):
        return self.residuals(state, policy, expect)["euler"]


def test_nan_loss_is_reported():
    solver = econ.DEQN(
        width=2,
        depth=1,
        num_paths=2,
        path_length=1,
        adam_steps=3,
        lbfgs_steps=0,
        log_every=1,
    )
    with pytest.raises(NonFiniteLossError, match="by step 1"):
        econ.solve_deqn(_NaNModel(), solver, key=jr.PRNGKey(0))


@pytest.mark.unchecked
def test_input_errors():
    with pytest.raises(ValueError, match="`alpha` must be a number in"):
        econ.BrockMirman(alpha=1.5)
    with pytest.raises(ValueError, match="`sigma` must be a number >= 0"):
        econ.BrockMirman(sigma=-0.1)
    with pytest.raises(ValueError, match="`width` must be at least 1"):
        econ.DEQN(width=0)
    with pytest.raises(ValueError, match="nothing would be trained"):
        econ.DEQN(adam_steps=0, lbfgs_steps=0)
    with pytest.raises(ValueError, match="learning_rate"):
        econ.DEQN(learning_rate=-1e-3)
    with pytest.raises(TypeError, match="Quadrature"):
        econ.DEQN(quadrature=np.zeros(3))
    with pytest.raises(ValueError, match="integrates over 2 shocks"):
        econ.solve_deqn(
            MODEL, econ.DEQN(quadrature=econ.gauss_hermite(3, 2)), key=jr.PRNGKey(0)
        )
    with pytest.raises(TypeError, match="AbstractDEQNModel"):
        econ.solve_deqn(object(), key=jr.PRNGKey(0))  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="solve_deqn: `solver` must be a .*DEQN"):
        econ.solve_deqn(MODEL, econ.PINN(), key=jr.PRNGKey(0))  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match=r"shape \(num, 2\)"):
        econ.evaluate_residuals(
            MODEL, MODEL.policy_true, jnp.ones((4, 3)), econ.gauss_hermite(3)
        )
    with pytest.raises(ValueError, match="`num_paths` must be at least 1"):
        econ.simulate(
            MODEL, MODEL.policy_true, jr.PRNGKey(0), num_paths=0, path_length=1
        )
    mlp = eqx.nn.MLP(2, 1, 2, 1, key=jr.PRNGKey(0), dtype=jnp.float64)
    policy = econ.DEQNPolicy(mlp, jnp.zeros(2), jnp.ones(2), MODEL)
    with pytest.raises(ValueError, match="jax.vmap"):
        policy(jnp.ones((3, 2)))
