from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx
from jaxtyping import Array, Float, PRNGKeyArray

from .._adjoint import ImplicitAdjoint
from .._deq import fixed_point
from .._misc import bookkeeping_dtype, check_positive_int
from .._solution import as_results, first_failure, Report, TRACE_SIZE
from .._solver.anderson import Anderson
from ._graphs import Graph


_ACTIVATIONS = {"identity": lambda h: h, "tanh": jnp.tanh}
_NORMALISATIONS = ("degree", "rows", "columns")
_METHODS = ("auto", "linear_solve", "iterate")
_READOUTS = ("node", "mean", "sum")


def _segment_sum(values, segments, num):
    return jax.ops.segment_sum(values, segments, num_segments=num)


def _iterate(h, args):
    # At module level: a fresh closure per call would recompile jaxdeq.fixed_point.
    model, weights, b, graph = args
    return model._map(h, weights, b, graph)


class ConvergentGraphSolver(eqx.Module):
    r"""A convergent graph solver (Park, Choo & Park 2022): a graph layer whose
    fixed point exists and is unique by construction.

    An encoder turns each edge $j \to i$ into weights $a_{ij} \in (0, 1)$ (one per
    head; an MLP of $[x_i, x_j, e_{ij}]$ squashed by a sigmoid) and each node into a
    bias $b_i$ (an MLP of $x_i$). With the weights normalised by degree into a
    transition matrix $A$, the layer's state $H \in \mathbb{R}^{n \times d}$ is the
    fixed point of

    $$T(H) = \gamma\, A\, \phi(H) + B, \qquad 0 < \gamma < 1,$$

    per head ($\phi$ the identity, as in the paper, or `tanh`; both 1-Lipschitz).
    Normalisations:

    - `"degree"` (default): $A_{ij} = a_{ij} / \max(d^{\text{in}}_i, d^{\text{out}}_j)$
        with edge counts $d$, so every row sum and every column sum of $A$ is at most
        one; hence $\|A\|_1, \|A\|_\infty \le 1$ and, by Riesz–Thorin,
        $\|A\|_p \le 1$ for every $p$ including the spectral norm: $T$ is a
        $\gamma$-contraction in every $\ell_p$ norm over nodes.
    - `"rows"`: $A_{ij} = a_{ij} / d^{\text{in}}_i$ (the paper's averaging of
        incoming messages): row sums at most one, a $\gamma$-contraction in the
        max-norm over nodes.
    - `"columns"`: $A_{ij} = a_{ij} / d^{\text{out}}_j$ (each node spreads its state
        over its out-edges, as a random walk or PageRank does): column sums at most
        one, a $\gamma$-contraction in the $\ell_1$ norm over nodes.

    So by Banach's theorem $H^*$ exists, is unique, and fixed-point iteration converges
    from anywhere at rate $\gamma$. With $\phi$ the identity $H^* = (I - \gamma
    A)^{-1} B$ is one dense linear solve per head (lineax LU, on the padded graph);
    otherwise (or with `method="iterate"`) a jaxdeq fixed-point solve with segment
    sums over the edge list, O(edges) per step. Gradients by implicit
    differentiation either way (no backpropagation through iterations). An MLP
    decodes $[H^*_i, x_i]$ to node outputs, optionally pooled to a graph output.

    Called on one graph, `out, report = model(graph)`; `jax.vmap` it over a
    stacked batch. `report` is a [`jaxdeq.Report`][] of the solve for $H^*$
    (see [`jaxdeq.graph.ConvergentGraphSolver.solve`][]); a solve that fails is
    reported there, and raises only with `throw=True`.

    ??? cite "References"

        ```bibtex
        @inproceedings{park2022convergent,
            author = {Park, Junyoung and Choo, Jinhyun and Park, Jinkyoo},
            title = {Convergent Graph Solvers},
            booktitle = {International Conference on Learning Representations},
            year = {2022},
        }
        ```
    """

    edge_encoder: eqx.nn.MLP
    bias_encoder: eqx.nn.MLP
    decoder: eqx.nn.MLP
    solver: optx.AbstractFixedPointSolver
    adjoint: optx.AbstractAdjoint
    gamma: float = eqx.field(static=True)
    hidden: int = eqx.field(static=True)
    heads: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)
    normalisation: str = eqx.field(static=True)
    method: str = eqx.field(static=True)
    readout: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    node_features: int = eqx.field(static=True)
    edge_features: int = eqx.field(static=True)

    def __init__(
        self,
        node_features: int,
        out_size: int,
        *,
        hidden: int = 32,
        heads: int = 1,
        edge_features: int = 0,
        gamma: float = 0.5,
        activation: Literal["identity", "tanh"] = "identity",
        normalisation: Literal["degree", "rows", "columns"] = "degree",
        method: Literal["auto", "linear_solve", "iterate"] = "auto",
        readout: Literal["node", "mean", "sum"] = "node",
        width: int = 64,
        depth: int = 2,
        solver: optx.AbstractFixedPointSolver | None = None,
        adjoint: optx.AbstractAdjoint | None = None,
        max_steps: int = 256,
        throw: bool = False,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `node_features`, `edge_features`: input feature sizes.
        - `out_size`: outputs per node (`readout="node"`) or per graph.
        - `hidden`: width $d$ of the state $H$; `heads` must divide it.
        - `heads`: independent transition matrices, each acting on `hidden / heads`
            columns of $H$.
        - `gamma`: the contraction factor $\gamma \in (0, 1)$ (the paper's 0.5).
        - `activation`: $\phi$, `"identity"` (linear CGS) or `"tanh"`.
        - `normalisation`: `"degree"`, `"rows"` or `"columns"`, as above.
        - `method`: `"linear_solve"` (identity activation only), `"iterate"`, or
            `"auto"` (linear solve when $\phi$ is the identity).
        - `readout`: `"node"` outputs, or a graph output by `"mean"`/`"sum"` over
            the real nodes.
        - `width`, `depth`: of the encoder and decoder MLPs.
        - `solver`, `adjoint`, `max_steps`: for `method="iterate"`; default
            `jaxdeq.Anderson(rtol=1e-6, atol=1e-8)` and
            [`jaxdeq.ImplicitAdjoint`][].
        - `throw`: whether a failed solve raises (default `False`: the failure is
            reported per graph in `report.result` and training goes on).
        - `dtype`: of the parameters.
        - `key`: PRNG key.

        **Raises:**

        `ValueError` for `gamma` outside $(0, 1)$, `heads` not dividing `hidden`,
        an unknown option, or `method="linear_solve"` with a non-linear activation.
        """
        name = "ConvergentGraphSolver"
        if not 0.0 < float(gamma) < 1.0:
            raise ValueError(
                f"{name}: `gamma` must lie strictly between 0 and 1 for the map to be "
                f"a contraction, got {gamma!r}. The paper uses gamma=0.5."
            )
        for label, value, allowed in (
            ("activation", activation, tuple(_ACTIVATIONS)),
            ("normalisation", normalisation, _NORMALISATIONS),
            ("method", method, _METHODS),
            ("readout", readout, _READOUTS),
        ):
            if value not in allowed:
                raise ValueError(
                    f"{name}: `{label}` must be one of {allowed}, got {value!r}."
                )
        for label, value in (
            ("node_features", node_features),
            ("out_size", out_size),
            ("hidden", hidden),
            ("heads", heads),
            ("max_steps", max_steps),
        ):
            check_positive_int(name, label, value)
        check_positive_int(name, "edge_features", edge_features, minimum=0)
        if not isinstance(throw, bool):
            raise TypeError(f"{name}: `throw` must be a bool, got {throw!r}.")
        if hidden % heads:
            raise ValueError(
                f"{name}: `heads` ({heads}) must divide `hidden` ({hidden})."
            )
        if method == "linear_solve" and activation != "identity":
            raise ValueError(
                f"{name}: method='linear_solve' needs activation='identity' (the map "
                "is then affine); use method='iterate' for a non-linear activation."
            )
        k1, k2, k3 = jr.split(key, 3)
        self.edge_encoder = eqx.nn.MLP(
            2 * node_features + edge_features, heads, width, depth, dtype=dtype, key=k1
        )
        self.bias_encoder = eqx.nn.MLP(
            node_features, hidden, width, depth, dtype=dtype, key=k2
        )
        self.decoder = eqx.nn.MLP(
            hidden + node_features, out_size, width, depth, dtype=dtype, key=k3
        )
        self.solver = Anderson(rtol=1e-6, atol=1e-8) if solver is None else solver
        self.adjoint = ImplicitAdjoint() if adjoint is None else adjoint
        self.gamma = float(gamma)
        self.hidden = hidden
        self.heads = heads
        self.activation = activation
        self.normalisation = normalisation
        self.method = method
        self.readout = readout
        self.max_steps = max_steps
        self.throw = throw
        self.node_features = node_features
        self.edge_features = edge_features

    def lipschitz_bound(self) -> float:
        r"""$\gamma$: the Lipschitz constant of $T$ is at most this, in every
        $\ell_p$ norm over nodes for `"degree"` normalisation, in the max-norm for
        `"rows"` and in the $\ell_1$ norm for `"columns"`."""
        return self.gamma

    def _check(self, graph):
        if not isinstance(graph, Graph):
            raise TypeError(
                "ConvergentGraphSolver: expected a jaxdeq.graph.Graph (build one with "
                f"jaxdeq.graph.graph(...)), got {type(graph).__name__}."
            )
        got = (graph.nodes.shape[-1], graph.edges.shape[-1])
        if got != (self.node_features, self.edge_features):
            raise ValueError(
                f"ConvergentGraphSolver: built for {self.node_features} node and "
                f"{self.edge_features} edge features, got a graph with {got[0]} and "
                f"{got[1]}."
            )

    def edge_weights(self, graph: Graph) -> Float[Array, "heads e"]:
        """The normalised weight of each edge for each head (zero for padding)."""
        self._check(graph)
        x = graph.nodes
        features = jnp.concatenate(
            [x[graph.receivers], x[graph.senders], graph.edges.astype(x.dtype)], axis=-1
        )
        raw = jax.nn.sigmoid(jax.vmap(self.edge_encoder)(features)).T
        n = graph.num_nodes
        real = graph.edge_mask.astype(raw.dtype)
        deg_in = _segment_sum(real, graph.receivers, n)[graph.receivers]
        deg_out = _segment_sum(real, graph.senders, n)[graph.senders]
        scale = {
            "degree": jnp.maximum(deg_in, deg_out),
            "rows": deg_in,
            "columns": deg_out,
        }[self.normalisation]
        return raw * (real / jnp.maximum(scale, 1))[None]

    def transition(self, graph: Graph) -> Float[Array, "heads n n"]:
        """The transition matrices $A$ (one per head) as dense arrays; the layer's map
        is $T(H) = \\gamma A \\phi(H) + B$."""
        return jax.vmap(graph.adjacency)(self.edge_weights(graph))

    def bias(self, graph: Graph) -> Float[Array, "n hidden"]:
        """The injection $B$ (zero at padding nodes)."""
        b = jax.vmap(self.bias_encoder)(jnp.asarray(graph.nodes))
        return jnp.where(graph.node_mask[:, None], b, 0)

    def _map(self, h, weights, b, graph):
        n, k = graph.num_nodes, self.hidden // self.heads
        phi = _ACTIVATIONS[self.activation](h).reshape(n, self.heads, k)
        messages = weights.T[:, :, None] * phi[graph.senders]
        agg = _segment_sum(messages, graph.receivers, n).reshape(n, self.hidden)
        return self.gamma * agg + b

    def solve(self, graph: Graph) -> tuple[Float[Array, "n hidden"], Report]:
        r"""The fixed point $H^*$ of one graph and the report of its solve.

        **Arguments:**

        - `graph`: one [`jaxdeq.graph.Graph`][] (`jax.vmap` over a stacked batch).

        **Returns:**

        `(h, report)`: $H^*$, shape `(n, hidden)`, and a [`jaxdeq.Report`][]:

        - linear solve: `result` is the lineax solves' (lifted; `successful` unless
            one of them failed, e.g. returned a non-finite value), `num_steps` 0,
            `num_fn_evals` 1 (the map evaluated once for the residual), and the
            residual $\|T(H^*) - H^*\|_2$ and $\|T(H^*) - H^*\|_2 /
            \|T(H^*)\|_2$ of the value returned;
        - iteration: the report of [`jaxdeq.fixed_point`][] (residuals in the
            solver's norm, the residual trace, `RESULTS.fixed_point_max_steps_reached`
            when `max_steps` ran out).

        **Raises:**

        With `throw=True`, a runtime error carrying the result's message when the
        solve fails.
        """
        weights = self.edge_weights(graph)
        b = self.bias(graph)
        method = self.method
        if method == "auto":
            method = "linear_solve" if self.activation == "identity" else "iterate"
        if method == "linear_solve":
            n, k = graph.num_nodes, self.hidden // self.heads
            a = jax.vmap(graph.adjacency)(weights)
            eye = jnp.eye(n, dtype=a.dtype)

            def per_head(a_h, b_h):
                op = lx.MatrixLinearOperator(eye - self.gamma * a_h)

                def column(col):
                    sol = lx.linear_solve(op, col, lx.LU(), throw=False)
                    return sol.value, sol.result

                return jax.vmap(column, in_axes=1, out_axes=(1, 0))(b_h)

            heads_b = b.reshape(n, self.heads, k).transpose(1, 0, 2)
            h, results = jax.vmap(per_head)(a, heads_b)
            h = h.transpose(1, 0, 2).reshape(n, self.hidden)
            image = self._map(h, weights, b, graph)
            dtype = bookkeeping_dtype(h)
            abs_residual = jnp.linalg.norm(image - h).astype(dtype)
            rel_residual = abs_residual / jnp.maximum(
                jnp.linalg.norm(image).astype(dtype), jnp.finfo(dtype).tiny
            )
            report = Report(
                result=first_failure(as_results(results)),
                num_steps=jnp.zeros((), jnp.int32),
                num_fn_evals=jnp.ones((), jnp.int32),
                abs_residual=abs_residual,
                rel_residual=rel_residual,
                residual_trace=jnp.full((TRACE_SIZE,), jnp.nan, dtype),
            )
        else:
            sol = fixed_point(
                _iterate,
                self.solver,
                b,
                (self, weights, b, graph),
                max_steps=self.max_steps,
                adjoint=self.adjoint,
                throw=False,
            )
            h, report = sol.value, Report.from_solution(sol)
        if self.throw:
            h = report.result.error_if(h, ~report.successful)
        return h, report

    def __call__(self, graph: Graph) -> tuple[Array, Report]:
        """Outputs per node `(n, out_size)` (zero at padding nodes), or per graph
        `(out_size,)` with `readout="mean"`/`"sum"`, and the [`jaxdeq.Report`][] of
        the solve (see [`jaxdeq.graph.ConvergentGraphSolver.solve`][])."""
        h, report = self.solve(graph)
        out = jax.vmap(self.decoder)(jnp.concatenate([h, graph.nodes], axis=-1))
        out = jnp.where(graph.node_mask[:, None], out, 0)
        if self.readout == "node":
            return out, report
        total = jnp.sum(out, axis=0)
        if self.readout != "sum":
            total = total / jnp.maximum(jnp.sum(graph.node_mask), 1).astype(out.dtype)
        return total, report
