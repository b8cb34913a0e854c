"""Compiled memory of forward + backward is flat in `max_steps` for jaxdeq adjoints."""

import jax
import jax.numpy as jnp
import jax.random as jr
import optimistix as optx
import pytest

import jaxdeq

from .helpers import contraction


def _temp_bytes(adjoint, max_steps, w, xs):
    def loss(w, xs):
        def one(x):
            return jaxdeq.fixed_point(
                lambda z, a: jnp.tanh(a[0] @ z + a[1]),
                jaxdeq.Anderson(rtol=1e-6, atol=1e-8),
                jnp.zeros(w.shape[0], w.dtype),
                (w, x),
                max_steps=max_steps,
                adjoint=adjoint,
                throw=False,
            ).value

        return jnp.sum(jax.vmap(one)(xs) ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(w, xs).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.fail("XLA gave no memory analysis on this backend")
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


@pytest.mark.slow
def test_memory_flat_in_max_steps(getkey):
    w = contraction(getkey(), 32, norm=0.9, dtype=jnp.float32)
    xs = jr.normal(getkey(), (8, 32), jnp.float32)
    for adjoint in (jaxdeq.ImplicitAdjoint(), jaxdeq.PhantomAdjoint(steps=3)):
        small = _temp_bytes(adjoint, 10, w, xs)
        large = _temp_bytes(adjoint, 1000, w, xs)
        assert large == small
    unrolled_small = _temp_bytes(
        optx.RecursiveCheckpointAdjoint(checkpoints=10), 10, w, xs
    )
    unrolled_large = _temp_bytes(
        optx.RecursiveCheckpointAdjoint(checkpoints=1000), 1000, w, xs
    )
    assert unrolled_large > 20 * unrolled_small
