"""Monotone DEQs: parameterisation, splitting solvers, gradients, layer, errors."""

import functools as ft

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxdeq
from jaxdeq import monotone


N = 8


def _operator(key, margin, scale, n=N):
    op = monotone.MonotoneLinear(n, margin=margin, key=key)
    return eqx.tree_at(lambda o: (o.A, o.B), op, (scale * op.A, scale * op.B))


def _problem(key, margin=0.5, scale=2.0, n=N):
    k1, k2 = jr.split(key)
    return monotone.MonotoneProblem(
        _operator(k1, margin, scale, n), monotone.ReLU(), jr.normal(k2, (n,))
    )


@jax.jit
def _min_sym_eig(a, b):
    op = monotone.MonotoneLinear(N, margin=0.1, key=jr.PRNGKey(0))
    op = eqx.tree_at(lambda o: (o.A, o.B), op, (a, b))
    i_minus_w = jnp.eye(N) - op.as_matrix()
    return jnp.linalg.eigvalsh((i_minus_w + i_minus_w.T) / 2)[0]


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 30.0))
def test_margin_holds_for_random_parameters(seed, scale):
    ka, kb = jr.split(jr.PRNGKey(seed))
    a = scale * jr.normal(ka, (N, N))
    b = scale * jr.normal(kb, (N, N))
    # Eigenvalues of a symmetric matrix with entries of size s^2 carry a rounding
    # error of order eps * s^2 * N.
    tol = 1e-13 * (1 + scale**2) * N
    assert _min_sym_eig(a, b) >= 0.1 - tol


def test_dense_operator_products_and_resolvent(getkey):
    op = _operator(getkey(), 0.3, 2.0)
    w = op.as_matrix()
    z = jr.normal(getkey(), (N,))
    np.testing.assert_allclose(op.mv(z), w @ z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.transpose_mv(z), w.T @ z, rtol=1e-12, atol=1e-12)
    for alpha in (0.05, 1.0, 7.0):
        matrix = jnp.eye(N) + alpha * (jnp.eye(N) - w)
        res = op.resolvent(alpha)
        np.testing.assert_allclose(matrix @ res.mv(z), z, atol=1e-11)
        np.testing.assert_allclose(matrix.T @ res.transpose_mv(z), z, atol=1e-11)
    np.testing.assert_allclose(
        op.lipschitz(), jnp.linalg.norm(jnp.eye(N) - w, 2), rtol=1e-12
    )
    t = monotone.Transposed(op)
    np.testing.assert_allclose(t.as_matrix(), w.T)
    np.testing.assert_allclose(
        t.resolvent(0.5).mv(z), op.resolvent(0.5).transpose_mv(z)
    )


_SOLVERS = {
    "pr": jaxdeq.PeacemanRachford(rtol=1e-11, atol=1e-12),
    "dr": jaxdeq.PeacemanRachford(rtol=1e-11, atol=1e-12, relaxation=0.5),
    "pr_alpha": jaxdeq.PeacemanRachford(rtol=1e-11, atol=1e-12, alpha=3.0),
    "fb": jaxdeq.ForwardBackward(rtol=1e-11, atol=1e-12),
}


@jax.jit
def _solve_all(problem, starts):
    def one(solver, z0):
        sol = monotone.solve(problem, solver, z0, max_steps=20000, throw=False)
        return sol.value, sol.result == jaxdeq.RESULTS.successful

    return {
        name: jax.vmap(ft.partial(one, solver))(starts)
        for name, solver in _SOLVERS.items()
    }


