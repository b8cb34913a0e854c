"""`jaxdeq.econ.distribution_statistics` against independent computations: hand-built
discrete distributions with known answers, and NumPy on a population of
equal-weight households replicated from a distribution."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdeq
from jaxdeq import econ


def _solution(grid, masses, c=None, s=None) -> econ.HouseholdSolution:
    """A HouseholdSolution with the given masses `(N, J)` on a uniform grid."""
    grid = np.asarray(grid, np.float64)
    masses = np.asarray(masses, np.float64)
    step = grid[1] - grid[0]
    shape = masses.shape
    c = np.ones(shape) if c is None else np.asarray(c, np.float64)
    s = np.zeros(shape) if s is None else np.asarray(s, np.float64)
    return econ.HouseholdSolution(
        grid=jnp.asarray(grid),
        v=jnp.zeros(shape),
        c=jnp.asarray(c),
        s=jnp.asarray(s),
        density=jnp.asarray(masses / step),
        prices=econ.Prices(jnp.asarray(0.03), 1.0),
        steps=jnp.asarray(1),
        hjb_residual=jnp.asarray(0.0),
        kfe_residual=jnp.asarray(0.0),
        result=jaxdeq.RESULTS.successful,  # pyright: ignore[reportArgumentType]
    )


def _one_state(grid, masses):
    return _solution(grid, np.asarray(masses, np.float64)[:, None])


def test_gini_and_top_shares_of_known_distributions():
    # Everyone equal: no inequality.
    stats = econ.distribution_statistics(_one_state([0.0, 1.0, 2.0], [0, 1, 0]))
    assert float(stats.gini) == pytest.approx(0.0, abs=1e-15)
    # Half with nothing, half with 1: G = E|a - a'| / (2 mean) = 0.5 / 1.
    stats = econ.distribution_statistics(_one_state([0.0, 1.0], [0.5, 0.5]))
    assert float(stats.gini) == pytest.approx(0.5)
    # The richest 10% hold 0.1 of a total 0.5.
    assert float(stats.top_10_share) == pytest.approx(0.2)
    # Ten equal groups with wealth 1..10 (total 5.5): the top 10% is the group
    # with 10, the top 1% a tenth of it.
    stats = econ.distribution_statistics(_one_state(np.arange(1.0, 11.0), [0.1] * 10))
    assert float(stats.top_10_share) == pytest.approx(1.0 / 5.5)
    assert float(stats.top_1_share) == pytest.approx(0.1 / 5.5)
    assert float(stats.gini) == pytest.approx(0.3)  # (n - 1) / (3 n), n = 10


def test_gini_with_negative_wealth_is_the_standard_formula():
    # Half at -1, half at 3: mean 1, E|a - a'| = 2, so G = 2 / 2 = 1.
    grid = np.arange(-1.0, 4.0)
    stats = econ.distribution_statistics(_one_state(grid, [0.5, 0, 0, 0, 0.5]))
    assert float(stats.gini) == pytest.approx(1.0)
    # Half at -2, half at 4: mean 1, E|a - a'| = 3: G = 1.5 > 1.
    grid = np.arange(-2.0, 5.0)
    stats = econ.distribution_statistics(_one_state(grid, [0.5, 0, 0, 0, 0, 0, 0.5]))
    assert float(stats.gini) == pytest.approx(1.5)
    # The richest half holds 4 of a total of 1.
    assert float(stats.top_10_share) == pytest.approx(0.1 * 4 / 1.0)
    # Above the borrowing limit (-2): wealth 0 and 6, G = 0.5.
    assert float(stats.gini_above_limit) == pytest.approx(0.5)
    assert float(stats.top_10_share_above_limit) == pytest.approx(0.1 * 6 / 3)


def test_inequality_of_zero_mean_wealth_is_not_defined():
    # Bonds in zero net supply (Huggett): mean wealth 0, Gini and shares NaN; above
    # the limit (-1) wealth is 0 and 2, G = 0.5.
    stats = econ.distribution_statistics(_one_state([-1.0, 0.0, 1.0], [0.5, 0, 0.5]))
    assert float(stats.mean_wealth) == 0.0
    for name in ("gini", "top_1_share", "top_10_share"):
        assert np.isnan(float(getattr(stats, name))), name
    assert float(stats.gini_above_limit) == pytest.approx(0.5)
    assert float(stats.top_10_share_above_limit) == pytest.approx(0.2)


def _population(masses, size):
    """Equal-weight households replicating integer `masses * size`."""
    counts = np.rint(np.asarray(masses) * size).astype(int)
    assert np.allclose(counts / size, masses)
    return counts


def test_statistics_against_a_population_of_households():
    # A distribution whose masses are multiples of 1/1000 is exactly a population
    # of 1000 equal-weight households: Gini by the double sum, top shares by the
    # richest 10 and 100 households, percentiles by NumPy's inverse distribution
    # function, all computed on the population.
    rng = np.random.default_rng(0)
    n, size = 40, 1000
    counts = rng.multinomial(size, rng.dirichlet(np.ones(2 * n))).reshape(n, 2)
    cumulative = np.cumsum(counts.sum(axis=1))
    # No percentile falls exactly on a grid point's upper end (where rounding of
    # the cumulative sum could pick either point).
    assert not set(cumulative) & {100, 250, 500, 750, 900, 990}
    grid = np.linspace(-0.5, 3.0, n)
    masses = counts / size
    c = 0.2 + 0.1 * np.sqrt(grid - grid[0])[:, None] * np.array([[1.0, 1.5]])
    s = 0.05 - 0.02 * grid[:, None] * np.array([[1.0, 0.5]])
    stats = econ.distribution_statistics(_solution(grid, masses, c, s))

    wealth = np.repeat(grid, counts.sum(axis=1))
    assert len(wealth) == size
    mean = wealth.mean()
    assert float(stats.mean_wealth) == pytest.approx(mean)
    gini = np.abs(wealth[:, None] - wealth[None, :]).mean() / (2 * mean)
    assert float(stats.gini) == pytest.approx(gini, rel=1e-12)
    ordered = np.sort(wealth)[::-1]
    assert float(stats.top_1_share) == pytest.approx(ordered[:10].sum() / wealth.sum())
    assert float(stats.top_10_share) == pytest.approx(
        ordered[:100].sum() / wealth.sum()
    )
    above = wealth - grid[0]
    gini_above = np.abs(above[:, None] - above[None, :]).mean() / (2 * above.mean())
    assert float(stats.gini_above_limit) == pytest.approx(gini_above, rel=1e-12)
    assert float(stats.top_10_share_above_limit) == pytest.approx(
        np.sort(above)[::-1][:100].sum() / above.sum()
    )
    for p, value in stats.percentiles.items():
        expected = np.percentile(wealth, p, method="inverted_cdf")
        assert float(value) == pytest.approx(expected), p

    # By income state: households of each state, their mean consumption and
    # savings.
    state = np.repeat(np.tile([0, 1], n), counts.ravel())
    c_people = np.repeat(c.ravel(), counts.ravel())
    s_people = np.repeat(s.ravel(), counts.ravel())
    for j in range(2):
        mine = state == j
        assert float(stats.income_shares[j]) == pytest.approx(mine.mean())
        assert float(stats.consumption_by_state[j]) == pytest.approx(
            c_people[mine].mean()
        )
        assert float(stats.savings_by_state[j]) == pytest.approx(s_people[mine].mean())
    assert float(stats.fraction_at_limit) == pytest.approx(counts[0].sum() / size)
    np.testing.assert_allclose(stats.fraction_at_limit_by_state, counts[0] / size)


def test_mpc_of_a_linear_consumption_function_is_its_slope():
    # c_j(a) = kappa_j a + b_j: every finite difference is kappa_j, at the top of
    # the grid too (linear extrapolation), whatever the windfall.
    grid = np.linspace(0.0, 4.0, 9)
    kappa = np.array([0.3, 0.1])
    c = 0.5 + grid[:, None] * kappa[None, :]
    masses = np.full((9, 2), 1 / 18)
    masses[:, 0] *= 1.5
    masses[:, 1] *= 0.5
    solution = _solution(grid, masses, c)
    for windfall in (None, 0.1, 1.3):
        stats = econ.distribution_statistics(solution, windfall=windfall)
        np.testing.assert_allclose(stats.mpc_by_state, kappa, rtol=1e-12)
        assert float(stats.mpc) == pytest.approx(0.75 * 0.3 + 0.25 * 0.1)
    assert float(econ.distribution_statistics(solution).windfall) == pytest.approx(0.5)


def test_mpc_against_numpy_interpolation():
    grid = np.linspace(0.0, 2.0, 21)
    c = np.sqrt(grid + 0.1)[:, None] * np.array([[1.0, 2.0]])
    rng = np.random.default_rng(1)
    masses = rng.dirichlet(np.ones(42)).reshape(21, 2)
    windfall = 0.25  # two and a half grid steps
    stats = econ.distribution_statistics(_solution(grid, masses, c), windfall=windfall)
    target = grid + windfall
    expected = np.empty_like(c)
    for j in range(2):
        inside = np.interp(target, grid, c[:, j])
        slope = (c[-1, j] - c[-2, j]) / (grid[-1] - grid[-2])
        beyond = c[-1, j] + slope * (target - grid[-1])
        at = np.where(target <= grid[-1], inside, beyond)
        expected[:, j] = (at - c[:, j]) / windfall
    assert float(stats.mpc) == pytest.approx(np.sum(expected * masses), rel=1e-12)
    np.testing.assert_allclose(
        stats.mpc_by_state,
        np.sum(expected * masses, axis=0) / masses.sum(axis=0),
        rtol=1e-12,
    )


def test_jit_and_gradient():
    grid = np.linspace(0.0, 1.0, 5)
    solution = _one_state(grid, [0.1, 0.2, 0.3, 0.2, 0.2])
    eager = econ.distribution_statistics(solution)
    jitted = jax.jit(econ.distribution_statistics)(solution)
    assert float(jitted.gini) == pytest.approx(float(eager.gini), rel=1e-14)

    # The Gini coefficient as a function of mass moved from the bottom point to the
    # top one, against central differences.
    def gini(t):
        density = solution.density.at[0, 0].add(-t).at[-1, 0].add(t)
        moved = eqx.tree_at(lambda s: s.density, solution, density)
        return econ.distribution_statistics(moved).gini

    g = float(jax.grad(gini)(0.0))
    eps = 1e-6
    fd = (float(gini(eps)) - float(gini(-eps))) / (2 * eps)
    assert g == pytest.approx(fd, rel=1e-6)


def test_bad_arguments():
    solution = _one_state([0.0, 1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="windfall"):
        econ.distribution_statistics(solution, windfall=0.0)
    with pytest.raises(ValueError, match="windfall"):
        econ.distribution_statistics(solution, windfall=float("inf"))
    with pytest.raises(TypeError, match="HouseholdSolution"):
        econ.distribution_statistics(np.zeros(3))  # pyright: ignore[reportArgumentType]


@pytest.mark.slow
def test_statistics_of_a_solved_household_against_numpy():
    # Huggett's households at r = 0.03 (some in debt, positive mean wealth), 80
    # grid points: every statistic from the solved density, recomputed in NumPy.
    household = econ.Huggett(grid_size=80).household()
    sol = econ.solve_household(household, econ.Prices(jnp.asarray(0.03), 1.0))
    stats = econ.distribution_statistics(sol)
    a = np.asarray(sol.grid)
    joint = np.asarray(sol.density) * float(sol.step)
    joint = joint / joint.sum()
    m = joint.sum(axis=1)
    assert (a < 0).any() and m[a < 0].sum() > 0.1
    mean = np.sum(a * m)
    gini = np.sum(m[:, None] * m[None, :] * np.abs(a[:, None] - a[None, :])) / (
        2 * mean
    )
    assert float(stats.gini) == pytest.approx(gini, rel=1e-10)
    for p, value in stats.percentiles.items():
        expected = np.percentile(a, p, weights=m, method="inverted_cdf")
        assert float(value) == pytest.approx(expected), p
    # Top shares: walk down from the richest point, taking mass until q is full.
    for q, value in ((0.01, stats.top_1_share), (0.1, stats.top_10_share)):
        left, wealth = q, 0.0
        for i in range(len(a) - 1, -1, -1):
            take = min(left, m[i])
            wealth += take * a[i]
            left -= take
        assert float(value) == pytest.approx(wealth / mean, rel=1e-10)
    c = np.asarray(sol.c)
    for j in range(2):
        assert float(stats.consumption_by_state[j]) == pytest.approx(
            np.sum(c[:, j] * joint[:, j]) / joint[:, j].sum()
        )
    slopes = np.diff(c, axis=0) / np.diff(a)[:, None]
    mpc = np.concatenate([slopes, slopes[-1:]], axis=0)
    assert float(stats.mpc) == pytest.approx(np.sum(mpc * joint), rel=1e-10)
    assert float(stats.fraction_at_limit) == pytest.approx(m[0])
