r"""Stationary general equilibrium of heterogeneous-agent economies: the interest
rate that clears a market, found by a root finder on the finite-difference
household solution and differentiated implicitly with respect to every parameter.
"""

import abc
import dataclasses
import warnings

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

from .._solution import as_results, Report, RESULTS
from .._solver.bracketed_newton import BracketedNewton
from ._households import (
    _as_int,
    _is_concrete,
    _report,
    AbstractHousehold,
    Household,
    HouseholdSolution,
    poisson_generator,
    Prices,
    solve_household,
    stationary_income_distribution,
)


class AbstractEconomy(eqx.Module):
    r"""A stationary economy of households whose equilibrium is one interest rate
    $r$ that clears one market, $S(r) = 0$ ([`jaxdeq.econ.solve_equilibrium`][]).

    A subclass says who the households are (`household`), what prices they face
    at a given $r$ (`prices`: a firm's first-order conditions, say), the market
    that must clear (`excess_supply`, increasing in $r$ for the usual saving
    behaviour) and a bracket in which to look. `aggregates` adds named numbers to
    the report.
    """

    @abc.abstractmethod
    def household(self) -> AbstractHousehold:
        """The households of the economy."""

    @abc.abstractmethod
    def prices(self, r: Scalar) -> Prices:
        """The prices households face when the interest rate is `r`."""

    @abc.abstractmethod
    def excess_supply(self, r: Scalar, solution: HouseholdSolution) -> Scalar:
        """Supply minus demand in the market that $r$ clears, given the households'
        solution at `prices(r)`."""

    @abc.abstractmethod
    def bracket(self) -> tuple[float | Scalar, float | Scalar]:
        """An interval of interest rates on which `excess_supply` changes sign."""

    def aggregates(self, r: Scalar, solution: HouseholdSolution) -> dict[str, Scalar]:
        """Named aggregates at an equilibrium (wealth, consumption, the mass at the
        borrowing limit; subclasses add their own)."""
        return {
            "r": r,
            "w": solution.prices.w,
            "assets": solution.assets,
            "consumption": solution.consumption,
            "mass_at_limit": jnp.sum(solution.mass_at_limit),
        }


def _income_shares(generator):
    return stationary_income_distribution(generator)


class Huggett(AbstractEconomy):
    r"""The Huggett (1993) economy in continuous time (Achdou et al. 2022): CRRA
    households with Poisson income $z_j$ borrow and lend a bond in zero net supply
    at rate $r$, down to the limit $\underline a$. Equilibrium: $\int a\,dG = 0$.

    The defaults are Moll's: $\gamma = 2$, $\rho = 0.05$, $z = (0.1, 0.2)$,
    $\lambda = (1.2, 1.2)$, $a \in [-0.15, 5]$, 500 points, $r \in [0.01,
    0.04]$.
    """

    gamma: Scalar
    rho: Scalar
    z: Float[Array, " J"]
    lam: Float[Array, " J"]
    a_min: Scalar
    a_max: Scalar
    grid_size: int = eqx.field(static=True)
    r_bracket: tuple[float, float] | None = eqx.field(static=True)

    def __init__(
        self,
        *,
        gamma=2.0,
        rho=0.05,
        z=(0.1, 0.2),
        lam=(1.2, 1.2),
        a_min=-0.15,
        a_max=5.0,
        grid_size=500,
        r_bracket=None,
    ):
        r"""**Arguments:**

        - `gamma`, `rho`: risk aversion and discount rate.
        - `z`, `lam`: income in the two states and the rates of leaving them.
        - `a_min`, `a_max`, `grid_size`: the borrowing limit, the top of the grid
            and the number of grid points.
        - `r_bracket`: `(lower, upper)`, interest rates between which the
            equilibrium lies, upper below `rho`. By default it follows the
            parameters: from $-z_{\min}/(2\bar a)$ (income stays positive on the
            whole grid) to $0.999\rho$ (Moll uses $[0.01, 0.04]$ at his
            parameters).
        """
        dtype = jnp.result_type(float)
        self.gamma = jnp.asarray(gamma, dtype)
        self.rho = jnp.asarray(rho, dtype)
        self.z = jnp.asarray(z, dtype)
        self.lam = jnp.asarray(lam, dtype)
        self.a_min = jnp.asarray(a_min, dtype)
        self.a_max = jnp.asarray(a_max, dtype)
        self.grid_size = _as_int("grid_size", grid_size)
        self.r_bracket = _as_bracket(r_bracket)
        if self.r_bracket is not None:
            _check_bracket(self.r_bracket, self.rho)

    def __check_init__(self):
        _check_two_state(self.z, self.lam)
        self.household()  # validates the household's parameters
        _check_income_at_limit(self)

    def household(self) -> Household:
        return Household(
            z=self.z,
            generator=poisson_generator(self.lam),
            rho=self.rho,
            gamma=self.gamma,
            a_min=self.a_min,
            a_max=self.a_max,
            grid_size=self.grid_size,
        )

    def prices(self, r):
        return Prices(r, jnp.ones_like(r))

    def excess_supply(self, r, solution):
        return solution.assets

    def bracket(self):
        if self.r_bracket is not None:
            return self.r_bracket
        lower = -0.5 * jnp.min(self.z) / jnp.maximum(self.a_max, jnp.min(self.z))
        return lower, 0.999 * self.rho


