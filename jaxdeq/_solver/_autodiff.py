"""Helpers that keep the solvers differentiable when a solve is differentiated
through its iterations (e.g. `optimistix.RecursiveCheckpointAdjoint`, or `jax.jvp`
straight through the loop), without changing any primal value."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Scalar


@jax.custom_jvp
def safe_size(v: Array) -> Scalar:
    """The Euclidean norm `sqrt(sum(|v|^2))`, with a zero (not NaN) derivative at
    `v = 0`, where the plain formula differentiates `sqrt` at zero."""
    return jnp.sqrt(jnp.sum(jnp.abs(v) ** 2))


@safe_size.defjvp
def _safe_size_jvp(primals, tangents):
    (v,), (tv,) = primals, tangents
    out = safe_size(v)
    nonzero = out > 0
    denominator = jnp.where(nonzero, out, 1)
    t_out = jnp.real(jnp.sum(jnp.conj(v) * tv)) / denominator
    return out, jnp.where(nonzero, t_out, 0).astype(out.dtype)
