"""Forward mode through jaxdeq's solvers run by optimistix, in float64.

`jax.jvp` of a solve, with jaxdeq's implicit adjoint and straight through the
solver's own iterations, against central finite differences of the solve and
against the derivative known in closed form; and reverse mode through the
iterations with `optimistix.RecursiveCheckpointAdjoint`. The fixed-point problem is
affine, so the Newton homotopy's path is a straight line (the turn of its tangent is
exactly zero, where a careless step-size controller has an infinite derivative).
"""

import functools as ft

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
import optimistix as optx
import pytest

import jaxdeq

from .helpers import affine, affine_solution, contraction, finite_difference


TOL = 1e-12
EPS = 1e-6


class _ThroughIterations(optx.AbstractAdjoint):
    """Differentiates the solver's steps themselves, as an unrolled adjoint does.

    The solve's loop becomes a plain `lax.while_loop`, which forward mode can go
    through. (`optimistix.RecursiveCheckpointAdjoint` also differentiates the
    iterations, but its checkpointed loop supports reverse mode only.)
    """

    def apply(self, primal_fn, rewrite_fn, inputs, tags):
        del rewrite_fn, tags
        return primal_fn(inputs + (ft.partial(eqxi.while_loop, kind="lax"),))


ADJOINTS = {
    "implicit": jaxdeq.ImplicitAdjoint(),
    "through_iterations": _ThroughIterations(),
}
# Heun: a predictor with an error estimate that compiles faster than Tsit5.
FIXED_POINT_SOLVERS = {
    "anderson": jaxdeq.Anderson(rtol=TOL, atol=TOL),
    "broyden": jaxdeq.Broyden(rtol=TOL, atol=TOL),
    "homotopy_newton": jaxdeq.Homotopy(rtol=TOL, atol=TOL, predictor=diffrax.Heun()),
    "homotopy_fixed_point": jaxdeq.Homotopy(
        rtol=TOL, atol=TOL, kind="fixed_point", predictor=diffrax.Heun()
    ),
}
ROOT_FINDERS = {
    name: solver
    for name, solver in FIXED_POINT_SOLVERS.items()
    if isinstance(solver, optx.AbstractRootFinder)
}


def _shift(tree, tangent, s):
    return jtu.tree_map(lambda x, t: x + s * t, tree, tangent)


def _check_jvp(solve, primals, tangents, expected_value, expected_tangent):
    """One compilation: the jitted jvp gives the tangent, and its primal output at
    shifted inputs gives the central difference."""
    jvp = eqx.filter_jit(lambda p: jax.jvp(solve, p, tangents))
    value, tangent = jvp(primals)
    along = lambda s: jvp(_shift(primals, tangents, s))[0]
    difference = finite_difference(along, 0.0, 1.0, EPS)
    assert np.all(np.isfinite(tangent))
    np.testing.assert_allclose(value, expected_value, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tangent, difference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tangent, expected_tangent, rtol=1e-8, atol=1e-10)


def _cases(solvers, fast):
    """Every solver with every adjoint; those not in `fast` are marked slow (each
    case compiles a solve, a few seconds for Homotopy)."""
    return [
        pytest.param(
            solver,
            adjoint,
            id=f"{name}-{kind}",
            marks=() if (name, kind) in fast else (pytest.mark.slow,),
        )
        for name, solver in solvers.items()
        for kind, adjoint in ADJOINTS.items()
    ]


# Quick by default: every solver differentiated through its iterations on the fixed
# point, Broyden on the root find. (jaxdeq's implicit adjoint with these solvers is
# also covered quickly in test_jvp.py.)
@pytest.mark.parametrize(
    "solver, adjoint",
    _cases(
        FIXED_POINT_SOLVERS,
        fast={(name, "through_iterations") for name in FIXED_POINT_SOLVERS},
    ),
)
def test_fixed_point_jvp(solver, adjoint, getkey):
    # z = W z + b, ||W|| = 0.5: z* = (I - W)^-1 b, dz* = (I - W)^-1 (dW z* + db),
    # and no dependence on the starting point.
    n = 4
    w, b = contraction(getkey(), n, norm=0.5), jr.normal(getkey(), (n,))
    z0 = jr.normal(getkey(), (n,))
    t_w, t_b, t_z0 = (jr.normal(getkey(), x.shape) for x in (w, b, z0))

    def solve(z0, w, b):
        return optx.fixed_point(
            affine, solver, z0, (w, b), adjoint=adjoint, max_steps=256
        ).value

    z = affine_solution(w, b)
    t_z = jnp.linalg.solve(jnp.eye(n) - w, t_w @ z + t_b)
    _check_jvp(solve, (z0, w, b), (t_z0, t_w, t_b), z, t_z)


@pytest.mark.parametrize(
    "solver, adjoint", _cases(ROOT_FINDERS, fast={("broyden", "through_iterations")})
)
def test_root_find_jvp(solver, adjoint, getkey):
    # a exp(-y) = 1 elementwise: y* = log(a), dy* = da / a.
    a = jnp.array([1.5, 2.0, 3.0])
    y0 = jnp.zeros(3)
    t_a, t_y0 = jr.normal(getkey(), (3,)), jr.normal(getkey(), (3,))

    def solve(y0, a):
        return optx.root_find(
            lambda y, a: a * jnp.exp(-y) - 1,
            solver,
            y0,
            a,
            adjoint=adjoint,
            max_steps=256,
        ).value

    _check_jvp(solve, (y0, a), (t_y0, t_a), jnp.log(a), t_a / a)


# optimistix.RecursiveCheckpointAdjoint differentiates through the iterations in
# reverse mode only; Homotopy's inner loops (its corrector) are not reverse-mode
# differentiable, so this covers the two solvers that are.
@pytest.mark.slow
@pytest.mark.parametrize(
    "solver",
    [FIXED_POINT_SOLVERS["anderson"], FIXED_POINT_SOLVERS["broyden"]],
    ids=["anderson", "broyden"],
)
def test_fixed_point_grad_recursive_checkpoint(solver, getkey):
    # L = c . z* for z = W z + b: dL/db = (I - W)^-T c.
    n = 4
    w, b = contraction(getkey(), n, norm=0.5), jr.normal(getkey(), (n,))
    c, direction = jr.normal(getkey(), (n,)), jr.normal(getkey(), (n,))

    def loss(b):
        z = optx.fixed_point(
            affine,
            solver,
            jnp.zeros(n),
            (w, b),
            adjoint=optx.RecursiveCheckpointAdjoint(),
            max_steps=256,
        ).value
        return jnp.dot(c, z)

    value_and_grad = eqx.filter_jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(b)
    along = lambda s: value_and_grad(b + s * direction)[0]
    difference = finite_difference(along, 0.0, 1.0, EPS)
    np.testing.assert_allclose(jnp.dot(grad, direction), difference, rtol=1e-6)
    expected = jnp.linalg.solve((jnp.eye(n) - w).T, c)
    np.testing.assert_allclose(grad, expected, rtol=1e-8, atol=1e-10)
