"""The outer training loop: metrics, checkpoints, resume and signals."""

import dataclasses
import importlib.metadata
import json
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from ._checkpoint import (
    Checkpoints,
    IncompatibleCheckpoint,
    truncate_metrics,
    unused_path,
    write_json_line,
)
from ._config import Recipe, TrainConfig
from ._mesh import batch_indices, Layout
from ._step import make_step


# Consecutive non-finite steps after which the "skip" and "reduce" policies give up.
_MAX_NONFINITE_IN_A_ROW = 10
# What changes a run's trajectory: a resume must match these (or be forced).
_TRAJECTORY = ("seed", "batch_size", "learning_rate", "accumulate", "precision")


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


class _Records:
    """Where every logged record goes, under its own names: the history,
    `metrics.jsonl` and TensorBoard (on the lead process), the progress line and
    the caller's callback."""

    def __init__(self, run_dir, config, lead, writer_class, callback):
        self.history: list[dict] = []
        self.path = run_dir / "metrics.jsonl" if lead else None
        self.writer = None
        if writer_class is not None and lead:
            self.writer = writer_class(str(run_dir / "tensorboard"))
        self.progress = _Progress(config.steps, config.progress)
        self.callback = callback

    def add(self, record: dict) -> None:
        self.history.append(record)
        if self.path is not None:
            write_json_line(self.path, record)
        if self.writer is not None:
            for name, value in record.items():
                if name not in ("step", "time"):
                    self.writer.add_scalar(name, value, record["step"])
        self.progress.update(record["step"], record)
        if self.callback is not None:
            self.callback(record)

    def close(self) -> None:
        self.progress.close()
        if self.writer is not None:
            self.writer.close()


class _Signals:
    """SIGTERM and SIGINT stop the run at the next step instead of killing it."""

    def __init__(self):
        self.caught: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._catch)
            except ValueError:  # not the main thread
                pass

    def _catch(self, signum, frame):
        del frame
        self.caught = signum

    def close(self):
        for sig, old in self._previous.items():
            signal.signal(sig, old)


