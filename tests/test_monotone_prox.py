"""The group softmax of a monotone DBM: it is the prox, its derivative is right, and
its linearisation is the prox of the Jacobian."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from jaxdeq.monotone._categorical import GroupSoftmax


# Blocks of several sizes, two consecutive blocks of one size (merged internally).
_GROUPS = ((3, 2), (2, 3), (2, 4), (1, 4), (1, 10))
_ALPHAS = (0.05, 0.125, 0.5, 0.9, 1.0, 2.0, 10.0)
_TOL = {jnp.float64: 1e-12, jnp.float32: 1e-6}


def _split(x: np.ndarray, groups) -> list[np.ndarray]:
    out, start = [], 0
    for count, size in groups:
        for _ in range(count):
            out.append(np.asarray(x[..., start : start + size], np.float64))
            start += size
    return out


def _kkt_residual(v, p, alpha, groups) -> tuple[float, float]:
    """`(max |sum p - 1|, scaled stationarity residual)` over all groups.

    Stationarity of 1/2 |p - v|^2 + alpha f(p) on the simplex: g_k = p_k - v_k +
    alpha (log p_k + 1 - p_k) is the same (= -nu) for every k. Checked where p_k is
    a normal number, relative to 1 + alpha + max |v| (the size of the terms);
    where p_k is below that, the KKT equation must put it there.
    """
    tiny = 1e-30
    mass, stationarity = 0.0, 0.0
    for vg, pg in zip(_split(v, groups), _split(p, groups)):
        assert np.all(pg >= 0)
        mass = max(mass, float(np.max(np.abs(pg.sum(-1) - 1))))
        normal = pg >= tiny
        log_p = np.log(np.where(normal, pg, 1.0))
        g = pg - vg + alpha * (log_p + 1 - pg)
        weights = np.where(normal, pg, 0)
        g_bar = np.sum(weights * g, -1, keepdims=True) / np.sum(
            weights, -1, keepdims=True
        )
        scale = 1 + alpha + np.max(np.abs(vg), -1, keepdims=True)
        res = np.where(normal, np.abs(g - g_bar), 0) / scale
        # An underflowed p_k must have alpha log p_k = t_k far below alpha log(tiny).
        t = vg - alpha + g_bar
        res_small = np.where(normal, 0, np.maximum(t - alpha * np.log(tiny), 0))
        stationarity = max(stationarity, float(np.max(res)), float(np.max(res_small)))
    return mass, stationarity


def _rng(getkey) -> np.random.Generator:
    # Inputs are drawn with NumPy: eager jax.random calls would each compile.
    return np.random.default_rng(np.asarray(getkey()))


def _hard_inputs(rng, n, batch=24) -> np.ndarray:
    """Uniform and Gaussian entries up to +-50, ties, and near-one-hot states."""
    uniform = rng.uniform(-50.0, 50.0, (batch, n))
    scaled = uniform * rng.uniform(0.0, 1.0, (batch, 1))
    rounded = np.round(uniform / 25) * 25
    gaussian = rng.normal(0.0, 1.0, (batch, n))
    constant = np.stack([np.zeros(n), np.full(n, 50.0), np.full(n, -50.0)])
    alternating = np.where(np.arange(n) % 2 == 0, 50.0, -50.0)
    return np.concatenate(
        [
            uniform,
            scaled,
            rounded,
            gaussian,
            constant,
            np.stack([alternating, -alternating]),
        ]
    )


_PROX = GroupSoftmax(_GROUPS)
# Module level, so that each compiles once for the whole file (alpha is traced).
_prox_shared_alpha = jax.jit(jax.vmap(_PROX, in_axes=(0, None)))
_prox_batched = jax.jit(jax.vmap(_PROX))
_prox_exact = jax.jit(jax.vmap(lambda x: _PROX(x, 1.0)))
_jacobians = jax.jit(
    lambda v, a: (jax.jacfwd(_PROX, argnums=(0, 1))(v, a), jax.jacrev(_PROX)(v, a))
)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_simplex_and_kkt(dtype, getkey):
    v = jnp.asarray(_hard_inputs(_rng(getkey), _PROX.size), dtype)
    for alpha in _ALPHAS:
        a = jnp.asarray(alpha, dtype)
        p = _prox_shared_alpha(v, a)
        assert p.dtype == dtype
        mass, stationarity = _kkt_residual(
            np.asarray(v), np.asarray(p), float(a), _GROUPS
        )
        assert mass <= 10 * _TOL[dtype], alpha
        assert stationarity <= _TOL[dtype], alpha
    # The exact alpha = 1 path.
    p = _prox_exact(v)
    mass, stationarity = _kkt_residual(np.asarray(v), np.asarray(p), 1.0, _GROUPS)
    assert mass <= 10 * _TOL[dtype]
    assert stationarity <= _TOL[dtype]


def test_is_the_prox():
    """Against a direct minimisation of 1/2 |p - v|^2 + alpha f(p) on the simplex,
    for two groups of size 3 (the layout of equal sizes, which reshapes)."""
    prox = GroupSoftmax(((2, 3),))
    rng = np.random.default_rng(0)
    cases = [(v, alpha) for v in rng.normal(0, 1.5, (3, 6)) for alpha in _ALPHAS[::2]]

    def objective(p, v, alpha):
        return 0.5 * np.sum((p - v) ** 2) + alpha * (
            np.sum(p * np.log(p)) - 0.5 * np.sum(p**2)
        )

    def gradient(p, v, alpha):
        return p - v + alpha * (np.log(p) + 1 - p)

    got = jax.jit(jax.vmap(prox))(
        jnp.asarray(np.stack([v for v, _ in cases])),
        jnp.asarray([alpha for _, alpha in cases]),
    )
    for (v, alpha), p in zip(cases, np.asarray(got)):
        for group in (slice(0, 3), slice(3, 6)):
            result = scipy.optimize.minimize(
                objective,
                np.full(3, 1 / 3),
                args=(v[group], alpha),
                jac=gradient,
                method="SLSQP",
                bounds=[(1e-12, 1)] * 3,
                constraints=[{"type": "eq", "fun": lambda p: np.sum(p) - 1}],
                options={"ftol": 1e-15, "maxiter": 500},
            )
            assert result.success
            np.testing.assert_allclose(p[group], result.x, atol=1e-6)
            assert objective(p[group], v[group], alpha) <= result.fun + 1e-12


def test_alpha_one_is_softmax(getkey):
    v = _hard_inputs(_rng(getkey), _PROX.size)
    expected = []
    for x in _split(v, _GROUPS):
        e = np.exp(x - x.max(-1, keepdims=True))
        expected.append(e / e.sum(-1, keepdims=True))
    expected = np.concatenate(expected, axis=-1)
    v = jnp.asarray(v)
    np.testing.assert_allclose(_prox_exact(v), expected, rtol=1e-15, atol=0)
    traced = _prox_shared_alpha(v, jnp.asarray(1.0))
    np.testing.assert_allclose(traced, expected, rtol=0, atol=1e-13)


def test_observed_groups_are_clamped(getkey):
    rng = _rng(getkey)
    # Groups 0, 4 and 8 (of sizes 2, 3 and 10) are observed, each in one state.
    observed = np.isin(np.arange(_PROX.num_groups), [0, 4, 8])
    clamped = observed[_PROX.group_ids]
    values = rng.normal(size=_PROX.size)  # ignored outside the observed groups
    values[clamped] = 0.0
    for group in (0, 4, 8):
        units = np.flatnonzero(_PROX.group_ids == group)
        values[units[rng.integers(len(units))]] = 1.0
    prox = GroupSoftmax(_GROUPS, jnp.asarray(observed), jnp.asarray(values))
    v = jnp.asarray(_hard_inputs(rng, _PROX.size))

    @jax.jit
    @jax.vmap
    def evaluate(x):
        half = jnp.asarray(0.5)
        jac = jax.jacfwd(prox)(x, half)
        lin = jax.jacfwd(prox.linearise(x))(x, half)
        return prox(x, half), prox(x, 1.0), jac, lin

    p, exact, jac, lin = map(np.asarray, evaluate(v))
    assert np.all(p[:, clamped] == values[clamped])
    assert np.all(exact[:, clamped] == values[clamped])
    free = np.asarray(_prox_shared_alpha(v, jnp.asarray(0.5)))[:, ~clamped]
    np.testing.assert_allclose(p[:, ~clamped], free, rtol=1e-14)
    for j in (jac, lin):
        assert np.all(j[:, clamped] == 0) and np.all(j[:, :, clamped] == 0)


def test_derivative_matches_finite_differences(getkey):
    rng = _rng(getkey)
    n = _PROX.size
    v = 3 * rng.normal(size=n)
    eps = 1e-6
    eye = np.eye(n)
    points = np.concatenate([v + eps * eye, v - eps * eye, [v, v]])
    # Padded to the batch size of the other tests, to reuse their compilation.
    batch = len(_hard_inputs(rng, n))
    points = jnp.asarray(np.concatenate([points, np.tile(v, (batch - 2 * n - 2, 1))]))
    for alpha in (0.125, 0.7, 1.0, 2.5):
        a = np.full(batch, alpha)
        a[2 * n : 2 * n + 2] += [eps, -eps]
        out = np.asarray(_prox_batched(points, jnp.asarray(a)))
        fd_v = (out[:n] - out[n : 2 * n]).T / (2 * eps)
        fd_alpha = (out[2 * n] - out[2 * n + 1]) / (2 * eps)
        (jac_v, jac_alpha), jac_rev = _jacobians(jnp.asarray(v), jnp.asarray(alpha))
        np.testing.assert_allclose(jac_v, fd_v, atol=1e-8)
        np.testing.assert_allclose(jac_alpha, fd_alpha, atol=1e-8)
        # Reverse mode transposes the same implicit rule.
        np.testing.assert_allclose(jac_rev, jac_v, atol=1e-14)


def _dense_jacobian(s: np.ndarray, groups) -> np.ndarray:
    blocks = [np.diag(x) - np.outer(x, x) for x in _split(s, groups)]
    n = sum(b.shape[0] for b in blocks)
    out, start = np.zeros((n, n)), 0
    for b in blocks:
        out[start : start + len(b), start : start + len(b)] = b
        start += len(b)
    return out


@pytest.mark.parametrize("groups", [_GROUPS, ((4, 3),)])
def test_linearise(groups, getkey):
    prox = GroupSoftmax(groups)
    rng = _rng(getkey)
    v = jnp.asarray(5 * rng.normal(size=prox.size))
    x = jnp.asarray(rng.normal(size=prox.size))
    lin = prox.linearise(v)
    assert lin.linearise(x) is lin

    @jax.jit
    def evaluate(v, x, alphas):
        linearised = prox.linearise(v)
        steps = jax.vmap(linearised, in_axes=(None, 0))(x, alphas)
        _, tangent = jax.jvp(lambda u: prox(u, 1.0), (v,), (x,))
        return prox(v, 1.0), steps, linearised(x, 1.0), tangent

    s, steps, step_one, tangent = evaluate(v, x, jnp.asarray(_ALPHAS))
    jac = _dense_jacobian(np.asarray(s), groups)
    eye = np.eye(prox.size)
    for alpha, got in zip(_ALPHAS, steps):
        expected = jac @ np.linalg.solve(alpha * eye + (1 - alpha) * jac, x)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(step_one, tangent, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_jit_vmap_dtypes(dtype, getkey):
    v = jnp.asarray(_hard_inputs(_rng(getkey), _PROX.size), dtype)
    # A batched alpha turns the branch on alpha < 1 into a select.
    alphas = jnp.asarray(np.resize(_ALPHAS, len(v)), dtype)
    batched = _prox_batched(v, alphas)
    assert batched.dtype == dtype
    tol = {jnp.float64: 1e-13, jnp.float32: 1e-6}[dtype]
    for alpha in _ALPHAS:
        a = jnp.asarray(alpha, dtype)
        rows = np.flatnonzero(np.asarray(alphas) == np.asarray(a))
        expected = np.asarray(_prox_shared_alpha(v, a))[rows]
        np.testing.assert_allclose(np.asarray(batched)[rows], expected, atol=tol)
    lin = eqx.filter_jit(jax.vmap(lambda u, x: _PROX.linearise(u)(x, 0.5)))(v, v)
    assert lin.dtype == dtype and lin.shape == v.shape


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(groups=()), TypeError),
        (dict(groups=(3, 4)), TypeError),
        (dict(groups=((2.0, 3),)), TypeError),
        (dict(groups=((2, 1),)), ValueError),
        (dict(groups=((0, 3),)), ValueError),
        (dict(groups=((2, 3),), observed=jnp.array([True, False])), ValueError),
        (dict(groups=((2, 3),), values=jnp.zeros(6)), ValueError),
        (
            dict(groups=((2, 3),), observed=jnp.array([1, 0]), values=jnp.zeros(6)),
            ValueError,
        ),
        (
            dict(groups=((2, 3),), observed=jnp.array([True]), values=jnp.zeros(6)),
            ValueError,
        ),
        (
            dict(groups=((2, 3),), observed=jnp.array([True, False]), values=None),
            ValueError,
        ),
        (
            dict(
                groups=((2, 3),), observed=jnp.array([True, False]), values=jnp.zeros(5)
            ),
            ValueError,
        ),
    ],
)
@pytest.mark.unchecked
def test_bad_constructor(kwargs, error):
    with pytest.raises(error, match="GroupSoftmax"):
        GroupSoftmax(**kwargs)


@pytest.mark.unchecked
def test_bad_call_and_structure():
    prox = GroupSoftmax([[2, 3], [1, 4]])
    assert prox.groups == ((2, 3), (1, 4))
    assert (prox.size, prox.num_groups) == (10, 3)
    assert prox.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="shape"):
        prox(jnp.zeros(9), 0.5)
    with pytest.raises(ValueError, match="shape"):
        prox(jnp.zeros((2, 10)), 0.5)
    with pytest.raises(ValueError, match="floating"):
        prox(jnp.zeros(10, jnp.int32), 0.5)
    with pytest.raises(ValueError, match="positive"):
        prox(jnp.zeros(10), 0.0)
