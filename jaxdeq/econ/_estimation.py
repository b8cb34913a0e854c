r"""Moments of a stationary wealth distribution, and estimation of an economy's
parameters from target moments by gradient-based minimum distance through the
general equilibrium, with standard errors from the implicit Jacobian."""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, Int, PyTree, Scalar

from .._solution import RESULTS
from ._checks import check_int
from ._equilibrium import AbstractEconomy, EquilibriumSolution, FiniteDifference
from ._households import HouseholdSolution
from ._solve_equilibrium import solve_equilibrium


def top_wealth_share(solution: HouseholdSolution, fraction: float = 0.1) -> Scalar:
    r"""The share of aggregate wealth held by the richest `fraction` of households.

    With $m_i$ the probability of grid point $a_i$ (summed over income states)
    and $T_i = \sum_{k > i} m_k$ the mass above it, point $i$ contributes
    $\min(m_i, \max(q - T_i, 0))$ of its mass to the top $q$, so the share is
    $\sum_i a_i \min(m_i, \max(q - T_i, 0)) / \sum_i a_i m_i$: exact for the
    discrete distribution (a grid point on the threshold contributes in part) and
    differentiable almost everywhere. Meaningful when aggregate wealth is
    positive (Aiyagari; not Huggett, where it is zero).

    **Arguments:**

    - `solution`: a [`jaxdeq.econ.HouseholdSolution`][] (e.g.
        `equilibrium.household`).
    - `fraction`: $q \in (0, 1)$, e.g. 0.1 for the top decile.
    """
    if not 0 < fraction < 1:
        raise ValueError(
            f"top_wealth_share: `fraction` must be in (0, 1), got {fraction}. Pass "
            "e.g. `fraction=0.1` for the top decile."
        )
    m = solution.wealth_distribution
    a = solution.grid
    above = jnp.cumsum(m[::-1])[::-1] - m  # mass strictly above each point
    weight = jnp.minimum(m, jnp.maximum(fraction - above, 0.0))
    return jnp.sum(a * weight) / jnp.sum(a * m)


def fraction_at_limit(solution: HouseholdSolution) -> Scalar:
    """The fraction of households at the borrowing limit (the mass of the first
    grid point, all income states): the discrete counterpart of the point mass at
    $\\underline a$, to which it converges as the grid is refined."""
    return jnp.sum(solution.mass_at_limit)


class EstimationResult(eqx.Module):
    """The result of [`jaxdeq.econ.estimate`][].

    `params` are the estimates (a pytree like `initial`), `economy` the economy at
    them and `equilibrium` its equilibrium; `moments` and `targets` the model's and
    the data's moments; `jacobian` $G = \\partial m / \\partial\\theta$ at the
    estimates (flattened parameters); `covariance` and `standard_errors` the
    sandwich covariance and its square-rooted diagonal (when a moment covariance
    was given); `loss` the weighted distance; `steps` the Levenberg–Marquardt
    steps taken; `result` whether it converged.
    """

    params: PyTree[Array]
    economy: AbstractEconomy
    equilibrium: EquilibriumSolution
    moments: Float[Array, " M"]
    targets: Float[Array, " M"]
    jacobian: Float[Array, "M P"]
    covariance: Float[Array, "P P"] | None
    standard_errors: PyTree[Array] | None
    loss: Scalar
    steps: Int[Array, ""]
    result: RESULTS


def _unflatten(flat, structure):
    treedef, shapes = structure
    leaves, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        leaves.append(flat[start : start + size].reshape(shape))
        start += size
    return jax.tree_util.tree_unflatten(treedef, leaves)


# At module level, so that repeated estimations with the same `where` and `moments`
# reuse the compiled moments and Jacobian.
@eqx.filter_jit
def _moments_and_jacobian(
    flat, economy, where, structure, moments, target_shape, solver
):
    def fn(f):
        econ = eqx.tree_at(where, economy, _unflatten(f, structure))
        equilibrium = solve_equilibrium(econ, solver, throw=False)
        ok = equilibrium.result == RESULTS.successful
        m = jnp.asarray(moments(equilibrium), flat.dtype)
        if m.shape != target_shape:
            raise ValueError(
                f"estimate: `moments` returned shape {m.shape}, but `targets` has "
                f"shape {target_shape}. Return one moment per target."
            )
        m = jnp.where(ok, m, jnp.nan)
        return m, (m, equilibrium)

    jac, (m, equilibrium) = jax.jacfwd(fn, has_aux=True)(flat)
    return m, jac, equilibrium


