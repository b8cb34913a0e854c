"""jaxdeq.Homotopy's defaults are sound for root problems, and a path that runs off to
infinity is reported as divergence within a few steps (issue 1/11)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import jaxdeq


def _arctan(z, a):
    return jnp.arctan(z) - a


_solve = eqx.filter_jit(
    lambda solver, a: optx.root_find(
        _arctan, solver, jnp.array(10.0), a, max_steps=256, throw=False
    )
)


def test_default_kind_is_newton():
    assert jaxdeq.Homotopy(rtol=1e-8, atol=1e-10).kind == "newton"


@pytest.mark.parametrize("a", [-1.0, 0.0, 0.5, 1.0, 1.4])
def test_default_finds_arctan_roots_from_far(a):
    # Before: the default (fixed-point) homotopy ran off to infinity and used all 256
    # steps. Measured now: 5 to 13 steps.
    sol = _solve(jaxdeq.Homotopy(rtol=1e-8, atol=1e-10), jnp.array(a))
    assert sol.result == optx.RESULTS.successful
    assert sol.stats["num_steps"] <= 20
    np.testing.assert_allclose(sol.value, np.tan(a), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("a", [1.6, 2.0, -2.0])
def test_default_reports_no_root_quickly(a):
    # |a| > π/2: no root; the Newton homotopy's path goes to infinity at λ < 1.
    # Before: all 256 steps, then max_steps_reached. Measured now: 7 steps for a = 2,
    # 21 for a = -2 (the path first crosses back over the start's radius).
    sol = _solve(jaxdeq.Homotopy(rtol=1e-8, atol=1e-10), jnp.array(a))
    assert sol.result == optx.RESULTS.nonlinear_divergence
    assert sol.stats["num_steps"] <= 30


@pytest.mark.parametrize("a", [0.0, 1.0])
def test_fixed_point_kind_runaway_reported_quickly(a):
    # The fixed-point homotopy of arctan(z) - a from z0 = 10 runs off to +infinity
    # (z ~ (π/2 - a) / (1 - λ)). Before: all 256 steps; now a divergence in a few.
    solver = jaxdeq.Homotopy(rtol=1e-8, atol=1e-10, kind="fixed_point")
    sol = _solve(solver, jnp.array(a))
    assert sol.result == optx.RESULTS.nonlinear_divergence
    assert sol.stats["num_steps"] <= 20


def test_reported_residual_is_of_the_returned_value():
    sol = _solve(jaxdeq.Homotopy(rtol=1e-8, atol=1e-10), jnp.array(0.5))
    exact = jnp.abs(_arctan(sol.value, 0.5))
    np.testing.assert_allclose(sol.state.abs_residual, exact, rtol=1e-12, atol=0)
    np.testing.assert_allclose(
        sol.state.rel_residual, exact / jnp.abs(sol.value), rtol=1e-10
    )


@pytest.mark.parametrize("bad", [{"rtol": float("inf")}, {"atol": float("nan")}])
def test_tolerances_must_be_finite(bad):
    kwargs = {"rtol": 1e-6, "atol": 1e-8} | bad
    with pytest.raises(ValueError, match="finite"):
        jaxdeq.Homotopy(**kwargs)


def test_homotopy_path_kind_follows_problem():
    # A root problem gets the Newton homotopy: g(z(λ)) = (1 - λ) g(z0).
    lam = jnp.linspace(0.0, 0.9, 4)
    path = jaxdeq.homotopy_path(_arctan, jnp.array(10.0), lam, 0.5, rtol=1e-10)
    g0 = _arctan(jnp.array(10.0), 0.5)
    np.testing.assert_allclose(_arctan(path, 0.5), (1 - lam) * g0, atol=1e-7)