@pytest.mark.slow
def test_solvers_agree_from_many_starts_and_match_generic(getkey):
    problem = _problem(getkey())
    starts = 10 * jr.normal(getkey(), (12, N))
    reference = monotone.solve(
        problem, jaxdeq.Anderson(rtol=1e-13, atol=1e-14), max_steps=2000
    ).value
    newton = monotone.solve(
        problem, optx.Newton(rtol=1e-13, atol=1e-14), jax.nn.relu(reference) + 0.01
    ).value
    # A residual r at margin m bounds the error by r / m (I - W is m-monotone and
    # the prox is nonexpansive); atol 1e-12 and m = 0.5 give ~1e-11.
    np.testing.assert_allclose(newton, reference, atol=1e-10)
    for name, (values, ok) in _solve_all(problem, starts).items():
        assert bool(jnp.all(ok)), name
        np.testing.assert_allclose(values, reference[None].repeat(12, 0), atol=1e-8)


def test_fixed_point_of_problem_map(getkey):
    problem = _problem(getkey())
    sol = monotone.solve(problem, jaxdeq.PeacemanRachford(rtol=1e-12, atol=1e-13))
    z = sol.value
    np.testing.assert_allclose(
        jax.nn.relu(problem.operator.as_matrix() @ z + problem.bias), z, atol=1e-11
    )
    f_norm = jnp.linalg.norm(problem(z))
    assert sol.stats["abs_residual"] <= 1e-13 + 1e-12 * f_norm
    assert float(sol.state.alpha) > 0


def test_peaceman_rachford_needs_fewer_iterations(getkey):
    for _ in range(3):
        problem = _problem(getkey(), margin=0.2, scale=2.0)
        steps = {}
        for name in ("pr", "fb"):
            solver = eqx.tree_at(
                lambda s: (s.rtol, s.atol), _SOLVERS[name], (1e-8, 0.0)
            )
            sol = monotone.solve(problem, solver, max_steps=100000)
            steps[name] = int(sol.stats["num_steps"])
        assert steps["pr"] < steps["fb"], steps


def test_solvers_in_plain_optimistix(getkey):
    problem = _problem(getkey())
    solver = jaxdeq.PeacemanRachford(rtol=1e-10, atol=1e-12)
    sol = optx.fixed_point(
        lambda z, p: p(z), solver, jnp.zeros(N), problem, {"problem": problem}
    )
    np.testing.assert_allclose(problem(sol.value), sol.value, atol=1e-10)
    fb = jaxdeq.ForwardBackward(rtol=1e-10, atol=1e-12)
    sol2 = optx.fixed_point(
        lambda z, p: p(z),
        fb,
        jnp.zeros(N),
        problem,
        {"problem": problem},
        max_steps=100000,
    )
    np.testing.assert_allclose(sol2.value, sol.value, atol=1e-8)


def _loss(params, bias, adjoint, solver):
    a, b = params
    op = monotone.MonotoneLinear(N, margin=0.5, key=jr.PRNGKey(0))
    op = eqx.tree_at(lambda o: (o.A, o.B), op, (a, b))
    problem = monotone.MonotoneProblem(op, monotone.ReLU(), bias)
    z = monotone.solve(problem, solver, max_steps=20000, adjoint=adjoint).value
    return jnp.sum(jnp.sin(z) * jnp.arange(N, dtype=z.dtype))


_ADJOINTS = {
    "splitting": jaxdeq.SplittingAdjoint(rtol=1e-12, max_steps=20000),
    "implicit": jaxdeq.ImplicitAdjoint(
        linear_solver=jaxdeq.Anderson(rtol=1e-12, atol=0.0)
    ),
    "unrolled": optx.RecursiveCheckpointAdjoint(),
}