class Aiyagari(AbstractEconomy):
    r"""The Aiyagari (1994) economy in continuous time with Poisson income (Achdou
    et al. 2022): households as in [`jaxdeq.econ.Huggett`][] save in capital,
    which a competitive firm with $Y = A K^\alpha L^{1-\alpha}$ rents at
    $r + \delta$, and pay wage $w$ per unit of labour endowment $z_j$.

    At an interest rate $r$ the firm's first-order conditions give
    $K/L = (\alpha A/(r + \delta))^{1/(1-\alpha)}$ and
    $w = (1-\alpha) A (K/L)^\alpha$, with $L = \sum_j \pi_j z_j$ from the
    stationary income distribution $\pi$. Equilibrium: the households' wealth
    equals the capital the firm demands, $\int a\,dG = K(r)$.

    The defaults are Moll's: $\gamma = 2$, $\alpha = 1/3$, $\delta = 0.05$,
    $\rho = 0.05$, $A = 0.1$, $z = (1, 2)$, $\lambda = (1/3, 1/3)$,
    $a \in [0, 20]$, 1000 points.
    """

    gamma: Scalar
    rho: Scalar
    alpha: Scalar
    delta: Scalar
    productivity: Scalar
    z: Float[Array, " J"]
    lam: Float[Array, " J"]
    a_min: Scalar
    a_max: Scalar
    grid_size: int = eqx.field(static=True)
    r_bracket: tuple[float, float] | None = eqx.field(static=True)

    def __init__(
        self,
        *,
        gamma=2.0,
        rho=0.05,
        alpha=1 / 3,
        delta=0.05,
        productivity=0.1,
        z=(1.0, 2.0),
        lam=(1 / 3, 1 / 3),
        a_min=0.0,
        a_max=20.0,
        grid_size=1000,
        r_bracket=None,
    ):
        """**Arguments:**

        - `gamma`, `rho`: risk aversion and discount rate.
        - `alpha`, `delta`, `productivity`: the capital share, depreciation and
            total factor productivity $A$.
        - `z`, `lam`: labour endowment in the two states and the rates of leaving
            them.
        - `a_min`, `a_max`, `grid_size`: the borrowing limit, the top of the grid
            and the number of grid points.
        - `r_bracket`: `(lower, upper)`, interest rates between which the
            equilibrium lies (above $-\\delta$, below `rho`). By default it
            follows the parameters: from
            $-\\tfrac12\\min(\\delta, w_0 z_{\\min}/\\bar a)$ ($w_0$ the wage
            at $r = 0$; income stays positive on the grid) to
            $0.999\\rho$.
        """
        dtype = jnp.result_type(float)
        self.gamma = jnp.asarray(gamma, dtype)
        self.rho = jnp.asarray(rho, dtype)
        self.alpha = jnp.asarray(alpha, dtype)
        self.delta = jnp.asarray(delta, dtype)
        self.productivity = jnp.asarray(productivity, dtype)
        self.z = jnp.asarray(z, dtype)
        self.lam = jnp.asarray(lam, dtype)
        self.a_min = jnp.asarray(a_min, dtype)
        self.a_max = jnp.asarray(a_max, dtype)
        self.grid_size = _as_int("grid_size", grid_size)
        self.r_bracket = _as_bracket(r_bracket)
        if self.r_bracket is not None:
            _check_bracket(self.r_bracket, self.rho)
        if (
            self.r_bracket is not None
            and _is_concrete(self.delta)
            and not self.r_bracket[0] > -float(self.delta)
        ):
            raise ValueError(
                f"the bracket's lower end {self.r_bracket[0]} must be above -delta = "
                f"{-float(self.delta)} (the rental rate r + delta must be positive)."
            )

    def __check_init__(self):
        _check_technology(self)
        _check_two_state(self.z, self.lam)
        self.household()  # validates the household's parameters
        _check_income_at_limit(self)

    def household(self) -> Household:
        return Household(
            z=self.z,
            generator=poisson_generator(self.lam),
            rho=self.rho,
            gamma=self.gamma,
            a_min=self.a_min,
            a_max=self.a_max,
            grid_size=self.grid_size,
        )

    @property
    def labour(self) -> Scalar:
        """Aggregate labour $L = \\sum_j \\pi_j z_j$."""
        return jnp.dot(_income_shares(poisson_generator(self.lam)), self.z)

    def capital_demand(self, r: Scalar) -> Scalar:
        """The capital the firm rents at interest rate `r`,
        $K = L(\\alpha A/(r + \\delta))^{1/(1-\\alpha)}$."""
        ratio = (self.alpha * self.productivity / (r + self.delta)) ** (
            1 / (1 - self.alpha)
        )
        return ratio * self.labour

    def prices(self, r):
        ratio = (self.alpha * self.productivity / (r + self.delta)) ** (
            1 / (1 - self.alpha)
        )
        w = (1 - self.alpha) * self.productivity * ratio**self.alpha
        return Prices(r, w)

    def excess_supply(self, r, solution):
        return solution.assets - self.capital_demand(r)

    def bracket(self):
        if self.r_bracket is not None:
            return self.r_bracket
        w0 = self.prices(jnp.zeros_like(self.rho)).w
        top = jnp.maximum(self.a_max, 1.0)
        lower = -0.5 * jnp.minimum(self.delta, w0 * jnp.min(self.z) / top)
        return lower, 0.999 * self.rho

    def aggregates(self, r, solution):
        out = super().aggregates(r, solution)
        capital = self.capital_demand(r)
        labour = self.labour
        output = self.productivity * capital**self.alpha * labour ** (1 - self.alpha)
        out.update(
            capital=capital,
            labour=labour,
            output=output,
            capital_output_ratio=capital / output,
        )
        return out


