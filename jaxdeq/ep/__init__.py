"""Equilibrium propagation: energy-based and asymmetric networks trained by nudging."""

from ._ep import (
    ep_gradient as ep_gradient,
    EPStats as EPStats,
    free_phase as free_phase,
    homeostatic_loss as homeostatic_loss,
    implicit_gradient as implicit_gradient,
    nudged_phase as nudged_phase,
    squared_error as squared_error,
)
from ._network import (
    AbstractEnergyNetwork as AbstractEnergyNetwork,
    LayeredNetwork as LayeredNetwork,
)
