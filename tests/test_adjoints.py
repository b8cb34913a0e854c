import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import jaxdeq

from .helpers import (
    affine,
    battery,
    finite_difference,
    fixed_point_solvers,
    implicit_adjoints,
    slow_unless,
    tanh_args,
    tanh_cell,
    tight_implicit,
)


SOLVER = jaxdeq.Anderson(rtol=1e-12, atol=1e-13)


def _loss(adjoint, solver=SOLVER, fn=tanh_cell, max_steps=500):
    def loss(args, probe=None):
        sol = jaxdeq.fixed_point(
            fn,
            solver,
            jnp.zeros(args[0].shape[0]),
            args,
            max_steps=max_steps,
            adjoint=adjoint,
            backward_stats=probe,
        )
        z = sol.value
        return jnp.sum(jnp.sin(z) + z**2)

    return loss


def _directional(grads, direction):
    return sum(
        jnp.vdot(g, d)
        for g, d in zip(
            jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction)
        )
    )


def _random_direction(key, tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jr.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


# The default run: the default-style GMRES backward and a direct (LU) one.
@pytest.mark.parametrize(
    "adjoint",
    slow_unless(
        implicit_adjoints,
        {"adjoint0", "adjoint2"},
        [f"adjoint{i}" for i in range(len(implicit_adjoints))],
    ),
)
def test_implicit_matches_finite_differences(adjoint, getkey):
    args = tanh_args(getkey(), n=6, m=3, norm=0.9)
    loss = _loss(adjoint)
    grads = jax.grad(loss)(args)
    for _ in range(2):
        direction = _random_direction(getkey(), args)
        fd = finite_difference(
            lambda t, direction=direction: loss(
                jax.tree_util.tree_map(lambda a, d: a + t * d, args, direction)
            ),
            0.0,
            1.0,
        )
        # Central differences at eps=1e-6 in float64: truncation ~1e-12, rounding
        # ~1e-10; the forward and backward tolerances are 1e-12 / 1e-11.
        np.testing.assert_allclose(
            _directional(grads, direction), fd, rtol=1e-7, atol=1e-8
        )


@pytest.mark.parametrize("solver", battery(fixed_point_solvers, (jaxdeq.Anderson,)))
def test_implicit_matches_unrolled(solver, getkey):
    args = tanh_args(getkey(), n=6, m=3, norm=0.8)
    implicit = jax.grad(_loss(tight_implicit, solver=solver))(args)
    # Unrolled: differentiate through every Picard step of a long, tight solve.
    unrolled = jax.grad(
        _loss(
            optx.RecursiveCheckpointAdjoint(),
            solver=optx.FixedPointIteration(rtol=1e-14, atol=1e-14),
            max_steps=400,
        )
    )(args)
    for a, b in zip(
        jax.tree_util.tree_leaves(implicit), jax.tree_util.tree_leaves(unrolled)
    ):
        # The forward tolerances of 1e-10 bound the difference.
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_implicit_in_root_find():
    # Broyden in optimistix.root_find with jaxdeq's implicit adjoint, against the
    # closed form: y^3 + a y = 2 gives dy/da = -y / (3 y^2 + a).
    def fn(y, a):
        return y**3 + a * y - 2.0

    def solve(a):
        return optx.root_find(
            fn,
            jaxdeq.Broyden(rtol=1e-13, atol=1e-13),
            jnp.ones(3),
            a,
            adjoint=jaxdeq.ImplicitAdjoint(
                linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12)
            ),
            max_steps=200,
        ).value

    a = jnp.array([1.0, 2.0, 3.0])
    y = solve(a)
    np.testing.assert_allclose(fn(y, a), 0, atol=1e-12)
    grad = jax.grad(lambda a: jnp.sum(solve(a) ** 2))(a)
    np.testing.assert_allclose(grad, 2 * y * (-y / (3 * y**2 + a)), rtol=1e-10)


