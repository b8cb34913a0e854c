"""jaxdeq.Homotopy, jaxdeq.homotopy_path and jaxdeq.SteadyState: known answers.

The shared battery (tests/helpers.py) already runs both solvers through convergence,
pytree, vmap, max_steps, divergence, NaN and implicit-vs-unrolled gradient checks.
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest

import jaxdeq

from .helpers import (
    contraction,
    finite_difference,
    tanh_args,
    tanh_cell,
    tight_implicit,
)


def _scalar_map(z, args):
    a, x = args
    return a * z + x


@pytest.mark.parametrize("parametrisation", ["arclength", "lambda"])
def test_scalar_path_points_and_end(parametrisation):
    # f(z) = a z + x from z0 = 0: H = z - λ(a z + x) = 0 gives z(λ) = λ x / (1 - λ a).
    a, x = 0.5, 2.0
    solver = jaxdeq.Homotopy(
        rtol=1e-12,
        atol=1e-12,
        kind="fixed_point",
        corrector_tol=1e-10,
        parametrisation=parametrisation,
        path_size=32,
    )
    sol = optx.fixed_point(_scalar_map, solver, jnp.array([0.0]), (a, x), max_steps=100)
    np.testing.assert_allclose(sol.value, [x / (1 - a)], rtol=1e-12)
    lam = sol.state.path_lam
    on_path = jnp.isfinite(lam) & (lam < 1)
    assert int(on_path.sum()) >= 3  # several accepted points strictly inside (0, 1)
    z = sol.state.path_z[:, 0]
    expected = lam * x / (1 - lam * a)
    # Corrected points satisfy |H| <= 1e-10 (1 + |z|) and |∂H/∂z| = 1 - λa >= 1/2.
    np.testing.assert_allclose(
        jnp.where(on_path, z, 0), jnp.where(on_path, expected, 0), rtol=0, atol=1e-9
    )
    # The path is monotone from 0 to 4: its length is 4 (the last segment ends at the
    # point interpolated onto λ = 1, within the predictor's accuracy of the path).
    np.testing.assert_allclose(sol.state.path_length, x / (1 - a), rtol=1e-4)
    assert sol.state.num_corrector_failures == 0


def test_homotopy_path_scalar():
    a, x = 0.5, 2.0
    lam = jnp.linspace(0.0, 1.0, 11)
    path = jaxdeq.homotopy_path(
        _scalar_map,
        jnp.array([0.0]),
        lam,
        (a, x),
        problem="fixed_point",
        rtol=1e-12,
        atol=1e-12,
    )
    assert path.shape == (11, 1)
    np.testing.assert_allclose(
        path[:, 0], lam * x / (1 - lam * a), rtol=1e-9, atol=1e-12
    )


def test_continuous_newton_decay(getkey):
    # Newton homotopy with λ = 1 - e^{-t} is the continuous Newton flow, on which
    # g(z(t)) = e^{-t} g(z0) exactly.
    w, u, x, b = tanh_args(getkey(), n=5, m=3, norm=0.9)

    def g(z, args):
        return tanh_cell(z, args) - z

    z0 = 3.0 * jr.normal(getkey(), (5,))
    t = jnp.linspace(0.0, 4.0, 9)
    lam = 1 - jnp.exp(-t)
    path = jaxdeq.homotopy_path(
        g, z0, lam, (w, u, x, b), kind="newton", rtol=1e-11, atol=1e-12
    )
    g_path = jax.vmap(lambda z: g(z, (w, u, x, b)))(path)
    g0 = g(z0, (w, u, x, b))
    np.testing.assert_allclose(
        g_path, jnp.exp(-t)[:, None] * g0[None, :], rtol=0, atol=1e-8
    )


@pytest.mark.parametrize("kind", ["fixed_point", "newton"])
@pytest.mark.parametrize(
    "parametrisation", ["arclength", pytest.param("lambda", marks=pytest.mark.slow)]
)
def test_matches_newton_on_tanh_cells(kind, parametrisation, getkey):
    w, u, x, b = tanh_args(getkey(), n=8, m=3, norm=1.2)
    args = (w, u, x, b)
    z0 = 5.0 * jr.normal(getkey(), (8,))
    ref = optx.fixed_point(tanh_cell, optx.Newton(rtol=1e-13, atol=1e-14), z0, args)
    solver = jaxdeq.Homotopy(
        rtol=1e-12, atol=1e-13, kind=kind, parametrisation=parametrisation
    )
    sol = optx.fixed_point(tanh_cell, solver, z0, args, max_steps=200)
    # Both residuals are below 1e-12 and ||(I - J)^-1|| is O(10) here.
    np.testing.assert_allclose(sol.value, ref.value, rtol=0, atol=1e-8)
    assert sol.state.num_accepted >= 1
    assert sol.state.path_length > 0


def test_root_find_where_newton_fails():
    # Newton on arctan diverges from |z0| > 1.39; the Newton homotopy's path
    # z(λ) = tan((1 - λ) arctan z0) is smooth and ends at the root 0.
    z0 = jnp.array([3.0, -2.0, 8.0])
    newton = optx.root_find(
        lambda z, _: jnp.arctan(z), optx.Newton(1e-10, 1e-12), z0, throw=False
    )
    assert newton.result != optx.RESULTS.successful
    broyden = optx.root_find(
        lambda z, _: jnp.arctan(z), jaxdeq.Broyden(1e-10, 1e-12), z0, throw=False
    )
    solver = jaxdeq.Homotopy(rtol=1e-10, atol=1e-12, kind="newton")
    sol = optx.root_find(lambda z, _: jnp.arctan(z), solver, z0, max_steps=200)
    assert sol.result == optx.RESULTS.successful
    np.testing.assert_allclose(sol.value, jnp.zeros(3), atol=1e-12)
    del broyden  # reported in the benchmark; here only Newton's failure is asserted


def test_arclength_passes_a_turning_point():
    # f(z) = 2.5 tanh z + 1 from z0 = -10: the fixed-point homotopy's path folds back
    # in λ (the negative branch disappears) before reaching the root z* ≈ 3.4954.
    # Tracking in λ stalls at the fold; arclength goes round it.
    fn = lambda z, _: 2.5 * jnp.tanh(z) + 1.0
    z0 = jnp.array([-10.0])
    in_lambda = jaxdeq.Homotopy(
        rtol=1e-10, atol=1e-12, kind="fixed_point", parametrisation="lambda"
    )
    stalled = optx.fixed_point(fn, in_lambda, z0, max_steps=200, throw=False)
    assert stalled.result == optx.RESULTS.nonlinear_divergence
    solver = jaxdeq.Homotopy(rtol=1e-10, atol=1e-12, kind="fixed_point", path_size=64)
    sol = optx.fixed_point(fn, solver, z0, max_steps=200)
    np.testing.assert_allclose(sol.value, fn(sol.value, None), atol=1e-9)
    assert sol.value[0] > 3
    lam = sol.state.path_lam
    lam = lam[jnp.isfinite(lam)]
    assert jnp.any(jnp.diff(lam) < 0)  # λ went back: a turning point was passed


@pytest.mark.slow
def test_matrix_free_equals_dense(getkey):
    w, u, x, b = tanh_args(getkey(), n=24, m=3, norm=0.9)
    z0 = 4.0 * jr.normal(getkey(), (24,))
    dense = jaxdeq.Homotopy(rtol=1e-11, atol=1e-12)
    free = jaxdeq.Homotopy(
        rtol=1e-11, atol=1e-12, linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12)
    )
    a = optx.fixed_point(tanh_cell, dense, z0, (w, u, x, b)).value
    c = optx.fixed_point(tanh_cell, free, z0, (w, u, x, b)).value
    np.testing.assert_allclose(a, c, atol=1e-9)


def test_homotopy_reports_through_fixed_point(getkey):
    w, u, x, b = tanh_args(getkey())
    sol = jaxdeq.fixed_point(
        tanh_cell, jaxdeq.Homotopy(rtol=1e-8, atol=1e-10), jnp.zeros(6), (w, u, x, b)
    )
    steps = int(sol.stats["num_steps"])
    assert sol.stats["num_fn_evals"] == sol.state.num_fn_evals
    assert sol.stats["num_fn_evals"] >= steps
    trace = sol.stats["residual_trace"]
    assert jnp.all(jnp.isfinite(trace[:steps])) and jnp.all(jnp.isnan(trace[steps:]))
    assert sol.state.num_linear_solves >= steps


@pytest.mark.parametrize(
    "solver",
    [
        pytest.param(jaxdeq.Homotopy(rtol=1e-8, atol=1e-10), marks=pytest.mark.slow),
        pytest.param(jaxdeq.SteadyState(rtol=1e-8, atol=1e-10), marks=pytest.mark.slow),
    ],
)
def test_one_trace_and_vmap(solver, getkey):
    traces = []

    def cell(z, args):
        traces.append(None)
        return tanh_cell(z, args)

    w, u, _, b = tanh_args(getkey())

    @jax.jit
    def solve(xs):
        return jax.vmap(
            lambda x: jaxdeq.fixed_point(cell, solver, jnp.zeros(6), (w, u, x, b))
        )(xs).value

    xs = jr.normal(getkey(), (3, 3))
    out = solve(xs)
    count = len(traces)
    solve(jr.normal(getkey(), (3, 3)))
    assert len(traces) == count
    for i in range(3):
        single = jaxdeq.fixed_point(cell, solver, jnp.zeros(6), (w, u, xs[i], b))
        np.testing.assert_allclose(out[i], single.value, atol=1e-12)


class _TanhLinear(eqx.Module):
    lin: eqx.nn.Linear

    def __call__(self, z, x):
        return jnp.tanh(self.lin(jnp.concatenate([z, x])))


@pytest.mark.slow
def test_steady_state_deq_matches_anderson_and_fd(getkey):
    n, m = 6, 3
    cell = eqx.nn.Linear(n + m, n, key=getkey())

    # Scale the state block to a contraction so the fixed point is unique.
    weight = cell.weight.at[:, :n].set(contraction(getkey(), n, norm=0.8))
    cell = eqx.tree_at(lambda c: c.weight, cell, weight)
    x = jr.normal(getkey(), (m,))

    def solve(lin, solver, x):
        deq = jaxdeq.DEQ(
            _TanhLinear(lin),
            jnp.zeros(n),
            solver=solver,
            adjoint=tight_implicit,
            max_steps=500,
            throw=True,
        )
        return deq(x)[0]

    steady = jaxdeq.SteadyState(rtol=1e-11, atol=1e-12)
    anderson = jaxdeq.Anderson(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(
        solve(cell, steady, x), solve(cell, anderson, x), atol=1e-10
    )

    def loss(lin, x):
        return jnp.sum(jnp.sin(solve(lin, steady, x)))

    grads, grad_x = jax.grad(loss, argnums=(0, 1))(cell, x)
    direction = jr.normal(getkey(), (m,))
    fd = finite_difference(lambda v: loss(cell, v), x, direction)
    # Central differences in float64 with eps 1e-6: error ~1e-9 plus the solve's 1e-10.
    np.testing.assert_allclose(jnp.dot(grad_x, direction), fd, rtol=1e-6, atol=1e-8)
    wdir = jr.normal(getkey(), cell.weight.shape)

    def along(eps):
        return loss(eqx.tree_at(lambda c: c.weight, cell, cell.weight + eps * wdir), x)

    fd_w = (along(1e-6) - along(-1e-6)) / 2e-6
    np.testing.assert_allclose(jnp.sum(grads.weight * wdir), fd_w, rtol=1e-6, atol=1e-8)


def test_steady_state_euler_is_picard(getkey):
    # Euler with dt = 1 on dz/dt = f(z) - z is z <- f(z); one step per call.
    w = contraction(getkey(), 5, norm=0.5)
    b = jr.normal(getkey(), (5,))
    solver = jaxdeq.SteadyState(
        rtol=1e-10,
        atol=1e-12,
        solver=diffrax.Euler(),
        stepsize_controller=diffrax.ConstantStepSize(),
        dt0=1.0,
        steps_per_call=1,
    )
    sol = optx.fixed_point(lambda z, a: a[0] @ z + a[1], solver, jnp.zeros(5), (w, b))
    z = jnp.zeros(5)
    for _ in range(int(sol.state.num_ode_steps)):
        z = w @ z + b
    np.testing.assert_allclose(sol.value, z, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(sol.state.t, sol.state.num_ode_steps)
    # Per ODE step: one Euler stage and the steady-state event's check; per call: the
    # event's check at the start and the residual.
    steps, calls = sol.state.num_ode_steps, sol.stats["num_steps"]
    assert sol.state.num_fn_evals == 2 * steps + 2 * calls


@pytest.mark.unchecked
def test_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        jaxdeq.Homotopy(1e-6, 1e-8, kind="newtonian")
    with pytest.raises(ValueError, match="parametrisation"):
        jaxdeq.Homotopy(1e-6, 1e-8, parametrisation="arc")
    with pytest.raises(ValueError, match="min_step"):
        jaxdeq.Homotopy(1e-6, 1e-8, initial_step=0.9, max_step=0.5)
    with pytest.raises(TypeError, match="explicit diffrax Runge"):
        jaxdeq.Homotopy(1e-6, 1e-8, predictor=diffrax.Kvaerno5())
    with pytest.raises(ValueError, match="corrector_tol"):
        jaxdeq.Homotopy(1e-6, 1e-8, corrector_tol=2.0)
    with pytest.raises(ValueError, match="non-negative"):
        jaxdeq.Homotopy(-1.0, 1e-8)
    with pytest.raises(ValueError, match="dt0"):
        jaxdeq.SteadyState(1e-6, 1e-8, stepsize_controller=diffrax.ConstantStepSize())
    with pytest.raises(TypeError, match="diffrax solver"):
        jaxdeq.SteadyState(1e-6, 1e-8, solver=optx.Newton(1e-6, 1e-6))
    with pytest.raises(ValueError, match="1-D"):
        jaxdeq.homotopy_path(lambda z, _: z, jnp.zeros(2), jnp.zeros((2, 2)))
    with pytest.raises(Exception, match="increase within"):
        jaxdeq.homotopy_path(lambda z, _: z - 1, jnp.zeros(2), jnp.array([0.5, 0.2]))


@pytest.mark.parametrize(
    "solver",
    [
        jaxdeq.SteadyState(rtol=1e-8, atol=1e-8),
        # A first step far too long for the tolerance: rejected steps at the start.
        pytest.param(
            jaxdeq.SteadyState(rtol=1e-8, atol=1e-8, dt0=5.0), marks=pytest.mark.slow
        ),
        pytest.param(
            jaxdeq.SteadyState(
                rtol=1e-8,
                atol=1e-8,
                solver=diffrax.Heun(),
                stepsize_controller=diffrax.ConstantStepSize(),
                dt0=0.5,
            ),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_steady_state_counts_every_evaluation(solver):
    calls = []

    def fn(z, w):
        jax.debug.callback(lambda: calls.append(None))
        return jnp.tanh(w @ z + 1.0)

    w = 0.9 * jnp.eye(4)[::-1]
    sol = jax.jit(lambda w: optx.fixed_point(fn, solver, jnp.zeros(4), w))(w)
    jax.block_until_ready(sol.value)
    assert sol.state.num_fn_evals == len(calls)


@pytest.mark.parametrize(
    "solver",
    [
        jaxdeq.Homotopy(rtol=1e-10, atol=1e-12),
        pytest.param(
            jaxdeq.SteadyState(rtol=1e-10, atol=1e-12), marks=pytest.mark.slow
        ),
    ],
)
def test_aux_and_pytree_state(solver):
    # f on a pytree with an auxiliary output: x = cos(y), y = x / 2.
    def fn(z, _):
        return {"x": jnp.cos(z["y"]), "y": z["x"] / 2}, {"norm": jnp.abs(z["x"])}

    z0 = {"x": jnp.array(1.0), "y": jnp.array(0.0)}
    sol = optx.fixed_point(fn, solver, z0, has_aux=True, max_steps=500)
    x = sol.value["x"]
    np.testing.assert_allclose(x, jnp.cos(x / 2), atol=1e-10)
    np.testing.assert_allclose(sol.value["y"], x / 2, atol=1e-10)
    assert set(sol.aux) == {"norm"}


@pytest.mark.slow
def test_end_game_retreats_and_arrives():
    # A strongly expansive tanh cell (||W||_2 = 6, n = 16) whose curve crosses λ = 1
    # where Newton cannot converge from the interpolated crossing point: the solver
    # must go back before the crossing and approach again with shorter steps.
    k1, k2, k3 = jr.split(jr.split(jr.PRNGKey(16060), 16)[1], 3)
    w = jr.normal(k1, (16, 16))
    w = 6.0 * w / jnp.linalg.norm(w, 2)
    b, z0 = jr.normal(k2, (16,)), 10.0 * jr.normal(k3, (16,))
    cell = lambda z, args: jnp.tanh(args[0] @ z + args[1])
    solver = jaxdeq.Homotopy(rtol=1e-6, atol=1e-8, kind="fixed_point")
    sol = optx.fixed_point(cell, solver, z0, (w, b), max_steps=500, throw=False)
    assert sol.result == optx.RESULTS.successful
    residual = jnp.linalg.norm(cell(sol.value, (w, b)) - sol.value)
    assert residual <= 1e-8 + 1e-6 * jnp.linalg.norm(sol.value)


@pytest.mark.unchecked
def test_min_steps_wrappers():
    from jaxdeq._solver.min_steps import (
        at_least,
        MinStepsFixedPoint,
        MinStepsRootFinder,
    )

    const = lambda z, _: jnp.full_like(z, 0.5)  # converged after one step
    inner = jaxdeq.Anderson(rtol=1e-8, atol=1e-10)
    solver = MinStepsFixedPoint(inner, 5)
    assert (solver.rtol, solver.atol, solver.norm) == (
        inner.rtol,
        inner.atol,
        inner.norm,
    )
    sol = jaxdeq.fixed_point(const, solver, jnp.zeros(3), max_steps=50)
    assert int(sol.stats["num_steps"]) == 5
    np.testing.assert_allclose(sol.value, 0.5)
    assert sol.stats["abs_residual"] == 0  # the wrapped solver's report still reads
    assert at_least(inner, 1) is inner
    assert isinstance(at_least(jaxdeq.Homotopy(1e-8, 1e-10), 3), MinStepsRootFinder)
    homotopy = MinStepsRootFinder(jaxdeq.Homotopy(1e-8, 1e-10), 12)
    sol = optx.root_find(lambda z, _: jnp.arctan(z), homotopy, jnp.array(1.0))
    assert int(sol.stats["num_steps"]) >= 12
    with pytest.raises(TypeError, match="MinStepsRootFinder"):
        MinStepsFixedPoint(jaxdeq.Homotopy(1e-8, 1e-10), 3)  # pyright: ignore
    with pytest.raises(ValueError, match="min_steps"):
        MinStepsFixedPoint(inner, -1)