def _check_technology(economy: "Aiyagari") -> None:
    # Aiyagari's firm.
    if _is_concrete(economy.alpha, economy.delta) and not (
        0 < float(economy.alpha) < 1 and 0 <= float(economy.delta) < np.inf
    ):
        raise ValueError(
            f"need 0 < alpha < 1 and a finite delta >= 0, got alpha = "
            f"{float(economy.alpha)}, delta = {float(economy.delta)}."
        )
    if _is_concrete(economy.productivity) and not (
        0 < float(economy.productivity) < np.inf
    ):
        raise ValueError(
            "total factor productivity must be positive and finite, got "
            f"productivity = {float(economy.productivity)}: with A <= 0 the firm "
            "produces nothing, demands no capital and pays no wage, so there is "
            "no capital market to clear. Use e.g. productivity=0.1 (Moll's)."
        )


def _check_two_state(z, lam):
    """The two-state Poisson income of Huggett and Aiyagari: endowments and
    switching rates, with messages in their own terms."""
    if not _is_concrete(z, lam):
        return
    z, lam = np.asarray(z), np.asarray(lam)
    if z.shape != (2,) or lam.shape != (2,):
        raise ValueError(
            f"`z` and `lam` must each have two entries (two income states), got "
            f"shapes {z.shape} and {lam.shape}."
        )
    if not np.all(np.isfinite(z)) or np.any(z <= 0):
        raise ValueError(
            f"the income states z = {z} must be positive and finite: z is the "
            "labour endowment a household earns in each state, and a state with "
            "zero or negative income leaves no consumption at the borrowing limit."
        )
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(
            f"the switching intensities lam = {lam} must be positive and finite: "
            "with a zero rate an income state is never left, so the stationary "
            "income distribution is degenerate (or, with both zero, not unique) "
            "and aggregate labour and savings are not defined."
        )