def _jacobians(args):
    """z*, dense J = df/dz and the vjp of f with respect to args, at z*."""
    z = jaxdeq.fixed_point(tanh_cell, SOLVER, jnp.zeros(args[0].shape[0]), args).value
    jac = jax.jacobian(lambda _z: tanh_cell(_z, args))(z)
    _, vjp_args = jax.vjp(lambda _a: tanh_cell(z, _a), args)
    return z, jac, vjp_args


def _cotangent(z):
    return jnp.cos(z) + 2 * z


@pytest.mark.parametrize("terms", [0, 1, 3])
def test_neumann_formula(terms, getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.7)
    z, jac, vjp_args = _jacobians(args)
    v = _cotangent(z)
    w = sum(jnp.linalg.matrix_power(jac.T, i) @ v for i in range(terms + 1))
    (expected,) = vjp_args(w)
    grads = jax.grad(_loss(jaxdeq.NeumannAdjoint(terms=terms)))(args)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_jacobian_free_formula(getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.7)
    z, _, vjp_args = _jacobians(args)
    (expected,) = vjp_args(_cotangent(z))
    grads = jax.grad(_loss(jaxdeq.JacobianFreeAdjoint()))(args)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("steps,damping", [(1, 1.0), (3, 0.5), (5, 0.8)])
