"""Backward defaults follow the forward solve, and a backward pass after a failed
forward solve (or with a monitored residual above tolerance) reports failure."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxdeq
from jaxdeq import monotone
from jaxdeq._adjoint import follow_rtol

from .helpers import affine, tanh_args, tanh_cell


APPROXIMATE = (
    jaxdeq.JacobianFreeAdjoint(),
    jaxdeq.NeumannAdjoint(terms=2),
    jaxdeq.PhantomAdjoint(steps=3, damping=0.5),
)
ALL = (jaxdeq.ImplicitAdjoint(),) + APPROXIMATE


def test_follow_rtol():
    f64, f32, bf16 = (jnp.zeros(3, d) for d in (jnp.float64, jnp.float32, jnp.bfloat16))
    assert follow_rtol(jaxdeq.Anderson(rtol=1e-12, atol=1e-12), f64) == 1e-12
    assert follow_rtol(jaxdeq.Anderson(rtol=1e-4, atol=1e-6), f32) == 1e-4
    # Never tighter than ten epsilons of the state's dtype.
    eps32 = float(jnp.finfo(jnp.float32).eps)
    assert follow_rtol(jaxdeq.Anderson(rtol=1e-12, atol=1e-12), f32) == 10 * eps32
    assert follow_rtol(jaxdeq.Anderson(rtol=1e-3, atol=0.0), bf16) > 1e-3
    # A pure absolute tolerance is read relative to a state of order one.
    assert follow_rtol(jaxdeq.Anderson(rtol=0.0, atol=1e-8), f64) == 1e-8
    # A solver that states no tolerance gets the old default.
    assert follow_rtol(object(), f64) == 1e-6


def test_default_gradient_follows_tight_forward(getkey):
    # Before: the backward solve stopped at 1e-6 whatever the forward tolerance, and
    # the gradient agreed with finite differences to ~1e-7.
    args = tanh_args(getkey(), n=6, m=3, norm=0.9)
    solver = jaxdeq.Anderson(rtol=1e-12, atol=1e-12)

    def loss(args, probe=None):
        z = jaxdeq.fixed_point(
            tanh_cell, solver, jnp.zeros(6), args, max_steps=500, backward_stats=probe
        ).value
        return jnp.sum(jnp.sin(z) + z**2)

    grads, stats = jax.grad(loss, argnums=(0, 1))(args, jaxdeq.BackwardStats.probe())
    assert stats.success == 1 and stats.rel_residual <= 1e-11
    direction = jax.tree.map(lambda a: jr.normal(getkey(), a.shape), args)

    def along(t):
        return loss(jax.tree.map(lambda a, d: a + t * d, args, direction))

    # Richardson-extrapolated central differences: error ~ h^4 + eps / h.
    central = lambda h: (along(h) - along(-h)) / (2 * h)
    fd = (4 * central(5e-4) - central(1e-3)) / 3
    exact = sum(
        jnp.vdot(g, d)
        for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction))
    )
    np.testing.assert_allclose(exact, fd, rtol=1e-8)


def _batched_affine_loss(adjoint, max_steps=30):
    # f(z) = a z + 1 per sample: a = 0.2 converges in 30 Picard steps, a = 0.97 not.
    solver = optx.FixedPointIteration(rtol=1e-10, atol=1e-10)

    def loss(a, probe):
        def one(a, p):
            args = (a * jnp.eye(2), jnp.ones(2))
            return jaxdeq.fixed_point(
                affine,
                solver,
                jnp.zeros(2),
                args,
                max_steps=max_steps,
                adjoint=adjoint,
                throw=False,
                backward_stats=p,
            ).value

        return jnp.sum(jax.vmap(one)(a, probe))

    return loss


@pytest.mark.parametrize("adjoint", ALL)
def test_failed_forward_fails_backward_per_sample(adjoint):
    loss = _batched_affine_loss(adjoint)
    a = jnp.array([0.2, 0.97])
    _, stats = jax.grad(loss, argnums=(0, 1))(a, jaxdeq.BackwardStats.probe((2,)))
    np.testing.assert_array_equal(stats.success, [1.0, 0.0])
    failed = stats.result == jaxdeq.RESULTS.backward_failed
    np.testing.assert_array_equal(failed, [False, True])


def test_failed_forward_raises_when_adjoint_throws():
    def loss(a):
        return jnp.sum(
            optx.fixed_point(
                affine,
                optx.FixedPointIteration(rtol=1e-10, atol=1e-10),
                jnp.zeros(2),
                (a * jnp.eye(2), jnp.ones(2)),
                max_steps=10,
                adjoint=jaxdeq.ImplicitAdjoint(),
                throw=False,
            ).value
        )

    with pytest.raises(Exception, match="forward solve did not converge"):
        jax.grad(loss)(jnp.array(0.97))
    jax.grad(loss)(jnp.array(0.01))  # converges in 10 steps: no error


@pytest.mark.parametrize(
    "adjoint",
    (
        jaxdeq.NeumannAdjoint(terms=4, monitor=True, throw=False),
        jaxdeq.JacobianFreeAdjoint(monitor=True, throw=False),
        jaxdeq.PhantomAdjoint(steps=4, monitor=True, throw=False),
    ),
)
def test_monitored_residual_above_tolerance_is_failure(adjoint):
    # Spectral radius 1.5: the forward solve converges (Anderson is Krylov-like on
    # an affine map), but the Neumann series of (I - J^T)^{-1} diverges.
    args = (jnp.array([[1.5, 0.2], [0.0, 0.3]]), jnp.array([1.0, -1.0]))

    def loss(args, probe, adjoint):
        sol = jaxdeq.fixed_point(
            affine,
            jaxdeq.Anderson(rtol=1e-10, atol=1e-12),
            jnp.zeros(2),
            args,
            adjoint=adjoint,
            backward_stats=probe,
        )
        return jnp.sum(sol.value)

    probe = jaxdeq.BackwardStats.probe()
    _, stats = jax.grad(loss, argnums=(0, 1))(args, probe, adjoint)
    assert stats.rel_residual > 1 and stats.success == 0
    with pytest.raises(Exception, match="backward"):
        jax.grad(loss)(args, probe, eqx.tree_at(lambda a: a.throw, adjoint, True))


def test_splitting_adjoint_reports_failed_forward(getkey):
    n = 5
    op = monotone.MonotoneLinear(n, margin=0.5, key=getkey())
    problem = monotone.MonotoneProblem(op, monotone.ReLU(), jr.normal(getkey(), (n,)))

    def loss(bias, probe, max_steps):
        p = monotone.MonotoneProblem(problem.operator, problem.prox, bias)
        sol = monotone.solve(
            p,
            jaxdeq.PeacemanRachford(rtol=1e-12, atol=1e-12),
            max_steps=max_steps,
            throw=False,
            backward_stats=probe,
        )
        return jnp.sum(sol.value**2)

    probe = jaxdeq.BackwardStats.probe()
    stats = jax.grad(loss, argnums=1)(problem.bias, probe, 2)
    assert stats.success == 0
    stats = jax.grad(loss, argnums=1)(problem.bias, probe, 5000)
    assert stats.success == 1 and stats.rel_residual <= 1e-10