def _check_income_at_limit(economy: "Huggett | Aiyagari") -> None:
    r"""Income at the borrowing limit must be positive at every rate of the bracket,
    or households at the limit cannot consume: the borrowing limit must be above the
    natural borrowing limit $-w z_{\min}/r$."""
    household = economy.household()
    lower, upper = economy.bracket()
    rho = household.rho
    if not _is_concrete(lower, upper, rho, household.a_min, household.z):
        return
    upper = min(float(upper), float(rho) * (1 - 1e-3))
    a_min = float(household.a_min)
    for r in (float(lower), upper):
        prices = economy.prices(jnp.asarray(r, jnp.result_type(rho)))
        income = np.asarray(household.income(household.grid[:1], prices))[0]
        if np.all(income > 0):
            continue
        w = float(prices.w)
        z_min = float(np.min(np.asarray(household.z)))
        if r > 0 and a_min < 0:
            natural = -w * z_min / r
            raise ValueError(
                f"the borrowing limit a_min = {a_min:.6g} is at or below the natural "
                f"borrowing limit -w z_min / r = {natural:.6g} at r = {r:.6g} (the "
                "top of the interest-rate bracket): a household that borrowed that "
                "much could not pay the interest out of its lowest income, "
                f"w z_min = {w * z_min:.6g}, and consumption at the limit would not "
                f"be positive. Raise a_min above {natural:.6g}, or give an "
                f"`r_bracket` whose upper end is below w z_min / |a_min| = "
                f"{w * z_min / -a_min:.6g}."
            )
        raise ValueError(
            f"income at the borrowing limit a_min = {a_min:.6g} is {income} at "
            f"r = {r:.6g} (an end of the interest-rate bracket): consumption cannot "
            "stay positive there. Raise a_min, the lowest income state, or narrow "
            "`r_bracket`."
        )


def _as_bracket(bracket) -> tuple[float, float] | None:
    if bracket is None:
        return None
    lo, hi = (float(x) for x in bracket)
    return lo, hi


def _check_bracket(bracket, rho):
    lo, hi = bracket
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"`r_bracket` must be finite, got {bracket}.")
    if not lo < hi:
        raise ValueError(
            f"`r_bracket` must be (lower, upper) with lower < upper, got {bracket}."
        )
    if _is_concrete(rho) and not hi < float(rho):
        raise ValueError(
            f"the bracket's upper end r = {hi} must be below rho = {float(rho)}: at "
            "r >= rho households save without bound and there is no stationary "
            "distribution."
        )


class EquilibriumSolution(eqx.Module):
    """A stationary general equilibrium ([`jaxdeq.econ.solve_equilibrium`][]).

    Differentiable with respect to the economy's parameters: `r` through the
    implicit function theorem on $S(r;\\theta) = 0$, and the household solution
    and aggregates through their own implicit derivatives at $r^*$.
    """

    r: Scalar
    household: HouseholdSolution
    excess_supply: Scalar
    aggregates: dict[str, Scalar]
    steps: Int[Array, ""]
    result: RESULTS

    @property
    def prices(self) -> Prices:
        """The equilibrium prices."""
        return self.household.prices

    @property
    def report(self) -> Report:
        """The solve as a [`jaxdeq.Report`][]: `result`, `num_steps` (root-finding
        steps), `abs_residual` ($|S(r^*)|$, the market-clearing error), and the
        household solve's own report in `extra["household"]`."""
        return _report(
            self.result,
            self.steps,
            jnp.abs(self.excess_supply),
            household=self.household.report,
        )


