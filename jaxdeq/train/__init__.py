"""Training runs: data-parallel sharding, checkpoint and resume, metrics."""

from ._loop import (
    Recipe as Recipe,
    train as train,
    TrainConfig as TrainConfig,
    TrainResult as TrainResult,
)
from ._plots import load_history as load_history, plot_history as plot_history
from ._recipes import (
    ATTRACTOR_SUDOKU as ATTRACTOR_SUDOKU,
    AttractorSudokuOptions as AttractorSudokuOptions,
    CGS_GRAPHS as CGS_GRAPHS,
    CGSGraphsOptions as CGSGraphsOptions,
    CGSGraphsRegressor as CGSGraphsRegressor,
    DEQ_DIGITS as DEQ_DIGITS,
    DEQDigitsClassifier as DEQDigitsClassifier,
    DEQDigitsOptions as DEQDigitsOptions,
    EP_DIGITS as EP_DIGITS,
    EPDigitsClassifier as EPDigitsClassifier,
    EPDigitsOptions as EPDigitsOptions,
    MONOTONE_DIGITS as MONOTONE_DIGITS,
    MonotoneDigitsClassifier as MonotoneDigitsClassifier,
    MonotoneDigitsOptions as MonotoneDigitsOptions,
    NODE_DIGITS as NODE_DIGITS,
    NODEDigitsClassifier as NODEDigitsClassifier,
    NODEDigitsOptions as NODEDigitsOptions,
    RECIPES as RECIPES,
)
