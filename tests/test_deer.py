"""DEER, quasi-DEER and ELK: recurrences evaluated as one root find over the whole
trajectory, their parallel-scan linear algebra, gradients through the adjoint
recurrence, the sequential fallback and the report."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import jaxdeq
from jaxdeq._solver.deer import kalman_step

from .helpers import (
    gru,
    scan_trajectory,
    sequence_solvers,
    slow_unless,
    tanh_rnn,
)


TOL = 1e-12
_solver_ids = ["DEER", "QuasiDEER", "QuasiELK", "ELK", "ELK-fixed"]
# The default run compiles the cheap solvers; dense ELK's Kalman scan takes several
# seconds to compile and runs in the slow stage.
_solvers = slow_unless(sequence_solvers, {"DEER", "QuasiDEER"}, _solver_ids)


def _inputs(key, length, m=3):
    return jr.normal(key, (length, m))


def _logistic(h, x):
    del x
    return 4.0 * h * (1.0 - h)


def _rate_logistic(h, x):
    return x * h * (1.0 - h)


class _Logistic(eqx.Module):
    rate: jax.Array

    def __call__(self, h, x):
        del x
        return self.rate * h * (1.0 - h)


def _lorenz(h, x):
    del x
    sigma, rho, beta, dt = 10.0, 28.0, 8.0 / 3.0, 0.01

    def field(u):
        return jnp.stack(
            [
                sigma * (u[1] - u[0]),
                u[0] * (rho - u[2]) - u[1],
                u[0] * u[1] - beta * u[2],
            ]
        )

    k1 = field(h)
    k2 = field(h + dt / 2 * k1)
    k3 = field(h + dt / 2 * k2)
    k4 = field(h + dt * k3)
    return h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


# ---------------------------------------------------------------------------------
# The linear algebra: the block-bidiagonal operator, its parallel-scan solver and
# ELK's Kalman step.


def _dense(operator):
    return np.asarray(operator.as_matrix())


# The default run: identity diagonal blocks (DEER's) with dense lower blocks, and the
# fully dense operator; the slow stage runs every combination.
@pytest.mark.parametrize(
    "diagonal_kind, lower_kind",
    [
        ("identity", "dense"),
        ("dense", "dense"),
        pytest.param("identity", "diagonal", marks=pytest.mark.slow),
        pytest.param("diagonal", "diagonal", marks=pytest.mark.slow),
        pytest.param("diagonal", "dense", marks=pytest.mark.slow),
        pytest.param("dense", "diagonal", marks=pytest.mark.slow),
    ],
)
def test_parallel_scan_solves_operator(diagonal_kind, lower_kind, getkey):
    length, n = 9, 3
    lower_shape = (length - 1, n, n) if lower_kind == "dense" else (length - 1, n)
    lower = jr.normal(getkey(), lower_shape)
    if diagonal_kind == "identity":
        diagonal = None
    elif diagonal_kind == "diagonal":
        diagonal = 2.0 + jr.uniform(getkey(), (length, n))
    else:
        diagonal = 2.0 * jnp.eye(n)[None] + 0.3 * jr.normal(getkey(), (length, n, n))
    operator = jaxdeq.BlockBidiagonalLinearOperator(diagonal, lower)
    matrix = _dense(operator)
    x = jr.normal(getkey(), (length, n))
    np.testing.assert_allclose(operator.mv(x).ravel(), matrix @ x.ravel(), atol=1e-12)
    np.testing.assert_allclose(
        operator.transpose().mv(x).ravel(), matrix.T @ x.ravel(), atol=1e-12
    )
    # Block lower bidiagonal: nothing above the block diagonal.
    upper = np.triu(matrix, k=n)
    assert np.all(upper == 0)
    b = jr.normal(getkey(), (length, n))
    for op, mat in ((operator, matrix), (operator.transpose(), matrix.T)):
        sol = lx.linear_solve(op, b, jaxdeq.ParallelScan())
        assert sol.result == lx.RESULTS.successful
        np.testing.assert_allclose(
            sol.value.ravel(), np.linalg.solve(mat, b.ravel()), rtol=1e-10, atol=1e-12
        )


@pytest.mark.slow
def test_parallel_scan_gradient_is_transposed_solve(getkey):
    # lineax differentiates a solve through the solver's transpose: the reverse scan.
    length, n = 7, 2
    lower = jr.normal(getkey(), (length - 1, n, n))
    b = jr.normal(getkey(), (length, n))
    weights = jr.normal(getkey(), (length, n))

    def loss(lower, b):
        op = jaxdeq.BlockBidiagonalLinearOperator(None, lower)
        return jnp.sum(weights * lx.linear_solve(op, b, jaxdeq.ParallelScan()).value)

    def dense_loss(lower, b):
        matrix = jaxdeq.BlockBidiagonalLinearOperator(None, lower).as_matrix()
        return jnp.sum(weights.ravel() * jnp.linalg.solve(matrix, b.ravel()))

    got = jax.grad(loss, argnums=(0, 1))(lower, b)
    want = jax.grad(dense_loss, argnums=(0, 1))(lower, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_parallel_scan_reports_overflow():
    # A recurrence that multiplies by 1e200 twice overflows: reported, not returned.
    lower = jnp.full((2, 1), -1e200)
    op = jaxdeq.BlockBidiagonalLinearOperator(None, lower)
    sol = lx.linear_solve(op, jnp.ones((3, 1)), jaxdeq.ParallelScan(), throw=False)
    assert sol.result == lx.RESULTS.singular


@pytest.mark.parametrize(
    "diagonal",
    [pytest.param(False, marks=pytest.mark.slow), True],
    ids=["dense", "diagonal"],
)
def test_kalman_step_is_levenberg_marquardt(diagonal, getkey):
    # ELK's smoother returns argmin ||F + M d||^2 + lam ||d||^2, M = dF/dH.
    length, n, lam = 8, 3, 0.7
    jac = 0.8 * jr.normal(getkey(), (length, n, n))
    if diagonal:
        jac = jnp.diagonal(jac, axis1=1, axis2=2)
    f = jr.normal(getkey(), (length, n))
    step = kalman_step(jac, f, jnp.array(lam))
    blocks = jax.vmap(jnp.diag)(jac) if diagonal else jac
    m = _dense(jaxdeq.BlockBidiagonalLinearOperator(None, -blocks[1:]))
    want = np.linalg.solve(m.T @ m + lam * np.eye(length * n), -m.T @ f.ravel())
    np.testing.assert_allclose(step.ravel(), want, rtol=1e-10, atol=1e-12)
    # No damping: the Newton step.
    newton = kalman_step(jac, f, jnp.array(0.0))
    np.testing.assert_allclose(
        newton.ravel(), np.linalg.solve(m, -f.ravel()), rtol=1e-10, atol=1e-12
    )


# ---------------------------------------------------------------------------------
# Trajectories against jax.lax.scan.


@pytest.mark.parametrize("solver", _solvers, ids=_solver_ids)
def test_tanh_rnn_matches_scan(solver, getkey):
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jr.normal(getkey(), (4,))
    hs, report = jaxdeq.solve_recurrence(cell, h0, xs, solver, max_steps=200)
    assert report.successful and not report.extra["fallback"]
    np.testing.assert_allclose(hs, scan_trajectory(cell, h0, xs), rtol=0, atol=1e-10)
    # The reported residual is that of the returned trajectory.
    residual = hs - jax.vmap(cell)(jnp.concatenate([h0[None], hs[:-1]]), xs)
    np.testing.assert_allclose(
        report.abs_residual, jnp.max(jnp.abs(residual)), rtol=1e-6, atol=1e-15
    )
    assert report.abs_residual <= TOL * (1 + jnp.max(jnp.abs(hs)))
    assert report.num_fn_evals == 48 * (report.num_steps + 1)


@pytest.mark.parametrize(
    "solver", slow_unless(sequence_solvers, set(), _solver_ids), ids=_solver_ids
)
def test_gru_matches_scan(solver, getkey):
    cell = gru(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)
    hs, report = jaxdeq.solve_recurrence(cell, h0, xs, solver, max_steps=300)
    assert report.successful and not report.extra["fallback"]
    np.testing.assert_allclose(hs, scan_trajectory(cell, h0, xs), rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("make", [tanh_rnn, gru], ids=["tanh", "gru"])
@pytest.mark.parametrize("solver", sequence_solvers[:2], ids=_solver_ids[:2])
def test_long_sequences_match_scan(make, solver, getkey):
    cell = make(getkey(), n=8)
    xs = _inputs(getkey(), 100_000)
    h0 = jnp.zeros(8)
    hs, report = jaxdeq.solve_recurrence(cell, h0, xs, solver, max_steps=500)
    assert report.successful and not report.extra["fallback"]
    np.testing.assert_allclose(hs, scan_trajectory(cell, h0, xs), rtol=0, atol=1e-10)


@pytest.mark.slow
def test_optimistix_root_find_directly(getkey):
    # The solvers are optimistix root finders: the helper's problem goes straight
    # into optx.root_find, and ScanAdjoint gives its gradient.
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)
    fn, y0, args = jaxdeq.recurrence_residual(cell, h0, xs)
    assert isinstance(jaxdeq.DEER(rtol=1e-8, atol=1e-8), optx.AbstractRootFinder)
    sol = optx.root_find(
        fn, sequence_solvers[0], y0, args, adjoint=jaxdeq.ScanAdjoint()
    )
    np.testing.assert_allclose(sol.value, scan_trajectory(cell, h0, xs), atol=1e-10)
    assert sol.state.error_estimate <= 1e-12 * (1 + jnp.max(jnp.abs(sol.value)))


# ---------------------------------------------------------------------------------
# Gradients.


def _loss_pair(cell, h0, xs, weights, solver, **kwargs):
    def parallel(cell, h0, xs):
        hs, _ = jaxdeq.solve_recurrence(cell, h0, xs, solver, **kwargs)
        return jnp.sum(weights * jnp.sin(hs))

    def sequential(cell, h0, xs):
        return jnp.sum(weights * jnp.sin(scan_trajectory(cell, h0, xs)))

    return parallel, sequential


@pytest.mark.parametrize(
    "make",
    [tanh_rnn, pytest.param(gru, marks=pytest.mark.slow)],
    ids=["tanh", "gru"],
)
def test_gradients_equal_backprop_through_scan(make, getkey):
    cell = make(getkey())
    xs = _inputs(getkey(), 48)
    h0 = 0.5 * jr.normal(getkey(), (4,))
    weights = jr.normal(getkey(), (48, 4))

    def parallel(inputs):
        cell, h0, xs, probe = inputs
        hs, _ = jaxdeq.solve_recurrence(
            cell, h0, xs, sequence_solvers[0], backward_stats=probe
        )
        return jnp.sum(weights * jnp.sin(hs))

    def sequential(inputs):
        cell, h0, xs = inputs
        return jnp.sum(weights * jnp.sin(scan_trajectory(cell, h0, xs)))

    # With respect to the cell's parameters, the initial state and the inputs; the
    # probe's gradient holds the backward solve's statistics.
    probe = jaxdeq.BackwardStats.probe()
    *got, stats = eqx.filter_grad(parallel)((cell, h0, xs, probe))
    want = eqx.filter_grad(sequential)((cell, h0, xs))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-8 * np.max(np.abs(w)))
    assert stats.success == 1.0
    assert stats.num_steps == 1.0
    assert 0 < stats.rel_residual < 1e-13


@pytest.mark.slow
def test_gradient_matches_finite_differences_and_forward_mode(getkey):
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)
    weights = jr.normal(getkey(), (48, 4))
    parallel, _ = _loss_pair(cell, h0, xs, weights, sequence_solvers[0])
    direction = jr.normal(getkey(), cell.weight.shape)

    def along(s):
        return parallel(eqx.tree_at(lambda c: c.weight, cell, cell.weight + s), h0, xs)

    grad = eqx.filter_grad(parallel)(cell, h0, xs).weight
    eps = 1e-6
    fd = (along(eps * direction) - along(-eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad, direction), fd, rtol=1e-7)
    # Forward mode runs the adjoint recurrence forwards in time.
    _, tangent = jax.jvp(along, (jnp.zeros_like(direction),), (direction,))
    np.testing.assert_allclose(tangent, jnp.vdot(grad, direction), rtol=1e-10)


@pytest.mark.slow
def test_failed_forward_fails_backward(getkey):
    # Without the fallback a failed forward solve reports a failed backward pass.
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)

    def loss(inputs):
        cell, probe = inputs
        hs, _ = jaxdeq.solve_recurrence(
            cell,
            h0,
            xs,
            sequence_solvers[0],
            max_steps=1,
            throw=False,
            fallback=False,
            backward_stats=probe,
        )
        return jnp.sum(hs**2)

    _, stats = eqx.filter_grad(loss)((cell, jaxdeq.BackwardStats.probe()))
    assert stats.success == 0.0
    assert stats.result == jaxdeq.RESULTS.backward_failed


# ---------------------------------------------------------------------------------
# Convergence and honesty.


@pytest.mark.slow
def test_iterations_grow_no_faster_than_log_squared(getkey):
    cell = tanh_rnn(getkey(), n=4, norm=0.9)
    h0 = jnp.zeros(4)
    xs = _inputs(getkey(), 100_000)
    counts = {}
    for length in (100, 1_000, 10_000, 100_000):
        _, report = jaxdeq.solve_recurrence(
            cell, h0, xs[:length], sequence_solvers[0], fallback=False
        )
        assert report.successful
        counts[length] = int(report.num_steps)
    ratio = {t: counts[t] / math.log(t) ** 2 for t in counts}
    # (log 1e5 / log 1e2)^2 = 6.25: the count may grow by that factor at most.
    assert ratio[100_000] <= ratio[100], counts
    assert counts[100_000] >= counts[100]


def test_step_counts_of_the_variants(getkey):
    # Exact Newton converges quadratically; the diagonal approximation linearly, so
    # quasi-DEER needs more steps when the Jacobians are far from diagonal.
    cell = tanh_rnn(getkey(), norm=0.9)
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)
    steps = {}
    for name, solver in zip(_solver_ids[:2], sequence_solvers[:2]):
        _, report = jaxdeq.solve_recurrence(cell, h0, xs, solver, max_steps=200)
        assert report.successful and not report.extra["fallback"]
        steps[name] = int(report.num_steps)
    assert steps["DEER"] <= 10
    assert steps["QuasiDEER"] > steps["DEER"]


@pytest.mark.slow
def test_elk_step_counts_and_stability(getkey):
    cell = tanh_rnn(getkey(), norm=0.9)
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)
    deer = jaxdeq.solve_recurrence(cell, h0, xs, sequence_solvers[0])[1]
    elk = jaxdeq.solve_recurrence(cell, h0, xs, sequence_solvers[3])[1]
    fixed = jaxdeq.solve_recurrence(cell, h0, xs, sequence_solvers[4], max_steps=500)[1]
    assert deer.successful and elk.successful and fixed.successful
    # Marquardt's adaptive damping ends in Newton's steps; a fixed damping of 0.1
    # converges only linearly.
    assert deer.num_steps <= elk.num_steps <= deer.num_steps + 6
    assert fixed.num_steps > elk.num_steps
    # Quasi-ELK: quasi-DEER's linear convergence, damped.
    quasi = jaxdeq.solve_recurrence(cell, h0, xs, sequence_solvers[1])[1]
    quasi_elk = jaxdeq.solve_recurrence(cell, h0, xs, sequence_solvers[2])[1]
    assert quasi.successful and quasi_elk.successful
    assert quasi_elk.num_steps >= quasi.num_steps > deer.num_steps
    # A large initial trust region radius does not break it: the residual never grows.
    cautious = jaxdeq.ELK(rtol=TOL, atol=TOL, damping=100.0)
    _, report = jaxdeq.solve_recurrence(cell, h0, xs, cautious, max_steps=200)
    assert report.successful
    trace = report.residual_trace[: int(report.num_steps) + 1]
    assert bool(jnp.all(jnp.diff(trace) <= 0))


@pytest.mark.parametrize(
    "solver",
    slow_unless(sequence_solvers, {"DEER"}, _solver_ids),
    ids=_solver_ids,
)
def test_chaotic_map_fails_or_falls_back(solver):
    # The logistic map at r = 4 doubles errors each step: 2^200 times rounding is
    # far above any tolerance, so no parallel solve may claim success.
    h0 = jnp.array([0.3])
    xs = jnp.zeros((200, 0))
    reference = scan_trajectory(_logistic, h0, xs)
    hs, report = jaxdeq.solve_recurrence(
        _logistic, h0, xs, solver, max_steps=300, throw=False, fallback=False
    )
    assert not report.successful
    # With the fallback: the sequential trajectory, reported as such.
    hs, report = jaxdeq.solve_recurrence(_logistic, h0, xs, solver, max_steps=300)
    assert report.successful and report.extra["fallback"]
    np.testing.assert_array_equal(hs, reference)
    assert report.abs_residual <= 1e-15
    assert report.num_fn_evals >= 3 * 200


@pytest.mark.slow
@pytest.mark.parametrize("solver", sequence_solvers, ids=_solver_ids)
def test_lorenz_fails_or_falls_back(solver):
    h0 = jnp.array([1.0, 1.0, 1.0])
    xs = jnp.zeros((3_000, 0))
    reference = scan_trajectory(_lorenz, h0, xs)
    hs, report = jaxdeq.solve_recurrence(
        _lorenz, h0, xs, solver, max_steps=100, throw=False, fallback=False
    )
    if report.successful:  # Never, but if so it must be the trajectory.
        np.testing.assert_allclose(hs, reference, atol=1e-8)
    assert not report.successful
    with pytest.raises(eqx.EquinoxRuntimeError, match="max_steps|diverged|inf or nan"):
        jaxdeq.solve_recurrence(_lorenz, h0, xs, solver, max_steps=100, fallback=False)[
            0
        ].block_until_ready()
    hs, report = jaxdeq.solve_recurrence(_lorenz, h0, xs, solver, max_steps=100)
    assert report.successful and report.extra["fallback"]
    np.testing.assert_array_equal(hs, reference)


@pytest.mark.slow
def test_fallback_gradient_is_backprop(getkey):
    # One Newton step is not enough: the sequential loop takes over, and the
    # gradient is still that of the recurrence.
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jnp.zeros(4)
    weights = jr.normal(getkey(), (48, 4))
    parallel, sequential = _loss_pair(
        cell, h0, xs, weights, sequence_solvers[0], max_steps=1
    )
    _, report = jaxdeq.solve_recurrence(cell, h0, xs, sequence_solvers[0], max_steps=1)
    assert report.successful and report.extra["fallback"]
    assert report.num_steps == 1
    got = eqx.filter_grad(parallel)(cell, h0, xs)
    want = eqx.filter_grad(sequential)(cell, h0, xs)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_chunks_match_scan_and_fall_back_per_chunk(getkey):
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jr.normal(getkey(), (4,))
    hs, report = jaxdeq.solve_recurrence(
        cell, h0, xs, sequence_solvers[0], chunk_size=12
    )
    np.testing.assert_allclose(hs, scan_trajectory(cell, h0, xs), rtol=0, atol=1e-10)
    assert report.successful and not report.extra["fallback"]
    assert report.num_fn_evals == 48 + 12 * report.num_steps
    # The logistic map with rate x_t: contracting in the first two chunks (0.5),
    # expanding by 4 per step in the last (4.0), whose error estimate (4^12 times
    # rounding) stays above the tolerance: that chunk alone falls back.
    rates = jnp.concatenate([jnp.full((24, 1), 0.5), jnp.full((12, 1), 4.0)])
    h0 = jnp.array([0.3])
    hs, report = jaxdeq.solve_recurrence(
        _rate_logistic, h0, rates, sequence_solvers[0], chunk_size=12, max_steps=30
    )
    reference = scan_trajectory(_rate_logistic, h0, rates)
    np.testing.assert_allclose(hs, reference, rtol=1e-8, atol=1e-14)
    assert report.successful and report.extra["fallback"]
    assert int(report.extra["fallback_chunks"]) == 1


@pytest.mark.slow
def test_chunked_gradients_equal_backprop(getkey):
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 48)
    h0 = jr.normal(getkey(), (4,))
    weights = jr.normal(getkey(), (48, 4))
    parallel, sequential = _loss_pair(
        cell, h0, xs, weights, sequence_solvers[0], chunk_size=12
    )
    got = eqx.filter_grad(lambda a: parallel(*a))((cell, h0, xs))
    want = eqx.filter_grad(lambda a: sequential(*a))((cell, h0, xs))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-8 * np.max(np.abs(w)))


# ---------------------------------------------------------------------------------
# Batches.


def test_vmap_equals_loop_and_falls_back_per_sample():
    # Sample 0 is chaotic (r = 4) and falls back; samples 1 and 2 (r = 0.5, 0.8)
    # contract to their fixed points and are solved in parallel.
    rates = jnp.array([4.0, 0.5, 0.8])
    h0 = jnp.array([0.3])
    xs = jnp.zeros((100, 0))
    solver = sequence_solvers[0]

    def solve(rate):
        return jaxdeq.solve_recurrence(_Logistic(rate), h0, xs, solver, max_steps=60)

    hs, report = jax.vmap(solve)(rates)
    np.testing.assert_array_equal(report.extra["fallback"], [True, False, False])
    assert bool(jnp.all(report.successful))
    for i, rate in enumerate(rates):
        single, single_report = solve(rate)
        np.testing.assert_allclose(hs[i], single, rtol=0, atol=1e-13)
        assert int(report.num_steps[i]) == int(single_report.num_steps)
        np.testing.assert_allclose(
            hs[i], scan_trajectory(_Logistic(rate), h0, xs), rtol=0, atol=1e-10
        )


# ---------------------------------------------------------------------------------
# Errors before tracing.


@pytest.mark.unchecked
def test_bad_inputs_raise_clear_errors(getkey):
    cell = tanh_rnn(getkey())
    xs = _inputs(getkey(), 8)
    h0 = jnp.zeros(4)
    solve = jaxdeq.solve_recurrence
    with pytest.raises(ValueError, match="1-D array"):
        solve(cell, jnp.zeros((4, 1)), xs)
    with pytest.raises(TypeError, match="floating-point"):
        solve(cell, jnp.zeros(4, jnp.int32), xs)
    with pytest.raises(ValueError, match="same leading"):
        solve(cell, h0, (xs, jnp.zeros((7, 2))))
    with pytest.raises(ValueError, match="no arrays"):
        solve(cell, h0, None)
    with pytest.raises(ValueError, match="state's shape"):
        solve(lambda h, x: jnp.concatenate([h, h]), h0, xs)
    with pytest.raises(TypeError, match="DEER"):
        solve(cell, h0, xs, jaxdeq.Anderson(rtol=1e-6, atol=1e-6))
    with pytest.raises(TypeError, match="adjoint"):
        solve(cell, h0, xs, adjoint=optx.ImplicitAdjoint())
    with pytest.raises(ValueError, match="max_steps"):
        solve(cell, h0, xs, max_steps=0)
    with pytest.raises(ValueError, match="divide"):
        solve(cell, h0, xs, chunk_size=3)
    with pytest.raises(ValueError, match="chunk"):
        solve(cell, h0, xs, chunk_size=4, backward_stats=jaxdeq.BackwardStats.probe())
    with pytest.raises(ValueError, match=r"`y0` must have shape \(8, 4\)"):
        solve(cell, h0, xs, y0=jnp.zeros((7, 4)))
    with pytest.raises(ValueError, match="rtol"):
        jaxdeq.DEER(rtol=-1.0, atol=1e-6)
    with pytest.raises(ValueError, match="damping"):
        jaxdeq.ELK(rtol=1e-6, atol=1e-6, damping=-1.0)
    with pytest.raises(ValueError, match="adaptive=False"):
        jaxdeq.ELK(rtol=1e-6, atol=1e-6, damping=0.0)
    with pytest.raises(ValueError, match="one array of shape"):
        optx.root_find(
            lambda y, _: y,
            jaxdeq.DEER(rtol=1e-6, atol=1e-6),
            {"a": jnp.zeros((3, 2))},
        )
    with pytest.raises(ValueError, match="lower"):
        jaxdeq.BlockBidiagonalLinearOperator(None, jnp.zeros(3))
    with pytest.raises(ValueError, match="diagonal"):
        jaxdeq.BlockBidiagonalLinearOperator(jnp.zeros((3, 2)), jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="BlockBidiagonalLinearOperator"):
        lx.linear_solve(
            lx.MatrixLinearOperator(jnp.eye(3)), jnp.ones(3), jaxdeq.ParallelScan()
        )