def _excess(r, args):
    economy, options = args
    solution = solve_household(
        economy.household(), economy.prices(r), throw=False, **options
    )
    excess = economy.excess_supply(r, solution)
    ok = solution.result == RESULTS.successful
    return jnp.where(ok, excess, jnp.nan), None


@eqx.filter_jit
def _solve_equilibrium(economy, r0, lower, upper, rtol, atol, max_steps, options):
    solver = BracketedNewton(rtol=rtol, atol=atol)
    # Under differentiation or estimation rho can move; the bracket never reaches
    # it (no stationary distribution at r >= rho).
    rho = economy.household().rho
    upper = jnp.minimum(upper, rho - 1e-3 * jnp.abs(rho))
    r0 = jnp.clip(r0, lower, upper)
    sol = optx.root_find(
        _excess,
        solver,
        r0,
        args=(economy, options),
        options=dict(lower=lower, upper=upper),
        has_aux=True,
        max_steps=max_steps,
        throw=False,
    )
    r = sol.value
    household = solve_household(
        economy.household(), economy.prices(r), throw=False, **options
    )
    excess = economy.excess_supply(r, household)
    aggregates = economy.aggregates(r, household)
    result = RESULTS.where(
        household.result == RESULTS.successful, as_results(sol.result), household.result
    )
    return (
        EquilibriumSolution(
            r=r,
            household=household,
            excess_supply=excess,
            aggregates=aggregates,
            steps=sol.stats["num_steps"],
            result=result,
        ),
        sol.state.f_lower,
        sol.state.f_upper,
    )


def _strongly_typed(economy, dtype):
    """Parameters set with `eqx.tree_at` to a Python float or a weakly typed array
    (`jnp.asarray(0.05)`) would change the compiled signature, or become static, and
    recompile the whole equilibrium: cast them to the economy's dtype."""

    def cast(leaf):
        if isinstance(leaf, float) or (
            eqx.is_inexact_array(leaf) and getattr(leaf, "weak_type", False)
        ):
            return lax.convert_element_type(leaf, dtype)
        return leaf

    return jax.tree.map(cast, economy)


class CoarseGridWarning(UserWarning):
    """The wealth grid is too coarse to resolve the stationary distribution, so the
    equilibrium found on it can be far from the grid-converged one (raised by
    [`jaxdeq.econ.solve_equilibrium`][]; silence it with
    `warnings.simplefilter("ignore", jaxdeq.econ.CoarseGridWarning)`)."""


# The wealth distribution must span at least this many grid points (from the
# borrowing limit to its 99th percentile) to count as resolved. Measured on Moll's
# Huggett and Aiyagari economies: with fewer, r* is off by more than ~10% of itself.
MIN_RESOLVING_POINTS = 20


def _resolving_points(solution: HouseholdSolution) -> int:
    """Grid points from the borrowing limit up to the 99th percentile of wealth."""
    cdf = np.cumsum(np.asarray(solution.wealth_distribution))
    return int(np.searchsorted(cdf, 0.99 * cdf[-1])) + 1


def _with_grid_size(economy: AbstractEconomy, grid_size: int) -> AbstractEconomy:
    return dataclasses.replace(economy, grid_size=grid_size)  # pyright: ignore


