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
from jaxtyping import Array, Float, Int, Scalar

from .._solution import as_results, Report, RESULTS
from .._solver.bracketed_newton import BracketedNewton
from ._checks import check_int, check_optional_tolerance, check_real
from ._households import (
    _as_int,
    _check_gamma,
    _check_grid,
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
        self.grid_size = _as_int("Huggett", "grid_size", grid_size, 500)
        self.r_bracket = _as_bracket("Huggett", r_bracket)
        if self.r_bracket is not None:
            _check_bracket("Huggett", "r_bracket", self.r_bracket, self.rho)

    def __check_init__(self):
        _check_household_parameters("Huggett", self)
        _check_two_state("Huggett", self.z, self.lam)
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
        self.grid_size = _as_int("Aiyagari", "grid_size", grid_size, 1000)
        self.r_bracket = _as_bracket("Aiyagari", r_bracket)
        if self.r_bracket is not None:
            _check_bracket("Aiyagari", "r_bracket", self.r_bracket, self.rho)
        if (
            self.r_bracket is not None
            and _is_concrete(self.delta)
            and not self.r_bracket[0] > -float(self.delta)
        ):
            raise ValueError(
                f"Aiyagari: the lower end of `r_bracket`, {self.r_bracket[0]}, must "
                f"be above -delta = {-float(self.delta)} (the rental rate r + delta "
                "must be positive). Raise it."
            )

    def __check_init__(self):
        _check_technology(self)
        _check_household_parameters("Aiyagari", self)
        _check_two_state("Aiyagari", self.z, self.lam)
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
            f"Aiyagari: need 0 < alpha < 1 and a finite delta >= 0, got alpha = "
            f"{float(economy.alpha)}, delta = {float(economy.delta)}. Pass e.g. "
            "`alpha=1/3, delta=0.05` (Moll's)."
        )
    if _is_concrete(economy.productivity) and not (
        0 < float(economy.productivity) < np.inf
    ):
        raise ValueError(
            "Aiyagari: total factor productivity must be positive and finite, got "
            f"productivity = {float(economy.productivity)}: with A <= 0 the firm "
            "produces nothing, demands no capital and pays no wage, so there is "
            "no capital market to clear. Use e.g. productivity=0.1 (Moll's)."
        )


def _check_household_parameters(name: str, economy: "Huggett | Aiyagari") -> None:
    """The households' grid, discount rate and risk aversion, with the economy's
    name in the messages (before the household itself is built)."""
    _check_grid(
        name,
        economy.a_min,
        economy.a_max,
        economy.grid_size,
        economy.rho,
        jnp.zeros((1, 1), jnp.result_type(economy.rho)),
    )
    _check_gamma(name, economy.gamma)


def _check_two_state(name: str, z, lam):
    """The two-state Poisson income of Huggett and Aiyagari: endowments and
    switching rates, with messages in their own terms."""
    if not _is_concrete(z, lam):
        return
    z, lam = np.asarray(z), np.asarray(lam)
    if z.shape != (2,) or lam.shape != (2,):
        raise ValueError(
            f"{name}: `z` and `lam` must each have two entries (two income "
            f"states), got shapes {z.shape} and {lam.shape}. Pass e.g. "
            "`z=(0.1, 0.2), lam=(1.2, 1.2)`."
        )
    if not np.all(np.isfinite(z)) or np.any(z <= 0):
        raise ValueError(
            f"{name}: the income states z = {z} must be positive and finite: z is "
            "the labour endowment a household earns in each state, and a state "
            "with zero or negative income leaves no consumption at the borrowing "
            "limit. Give every state a positive income."
        )
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ValueError(
            f"{name}: the switching intensities lam = {lam} must be positive and "
            "finite: with a zero rate an income state is never left, so the "
            "stationary income distribution is degenerate (or, with both zero, "
            "not unique) and aggregate labour and savings are not defined. Give "
            "both rates a positive value, e.g. `lam=(1.2, 1.2)`."
        )


