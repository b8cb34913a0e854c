"""Convolutional monotone operators against dense matrices and direct convolutions."""

import functools as ft

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jaxdeq.monotone._conv import MonotoneConv, MonotoneMultiConv

from .helpers import finite_difference


ALPHAS = (0.1, 5.0)
# name -> (constructor, keyword arguments). Odd sizes and non-square images catch
# mixed-up axes; three tiers exercise the middle step of the block elimination.
CONFIGS = {
    "conv": (
        MonotoneConv,
        dict(channels=2, height=5, width=6, hidden_channels=3, kernel_size=5),
    ),
    "multi2": (MonotoneMultiConv, dict(channels=(2, 3), height=8, width=12)),
    "multi3": (
        MonotoneMultiConv,
        dict(channels=(1, 2, 2), height=12, width=12, margin=0.3),
    ),
}


# The three-tier configuration, and the gradient and float32 checks of the
# two-tier one, compile large programs: marked slow (`-m "not slow"` skips them).
NAMES = ["conv", "multi2", pytest.param("multi3", marks=pytest.mark.slow)]


def _make(name, key, **kwargs):
    cls, config = CONFIGS[name]
    return cls(**(config | kwargs), key=key)


def _random_state(op, rng, batch=()):
    # NumPy draws: eager `jr.normal` compiles a generator per shape, which is slow.
    def draw(struct):
        return jnp.asarray(rng.standard_normal(batch + struct.shape), struct.dtype)

    return jax.tree.map(draw, op.in_structure())


def _flat(z):
    return jfu.ravel_pytree(z)[0]


# ----------------------------------------------------------------------------------
# An independent reference: W z from `lax.conv` on wrap-padded inputs, with the
# adjoints A^T and B^T from `jax.vjp`.


def _conv(x, kernel, stride=1):
    r = kernel.shape[-1] // 2
    padded = jnp.pad(x, ((0, 0), (r, r), (r, r)), mode="wrap")
    return jax.lax.conv_general_dilated(
        padded[None], kernel, (stride, stride), "VALID"
    )[0]


def _kernel(kernel, scale):
    return scale * kernel / jnp.sqrt(jnp.sum(kernel**2))


def _direct_operators(op):
    """`(A, B)` as functions of the state, from direct convolutions."""
    if isinstance(op, MonotoneConv):
        a = _kernel(op.kernel_a, op.scale_a)
        b = _kernel(op.kernel_b, op.scale_b)
        return ft.partial(_conv, kernel=a), ft.partial(_conv, kernel=b)
    a = [_kernel(k, g) for k, g in zip(op.kernels_a, op.scales_a)]
    down = [_kernel(k, g) for k, g in zip(op.kernels_down, op.scales_down)]
    b = [_kernel(k, g) for k, g in zip(op.kernels_b, op.scales_b)]

    def apply_a(zs):
        out = [_conv(zs[0], a[0])]
        for i in range(1, len(zs)):
            out.append(_conv(zs[i], a[i]) + _conv(zs[i - 1], down[i - 1], stride=2))
        return tuple(out)

    def apply_b(zs):
        return tuple(_conv(z, k) for z, k in zip(zs, b))

    return apply_a, apply_b


def _direct_mv(op, z):
    apply_a, apply_b = _direct_operators(op)
    az, a_vjp = jax.vjp(apply_a, z)
    (ataz,) = a_vjp(az)
    bz, b_vjp = jax.vjp(apply_b, z)
    (btz,) = b_vjp(z)
    return jax.tree.map(
        lambda z_, x, y, w: (1 - op.margin) * z_ - x + y - w, z, ataz, bz, btz
    )


# ----------------------------------------------------------------------------------
# A few small compiled programs per configuration, shared by the tests (XLA compiles
# are what costs time here); dense linear algebra on the results runs in NumPy.


@eqx.filter_jit
def _dense(op):
    return op.as_matrix()


@eqx.filter_jit
def _products(op, zs):
    return (
        jax.vmap(lambda z: _flat(op.mv(z)))(zs),
        jax.vmap(lambda z: _flat(op.transpose_mv(z)))(zs),
        jax.vmap(lambda z: _flat(_direct_mv(op, z)))(zs),
    )


@eqx.filter_jit
def _resolvents(op, alpha, zs):
    resolvent = op.resolvent(alpha)
    return (
        resolvent.alpha,
        jax.vmap(lambda z: _flat(resolvent.mv(z)))(zs),
        jax.vmap(lambda z: _flat(resolvent.transpose_mv(z)))(zs),
    )