def grid_error(
    economy: AbstractEconomy,
    solution: EquilibriumSolution | None = None,
    **options,
) -> Scalar:
    r"""An estimate of the discretisation error of the equilibrium rate $r^*$ on the
    economy's wealth grid, by grid refinement.

    The upwind scheme is first-order in the grid step, $r^*_N pprox r^* + C/N$, so
    the same solve on a grid half as fine gives $r^*_{N/2} - r^*_N pprox C/N$: the
    error of $r^*_N$ (Richardson). Grids under 6 points are compared with one twice
    as fine instead, $2(r^*_N - r^*_{2N})$. It costs one more equilibrium solve (and
    its compilation).

    **Arguments:**

    - `economy`: an economy with a `grid_size` field ([`jaxdeq.econ.Huggett`][],
        [`jaxdeq.econ.Aiyagari`][]).
    - `solution`: its equilibrium, if already solved.
    - `options`: passed to [`jaxdeq.econ.solve_equilibrium`][].

    **Returns:**

    $|r^*_N - r^*_{\text{other}}|$ scaled as above; NaN when the other solve
    fails.
    """
    options = dict(options, throw=False)
    if solution is None:
        solution = _solve(economy, warn=False, **options)
    n = economy.household().grid_size
    other = n // 2 if n >= 6 else 2 * n
    coarse = _solve(_with_grid_size(economy, other), warn=False, **options)
    diff = jnp.abs(solution.r - coarse.r)
    if other > n:
        diff = 2 * diff
    ok = (solution.result == RESULTS.successful) & (coarse.result == RESULTS.successful)
    return jnp.where(ok, diff, jnp.nan)


def _warn_if_coarse(economy, solution, options) -> None:
    points = _resolving_points(solution.household)
    if points >= MIN_RESOLVING_POINTS:
        return
    n = economy.household().grid_size
    try:
        error = float(grid_error(economy, solution, **options))
        estimate = (
            f" Refining the grid estimates the error of r* = "
            f"{float(solution.r):.6g} at about {error:.2g} "
            f"({error / max(abs(float(solution.r)), 1e-300):.0%} of r*)."
        )
    except (TypeError, ValueError):  # an economy without a `grid_size` field
        estimate = ""
    warnings.warn(
        f"solve_equilibrium: the wealth grid is too coarse to resolve the stationary "
        f"distribution: 99% of the households sit on {points} of its {n} points "
        f"(at least {MIN_RESOLVING_POINTS} are needed), so r* can be far from its "
        f"grid-converged value.{estimate} Use a finer grid (more `grid_size`, or a "
        "smaller `a_max`).",
        CoarseGridWarning,
        stacklevel=4,
    )


def solve_equilibrium(
    economy: AbstractEconomy,
    *,
    r0: float | None = None,
    bracket: tuple[float, float] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 60,
    throw: bool = True,
    check_grid: bool = True,
    **household_options,
) -> EquilibriumSolution:
    r"""The stationary general equilibrium of an economy: the interest rate $r^*$
    with $S(r^*) = 0$, the households' solution there, and the aggregates.

    $S(r)$ (for example Huggett's bond supply $\int a\,dG$) is evaluated by
    [`jaxdeq.econ.solve_household`][] and solved by [`jaxdeq.BracketedNewton`][]:
    Newton steps with $S'(r)$ from one implicit forward-mode derivative through
    the HJB and KFE solves, kept inside the bracket by bisection. It typically
    takes 4–6 Newton steps to $|S| < 10^{-10}$.

    Derivatives of $r^*$ and of anything in the solution with respect to any
    parameter $\theta$ of the economy come from the implicit function theorem,
    $dr^*/d\theta = -\partial_\theta S / \partial_r S$, with the household's own
    implicit derivatives inside: `jax.grad`, `jax.jacfwd` and `jax.vmap` work
    through `solve_equilibrium`, with no bisection or finite differences.

    **Arguments:**

    - `economy`: an [`jaxdeq.econ.AbstractEconomy`][] (e.g.
        [`jaxdeq.econ.Huggett`][], [`jaxdeq.econ.Aiyagari`][]).
    - `r0`: the starting rate (default: the middle of the bracket).
    - `bracket`: `(lower, upper)` (default `economy.bracket()`); $S$ must change
        sign on it.
    - `rtol`, `atol`: stop when the Newton step is at most `atol` $+$ `rtol`
        $|r|$. Defaults follow the economy's dtype: $10^{-12}$ and $10^{-14}$ in
        float64; $100\epsilon$ and $\epsilon$ otherwise ($1.2 \cdot 10^{-5}$ and
        $1.2 \cdot 10^{-7}$ in float32), which a float32 solve can reach.
    - `max_steps`: the most root-finding steps.
    - `throw`: raise if the equilibrium is not found.
    - `check_grid`: warn ([`jaxdeq.econ.CoarseGridWarning`][], with an estimate of
        the error of $r^*$ from [`jaxdeq.econ.grid_error`][], one more solve) when
        the wealth grid is too coarse to resolve the stationary distribution:
        fewer than `MIN_RESOLVING_POINTS` = 20 grid points from the borrowing limit
        to the 99th percentile of wealth. Checked when the values are concrete
        (not under `jit`, `vmap` or differentiation).
    - `household_options`: passed to [`jaxdeq.econ.solve_household`][]
        (`delta`, `rtol`, `max_steps`, ...).

    **Returns:**

    An [`jaxdeq.econ.EquilibriumSolution`][].
    """
    return _solve(
        economy,
        r0=r0,
        bracket=bracket,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
        throw=throw,
        warn=check_grid,
        **household_options,
    )


