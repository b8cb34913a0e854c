"""Graph regression tasks whose targets are stationary states, generated offline."""

import numpy as np

from ..graph import Graph, graph


def _pagerank(rng, max_nodes, max_edges):
    n = int(rng.integers(max_nodes // 2, max_nodes + 1))
    adj = rng.random((n, n)) < 3.0 / n
    np.fill_diagonal(adj, False)
    receivers, senders = np.nonzero(adj)
    keep = rng.permutation(len(senders))[:max_edges]
    receivers, senders = receivers[keep], senders[keep]
    a = np.zeros((n, n))
    a[receivers, senders] = 1.0
    out_deg = a.sum(0)
    p = np.linalg.solve(
        np.eye(n) - 0.85 * a / np.maximum(out_deg, 1), np.full(n, 0.15 / n)
    )
    x = np.stack([np.ones(n), a.sum(1) / 4, out_deg / 4], axis=1)
    return x, senders, receivers, n * p


def _heat(rng, max_nodes, max_edges):
    n = int(rng.integers(max_nodes // 2, max_nodes + 1))
    while True:
        pos = rng.random((n, 2))
        dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        adj = (dist < 0.3) & ~np.eye(n, dtype=bool)
        if 2 * np.sum(np.triu(adj)) <= max_edges:
            break
    receivers, senders = np.nonzero(adj)
    w = adj.astype(float)
    deg = w.sum(1)
    s = np.zeros(n)
    s[rng.choice(n, 3, replace=False)] = rng.uniform(0.5, 1.0, 3)
    t = np.linalg.solve(np.eye(n) - 0.9 * w / np.maximum(deg, 1)[:, None], 0.1 * s)
    x = np.stack([s, deg / 6, np.ones(n)], axis=1)
    return x, senders, receivers, t


_TASKS = {"pagerank": _pagerank, "heat": _heat}


def graph_steady_states(
    task: str = "pagerank",
    num_graphs: int = 96,
    *,
    seed: int = 0,
    max_nodes: int = 40,
    max_edges: int = 320,
    dtype=np.float32,
) -> tuple[Graph, np.ndarray]:
    r"""Random graphs whose node targets are the stationary state of a linear
    process on the graph, by a dense solve: regression tasks for implicit graph
    models ([`jaxdeq.graph.ConvergentGraphSolver`][]), generated offline.

    - `"pagerank"`: directed Erdős–Rényi graphs (mean out-degree 3); the target is
        $n$ times PageRank with damping 0.85, the solution of $p = 0.15/n + 0.85 P
        p$ with $P$ the column-normalised adjacency (a dangling node's mass leaks).
        Node features: $(1, \text{in-degree}/4, \text{out-degree}/4)$.
    - `"heat"`: undirected random geometric graphs (radius 0.3 in the unit
        square); three nodes are heat sources of strength in $[0.5, 1]$ and every
        node relaxes to the mean of its neighbours with leakage, $T = 0.9 D^{-1} W
        T + 0.1 s$. Node features: $(s_i, \text{degree}/6, 1)$.

    Each graph has between `max_nodes // 2` and `max_nodes` nodes.

    **Arguments:**

    - `task`: `"pagerank"` or `"heat"`.
    - `num_graphs`: how many graphs.
    - `seed`: the NumPy generator's seed; the same seed gives the same graphs.
    - `max_nodes`, `max_edges`: the padded sizes (at least 6 nodes).
    - `dtype`: of the features and targets.

    **Returns:**

    `(graphs, targets)`: a [`jaxdeq.graph.Graph`][] whose arrays have a leading
    axis of `num_graphs` (for `jax.vmap`), and the targets, shape `(num_graphs,
    max_nodes, 1)`, zero at padding nodes.

    **Raises:**

    `ValueError` for an unknown task or sizes that are too small.
    """
    if task not in _TASKS:
        raise ValueError(
            f"graph_steady_states: `task` must be one of {tuple(_TASKS)}, got {task!r}."
        )
    if num_graphs < 1 or max_nodes < 6 or max_edges < 1:
        raise ValueError(
            "graph_steady_states: need num_graphs >= 1, max_nodes >= 6 and "
            f"max_edges >= 1, got {num_graphs}, {max_nodes}, {max_edges}."
        )
    rng = np.random.default_rng(seed)
    graphs, targets = [], []
    for _ in range(num_graphs):
        x, senders, receivers, y = _TASKS[task](rng, max_nodes, max_edges)
        g = graph(
            x, senders, receivers, max_nodes=max_nodes, max_edges=max_edges, dtype=dtype
        )
        graphs.append(g)
        targets.append(np.pad(y, (0, max_nodes - len(y)))[:, None])
    # The data set stays in NumPy (host memory) until it is batched.
    stacked = Graph(
        *(  # pyright: ignore[reportArgumentType]
            np.stack([np.asarray(getattr(g, f)) for g in graphs])
            for f in (
                "nodes",
                "senders",
                "receivers",
                "edges",
                "node_mask",
                "edge_mask",
            )
        )
    )
    return stacked, np.stack(targets).astype(dtype)
