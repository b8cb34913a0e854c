"""What a training run is configured by: the run's settings and the recipe."""

import dataclasses
import math
import pathlib
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What every training run is configured by (a recipe adds its own options).

    **Fields:**

    - `steps`: optimiser steps in total (a resumed run continues up to this).
    - `batch_size`: the global batch, split across devices (and processes).
    - `learning_rate`: of the recipe's optimiser (Adam unless the recipe says).
    - `seed`: initialisation, data order and per-step keys all derive from it.
    - `devices`: how many devices to use (default: all).
    - `model_parallel`: the size of the device mesh's second axis, `model`
        (default 1: pure data parallelism). The batch is split along the first axis,
        `data` (`devices / model_parallel` ways); parameter and optimiser-state
        arrays with at least `shard_threshold` elements are split along `model`
        (on their largest axis divisible by it), smaller ones replicated. XLA
        inserts the gathers the computation needs.
    - `shard_threshold`: the element count from which arrays are split along
        `model`.
    - `accumulate`: micro-batches per step (gradient accumulation).
    - `precision`: `"float32"`, or `"bfloat16"` to compute in bfloat16 while the
        parameters, optimiser state and solver bookkeeping stay in float32.
    - `log_every`, `eval_every`: steps between metric lines and evaluations.
    - `checkpoint_every`: steps between checkpoints (also on the last step and on
        SIGTERM/SIGINT); `keep`: how many to keep. A state holding a NaN or an
        infinity is never checkpointed, so the last finite checkpoint is never
        pushed out.
    - `run_dir`: where checkpoints, `metrics.jsonl`, the run record `run.jsonl`
        and plots go.
    - `resume`: continue from the newest intact checkpoint in `run_dir`, with its
        PRNG key and data position. A resume whose training configuration differs
        from the checkpoint's in anything that changes the trajectory (seed, batch
        size, learning rate, accumulation, precision, devices and mesh, recipe
        options, and the numerical environment: `jax_enable_x64`, the default
        matmul precision, the backend and the JAX version) is refused, naming the
        fields.
    - `force`: resume anyway with the new configuration; the changes are logged
        and recorded in `run_dir/run.jsonl`.
    - `nonfinite`: what a step whose loss, gradient or update is not finite does
        (it is detected inside the jitted step; the update is never applied):
        `"stop"` (default) raises `FloatingPointError`, `"skip"` skips the update,
        `"reduce"` skips it and multiplies the learning rate by `reduce_factor`
        from then on. After 10 non-finite steps in a row, "skip" and "reduce" stop
        too.
    - `reduce_factor`: in (0, 1), see `nonfinite`.
    - `progress`: draw a progress line on stderr.
    - `tensorboard`: also write every logged metric as TensorBoard scalars to
        `run_dir/tensorboard` (needs `tensorboardX`:
        `pip install "jaxdeq[tensorboard]"`).
    """

    steps: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    devices: int | None = None
    model_parallel: int = 1
    shard_threshold: int = 2**16
    accumulate: int = 1
    precision: Literal["float32", "bfloat16"] = "float32"
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 50
    keep: int = 3
    run_dir: str = "runs/train"
    resume: bool = False
    progress: bool = True
    tensorboard: bool = False
    force: bool = False
    nonfinite: Literal["stop", "skip", "reduce"] = "stop"
    reduce_factor: float = 0.5

    def __post_init__(self):
        for name in (
            "steps",
            "batch_size",
            "model_parallel",
            "shard_threshold",
            "accumulate",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep",
        ):
            _set_int(self, name, 1)
        _set_int(self, "seed", 0, 2**32 - 1)
        if self.devices is not None:
            _set_int(self, "devices", 1)
        _set_float(self, "learning_rate", 0.0, math.inf)
        _set_float(self, "reduce_factor", 0.0, 1.0)
        for name, choices in (
            ("precision", ("float32", "bfloat16")),
            ("nonfinite", ("stop", "skip", "reduce")),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"TrainConfig: `{name}` must be one of {choices}, got "
                    f"{getattr(self, name)!r}."
                )
        for name in ("resume", "progress", "tensorboard", "force"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"TrainConfig: `{name}` must be True or False, got "
                    f"{getattr(self, name)!r}."
                )
        if not isinstance(self.run_dir, (str, pathlib.PurePath)) or not str(
            self.run_dir
        ):
            raise ValueError(
                f"TrainConfig: `run_dir` must be a non-empty path, got "
                f"{self.run_dir!r}."
            )


def _set_int(obj, name, low, high=None, owner=None):
    """Require `low <= obj.name (<= high)` of an int (NumPy ints too), stored as int."""
    value = getattr(obj, name)
    owner = owner or type(obj).__name__
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{owner}: `{name}` must be an int, got {value!r}.")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{owner}: `{name}` must be {bound}, got {value!r}.")
    object.__setattr__(obj, name, int(value))


def _set_float(obj, name, low, high, owner=None, *, closed=False):
    """Require a finite real `low < obj.name` (`low <=` if `closed`; `< high` when
    `high` is finite), stored as float."""
    value = getattr(obj, name)
    owner = owner or type(obj).__name__
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{owner}: `{name}` must be a number, got {value!r}.")
    above = low <= value if closed else low < value
    if not (math.isfinite(value) and above and (value < high or high == math.inf)):
        bound = (">= " if closed else "> ") + f"{low}"
        if high != math.inf:
            bound = f"in {'[' if closed else '('}{low}, {high})"
        raise ValueError(
            f"{owner}: `{name}` must be a finite number {bound}, got {value!r}."
        )
    object.__setattr__(obj, name, float(value))


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to train one model family: model, data, loss, metrics.

    **Fields:**

    - `name`, `description`: shown by `jaxdeq train --help`.
    - `options`: a frozen dataclass type of the recipe's own options (defaults
        required); the command line gets one flag per field.
    - `init(key, options) -> model`: an equinox Module.
    - `data(options) -> (train, evaluation)`: dicts of NumPy arrays with a common
        leading dimension, from data that ships with a package or is generated.
    - `loss(model, batch, key) -> (loss, metrics)`: a scalar and a dict of scalars
        (e.g. solver steps and residuals), for one global batch.
    - `evaluate(model, batch) -> metrics`: on the evaluation data (optional).
    - `optimiser(config) -> optax.GradientTransformation` (default: Adam).
    - `backward_stats`: if `True`, `loss` takes a fourth argument, a
        [`jaxdeq.BackwardStats`][] probe with one entry per example of the batch,
        to pass on to the model's solves; the step differentiates with respect to
        it and logs the backward solves' statistics every step under
        `BackwardStats`' own field names with a `backward_` prefix:
        `backward_num_steps` (mean), `backward_rel_residual` (mean; NaN where the
        backward mode does not measure it) and `backward_success` (the fraction
        of examples whose backward solve succeeded).

    A recipe's solver statistics keep the names of the solve report
    ([`jaxdeq.Report`][]): see [`jaxdeq.train.report_metrics`][].
    """

    name: str
    description: str
    options: type
    init: Callable[[PRNGKeyArray, Any], eqx.Module]
    data: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    # `loss(model, batch, key[, backward_stats])`, `evaluate(model, data)`.
    loss: Callable[..., tuple[Array, dict]]
    evaluate: Callable[..., dict] | None = None
    optimiser: Callable[[TrainConfig], optax.GradientTransformation] | None = None
    backward_stats: bool = False


def check_options(
    options, *, ints=(), positive=(), fractions=(), non_negative=(), choices=()
):
    """Validate a recipe's options when they are made, before any compute.

    `ints`: `(name, low)` pairs; `positive`: finite floats > 0; `fractions`: in
    (0, 1); `non_negative`: finite floats >= 0; `choices`: `(name, allowed)`."""
    for name, low in ints:
        _set_int(options, name, low)
    for name in positive:
        _set_float(options, name, 0.0, math.inf)
    for name in fractions:
        _set_float(options, name, 0.0, 1.0)
    for name in non_negative:
        _set_float(options, name, 0.0, math.inf, closed=True)
    for name, allowed in choices:
        if getattr(options, name) not in allowed:
            raise ValueError(
                f"{type(options).__name__}: `{name}` must be one of {allowed}, got "
                f"{getattr(options, name)!r}."
            )


def require(options, ok: bool, message: str) -> None:
    """Raise `ValueError` naming the options' class and `message` unless `ok`."""
    if not ok:
        raise ValueError(f"{type(options).__name__}: {message}")
