"""Adam, then L-BFGS on a fixed point set: the training loop of PINNs and DEQNs."""

import math
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from .._solution import Report, RESULTS


class FitResult(eqx.Module):
    """What [`jaxdeq.pinn.fit`][] returns.

    **Attributes:**

    - `params`: the trained parameters (same structure as the `params` passed in).
    - `points`: the last training point set (the one L-BFGS used).
    - `history`: a dict of NumPy arrays, one entry per logged step: `"step"`,
        `"phase"` (0 for Adam, 1 for L-BFGS), `"loss"`, `"grad_norm"`, and one key
        per loss term returned by `loss_fn`.
    - `num_steps`: Adam and L-BFGS steps taken, in total.
    - `wall_time`: seconds, compilation included.
    - `result`: a [`jaxdeq.RESULTS`][]: `successful` when the fit met its stated
        target (the final loss at most `target`, or else the gradient norm at most
        `gtol` when `gtol > 0`; a fit with neither ran its budget and is
        `successful` when its loss is finite), `fit_not_converged` when it did not,
        `nonfinite` when the loss or its gradient stopped being finite.
    - `loss`: the final loss, and `terms` its named parts (the residuals' mean
        squares), at the returned `params` and `points`.
    - `grad_norm`: the gradient norm of the loss there.
    - `stop_reason`: why the fit stopped: `"target"` (the loss met `target`),
        `"converged"` (the gradient norm met `gtol`), `"stalled"` (a block of
        L-BFGS steps without progress), `"max_steps"`, or `"non-finite"`.

    The `successful` property is `result == jaxdeq.RESULTS.successful`.
    """

    params: PyTree
    points: PyTree
    history: dict[str, np.ndarray]
    num_steps: int
    wall_time: float
    result: RESULTS
    loss: float
    terms: dict[str, float]
    grad_norm: float
    stop_reason: str

    @property
    def successful(self) -> bool:
        """Whether the fit met its stated target."""
        return bool(self.result == RESULTS.successful)

    @property
    def report(self) -> Report:
        """The fit as a [`jaxdeq.Report`][]: `result`, `num_steps`, and the final
        `loss`, `grad_norm` and `terms` in `extra` (a fit has no fixed-point
        residual: `abs_residual` and `rel_residual` are NaN)."""
        return Report.unmeasured(
            self.result,
            self.num_steps,
            loss=self.loss,
            grad_norm=self.grad_norm,
            terms=dict(self.terms),
        )

    @property
    def message(self) -> str:
        """Deprecated: why L-BFGS stopped. Read `result` (did the fit meet its
        target) or `stop_reason` instead."""
        warnings.warn(
            "`FitResult.message` is deprecated: read `result` (a jaxdeq.RESULTS) or "
            "`stop_reason` instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.stop_reason


class NonFiniteLossError(FloatingPointError):
    """Raised by [`jaxdeq.pinn.fit`][] when the loss or its gradient stops being
    finite. The attribute `result` holds a [`jaxdeq.pinn.FitResult`][] with the
    last parameters whose loss was finite, so that nothing is lost."""

    def __init__(self, message: str, result: FitResult):
        super().__init__(message)
        self.result = result


def _finite(tree) -> bool:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def _optax_promotion():
    # optax mixes an int32 step count with floats, which strict dtype promotion
    # rejects; the user's loss is still traced under the caller's setting.
    return jax.numpy_dtype_promotion("standard")


def _tree_norm(tree) -> Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in leaves))