def estimate(
    economy: AbstractEconomy,
    where: Callable[[AbstractEconomy], Any],
    initial: PyTree[ArrayLike],
    moments: Callable[[EquilibriumSolution], Float[Array, " M"]],
    targets: Float[Array, " M"],
    *,
    weights: Float[Array, "M M"] | None = None,
    moment_covariance: Float[Array, "M M"] | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-12,
    max_steps: int = 50,
    throw: bool = True,
    solver: FiniteDifference = FiniteDifference(),
) -> EstimationResult:
    r"""Estimate parameters of an economy from target moments by minimum distance
    through its general equilibrium.

    Minimises $(m(\theta) - \hat m)^\top W (m(\theta) - \hat m)$, where $m(\theta)$
    are the moments of the equilibrium at parameters $\theta$
    ([`jaxdeq.econ.solve_equilibrium`][]), by Levenberg–Marquardt. The Jacobian
    $G = \partial m/\partial \theta$ is exact: forward-mode implicit
    differentiation through the equilibrium interest rate and the household's HJB
    and KFE solves, one compiled function evaluating $m$ and $G$ together.

    The iteration works in scaled coordinates $\theta = \theta_0 + D x$, with $D$
    making the columns of $W^{1/2} G$ unit at the start (Moré's scaling), so its
    damping means the same whatever the units of the parameters and moments. Each
    step solves $\min_\delta \|W^{1/2}(m - \hat m + G D \delta)\|^2 +
    \lambda\|\delta\|^2$; a step is accepted when it lowers the loss (and the
    damping is relaxed by Nielsen's rule), and rejected otherwise (the damping
    doubles), including when the equilibrium cannot be found at the trial point
    (its moments are not finite). It stops when a step changes every parameter by
    at most `atol` $+$ `rtol` $|\theta_k|$, or when the gradient of the loss
    vanishes to rounding.

    With a covariance $\Sigma$ of the target moments (the sampling covariance of
    $\hat m$), the estimator's covariance is the sandwich
    $(G^\top W G)^{-1} G^\top W \Sigma W G (G^\top W G)^{-1}$, which is
    $(G^\top \Sigma^{-1} G)^{-1}$ for the default efficient weight
    $W = \Sigma^{-1}$.

    **Arguments:**

    - `economy`: the economy, at any parameter values.
    - `where`: selects the parameters to estimate, as in `equinox.tree_at`: e.g.
        `lambda e: e.rho` or `lambda e: (e.rho, e.lam)`.
    - `initial`: their starting values, a pytree like `where(economy)`.
    - `moments`: `moments(equilibrium) -> array` of the model's moments, e.g.
        `lambda eq: jnp.stack([top_wealth_share(eq.household),
        eq.aggregates["capital_output_ratio"]])`.
    - `targets`: the data moments $\hat m$.
    - `weights`: the weight matrix $W$ (default $\Sigma^{-1}$ when
        `moment_covariance` is given, else the identity).
    - `moment_covariance`: $\Sigma$, to get standard errors.
    - `rtol`, `atol`: stop when a step changes each parameter by at most
        `atol` $+$ `rtol` $|\theta_k|$.
    - `max_steps`: the most Levenberg–Marquardt steps (accepted or not).
    - `throw`: raise if the minimisation does not converge.
    - `solver`: the [`jaxdeq.econ.FiniteDifference`][] settings of each
        equilibrium ([`jaxdeq.econ.solve_equilibrium`][]); its grid check is
        skipped inside the estimation, which differentiates through it.

    **Returns:**

    An [`jaxdeq.econ.EstimationResult`][]: the estimates, the economy at them,
    its equilibrium and moments, $G$, and (with `moment_covariance`) the
    covariance and standard errors of the estimates.
    """
    targets = jnp.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(
            f"estimate: `targets` must be a vector of moments, got shape "
            f"{targets.shape}. Pass a 1-D array."
        )
    dtype = targets.dtype
    flat0, unravel = ravel_pytree(
        jax.tree.map(lambda x: jnp.asarray(x, dtype), initial)
    )
    n_params, n_moments = flat0.shape[0], targets.shape[0]
    if n_params > n_moments:
        raise ValueError(
            f"estimate: {n_params} parameters cannot be identified from {n_moments} "
            "moments. Add moments or estimate fewer parameters."
        )
    check_int("estimate", "max_steps", max_steps, 1, 50)
    if not isinstance(solver, FiniteDifference):
        raise TypeError(
            "estimate: `solver` must be a jaxdeq.econ.FiniteDifference (the "
            f"estimation differentiates through the equilibrium), got "
            f"{type(solver).__name__}. Pass e.g. `jaxdeq.econ.FiniteDifference()`."
        )
    max_steps = int(max_steps)
    sigma = None if moment_covariance is None else jnp.asarray(moment_covariance, dtype)
    if sigma is not None and sigma.shape != (n_moments, n_moments):
        raise ValueError(
            f"estimate: `moment_covariance` must be {n_moments} x {n_moments}, got "
            f"{sigma.shape}. Pass one row and column per moment."
        )
    if weights is None:
        weights = (
            jnp.eye(n_moments, dtype=dtype) if sigma is None else jnp.linalg.inv(sigma)
        )
    weights = jnp.asarray(weights, dtype)
    if weights.shape != (n_moments, n_moments):
        raise ValueError(
            f"estimate: `weights` must be {n_moments} x {n_moments}, got "
            f"{weights.shape}. Pass one row and column per moment."
        )
    root_weight = jnp.linalg.cholesky(0.5 * (weights + weights.T)).T
    if not jnp.all(jnp.isfinite(root_weight)):
        raise ValueError(
            "estimate: `weights` (or `moment_covariance`) must be positive "
            "definite. Check it for zero or negative eigenvalues."
        )

    leaves, treedef = jax.tree_util.tree_flatten(initial)
    structure = (treedef, tuple(jnp.shape(leaf) for leaf in leaves))

    def evaluate(flat):
        m, jac, equilibrium = _moments_and_jacobian(
            flat,
            economy,
            where,
            structure,
            moments,
            targets.shape,
            dataclasses.replace(solver, check_grid=False),
        )
        r = root_weight @ (m - targets)
        g = root_weight @ jac
        finite = bool(jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(g)))
        return m, r, g, equilibrium, finite

    m, res, gw, equilibrium, finite = evaluate(flat0)
    if not finite:
        raise ValueError(
            "estimate: no equilibrium (or no finite moments) at the initial "
            f"parameters {unravel(flat0)}; start where the equilibrium exists."
        )
    column = jnp.linalg.norm(gw, axis=0)
    if jnp.any(column == 0):
        raise ValueError(
            "estimate: the moments do not depend on parameter(s) "
            f"{[int(i) for i in jnp.flatnonzero(column == 0)]} (in flattened "
            "order) at the initial values, so they cannot be identified."
        )
    scale = 1.0 / column
    eps = float(jnp.finfo(dtype).eps)

    flat = flat0
    loss = float(res @ res)
    damping, growth = 1e-3, 2.0
    steps = 0
    result = RESULTS.max_steps_reached
    while steps < max_steps:
        j = gw * scale[None]
        gradient = j.T @ res
        if loss == 0.0 or float(jnp.max(jnp.abs(gradient))) <= eps * max(loss, eps):
            result = RESULTS.successful
            break
        # Damped Gauss-Newton step by least squares on [J; sqrt(damping) I].
        augmented = jnp.concatenate(
            [j, jnp.sqrt(damping) * jnp.eye(n_params, dtype=dtype)]
        )
        rhs = jnp.concatenate([-res, jnp.zeros(n_params, dtype)])
        delta = jnp.linalg.lstsq(augmented, rhs)[0]
        step = scale * delta
        trial = flat + step
        steps += 1
        m_t, res_t, gw_t, eq_t, finite = evaluate(trial)
        predicted = loss - float(jnp.sum((res + j @ delta) ** 2))
        actual = loss - float(res_t @ res_t) if finite else -jnp.inf
        small = bool(jnp.all(jnp.abs(step) <= atol + rtol * jnp.abs(trial)))
        if finite and predicted > 0 and actual > 1e-4 * predicted:
            ratio = actual / predicted
            damping *= max(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
            growth = 2.0
            flat, m, res, gw, equilibrium = trial, m_t, res_t, gw_t, eq_t
            loss = float(res @ res)
            if small:
                result = RESULTS.successful
                break
        else:
            if small and finite and actual >= 0:
                # The step is below the tolerance and does not raise the loss.
                result = RESULTS.successful
                break
            damping *= growth
            growth *= 2.0
    if throw and result != RESULTS.successful:
        raise RuntimeError(
            f"estimate: Levenberg-Marquardt did not converge in {max_steps} steps; "
            f"last parameters {unravel(flat)}, loss {loss:.3e}. Raise `max_steps` or "
            "start closer."
        )
    jacobian = jnp.linalg.solve(root_weight, gw)
    covariance = standard_errors = None
    if sigma is not None:
        bread = jnp.linalg.inv(jacobian.T @ weights @ jacobian)
        meat = jacobian.T @ weights @ sigma @ weights @ jacobian
        covariance = bread @ meat @ bread
        standard_errors = unravel(jnp.sqrt(jnp.diagonal(covariance)))
    gap = m - targets
    return EstimationResult(
        params=unravel(flat),
        economy=eqx.tree_at(where, economy, unravel(flat)),
        equilibrium=equilibrium,
        moments=m,
        targets=targets,
        jacobian=jacobian,
        covariance=covariance,
        standard_errors=standard_errors,
        loss=gap @ weights @ gap,
        steps=jnp.asarray(steps),
        result=result,  # pyright: ignore[reportArgumentType]
    )