def _solve(
    economy,
    *,
    r0=None,
    bracket=None,
    rtol=None,
    atol=None,
    max_steps=60,
    throw=True,
    warn,
    **household_options,
) -> EquilibriumSolution:
    if not isinstance(economy, AbstractEconomy):
        raise TypeError(
            "solve_equilibrium: `economy` must be a jaxdeq.econ.AbstractEconomy "
            f"(e.g. Huggett, Aiyagari), got {type(economy).__name__}."
        )
    if bracket is not None:
        _check_bracket(bracket, economy.household().rho)
    max_steps = _as_int("max_steps", max_steps)
    dtype = jnp.result_type(economy.household().rho)
    eps = float(jnp.finfo(dtype).eps)
    if rtol is None:
        rtol = 1e-12 if jnp.dtype(dtype) == jnp.float64 else 100 * eps
    if atol is None:
        atol = 1e-14 if jnp.dtype(dtype) == jnp.float64 else eps
    economy = _strongly_typed(economy, dtype)
    lower, upper = bracket if bracket is not None else economy.bracket()
    r0 = 0.5 * (lower + upper) if r0 is None else r0
    solution, f_lower, f_upper = _solve_equilibrium(
        economy,
        jnp.asarray(r0, dtype),
        jnp.asarray(lower, dtype),
        jnp.asarray(upper, dtype),
        float(rtol),
        float(atol),
        int(max_steps),
        household_options,
    )
    if throw:
        if _is_concrete(solution.r) and solution.result != RESULTS.successful:
            if not float(f_lower) * float(f_upper) <= 0:
                raise ValueError(
                    f"solve_equilibrium: the excess supply does not change sign on the "
                    f"bracket: S({float(lower):.6g}) = {float(f_lower):.4g}, "
                    f"S({float(upper):.6g}) = {float(f_upper):.4g}. Pass a wider "
                    "`bracket` (below rho)."
                )
            raise RuntimeError(
                "solve_equilibrium: no equilibrium found: "
                f"{solution.result}. Last r = {float(solution.r):.8g}, "
                f"S = {float(solution.excess_supply):.3g}."
            )
        solution = eqx.tree_at(
            lambda s: s.r,
            solution,
            eqx.error_if(
                solution.r,
                solution.result != RESULTS.successful,
                "solve_equilibrium: no equilibrium found (the excess supply does "
                "not change sign on the bracket, or a household solve failed).",
            ),
        )
    if (
        warn
        and _is_concrete(solution.r, solution.household.density)
        and solution.household.density.ndim == 2
        and bool(solution.result == RESULTS.successful)
    ):
        options = dict(
            r0=r0, bracket=bracket, rtol=rtol, atol=atol, max_steps=max_steps
        )
        _warn_if_coarse(economy, solution, dict(options, **household_options))
    return solution


