r"""What an economist reads off a stationary wealth distribution: inequality,
percentiles, consumption and saving by income state, marginal propensities to
consume and the mass at the borrowing limit."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Scalar

from ._equilibrium import EquilibriumSolution
from ._households import HouseholdSolution


PERCENTILES = (10, 25, 50, 75, 90, 99)


class DistributionStatistics(eqx.Module):
    r"""Statistics of a stationary distribution over wealth and income
    ([`jaxdeq.econ.distribution_statistics`][]).

    Every number is a statistic of the discrete distribution on the wealth grid
    (mass $g_{ij}\Delta a$ at grid point $a_i$ in income state $j$), which is the
    finite-difference solution itself. Arrays indexed by income state follow the
    order of the economy's `z`.

    **Attributes:**

    - `mean_wealth`: $\bar a = \sum_i a_i m_i$, $m_i = \sum_j g_{ij}\Delta a$.
    - `gini`: the Gini coefficient of wealth, $G = \sum_{i,k} m_i m_k |a_i - a_k|
        / (2\bar a)$, by the standard formula on the whole distribution, negative
        wealth included (it may then exceed 1). NaN when mean wealth is not
        positive (below $\sqrt\epsilon$ times mean absolute wealth): in the
        Huggett economy bonds are in zero net supply, mean wealth is zero and the
        Gini of wealth is not defined.
    - `top_1_share`, `top_10_share`: the shares of aggregate wealth held by the
        richest 1% and 10% of households (a grid point straddling the threshold
        counts with the part of its mass inside); NaN when `gini` is.
    - `gini_above_limit`, `top_1_share_above_limit`,
        `top_10_share_above_limit`: the same for wealth above the borrowing limit,
        $a - \underline a \ge 0$, which are defined whenever anyone is above the
        limit (equal to the above when $\underline a = 0$, as in Aiyagari).
    - `percentiles`: `{p: wealth}` for `p` in 10, 25, 50, 75, 90, 99: the
        smallest grid point $a_i$ at which the cumulative mass reaches $p/100$
        (the inverse of the discrete distribution function).
    - `income_shares`: the mass of households in each income state.
    - `consumption_by_state`, `savings_by_state`: mean consumption $c$ and mean
        saving (the drift of wealth, $s = \dot a$) among households in each
        income state.
    - `windfall`: the size $x$ of the windfall for the marginal propensities to
        consume.
    - `mpc`, `mpc_by_state`: the average marginal propensity to consume out of a
        windfall of size `windfall`, $(c_j(a + x) - c_j(a))/x$ averaged over the
        distribution (all households, and within each income state), with $c_j$
        linear between grid points (extrapolated linearly above the top). In
        continuous time this is a rate: extra consumption per unit of time per
        unit of windfall, just after it arrives.
    - `fraction_at_limit`: the fraction of households at the borrowing limit
        (the mass of the first grid point, all income states).
    - `fraction_at_limit_by_state`: the mass at the limit in each income state,
        as fractions of all households (they sum to `fraction_at_limit`).
    """

    mean_wealth: Scalar
    gini: Scalar
    top_1_share: Scalar
    top_10_share: Scalar
    gini_above_limit: Scalar
    top_1_share_above_limit: Scalar
    top_10_share_above_limit: Scalar
    percentiles: dict[int, Scalar]
    income_shares: Float[Array, " J"]
    consumption_by_state: Float[Array, " J"]
    savings_by_state: Float[Array, " J"]
    windfall: Scalar
    mpc: Scalar
    mpc_by_state: Float[Array, " J"]
    fraction_at_limit: Scalar
    fraction_at_limit_by_state: Float[Array, " J"]


def _positive_mean(x, m):
    """Whether the mean of `x` under `m` is positive beyond rounding."""
    mean = jnp.sum(x * m)
    tol = jnp.sqrt(jnp.finfo(mean.dtype).eps) * jnp.sum(jnp.abs(x) * m)
    return mean > tol


def _gini(x, m):
    """The Gini coefficient of the discrete distribution of `x` (sorted ascending)
    with probabilities `m` (summing to 1): sum_i m_i x_i (2 F_i - m_i - 1) / mean,
    which is sum_{i,k} m_i m_k |x_i - x_k| / (2 mean)."""
    cdf = jnp.cumsum(m)
    gini = jnp.sum(m * x * (2 * cdf - m - 1)) / jnp.sum(x * m)
    return jnp.where(_positive_mean(x, m), gini, jnp.nan)


def _top_share(x, m, fraction):
    """The share of the total of `x` (sorted ascending) held by the top `fraction`
    of the mass `m`; a point straddling the threshold counts in part."""
    above = 1 - jnp.cumsum(m)  # the mass strictly above each point
    inside = jnp.minimum(m, jnp.maximum(fraction - above, 0.0))
    share = jnp.sum(x * inside) / jnp.sum(x * m)
    return jnp.where(_positive_mean(x, m), share, jnp.nan)


def _percentile(x, cdf, p):
    index = jnp.searchsorted(cdf, p / 100, side="left")
    return x[jnp.minimum(index, x.shape[0] - 1)]


def _policy_at(grid, c, points):
    """`c` (`(N, J)` on the uniform `grid`) at `points` (`(N,)`), linear between
    grid points and extrapolated linearly beyond the ends."""
    step = grid[1] - grid[0]
    t = (points - grid[0]) / step
    cell = jnp.clip(jnp.floor(t), 0, grid.shape[0] - 2)
    k = cell.astype(jnp.int32)
    frac = (t - cell)[:, None]
    return c[k] + frac * (c[k + 1] - c[k])


def distribution_statistics(
    solution: HouseholdSolution | EquilibriumSolution,
    *,
    windfall: float | Scalar | None = None,
) -> DistributionStatistics:
    r"""Inequality, percentiles, consumption and saving by income state, the
    average marginal propensity to consume and the mass at the borrowing limit, of
    a stationary distribution.

    Computed in JAX from the discrete distribution of the finite-difference
    solution (see [`jaxdeq.econ.DistributionStatistics`][] for each definition):
    it works under `jit`, and the Gini coefficients, top shares, means and MPCs
    are differentiable with respect to the economy's parameters (percentiles are
    grid points, piecewise constant).

    **Arguments:**

    - `solution`: a [`jaxdeq.econ.HouseholdSolution`][], or an
        [`jaxdeq.econ.EquilibriumSolution`][] (its households are used).
    - `windfall`: the windfall $x > 0$ for the MPCs. Default: one grid step
        $\Delta a$, the smallest the grid resolves (with consumption linear
        between grid points, any windfall up to $\Delta a$ gives the same MPCs).

    **Returns:**

    A [`jaxdeq.econ.DistributionStatistics`][].

    **Raises:**

    `TypeError` for a `solution` of another kind; `ValueError` for a windfall
    that is not positive and finite, or a grid of fewer than two points.
    """
    if isinstance(solution, EquilibriumSolution):
        solution = solution.household
    if not isinstance(solution, HouseholdSolution):
        raise TypeError(
            "distribution_statistics: `solution` must be a jaxdeq.econ."
            "HouseholdSolution or EquilibriumSolution, got "
            f"{type(solution).__name__}. Pass e.g. "
            "`solve_equilibrium(jaxdeq.econ.Huggett())`."
        )
    grid = solution.grid
    if grid.ndim != 1 or grid.shape[0] < 2:
        raise ValueError(
            "distribution_statistics: the wealth grid must have at least two "
            f"points, got shape {grid.shape}."
        )
    step = solution.step
    if windfall is None:
        windfall = step
    elif isinstance(windfall, (int, float, np.number)) and not (
        0 < float(windfall) < np.inf
    ):
        raise ValueError(
            "distribution_statistics: `windfall` must be positive and finite, got "
            f"{windfall}. Pass e.g. `windfall=0.01`, or None for one grid step."
        )
    return _statistics(solution, jnp.asarray(windfall, grid.dtype))


@eqx.filter_jit
def _statistics(solution: HouseholdSolution, windfall) -> DistributionStatistics:
    grid = solution.grid
    step = solution.step
    joint = solution.density * step  # (N, J) masses
    joint = joint / jnp.sum(joint)
    m = jnp.sum(joint, axis=1)
    cdf = jnp.cumsum(m)
    above_limit = grid - grid[0]
    states = jnp.sum(joint, axis=0)

    def by_state(values):
        return jnp.sum(values * joint, axis=0) / states

    mpc = (_policy_at(grid, solution.c, grid + windfall) - solution.c) / windfall
    return DistributionStatistics(
        mean_wealth=jnp.sum(grid * m),
        gini=_gini(grid, m),
        top_1_share=_top_share(grid, m, 0.01),
        top_10_share=_top_share(grid, m, 0.1),
        gini_above_limit=_gini(above_limit, m),
        top_1_share_above_limit=_top_share(above_limit, m, 0.01),
        top_10_share_above_limit=_top_share(above_limit, m, 0.1),
        percentiles={p: _percentile(grid, cdf, p) for p in PERCENTILES},
        income_shares=states,
        consumption_by_state=by_state(solution.c),
        savings_by_state=by_state(solution.s),
        windfall=windfall,
        mpc=jnp.sum(mpc * joint),
        mpc_by_state=by_state(mpc),
        fraction_at_limit=m[0],
        fraction_at_limit_by_state=joint[0],
    )
