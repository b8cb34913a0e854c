from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


class Graph(eqx.Module):
    """A directed graph with node and optional edge features, padded to fixed sizes.

    Edge `k` carries a message from node `senders[k]` to node `receivers[k]`; an
    undirected edge is two directed ones. Padding nodes and edges (mask `False`) let
    graphs of different sizes share one compiled function: stack graphs padded to the
    same sizes and `jax.vmap`, or join them into one disjoint graph with
    [`jaxdeq.graph.batch_graphs`][]. Build one with [`jaxdeq.graph.graph`][] (which
    checks its input) or [`jaxdeq.graph.graph_from_adjacency`][].

    **Fields:**

    - `nodes`: node features, shape `(num_nodes, node_features)`.
    - `senders`, `receivers`: int32 node indices, shape `(num_edges,)`.
    - `edges`: edge features `(num_edges, edge_features)` (zero columns if none).
    - `node_mask`, `edge_mask`: which nodes and edges are real.
    """

    # One graph, or a stack of graphs of the same padded size (leading `*batch`,
    # as jaxdeq.data.graph_steady_states returns them), as JAX or NumPy arrays.
    nodes: Float[Array | np.ndarray, "*batch n f"]
    senders: Int[Array | np.ndarray, "*batch e"]
    receivers: Int[Array | np.ndarray, "*batch e"]
    edges: Float[Array | np.ndarray, "*batch e fe"]
    node_mask: Bool[Array | np.ndarray, "*batch n"]
    edge_mask: Bool[Array | np.ndarray, "*batch e"]

    @property
    def num_nodes(self) -> int:
        """Nodes including padding."""
        return self.nodes.shape[-2]

    def adjacency(
        self, weights: Float[Array, " e"] | None = None
    ) -> Float[Array, "n n"]:
        """Dense matrix $A$ with $A_{ij}$ the summed weight of the edges $j \\to i$
        (`weights`, default 1 per real edge); padding edges contribute nothing."""
        if weights is None:
            weights = jnp.ones(self.senders.shape, self.nodes.dtype)
        weights = jnp.where(self.edge_mask, weights, 0)
        n = self.num_nodes
        return (
            jnp.zeros((n, n), weights.dtype)
            .at[self.receivers, self.senders]
            .add(weights)
        )