def excess_supply_curve(
    economy: AbstractEconomy, rates: Float[Array, " K"], **household_options
) -> Float[Array, " K"]:
    """$S(r)$ at each of `rates` (households solved at each), for plots of the
    market-clearing condition."""

    dtype = jnp.result_type(economy.household().rho)
    rates = jnp.asarray(rates, dtype)
    return _excess_curve(_strongly_typed(economy, dtype), rates, household_options)


@eqx.filter_jit
def _excess_curve(economy, rates, options):
    return jax.vmap(lambda r: _excess(r, (economy, options))[0])(rates)


def plot_equilibrium(
    economy: AbstractEconomy,
    solution: EquilibriumSolution,
    outdir,
    rates: Float[ArrayLike, " K"] | None = None,
) -> list:
    """Write the figures of a stationary equilibrium as PNGs into `outdir` (created
    if missing): `policies.png` (consumption and savings by income state),
    `density.png` (the wealth density by income state, with the mass at the
    borrowing limit marked) and `excess_supply.png` ($S(r)$ on `rates`, default 41
    rates across the bracket, with $r^*$ marked). Needs matplotlib.

    **Returns:**

    The paths written.
    """
    import pathlib

    import numpy as np

    # Figures without pyplot: no backend is chosen or changed for the caller.
    from matplotlib.figure import Figure

    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    h = solution.household
    a = np.asarray(h.grid)
    states = range(h.c.shape[1])
    paths = []

    fig = Figure(figsize=(9, 3.6))
    ax_c, ax_s = fig.subplots(1, 2)
    for j in states:
        ax_c.plot(a, np.asarray(h.c[:, j]), label=f"income state {j}")
        ax_s.plot(a, np.asarray(h.s[:, j]), label=f"income state {j}")
    ax_s.axhline(0.0, color="k", lw=0.5)
    ax_c.set(xlabel="wealth a", ylabel="consumption c(a)")
    ax_s.set(xlabel="wealth a", ylabel="savings s(a)")
    ax_c.legend()
    fig.suptitle(f"{type(economy).__name__}: policies at r* = {float(solution.r):.6f}")
    fig.tight_layout()
    paths.append(outdir / "policies.png")
    fig.savefig(paths[-1], dpi=120)

    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    mass = np.asarray(h.mass_at_limit)
    for j in states:
        ax.plot(a, np.asarray(h.density[:, j]), label=f"income state {j}")
    ax.annotate(
        f"mass at the limit: {', '.join(f'{m:.4f}' for m in mass)}",
        xy=(a[0], float(np.max(np.asarray(h.density[0])))),
        xytext=(0.25, 0.6),
        textcoords="axes fraction",
        arrowprops=dict(arrowstyle="->"),
    )
    # Up to where all but 1e-6 of the households are.
    cdf = np.cumsum(np.asarray(h.wealth_distribution))
    top = a[min(int(np.searchsorted(cdf, 1 - 1e-6)) + 1, len(a) - 1)]
    ax.set(xlabel="wealth a", ylabel="density g(a)", xlim=(a[0], top))
    ax.legend(loc="upper right")
    fig.tight_layout()
    paths.append(outdir / "density.png")
    fig.savefig(paths[-1], dpi=120)

    if rates is None:
        lo, hi = economy.bracket()
        rho = float(economy.household().rho)
        hi = min(float(hi), rho - 1e-3 * abs(rho))
        rates = np.linspace(float(lo), hi, 41)
    rates = np.asarray(rates)
    s = np.asarray(excess_supply_curve(economy, jnp.asarray(rates)))
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    ax.plot(rates, s, ".-", label="S(r)")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.axvline(
        float(solution.r), color="C3", ls="--", label=f"r* = {float(solution.r):.6f}"
    )
    ax.set(xlabel="interest rate r", ylabel="excess supply S(r)")
    ax.legend()
    fig.tight_layout()
    paths.append(outdir / "excess_supply.png")
    fig.savefig(paths[-1], dpi=120)
    return paths
