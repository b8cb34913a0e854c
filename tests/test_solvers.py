import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxdeq

from .helpers import (
    affine,
    affine_solution,
    battery,
    bracketed_root_finders,
    contraction,
    cosine,
    DOTTIE,
    every_variant,
    fixed_point_solvers,
    monotone_problem,
    pytree_affine,
    pytree_zeros,
    root_finders,
    splitting_solvers,
    tanh_args,
    tanh_cell,
)


@pytest.mark.parametrize("solver", every_variant(fixed_point_solvers))
def test_affine_known_answer(solver, getkey):
    w = contraction(getkey(), 8, norm=0.9)
    b = jr.normal(getkey(), (8,))
    sol = jaxdeq.fixed_point(affine, solver, jnp.zeros(8), (w, b), max_steps=1000)
    assert sol.result == jaxdeq.RESULTS.successful
    # Residual below 1e-10 relative, and ||(I - W)^-1|| <= 10, so error below 1e-8.
    np.testing.assert_allclose(sol.value, affine_solution(w, b), rtol=0, atol=1e-8)
    f_value = affine(sol.value, (w, b))
    exact_abs = jnp.linalg.norm(f_value - sol.value)
    assert exact_abs <= solver.atol + solver.rtol * jnp.linalg.norm(f_value)
    np.testing.assert_allclose(sol.stats["abs_residual"], exact_abs, rtol=1e-6)


@pytest.mark.parametrize("solver", battery(fixed_point_solvers))
def test_scalar_equation(solver):
    sol = optx.fixed_point(cosine, solver, jnp.array(1.0), max_steps=200)
    np.testing.assert_allclose(sol.value, DOTTIE, rtol=0, atol=1e-9)


@pytest.mark.parametrize("solver", battery(fixed_point_solvers))
def test_pytree_state(solver, getkey):
    w = contraction(getkey(), 6, norm=0.7)
    b = jr.normal(getkey(), (6,))
    sol = jaxdeq.fixed_point(pytree_affine, solver, pytree_zeros(), (w, b))
    flat = jnp.concatenate([sol.value["a"], sol.value["b"].ravel()])
    np.testing.assert_allclose(flat, affine_solution(w, b), atol=1e-8)
    assert sol.value["b"].shape == (2, 2)


@pytest.mark.parametrize("solver", every_variant(root_finders))
def test_broyden_in_root_find(solver):
    def fn(y, args):
        return {"x": y["x"] ** 2 - args, "y": jnp.sinh(y["y"]) - 1.0}

    y0 = {"x": jnp.array([1.0, 2.0]), "y": jnp.array(0.3)}
    sol = optx.root_find(fn, solver, y0, jnp.array([2.0, 3.0]), max_steps=200)
    # Either root of x^2 = a is a root; check the equation itself.
    np.testing.assert_allclose(sol.value["x"] ** 2, jnp.array([2.0, 3.0]), atol=1e-9)
    np.testing.assert_allclose(sol.value["y"], jnp.arcsinh(1.0), atol=1e-9)


@pytest.mark.slow
def test_anderson_beats_picard_on_slow_modes(getkey):
    # Eigenvalues 0.99 ... 0.9 on a few directions: plain iteration needs hundreds of
    # steps, Anderson a few dozen.
    n = 30
    q, _ = jnp.linalg.qr(jr.normal(getkey(), (n, n)))
    eig = jnp.concatenate([jnp.linspace(0.99, 0.9, 4), 0.3 * jnp.ones(n - 4)])
    w = (q * eig[None, :]) @ q.T
    b = jr.normal(getkey(), (n,))
    tight = dict(rtol=1e-8, atol=1e-12)
    picard = jaxdeq.fixed_point(
        affine, jaxdeq.Anderson(memory=1, **tight), jnp.zeros(n), (w, b), max_steps=5000
    )
    anderson = jaxdeq.fixed_point(
        affine, jaxdeq.Anderson(**tight), jnp.zeros(n), (w, b), max_steps=5000
    )
    broyden = jaxdeq.fixed_point(
        affine, jaxdeq.Broyden(**tight), jnp.zeros(n), (w, b), max_steps=5000
    )
    assert picard.stats["num_steps"] > 1000
    assert anderson.stats["num_steps"] < picard.stats["num_steps"] / 10
    assert broyden.stats["num_steps"] < picard.stats["num_steps"] / 10
    # ||(I - W)^-1|| = 100, so a relative residual of 1e-8 allows errors ~1e-6 ||z||.
    exact = affine_solution(w, b)
    for sol in (picard, anderson, broyden):
        np.testing.assert_allclose(sol.value, exact, atol=2e-6 * jnp.linalg.norm(exact))