def _check_income_at_limit(economy: "Huggett | Aiyagari") -> None:
    r"""Income at the borrowing limit must be positive at every rate of the bracket,
    or households at the limit cannot consume: the borrowing limit must be above the
    natural borrowing limit $-w z_{\min}/r$."""
    name = type(economy).__name__
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
                f"{name}: the borrowing limit a_min = {a_min:.6g} is at or below the "
                "natural "
                f"borrowing limit -w z_min / r = {natural:.6g} at r = {r:.6g} (the "
                "top of the interest-rate bracket): a household that borrowed that "
                "much could not pay the interest out of its lowest income, "
                f"w z_min = {w * z_min:.6g}, and consumption at the limit would not "
                f"be positive. Raise a_min above {natural:.6g}, or give an "
                f"`r_bracket` whose upper end is below w z_min / |a_min| = "
                f"{w * z_min / -a_min:.6g}."
            )
        raise ValueError(
            f"{name}: income at the borrowing limit a_min = {a_min:.6g} is {income} at "
            f"r = {r:.6g} (an end of the interest-rate bracket): consumption cannot "
            "stay positive there. Raise a_min, the lowest income state, or narrow "
            "`r_bracket`."
        )


def _as_bracket(name: str, bracket) -> tuple[float, float] | None:
    if bracket is None:
        return None
    try:
        lo, hi = (float(x) for x in bracket)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: `r_bracket` must be a pair of numbers (lower, upper), got "
            f"{bracket!r}. Pass e.g. `r_bracket=(0.01, 0.04)`."
        ) from None
    return lo, hi


