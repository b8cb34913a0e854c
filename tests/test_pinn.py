"""jaxdeq.pinn: derivatives, residual operators, samplers, networks and the fit loop."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq
from jaxdeq import pinn


def test_value_and_derivatives_exact():
    fn = lambda x: jnp.sin(x[0]) * x[1] ** 2 + x[0] * x[1]
    x = jnp.array([0.3, -1.2])
    v, g, h = pinn.value_and_derivatives(fn, x)
    s, c = np.sin(0.3), np.cos(0.3)
    assert v == pytest.approx(s * 1.44 - 0.36, abs=1e-14)
    np.testing.assert_allclose(g, [c * 1.44 - 1.2, 2 * s * -1.2 + 0.3], atol=1e-14)
    np.testing.assert_allclose(
        h, [[-s * 1.44, 2 * c * -1.2 + 1], [2 * c * -1.2 + 1, 2 * s]], atol=1e-14
    )
    assert pinn.value_and_derivatives(fn, x, hessian=False)[2] is None


def _linear_quadratic_hjb(noise):
    # rho V = max_u -x^2 - u^2 + V'(u) + noise^2/2 V''; V = -p x^2 - noise^2 p / rho
    # with p^2 + rho p - 1 = 0.
    rho = 0.1
    p = (-rho + np.sqrt(rho**2 + 4)) / 2
    hjb = pinn.HJB(
        discount=rho,
        payoff=lambda x, u: -(x[0] ** 2) - u**2,
        drift=lambda x, u: jnp.stack([u]),
        policy=lambda x, dV, _: 0.5 * dV[0],
        diffusion=None if noise == 0 else (lambda x, u: jnp.full((1, 1), noise)),
    )
    value = lambda x: -p * x[0] ** 2 - noise**2 * p / rho
    return hjb, value


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_hjb_residual_zero_at_solution_and_not_elsewhere(noise):
    hjb, value = _linear_quadratic_hjb(noise)
    xs = jnp.linspace(-2.0, 2.0, 9)[:, None]
    r = jax.vmap(lambda x: hjb.residual(value, x, normalise=False))(xs)
    np.testing.assert_allclose(r, 0.0, atol=1e-12)
    wrong = lambda x: 1.05 * value(x)
    r = jax.vmap(lambda x: hjb.residual(wrong, x))(xs[xs[:, 0] != 0])
    assert jnp.min(jnp.abs(r)) > 1e-3


def test_hjb_hessian_free_second_order_term_matches_hessian():
    # The same diffusion term through the Hessian (policy_needs_hessian) and through
    # Hessian-vector products along the noise columns.
    sigma = jnp.array([[0.3, 0.1], [0.0, 0.2], [0.4, -0.2]])
    kw = dict(
        discount=0.05,
        payoff=lambda x, u: -jnp.sum(x**2),
        drift=lambda x, u: -x,
        diffusion=lambda x, u: sigma * (1 + x[0] ** 2),
    )
    with_h = pinn.HJB(policy=lambda x, dV, d2V: 0.0, policy_needs_hessian=True, **kw)
    without = pinn.HJB(policy=lambda x, dV, d2V: 0.0, **kw)
    value = lambda x: jnp.sin(x[0]) * jnp.cos(x[1]) + x[2] ** 3
    x = jnp.array([0.2, -0.4, 0.7])
    a = with_h.terms(value, x)["diffusion"]
    b = without.terms(value, x)["diffusion"]
    assert a == pytest.approx(float(b), rel=1e-12)


def test_time_dependent_hjb_terminal_problem():
    # V_t - x V_x ... : with rho = 0 and payoff 0, V = exp(t) x solves
    # 0 = V_t + V_x * (-x): V_t = V, x V_x = V.
    hjb = pinn.HJB(
        discount=0.0,
        payoff=lambda t, x, u: jnp.zeros(()),
        drift=lambda t, x, u: -x,
        policy=lambda t, x, dV, d2V: None,
        time_dependent=True,
    )
    value = lambda z: jnp.exp(z[0]) * z[1]
    z = jnp.array([0.3, 1.7])
    assert hjb.residual(value, z, normalise=False) == pytest.approx(0.0, abs=1e-14)
    assert abs(hjb.residual(lambda z: value(z) + z[0], z)) > 1e-2


def test_kfe_ornstein_uhlenbeck_and_cir():
    # OU: dX = -theta X dt + s dW, stationary density N(0, s^2 / (2 theta)).
    theta, s = 0.7, 0.4
    kfe = pinn.KolmogorovForward(
        drift=lambda x: -theta * x, diffusion=lambda x: jnp.full((1, 1), s)
    )
    var = s**2 / (2 * theta)
    g = lambda x: jnp.exp(-(x[0] ** 2) / (2 * var)) / jnp.sqrt(2 * jnp.pi * var)
    xs = jnp.linspace(-1.5, 1.5, 7)[:, None]
    np.testing.assert_allclose(
        jax.vmap(lambda x: kfe.residual(g, x))(xs), 0, atol=1e-12
    )
    wrong = lambda x: jnp.exp(-(x[0] ** 2) / var) / jnp.sqrt(jnp.pi * var)
    assert jnp.max(jnp.abs(jax.vmap(lambda x: kfe.residual(wrong, x))(xs))) > 1e-2
    # CIR: dX = k (m - X) dt + s sqrt(X) dW (a state-dependent diffusion), stationary
    # density Gamma(shape 2km/s^2, rate 2k/s^2).
    k, m, s = 0.5, 1.0, 0.6
    a, b = 2 * k * m / s**2, 2 * k / s**2
    cir = pinn.KolmogorovForward(
        drift=lambda x: k * (m - x), diffusion=lambda x: s * jnp.sqrt(x)[:, None]
    )
    gamma = lambda x: x[0] ** (a - 1) * jnp.exp(-b * x[0])
    xs = jnp.linspace(0.2, 3.0, 7)[:, None]
    np.testing.assert_allclose(
        jax.vmap(lambda x: cir.residual(gamma, x))(xs), 0, atol=1e-12
    )


def test_kfe_time_dependent_ou_transition_density():
    theta, s, x0 = 0.7, 0.4, 1.0
    kfe = pinn.KolmogorovForward(
        drift=lambda x: -theta * x,
        diffusion=lambda x: jnp.full((1, 1), s),
        time_dependent=True,
    )

    def g(z):
        t, x = z[0], z[1]
        mean = x0 * jnp.exp(-theta * t)
        var = s**2 * (1 - jnp.exp(-2 * theta * t)) / (2 * theta)
        return jnp.exp(-((x - mean) ** 2) / (2 * var)) / jnp.sqrt(2 * jnp.pi * var)

    zs = jnp.array([[0.5, 0.6], [1.0, 0.2], [2.0, -0.3]])
    np.testing.assert_allclose(
        jax.vmap(lambda z: kfe.residual(g, z))(zs), 0, atol=1e-12
    )


def test_samplers_cover_the_box_and_reproduce(getkey):
    key = getkey()
    for sampler in (
        pinn.UniformSampler([0.0, -1.0], [1.0, 1.0], 512),
        pinn.QuasiRandomSampler([0.0, -1.0], [1.0, 1.0], 256),
        pinn.QuasiRandomSampler([0.0, -1.0], [1.0, 1.0], 256, kind="halton"),
    ):
        x = np.asarray(sampler(key))
        assert x.shape == (sampler.num, 2)
        assert np.all((x >= [0, -1]) & (x <= [1, 1]))
        # Every cell of an 8 x 8 grid of the box holds a point.
        cells = np.floor((x - [0, -1]) / [1 / 8, 2 / 8]).astype(int).clip(0, 7)
        assert len({tuple(c) for c in cells}) == 64
        np.testing.assert_array_equal(x, np.asarray(sampler(key)))
        assert not np.array_equal(x, np.asarray(sampler(getkey())))
    logs = np.asarray(pinn.UniformSampler([1e-3], [10.0], 4000, log=True)(key))
    assert 0.4 < np.mean(logs < 0.1) < 0.6  # half the points in the lower two decades


def test_residual_adaptive_sampler_follows_the_residual(getkey):
    base = pinn.UniformSampler([0.0], [1.0], 2000)
    # A residual concentrated near x = 0.9.
    residual = lambda params, x: jnp.exp(-(((x[:, 0] - 0.9) / 0.03) ** 2))
    rad = pinn.ResidualAdaptiveSampler(base, residual, num=200, k=2.0, c=0.1)
    x = np.asarray(rad(getkey()))
    assert x.shape == (200, 1)
    assert np.mean(np.abs(x[:, 0] - 0.9) < 0.1) > 0.5
    assert np.mean(np.abs(x[:, 0] - 0.9) > 0.2) > 0.02  # the uniform share
    with pytest.raises(ValueError, match="candidates"):
        pinn.ResidualAdaptiveSampler(base, residual, num=5000)(getkey())


@pytest.mark.unchecked
def test_sampler_and_network_errors(getkey):
    with pytest.raises(ValueError, match="lower < upper"):
        pinn.UniformSampler([1.0], [0.0], 10)
    with pytest.raises(ValueError, match="positive number"):
        pinn.UniformSampler([0.0], [1.0], 0)
    with pytest.raises(ValueError, match="lower > 0"):
        pinn.UniformSampler([0.0], [1.0], 10, log=True)
    with pytest.raises(ValueError, match="kind"):
        pinn.QuasiRandomSampler([0.0], [1.0], 10, kind="lattice")
    with pytest.raises(ValueError, match="k="):
        pinn.ResidualAdaptiveSampler(lambda k, p: None, lambda p, x: x, 4, k=0, c=0)
    with pytest.raises(ValueError, match="transform"):
        pinn.ValueNetwork([0.0], [1.0], out_size=2, key=getkey())
    with pytest.raises(ValueError, match="one\\s+boolean per input"):
        pinn.ShapeConstrainedNetwork(
            [0.0, 0.0], [1.0, 1.0], increasing=(True,), key=getkey()
        )


def test_value_network_hard_condition_is_exact(getkey):
    # V = g on x = 0, by construction, for any weights.
    g = lambda x: jnp.cos(x[1])
    net = pinn.ValueNetwork(
        [0.0, -1.0], [1.0, 1.0], transform=lambda x, n: g(x) + x[0] * n, key=getkey()
    )
    for y in (-0.7, 0.1, 0.9):
        x = jnp.array([0.0, y])
        assert net(x) == g(x)
    skip = pinn.ValueNetwork([0.0], [1.0], linear_skip=True, key=getkey())
    assert skip(jnp.array([0.5])).shape == ()


@hypothesis.settings(deadline=None, max_examples=6)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), concave=st.booleans())
@pytest.mark.slow
def test_shape_constrained_network_has_its_shape(seed, concave):
    key = jr.PRNGKey(seed)
    net = pinn.ShapeConstrainedNetwork(
        [0.0, 0.0],
        [1.0, 1.0],
        width=8,
        depth=3,
        increasing=(True, False),
        concave=concave,
        key=key,
    )
    # Random weights, far from the initialisation.
    params, static = eqx.partition(net, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jr.split(jr.fold_in(key, 1), len(leaves))
    leaves = [2 * jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    net = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
    fn = jax.vmap(net)
    t = jnp.linspace(-0.5, 1.5, 41)
    other = jr.uniform(jr.fold_in(key, 2), ())
    along_first = fn(jnp.stack([t, jnp.full_like(t, other)], axis=1))
    assert jnp.all(jnp.diff(along_first) >= -1e-12)
    if concave:
        direction = jr.normal(jr.fold_in(key, 3), (2,))
        line = fn(0.5 + t[:, None] * direction[None, :])
        assert jnp.all(jnp.diff(line, 2) <= 1e-10)
        _, _, h = pinn.value_and_derivatives(net, jnp.array([0.3, 0.6]))
        assert jnp.max(jnp.linalg.eigvalsh(h)) <= 1e-10


def test_shape_violation():
    good = lambda x: -1 / x[0]  # increasing and concave on x > 0
    bad = lambda x: x[0] ** 2 - 3 * x[0]  # convex, decreasing below 1.5
    x = jnp.array([0.5])
    assert pinn.shape_violation(good, x) == 0.0
    assert pinn.shape_violation(bad, x) > 0.1
    assert pinn.shape_violation(bad, x, increasing=False, concave=False) == 0.0


@pytest.mark.unchecked
def test_accuracy_report():
    rep = pinn.accuracy_report(jnp.array([1.0, 2.2]), jnp.array([1.0, 2.0]))
    assert rep["max_abs"] == pytest.approx(0.2)
    assert rep["max_rel"] == pytest.approx(0.1)
    assert rep["rel_l2"] == pytest.approx(0.2 / np.sqrt(5))
    with pytest.raises(ValueError, match="same points"):
        pinn.accuracy_report(jnp.zeros(2), jnp.zeros(3))


def _fit_problem():
    # Least squares fit of a*x + b*x^2 to 2x - x^2: the minimum is a=2, b=-1.
    params = {"a": jnp.array(0.0), "b": jnp.array(0.0), "name": "not trained"}

    def loss(p, x):
        r = p["a"] * x + p["b"] * x**2 - (2 * x - x**2)
        out = jnp.mean(r**2)
        return out, {"fit": out, "half": 0.5 * out}

    return params, loss


def test_fit_reaches_the_minimum_and_logs(getkey):
    params, loss = _fit_problem()
    sampler = pinn.UniformSampler([-1.0], [1.0], 64)
    seen = []
    out = pinn.fit(
        loss,
        params,
        lambda key, p: sampler(key)[:, 0],
        key=getkey(),
        adam_steps=200,
        learning_rate=0.05,
        lbfgs_steps=60,
        resample_every=50,
        log_every=20,
        progress=seen.append,
    )
    assert out.params["a"] == pytest.approx(2.0, abs=1e-8)
    assert out.params["b"] == pytest.approx(-1.0, abs=1e-8)
    assert out.params["name"] == "not trained"
    h = out.history
    assert set(h) >= {"step", "phase", "loss", "grad_norm", "fit", "half"}
    np.testing.assert_allclose(h["half"], 0.5 * h["fit"])
    assert h["phase"][0] == 0 and h["phase"][-1] == 1
    assert seen[-1]["phase"] == "lbfgs" and len(seen) == len(h["step"])
    assert out.stop_reason in ("max_steps", "converged", "stalled")
    # No target stated: the budget ran with a finite loss, which is success.
    assert out.result == jaxdeq.RESULTS.successful
    assert out.loss == pytest.approx(h["loss"][-1])
    assert out.num_steps == h["step"][-1]


def test_fit_non_finite_keeps_the_last_good_parameters(getkey):
    params = {"w": jnp.array(1.0)}

    def loss(p, x):
        # Finite for w < 3, NaN beyond: Adam with lr 0.5 walks into it.
        out = -p["w"] + jnp.where(p["w"] < 3.0, 0.0, jnp.nan)
        return out, {"loss": out}

    with pytest.raises(pinn.NonFiniteLossError, match="non-finite") as info:
        pinn.fit(
            loss,
            params,
            lambda k, p: None,
            key=getkey(),
            adam_steps=50,
            learning_rate=0.5,
            lbfgs_steps=0,
            log_every=1,
        )
    kept = info.value.result.params["w"]
    assert jnp.isfinite(kept) and kept < 3.0
    assert info.value.result.result == jaxdeq.RESULTS.nonfinite
    with pytest.raises(ValueError, match="must be >= 0"):
        pinn.fit(loss, params, lambda k, p: None, key=getkey(), adam_steps=-1)
    with pytest.raises(ValueError, match="log_every"):
        pinn.fit(loss, params, lambda k, p: None, key=getkey(), log_every=0)


@pytest.mark.slow
def test_fit_reuses_its_compiled_blocks_for_the_same_loss():
    # A caller that fits the same loss function again (the Huggett PINN, at each
    # interest rate) does not trace or compile the Adam and L-BFGS blocks again;
    # what changes between fits comes in through the points.
    traces = []

    def loss(params, target):
        traces.append(None)  # runs when the loss is traced, not when it runs
        value = jnp.sum((params - target) ** 2)
        return value, {"distance": value}

    def run(loss_fn, target):
        return pinn.fit(
            loss_fn,
            jnp.zeros(3),
            lambda key, params: target,
            key=jr.PRNGKey(0),
            adam_steps=4,
            lbfgs_steps=4,
            learning_rate=0.1,
            log_every=2,
        )

    first = run(loss, jnp.full(3, 1.0))
    traced = len(traces)
    assert traced > 0
    second = run(loss, jnp.full(3, 2.0))
    assert len(traces) == traced
    # The same blocks, and a different target: a different fit.
    assert float(second.params[0]) > float(first.params[0]) > 0
    # Another loss function is another program.
    run(lambda p, t: loss(p, t), jnp.full(3, 1.0))
    assert len(traces) > traced
