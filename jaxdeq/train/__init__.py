"""Training runs: one step, the device mesh, the outer loop, and the recipes."""

from ._config import Recipe as Recipe, TrainConfig as TrainConfig
from ._loop import train as train, TrainResult as TrainResult
from ._plots import load_history as load_history, plot_history as plot_history
from ._recipes import RECIPES as RECIPES
from ._recipes._classifier import (
    Classifier as Classifier,
    report_metrics as report_metrics,
)
from ._recipes.attractor_sudoku import (
    ATTRACTOR_SUDOKU as ATTRACTOR_SUDOKU,
    AttractorSudokuOptions as AttractorSudokuOptions,
)
from ._recipes.cgs_graphs import (
    CGS_GRAPHS as CGS_GRAPHS,
    CGSGraphsOptions as CGSGraphsOptions,
    CGSGraphsRegressor as CGSGraphsRegressor,
)
from ._recipes.deq_digits import (
    DEQ_DIGITS as DEQ_DIGITS,
    DEQDigitsOptions as DEQDigitsOptions,
)
from ._recipes.ep_digits import (
    EP_DIGITS as EP_DIGITS,
    EPDigitsClassifier as EPDigitsClassifier,
    EPDigitsOptions as EPDigitsOptions,
)
from ._recipes.monotone_digits import (
    MONOTONE_DIGITS as MONOTONE_DIGITS,
    MonotoneDigitsOptions as MonotoneDigitsOptions,
)
from ._recipes.node_digits import (
    NODE_DIGITS as NODE_DIGITS,
    NODEDigitsOptions as NODEDigitsOptions,
)
from ._step import make_step as make_step
