"""Problems with known fixed points and the solver/adjoint tuples tests run over.

Adding a solver to `fixed_point_solvers` puts it through the whole battery.
"""

import math

import diffrax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx

import jaxdeq


TOL = 1e-10
fixed_point_solvers = (
    jaxdeq.Anderson(rtol=TOL, atol=TOL),
    jaxdeq.Anderson(rtol=TOL, atol=TOL, memory=1),
    jaxdeq.Anderson(rtol=TOL, atol=TOL, memory=3, damping=0.7),
    jaxdeq.Broyden(rtol=TOL, atol=TOL),
    jaxdeq.Broyden(rtol=TOL, atol=TOL, memory=4, line_search=True),
    jaxdeq.Homotopy(rtol=TOL, atol=TOL),
    jaxdeq.SteadyState(rtol=TOL, atol=TOL),
)
# The fixed-point homotopy needs a map into a bounded set (a DEQ cell) to be sure of
# arriving; general root problems get the Newton homotopy (tested with the Heun
# predictor and matrix-free GMRES solves, the cheap end of its options).
root_finders = tuple(
    s for s in fixed_point_solvers if isinstance(s, jaxdeq.Broyden)
) + (
    jaxdeq.Homotopy(
        rtol=TOL,
        atol=TOL,
        kind="newton",
        parametrisation="lambda",
        predictor=diffrax.Heun(),
        linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12),
    ),
)

implicit_adjoints = (
    jaxdeq.ImplicitAdjoint(),
    jaxdeq.ImplicitAdjoint(linear_solver=lx.BiCGStab(rtol=1e-10, atol=1e-12)),
    jaxdeq.ImplicitAdjoint(linear_solver=lx.LU()),
    jaxdeq.ImplicitAdjoint(linear_solver=jaxdeq.Anderson(rtol=1e-11, atol=1e-12)),
    jaxdeq.ImplicitAdjoint(
        linear_solver=optx.FixedPointIteration(rtol=1e-11, atol=1e-12), max_steps=2000
    ),
)
implicit_adjoints = (
    jaxdeq.ImplicitAdjoint(linear_solver=lx.GMRES(rtol=1e-11, atol=1e-12)),
) + implicit_adjoints[1:]


# An implicit adjoint whose backward solve is far tighter than any test tolerance.
tight_implicit = jaxdeq.ImplicitAdjoint(
    linear_solver=jaxdeq.Anderson(rtol=1e-12, atol=0.0)
)


def contraction(key, n, norm=0.8, dtype=jnp.float64):
    w = jr.normal(key, (n, n), jnp.float64)
    return (norm * w / jnp.linalg.norm(w, 2)).astype(dtype)


def affine(z, args):
    w, b = args
    return w @ z + b


def affine_solution(w, b):
    return jnp.linalg.solve(jnp.eye(w.shape[0], dtype=w.dtype) - w, b)


def tanh_cell(z, args):
    w, u, x, b = args
    return jnp.tanh(w @ z + u @ x + b)


def tanh_args(key, n=6, m=3, norm=0.8, dtype=jnp.float64):
    k1, k2, k3, k4 = jr.split(key, 4)
    return (
        contraction(k1, n, norm, dtype),
        jr.normal(k2, (n, m), dtype) / math.sqrt(m),
        jr.normal(k3, (m,), dtype),
        0.1 * jr.normal(k4, (n,), dtype),
    )


def pytree_affine(z, args):
    w, b = args
    flat = jnp.concatenate([z["a"], z["b"].ravel()])
    out = w @ flat + b
    return {"a": out[:2], "b": out[2:].reshape(2, 2)}


def pytree_zeros(dtype=jnp.float64):
    return {"a": jnp.zeros(2, dtype), "b": jnp.zeros((2, 2), dtype)}


# Dottie number: the unique real fixed point of cos.
DOTTIE = 0.7390851332151607


def cosine(z, args):
    del args
    return jnp.cos(z)


def finite_difference(fn, x, direction, eps=1e-6):
    """Central difference of a scalar function along `direction` (float64)."""
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)