@pytest.mark.parametrize(
    "solver_name", ["pr", pytest.param("fb", marks=pytest.mark.slow)]
)
def test_gradients_match_finite_differences_and_unrolled(solver_name, getkey):
    solver = eqx.tree_at(
        lambda s: (s.rtol, s.atol), _SOLVERS[solver_name], (1e-13, 1e-14)
    )
    op = _operator(getkey(), 0.5, 1.5)
    params = (op.A, op.B)
    bias = jr.normal(getkey(), (N,))
    grad = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=(2, 3))
    grads = {name: grad(params, bias, adj, solver) for name, adj in _ADJOINTS.items()}
    for name in ("implicit", "unrolled"):
        for g, h in zip(
            jax.tree.leaves(grads["splitting"]), jax.tree.leaves(grads[name])
        ):
            np.testing.assert_allclose(g, h, rtol=1e-7, atol=1e-9)
    # Central differences in float64 along random directions: error ~ eps^(2/3).
    adj = _ADJOINTS["splitting"]
    loss = jax.jit(_loss, static_argnums=(2, 3))
    for _ in range(2):
        da = jr.normal(getkey(), params[0].shape)
        db = jr.normal(getkey(), bias.shape)
        eps = 1e-5
        plus = loss((params[0] + eps * da, params[1]), bias + eps * db, adj, solver)
        minus = loss((params[0] - eps * da, params[1]), bias - eps * db, adj, solver)
        fd = (plus - minus) / (2 * eps)
        ga, _ = grads["splitting"][0]
        exact = jnp.sum(ga * da) + jnp.sum(grads["splitting"][1] * db)
        np.testing.assert_allclose(exact, fd, rtol=1e-6, atol=1e-8)


def test_backward_stats_reported(getkey):
    problem = _problem(getkey())

    def loss(bias, probe):
        p = monotone.MonotoneProblem(problem.operator, problem.prox, bias)
        sol = monotone.solve(
            p, jaxdeq.PeacemanRachford(rtol=1e-10, atol=1e-12), backward_stats=probe
        )
        return jnp.sum(sol.value**2)

    probe = jaxdeq.BackwardStats.probe()
    stats = jax.grad(loss, argnums=1)(problem.bias, probe)
    assert float(stats.success) == 1
    assert 0 < float(stats.num_steps) < 1000
    assert float(stats.rel_residual) <= 1e-6


def _layer(key, dtype=None, rtol=1e-10):
    k1, k2 = jr.split(key)
    return monotone.MonDEQ(
        monotone.MonotoneLinear(12, margin=0.5, key=k1, dtype=dtype),
        eqx.nn.Linear(5, 12, key=k2, dtype=dtype),
        solver=jaxdeq.PeacemanRachford(rtol=rtol, atol=rtol / 100),
    )


@pytest.mark.slow
def test_mondeq_layer_batched_per_sample(getkey):
    layer = _layer(getkey())
    x = jr.normal(getkey(), (6, 5))
    z, report = eqx.filter_jit(jax.vmap(layer))(x)
    assert z.shape == (6, 12)
    assert isinstance(report, jaxdeq.Report)
    assert bool(jnp.all(report.successful))
    assert report.num_steps.shape == (6,)
    assert report.rel_residual.shape == (6,)
    assert report.extra["alpha"].shape == (6,)
    for i in range(6):
        zi, _ = layer(x[i])
        np.testing.assert_allclose(z[i], zi, atol=1e-12)
        np.testing.assert_allclose(layer.problem(x[i])(zi), zi, atol=1e-9)


def test_mondeq_layer_float32_and_training_step(getkey):
    layer = _layer(getkey(), jnp.float32, rtol=1e-5)
    x = jr.normal(getkey(), (4, 5), jnp.float32)

    def loss(model):
        z, _ = jax.vmap(model)(x)
        return jnp.mean(z**2)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(layer)
    assert grads.operator.A.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(grads.operator.A)))
    z, _ = jax.vmap(layer)(x)
    assert z.dtype == jnp.float32


@pytest.mark.slow
def test_mondeq_with_generic_solver_and_adjoint(getkey):
    layer = _layer(getkey())
    generic = eqx.tree_at(
        lambda m: (m.solver, m.adjoint),
        layer,
        (jaxdeq.Anderson(rtol=1e-10, atol=1e-12), _ADJOINTS["implicit"]),
    )
    layer = eqx.tree_at(lambda m: m.adjoint, layer, _ADJOINTS["splitting"])
    x = jr.normal(getkey(), (5,))

    @eqx.filter_jit
    def value_and_grad(model):
        return eqx.filter_value_and_grad(lambda m: jnp.sum(m(x)[0] ** 2))(model)

    (value_generic, grad_generic), (value, grad_layer) = map(
        value_and_grad, (generic, layer)
    )
    np.testing.assert_allclose(value_generic, value, rtol=1e-9)
    np.testing.assert_allclose(
        grad_generic.operator.A, grad_layer.operator.A, atol=1e-6
    )


