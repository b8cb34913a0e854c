"""Property tests: on random contractions every solver reaches the same point."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq

from .helpers import fixed_point_solvers, tanh_cell


N, M = 6, 3


@jax.jit
def _all_solutions(w, u, x, b):
    args = (w, u, x, b)
    return [
        jaxdeq.fixed_point(tanh_cell, solver, jnp.zeros(N), args, max_steps=2000).value
        for solver in fixed_point_solvers
    ]


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    norm=st.floats(0.05, 0.95),
    scale=st.floats(0.1, 3.0),
)
@pytest.mark.slow
def test_every_solver_reaches_the_same_point(seed, norm, scale):
    k1, k2, k3, k4 = jr.split(jr.PRNGKey(seed), 4)
    w = jr.normal(k1, (N, N))
    w = norm * w / jnp.linalg.norm(w, 2)
    u = scale * jr.normal(k2, (N, M))
    x = jr.normal(k3, (M,))
    b = jr.normal(k4, (N,))
    solutions = _all_solutions(w, u, x, b)
    # tanh is 1-Lipschitz, so the map is a contraction with constant `norm` and the
    # error of a point with residual r is at most r / (1 - norm).
    for z in solutions:
        np.testing.assert_allclose(z, solutions[0], atol=1e-8 / (1 - norm))
        np.testing.assert_allclose(tanh_cell(z, (w, u, x, b)), z, atol=1e-9)
