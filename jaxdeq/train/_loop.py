import dataclasses
import functools
import importlib.metadata
import json
import math
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PRNGKeyArray

from .._solution import BackwardStats
from ._checkpoint import (
    Checkpoints,
    IncompatibleCheckpoint,
    truncate_metrics,
    unused_path,
    write_json_line,
)


# Consecutive non-finite steps after which the "skip" and "reduce" policies give up.
_MAX_NONFINITE_IN_A_ROW = 10
# What changes a run's trajectory: a resume must match these (or be forced).
_TRAJECTORY = ("seed", "batch_size", "learning_rate", "accumulate", "precision")


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
        to pass on to the model's solves; the loop differentiates with respect to
        it and logs the backward solves' mean steps (`backward_steps`), mean
        relative residual (`backward_residual`, NaN where the backward mode does not
        measure it) and failure fraction (`backward_failed`) every step.
    """

    name: str
    description: str
    options: type
    init: Callable[[PRNGKeyArray, Any], eqx.Module]
    data: Callable[[Any], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    loss: Callable[[eqx.Module, dict[str, Array], PRNGKeyArray], tuple[Array, dict]]
    evaluate: Callable[[eqx.Module, dict[str, np.ndarray]], dict] | None = None
    optimiser: Callable[[TrainConfig], optax.GradientTransformation] | None = None
    backward_stats: bool = False


@dataclasses.dataclass
class TrainResult:
    """What [`jaxdeq.train.train`][] returns.

    **Fields:**

    - `model`: the trained model.
    - `step`: the last step completed.
    - `history`: the logged metric records (also in `run_dir/metrics.jsonl`).
    - `interrupted`: whether a signal stopped the run (a checkpoint was saved).
    - `resumed_from`: the step a resumed run started from, else `None`.
    - `signal`: the number of the signal that stopped the run, else `None` (the
        command exits with 128 + this number).
    - `skipped`: how many steps were not applied because they were not finite.
    """

    model: eqx.Module
    step: int
    history: list[dict]
    interrupted: bool
    resumed_from: int | None
    signal: int | None = None
    skipped: int = 0


def _check_config(config: TrainConfig, num_devices: int, num_examples: int):
    # The fields themselves are checked by TrainConfig; here what they must fit.
    if num_devices % config.model_parallel:
        raise ValueError(
            f"train: model_parallel={config.model_parallel} does not divide the "
            f"{num_devices} device(s); use a divisor of {num_devices}."
        )
    data_parallel = num_devices // config.model_parallel
    per_step = data_parallel * config.accumulate
    if config.batch_size % per_step:
        raise ValueError(
            f"train: batch size {config.batch_size} does not divide across "
            f"{data_parallel} data-parallel device group(s) x {config.accumulate} "
            "accumulation step(s); "
            f"use a multiple of {per_step}, e.g. --batch-size "
            f"{per_step * max(1, config.batch_size // per_step)}."
        )
    if config.batch_size > num_examples:
        raise ValueError(
            f"train: batch size {config.batch_size} exceeds the {num_examples} "
            "training examples."
        )


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _batch_indices(step: int, seed: int, num_examples: int, batch_size: int):
    """The global batch of `step`: a fresh seeded permutation each epoch, so the data
    position is a function of the step alone and a resumed run sees the same data."""
    per_epoch = num_examples // batch_size
    epoch, offset = divmod(step, per_epoch)
    # One permutation per epoch, not per step: the batch loop stays light.
    perm = _epoch_permutation(seed, epoch, num_examples)
    return perm[offset * batch_size : (offset + 1) * batch_size]


def _compute_dtype(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree
    )


class _Progress:
    def __init__(self, total, enabled):
        self.total, self.enabled, self.start = total, enabled, time.perf_counter()

    def update(self, step, metrics):
        if not self.enabled:
            return
        width = 30
        done = int(width * step / self.total)
        shown = "  ".join(
            f"{k} {v:.4g}"
            for k, v in metrics.items()
            if isinstance(v, float) and k not in ("time", "step")
        )
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(
            f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total}  {shown}  "
            f"{rate:.1f} step/s "
        )
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            sys.stderr.write("\n")


def train(
    recipe: Recipe,
    config: TrainConfig = TrainConfig(),
    options: Any = None,
    *,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train `recipe` data-parallel over a device mesh, with checkpoints and metrics.

    The global batch is sharded along a `data` mesh axis over `config.devices`
    devices (under `jax.distributed.initialize()`, over every process's devices,
    each process feeding its own slice of each batch); parameters and optimiser
    state are replicated, or, with `config.model_parallel > 1`, large arrays are
    split along a second mesh axis, `model`. One jitted step computes the loss and
    the gradient (averaged over the global batch, with `config.accumulate`
    micro-batches) and applies the optimiser, unless the loss, the gradient or the
    result is not finite (then `config.nonfinite` decides). The per-step key is
    `fold_in(key(seed), step)` and the data order a function of `(seed, step)`;
    a run resumed from a checkpoint restores the saved key and data position and
    reproduces an uninterrupted one exactly, or is refused when its training
    configuration differs (unless `config.force`). Checkpoints (orbax-checkpoint:
    the parameters, optimiser state, step, key, data position and learning-rate
    scale) are written every `config.checkpoint_every` steps, at the end, and on
    SIGTERM/SIGINT, never of a non-finite state. Metrics are appended to
    `run_dir/metrics.jsonl` as strict JSON, from the resumed step on; lines are
    moved aside, never deleted.

    **Arguments:**

    - `recipe`: a [`jaxdeq.train.Recipe`][].
    - `config`: a [`jaxdeq.train.TrainConfig`][].
    - `options`: an instance of `recipe.options` (default: its defaults).
    - `log`: where messages go.

    **Returns:**

    A [`jaxdeq.train.TrainResult`][].

    **Raises:**

    - `ValueError` before any compute for a bad configuration (a batch that does
        not divide across devices, too many devices, ...) or a checkpoint from
        another recipe, training configuration or jaxdeq version (naming the
        differing fields).
    - `FloatingPointError` when a step is not finite and `config.nonfinite` is
        `"stop"` (or 10 steps in a row under `"skip"`/`"reduce"`); the last finite
        checkpoint is intact.
    """
    from .. import __version__

    options = recipe.options() if options is None else options
    if not isinstance(options, recipe.options):
        raise TypeError(
            f"train: `options` must be a {recipe.options.__name__} for recipe "
            f"{recipe.name!r}, got {type(options).__name__}."
        )
    summary_writer = None
    if config.tensorboard:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "train: tensorboard=True (--tensorboard) writes event files with "
                "tensorboardX, which is not installed; run "
                '`pip install "jaxdeq[tensorboard]"` or leave TensorBoard off.'
            ) from e
    available = jax.devices()
    num_devices = len(available) if config.devices is None else config.devices
    if not 1 <= num_devices <= len(available):
        raise ValueError(
            f"train: {num_devices} devices requested, {len(available)} available "
            f"({jax.default_backend()}). On a CPU, set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={num_devices} before "
            "starting Python to get several host devices."
        )
    train_data, eval_data = recipe.data(options)
    num_examples = len(next(iter(train_data.values())))
    _check_config(config, num_devices, num_examples)

    devices = available[:num_devices] if jax.process_count() == 1 else available
    model_parallel = config.model_parallel
    mesh = Mesh(
        np.array(devices).reshape(len(devices) // model_parallel, model_parallel),
        ("data", "model"),
    )
    data_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())

    def sharding_of(x):
        """Split large arrays along `model` on their largest divisible axis."""
        shape = np.shape(x)
        if model_parallel == 1 or int(np.prod(shape)) < config.shard_threshold:
            return replicated
        axes = [i for i, n in enumerate(shape) if n % model_parallel == 0]
        if not axes:
            return replicated
        axis = max(axes, key=lambda i: shape[i])
        spec: list[str | None] = [None] * len(shape)
        spec[axis] = "model"
        return NamedSharding(mesh, PartitionSpec(*spec))

    def shardings(tree):
        return jax.tree.map(sharding_of, tree)

    base_key = jr.PRNGKey(config.seed)
    # Initialisation gets its own stream; steps use fold_in(base_key, step >= 0).
    init_key, _ = jr.split(base_key)
    model = recipe.init(init_key, options)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = (
        optax.adam(config.learning_rate)
        if recipe.optimiser is None
        else recipe.optimiser(config)
    )
    opt_state = optimiser.init(params)
    compute = jnp.bfloat16 if config.precision == "bfloat16" else None

    def loss_fn(p, batch, key, *probe):
        m = eqx.combine(p if compute is None else _compute_dtype(p, compute), static)
        if compute is not None:
            batch = _compute_dtype(batch, compute)
        value, metrics = recipe.loss(m, batch, key, *probe)
        return value.astype(jnp.float32), metrics

    def grad_fn(p, batch, key):
        if not recipe.backward_stats:
            (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                p, batch, key
            )
            return grads, value, metrics
        # The backward solves' statistics arrive as the gradient of a zero probe.
        probe = BackwardStats.probe((jax.tree.leaves(batch)[0].shape[0],))
        (value, metrics), (grads, stats) = jax.value_and_grad(
            lambda p, probe: loss_fn(p, batch, key, probe), argnums=(0, 1), has_aux=True
        )(p, probe)
        metrics = dict(metrics)
        metrics["backward_steps"] = jnp.mean(stats.num_steps)
        metrics["backward_residual"] = jnp.nanmean(stats.rel_residual)
        metrics["backward_failed"] = 1.0 - jnp.mean(stats.success)
        return grads, value, metrics

    @jax.jit
    def step_fn(p, s, lr_scale, batch, key):
        if config.accumulate == 1:
            grads, value, metrics = grad_fn(p, batch, key)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape((config.accumulate, -1) + x.shape[1:]), batch
            )

            def body(carry, inputs):
                i, mb = inputs
                out = grad_fn(p, mb, jr.fold_in(key, i))
                return jax.tree.map(jnp.add, carry, out), None

            shapes = jax.eval_shape(
                grad_fn, p, jax.tree.map(lambda x: x[0], micro), key
            )
            zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
            (grads, value, metrics), _ = jax.lax.scan(
                body, zeros, (jnp.arange(config.accumulate), micro)
            )
        scale = 1.0 / config.accumulate
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, new_s = optimiser.update(grads, s, p)
        updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        new_p = eqx.apply_updates(p, updates)
        # Checked here, in the step: a non-finite loss, gradient or result is never
        # applied, whatever the policy; the host decides what happens next.
        finite = _all_finite((value, grads, new_p, new_s))
        p = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_p, p)
        s = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_s, s)
        if config.nonfinite == "reduce":
            lr_scale = jnp.where(finite, lr_scale, lr_scale * config.reduce_factor)
        p = jax.lax.with_sharding_constraint(p, shardings(p))
        s = jax.lax.with_sharding_constraint(s, shardings(s))
        metrics = jax.tree.map(lambda m: m * scale, metrics)
        metrics["loss"] = value * scale
        metrics["grad_norm"] = optax.tree.norm(grads)
        return p, s, lr_scale, finite, metrics

    run_dir = pathlib.Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "recipe": recipe.name,
        "jaxdeq_version": __version__,
        "structure": str(jax.tree.structure((params, opt_state))),
    }
    trajectory = _trajectory(config, options, len(devices))
    checkpoints = Checkpoints(run_dir / "checkpoints", config.keep, identity)
    metrics_path = run_dir / "metrics.jsonl"
    lead = jax.process_index() == 0
    start_step, resumed_from, changes = 0, None, {}
    data_offset = 0
    lr_scale = np.ones((), np.float32)

    def check(record):
        changes.clear()
        changes.update(_differences(record.get("config"), trajectory))
        if changes and not config.force:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _listed(changes))
            raise IncompatibleCheckpoint(
                f"train: the checkpoint in {checkpoints.directory} was written with "
                f"another training configuration ({listed}); resuming would not "
                "reproduce the run. Resume with the checkpoint's values, start a "
                "new run in another --run-dir, or pass --force (force=True) to "
                "continue with the new values."
            )

    if config.resume:
        found = checkpoints.restore(
            {
                "params": params,
                "opt_state": opt_state,
                "key": np.asarray(base_key),
                "data_position": np.zeros((), np.int64),
                "lr_scale": lr_scale,
            },
            log,
            check,
        )
        if found is None:
            changes.clear()
            log(
                f"no intact checkpoint in {checkpoints.directory}; starting from "
                "step 0."
            )
        else:
            start_step, state, _ = found
            params, opt_state = state["params"], state["opt_state"]
            lr_scale = np.asarray(state["lr_scale"], np.float32)
            # The saved key and data position, not ones derived afresh (a forced
            # change of seed is the one exception: it asks for a new stream).
            if "seed" not in changes:
                base_key = jnp.asarray(state["key"], base_key.dtype)
            data_offset = int(state["data_position"]) - start_step
            resumed_from = start_step
            log(f"resumed from step {start_step} ({checkpoints.directory}).")
            if changes:
                listed = ", ".join(
                    f"{k}: {a!r} -> {b!r}" for k, a, b in _listed(changes)
                )
                log(f"forced resume with a changed configuration: {listed}.")
    elif checkpoints.steps():
        raise ValueError(
            f"train: {checkpoints.directory} already holds checkpoints "
            f"(steps {checkpoints.steps()}); pass --resume to continue that run, or "
            "another --run-dir."
        )
    if lead:
        if resumed_from is not None:
            moved = truncate_metrics(metrics_path, start_step)
            if moved:
                log(
                    f"{moved} metric line(s) after step {start_step} are re-run; "
                    f"moved them to {metrics_path.stem}.superseded.jsonl."
                )
        elif metrics_path.exists():
            # Never deleted: a run that starts over keeps the old metrics aside.
            aside = unused_path(run_dir / "metrics.previous.jsonl")
            metrics_path.rename(aside)
            log(f"starting from step 0; the previous metrics are kept in {aside}.")
        event = {
            "event": "start" if resumed_from is None else "resume",
            "step": start_step,
            "time": time.time(),
            "config": trajectory,
        }
        if changes:
            event["forced_changes"] = {k: [a, b] for k, a, b in _listed(changes)}
        write_json_line(run_dir / "run.jsonl", event)

    params = jax.device_put(params, shardings(params))
    opt_state = jax.device_put(opt_state, shardings(opt_state))

    stop = {"signal": None}
    previous = {}

    def handler(signum, frame):
        del frame
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass

    saved = {"step": start_step if resumed_from is not None else None}

    def save(step):
        if saved["step"] == step:
            return
        saved["step"] = step
        written = checkpoints.save(
            step,
            {
                "params": params,
                "opt_state": opt_state,
                "key": np.asarray(base_key),
                "data_position": np.asarray(step + data_offset, np.int64),
                "lr_scale": np.asarray(lr_scale, np.float32),
            },
            {"data_position": step + data_offset, "config": trajectory},
        )
        if not written:
            log(f"step {step}: the state is not finite; no checkpoint written.")

    def global_batch(step):
        idx = _batch_indices(
            step + data_offset, config.seed, num_examples, config.batch_size
        )
        local = np.array_split(idx, jax.process_count())[jax.process_index()]
        return {
            k: jax.make_array_from_process_local_data(
                data_sharding, np.asarray(v[local])
            )
            for k, v in train_data.items()
        }

    history, progress = [], _Progress(config.steps, config.progress)
    if config.tensorboard and jax.process_index() == 0:
        # Imported above whenever `config.tensorboard` is set.
        summary_writer = SummaryWriter(str(run_dir / "tensorboard"))  # pyright: ignore[reportPossiblyUnboundVariable]
    evaluate = None if recipe.evaluate is None else eqx.filter_jit(recipe.evaluate)
    step, skipped, in_a_row = start_step, 0, 0
    lr_scale = jnp.asarray(lr_scale)
    try:
        while step < config.steps and stop["signal"] is None:
            key = jr.fold_in(base_key, step)
            params, opt_state, lr_scale, finite, metrics = step_fn(
                params, opt_state, lr_scale, global_batch(step), key
            )
            step += 1
            failure = None
            if bool(finite):
                in_a_row = 0
            else:
                skipped, in_a_row = skipped + 1, in_a_row + 1
                what = ", ".join(
                    f"{k} {float(metrics[k]):.4g}" for k in ("loss", "grad_norm")
                )
                if config.nonfinite == "stop" or in_a_row >= _MAX_NONFINITE_IN_A_ROW:
                    last = checkpoints.steps()
                    failure = (
                        f"train: step {step} is not finite ({what}); its update was "
                        "not applied and no non-finite state is checkpointed (the "
                        "last checkpoint, "
                        + (f"step {last[0]}" if last else "none yet")
                        + f", is intact in {checkpoints.directory}). "
                        + (
                            f"{in_a_row} non-finite steps in a row. "
                            if config.nonfinite != "stop"
                            else ""
                        )
                        + (
                            "Lower --learning-rate, or choose --nonfinite skip or "
                            "reduce; then --resume."
                            if config.nonfinite == "stop"
                            else "Lower --learning-rate and --resume (with --force)."
                        )
                    )
                elif in_a_row == 1:
                    log(
                        f"step {step} is not finite ({what}); update skipped"
                        + (
                            f", learning rate x {float(lr_scale):.3g}."
                            if config.nonfinite == "reduce"
                            else "."
                        )
                    )
            if (
                step % config.log_every == 0
                or step == config.steps
                or failure is not None
            ):
                record = {"step": step, "time": time.time()}
                record.update({k: float(v) for k, v in metrics.items()})
                if config.nonfinite != "stop":
                    record["skipped"] = float(skipped)
                if config.nonfinite == "reduce":
                    record["lr_scale"] = float(lr_scale)
                if evaluate is not None and (
                    step % config.eval_every == 0 or step == config.steps
                ):
                    eval_metrics = evaluate(eqx.combine(params, static), eval_data)
                    record.update(
                        {f"eval_{k}": float(v) for k, v in eval_metrics.items()}
                    )
                history.append(record)
                if lead:
                    write_json_line(metrics_path, record)
                if summary_writer is not None:
                    for name, value in record.items():
                        if name not in ("step", "time"):
                            summary_writer.add_scalar(name, value, step)
                progress.update(step, record)
            if failure is not None:
                raise FloatingPointError(failure)
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(step)
        interrupted = stop["signal"] is not None and step < config.steps
        if interrupted:
            save(step)
            log(
                f"\nstopped by signal {stop['signal']} at step {step}; checkpoint "
                "saved."
            )
    finally:
        progress.close()
        if summary_writer is not None:
            summary_writer.close()
        checkpoints.close()
        for sig, old in previous.items():
            signal.signal(sig, old)
    return TrainResult(
        model=eqx.combine(params, static),
        step=step,
        history=history,
        interrupted=interrupted,
        resumed_from=resumed_from,
        signal=stop["signal"] if interrupted else None,
        skipped=skipped,
    )