# Anderson stands for the rest in the default run: vmap over the solvers' shared
# loop (optimistix's) is the same code for all of them.
@pytest.mark.parametrize("solver", battery(fixed_point_solvers, (jaxdeq.Anderson,)))
def test_vmap_equals_loop(solver, getkey):
    w, u, _, b = tanh_args(getkey(), n=6, m=3, norm=0.9)
    xs = jr.normal(getkey(), (5, 3))

    def solve(x):
        return jaxdeq.fixed_point(tanh_cell, solver, jnp.zeros(6), (w, u, x, b))

    batched = jax.vmap(solve)(xs)
    for i, x in enumerate(xs):
        single = solve(x)
        np.testing.assert_allclose(batched.value[i], single.value, rtol=0, atol=1e-13)
        assert batched.stats["num_steps"][i] == single.stats["num_steps"]
        # Values agree to 1e-13; an adaptive integrator (SteadyState) may then take
        # its last step a little differently, moving a 1e-10 residual by ~1e-14.
        np.testing.assert_allclose(
            batched.stats["rel_residual"][i], single.stats["rel_residual"], atol=1e-13
        )


def test_per_sample_convergence(getkey):
    # A sample that starts at its fixed point takes no step and does not change
    # while the others keep iterating.
    w = contraction(getkey(), 5, norm=0.9)
    bs = jr.normal(getkey(), (3, 5))
    starts = jnp.zeros((3, 5)).at[1].set(affine_solution(w, bs[1]))
    solver = jaxdeq.Anderson(rtol=1e-10, atol=1e-10)
    sols = jax.vmap(lambda z0, b: jaxdeq.fixed_point(affine, solver, z0, (w, b)))(
        starts, bs
    )
    steps = sols.stats["num_steps"]
    assert steps[1] == 1 and steps[0] > 3 and steps[2] > 3
    np.testing.assert_array_equal(sols.value[1], starts[1])


@pytest.mark.parametrize("solver", fixed_point_solvers[:1] + root_finders[:1])
def test_no_recompile_when_data_changes(solver, getkey):
    traces = []

    def cell(z, args):
        traces.append(None)
        return tanh_cell(z, args)

    @jax.jit
    def solve(args):
        return jaxdeq.fixed_point(cell, solver, jnp.zeros(6), args).value

    solve(tanh_args(getkey()))
    count = len(traces)
    solve(tanh_args(getkey()))
    solve(tanh_args(getkey(), norm=0.5))
    assert len(traces) == count


@pytest.mark.parametrize("solver", battery(fixed_point_solvers, (jaxdeq.Anderson,)))
def test_max_steps_changes_only_budget(solver, getkey):
    args = tanh_args(getkey())
    small = jaxdeq.fixed_point(tanh_cell, solver, jnp.zeros(6), args, max_steps=100)
    large = jaxdeq.fixed_point(tanh_cell, solver, jnp.zeros(6), args, max_steps=10_000)
    assert small.stats["num_steps"] == large.stats["num_steps"] < 100
    np.testing.assert_array_equal(small.value, large.value)


# bfloat16 in the default run: Broyden here, Anderson in
# test_bookkeeping_dtype_for_bfloat16.
@pytest.mark.parametrize(
    "solver, dtype",
    [
        (jaxdeq.Anderson(rtol=2e-2, atol=1e-3), jnp.float32),
        (jaxdeq.Broyden(rtol=2e-2, atol=1e-3), jnp.float32),
        (jaxdeq.Broyden(rtol=2e-2, atol=1e-3), jnp.bfloat16),
        pytest.param(
            jaxdeq.Anderson(rtol=2e-2, atol=1e-3), jnp.bfloat16, marks=pytest.mark.slow
        ),
    ],
)
def test_low_precision_cells(dtype, solver, getkey):
    args = tanh_args(getkey(), n=16, m=4, norm=0.8, dtype=dtype)
    sol = jaxdeq.fixed_point(tanh_cell, solver, jnp.zeros(16, dtype), args)
    assert sol.value.dtype == dtype
    # Bookkeeping runs in float32 at least.
    assert sol.stats["abs_residual"].dtype == jnp.float32
    args64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), args)
    ref = jaxdeq.fixed_point(
        tanh_cell, jaxdeq.Anderson(rtol=1e-12, atol=1e-12), jnp.zeros(16), args64
    )
    # bfloat16 keeps ~3 significant digits; the tolerance is 2e-2 relative.
    err = jnp.linalg.norm(sol.value.astype(jnp.float64) - ref.value)
    assert err <= 0.1 * jnp.linalg.norm(ref.value)


def test_bookkeeping_dtype_for_bfloat16(getkey):
    args = tanh_args(getkey(), n=8, m=2, dtype=jnp.bfloat16)
    sol = optx.fixed_point(
        tanh_cell,
        jaxdeq.Anderson(rtol=1e-2, atol=1e-3),
        jnp.zeros(8, jnp.bfloat16),
        args,
    )
    assert sol.state.residuals.dtype == jnp.float32
    assert sol.state.gram.dtype == jnp.float32


