from .anderson import Anderson as Anderson
from .bracketed_newton import BracketedNewton as BracketedNewton
from .broyden import Broyden as Broyden
from .deer import DEER as DEER, ELK as ELK, QuasiDEER as QuasiDEER
from .homotopy import Homotopy as Homotopy, homotopy_path as homotopy_path
from .min_steps import (
    MinStepsFixedPoint as MinStepsFixedPoint,
    MinStepsRootFinder as MinStepsRootFinder,
)
from .pseudo_transient import PseudoTransientNewton as PseudoTransientNewton
from .splitting import (
    ForwardBackward as ForwardBackward,
    PeacemanRachford as PeacemanRachford,
)
from .steady_state import SteadyState as SteadyState
