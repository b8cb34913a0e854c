"""Neural ODE blocks on diffrax: `NeuralODE` (with augmentation and a steady-state
mode), the homotopy equilibrium model `HomoODE`, and their exact evaluation counts."""

from ._homoode import ConcatField as ConcatField, HomoODE as HomoODE
from ._neural_ode import NeuralODE as NeuralODE
from ._stats import ODEStats as ODEStats