def _check_bracket(name: str, label: str, bracket, rho):
    try:
        lo, hi = bracket
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: `{label}` must be a pair (lower, upper), got {bracket!r}. "
            f"Pass e.g. `{label}=(0.01, 0.04)`."
        ) from None
    if not _is_concrete(lo, hi, rho):
        return
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(
            f"{name}: `{label}` must be finite, got {bracket}. Pass e.g. "
            f"`{label}=(0.01, 0.04)`."
        )
    if not lo < hi:
        raise ValueError(
            f"{name}: `{label}` must be (lower, upper) with lower < upper, got "
            f"{bracket}. Swap the ends."
        )
    if not hi < float(rho):
        raise ValueError(
            f"{name}: the upper end of `{label}`, r = {hi}, must be below rho = "
            f"{float(rho)}: at r >= rho households save without bound and there is "
            "no stationary distribution. Lower it below rho."
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


class FiniteDifference(eqx.Module):
    r"""Solves an economy's households by the implicit upwind finite-difference
    scheme on its wealth grid ([`jaxdeq.econ.solve_household`][]), for
    [`jaxdeq.econ.solve_equilibrium`][], and clears the market by
    [`jaxdeq.BracketedNewton`][]: Newton steps on $S(r)$ with $S'(r)$ from one
    implicit forward-mode derivative through the household's HJB and KFE solves,
    kept inside the bracket by bisection. It typically takes 4–6 Newton steps to
    $|S| < 10^{-10}$. Everything is differentiable with respect to the economy's
    parameters (implicit function theorem).

    **Arguments:**

    - `rtol`, `atol`: market clearing: stop when the Newton step on $r$ is at
        most `atol` $+$ `rtol` $|r|$. `None` (the default) follows the economy's
        dtype: $10^{-12}$ and $10^{-14}$ in float64; $100\epsilon$ and
        $\epsilon$ otherwise ($1.2 \cdot 10^{-5}$ and $1.2 \cdot 10^{-7}$ in
        float32), which a float32 solve can reach.
    - `max_steps`: the most root-finding steps.
    - `delta`: the households' pseudo-time step (Moll's codes: 1000;
        `float("inf")` for policy iteration).
    - `household_rtol`, `household_atol`, `household_max_steps`: the tolerances
        and step budget of each household solve (`rtol`, `atol`, `max_steps` of
        [`jaxdeq.econ.solve_household`][]).
    - `check_grid`: warn ([`jaxdeq.econ.CoarseGridWarning`][], with an estimate
        of the error of $r^*$ from [`jaxdeq.econ.grid_error`][], one more solve)
        when the wealth grid is too coarse to resolve the stationary
        distribution: fewer than 20 grid points from the borrowing limit to the
        99th percentile of wealth. Checked when the values are concrete (not
        under `jit`, `vmap` or differentiation).

    **Raises:**

    `TypeError` for a setting of the wrong type, `ValueError` for one out of
    range.
    """

    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 60
    delta: float = 1000.0
    household_rtol: float | None = None
    household_atol: float = 0.0
    household_max_steps: int = 500
    check_grid: bool = True

    def __check_init__(self):
        name = "FiniteDifference"
        check_optional_tolerance(name, "rtol", self.rtol, 1e-12)
        check_optional_tolerance(name, "atol", self.atol, 1e-14)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError(
                f"{name}: `rtol` and `atol` are both 0, so market clearing would "
                "stop only at `max_steps`. Pass e.g. `atol=1e-14`, or leave both "
                "at None."
            )
        check_int(name, "max_steps", self.max_steps, 1, 60)
        check_real(name, "delta", self.delta, 1000.0, positive=True, allow_inf=True)
        check_optional_tolerance(name, "household_rtol", self.household_rtol, 1e-12)
        check_real(name, "household_atol", self.household_atol, 0.0)
        check_int(name, "household_max_steps", self.household_max_steps, 1, 500)
        if not isinstance(self.check_grid, (bool, np.bool_)):
            raise TypeError(
                f"{name}: `check_grid` must be True or False, got "
                f"{self.check_grid!r}. Pass e.g. `check_grid=False`."
            )

    def _household_options(self) -> dict:
        return dict(
            delta=float(self.delta),
            rtol=self.household_rtol,
            atol=float(self.household_atol),
            max_steps=int(self.household_max_steps),
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
    [`jaxdeq.econ.solve_equilibrium`][] with a [`jaxdeq.econ.FiniteDifference`][]
    solver; silence it with `FiniteDifference(check_grid=False)` or
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


def _check_economy(name: str, economy) -> None:
    if not isinstance(economy, AbstractEconomy):
        raise TypeError(
            f"{name}: `economy` must be a jaxdeq.econ.AbstractEconomy, got "
            f"{type(economy).__name__}. Pass e.g. `jaxdeq.econ.Huggett()`."
        )


def _check_solver(name: str, solver) -> None:
    if not isinstance(solver, FiniteDifference):
        raise TypeError(
            f"{name}: `solver` must be a jaxdeq.econ.FiniteDifference, got "
            f"{type(solver).__name__}. Pass e.g. `jaxdeq.econ.FiniteDifference()`."
        )


def grid_error(
    economy: AbstractEconomy,
    solution: EquilibriumSolution | None = None,
    solver: FiniteDifference = FiniteDifference(),
    *,
    r0: float | Array | None = None,
    bracket: tuple[float | Array, float | Array] | None = None,
) -> Scalar:
    r"""An estimate of the discretisation error of the equilibrium rate $r^*$ on the
    economy's wealth grid, by grid refinement.

    The upwind scheme is first-order in the grid step, $r^*_N \approx r^* + C/N$,
    so the same solve on a grid half as fine gives $r^*_{N/2} - r^*_N \approx
    C/N$: the error of $r^*_N$ (Richardson). Grids under 6 points are compared
    with one twice as fine instead, $2(r^*_N - r^*_{2N})$. It costs one more
    equilibrium solve (and its compilation).

    **Arguments:**

    - `economy`: an economy with a `grid_size` field ([`jaxdeq.econ.Huggett`][],
        [`jaxdeq.econ.Aiyagari`][]).
    - `solution`: its equilibrium, if already solved.
    - `solver`, `r0`, `bracket`: as in [`jaxdeq.econ.solve_equilibrium`][].

    **Returns:**

    $|r^*_N - r^*_{\text{other}}|$ scaled as above; NaN when the other solve
    fails.
    """
    _check_economy("grid_error", economy)
    _check_solver("grid_error", solver)
    quiet = dataclasses.replace(solver, check_grid=False)
    if solution is None:
        solution = _solve_fd(economy, quiet, r0=r0, bracket=bracket, throw=False)
    n = economy.household().grid_size
    other = n // 2 if n >= 6 else 2 * n
    coarse = _solve_fd(
        _with_grid_size(economy, other), quiet, r0=r0, bracket=bracket, throw=False
    )
    diff = jnp.abs(solution.r - coarse.r)
    if other > n:
        diff = 2 * diff
    ok = (solution.result == RESULTS.successful) & (coarse.result == RESULTS.successful)
    return jnp.where(ok, diff, jnp.nan)


def _warn_if_coarse(economy, solution, solver, r0, bracket) -> None:
    points = _resolving_points(solution.household)
    if points >= MIN_RESOLVING_POINTS:
        return
    n = economy.household().grid_size
    try:
        error = float(grid_error(economy, solution, solver, r0=r0, bracket=bracket))
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


def _bracket(name: str, economy: AbstractEconomy, bracket, r0):
    """The bracket to search (the economy's unless given) and the start (its
    middle unless given), checked when concrete."""
    rho = economy.household().rho
    if bracket is not None:
        _check_bracket(name, "bracket", bracket, rho)
    lower, upper = bracket if bracket is not None else economy.bracket()
    if r0 is None:
        return lower, upper, 0.5 * (lower + upper)
    if _is_concrete(r0, lower, upper) and not float(lower) <= float(r0) <= float(upper):
        raise ValueError(
            f"{name}: r0 = {float(r0):.6g} is outside the bracket "
            f"[{float(lower):.6g}, {float(upper):.6g}]. Pass an r0 inside it, or a "
            "`bracket` around it (below rho)."
        )
    return lower, upper, r0


def _raise_if_failed(solution, lower, upper, f_lower, f_upper) -> None:
    """`solve_equilibrium`'s errors with `throw=True`, when the values are
    concrete: a bracket without a sign change is a ValueError (the input), any
    other failure a RuntimeError."""
    if solution.result == RESULTS.successful:
        return
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
        f"S = {float(solution.excess_supply):.3g}. Raise the solver's `max_steps` "
        "or loosen its `atol`."
    )


def _solve_fd(
    economy: AbstractEconomy,
    solver: FiniteDifference,
    *,
    r0,
    bracket,
    throw: bool,
) -> EquilibriumSolution:
    lower, upper, r0 = _bracket("solve_equilibrium", economy, bracket, r0)
    dtype = jnp.result_type(economy.household().rho)
    eps = float(jnp.finfo(dtype).eps)
    rtol, atol = solver.rtol, solver.atol
    if rtol is None:
        rtol = 1e-12 if jnp.dtype(dtype) == jnp.float64 else 100 * eps
    if atol is None:
        atol = 1e-14 if jnp.dtype(dtype) == jnp.float64 else eps
    economy = _strongly_typed(economy, dtype)
    solution, f_lower, f_upper = _solve_equilibrium(
        economy,
        jnp.asarray(r0, dtype),
        jnp.asarray(lower, dtype),
        jnp.asarray(upper, dtype),
        float(rtol),
        float(atol),
        int(solver.max_steps),
        solver._household_options(),
    )
    if throw:
        if _is_concrete(solution.r):
            _raise_if_failed(solution, lower, upper, f_lower, f_upper)
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
        solver.check_grid
        and _is_concrete(solution.r, solution.household.density)
        and solution.household.density.ndim == 2
        and bool(solution.result == RESULTS.successful)
    ):
        _warn_if_coarse(economy, solution, solver, r0, bracket)
    return solution


def excess_supply_curve(
    economy: AbstractEconomy,
    rates: Float[Array, " K"],
    solver: FiniteDifference = FiniteDifference(),
) -> Float[Array, " K"]:
    """$S(r)$ at each of `rates` (households solved at each, as `solver` says),
    for plots of the market-clearing condition."""
    _check_economy("excess_supply_curve", economy)
    _check_solver("excess_supply_curve", solver)
    dtype = jnp.result_type(economy.household().rho)
    rates = jnp.asarray(rates, dtype)
    return _excess_curve(
        _strongly_typed(economy, dtype), rates, solver._household_options()
    )


@eqx.filter_jit
def _excess_curve(economy, rates, options):
    return jax.vmap(lambda r: _excess(r, (economy, options))[0])(rates)
