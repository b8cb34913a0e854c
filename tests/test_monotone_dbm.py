"""Monotone deep Boltzmann machines: mean-field fixed point, exact marginals,
clamping, gradients."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq
from jaxdeq import monotone


# A static step of 1 makes the prox an exact softmax: quick to compile.
_TIGHT = jaxdeq.PeacemanRachford(rtol=1e-12, atol=1e-14, alpha=1.0)


def _softmax_groups(v, groups):
    ((count, size),) = groups
    return jax.nn.softmax(v.reshape(count, size), axis=-1).reshape(-1)


def _model(key, groups=((3, 3), (1, 4)), scale=3.0, margin=0.2):
    k1, k2 = jr.split(key)
    dbm = monotone.MonotoneDBM(
        groups, margin=margin, solver=_TIGHT, max_steps=2000, key=k1
    )
    n = dbm.size
    return eqx.tree_at(
        lambda d: (d.A, d.bias), dbm, (scale * dbm.A, jr.normal(k2, (n,)))
    )


def test_coupling_is_monotone_symmetric_and_zero_within_groups(getkey):
    for scale in (0.1, 1.0, 30.0):
        dbm = _model(getkey(), scale=scale)
        w = dbm.coupling()
        np.testing.assert_allclose(w, w.T, atol=1e-14)
        eig = jnp.linalg.eigvalsh(jnp.eye(dbm.size) - w)
        assert eig[0] >= dbm.margin - 1e-10 * (1 + scale**2)
        for start, size in ((0, 3), (3, 3), (6, 3), (9, 4)):
            block = w[start : start + size, start : start + size]
            assert float(jnp.max(jnp.abs(block))) == 0.0


@pytest.mark.slow
def test_mean_field_equations_and_clamping(getkey):
    dbm = _model(getkey())
    q, report = dbm()
    assert report.successful
    w, b = dbm.coupling(), dbm.bias
    pre = w @ q + b
    expected = jnp.concatenate(
        [
            jax.nn.softmax(pre[:9].reshape(3, 3), axis=-1).reshape(-1),
            jax.nn.softmax(pre[9:]),
        ]
    )
    np.testing.assert_allclose(q, expected, atol=1e-12)
    # Clamp groups 0 and 3 (the 4-state group); the rest is the conditional mean
    # field.
    observed = jnp.array([True, False, False, True])
    values = monotone.one_hot_groups(jnp.array([2, -1, -1, 1]), dbm.groups)
    q, _ = dbm(values, observed)
    np.testing.assert_allclose(q[:3], jnp.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(q[9:], jnp.array([0.0, 1.0, 0.0, 0.0]))
    pre = w @ q + b
    np.testing.assert_allclose(
        q[3:9], jax.nn.softmax(pre[3:9].reshape(2, 3), axis=-1).reshape(-1), atol=1e-12
    )
    # Any solver reaches the same unique point.
    problem = dbm.problem(values, observed)
    for solver in (
        jaxdeq.PeacemanRachford(rtol=1e-12, atol=1e-14),  # alpha from the operator
        jaxdeq.ForwardBackward(rtol=1e-12, atol=1e-14, alpha=0.125),
        jaxdeq.Anderson(rtol=1e-12, atol=1e-14),
    ):
        other = monotone.solve(problem, solver, max_steps=20000).value
        np.testing.assert_allclose(other, q, atol=1e-10)


@pytest.mark.slow
def test_marginals_beat_naive_mean_field_on_exact_model(getkey):
    # Eight binary variables with strong frustrated couplings: the naive parallel
    # mean-field iteration falls into a period-2 oscillation.
    groups = ((8, 2),)
    k1, k2, k3 = jr.split(jr.PRNGKey(1), 3)
    dbm = monotone.MonotoneDBM(
        groups, margin=0.05, solver=_TIGHT, max_steps=2000, key=k1
    )
    u = jr.normal(k1, (3,))
    v = jnp.tile(jnp.array([1.0, -1.0]), 8) + 0.1 * jr.normal(k2, (16,))
    a = 5 * jnp.outer(u, v) + 0.3 * jr.normal(k3, (3, 16))
    dbm = eqx.tree_at(lambda d: (d.A, d.bias), dbm, (a, 0.5 * jr.normal(k3, (16,))))

    configs = jnp.array(list(itertools.product(range(2), repeat=8)))
    x = jax.vmap(lambda c: monotone.one_hot_groups(c, groups))(configs)
    probs = jax.nn.softmax(jax.vmap(dbm.log_potential)(x))
    exact = probs @ x

    q, report = dbm()
    assert report.successful
    w, b = dbm.coupling(), dbm.bias

    def naive(q, _):
        q = _softmax_groups(w @ q + b, groups)
        return q, q

    _, history = jax.lax.scan(naive, jnp.full((16,), 0.5), None, length=200)
    assert float(jnp.max(jnp.abs(history[-1] - history[-2]))) > 0.1  # oscillates
    ours = float(jnp.max(jnp.abs(q - exact)))
    theirs = float(jnp.max(jnp.abs(history[-1] - exact)))
    assert ours < 0.1
    assert ours < theirs / 5


def _loss(params, dbm, adjoint):
    a, bias = params
    dbm = eqx.tree_at(lambda d: (d.A, d.bias, d.adjoint), dbm, (a, bias, adjoint))
    observed = jnp.array([True, False, False, False])
    values = monotone.one_hot_groups(jnp.array([1, -1, -1, -1]), dbm.groups)
    q, _ = dbm(values, observed)
    return -jnp.sum(jnp.log(q[9:]) * jnp.array([0.1, 0.2, 0.3, 0.4]))


def test_gradients(getkey):
    dbm = _model(getkey(), scale=2.0)
    params = (dbm.A, dbm.bias)
    adjoints = {
        "splitting": jaxdeq.SplittingAdjoint(rtol=1e-12, max_steps=5000),
        "implicit": jaxdeq.ImplicitAdjoint(
            linear_solver=jaxdeq.Anderson(rtol=1e-12, atol=0.0)
        ),
    }
    loss = eqx.filter_jit(_loss)
    grad = eqx.filter_jit(jax.grad(_loss))
    grads = {name: grad(params, dbm, adj) for name, adj in adjoints.items()}
    for name in ("implicit",):
        for g, h in zip(
            jax.tree.leaves(grads["splitting"]), jax.tree.leaves(grads[name])
        ):
            np.testing.assert_allclose(g, h, rtol=1e-7, atol=1e-10)
    eps = 1e-5
    for _ in range(2):
        da = jr.normal(getkey(), dbm.A.shape)
        db = jr.normal(getkey(), dbm.bias.shape)
        plus = loss((dbm.A + eps * da, dbm.bias + eps * db), dbm, adjoints["splitting"])
        minus = loss(
            (dbm.A - eps * da, dbm.bias - eps * db), dbm, adjoints["splitting"]
        )
        ga, gb = grads["splitting"]
        np.testing.assert_allclose(
            jnp.sum(ga * da) + jnp.sum(gb * db), (plus - minus) / (2 * eps), rtol=1e-6
        )


@pytest.mark.slow
def test_batched_masks_float32(getkey):
    dbm = monotone.MonotoneDBM(
        ((5, 3), (1, 4)), margin=0.3, key=getkey(), dtype=jnp.float32
    )
    cats = jr.randint(getkey(), (7, 6), 0, 3)
    values = jax.vmap(lambda c: monotone.one_hot_groups(c, dbm.groups))(cats)
    observed = jr.bernoulli(getkey(), 0.5, (7, 6))
    q, report = eqx.filter_jit(jax.vmap(dbm))(values.astype(jnp.float32), observed)
    assert q.dtype == jnp.float32 and q.shape == (7, dbm.size)
    assert isinstance(report, jaxdeq.Report) and report.num_steps.shape == (7,)
    assert bool(jnp.all(report.successful))
    sums = jnp.concatenate(
        [q[:, :15].reshape(7, 5, 3).sum(-1), q[:, 15:].sum(-1, keepdims=True)], axis=1
    )
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)


def test_dbm_errors(getkey):
    with pytest.raises(ValueError, match="margin"):
        monotone.MonotoneDBM(((2, 2),), margin=1.0, key=getkey())
    with pytest.raises(ValueError, match="margin"):
        monotone.MonotoneDBM(((2, 2),), margin=0.0, key=getkey())
    dbm = monotone.MonotoneDBM(((2, 2),), key=getkey())
    with pytest.raises(ValueError, match="together"):
        dbm(jnp.zeros(4))
    with pytest.raises(ValueError, match="categories"):
        monotone.one_hot_groups(jnp.array([0, 1, 1]), ((2, 2),))
