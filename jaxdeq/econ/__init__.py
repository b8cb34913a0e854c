"""Economic models with known answers and the machinery that solves them:
continuous-time models whose value function solves an HJB equation, solved by PINNs
(`solve_hjb` on an `AbstractHJBModel`: cake-eating, neoclassical growth, Merton,
a d-dimensional LQR), and Deep Equilibrium Nets for discrete-time models
(`solve_deqn` on an `AbstractDEQNModel`, with quadrature rules for the
expectations; Brock–Mirman)."""

# Continuous time: HJB equations solved by PINNs
# Deep Equilibrium Nets
from ._brock_mirman import (
    BrockMirman as BrockMirman,
    BrockMirmanSolution as BrockMirmanSolution,
    plot_brock_mirman as plot_brock_mirman,
    solve_brock_mirman as solve_brock_mirman,
)
from ._cake_eating import CakeEating as CakeEating
from ._deqn import (
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
from ._growth import Growth as Growth
from ._hjb import (
    AbstractHJBModel as AbstractHJBModel,
    crra as crra,
    evaluate_hjb as evaluate_hjb,
    HJBSolution as HJBSolution,
    plot_hjb as plot_hjb,
    solve_hjb as solve_hjb,
)
from ._lqr import LQR as LQR
from ._merton import Merton as Merton
from ._quadrature import (
    gauss_hermite as gauss_hermite,
    monomial_rule as monomial_rule,
    monte_carlo as monte_carlo,
    Quadrature as Quadrature,
)
