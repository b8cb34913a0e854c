"""Graph tasks with known stationary states, generated offline, and the models that
`benchmarks/ep_cgs.py` compares on them (section "graph").

Tasks (numpy, seeded; 96 graphs of 20-40 nodes, 64 for training and 32 held out,
padded to 40 nodes and 320 directed edges):

- "pagerank": directed Erdos-Renyi graphs (mean out-degree 3); target n * PageRank
  with damping 0.85, i.e. the solution of p = 0.15/n + 0.85 P p with P the
  column-normalised adjacency (a dangling node's mass leaks), by a dense solve.
  Node features: (1, in-degree / 4, out-degree / 4).
- "heat": undirected random geometric graphs (radius 0.3 in the unit square); three
  nodes are heat sources of strength in [0.5, 1]; every node relaxes to the mean of
  its neighbours with leakage: T = 0.9 D^-1 W T + 0.1 s, by a dense solve.
  Node features: (s_i, degree / 6, 1).

Models, each with hidden width 16 and an MLP decoder of [h_i, x_i] (width 32, depth
2), trained full-batch with optax adam (lr 3e-3) on the mean squared error:

- "CGS (degree|rows|columns)": jaxdeq.graph.ConvergentGraphSolver with that
  normalisation, linear (identity activation, one dense LU solve per graph), gamma
  0.95 (so that gamma * a can reach the tasks' 0.85 and 0.9), 2 heads. With "columns"
  the PageRank operator is representable exactly, with "rows" the heat operator;
  "degree" (the default, a contraction in every norm) represents neither exactly;
- "DEQ-GNN": h = tanh(A_mean h W + U x + b), an implicit GNN with an unconstrained W
  (no contraction guarantee), solved by jaxdeq.Anderson (rtol 1e-5, 100 steps,
  throw=False), implicit gradients;
- "GNN (K=4)": four message-passing layers h <- tanh(A_mean h W_k + U_k x + b_k).

Columns: held-out normalised MSE (MSE / variance of the held-out targets), its
spread over seeds, training time (after compilation) and parameter count; for the
implicit models the mean forward solver steps on the held-out set.
"""

import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

import jaxdeq
from jaxdeq import graph as jgraph
from jaxdeq.data import graph_steady_states


MAX_NODES, MAX_EDGES, HIDDEN = 40, 320, 16


TASKS = ("pagerank", "heat")


def make_task(name, seed, num_graphs=96):
    graphs, targets = graph_steady_states(
        name, num_graphs, seed=seed, max_nodes=MAX_NODES, max_edges=MAX_EDGES
    )
    return jax.tree.map(jnp.asarray, graphs), jnp.asarray(targets)


def _mean_adjacency(g):
    a = g.adjacency()
    return a / jnp.maximum(jnp.sum(a, axis=1, keepdims=True), 1)


