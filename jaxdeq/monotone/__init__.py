"""Monotone DEQs and monotone deep Boltzmann machines."""

from .._solver._monotone_problem import (
    AbstractMonotoneLinear as AbstractMonotoneLinear,
    AbstractProx as AbstractProx,
    AbstractResolvent as AbstractResolvent,
    MonotoneProblem as MonotoneProblem,
    Transposed as Transposed,
)
from ._categorical import GroupSoftmax as GroupSoftmax
from ._conv import MonotoneConv as MonotoneConv, MonotoneMultiConv as MonotoneMultiConv
from ._dbm import MonotoneDBM as MonotoneDBM, one_hot_groups as one_hot_groups
from ._dense import MonotoneLinear as MonotoneLinear
from ._mondeq import MonDEQ as MonDEQ
from ._relu import DiagonalProx as DiagonalProx, ReLU as ReLU
from ._solve import solve as solve
from ._tune import tune_step_size as tune_step_size