def _all_finite(tree) -> Array:
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _trajectory(config: TrainConfig, options, num_devices: int) -> dict:
    """What changes the run's trajectory, as JSON values: a resume must match it."""
    values = {name: getattr(config, name) for name in _TRAJECTORY}
    # Another mesh changes the reduction order, so the result's rounding.
    values["devices"] = num_devices
    values["model_parallel"] = config.model_parallel
    if config.model_parallel > 1:
        values["shard_threshold"] = config.shard_threshold
    values["processes"] = jax.process_count()
    # The numerical environment changes the rounding too: 64-bit mode changes the
    # dtypes of intermediate values, another backend or XLA its kernels.
    values["x64"] = bool(jax.dtypes.canonicalize_dtype(np.float64) == np.float64)
    values["matmul_precision"] = jax.config.values.get("jax_default_matmul_precision")
    values["backend"] = jax.default_backend()
    values["jax"] = f"{jax.__version__}/{importlib.metadata.version('jaxlib')}"
    values["options"] = dataclasses.asdict(options)
    return json.loads(json.dumps(values, default=repr))


def _differences(saved: dict | None, now: dict) -> dict:
    if saved is None:
        return {"config": ("not recorded", "this run's")}
    out = {}
    for name in sorted(set(saved) | set(now)):
        a, b = saved.get(name), now.get(name)
        if name == "options" and isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out[sub] = (a.get(sub), b.get(sub))
        elif a != b:
            out[name] = (a, b)
    return out


def _listed(changes: dict):
    return [(k, a, b) for k, (a, b) in changes.items()]
