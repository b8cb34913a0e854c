"""Convergent graph solvers: graph layers with a unique fixed point by construction."""

from ._cgs import ConvergentGraphSolver as ConvergentGraphSolver
from ._graphs import (
    batch_graphs as batch_graphs,
    Graph as Graph,
    graph as graph,
    graph_from_adjacency as graph_from_adjacency,
)
