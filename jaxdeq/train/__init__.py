"""Training runs: data-parallel sharding, checkpoint and resume, metrics."""

from ._loop import (
    Recipe as Recipe,
    train as train,
    TrainConfig as TrainConfig,
    TrainResult as TrainResult,
)
from ._plots import load_history as load_history, plot_history as plot_history
from ._recipes import (
    DEQ_DIGITS as DEQ_DIGITS,
    DEQDigitsClassifier as DEQDigitsClassifier,
    DEQDigitsOptions as DEQDigitsOptions,
    RECIPES as RECIPES,
)
