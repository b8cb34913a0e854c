"""jaxdeq: implicit and continuous-time models in JAX."""

import importlib.metadata

from . import (
    attractor as attractor,
    econ as econ,
    ep as ep,
    graph as graph,
    monotone as monotone,
    ode as ode,
    pinn as pinn,
)
from ._adjoint import (
    AbstractDEQAdjoint as AbstractDEQAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    JacobianFreeAdjoint as JacobianFreeAdjoint,
    NeumannAdjoint as NeumannAdjoint,
    PhantomAdjoint as PhantomAdjoint,
)
from ._adjoint_scan import ScanAdjoint as ScanAdjoint
from ._adjoint_splitting import SplittingAdjoint as SplittingAdjoint
from ._bidiagonal import (
    BlockBidiagonalLinearOperator as BlockBidiagonalLinearOperator,
    ParallelScan as ParallelScan,
)
from ._deq import DEQ as DEQ, fixed_point as fixed_point
from ._linear import (
    block_tridiagonal as block_tridiagonal,
    BlockTridiagonal as BlockTridiagonal,
    BlockTridiagonalLinearOperator as BlockTridiagonalLinearOperator,
)
from ._recurrence import (
    ParallelRNN as ParallelRNN,
    recurrence_residual as recurrence_residual,
    solve_recurrence as solve_recurrence,
)
from ._regularisers import (
    fixed_point_correction as fixed_point_correction,
    jacobian_regulariser as jacobian_regulariser,
    spectral_radius as spectral_radius,
)
from ._solution import (
    BackwardStats as BackwardStats,
    is_successful as is_successful,
    Report as Report,
    RESULTS as RESULTS,
)
from ._solver import (
    Anderson as Anderson,
    BracketedNewton as BracketedNewton,
    Broyden as Broyden,
    DEER as DEER,
    ELK as ELK,
    ForwardBackward as ForwardBackward,
    Homotopy as Homotopy,
    homotopy_path as homotopy_path,
    MinStepsFixedPoint as MinStepsFixedPoint,
    MinStepsRootFinder as MinStepsRootFinder,
    PeacemanRachford as PeacemanRachford,
    PseudoTransientNewton as PseudoTransientNewton,
    QuasiDEER as QuasiDEER,
    SteadyState as SteadyState,
)


__version__ = importlib.metadata.version("jaxdeq")