def test_max_steps_reached_is_reported(getkey):
    w = contraction(getkey(), 8, norm=0.99)
    b = jr.normal(getkey(), (8,))
    solver = jaxdeq.Anderson(rtol=1e-12, atol=1e-14, memory=1)
    sol = jaxdeq.fixed_point(
        affine, solver, jnp.zeros(8), (w, b), max_steps=3, throw=False
    )
    assert sol.result == jaxdeq.RESULTS.fixed_point_max_steps_reached
    assert sol.stats["num_steps"] == 3
    with pytest.raises(Exception, match="larger `max_steps`"):
        jaxdeq.fixed_point(affine, solver, jnp.zeros(8), (w, b), max_steps=3)


@pytest.mark.parametrize("solver", battery(fixed_point_solvers))
def test_divergence_is_reported(solver):
    # z -> z^2 + 1 has no real fixed point; iterates blow up.
    fn = lambda z, _: z**2 + 1.0
    sol = jaxdeq.fixed_point(fn, solver, jnp.array([0.5]), max_steps=500, throw=False)
    assert sol.result != jaxdeq.RESULTS.successful
    with pytest.raises(Exception, match="diverged|NaN or Inf|max_steps"):
        jaxdeq.fixed_point(fn, solver, jnp.array([0.5]), max_steps=500)


@pytest.mark.parametrize("solver", battery(fixed_point_solvers))
def test_nan_is_reported(solver):
    fn = lambda z, _: jnp.log(z - 2.0)
    sol = jaxdeq.fixed_point(fn, solver, jnp.array([1.0, 0.0]), throw=False)
    assert sol.result == jaxdeq.RESULTS.fixed_point_nonfinite
    with pytest.raises(Exception, match="NaN or Inf"):
        jaxdeq.fixed_point(fn, solver, jnp.array([1.0, 0.0]))


def test_anderson_ill_conditioned_fallback():
    # In one dimension every history of length > 1 is rank one: without a ridge the
    # least squares is singular, so the safeguard must take Picard steps and restart.
    solver = jaxdeq.Anderson(rtol=1e-12, atol=1e-12, ridge=0.0, memory=4)
    sol = optx.fixed_point(cosine, solver, jnp.array([1.0]), max_steps=500)
    np.testing.assert_allclose(sol.value, DOTTIE, atol=1e-10)
    assert sol.state.num_restarts > 0


def test_anderson_residual_growth_restart(getkey):
    # White-box: a residual far above the best seen sends the solver back to the best
    # iterate with a damped Picard step and clears the history.
    solver = jaxdeq.Anderson(rtol=1e-12, atol=1e-12, safeguard_factor=10.0)
    fn = lambda y, args: (jnp.cos(y), None)
    y = jnp.array([3.0, -2.0])
    state = solver.init(fn, y, None, {}, jax.eval_shape(lambda: y), None, frozenset())
    best_y = jnp.array([0.74, 0.74])
    best_g = jnp.cos(best_y) - best_y
    state = eqx.tree_at(
        lambda s: (s.best_y, s.best_g, s.best_residual, s.valid, s.step),
        state,
        (best_y, best_g, jnp.linalg.norm(best_g), jnp.ones(5, bool), jnp.array(3)),
    )
    new_y, new_state, _ = solver.step(fn, y, None, {}, state, frozenset())
    np.testing.assert_allclose(new_y, best_y + solver.safeguard_damping * best_g)
    assert not jnp.any(new_state.valid)
    assert new_state.num_restarts == 1


def test_broyden_residual_growth_restart():
    # White-box: when a step lands far above the best residual seen, Broyden returns to
    # the best iterate and clears its rank-one memory.
    solver = jaxdeq.Broyden(rtol=1e-12, atol=1e-12, safeguard_factor=10.0)
    fn = lambda y, args: (jnp.cos(y) - y, None)
    y = jnp.array([0.7, 0.8])
    state = solver.init(fn, y, None, {}, jax.eval_shape(lambda: y), None, frozenset())
    # Pretend the best point seen had a residual of 1e-9 and that the memory holds a
    # (bad) rank-one term sending the next step far away.
    state = eqx.tree_at(
        lambda s: (s.best_residual, s.us, s.vs),
        state,
        (
            jnp.array(1e-9),
            state.us.at[0].set(jnp.array([100.0, 0.0])),
            state.vs.at[0].set(jnp.array([1.0, 0.0])),
        ),
    )
    state = eqx.tree_at(lambda s: s.valid, state, state.valid.at[0].set(True))
    new_y, new_state, _ = solver.step(fn, y, None, {}, state, frozenset())
    np.testing.assert_array_equal(new_y, state.best_x)
    assert new_state.num_restarts == 1
    assert not jnp.any(new_state.valid)


