"""Forward mode through jaxdeq's adjoints: jvp and jacfwd of a fixed point."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import jaxdeq

from .helpers import battery, slow_unless, tanh_args, tanh_cell


SOLVER = jaxdeq.Anderson(rtol=1e-12, atol=1e-13)
_ADJOINT_IDS = [f"adjoint{i}" for i in range(5)]
ADJOINTS = (
    jaxdeq.ImplicitAdjoint(),
    jaxdeq.ImplicitAdjoint(linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12)),
    jaxdeq.JacobianFreeAdjoint(),
    jaxdeq.NeumannAdjoint(terms=2),
    jaxdeq.PhantomAdjoint(steps=3, damping=0.5),
)


def _solve(adjoint, solver=SOLVER, entry=jaxdeq.fixed_point):
    def solve(b, args):
        w, u, x, _ = args
        return entry(
            tanh_cell,
            solver,
            jnp.zeros(4),
            (w, u, x, b),
            max_steps=500,
            adjoint=adjoint,
        ).value

    return solve


@pytest.mark.parametrize("adjoint", slow_unless(ADJOINTS, {"adjoint0"}, _ADJOINT_IDS))
def test_jacfwd_equals_jacrev(adjoint, getkey):
    args = tanh_args(getkey(), n=4, m=2, norm=0.8)
    solve = _solve(adjoint)
    forward = jax.jacfwd(solve)(args[3], args)
    reverse = jax.jacrev(solve)(args[3], args)
    np.testing.assert_allclose(forward, reverse, rtol=1e-10, atol=1e-12)


def test_jvp_matches_finite_differences_and_optimistix(getkey):
    args = tanh_args(getkey(), n=4, m=2, norm=0.8)
    b, tangent = args[3], jax.random.normal(getkey(), (4,))
    ours = _solve(jaxdeq.ImplicitAdjoint())
    _, t_ours = jax.jvp(lambda b: ours(b, args), (b,), (tangent,))
    theirs = _solve(optx.ImplicitAdjoint(), entry=optx.fixed_point)
    _, t_theirs = jax.jvp(lambda b: theirs(b, args), (b,), (tangent,))
    np.testing.assert_allclose(t_ours, t_theirs, rtol=1e-10, atol=1e-12)
    h = 1e-4
    along = lambda t: ours(b + t * tangent, args)
    central = lambda h: (along(h) - along(-h)) / (2 * h)
    fd = (4 * central(h / 2) - central(h)) / 3
    np.testing.assert_allclose(t_ours, fd, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "solver",
    battery(
        (
            jaxdeq.Broyden(rtol=1e-12, atol=1e-12),
            jaxdeq.Homotopy(rtol=1e-12, atol=1e-12),
        )
    ),
)
def test_jvp_with_jaxdeq_solvers_in_optimistix(solver, getkey):
    args = tanh_args(getkey(), n=4, m=2, norm=0.8)
    b, tangent = args[3], jax.random.normal(getkey(), (4,))
    results = []
    for adjoint in (jaxdeq.ImplicitAdjoint(), optx.ImplicitAdjoint()):
        solve = _solve(adjoint, solver, entry=optx.fixed_point)
        results.append(jax.jvp(lambda b, s=solve: s(b, args), (b,), (tangent,))[1])
    np.testing.assert_allclose(*results, rtol=1e-9, atol=1e-11)


def test_jvp_in_root_find():
    # y^3 + a y = 2 gives dy/da = -y / (3 y^2 + a).
    def solve(a):
        return optx.root_find(
            lambda y, a: y**3 + a * y - 2.0,
            jaxdeq.Broyden(rtol=1e-13, atol=1e-13),
            jnp.ones(3),
            a,
            adjoint=jaxdeq.ImplicitAdjoint(
                linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12)
            ),
            max_steps=200,
        ).value

    a = jnp.array([1.0, 2.0, 3.0])
    y, t = jax.jvp(solve, (a,), (jnp.ones(3),))
    np.testing.assert_allclose(t, -y / (3 * y**2 + a), rtol=1e-10)


def test_neumann_jvp_formula(getkey):
    args = tanh_args(getkey(), n=4, m=2, norm=0.7)
    solve = _solve(jaxdeq.NeumannAdjoint(terms=3))
    z, t = jax.jvp(lambda b: solve(b, args), (args[3],), (jnp.ones(4),))
    jac = jax.jacobian(lambda _z: tanh_cell(_z, args))(z)
    _, b = jax.jvp(
        lambda _b: tanh_cell(z, args[:3] + (_b,)), (args[3],), (jnp.ones(4),)
    )
    expected = sum(jnp.linalg.matrix_power(jac, i) @ b for i in range(4))
    np.testing.assert_allclose(t, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_splitting_adjoint_jacfwd_equals_jacrev(getkey):
    from jaxdeq import monotone

    op = monotone.MonotoneLinear(5, margin=0.5, key=getkey())

    def solve(bias):
        problem = monotone.MonotoneProblem(op, monotone.ReLU(), bias)
        solver = jaxdeq.PeacemanRachford(rtol=1e-12, atol=1e-12)
        return monotone.solve(problem, solver, max_steps=5000).value

    bias = jax.random.normal(getkey(), (5,))
    forward = jax.jacfwd(solve)(bias)
    reverse = jax.jacrev(solve)(bias)
    np.testing.assert_allclose(forward, reverse, rtol=1e-9, atol=1e-11)