# The compiled blocks of `fit`, per loss function: a caller that fits the same loss
# function again (the Huggett PINN does, at each interest rate, with what changes
# passed in the points) reuses them instead of compiling them again. The loss
# function is the key, held weakly, and the blocks hold it weakly too, so that
# they go when it does.
_BLOCKS: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def _static_key(static: PyTree) -> tuple | None:
    """What a block compiled for these fixed (non-trained) parts of the parameters
    depends on, or None when they cannot be compared (an unhashable leaf)."""
    leaves, treedef = jax.tree_util.tree_flatten(static)
    key = (treedef, tuple(leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _make_block(
    get_loss: Callable[[], Callable | None], static: PyTree, phase: str, setting: Any
) -> Callable:
    """A compiled block of `phase` ("adam" with learning rate `setting`, or
    "lbfgs" with memory `setting`): `num` optimiser steps (a traced trip count,
    so blocks of any length share one compilation), then the loss, its terms and
    the gradient norm at the block's end."""

    def scalar_loss(trainable, points):
        loss_fn = get_loss()
        assert loss_fn is not None  # alive: fit holds it while it traces
        return loss_fn(eqx.combine(trainable, static), points)

    if phase == "adam":
        adam = optax.adam(setting)

        def step(trainable, opt_state, points):
            grads = jax.grad(lambda t: scalar_loss(t, points)[0])(trainable)
            with _optax_promotion():
                updates, opt_state = adam.update(grads, opt_state, trainable)
            return eqx.apply_updates(trainable, updates), opt_state

    else:
        lbfgs = optax.lbfgs(memory_size=setting)

        def value(trainable, points):
            return scalar_loss(trainable, points)[0]

        value_and_grad = optax.value_and_grad_from_state(value)

        def step(trainable, opt_state, points):
            with _optax_promotion():
                loss, grads = value_and_grad(trainable, points, state=opt_state)
                updates, opt_state = lbfgs.update(
                    grads,
                    opt_state,
                    trainable,
                    value=loss,
                    grad=grads,
                    value_fn=lambda p: value(p, points),
                )
            return eqx.apply_updates(trainable, updates), opt_state

    @eqx.filter_jit
    def block(trainable, opt_state, points, num):
        def body(_, carry):
            return step(carry[0], carry[1], points)

        trainable, opt_state = jax.lax.fori_loop(0, num, body, (trainable, opt_state))
        (loss, terms), grads = jax.value_and_grad(scalar_loss, has_aux=True)(
            trainable, points
        )
        return trainable, opt_state, (loss, _tree_norm(grads), terms)

    return block


def _block(loss_fn: Callable, static: PyTree, phase: str, setting: Any) -> Callable:
    """The block for this loss, phase and setting: the one compiled before when
    the same loss function was fitted with the same fixed parts and setting."""
    key = (phase, setting, _static_key(static))
    try:
        hash(key)
        cache = _BLOCKS.setdefault(loss_fn, {})
        get_loss = weakref.ref(loss_fn)
    except TypeError:  # a loss that cannot be weakly referenced: no reuse
        return _make_block(lambda: loss_fn, static, phase, setting)
    if key[2] is None:  # fixed parts that cannot be compared: no reuse
        return _make_block(get_loss, static, phase, setting)
    if key not in cache:
        cache[key] = _make_block(get_loss, static, phase, setting)
    return cache[key]


def fit(
    loss_fn: Callable[[PyTree, PyTree], tuple[Scalar, dict[str, Scalar]]],
    params: PyTree,
    sample: Callable[[PRNGKeyArray, PyTree], PyTree],
    *,
    key: PRNGKeyArray,
    adam_steps: int = 2000,
    learning_rate: float | optax.Schedule = 1e-3,
    lbfgs_steps: int = 500,
    lbfgs_memory: int = 20,
    resample_every: int | None = None,
    log_every: int = 100,
    gtol: float = 0.0,
    target: float | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    r"""Minimise a loss by Adam on (re)sampled points, then by L-BFGS on a fixed set.

    This is the recipe that the PINN literature converged on: Adam finds the
    basin, and L-BFGS (optax's, with a zoom line search) on a fixed point set in
    float64 takes the last orders of magnitude that Adam cannot. Both phases run
    as compiled loops of `log_every` steps with a traced trip count, so each
    phase compiles once whatever the number of steps, and the Python loop between
    blocks logs, checks for non-finite values and reports progress.

    **Arguments:**

    - `loss_fn`: `loss_fn(params, points) -> (loss, terms)`, where `loss` is a
        scalar and `terms` a dict of named scalar parts of it (for example
        `{"pde": ..., "boundary": ...}`), logged every `log_every` steps.
    - `params`: any pytree, usually an equinox Module. Its inexact arrays are
        trained; everything else is held fixed.
    - `sample`: `sample(key, params) -> points`, the training points. Called once
        at the start and then every `resample_every` Adam steps; it receives the
        current parameters, so residual-based adaptive sampling and simulation of
        an ergodic set (Deep Equilibrium Nets) are both a `sample` function.
    - `key`: a JAX PRNG key for `sample`.
    - `adam_steps`: number of Adam steps (0 skips the phase).
    - `learning_rate`: Adam's learning rate, a float or an optax schedule.
    - `lbfgs_steps`: the most L-BFGS steps (0 skips the phase).
    - `lbfgs_memory`: L-BFGS history size.
    - `resample_every`: draw new points every this many Adam steps; `None` keeps
        the first draw throughout.
    - `log_every`: steps per compiled block and per history row.
    - `gtol`: L-BFGS stops early when the gradient norm falls below this; when
        positive (and `target` is None) it is the fit's target.
    - `target`: the loss the fit must reach. Each phase stops at the first block
        whose loss is at most `target`, and the result is `successful` exactly
        when the final loss meets it (`fit_not_converged` otherwise).
    - `progress`: called after every block with a dict of `phase` (`"adam"` or
        `"lbfgs"`), `step`, `total`, `loss`, the terms, and `params` (the current
        parameters); for progress bars, and for checking accuracy or saving
        during training.

    **Returns:**

    A [`jaxdeq.pinn.FitResult`][].

    **Raises:**

    - `ValueError` for negative step counts, a non-positive `log_every`, or a
        negative or non-finite `gtol` or `target`.
    - [`jaxdeq.pinn.NonFiniteLossError`][] when the loss or the gradient becomes
        NaN or infinite; its `result` holds the last finite parameters.
    """
    for name, count in (
        ("adam_steps", adam_steps),
        ("lbfgs_steps", lbfgs_steps),
        ("log_every", log_every),
    ):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
            raise TypeError(f"`{name}` must be an integer, got {count!r}.")
    adam_steps, lbfgs_steps, log_every = (
        int(adam_steps),
        int(lbfgs_steps),
        int(log_every),
    )
    if resample_every is not None:
        resample_every = int(resample_every)
    if not (0 <= gtol < math.inf):
        raise ValueError(f"gtol={gtol} must be finite and >= 0.")
    if target is not None and not (0 <= target < math.inf):
        raise ValueError(f"target={target} must be finite and >= 0, or None.")
    if adam_steps < 0 or lbfgs_steps < 0:
        raise ValueError(
            f"adam_steps={adam_steps} and lbfgs_steps={lbfgs_steps} must be >= 0."
        )
    if log_every < 1:
        raise ValueError(f"log_every={log_every} must be a positive integer.")
    if resample_every is not None and resample_every < 1:
        raise ValueError(
            f"resample_every={resample_every} must be a positive integer or None."
        )
    start = time.perf_counter()
    trainable, static = eqx.partition(params, eqx.is_inexact_array)

    def scalar_loss(trainable, points):
        loss, terms = loss_fn(eqx.combine(trainable, static), points)
        return loss, terms

    history: dict[str, list] = {"step": [], "phase": [], "loss": [], "grad_norm": []}

    def log(phase, step, total, loss, grad_norm, terms, trainable):
        history["step"].append(step)
        history["phase"].append(0 if phase == "adam" else 1)
        history["loss"].append(float(loss))
        history["grad_norm"].append(float(grad_norm))
        for name, value in terms.items():
            history.setdefault(name, []).append(float(value))
        if progress is not None:
            info = {"phase": phase, "step": step, "total": total, "loss": float(loss)}
            info.update({k: float(v) for k, v in terms.items()})
            info["params"] = eqx.combine(trainable, static)
            progress(info)

    def result(trainable, points, steps, reason, final=None):
        out = {k: np.asarray(v) for k, v in history.items()}
        if final is None:
            loss, gnorm, terms = math.nan, math.nan, {}
        else:
            loss, gnorm, terms = final
            loss, gnorm = float(loss), float(gnorm)
            terms = {k: float(v) for k, v in terms.items()}
        if reason == "non-finite" or not math.isfinite(loss):
            code = RESULTS.nonfinite
        elif target is not None:
            met = loss <= target
            code = RESULTS.successful if met else RESULTS.fit_not_converged
        elif gtol > 0:
            met = gnorm <= gtol
            code = RESULTS.successful if met else RESULTS.fit_not_converged
        else:
            code = RESULTS.successful
        return FitResult(
            params=eqx.combine(trainable, static),
            points=points,
            history=out,
            num_steps=steps,
            wall_time=time.perf_counter() - start,
            result=code,  # pyright: ignore[reportArgumentType]
            loss=loss,
            terms=terms,
            grad_norm=gnorm,
            stop_reason=reason,
        )

    def met_target(loss) -> bool:
        return target is not None and float(loss) <= target

    def fail(phase, step, trainable, points):
        raise NonFiniteLossError(
            f"The loss or its gradient became non-finite during {phase} by step "
            f"{step}. Try a smaller learning rate, float64 "
            "(jax.config.update('jax_enable_x64', True)), or check the model's "
            "residual for a division by zero or a log of a negative number at the "
            "training points. The last finite parameters are in `.result`.",
            result(trainable, points, step, "non-finite"),
        )

    key, subkey = jr.split(key)
    points = sample(subkey, eqx.combine(trainable, static))
    steps = 0
    final = None
    reason = "max_steps"

    def run_block(block, phase, trainable, opt_state, points, num):
        new_trainable, new_state, (loss, gnorm, terms) = block(
            trainable, opt_state, points, jnp.asarray(num)
        )
        if not (bool(jnp.isfinite(loss)) and _finite(new_trainable)):
            fail(phase, steps + num, trainable, points)
        return new_trainable, new_state, (loss, gnorm, terms)

    # Phase 1: Adam.
    if adam_steps > 0:
        with _optax_promotion():
            opt_state = optax.adam(learning_rate).init(trainable)
        block = _block(loss_fn, static, "adam", learning_rate)
        while steps < adam_steps:
            num = min(log_every, adam_steps - steps)
            if resample_every is not None:
                num = min(num, resample_every - steps % resample_every)
            trainable, opt_state, (loss, gnorm, terms) = run_block(
                block, "Adam", trainable, opt_state, points, num
            )
            steps += num
            final = (loss, gnorm, terms)
            log("adam", steps, adam_steps, loss, gnorm, terms, trainable)
            if met_target(loss):
                reason = "target"
                break
            if (
                resample_every is not None
                and steps % resample_every == 0
                and steps < adam_steps
            ):
                key, subkey = jr.split(key)
                points = sample(subkey, eqx.combine(trainable, static))

    # Phase 2: L-BFGS on a fixed point set.
    if lbfgs_steps > 0 and reason != "target":
        lbfgs = optax.lbfgs(memory_size=lbfgs_memory)
        # optax starts a few line-search fields weakly typed; fix their types now
        # so that the compiled block is not compiled again after its first call.
        with _optax_promotion():
            opt_state = jax.tree_util.tree_map(
                lambda x: jnp.asarray(x, dtype=jnp.result_type(x)),
                lbfgs.init(trainable),
            )

        block = _block(loss_fn, static, "lbfgs", lbfgs_memory)
        done = 0
        previous = np.inf
        while done < lbfgs_steps:
            num = min(log_every, lbfgs_steps - done)
            trainable, opt_state, (loss, gnorm, terms) = run_block(
                block, "L-BFGS", trainable, opt_state, points, num
            )
            done += num
            steps += num
            final = (loss, gnorm, terms)
            log("lbfgs", steps, adam_steps + lbfgs_steps, loss, gnorm, terms, trainable)
            if met_target(loss):
                reason = "target"
                break
            if float(gnorm) <= gtol:
                reason = "converged"
                break
            if float(loss) >= previous:
                # A whole block without progress: the line search has nothing left.
                reason = "stalled"
                break
            previous = float(loss)
    if final is None:  # no step was taken: report the loss at the start
        (loss, terms), grads = jax.value_and_grad(scalar_loss, has_aux=True)(
            trainable, points
        )
        final = (loss, _tree_norm(grads), terms)
    return result(trainable, points, steps, reason, final)