def test_broyden_memory_bounded_by_history(getkey):
    args = tanh_args(getkey())
    solver = jaxdeq.Broyden(rtol=1e-10, atol=1e-10, memory=3)
    for max_steps in (10, 1000):
        sol = optx.fixed_point(
            tanh_cell, solver, jnp.zeros(6), args, max_steps=max_steps, throw=False
        )
        assert sol.state.us.shape == (3, 6) and sol.state.vs.shape == (3, 6)


def test_residual_trace(getkey):
    w = contraction(getkey(), 8, norm=0.9)
    b = jr.normal(getkey(), (8,))
    solver = jaxdeq.Anderson(rtol=1e-10, atol=1e-12, trace_size=100)
    sol = jaxdeq.fixed_point(affine, solver, jnp.zeros(8), (w, b))
    steps = int(sol.stats["num_steps"])
    trace = sol.stats["residual_trace"]
    assert trace.shape == (100,)
    assert jnp.all(jnp.isfinite(trace[:steps])) and jnp.all(jnp.isnan(trace[steps:]))
    # The last recorded residual is the residual of the returned value.
    np.testing.assert_allclose(trace[steps - 1], sol.stats["rel_residual"], rtol=1e-6)
    assert trace[steps - 1] < 1e-3 * trace[0]
    # Broyden's slot 0 is the initial residual; slot k the residual after step k.
    sol = jaxdeq.fixed_point(
        affine, jaxdeq.Broyden(rtol=1e-10, atol=1e-12), jnp.zeros(8), (w, b)
    )
    steps = int(sol.stats["num_steps"])
    trace = sol.stats["residual_trace"]
    np.testing.assert_allclose(trace[steps], sol.stats["rel_residual"], rtol=1e-6)
    assert sol.stats["num_fn_evals"] == steps + 1


def test_foreign_solver_diagnostics(getkey):
    w = contraction(getkey(), 8, norm=0.5)
    b = jr.normal(getkey(), (8,))
    solver = optx.FixedPointIteration(rtol=1e-10, atol=1e-10)
    sol = jaxdeq.fixed_point(affine, solver, jnp.zeros(8), (w, b))
    exact = jnp.linalg.norm(affine(sol.value, (w, b)) - sol.value)
    np.testing.assert_allclose(sol.stats["abs_residual"], exact, rtol=1e-8)
    steps = int(sol.stats["num_steps"])
    assert sol.stats["residual_trace"][steps] == sol.stats["rel_residual"]


def test_solvers_are_optimistix_solvers():
    assert isinstance(
        jaxdeq.Anderson(rtol=1e-3, atol=1e-3), optx.AbstractFixedPointSolver
    )
    assert isinstance(jaxdeq.Broyden(rtol=1e-3, atol=1e-3), optx.AbstractRootFinder)
    solver = eqx.tree_at(lambda s: s.rtol, jaxdeq.Anderson(rtol=1e-3, atol=1e-3), 1e-4)
    assert solver.rtol == 1e-4


@pytest.mark.parametrize("solver", splitting_solvers)
def test_splitting_known_answer(solver, getkey):
    problem = monotone_problem(getkey())
    reference = jaxdeq.fixed_point(
        problem, jaxdeq.Anderson(rtol=1e-13, atol=1e-14), jnp.zeros(6), max_steps=2000
    ).value
    sol = jaxdeq.monotone.solve(problem, solver, max_steps=5000, throw=False)
    assert sol.result == jaxdeq.RESULTS.successful
    # Residual 1e-10 at margin 0.5: error below ~1e-9.
    np.testing.assert_allclose(sol.value, reference, atol=1e-8)
    f_value = problem(sol.value, None)
    exact = jnp.linalg.norm(f_value - sol.value)
    assert exact <= solver.atol + solver.rtol * jnp.linalg.norm(f_value)
    np.testing.assert_allclose(sol.stats["abs_residual"], exact, rtol=1e-6)


@pytest.mark.parametrize("solver", bracketed_root_finders)
def test_bracketed_root_finders(solver):
    fn = lambda y, _: jnp.cos(y) - y  # noqa: E731
    sol = optx.root_find(
        fn, solver, jnp.array(0.2), options=dict(lower=0.0, upper=1.0), throw=False
    )
    assert sol.result == optx.RESULTS.successful
    np.testing.assert_allclose(sol.value, DOTTIE, atol=1e-9)
    np.testing.assert_allclose(sol.state.abs_residual, jnp.abs(fn(sol.value, None)))
    # No sign change in the bracket: reported, not solved.
    sol = optx.root_find(
        fn, solver, jnp.array(1.5), options=dict(lower=1.0, upper=2.0), throw=False
    )
    assert sol.result != optx.RESULTS.successful