@eqx.filter_jit
def _lipschitz(op):
    return op.lipschitz()


@ft.cache
def _cached(name):
    op = _make(name, jr.PRNGKey(len(name)))
    zs = _random_state(op, np.random.default_rng(0), batch=(3,))
    return op, np.asarray(_dense(op)), zs, np.asarray(jax.vmap(_flat)(zs))


def _system(matrix, alpha):
    eye = np.eye(matrix.shape[0])
    return eye + alpha * (eye - matrix)


@pytest.mark.parametrize("name", NAMES)
def test_mv_matches_dense_and_direct_convolution(name):
    # Also checks jit, and vmap over a batch of states.
    op, matrix, zs, flat = _cached(name)
    mv, transpose_mv, direct = _products(op, zs)
    np.testing.assert_allclose(mv, flat @ matrix.T, atol=1e-12)
    np.testing.assert_allclose(mv, direct, atol=1e-12)
    np.testing.assert_allclose(transpose_mv, flat @ matrix, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_resolvent_solves_both_systems(name):
    op, matrix, zs, flat = _cached(name)
    for alpha in ALPHAS:
        stored, x, xt = _resolvents(op, jnp.asarray(alpha), zs)
        assert stored == alpha
        system = _system(matrix, alpha)
        np.testing.assert_allclose(x @ system.T, flat, atol=1e-10)
        np.testing.assert_allclose(xt @ system, flat, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_lipschitz_bounds_the_exact_norm(name):
    op, matrix, _, _ = _cached(name)
    exact = np.linalg.norm(np.eye(matrix.shape[0]) - matrix, 2)
    lipschitz = _lipschitz(op)
    assert lipschitz >= exact * (1 - 1e-12)
    if isinstance(op, MonotoneConv):
        np.testing.assert_allclose(lipschitz, exact, rtol=1e-8)
    else:
        # The block-norm bound should not be loose by more than the number of tiers.
        assert lipschitz <= len(op.channels) * exact


@pytest.mark.parametrize("name", NAMES)
def test_margin_holds_for_random_parameters(name):
    op, _, _, _ = _cached(name)
    leaves, treedef = jax.tree.flatten(op)
    rng = np.random.default_rng(1)
    for scale in (1e-3, 1.0, 10.0, 40.0):
        # Random kernels, and scales g (which multiply the normalised kernels) of
        # the same size.
        new = [scale * rng.standard_normal(x.shape) for x in leaves]
        new = [jnp.asarray(x if x.ndim == 4 else np.abs(x) + scale) for x in new]
        i_minus_w = np.eye(_cached(name)[1].shape[0]) - np.asarray(
            _dense(jax.tree.unflatten(treedef, new))
        )
        min_eig = np.linalg.eigvalsh((i_minus_w + i_minus_w.T) / 2)[0]
        # Eigenvalues of a symmetric matrix with entries of size s^2 carry a
        # rounding error of order eps * s^2 * n.
        tol = max(1e-13 * (1 + scale**2) * 100, 1e-10)
        assert min_eig >= op.margin - tol


@pytest.mark.parametrize(
    "name", ["conv", pytest.param("multi2", marks=pytest.mark.slow)]
)
def test_gradients_match_finite_differences(name):
    op, _, zs, _ = _cached(name)
    z = jax.tree.map(lambda x: x[0], zs)
    weights = jax.tree.map(lambda x: x[1], zs)
    params, static = eqx.partition(op, eqx.is_array)
    flat, unravel = jfu.ravel_pytree(params)

    def loss(flat):
        op = eqx.combine(unravel(flat), static)
        out = jnp.sum(_flat(weights) * jnp.sin(_flat(op.mv(z))))
        out = out + jnp.sum(_flat(weights) * _flat(op.resolvent(0.7).transpose_mv(z)))
        return out + op.lipschitz()

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(flat)
    rng = np.random.default_rng(2)
    for _ in range(2):
        direction = jnp.asarray(rng.standard_normal(flat.shape))
        np.testing.assert_allclose(
            grad @ direction,
            finite_difference(lambda x: value_and_grad(x)[0], flat, direction),
            rtol=1e-6,
            atol=1e-8,
        )


@pytest.mark.parametrize(
    "name", ["conv", pytest.param("multi2", marks=pytest.mark.slow)]
)
def test_float32(name):
    op64, matrix, zs, flat = _cached(name)
    op = jax.tree.map(lambda x: x.astype(jnp.float32), op64)
    z = jax.tree.map(lambda x: x[0].astype(jnp.float32), zs)

    @eqx.filter_jit
    def run(op, z):
        return op.mv(z), op.resolvent(0.5).transpose_mv(z), op.lipschitz()

    mv, resolvent_t, lipschitz = run(op, z)
    for x in jax.tree.leaves((mv, resolvent_t, lipschitz)):
        assert x.dtype == jnp.float32
    np.testing.assert_allclose(_flat(mv), matrix @ flat[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        _flat(resolvent_t),
        np.linalg.solve(_system(matrix, 0.5).T, flat[0]),
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(lipschitz, _lipschitz(op64), rtol=1e-4)
    assert jax.tree.leaves(op.in_structure())[0].dtype == jnp.float32


def test_given_kernels():
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.standard_normal((3, 2, 5, 5)))
    b = jnp.asarray(rng.standard_normal((2, 2, 5, 5)))
    op = MonotoneConv(2, 6, 6, kernels=(a, b))
    assert (op.kernel_size, op.hidden_channels) == (5, 3)
    # The scales start at the norms, so A and B are exactly the given kernels.
    np.testing.assert_allclose(_kernel(op.kernel_a, op.scale_a), a, rtol=1e-14)
    multi = _cached("multi2")[0]
    again = MonotoneMultiConv(
        (2, 3),
        8,
        12,
        kernels=(multi.kernels_a, multi.kernels_down, multi.kernels_b),
    )
    for x, y in zip(jax.tree.leaves(multi), jax.tree.leaves(again)):
        np.testing.assert_allclose(x, y, rtol=1e-14)


@pytest.mark.unchecked
def test_bad_arguments(getkey):
    a = jnp.ones((2, 2, 3, 3))
    ok = dict(channels=2, height=4, width=4, kernels=(a, a))
    MonotoneConv(**ok)
    with pytest.raises(ValueError, match="margin"):
        MonotoneConv(**ok, margin=0.0)
    with pytest.raises(ValueError, match="margin"):
        MonotoneConv(**ok, margin=-1.0)
    with pytest.raises(TypeError, match="margin"):
        MonotoneConv(**ok, margin="0.5")
    with pytest.raises(ValueError, match="odd"):
        MonotoneConv(2, 4, 4, kernel_size=2, key=getkey())
    with pytest.raises(ValueError, match="does not fit"):
        MonotoneConv(2, 4, 2, key=getkey())
    with pytest.raises(ValueError, match="shape"):
        MonotoneConv(3, 4, 4, kernels=(a, a))
    with pytest.raises(ValueError, match="shape"):
        MonotoneConv(2, 4, 4, kernels=(a, jnp.ones((2, 2, 5, 5))))
    with pytest.raises(ValueError, match="odd"):
        MonotoneConv(2, 4, 4, kernels=(jnp.ones((2, 2, 2, 2)),) * 2)
    with pytest.raises(ValueError, match="does not fit"):
        MonotoneConv(2, 4, 4, kernels=(jnp.ones((2, 2, 5, 5)),) * 2)
    with pytest.raises(TypeError, match="floating"):
        MonotoneConv(2, 4, 4, kernels=(a, jnp.ones((2, 2, 3, 3), jnp.int32)))
    with pytest.raises(ValueError, match="key"):
        MonotoneConv(2, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        _cached("conv")[0].resolvent(0.0)

    with pytest.raises(ValueError, match="divisible by 2"):
        MonotoneMultiConv((1, 1), 5, 4, key=getkey())
    with pytest.raises(ValueError, match="divisible by 4"):
        MonotoneMultiConv((1, 1, 1), 12, 6, key=getkey())
    with pytest.raises(ValueError, match="does not fit"):
        MonotoneMultiConv((1, 1), 4, 4, key=getkey())
    with pytest.raises(ValueError, match="margin"):
        MonotoneMultiConv((1, 1), 8, 8, margin=0.0, key=getkey())
    with pytest.raises(ValueError, match="odd"):
        MonotoneMultiConv((1, 1), 8, 8, kernel_size=4, key=getkey())
    with pytest.raises(ValueError, match="tuple"):
        MonotoneMultiConv(2, 8, 8, key=getkey())
    multi = _cached("multi2")[0]
    with pytest.raises(ValueError, match="kernels_down"):
        MonotoneMultiConv((2, 3), 8, 12, kernels=(multi.kernels_a, (), multi.kernels_b))
    with pytest.raises(ValueError, match="shape"):
        MonotoneMultiConv((2, 2), 8, 12, kernels=(multi.kernels_a, (), multi.kernels_b))
