"""PINN machinery for the functional equations of economics: residuals of
Hamilton–Jacobi–Bellman and Kolmogorov forward equations, collocation samplers,
value networks with hard conditions and shape constraints, and the Adam → L-BFGS
training loop with per-term diagnostics."""

from ._fit import (
    fit as fit,
    FitResult as FitResult,
    NonFiniteLossError as NonFiniteLossError,
)
from ._networks import (
    ShapeConstrainedNetwork as ShapeConstrainedNetwork,
    ValueNetwork as ValueNetwork,
)
from ._operators import (
    accuracy_report as accuracy_report,
    HJB as HJB,
    KolmogorovForward as KolmogorovForward,
    shape_violation as shape_violation,
    value_and_derivatives as value_and_derivatives,
)
from ._samplers import (
    QuasiRandomSampler as QuasiRandomSampler,
    ResidualAdaptiveSampler as ResidualAdaptiveSampler,
    UniformSampler as UniformSampler,
)
