"""Economic models with known answers and the machinery that solves them, each
solver called as `solve_x(problem, solver_settings, *, key=...)`: continuous-time
models whose value function solves an HJB equation, solved by PINNs
(`solve_hjb(model, PINN(...), key=...)` on an `AbstractHJBModel`: cake-eating,
neoclassical growth, Merton, a d-dimensional LQR); Deep Equilibrium Nets for
discrete-time models (`solve_deqn(model, DEQN(...), key=...)` on an
`AbstractDEQNModel`, with quadrature rules for the expectations; Brock–Mirman and
its tuned `DEQN.brock_mirman()`); and heterogeneous-agent economies in stationary
general equilibrium (`solve_equilibrium(economy, FiniteDifference(...))` with
finite-difference households and implicit derivatives, or
`PINNHousehold(...)` for Huggett by neural networks; `estimate` from moments;
Huggett and Aiyagari)."""

# Continuous time: HJB equations solved by PINNs
# Deep Equilibrium Nets
from ._brock_mirman import BrockMirman as BrockMirman
from ._cake_eating import CakeEating as CakeEating
from ._deqn import (
    AbstractClosedFormDEQNModel as AbstractClosedFormDEQNModel,
    AbstractDEQNModel as AbstractDEQNModel,
    DEQN as DEQN,
    DEQNPolicy as DEQNPolicy,
    DEQNSolution as DEQNSolution,
    euler_error_summary as euler_error_summary,
    EulerErrorSummary as EulerErrorSummary,
    evaluate_euler_errors as evaluate_euler_errors,
    evaluate_residuals as evaluate_residuals,
    fischer_burmeister as fischer_burmeister,
    simulate as simulate,
    solve_deqn as solve_deqn,
)

# Heterogeneous agents in general equilibrium
from ._equilibrium import (
    AbstractEconomy as AbstractEconomy,
    Aiyagari as Aiyagari,
    CoarseGridWarning as CoarseGridWarning,
    EquilibriumSolution as EquilibriumSolution,
    excess_supply_curve as excess_supply_curve,
    FiniteDifference as FiniteDifference,
    grid_error as grid_error,
    Huggett as Huggett,
)
from ._estimation import (
    estimate as estimate,
    EstimationResult as EstimationResult,
    fraction_at_limit as fraction_at_limit,
    top_wealth_share as top_wealth_share,
)
from ._growth import Growth as Growth
from ._hjb import (
    AbstractClosedFormHJBModel as AbstractClosedFormHJBModel,
    AbstractHJBModel as AbstractHJBModel,
    crra as crra,
    discount_scale as discount_scale,
    evaluate_hjb as evaluate_hjb,
    HJBSolution as HJBSolution,
    no_shape_violation as no_shape_violation,
    PINN as PINN,
    solve_hjb as solve_hjb,
)
from ._households import (
    AbstractHousehold as AbstractHousehold,
    diffusion_generator as diffusion_generator,
    hjb_residual as hjb_residual,
    Household as Household,
    HouseholdSolution as HouseholdSolution,
    poisson_generator as poisson_generator,
    Prices as Prices,
    solve_household as solve_household,
    stationary_density as stationary_density,
    stationary_income_distribution as stationary_income_distribution,
    transition_operator as transition_operator,
    upwind_policy as upwind_policy,
)
from ._huggett_pinn import (
    HuggettPINNSolution as HuggettPINNSolution,
    PINNHousehold as PINNHousehold,
)
from ._lqr import LQR as LQR
from ._merton import Merton as Merton
from ._plots import (
    plot_brock_mirman as plot_brock_mirman,
    plot_equilibrium as plot_equilibrium,
    plot_hjb as plot_hjb,
)
from ._quadrature import (
    gauss_hermite as gauss_hermite,
    monomial_rule as monomial_rule,
    monte_carlo as monte_carlo,
    Quadrature as Quadrature,
)
from ._solve_equilibrium import solve_equilibrium as solve_equilibrium
from ._statistics import (
    distribution_statistics as distribution_statistics,
    DistributionStatistics as DistributionStatistics,
)