def test_phantom_formula(steps, damping, getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.7)
    z, _, _ = _jacobians(args)

    def unrolled(_args):
        y = z
        for _ in range(steps):
            y = (1 - damping) * y + damping * tanh_cell(y, _args)
        return y

    _, vjp_fn = jax.vjp(unrolled, args)
    (expected,) = vjp_fn(_cotangent(z))
    grads = jax.grad(_loss(jaxdeq.PhantomAdjoint(steps=steps, damping=damping)))(args)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_phantom_one_step_is_jacobian_free(getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.7)
    phantom = jax.grad(_loss(jaxdeq.PhantomAdjoint(steps=1, damping=1.0)))(args)
    jfb = jax.grad(_loss(jaxdeq.JacobianFreeAdjoint()))(args)
    for a, b in zip(jax.tree_util.tree_leaves(phantom), jax.tree_util.tree_leaves(jfb)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_neumann_tends_to_implicit(getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.5)
    implicit = jax.grad(_loss(tight_implicit))(args)
    neumann = jax.grad(_loss(jaxdeq.NeumannAdjoint(terms=60)))(args)
    # ||J|| <= 0.5, so the series tail after 60 terms is below 0.5^61 ~ 4e-19.
    for a, b in zip(
        jax.tree_util.tree_leaves(implicit), jax.tree_util.tree_leaves(neumann)
    ):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_forward_value_is_exact_for_approximate_adjoints(getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.7)
    reference = jaxdeq.fixed_point(tanh_cell, SOLVER, jnp.zeros(5), args).value
    for adjoint in (
        jaxdeq.PhantomAdjoint(steps=3, damping=0.5),
        jaxdeq.JacobianFreeAdjoint(),
        jaxdeq.NeumannAdjoint(terms=2),
    ):
        value = jaxdeq.fixed_point(
            tanh_cell, SOLVER, jnp.zeros(5), args, adjoint=adjoint
        ).value
        np.testing.assert_array_equal(value, reference)


def test_backward_stats_are_reported(getkey):
    args = tanh_args(getkey(), n=6, m=3, norm=0.9)
    loss = _loss(jaxdeq.ImplicitAdjoint())
    _, stats = jax.grad(loss, argnums=(0, 1))(args, jaxdeq.BackwardStats.probe())
    assert isinstance(stats, jaxdeq.BackwardStats)
    assert stats.success == 1
    assert 1 <= stats.num_steps <= 30
    assert stats.rel_residual < 1e-6
    # Monitored approximate adjoints measure their distance from the exact solve.
    loss = _loss(jaxdeq.NeumannAdjoint(terms=2, monitor=True))
    _, stats = jax.grad(loss, argnums=(0, 1))(args, jaxdeq.BackwardStats.probe())
    assert stats.num_steps == 2 and 1e-6 < stats.rel_residual < 1
    loss = _loss(jaxdeq.JacobianFreeAdjoint())
    _, stats = jax.grad(loss, argnums=(0, 1))(args, jaxdeq.BackwardStats.probe())
    assert jnp.isnan(stats.rel_residual) and stats.success == 1


def test_backward_stats_per_sample_under_vmap(getkey):
    w, u, _, b = tanh_args(getkey(), n=6, m=3, norm=0.9)
    xs = jr.normal(getkey(), (4, 3)) * jnp.array([[0.0], [1.0], [2.0], [3.0]])

    def loss(w, probe):
        def one(x, p):
            return jaxdeq.fixed_point(
                tanh_cell, SOLVER, jnp.zeros(6), (w, u, x, b), backward_stats=p
            ).value

        return jnp.sum(jax.vmap(one)(xs, probe) ** 2)

    _, stats = jax.grad(loss, argnums=(0, 1))(w, jaxdeq.BackwardStats.probe((4,)))
    assert stats.num_steps.shape == (4,)
    assert jnp.all(stats.success == 1) and jnp.all(stats.rel_residual < 1e-6)


def _expansive_problem():
    # f(z) = A z + b with spectral radius 1.5: Anderson (a Krylov method on linear
    # maps) still finds the fixed point, but the backward iteration w <- v + J^T w
    # cannot converge, while GMRES on (I - J^T) w = v can.
    a = jnp.array([[1.5, 0.2], [0.0, 0.3]])
    return a, jnp.array([1.0, -1.0])


def test_backward_failure_is_reported_and_raised():
    args = _expansive_problem()
    forward = jaxdeq.Anderson(rtol=1e-10, atol=1e-12)
    failing = jaxdeq.ImplicitAdjoint(
        linear_solver=optx.FixedPointIteration(rtol=1e-8, atol=1e-10), max_steps=50
    )

    def loss(args, probe, adjoint, throw):
        sol = jaxdeq.fixed_point(
            affine,
            forward,
            jnp.zeros(2),
            args,
            adjoint=adjoint,
            throw=throw,
            backward_stats=probe,
        )
        return jnp.sum(sol.value)

    probe = jaxdeq.BackwardStats.probe()
    grads, stats = jax.grad(loss, argnums=(0, 1))(args, probe, failing, False)
    assert stats.success == 0
    with pytest.raises(Exception, match="backward"):
        jax.grad(loss)(args, probe, failing, True)
    # GMRES handles the same system.
    grads, stats = jax.grad(loss, argnums=(0, 1))(
        args, probe, jaxdeq.ImplicitAdjoint(), True
    )
    assert stats.success == 1
    a, b = args
    exact = jax.grad(lambda a: jnp.sum(jnp.linalg.solve(jnp.eye(2) - a, b)))(a)
    np.testing.assert_allclose(grads[0], exact, rtol=1e-6)


def test_no_gradient_through_initial_guess(getkey):
    args = tanh_args(getkey(), n=5, m=2)

    def loss(z0):
        return jnp.sum(jaxdeq.fixed_point(tanh_cell, SOLVER, z0, args).value)

    np.testing.assert_array_equal(jax.grad(loss)(jnp.ones(5)), jnp.zeros(5))


def test_adjoints_are_optimistix_adjoints():
    for adjoint in (
        jaxdeq.ImplicitAdjoint(),
        jaxdeq.PhantomAdjoint(),
        jaxdeq.JacobianFreeAdjoint(),
        jaxdeq.NeumannAdjoint(),
    ):
        assert isinstance(adjoint, optx.AbstractAdjoint)


def test_adjoint_in_optimistix_fixed_point(getkey):
    args = tanh_args(getkey(), n=5, m=2, norm=0.7)

    def loss(args, adjoint):
        return jnp.sum(
            optx.fixed_point(
                tanh_cell, SOLVER, jnp.zeros(5), args, adjoint=adjoint
            ).value
        )

    ours = jax.grad(loss)(
        args, jaxdeq.ImplicitAdjoint(linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12))
    )
    theirs = jax.grad(loss)(args, optx.ImplicitAdjoint())
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