class DEQGNN(eqx.Module):
    """h = tanh(A_mean h W + U x + b), solved by Anderson; no contraction guarantee."""

    w: jax.Array
    inject: eqx.nn.Linear
    decoder: eqx.nn.MLP

    def __init__(self, features, key):
        k1, k2, k3 = jr.split(key, 3)
        self.w = jr.normal(k1, (HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)
        self.inject = eqx.nn.Linear(features, HIDDEN, key=k2)
        self.decoder = eqx.nn.MLP(HIDDEN + features, 1, 32, 2, key=k3)

    def __call__(self, g):
        a = _mean_adjacency(g)
        u = jax.vmap(self.inject)(g.nodes)
        sol = jaxdeq.fixed_point(
            lambda h, args: jnp.tanh(args[0] @ h @ args[1] + args[2]),
            jaxdeq.Anderson(rtol=1e-5, atol=1e-6),
            jnp.zeros_like(u),
            (a, self.w, u),
            max_steps=100,
            throw=False,
        )
        out = jax.vmap(self.decoder)(jnp.concatenate([sol.value, g.nodes], -1))
        return jnp.where(g.node_mask[:, None], out, 0), sol.stats["num_steps"]


class MessagePassingGNN(eqx.Module):
    """K layers h <- tanh(A_mean h W_k + U_k x + b_k)."""

    ws: tuple
    injects: tuple
    decoder: eqx.nn.MLP

    def __init__(self, features, key, layers=4):
        keys = jr.split(key, 2 * layers + 1)
        self.ws = tuple(
            jr.normal(keys[k], (HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)
            for k in range(layers)
        )
        self.injects = tuple(
            eqx.nn.Linear(features, HIDDEN, key=keys[layers + k]) for k in range(layers)
        )
        self.decoder = eqx.nn.MLP(HIDDEN + features, 1, 32, 2, key=keys[-1])

    def __call__(self, g):
        a = _mean_adjacency(g)
        h = jnp.zeros((g.num_nodes, HIDDEN))
        for w, inject in zip(self.ws, self.injects):
            h = jnp.tanh(a @ h @ w + jax.vmap(inject)(g.nodes))
        out = jax.vmap(self.decoder)(jnp.concatenate([h, g.nodes], -1))
        return jnp.where(g.node_mask[:, None], out, 0), jnp.zeros((), jnp.int32)


class CGSModel(eqx.Module):
    cgs: jgraph.ConvergentGraphSolver

    def __init__(self, features, key, normalisation="degree"):
        self.cgs = jgraph.ConvergentGraphSolver(
            features,
            1,
            hidden=HIDDEN,
            heads=2,
            gamma=0.95,
            width=32,
            depth=2,
            normalisation=normalisation,
            key=key,
        )

    def __call__(self, g):
        out, report = self.cgs(g)
        return out, report.num_steps


MODELS = {
    "CGS (degree)": CGSModel,
    "CGS (rows)": lambda f, key: CGSModel(f, key, "rows"),
    "CGS (columns)": lambda f, key: CGSModel(f, key, "columns"),
    "DEQ-GNN": DEQGNN,
    "GNN (K=4)": MessagePassingGNN,
}


def _train(model_cls, task, seed, epochs):
    graphs, targets = make_task(task, seed)
    train_g = jax.tree.map(lambda v: v[:64], graphs)
    test_g = jax.tree.map(lambda v: v[64:], graphs)
    train_y, test_y = targets[:64], targets[64:]
    model = model_cls(3, jr.PRNGKey(seed))
    opt = optax.adam(3e-3)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def step(model, state):
        def loss(m):
            pred, _ = jax.vmap(m)(train_g)
            return jnp.sum((pred - train_y) ** 2) / jnp.sum(train_g.node_mask)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, value

    @eqx.filter_jit
    def evaluate(model):
        pred, steps = jax.vmap(model)(test_g)
        mask = test_g.node_mask[..., None]
        count = jnp.sum(mask)
        mean = jnp.sum(test_y) / count
        var = jnp.sum(jnp.where(mask, (test_y - mean) ** 2, 0)) / count
        mse = jnp.sum(jnp.where(mask, (pred - test_y) ** 2, 0)) / count
        return mse / var, jnp.mean(steps)

    jax.block_until_ready(step(model, state))
    start = time.perf_counter()
    for _ in range(epochs):
        model, state, value = step(model, state)
    jax.block_until_ready(model)
    seconds = time.perf_counter() - start
    nmse, steps = evaluate(model)
    params = sum(
        x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    )
    return float(nmse), float(steps), seconds, int(params)


def run_graph_benchmark(quick: bool, seeds: tuple[int, ...]) -> list[dict]:
    """Train every model on every task for each seed; one row per (task, model)."""
    epochs = 40 if quick else 1500
    rows = []
    for task in TASKS:
        for name, cls in MODELS.items():
            runs = [_train(cls, task, seed, epochs) for seed in seeds]
            nmse = [r[0] for r in runs]
            row = {
                "task": task,
                "model": name,
                "test_nmse": statistics.mean(nmse),
                "test_nmse_min": min(nmse),
                "test_nmse_max": max(nmse),
                "solver_steps": statistics.mean(r[1] for r in runs),
                "train_time_s": statistics.mean(r[2] for r in runs),
                "params": runs[0][3],
                "epochs": epochs,
            }
            print(row, flush=True)
            rows.append(row)
    return rows