def test_errors(getkey):
    key = getkey()
    with pytest.raises(ValueError, match="margin"):
        monotone.MonotoneLinear(4, margin=0.0, key=key)
    with pytest.raises(ValueError, match="margin"):
        monotone.MonotoneLinear(4, margin=-1.0, key=key)
    with pytest.raises(ValueError, match="alpha"):
        jaxdeq.PeacemanRachford(rtol=1e-6, atol=1e-6, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        jaxdeq.ForwardBackward(rtol=1e-6, atol=1e-6, alpha=-0.1)
    with pytest.raises(ValueError, match="relaxation"):
        jaxdeq.PeacemanRachford(rtol=1e-6, atol=1e-6, relaxation=1.5)
    op = monotone.MonotoneLinear(4, margin=0.5, key=key)
    with pytest.raises(ValueError, match="shape"):
        monotone.MonotoneProblem(op, monotone.ReLU(), jnp.zeros(5))
    problem = monotone.MonotoneProblem(op, monotone.ReLU(), jnp.zeros(4))
    with pytest.raises(ValueError, match="2m/L"):
        monotone.solve(problem, jaxdeq.ForwardBackward(1e-6, 1e-6, alpha=10.0))
    with pytest.raises(ValueError, match="y0"):
        monotone.solve(problem, jaxdeq.PeacemanRachford(1e-6, 1e-6), jnp.zeros(3))
    with pytest.raises(TypeError, match="MonotoneProblem"):
        monotone.solve(lambda z, a: z, jaxdeq.PeacemanRachford(1e-6, 1e-6))
    with pytest.raises(ValueError, match="options"):
        optx.fixed_point(problem, jaxdeq.PeacemanRachford(1e-6, 1e-6), jnp.zeros(4))
    with pytest.raises(TypeError, match="operator"):
        monotone.MonDEQ(jnp.eye(4), eqx.nn.Linear(2, 4, key=key))
    with pytest.raises(TypeError, match="solver"):
        jaxdeq.SplittingAdjoint(solver=jaxdeq.Anderson(1e-6, 1e-6))


@pytest.mark.slow
def test_tune_step_size(getkey):
    layer = _layer(getkey(), rtol=1e-6)
    x = jr.normal(getkey(), (4, 5))
    tuned, report = monotone.tune_step_size(layer, x, factors=(0.25, 1.0, 4.0))
    steps = report["mean_steps"]
    assert len(steps) == 3
    assert tuned.solver.alpha == report["alpha"] == min(steps, key=steps.get)
    base = float(layer.solver.step_size(layer.problem(x[0])))
    np.testing.assert_allclose(sorted(steps), [0.25 * base, base, 4 * base])
    with pytest.raises(TypeError, match="PeacemanRachford"):
        fb = eqx.tree_at(lambda m: m.solver, layer, jaxdeq.Anderson(1e-6, 1e-6))
        monotone.tune_step_size(fb, x)


def test_peaceman_rachford_takes_the_step_of_a_given_resolvent(getkey):
    problem = _problem(getkey())
    options = {"problem": problem, "resolvent": problem.operator.resolvent(0.3)}
    solver = jaxdeq.PeacemanRachford(rtol=1e-11, atol=1e-12)
    sol = optx.fixed_point(lambda z, p: p(z), solver, jnp.zeros(N), problem, options)
    np.testing.assert_allclose(float(sol.state.alpha), 0.3, rtol=1e-12)
    np.testing.assert_allclose(problem(sol.value), sol.value, atol=1e-10)
