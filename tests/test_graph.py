"""Convergent graph solvers: contraction, fixed point, gradients, batching, errors."""

import equinox as eqx
import hypothesis
import hypothesis.strategies as st
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
import pytest

import jaxdeq
import jaxdeq.data
from jaxdeq import graph as jgraph


N, E, F = 9, 40, 3
TIGHT = jaxdeq.Anderson(rtol=1e-13, atol=1e-14)


def _random_graph(seed, n=7, p=0.35, max_nodes=N, max_edges=E):
    rng = np.random.default_rng(seed)
    adj = rng.random((n, n)) < p
    np.fill_diagonal(adj, False)
    receivers, senders = np.nonzero(adj)
    keep = min(len(senders), max_edges)
    x = rng.normal(size=(n, F))
    e = rng.normal(size=(keep, 1))
    return jgraph.graph(
        x,
        senders[:keep],
        receivers[:keep],
        e,
        max_nodes=max_nodes,
        max_edges=max_edges,
        dtype=np.float64,
    )


def _model(seed=0, **kwargs):
    kwargs.setdefault("hidden", 4)
    kwargs.setdefault("heads", 2)
    return jgraph.ConvergentGraphSolver(
        F,
        2,
        edge_features=1,
        width=8,
        depth=1,
        dtype=jnp.float64,
        key=jr.PRNGKey(seed),
        **kwargs,
    )


@eqx.filter_jit
def _norms(model, g):
    a = model.gamma * model.transition(g)
    two = jax.vmap(lambda m: jnp.linalg.norm(m, 2))(a)
    inf = jnp.max(jnp.sum(jnp.abs(a), axis=-1), axis=-1)
    one = jnp.max(jnp.sum(jnp.abs(a), axis=-2), axis=-1)
    return two, inf, one


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(
    graph_seed=st.integers(0, 10**6),
    model_seed=st.integers(0, 10**6),
    p=st.floats(0.05, 1.0),
    n=st.integers(1, N),
)
def test_transition_is_a_contraction(graph_seed, model_seed, p, n):
    g = _random_graph(graph_seed, n=n, p=p)
    model = _model(model_seed)
    rows = _model(model_seed, normalisation="rows")
    columns = _model(model_seed, normalisation="columns")
    for norm in _norms(model, g):
        assert np.all(np.asarray(norm) <= model.gamma + 1e-12)
        assert np.all(np.asarray(norm) < 1)
    assert np.all(np.asarray(_norms(rows, g)[1]) <= rows.gamma + 1e-12)
    assert np.all(np.asarray(_norms(columns, g)[2]) <= columns.gamma + 1e-12)


def test_tanh_map_is_lipschitz_below_gamma(getkey):
    model = _model(activation="tanh")
    g = _random_graph(1)
    weights, b = model.edge_weights(g), model.bias(g)
    t = jax.jit(lambda h: model._map(h, weights, b, g))
    for _ in range(3):
        h1, h2 = (jr.normal(getkey(), (N, 4), jnp.float64) * 3 for _ in range(2))
        for order in (2, np.inf):
            # The bound holds column by column in the vector norms over nodes.
            num = np.linalg.norm(np.asarray(t(h1) - t(h2)), ord=order, axis=0)
            den = np.linalg.norm(np.asarray(h1 - h2), ord=order, axis=0)
            assert np.all(num <= model.gamma * den + 1e-12)


def test_fixed_point_matches_dense_solve():
    g = _random_graph(2)
    lin = _model()
    it = _model(method="iterate", solver=TIGHT)
    a = np.asarray(lin.transition(g))
    b = np.asarray(lin.bias(g))
    expected = np.concatenate(
        [
            np.linalg.solve(np.eye(N) - 0.5 * a[h], b[:, 2 * h : 2 * h + 2])
            for h in range(2)
        ],
        axis=1,
    )
    h_lin, stats = lin.solve(g)
    h_it, stats_it = it.solve(g)
    np.testing.assert_allclose(h_lin, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h_it, expected, rtol=1e-10, atol=1e-12)
    assert float(stats.rel_residual) < 1e-12 and int(stats_it.num_steps) > 0
    assert bool(stats.successful) and bool(stats_it.successful)
    assert int(stats.num_steps) == 0 and int(stats.num_fn_evals) == 1
    # Padding nodes stay at zero and do not change the real nodes.
    assert np.all(np.asarray(h_lin)[7:] == 0)
    unpadded = _random_graph(2, max_nodes=7, max_edges=int(np.sum(g.edge_mask)))
    np.testing.assert_allclose(
        lin.solve(unpadded)[0], h_lin[:7], rtol=1e-10, atol=1e-12
    )