def graph(
    nodes,
    senders,
    receivers,
    edges=None,
    *,
    max_nodes: int | None = None,
    max_edges: int | None = None,
    dtype=None,
) -> Graph:
    """A [`jaxdeq.graph.Graph`][] from edge lists, checked and optionally padded.

    **Arguments:**

    - `nodes`: node features `(num_nodes, node_features)`.
    - `senders`, `receivers`: integer node indices of each edge's source and target.
    - `edges`: edge features `(num_edges, edge_features)`, or `None`.
    - `max_nodes`, `max_edges`: pad to these sizes (padding is masked out), so that
        graphs of different sizes can be stacked and share a compiled function.
    - `dtype`: of the features (default: that of `nodes`).

    **Returns:**

    A `Graph`.

    **Raises:**

    `ValueError` for mismatched shapes, indices out of range, or sizes above
    `max_nodes`/`max_edges`.
    """
    nodes = np.asarray(nodes)
    if nodes.ndim != 2:
        raise ValueError(
            f"graph: `nodes` must have shape (num_nodes, features), got {nodes.shape}."
        )
    if dtype is None:
        dtype = nodes.dtype if np.issubdtype(nodes.dtype, np.floating) else np.float64
        # Without jax_enable_x64, float64 features become float32, silently.
        dtype = jax.dtypes.canonicalize_dtype(dtype)
    dtype = np.dtype(dtype)
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    if senders.ndim != 1 or senders.shape != receivers.shape:
        raise ValueError(
            "graph: `senders` and `receivers` must be 1-d and of equal length, got "
            f"{senders.shape} and {receivers.shape}."
        )
    if senders.size and not (
        np.issubdtype(senders.dtype, np.integer)
        and np.issubdtype(receivers.dtype, np.integer)
    ):
        raise ValueError("graph: `senders` and `receivers` must be integer indices.")
    n, e = int(nodes.shape[0]), int(senders.shape[0])
    if senders.size and (
        min(senders.min(), receivers.min()) < 0
        or max(senders.max(), receivers.max()) >= n
    ):
        raise ValueError(
            f"graph: edge indices must lie in [0, {n}) for {n} nodes; got senders in "
            f"[{senders.min()}, {senders.max()}], receivers in "
            f"[{receivers.min()}, {receivers.max()}]."
        )
    edges = np.zeros((e, 0), dtype) if edges is None else np.asarray(edges)
    if edges.ndim != 2 or edges.shape[0] != e:
        raise ValueError(
            f"graph: `edges` must have shape ({e}, edge_features), got {edges.shape}."
        )
    max_nodes = n if max_nodes is None else max_nodes
    max_edges = e if max_edges is None else max_edges
    if n > max_nodes or e > max_edges:
        raise ValueError(
            f"graph: {n} nodes and {e} edges do not fit in max_nodes={max_nodes}, "
            f"max_edges={max_edges}."
        )
    pad_n, pad_e = max_nodes - n, max_edges - e
    return Graph(
        nodes=jnp.asarray(np.pad(nodes, ((0, pad_n), (0, 0))), dtype),
        senders=jnp.asarray(np.pad(senders, (0, pad_e)), jnp.int32),
        receivers=jnp.asarray(np.pad(receivers, (0, pad_e)), jnp.int32),
        edges=jnp.asarray(np.pad(edges, ((0, pad_e), (0, 0))), dtype),
        node_mask=jnp.asarray(np.arange(max_nodes) < n),
        edge_mask=jnp.asarray(np.arange(max_edges) < e),
    )


def graph_from_adjacency(nodes, adjacency, **kwargs) -> Graph:
    """A [`jaxdeq.graph.Graph`][] with an edge $j \\to i$ wherever `adjacency[i, j]`
    is non-zero; the entry becomes that edge's single feature.

    **Arguments:**

    - `nodes`: node features `(num_nodes, node_features)`.
    - `adjacency`: `(num_nodes, num_nodes)`, row = receiver, column = sender.
    - `kwargs`: `max_nodes`, `max_edges`, `dtype` as in [`jaxdeq.graph.graph`][].

    **Returns:**

    A `Graph`.
    """
    adjacency = np.asarray(adjacency)
    n = np.shape(nodes)[0]
    if adjacency.shape != (n, n):
        raise ValueError(
            f"graph_from_adjacency: `adjacency` must be ({n}, {n}), got "
            f"{adjacency.shape}."
        )
    receivers, senders = np.nonzero(adjacency)
    return graph(
        nodes, senders, receivers, adjacency[receivers, senders][:, None], **kwargs
    )


def batch_graphs(graphs: Sequence[Graph]) -> Graph:
    """Join graphs into one disjoint graph (indices offset), for segment operations
    over a batch without padding to a common size. Use `jax.vmap` over stacked
    graphs of equal padded sizes instead when they fit.

    **Arguments:**

    - `graphs`: a non-empty sequence of `Graph` with the same feature sizes.

    **Returns:**

    One `Graph` whose nodes are those of `graphs` in order.
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("batch_graphs: needs at least one graph.")
    offsets = np.cumsum([0] + [g.num_nodes for g in graphs[:-1]])
    cat = lambda xs: jnp.concatenate(xs, axis=0)
    return Graph(
        nodes=cat([g.nodes for g in graphs]),
        senders=cat([g.senders + jnp.int32(o) for g, o in zip(graphs, offsets)]),
        receivers=cat([g.receivers + jnp.int32(o) for g, o in zip(graphs, offsets)]),
        edges=cat([g.edges for g in graphs]),
        node_mask=cat([g.node_mask for g in graphs]),
        edge_mask=cat([g.edge_mask for g in graphs]),
    )
