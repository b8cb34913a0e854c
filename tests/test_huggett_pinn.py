"""The Huggett general equilibrium by PINNs (`solve_equilibrium` with a
`PINNHousehold`): residuals, the shape of the wealth distribution, market clearing
by the bracketed root finder, and the interest rate against the finite-difference
reference."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxdeq
from jaxdeq import econ


# R_STAR_FD_REFERENCE: the grid-converged r* of the implicit upwind
# finite-difference scheme (jaxdeq.econ.solve_equilibrium; the same scheme on a
# sparse solver for the finest grids), Moll's parameters. Bisection on
# S(r) = sum a g da to 1e-10 on uniform grids, n = 500: 0.0319166,
# 1000: 0.0339348, 2000: 0.0349946, 4000: 0.0355396, 8000: 0.0358170,
# 16000: 0.0359574, 32000: 0.03602813, 64000: 0.03606371. The scheme converges
# at first order (differences halve: 7.07e-5, 3.56e-5), so Richardson/Aitken
# extrapolation gives r* = 0.036100 (+- 2e-6). The often quoted 0.032 is the
# n = 500 grid's value. benchmarks/econ_ge.py measures the full-size PINN's r*
# against it.
R_STAR_FD_REFERENCE = 0.036100


def _check(sol, r_tol, s_tol, hjb_tol, mass_low=0.005):
    a = jnp.linspace(-0.15, 5.0, 401)[1:]
    # HJB residual (relative to |rho V|).
    assert float(jnp.max(jnp.abs(sol.hjb_residual(a)))) < hjb_tol
    # G is monotone, from the mass point to the income share.
    G = np.asarray(sol.cdf(jnp.linspace(-0.15, 5.0, 2001)))
    assert np.all(np.diff(G, axis=0) >= -1e-12)
    np.testing.assert_allclose(G[-1], [0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(G[0], np.asarray(sol.mass), atol=1e-12)
    # A mass point for the low type only (the high type saves at the limit).
    # FD: 0.0122, 0.0117, 0.0113 at n = 16k, 32k, 64k (first cell, converging
    # like sqrt(da) towards about 0.0105).
    assert mass_low < float(sol.mass[0]) < 0.02
    assert float(sol.mass[1]) == 0.0
    # The low type's mass is what the flux into it requires: the integrated KFE
    # holds at the limit, where lim s_1 g_1 = -lam_1 m_1 (the residual there is
    # O(sqrt(a - a_min)) from the policy's curvature).
    near = jnp.asarray(-0.15 + 1e-10)
    assert abs(float(sol.kfe_residual(near)[0])) < 1e-3
    # The support ends where the high type stops saving; above it G = pi exactly
    # and the KFE holds trivially.
    top = float(sol.support_top)
    assert 1.0 < top < 5.0
    assert abs(float(sol.savings(jnp.asarray(top))[1])) < 1e-9
    assert float(sol.savings(jnp.asarray(top - 0.01))[1]) > 0
    above = jnp.linspace(top, 5.0, 50)
    np.testing.assert_array_equal(np.asarray(sol.cdf(above)), 0.5)
    np.testing.assert_array_equal(np.asarray(sol.density(above[1:])), 0.0)
    np.testing.assert_allclose(np.asarray(sol.kfe_residual(above[1:])), 0.0, atol=1e-15)
    assert float(sol.savings(jnp.asarray(-0.15))[1]) > 0
    assert abs(float(sol.savings(jnp.asarray(-0.15))[0])) < 1e-12
    # Market clearing and the equilibrium rate.
    assert abs(float(sol.excess_supply)) < s_tol
    assert abs(float(sol.r) - R_STAR_FD_REFERENCE) < r_tol


# The small configuration: small networks and few steps.
SMALL = dict(
    width=16,
    depth=2,
    cdf_width=8,
    cdf_depth=2,
    num_points=256,
    quadrature_panels=8,
    test_functions=12,
    adam_steps=(500, 300),
    lbfgs_steps=(1500, 800, 0),
    polish_steps=10,
    log_every=500,
)


@pytest.mark.slow  # six solves of the small configuration, compiled once: minutes
def test_huggett_pinn_small():
    # One root-finding step from the FD r*, on a bracket around it. The root
    # finder solves at both ends (where S has the signs of the FD's), at r* and a
    # slope step beside it, then at the Newton step and beside it. S(r) has slope
    # about 6 near r* (FD: S(0.0355) = -0.0037, S(r*) = 0), so |S| < 0.02 means
    # the PINN's own r* is within about 3e-3 of the reference.
    stages = []
    bracket = (R_STAR_FD_REFERENCE - 0.006, R_STAR_FD_REFERENCE + 0.006)
    solver = econ.PINNHousehold(**SMALL, max_steps=1, atol=1.0)
    sol = econ.solve_equilibrium(
        econ.Huggett(),
        solver,
        r0=R_STAR_FD_REFERENCE,
        bracket=bracket,
        key=jr.PRNGKey(0),
        progress=stages.append,
    )
    # Measured at this size: S(r*) = 0.0088 (about 1.5e-3 in r), a mass point of
    # 0.0104, hjb_max 3e-3, the support's top at 3.06 (FD: 3.12). The tolerances
    # leave room for other BLAS and compilers: this size checks the machinery and
    # the shape of the solution; benchmarks/econ_ge.py the accuracy.
    rates = [r for r, _ in sol.clearing]
    excess = dict(sol.clearing)
    h = solver.slope_step
    r_new = float(sol.r)
    assert rates[:2] == list(bracket)
    assert set(rates[2:4]) == {R_STAR_FD_REFERENCE, R_STAR_FD_REFERENCE + h}
    assert set(rates[4:]) == {r_new, r_new + h}
    assert excess[bracket[0]] < 0 < excess[bracket[1]]
    # One Newton step with the forward-difference slope, and with atol = 1 it is
    # the last: the solution is the rate it lands on, inside the bracket.
    assert int(sol.steps) == 1 and sol.result == jaxdeq.RESULTS.successful
    slope = (excess[R_STAR_FD_REFERENCE + h] - excess[R_STAR_FD_REFERENCE]) / h
    assert 2 < slope < 20
    newton = R_STAR_FD_REFERENCE - excess[R_STAR_FD_REFERENCE] / slope
    np.testing.assert_allclose(r_new, newton, rtol=1e-10)
    assert float(sol.excess_supply) == pytest.approx(excess[r_new], abs=1e-12)
    assert sol.report.successful and int(sol.report.num_steps) == 1
    clearing = [i for i in stages if i.get("stage") == "clearing"]
    assert [i["r"] for i in clearing] == rates
    assert {i["stage"] for i in stages} >= {"hjb_0", "kfe_0", "clearing"}
    _check(sol, r_tol=3e-3, s_tol=0.02, hjb_tol=0.01, mass_low=0.005)


def test_market_clearing_by_the_bracketed_root_finder():
    # The clearing machinery of the PINN with a stand-in for the training runs: a
    # known S(r) = 6 (r - 0.036) + 40 (r - 0.036)^2, whose root is 0.036. The
    # root finder asks for each rate once, slopes by forward differences, and
    # converges to the root; an error in a solve is raised, not lost.
    from jaxdeq.econ._huggett_pinn import _Clearing, _market

    root = 0.036
    asked = []

    def solve_at(r, tag):
        asked.append(r)
        return None, 6 * (r - root) + 40 * (r - root) ** 2, {f"hjb{tag}": {}}

    reports = []
    clearing = _Clearing(solve_at, reports.append, jnp.float64)
    solver = econ.PINNHousehold(atol=1e-10, max_steps=20)
    sol = optx.root_find(
        _market(clearing, jnp.float64, solver.slope_step, 0.045),
        jaxdeq.BracketedNewton(rtol=solver.rtol, atol=solver.atol),
        jnp.asarray(0.02),
        options=dict(lower=0.01, upper=0.045),
        max_steps=solver.max_steps,
        throw=False,
    )
    assert sol.result == optx.RESULTS.successful
    assert abs(float(sol.value) - root) < 1e-10
    assert len(asked) == len(set(asked)) == len(clearing.order)
    assert [x["r"] for x in reports] == [r for r, _ in clearing.order]
    assert asked[:2] == [0.01, 0.045]
    # Each step costs two solves (the rate and its slope), the start as many, and
    # the ends two more.
    assert len(asked) == 2 + 2 * (1 + int(sol.stats["num_steps"]))
    assert float(sol.value) in clearing.solves
    assert set(clearing.history) == {f"hjb_{k}" for k in range(len(asked))}

    def failing(r, tag):
        raise FloatingPointError("the loss became NaN")

    clearing = _Clearing(failing, None, jnp.float64)
    sol = optx.root_find(
        _market(clearing, jnp.float64, 2e-3, 0.045),
        jaxdeq.BracketedNewton(rtol=0.0, atol=1e-10),
        jnp.asarray(0.02),
        options=dict(lower=0.01, upper=0.045),
        throw=False,
    )
    assert isinstance(clearing.error, FloatingPointError)
    assert sol.result != optx.RESULTS.successful


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"lbfgs_steps": (10, 10)}, ValueError, "one int or 3 of them"),
        ({"adam_steps": "many"}, TypeError, "adam_steps"),
        ({"polish_steps": -1}, ValueError, "polish_steps"),
        ({"envelope_weight": -1.0}, ValueError, "envelope_weight"),
        ({"max_steps": 0}, ValueError, "max_steps"),
        ({"width": 16.0}, TypeError, "must be an int"),
        ({"value_focus": 1.5}, ValueError, "value_focus"),
        ({"atol": 0.0, "rtol": 0.0}, ValueError, "both 0"),
    ],
)
@pytest.mark.unchecked
def test_pinn_household_settings_are_checked(kwargs, error, match):
    with pytest.raises(error, match=f"PINNHousehold: .*{match}"):
        econ.PINNHousehold(**kwargs)


@pytest.mark.parametrize(
    "economy, kwargs, error, match",
    [
        (econ.Huggett(z=(0.2, 0.1)), {}, ValueError, "low income state first"),
        (econ.Huggett(), {"r0": 0.06}, ValueError, "outside the bracket"),
        (econ.Huggett(), {"bracket": (0.0, 0.06)}, ValueError, "below rho"),
        (econ.Aiyagari(grid_size=50), {}, TypeError, "Huggett economy"),
        (econ.Huggett(), {"key": None}, TypeError, "needs a key"),
    ],
)
@pytest.mark.unchecked
def test_pinn_household_refuses_what_it_cannot_solve(economy, kwargs, error, match):
    # Refused before any network is built.
    kwargs = {"key": jr.PRNGKey(0), **kwargs}
    with pytest.raises(error, match=f"solve_equilibrium: .*{match}"):
        econ.solve_equilibrium(economy, econ.PINNHousehold(), **kwargs)
