"""Heterogeneous agents in general equilibrium: the block-tridiagonal solver, the
scalar and pseudo-transient root finders, the finite-difference household (against
the cake-eating closed form and an independent dense NumPy implementation of the
same scheme), market clearing, implicit derivatives of the equilibrium against
central finite differences, estimation, and the errors for bad input.

The economies are small (100 grid points) and shared, so that each compiled
function is compiled once."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
import scipy.linalg

import jaxdeq
from jaxdeq import econ


# --- linear algebra -------------------------------------------------------------


def _random_blocks(key, n, j):
    k1, k2, k3 = jr.split(key, 3)
    lower = jr.normal(k1, (n - 1, j, j))
    upper = jr.normal(k2, (n - 1, j, j))
    # Diagonally dominant, so that block LU without pivoting is stable.
    diagonal = jr.normal(k3, (n, j, j)) + 6.0 * j * jnp.eye(j)[None]
    return diagonal, lower, upper


def _dense(diagonal, lower, upper):
    n, j, _ = diagonal.shape
    m = np.zeros((n * j, n * j))
    for i in range(n):
        m[i * j : (i + 1) * j, i * j : (i + 1) * j] = diagonal[i]
        if i > 0:
            m[i * j : (i + 1) * j, (i - 1) * j : i * j] = lower[i - 1]
        if i < n - 1:
            m[i * j : (i + 1) * j, (i + 1) * j : (i + 2) * j] = upper[i]
    return m


@pytest.mark.parametrize("j", [1, pytest.param(3, marks=pytest.mark.slow)])
def test_block_tridiagonal_matches_dense(getkey, j):
    n = 7
    diagonal, lower, upper = _random_blocks(getkey(), n, j)
    op = jaxdeq.BlockTridiagonalLinearOperator(diagonal, lower, upper)
    dense = _dense(np.asarray(diagonal), np.asarray(lower), np.asarray(upper))
    np.testing.assert_allclose(op.as_matrix(), dense, rtol=0, atol=0)
    b = jr.normal(getkey(), (n, j))
    x = lx.linear_solve(op, b, jaxdeq.BlockTridiagonal()).value
    # Well-conditioned (diagonally dominant): the solve is accurate to rounding.
    np.testing.assert_allclose(
        x.reshape(-1), np.linalg.solve(dense, b.reshape(-1)), rtol=1e-13
    )
    xt = lx.linear_solve(op.transpose(), b, jaxdeq.BlockTridiagonal()).value
    np.testing.assert_allclose(
        xt.reshape(-1), np.linalg.solve(dense.T, b.reshape(-1)), rtol=1e-13
    )
    # The blocks of any lineax operator with this structure, by coloured matvecs.
    found = jaxdeq.block_tridiagonal(
        lx.FunctionLinearOperator(op.mv, jax.eval_shape(lambda: b))
    )
    for got, want in zip(
        (found.diagonal, found.lower, found.upper), (diagonal, lower, upper)
    ):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)

    # Reverse-mode through the solve matches the dense solve's.
    def loss(d, solve):
        return jnp.sum(jnp.sin(solve(d)))

    def ours(d):
        return lx.linear_solve(
            jaxdeq.BlockTridiagonalLinearOperator(d, lower, upper),
            b,
            jaxdeq.BlockTridiagonal(),
        ).value

    def theirs(d):
        m = jaxdeq.BlockTridiagonalLinearOperator(d, lower, upper).as_matrix()
        return jnp.linalg.solve(m, b.reshape(-1))

    np.testing.assert_allclose(
        jax.grad(loss)(diagonal, ours), jax.grad(loss)(diagonal, theirs), rtol=1e-11
    )


def test_block_tridiagonal_rejects_bad_shapes():
    with pytest.raises(ValueError):
        jaxdeq.BlockTridiagonalLinearOperator(
            jnp.ones((4, 2, 2)), jnp.ones((4, 2, 2)), jnp.ones((3, 2, 2))
        )


# --- root finders ---------------------------------------------------------------


def test_bracketed_newton_known_roots():
    solver = jaxdeq.BracketedNewton(rtol=1e-14, atol=1e-14)
    sol = optx.root_find(
        lambda x, _: jnp.cos(x) - x,
        solver,
        jnp.array(0.2),
        options=dict(lower=0.0, upper=1.0),
    )
    np.testing.assert_allclose(sol.value, 0.7390851332151607, rtol=0, atol=1e-15)

    # Implicit derivative of the root of x^3 = theta: d theta^(1/3) / d theta.
    def root(theta):
        return optx.root_find(
            lambda x, t: x**3 - t,
            solver,
            jnp.array(1.0),
            args=theta,
            options=dict(lower=0.0, upper=3.0),
        ).value

    theta = jnp.array(2.0)
    # The solver stops when its last step is below 1e-14 + 1e-14|x|.
    np.testing.assert_allclose(root(theta), 2.0 ** (1 / 3), rtol=1e-13)
    np.testing.assert_allclose(jax.grad(root)(theta), 2.0 ** (-2 / 3) / 3, rtol=1e-12)
    # A start outside the bracket and a bracket given high-to-low still work.
    sol = optx.root_find(
        lambda x, t: x**3 - t,
        solver,
        jnp.array(10.0),
        args=theta,
        options=dict(lower=3.0, upper=0.0),
    )
    np.testing.assert_allclose(sol.value, 2.0 ** (1 / 3), rtol=1e-13)

    # No sign change on the bracket: a clear failure, not a wrong root.
    bad = optx.root_find(
        lambda x, _: x**2 + 1.0,
        solver,
        jnp.array(0.5),
        options=dict(lower=0.0, upper=1.0),
        throw=False,
    )
    assert bad.result == optx.RESULTS.nonlinear_divergence
    with pytest.raises(ValueError, match="bracket"):
        optx.root_find(lambda x, _: x, solver, jnp.array(0.5))


def test_pseudo_transient_newton_known_root(getkey):
    # f(y) = A y + y^3 - b with A an M-matrix: a unique root, constructed to be y*.
    n = 20
    a = 2.0 * jnp.eye(n) - 0.5 * jnp.eye(n, k=1) - 0.5 * jnp.eye(n, k=-1)
    y_star = jr.normal(getkey(), (n,))
    b = a @ y_star + y_star**3

    def fn(y, b):
        return a @ y + y**3 - b

    solver = jaxdeq.PseudoTransientNewton(rtol=1e-12, atol=1e-12, delta=10.0)
    sol = optx.root_find(fn, solver, jnp.zeros(n), args=b, max_steps=100)
    np.testing.assert_allclose(sol.value, y_star, rtol=1e-11, atol=1e-12)
    # Implicit derivative: dy*/db = (A + 3 diag(y*^2))^{-1}.
    jac = jax.jacfwd(
        lambda b: optx.root_find(fn, solver, jnp.zeros(n), args=b, max_steps=100).value
    )(b)
    np.testing.assert_allclose(
        jac,
        np.linalg.inv(np.asarray(a) + 3 * np.diag(np.asarray(y_star) ** 2)),
        atol=1e-10,
    )


# --- households -----------------------------------------------------------------


@pytest.mark.slow
def test_cake_eating_closed_form_first_order():
    """No income, one state: the household eats a cake that earns r. With
    c = kappa a, kappa = (rho - (1 - gamma) r)/gamma, V = kappa^-gamma a^(1-gamma) /
    (1 - gamma). The borrowing limit a_min = 1e-3 replaces the singular a = 0; its
    effect on V(a) is discounted by (a_min/a)^(rho/(kappa - r)) ~ 1e-13 on
    a >= 0.5. The upwind scheme is first order: the error halves with the step."""
    gamma, rho, r = 2.0, 0.05, 0.03
    kappa = (rho - (1 - gamma) * r) / gamma
    errors = []
    for n in (100, 200, 400):
        household = econ.Household(
            z=[0.0],
            generator=[[0.0]],
            gamma=gamma,
            rho=rho,
            a_min=1e-3,
            a_max=4.0,
            grid_size=n,
        )
        sol = econ.solve_household(household, econ.Prices(jnp.asarray(r)))
        a = sol.grid
        keep = a >= 0.5
        v_true = kappa ** (-gamma) * a ** (1 - gamma) / (1 - gamma)
        ev = jnp.max(jnp.abs(sol.v[:, 0] - v_true)[keep] / jnp.abs(v_true[keep]))
        ec = jnp.max(jnp.abs(sol.c[:, 0] - kappa * a)[keep] / (kappa * a[keep]))
        assert float(sol.hjb_residual) < 1e-8
        errors.append((float(ev), float(ec)))
    # Measured: V 2.3e-2, 1.3e-2, 6.5e-3; c 6.0e-2, 3.2e-2, 1.6e-2.
    assert errors[-1][0] < 1e-2 and errors[-1][1] < 2e-2
    for coarse, fine in zip(errors[:-1], errors[1:]):
        for e_coarse, e_fine in zip(coarse, fine):
            assert 1.8 < e_coarse / e_fine < 2.2


def _reference_household(z, lam, gamma, rho, r, a_min, a_max, n, delta=1000.0):
    """The implicit upwind scheme of Achdou et al. (2022), written directly with
    dense NumPy matrices: value iteration with step delta, then the density as the
    null vector of A^T."""
    a = np.linspace(a_min, a_max, n)
    da = a[1] - a[0]
    zz = np.asarray(z)[None, :]
    y = zz + r * a[:, None]
    switch = np.array([[-lam[0], lam[0]], [lam[1], -lam[1]]])
    big_lambda = np.kron(switch, np.eye(n))  # state-major ordering
    v = y ** (1 - gamma) / (1 - gamma) / rho
    for _ in range(200):
        dvf = np.empty_like(v)
        dvb = np.empty_like(v)
        dvf[:-1] = (v[1:] - v[:-1]) / da
        dvf[-1] = y[-1] ** (-gamma)
        dvb[1:] = (v[1:] - v[:-1]) / da
        dvb[0] = y[0] ** (-gamma)
        sf = y - dvf ** (-1 / gamma)
        sb = y - dvb ** (-1 / gamma)
        forward = sf > 0
        backward = (sb < 0) & ~forward
        s = np.where(forward, sf, np.where(backward, sb, 0.0))
        c = y - s
        up = np.where(forward, sf, 0.0) / da
        down = np.where(backward, -sb, 0.0) / da
        blocks = []
        for k in range(2):
            blocks.append(
                np.diag(-(up[:, k] + down[:, k]))
                + np.diag(up[:-1, k], 1)
                + np.diag(down[1:, k], -1)
            )
        generator = scipy.linalg.block_diag(*blocks) + big_lambda
        u = (c ** (1 - gamma) / (1 - gamma)).T.reshape(-1)
        vv = v.T.reshape(-1)
        lhs = (1 / delta + rho) * np.eye(2 * n) - generator
        v_new = np.linalg.solve(lhs, u + vv / delta).reshape(2, n).T
        change = np.max(np.abs(v_new - v))
        v = v_new
        if change < 1e-11:
            break
    null = scipy.linalg.null_space(generator.T)
    g = null[:, 0] / np.sum(null[:, 0]) / da
    return a, v, c, s, g.reshape(2, n).T


@pytest.fixture(scope="module")
def huggett():
    return econ.Huggett(grid_size=100)


# The 100-point grids of these tests are deliberately coarse: no grid warning.
QUIET = econ.FiniteDifference(check_grid=False)


def test_household_matches_dense_reference(huggett):
    r = 0.03
    sol = econ.solve_household(huggett.household(), huggett.prices(jnp.asarray(r)))
    a, v, c, s, g = _reference_household(
        (0.1, 0.2), (1.2, 1.2), 2.0, 0.05, r, -0.15, 5.0, 100
    )
    np.testing.assert_allclose(sol.grid, a, rtol=4e-16, atol=1e-15)  # linspace: an ulp
    # Both iterate the same scheme to convergence (ours by Newton, the reference by
    # the implicit iteration to |dV| < 1e-11): agreement to a few 1e-10 relative.
    np.testing.assert_allclose(sol.v, v, rtol=1e-9)
    np.testing.assert_allclose(sol.c, c, rtol=1e-8)
    np.testing.assert_allclose(sol.s, s, atol=1e-9)
    np.testing.assert_allclose(sol.density, g, rtol=1e-7, atol=1e-9)

    # The density: non-negative, integrates to one, carries the mass point at the
    # borrowing limit (the low-income state saves down to it and stays).
    assert jnp.all(sol.density >= 0)
    np.testing.assert_allclose(jnp.sum(sol.density) * sol.step, 1.0, rtol=1e-13)
    assert float(sol.mass_at_limit[0]) > 0.05
    assert float(sol.s[1, 0]) < 0  # the low type dissaves down to the limit
    assert float(sol.s[0, 1]) > 0  # the high type saves away from it
    assert float(sol.hjb_residual) < 1e-10 and float(sol.kfe_residual) < 1e-12


@pytest.mark.slow
def test_mass_point_converges_under_refinement():
    """The low-income type's mass at the borrowing limit is a point mass: it stays
    of order one as the grid is refined, while the mass of an interior grid point
    and the high type's mass at the limit (a density there) shrink with the step.
    Measured at r = 0.03 for N = 200, 400, 800: low type at the limit 0.0429,
    0.0330, 0.0269 (approaching its limit at order ~0.7); its third grid point
    0.0440, 0.0238, 0.0127; the high type at the limit 0.0139, 0.0063, 0.0028."""
    at_limit, interior, high = [], [], []
    for n in (200, 400, 800):
        h = econ.Huggett(grid_size=n).household()
        sol = econ.solve_household(h, econ.Prices(jnp.asarray(0.03)))
        at_limit.append(float(sol.mass_at_limit[0]))
        interior.append(float(sol.density[2, 0] * sol.step))
        high.append(float(sol.mass_at_limit[1]))
    for k in range(2):
        assert at_limit[k] / at_limit[k + 1] < 1.35
        assert interior[k] / interior[k + 1] > 1.7
        assert high[k] / high[k + 1] > 1.9
    d1, d2 = at_limit[0] - at_limit[1], at_limit[1] - at_limit[2]
    assert d2 > 0 and d1 / d2 > 1.4  # converging
    assert at_limit[2] > 0.02


# --- general equilibrium --------------------------------------------------------


@pytest.mark.slow
def test_huggett_equilibrium_and_implicit_derivatives(huggett):
    # 100 points: deliberately coarse (r* is ~45% off the grid limit), to be fast.
    eq = econ.solve_equilibrium(huggett, QUIET)
    assert eq.result == jaxdeq.RESULTS.successful
    assert abs(float(eq.excess_supply)) < 1e-8
    lo, hi = huggett.bracket()
    assert lo < float(eq.r) < hi
    np.testing.assert_allclose(eq.aggregates["assets"], 0.0, atol=1e-8)

    def equilibrium(rho):
        e = eqx.tree_at(lambda e: e.rho, huggett, rho)
        sol = econ.solve_equilibrium(e, QUIET)
        return jnp.stack(
            [sol.r, sol.aggregates["mass_at_limit"], sol.household.c[50, 0]]
        )

    rho = jnp.asarray(0.05)
    implicit = jax.jacfwd(equilibrium)(rho)
    h = 1e-5
    central = (equilibrium(rho + h) - equilibrium(rho - h)) / (2 * h)
    # Central differences are accurate to O(h^2) ~ 1e-9 relative here, and the
    # equilibria are solved to |S| ~ 1e-14, so 1e-6 is loose enough for rounding.
    np.testing.assert_allclose(implicit, central, rtol=1e-6)
    assert float(implicit[0]) > 0  # more impatience -> higher rate


@pytest.mark.slow
def test_aiyagari_equilibrium_clears_capital_market():
    economy = econ.Aiyagari(grid_size=100)
    eq = econ.solve_equilibrium(economy, QUIET)
    agg = eq.aggregates
    assert abs(float(eq.excess_supply)) < 1e-8
    # Capital supplied by households equals the firm's demand at r*, and the wage
    # is the firm's marginal product of labour there.
    np.testing.assert_allclose(agg["capital"], eq.household.assets, rtol=1e-8)
    np.testing.assert_allclose(agg["capital"], economy.capital_demand(eq.r), rtol=1e-8)
    k, labour = agg["capital"], agg["labour"]
    np.testing.assert_allclose(
        agg["output"],
        economy.productivity * k**economy.alpha * labour ** (1 - economy.alpha),
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        eq.prices.w, (1 - economy.alpha) * agg["output"] / labour, rtol=1e-10
    )
    np.testing.assert_allclose(
        eq.r, economy.alpha * agg["output"] / k - economy.delta, rtol=1e-10
    )
    assert -economy.delta < float(eq.r) < float(economy.rho)


@pytest.mark.slow
def test_estimation_recovers_rho(huggett):
    def moments(eq):
        return jnp.stack([econ.fraction_at_limit(eq.household)])

    truth = jnp.asarray(0.05)
    target = moments(econ.solve_equilibrium(huggett, QUIET))
    res = econ.estimate(
        huggett,
        lambda e: e.rho,
        jnp.asarray(0.065),
        moments,
        target,
        moment_covariance=jnp.array([[1e-6]]),
    )
    assert res.result == jaxdeq.RESULTS.successful
    np.testing.assert_allclose(res.params, truth, rtol=1e-8)
    np.testing.assert_allclose(res.moments, target, atol=1e-12)
    # One moment, one parameter: the standard error is sd / |dm/drho|.
    np.testing.assert_allclose(
        res.standard_errors, 1e-3 / jnp.abs(res.jacobian[0, 0]), rtol=1e-10
    )


# --- bad input ------------------------------------------------------------------


@pytest.mark.slow
def test_bad_parameters_give_clear_errors(huggett):
    household = huggett.household()
    with pytest.raises(ValueError, match="no stationary"):
        econ.solve_household(household, econ.Prices(jnp.asarray(0.06)))
    with pytest.raises(ValueError, match="empty"):
        econ.Huggett(a_min=1.0, a_max=1.0)
    with pytest.raises(ValueError, match="at least 3"):
        econ.Huggett(grid_size=2)
    with pytest.raises(ValueError, match="rho must be > 0"):
        econ.Huggett(rho=0.0)
    with pytest.raises(ValueError, match="intensity matrix"):
        econ.Household(z=[0.1, 0.2], generator=[[1.0, -1.0], [1.0, -1.0]])
    with pytest.raises(ValueError, match="borrowing limit"):
        econ.solve_household(
            econ.Household(z=[0.1], generator=[[0.0]], a_min=-3.0, a_max=5.0),
            econ.Prices(jnp.asarray(0.04)),
        )
    with pytest.raises(ValueError, match="below rho"):
        econ.solve_equilibrium(huggett, bracket=(0.0, 0.06))
    # A bracket on which the bond market does not change sign (same shapes as the
    # fixture: no new compile).
    with pytest.raises(ValueError, match="does not change sign"):
        econ.solve_equilibrium(huggett, bracket=(0.001, 0.002))
    with pytest.raises(ValueError, match="identified"):
        econ.estimate(
            huggett,
            lambda e: (e.rho, e.gamma),
            (0.05, 2.0),
            lambda eq: eq.r[None],
            jnp.array([0.03]),
        )


@pytest.mark.unchecked
def test_finite_difference_settings_are_checked(huggett):
    for kwargs, error, match in (
        (dict(rtol=-1.0), ValueError, "`rtol` must be finite and >= 0"),
        (dict(rtol=0.0, atol=0.0), ValueError, ".*both 0"),
        (dict(max_steps=2.0), TypeError, "`max_steps` must be an int"),
        (dict(delta=0.0), ValueError, "`delta` must be > 0"),
        (dict(household_max_steps=0), ValueError, "`household_max_steps`"),
        (dict(check_grid=1), TypeError, "`check_grid` must be True or False"),
    ):
        with pytest.raises(error, match=f"FiniteDifference: {match}"):
            econ.FiniteDifference(**kwargs)
    econ.FiniteDifference(delta=float("inf"))  # policy iteration
    # The entry point refuses, before any compilation, what does not apply.
    for kwargs, error, match in (
        (dict(key=jr.PRNGKey(0)), ValueError, "takes no `key`"),
        (dict(progress=print), ValueError, "takes no `progress`"),
        (dict(r0=0.06), ValueError, "outside the bracket"),
        (dict(bracket=(0.04, 0.01)), ValueError, "lower < upper"),
        (dict(bracket=0.04), TypeError, "must be a pair"),
    ):
        with pytest.raises(error, match=f"solve_equilibrium: .*{match}"):
            econ.solve_equilibrium(huggett, **kwargs)
    with pytest.raises(TypeError, match="solve_equilibrium: `solver` must be"):
        econ.solve_equilibrium(huggett, econ.PINN())  # pyright: ignore
    with pytest.raises(TypeError, match="solve_equilibrium: `economy` must be"):
        econ.solve_equilibrium(huggett.household())  # pyright: ignore
    with pytest.raises(TypeError, match="grid_error: `solver` must be"):
        econ.grid_error(huggett, solver=econ.PINNHousehold())  # pyright: ignore


@pytest.mark.slow  # two compilations of the household solve
def test_finite_difference_settings_reach_the_households():
    # One upwind step is not enough for the household at any rate: S(r) is NaN
    # (a failed household solve) with it, and finite with the default 500.
    economy = econ.Huggett(grid_size=20)
    rates = jnp.array([0.01, 0.03])
    assert bool(jnp.all(jnp.isfinite(econ.excess_supply_curve(economy, rates))))
    one_step = econ.FiniteDifference(household_max_steps=1)
    assert bool(jnp.all(jnp.isnan(econ.excess_supply_curve(economy, rates, one_step))))