def train(
    recipe: Recipe,
    config: TrainConfig = TrainConfig(),
    options: Any = None,
    *,
    log: Callable[[str], None] = print,
    callback: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train `recipe` data-parallel over a device mesh, with checkpoints and metrics.

    The global batch is sharded along a `data` mesh axis over `config.devices`
    devices (under `jax.distributed.initialize()`, over every process's devices,
    each process feeding its own slice of each batch); parameters and optimiser
    state are replicated, or, with `config.model_parallel > 1`, large arrays are
    split along a second mesh axis, `model`. One jitted step
    ([`jaxdeq.train.make_step`][]) computes the loss and the gradient (averaged
    over the global batch, with `config.accumulate` micro-batches) and applies the
    optimiser, unless the loss, the gradient or the result is not finite (then
    `config.nonfinite` decides). The per-step key is
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
    - `callback`: called with every logged record (the dict written to
        `metrics.jsonl`), on every process, e.g. to print a summary of its own.

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
    writer_class = _tensorboard(config)
    layout = Layout(config)
    train_data, eval_data = recipe.data(options)
    num_examples = len(next(iter(train_data.values())))
    layout.check_batch(config, num_examples)

    base_key = jr.PRNGKey(config.seed)
    # Initialisation gets its own stream; steps use fold_in(key, step >= 0).
    init_key, _ = jr.split(base_key)
    model = recipe.init(init_key, options)
    optimiser = (
        optax.adam(config.learning_rate)
        if recipe.optimiser is None
        else recipe.optimiser(config)
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimiser.init(params)
    reduce = config.reduce_factor if config.nonfinite == "reduce" else None
    step_fn = layout.sharded(
        make_step(
            recipe,
            optimiser,
            config.precision,
            accumulate=config.accumulate,
            reduce_factor=reduce,
        )
    )

    run_dir = pathlib.Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = {
        "recipe": recipe.name,
        "jaxdeq_version": __version__,
        "structure": str(jax.tree.structure((params, opt_state))),
    }
    trajectory = _trajectory(config, options, layout.num_devices)
    checkpoints = Checkpoints(run_dir / "checkpoints", config.keep, identity)
    fresh = {
        "params": params,
        "opt_state": opt_state,
        "key": np.asarray(base_key),
        "data_position": np.zeros((), np.int64),
        "lr_scale": np.ones((), np.float32),
    }
    resumed_from, state, changes = _restore(config, checkpoints, fresh, trajectory, log)
    lead = jax.process_index() == 0
    if lead:
        _start_records(run_dir, resumed_from, trajectory, changes, log)
    start = resumed_from or 0
    key = jnp.asarray(state["key"], base_key.dtype)
    data_offset = int(state["data_position"]) - start
    # Everything the step takes, placed as the step returns it: one compilation.
    lr_scale = layout.place(jnp.asarray(state["lr_scale"], jnp.float32))
    model = layout.place(eqx.combine(state["params"], static))
    opt_state = layout.place(state["opt_state"])

    def save(step):
        written = checkpoints.save(
            step,
            {
                "params": eqx.filter(model, eqx.is_inexact_array),
                "opt_state": opt_state,
                "key": np.asarray(key),
                "data_position": np.asarray(step + data_offset, np.int64),
                "lr_scale": np.asarray(lr_scale, np.float32),
            },
            {"data_position": step + data_offset, "config": trajectory},
        )
        if not written:
            log(f"step {step}: the state is not finite; no checkpoint written.")
        return step

    records = _Records(run_dir, config, lead, writer_class, callback)
    evaluate = None if recipe.evaluate is None else eqx.filter_jit(recipe.evaluate)
    signals = _Signals()
    step, saved, skipped, in_a_row = start, resumed_from, 0, 0
    try:
        while step < config.steps and signals.caught is None:
            indices = batch_indices(
                step + data_offset, config.seed, num_examples, config.batch_size
            )
            model, opt_state, lr_scale, finite, metrics = step_fn(
                model,
                opt_state,
                lr_scale,
                layout.batch(train_data, indices),
                jr.fold_in(key, step),
            )
            step += 1
            failure = None
            if bool(finite):
                in_a_row = 0
            else:
                skipped, in_a_row = skipped + 1, in_a_row + 1
                failure = _nonfinite(
                    config, step, metrics, in_a_row, lr_scale, checkpoints, log
                )
            last = step == config.steps
            if step % config.log_every == 0 or last or failure is not None:
                record = {"step": step, "time": time.time()}
                record.update({k: float(v) for k, v in metrics.items()})
                if config.nonfinite != "stop":
                    record["skipped"] = float(skipped)
                if config.nonfinite == "reduce":
                    record["lr_scale"] = float(lr_scale)
                if evaluate is not None and (step % config.eval_every == 0 or last):
                    scores = evaluate(model, eval_data)
                    record.update({f"eval_{k}": float(v) for k, v in scores.items()})
                records.add(record)
            if failure is not None:
                raise FloatingPointError(failure)
            if (step % config.checkpoint_every == 0 or last) and saved != step:
                saved = save(step)
        interrupted = signals.caught is not None and step < config.steps
        if interrupted:
            if saved != step:
                saved = save(step)
            log(
                f"\nstopped by signal {signals.caught} at step {step}; checkpoint "
                "saved."
            )
    finally:
        records.close()
        checkpoints.close()
        signals.close()
    return TrainResult(
        model=model,
        step=step,
        history=records.history,
        interrupted=interrupted,
        resumed_from=resumed_from,
        signal=signals.caught if interrupted else None,
        skipped=skipped,
    )


def _tensorboard(config: TrainConfig):
    """tensorboardX's `SummaryWriter` when `config.tensorboard`, else `None`."""
    if not config.tensorboard:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError as e:
        raise ImportError(
            "train: tensorboard=True (--tensorboard) writes event files with "
            "tensorboardX, which is not installed; run "
            '`pip install "jaxdeq[tensorboard]"` or leave TensorBoard off.'
        ) from e
    return SummaryWriter


def _restore(config, checkpoints, fresh, trajectory, log):
    """`(resumed_from, state, changes)`: the newest intact checkpoint's state when
    resuming (refused if its configuration differs, unless forced), else `fresh`."""
    changes = {}
    if not config.resume:
        if checkpoints.steps():
            raise ValueError(
                f"train: {checkpoints.directory} already holds checkpoints "
                f"(steps {checkpoints.steps()}); pass --resume to continue that "
                "run, or another --run-dir."
            )
        return None, fresh, changes

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

    found = checkpoints.restore(fresh, log, check)
    if found is None:
        log(f"no intact checkpoint in {checkpoints.directory}; starting from step 0.")
        return None, fresh, {}
    step, state, _ = found
    # The saved key and data position, not ones derived afresh (a forced change of
    # seed is the one exception: it asks for a new stream).
    if "seed" in changes:
        state = {**state, "key": fresh["key"]}
    log(f"resumed from step {step} ({checkpoints.directory}).")
    if changes:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _listed(changes))
        log(f"forced resume with a changed configuration: {listed}.")
    return step, state, changes


def _start_records(run_dir, resumed_from, trajectory, changes, log):
    """Set `metrics.jsonl` up for a run from `resumed_from` (lines after it moved
    aside) or from scratch (an old file moved aside), and record the start."""
    metrics_path = run_dir / "metrics.jsonl"
    if resumed_from is not None:
        moved = truncate_metrics(metrics_path, resumed_from)
        if moved:
            log(
                f"{moved} metric line(s) after step {resumed_from} are re-run; "
                f"moved them to {metrics_path.stem}.superseded.jsonl."
            )
    elif metrics_path.exists():
        # Never deleted: a run that starts over keeps the old metrics aside.
        aside = unused_path(run_dir / "metrics.previous.jsonl")
        metrics_path.rename(aside)
        log(f"starting from step 0; the previous metrics are kept in {aside}.")
    event = {
        "event": "start" if resumed_from is None else "resume",
        "step": resumed_from or 0,
        "time": time.time(),
        "config": trajectory,
    }
    if changes:
        event["forced_changes"] = {k: [a, b] for k, a, b in _listed(changes)}
    write_json_line(run_dir / "run.jsonl", event)


def _nonfinite(
    config, step, metrics, in_a_row, lr_scale, checkpoints, log
) -> str | None:
    """What a non-finite step means: the failure message when the run must stop,
    else `None` (the first of a series is logged)."""
    what = ", ".join(f"{k} {float(metrics[k]):.4g}" for k in ("loss", "grad_norm"))
    if config.nonfinite == "stop" or in_a_row >= _MAX_NONFINITE_IN_A_ROW:
        newest = checkpoints.steps()
        return (
            f"train: step {step} is not finite ({what}); its update was not applied "
            "and no non-finite state is checkpointed (the last checkpoint, "
            + (f"step {newest[0]}" if newest else "none yet")
            + f", is intact in {checkpoints.directory}). "
            + (
                "Lower --learning-rate, or choose --nonfinite skip or reduce; then "
                "--resume."
                if config.nonfinite == "stop"
                else f"{in_a_row} non-finite steps in a row. Lower --learning-rate "
                "and --resume (with --force)."
            )
        )
    if in_a_row == 1:
        log(
            f"step {step} is not finite ({what}); update skipped"
            + (
                f", learning rate x {float(lr_scale):.3g}."
                if config.nonfinite == "reduce"
                else "."
            )
        )
    return None


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
