import jax.numpy as jnp
import lineax as lx
import optimistix as optx
import pytest

import jaxdeq

from .helpers import affine


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: jaxdeq.Anderson(rtol=-1.0, atol=1e-6), "rtol"),
        (lambda: jaxdeq.Anderson(rtol=1e-4, atol=-1e-6), "atol"),
        (lambda: jaxdeq.Anderson(rtol=0.0, atol=0.0), "both zero"),
        (lambda: jaxdeq.Anderson(rtol=1e-4, atol=1e-6, memory=0), "memory"),
        (lambda: jaxdeq.Anderson(rtol=1e-4, atol=1e-6, damping=0.0), "damping"),
        (lambda: jaxdeq.Anderson(rtol=1e-4, atol=1e-6, damping=1.5), "damping"),
        (lambda: jaxdeq.Anderson(rtol=1e-4, atol=1e-6, ridge=-1.0), "ridge"),
        (
            lambda: jaxdeq.Anderson(rtol=1e-4, atol=1e-6, safeguard_factor=0.5),
            "safeguard",
        ),
        (lambda: jaxdeq.Broyden(rtol=-1e-4, atol=1e-6), "rtol"),
        (lambda: jaxdeq.Broyden(rtol=1e-4, atol=1e-6, memory=0), "memory"),
        (
            lambda: jaxdeq.Broyden(rtol=1e-4, atol=1e-6, safeguard_factor=1.0),
            "safeguard",
        ),
        (lambda: jaxdeq.PhantomAdjoint(steps=0), "steps"),
        (lambda: jaxdeq.PhantomAdjoint(damping=0.0), "damping"),
        (lambda: jaxdeq.NeumannAdjoint(terms=-1), "terms"),
        (lambda: jaxdeq.ImplicitAdjoint(max_steps=0), "max_steps"),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_wrong_types():
    with pytest.raises(TypeError, match="memory"):
        jaxdeq.Anderson(rtol=1e-4, atol=1e-6, memory=2.5)
    with pytest.raises(TypeError, match="linear_solver"):
        jaxdeq.ImplicitAdjoint(linear_solver="gmres")
    with pytest.raises(TypeError, match="solver"):
        jaxdeq.fixed_point(affine, "anderson", jnp.zeros(2), (jnp.eye(2), jnp.ones(2)))
    with pytest.raises(TypeError, match="adjoint"):
        jaxdeq.fixed_point(
            affine,
            jaxdeq.Anderson(rtol=1e-4, atol=1e-6),
            jnp.zeros(2),
            (jnp.eye(2), jnp.ones(2)),
            adjoint=lx.GMRES(rtol=1e-6, atol=1e-6),
        )


def test_mismatched_shapes_before_tracing():
    solver = jaxdeq.Anderson(rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="same\\s+structure and shapes"):
        jaxdeq.fixed_point(
            affine, solver, jnp.zeros(3), (jnp.ones((2, 3)), jnp.ones(2))
        )
    with pytest.raises(ValueError, match="max_steps"):
        jaxdeq.fixed_point(
            affine, solver, jnp.zeros(2), (jnp.eye(2), jnp.ones(2)), max_steps=0
        )


def test_dtype_mismatch_and_integer_state():
    solver = jaxdeq.Anderson(rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="floating point"):
        jaxdeq.fixed_point(affine, solver, jnp.zeros(2, int), (jnp.eye(2), jnp.ones(2)))
    with pytest.raises(TypeError, match="dtype"):
        jaxdeq.fixed_point(
            lambda z, _: jnp.tanh(z).astype(jnp.float64),
            solver,
            jnp.zeros(2, jnp.float32),
        )


def test_broyden_root_find_shape_mismatch():
    with pytest.raises(ValueError, match="least_squares"):
        optx.root_find(
            lambda y, _: jnp.concatenate([y, y]),
            jaxdeq.Broyden(rtol=1e-6, atol=1e-6),
            jnp.zeros(2),
        )


def test_results_messages_say_what_to_try():
    for item in (
        jaxdeq.RESULTS.fixed_point_max_steps_reached,
        jaxdeq.RESULTS.fixed_point_diverged,
        jaxdeq.RESULTS.fixed_point_nonfinite,
    ):
        assert "Try" in jaxdeq.RESULTS[item] or "Check" in jaxdeq.RESULTS[item]