@pytest.mark.slow
def test_batches_vmap_and_disjoint_union():
    graphs = [_random_graph(s) for s in (3, 4, 5)]
    model = _model(method="iterate", solver=TIGHT, activation="tanh")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *graphs)
    batched, report = jax.vmap(model)(stacked)
    assert report.num_steps.shape == (3,) and bool(jnp.all(report.successful))
    union, _ = model(jgraph.batch_graphs(graphs))
    for i, g in enumerate(graphs):
        single, _ = model(g)
        np.testing.assert_allclose(batched[i], single, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            union[i * N : (i + 1) * N], single, rtol=1e-9, atol=1e-11
        )


def _fd_check(model, g, loss_fn):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    flat, unravel = jfu.ravel_pytree(params)
    loss = jax.jit(
        lambda v, nodes: loss_fn(
            eqx.combine(unravel(v), static), eqx.tree_at(lambda t: t.nodes, g, nodes)
        )
    )
    grad_p, grad_x = jax.grad(loss, argnums=(0, 1))(flat, g.nodes)
    h = 1e-6
    for i in range(0, flat.size, max(1, flat.size // 12)):
        e = jnp.zeros_like(flat).at[i].set(h)
        fd = (loss(flat + e, g.nodes) - loss(flat - e, g.nodes)) / (2 * h)
        np.testing.assert_allclose(grad_p[i], fd, rtol=1e-6, atol=1e-8)
    for i, j in ((0, 0), (3, 2), (6, 1)):
        e = jnp.zeros_like(g.nodes).at[i, j].set(h)
        fd = (loss(flat, g.nodes + e) - loss(flat, g.nodes - e)) / (2 * h)
        np.testing.assert_allclose(grad_x[i, j], fd, rtol=1e-6, atol=1e-8)
    return grad_p


@pytest.mark.parametrize("activation", ["identity", "tanh"])
@pytest.mark.slow
def test_gradients_match_finite_differences_and_unrolled(activation):
    g = _random_graph(6)
    target = jnp.asarray(np.random.default_rng(0).normal(size=(N, 2)))
    loss_fn = lambda m, gg: jnp.sum((m(gg)[0] - target) ** 2)
    kwargs = dict(activation=activation, solver=TIGHT)
    if activation == "tanh":
        kwargs["adjoint"] = jaxdeq.ImplicitAdjoint(
            linear_solver=jaxdeq.Anderson(rtol=1e-12, atol=1e-14)
        )
    implicit = _fd_check(_model(**kwargs), g, loss_fn)
    unrolled_model = _model(
        activation=activation,
        method="iterate",
        solver=TIGHT,
        adjoint=optx.RecursiveCheckpointAdjoint(),
    )
    params, static = eqx.partition(unrolled_model, eqx.is_inexact_array)
    flat, unravel = jfu.ravel_pytree(params)
    unrolled = jax.grad(lambda v: loss_fn(eqx.combine(unravel(v), static), g))(flat)
    np.testing.assert_allclose(implicit, unrolled, rtol=1e-8, atol=1e-11)


@pytest.mark.slow
def test_graph_readout_and_training_reduces_loss():
    graphs = [_random_graph(s) for s in range(6)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *graphs)
    # A PageRank-like target: the stationary state of a damped random walk.
    targets = []
    for g in graphs:
        adj = np.asarray(g.adjacency())
        deg = np.maximum(adj.sum(0), 1)
        mask = np.asarray(g.node_mask, float)
        pr = np.linalg.solve(np.eye(N) - 0.85 * adj / deg, 0.15 * mask)
        targets.append(pr[:, None])
    targets = jnp.asarray(np.stack(targets))
    model = jgraph.ConvergentGraphSolver(
        F, 1, edge_features=1, hidden=8, gamma=0.9, dtype=jnp.float64, key=jr.PRNGKey(1)
    )

    @eqx.filter_jit
    def step(model):
        def loss(m):
            return jnp.mean((jax.vmap(m)(stacked)[0] - targets) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        return eqx.apply_updates(model, jax.tree.map(lambda g: -0.05 * g, grads)), value

    losses = []
    for _ in range(40):
        model, value = step(model)
        losses.append(float(value))
    assert losses[-1] < 0.5 * losses[0]
    pooled = jgraph.ConvergentGraphSolver(
        F, 3, edge_features=1, readout="mean", dtype=jnp.float64, key=jr.PRNGKey(2)
    )
    out, _ = pooled(graphs[0])
    nodes, _ = jgraph.ConvergentGraphSolver(
        F, 3, edge_features=1, dtype=jnp.float64, key=jr.PRNGKey(2)
    )(graphs[0])
    np.testing.assert_allclose(out, jnp.sum(nodes, 0) / 7, rtol=1e-12)
    with pytest.raises(ValueError, match="edge features"):
        jgraph.ConvergentGraphSolver(F, 3, key=jr.PRNGKey(2))(graphs[0])


@pytest.mark.slow
def test_forced_failure_is_reported_per_graph_and_throw_raises():
    # A graph without edges is solved at once (T(B) = B); the others need more
    # than two steps at this tolerance.
    graphs = [_random_graph(3, p=0.0), _random_graph(4), _random_graph(5, p=0.0)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *graphs)
    kwargs = dict(method="iterate", activation="tanh", solver=TIGHT, max_steps=2)
    out, report = jax.vmap(_model(**kwargs))(stacked)
    assert isinstance(report, jaxdeq.Report)
    np.testing.assert_array_equal(report.successful, [True, False, True])
    failed = report.result == jaxdeq.RESULTS.fixed_point_max_steps_reached
    np.testing.assert_array_equal(failed, [False, True, False])
    assert bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(Exception, match="max_steps"):
        jax.vmap(_model(throw=True, **kwargs))(stacked)
    # The linear solve reports lineax's result, lifted.
    _, report = jax.vmap(_model())(stacked)
    assert bool(jnp.all(report.successful))
    assert report.rel_residual.shape == (3,)


@pytest.mark.unchecked
def test_errors():
    key = jr.PRNGKey(0)
    for gamma in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            jgraph.ConvergentGraphSolver(2, 1, gamma=gamma, key=key)
    with pytest.raises(ValueError, match="normalisation"):
        jgraph.ConvergentGraphSolver(2, 1, normalisation="sym", key=key)
    with pytest.raises(ValueError, match="divide"):
        jgraph.ConvergentGraphSolver(2, 1, hidden=5, heads=2, key=key)
    with pytest.raises(ValueError, match="linear_solve"):
        jgraph.ConvergentGraphSolver(
            2, 1, activation="tanh", method="linear_solve", key=key
        )
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="indices"):
        jgraph.graph(x, [0, 3], [1, 2])
    with pytest.raises(ValueError, match="equal length"):
        jgraph.graph(x, [0, 1], [1])
    with pytest.raises(ValueError, match="max_nodes"):
        jgraph.graph(x, [0], [1], max_nodes=2)
    with pytest.raises(ValueError, match="adjacency"):
        jgraph.graph_from_adjacency(x, np.zeros((2, 2)))


@pytest.mark.parametrize("task", ["pagerank", "heat"])
def test_generated_steady_states_solve_their_process(task):
    # Known answer: each target is the stationary state of its process on that
    # graph, rebuilt here from the padded edge lists and features alone.
    graphs, targets = jaxdeq.data.graph_steady_states(
        task, 6, seed=3, max_nodes=24, max_edges=200, dtype=np.float64
    )
    assert targets.shape == (6, 24, 1) and graphs.nodes.shape == (6, 24, 3)
    for i in range(6):
        n = int(np.sum(graphs.node_mask[i]))
        assert 12 <= n <= 24 and np.all(targets[i, n:] == 0)
        keep = np.asarray(graphs.edge_mask[i])
        snd, rcv = (
            np.asarray(graphs.senders[i])[keep],
            np.asarray(graphs.receivers[i])[keep],
        )
        a = np.zeros((n, n))
        np.add.at(a, (rcv, snd), 1.0)
        y, x = targets[i, :n, 0], np.asarray(graphs.nodes[i, :n])
        if task == "pagerank":
            p = y / n
            col = a / np.maximum(a.sum(0), 1)
            np.testing.assert_allclose(p, 0.15 / n + 0.85 * col @ p, rtol=1e-10)
            np.testing.assert_allclose(x[:, 1:], np.stack([a.sum(1), a.sum(0)], 1) / 4)
        else:
            np.testing.assert_array_equal(a, a.T)  # undirected: both directions
            row = a / np.maximum(a.sum(1), 1)[:, None]
            np.testing.assert_allclose(y, 0.9 * row @ y + 0.1 * x[:, 0], atol=1e-12)
            assert np.sum(x[:, 0] > 0) == 3
    again, _ = jaxdeq.data.graph_steady_states(
        task, 6, seed=3, max_nodes=24, max_edges=200, dtype=np.float64
    )
    np.testing.assert_array_equal(again.senders, graphs.senders)  # seeded
    with pytest.raises(ValueError, match="task"):
        jaxdeq.data.graph_steady_states("diffusion")
    with pytest.raises(ValueError, match="max_nodes"):
        jaxdeq.data.graph_steady_states(task, 4, max_nodes=3)
