"""The `cgs-graphs` recipe: a convergent graph solver regressing steady states."""

import dataclasses
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..._solution import Report
from ...data import graph_steady_states
from ...graph import ConvergentGraphSolver, Graph
from .._config import check_options, Recipe, require
from ._classifier import float32, report_metrics


@dataclasses.dataclass(frozen=True)
class CGSGraphsOptions:
    """Options of the `cgs-graphs` recipe.

    **Fields:**

    - `task`: `"pagerank"` or `"heat"` ([`jaxdeq.data.graph_steady_states`][]).
    - `normalisation`: of the transition matrix, `"degree"`, `"rows"` or
        `"columns"` (see [`jaxdeq.graph.ConvergentGraphSolver`][]).
    - `gamma`: the contraction factor in (0, 1).
    - `hidden`, `heads`: width of the state and number of transition matrices.
    - `num_graphs`, `test_graphs`: graphs generated, and how many of them are
        held out for evaluation.
    - `data_seed`: the graph generator's seed (the run's `--seed` sets the
        initialisation and the batch order).
    """

    task: str = "pagerank"
    normalisation: Literal["degree", "rows", "columns"] = "columns"
    gamma: float = 0.95
    hidden: int = 16
    heads: int = 2
    num_graphs: int = 192
    test_graphs: int = 64
    data_seed: int = 0

    def __post_init__(self):
        check_options(
            self,
            ints=(
                ("hidden", 1),
                ("heads", 1),
                ("num_graphs", 2),
                ("test_graphs", 1),
                ("data_seed", 0),
            ),
            fractions=("gamma",),
            choices=(
                ("task", ("pagerank", "heat")),
                ("normalisation", ("degree", "rows", "columns")),
            ),
        )
        require(
            self,
            self.test_graphs < self.num_graphs,
            f"need test_graphs < num_graphs, got test_graphs={self.test_graphs}, "
            f"num_graphs={self.num_graphs}.",
        )


_GRAPH_FIELDS = ("nodes", "senders", "receivers", "edges", "node_mask", "edge_mask")


class CGSGraphsRegressor(eqx.Module):
    """A convergent graph solver (linear, one LU solve per graph and head) with an
    MLP decoder of each node's state and features: the `cgs-graphs` recipe's
    model, regressing the stationary state of a process on random graphs. The
    solve runs in float32 also under `--precision bfloat16` (LAPACK has no
    bfloat16 factorisation)."""

    cgs: Any

    def __init__(self, options: CGSGraphsOptions, key):
        self.cgs = ConvergentGraphSolver(
            3,
            1,
            hidden=options.hidden,
            heads=options.heads,
            gamma=options.gamma,
            width=32,
            depth=2,
            normalisation=options.normalisation,
            dtype=jnp.float32,
            key=key,
        )

    def __call__(self, graph) -> tuple[Array, Report]:
        """Per-node predictions `(max_nodes, 1)` (zero at padding) and the solve's
        [`jaxdeq.Report`][], for one padded [`jaxdeq.graph.Graph`][]."""
        return float32(self.cgs)(float32(graph))


def _batch_graphs(batch):
    return Graph(*(batch[f] for f in _GRAPH_FIELDS))


def _cgs_errors(model, batch):
    pred, report = jax.vmap(model)(_batch_graphs(batch))
    mask = batch["node_mask"][..., None]
    count = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
    y = batch["y"].astype(jnp.float32)
    sq = jnp.where(mask, (pred.astype(jnp.float32) - y) ** 2, 0)
    mean = jnp.sum(jnp.where(mask, y, 0)) / count
    var = jnp.sum(jnp.where(mask, (y - mean) ** 2, 0)) / count
    mse = jnp.sum(sq) / count
    return mse, {"mse": mse, "nmse": mse / var, **report_metrics(report)}


def _cgs_loss(model, batch, key):
    del key
    return _cgs_errors(model, batch)


def _cgs_evaluate(model, data):
    return _cgs_errors(model, {k: jnp.asarray(v) for k, v in data.items()})[1]


def _cgs_data(options):
    if not 0 < options.test_graphs < options.num_graphs:
        raise ValueError(
            f"cgs-graphs: need 0 < test_graphs < num_graphs, got test_graphs="
            f"{options.test_graphs}, num_graphs={options.num_graphs}."
        )
    graphs, targets = graph_steady_states(
        options.task, options.num_graphs, seed=options.data_seed
    )
    arrays = {f: np.asarray(getattr(graphs, f)) for f in _GRAPH_FIELDS}
    arrays["y"] = targets
    cut = options.num_graphs - options.test_graphs
    train = {k: v[:cut] for k, v in arrays.items()}
    held_out = {k: v[cut:] for k, v in arrays.items()}
    return train, held_out


CGS_GRAPHS = Recipe(
    name="cgs-graphs",
    description=(
        "A convergent graph solver (a contraction on every graph: unique fixed point "
        "by one LU solve, implicit gradients) regressing n x PageRank or a heat "
        "steady state on random graphs generated offline (128 for training, 64 "
        "held out; the evaluation reports the held-out normalised MSE)."
    ),
    options=CGSGraphsOptions,
    init=lambda key, options: CGSGraphsRegressor(options, key),
    data=_cgs_data,
    loss=_cgs_loss,
    evaluate=_cgs_evaluate,
)
