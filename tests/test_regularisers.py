import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxdeq

from .helpers import affine, contraction, finite_difference


def test_hutchinson_is_unbiased(getkey):
    w = jr.normal(getkey(), (6, 6))
    exact = jnp.sum(w**2)
    estimate = jaxdeq.jacobian_regulariser(
        affine, jnp.zeros(6), (w, jnp.zeros(6)), getkey(), num_samples=4000
    )
    # Var of one sample is 2 ||W^T W||_F^2; 4000 samples give ~3% standard error.
    np.testing.assert_allclose(estimate, exact, rtol=0.12)


def test_hutchinson_is_differentiable(getkey):
    w = jr.normal(getkey(), (4, 4))
    key = getkey()

    def reg(w):
        return jaxdeq.jacobian_regulariser(
            lambda z, w: jnp.tanh(w @ z), jnp.ones(4), w, key, num_samples=8
        )

    grad = jax.grad(reg)(w)
    direction = jr.normal(getkey(), (4, 4))
    fd = finite_difference(reg, w, direction)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-7)


def test_spectral_radius_symmetric(getkey):
    a = jr.normal(getkey(), (10, 10))
    sym = (a + a.T) / 2
    exact = jnp.max(jnp.abs(jnp.linalg.eigvalsh(sym)))
    est = jaxdeq.spectral_radius(
        affine, jnp.zeros(10), (sym, jnp.zeros(10)), getkey(), num_iters=400
    )
    np.testing.assert_allclose(est, exact, rtol=2e-2)


def test_spectral_radius_rotation(getkey):
    # A scaled orthogonal matrix: all eigenvalues have modulus 0.9, complex pairs.
    q, _ = jnp.linalg.qr(jr.normal(getkey(), (8, 8)))
    est = jaxdeq.spectral_radius(
        affine, jnp.zeros(8), (0.9 * q, jnp.zeros(8)), getkey()
    )
    np.testing.assert_allclose(est, 0.9, rtol=1e-10)


def test_spectral_radius_of_tanh_cell(getkey):
    w = contraction(getkey(), 6, norm=0.5)
    z = jr.normal(getkey(), (6,))
    cell = lambda z, w: jnp.tanh(w @ z)
    jac = jax.jacobian(cell)(z, w)
    exact = jnp.max(jnp.abs(jnp.linalg.eigvals(jac)))
    est = jaxdeq.spectral_radius(cell, z, w, getkey(), num_iters=400)
    np.testing.assert_allclose(est, exact, rtol=5e-2)


def test_fixed_point_correction(getkey):
    w = contraction(getkey(), 4, norm=0.5)
    iterates = jr.normal(getkey(), (3, 4))
    loss_fn = lambda z: jnp.sum(z**2)
    args = (w, jnp.zeros(4))
    value = jaxdeq.fixed_point_correction(affine, iterates, args, loss_fn, gamma=0.5)
    losses = jnp.array([loss_fn(w @ z) for z in iterates])
    weights = jnp.array([0.25, 0.5, 1.0])
    np.testing.assert_allclose(value, jnp.sum(weights * losses) / jnp.sum(weights))
    grad = jax.grad(
        lambda w: jaxdeq.fixed_point_correction(
            affine, iterates, (w, jnp.zeros(4)), loss_fn, gamma=0.5
        )
    )(w)
    assert jnp.all(jnp.isfinite(grad)) and jnp.any(grad != 0)
    with pytest.raises(ValueError, match="gamma"):
        jaxdeq.fixed_point_correction(affine, iterates, args, loss_fn, gamma=0.0)
