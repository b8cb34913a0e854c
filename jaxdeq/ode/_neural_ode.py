import math
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from .._misc import bookkeeping_dtype, check_positive_int, real_dtype
from .._solution import as_results, Report, RESULTS
from ._stats import (
    count_nfe,
    first,
    fsal_state,
    initial_step_cost,
    stage_cost,
    unknown_nfe,
)


# Built once: a fresh `steady_state_event()` closure per call would be a new static
# argument of `diffeqsolve` and force a recompilation on every eager call. Its
# tolerances default to the step-size controller's.
_STEADY_STATE = dfx.Event(dfx.steady_state_event())
# Adjoints that stop the gradient through a solver state passed to `diffeqsolve`
# (they would raise if it carried one).
_STATELESS_ADJOINTS = (dfx.ImplicitAdjoint, dfx.BacksolveAdjoint)


# The default backward mode: backpropagation through the solver with at most
# `_BACKPROP_CHECKPOINTS` stored steps. diffrax's own default sizes its checkpoint
# buffers at about sqrt(2 max_steps) states (91 for max_steps=4096), and those buffers
# cost time on every call, however few steps the solve takes; a solve of more steps
# than this recomputes some of them (online binomial checkpointing).
_BACKPROP_CHECKPOINTS = 32


def _default_adjoint() -> dfx.RecursiveCheckpointAdjoint:
    """The default backward mode of the ODE blocks."""
    return dfx.RecursiveCheckpointAdjoint(checkpoints=_BACKPROP_CHECKPOINTS)


def _to_float(value: Any) -> Any:
    """Python numbers and concrete scalars to float; anything else is left for
    `__check_init__` to reject with a message."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, np.number)):
        return float(value)
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        try:
            return float(value)
        except jax.errors.ConcretizationTypeError:
            return value
    return value


def _to_optional_float(value: Any) -> Any:
    return None if value is None else _to_float(value)


def check_ode_config(
    name: str,
    *,
    vector_field,
    t0,
    t1,
    solver,
    stepsize_controller,
    adjoint,
    dt0,
    max_steps,
    throw,
    steady_state,
) -> None:
    """Constructor checks shared by `NeuralODE` and `HomoODE`."""
    if not callable(vector_field):
        raise TypeError(
            f"{name}: `vector_field` must be callable as `vector_field(t, y, args)`, "
            f"got {type(vector_field).__name__}."
        )
    for label, value in (("t0", t0), ("t1", t1)):
        if not isinstance(value, float):
            raise TypeError(
                f"{name}: `{label}` must be a Python number, got {value!r}. Times "
                "are fixed hyperparameters, e.g. `t0=0.0, t1=1.0`."
            )
    if not math.isfinite(t0):
        raise ValueError(f"{name}: `t0` must be finite, got {t0!r}.")
    if math.isnan(t1) or not t1 > t0:
        raise ValueError(
            f"{name}: `t1` must be greater than `t0`, got t0={t0!r}, t1={t1!r}. "
            "Integrate forwards in time, e.g. `t0=0.0, t1=1.0`."
        )
    if math.isinf(t1) and not steady_state:
        raise ValueError(
            f"{name}: `t1=inf` needs `steady_state=True` (integrate until the state "
            "stops changing). Otherwise give a finite end time, e.g. `t1=1.0`."
        )
    if not isinstance(steady_state, bool):
        raise TypeError(f"{name}: `steady_state` must be a bool, got {steady_state!r}.")
    if not isinstance(throw, bool):
        raise TypeError(f"{name}: `throw` must be a bool, got {throw!r}.")
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(
            f"{name}: `solver` must be a diffrax solver, e.g. `diffrax.Tsit5()`; got "
            f"{type(solver).__name__}."
        )
    if not isinstance(stepsize_controller, dfx.AbstractStepSizeController):
        raise TypeError(
            f"{name}: `stepsize_controller` must be a diffrax step-size controller, "
            "e.g. `diffrax.PIDController(rtol=1e-3, atol=1e-3)`; got "
            f"{type(stepsize_controller).__name__}."
        )
    if not isinstance(adjoint, dfx.AbstractAdjoint):
        raise TypeError(
            f"{name}: `adjoint` must be a diffrax adjoint, e.g. "
            f"`diffrax.RecursiveCheckpointAdjoint()`; got {type(adjoint).__name__}."
        )
    if dt0 is not None:
        if not isinstance(dt0, float):
            raise TypeError(
                f"{name}: `dt0` must be a Python number or None, got {dt0!r}."
            )
        if not (math.isfinite(dt0) and dt0 > 0):
            raise ValueError(
                f"{name}: `dt0` must be a positive finite step, got {dt0!r}. Use e.g. "
                "`dt0=0.1`, or `dt0=None` to let an adaptive controller choose."
            )
    adaptive = isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController)
    if isinstance(stepsize_controller, dfx.ConstantStepSize) and dt0 is None:
        raise ValueError(
            f"{name}: `diffrax.ConstantStepSize()` needs a step: pass `dt0`, e.g. "
            "`dt0=0.1`, or use `diffrax.PIDController(rtol=1e-3, atol=1e-3)`."
        )
    if adaptive and not isinstance(solver, dfx.AbstractAdaptiveSolver):
        raise ValueError(
            f"{name}: `{type(solver).__name__}` has no error estimate, so it cannot be "
            "used with an adaptive step-size controller. Use "
            "`stepsize_controller=diffrax.ConstantStepSize()` with a `dt0`, or an "
            "adaptive solver such as `diffrax.Tsit5()`."
        )
    check_positive_int(name, "max_steps", max_steps)
    if steady_state:
        if not adaptive:
            raise ValueError(
                f"{name}: `steady_state=True` takes its tolerances from an adaptive "
                "step-size controller; use e.g. "
                "`stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3)`."
            )
        if isinstance(adjoint, dfx.BacksolveAdjoint):
            raise ValueError(
                f"{name}: `diffrax.BacksolveAdjoint()` does not support the event that "
                "stops a steady-state solve. Use `adjoint=diffrax.ImplicitAdjoint()` "
                "(constant memory) or `diffrax.RecursiveCheckpointAdjoint()`."
            )
    elif isinstance(adjoint, dfx.ImplicitAdjoint):
        raise ValueError(
            f"{name}: `diffrax.ImplicitAdjoint()` differentiates the condition "
            "f(y) = 0, which holds only at a steady state; with a fixed end time its "
            "gradients would be wrong. Set `steady_state=True, t1=math.inf`, or use "
            "`diffrax.RecursiveCheckpointAdjoint()` or `diffrax.BacksolveAdjoint()`."
        )


class NeuralODE(eqx.Module):
    r"""A neural ODE block: the solution $y(t_1)$ of
    $\frac{\mathrm{d}y}{\mathrm{d}t} = f_\theta(t, y, \text{args})$, $y(t_0) = y_0$.

    A thin layer over `diffrax.diffeqsolve` — diffrax does the solving and the
    differentiating — that adds what a block inside a network needs: a fixed
    configuration, augmentation, a steady-state mode, and a per-sample
    [`jaxdeq.Report`][] with an exact count of vector-field evaluations. Called on
    one sample; `jax.vmap` it over a batch.

    **The report.** `y1, report = block(y0)` returns a [`jaxdeq.Report`][]:

    - `result`: diffrax's result lifted to [`jaxdeq.RESULTS`][]. A steady-state
        solve succeeds when its steady-state event fires (diffrax says
        `event_occurred`, kept in `extra["diffrax_result"]`); reaching a finite
        `t1` before the steady state is `RESULTS.steady_state_not_reached`.
        Running out of `max_steps` is `RESULTS.max_steps_reached`.
    - `num_steps`: steps attempted by diffrax, $n = n_\text{accepted} +
        n_\text{rejected}$.
    - `num_fn_evals`: evaluations of the vector field, exact for the solvers and
        step-size controllers below, `-1` ("not counted") for the others.
    - `abs_residual`, `rel_residual`: NaN for a fixed-horizon solve (it has no
        residual). A steady-state solve evaluates the vector field once more at the
        returned state (counted in `num_fn_evals`) and reports
        $\|f_\theta(t, y)\|$ and $\|f_\theta(t, y)\| / \|y\|$ in the step-size
        controller's norm, the quantities the steady-state test compares.
    - `residual_trace`: NaN (no per-step residuals).
    - `extra`: `t_final` (the time the solve stopped: $t_1$, the time at which the
        steady state was detected, or where it stopped on failure),
        `num_accepted_steps`, `num_rejected_steps` (as diffrax counts them) and
        `diffrax_result` (diffrax's own result).

    **The evaluation count.** With $s$ the number of stages of an explicit
    Runge–Kutta tableau,

    $$\text{nfe} = c_\text{init} + \begin{cases} 1 + (s - 1)\,n &
    \text{first-same-as-last (FSAL) tableaus: Tsit5, Dopri5, Dopri8, Bosh3,}\\
    s\,n & \text{other tableaus (Heun, Midpoint, Ralston) and Euler } (s = 1),
    \end{cases} \; + \; [\text{steady state}]\,(2 + n).$$

    - The FSAL count is exact because the block evaluates $f(t_0, y_0)$ once itself
        and hands it to the solver: every later step, rejected or not, reuses the
        last stage of the previous accepted step (or this first evaluation), so a
        rejected first step does not evaluate it again.
    - $c_\text{init}$ is the cost of `diffrax.PIDController`'s initial step-size
        selection when `dt0=None`: two evaluations, $f(t_0, y_0)$ and
        $f(t_0 + h, y_0 + h f(t_0, y_0))$, if diffrax runs it. diffrax 0.7 does not
        for ODEs (the selection sees diffrax's direction-wrapped term, not an
        `ODETerm`, and falls back to a first step of $0.01$), so there
        $c_\text{init} = 0$; which case holds is detected once per process. It is 0
        with a given `dt0`.
    - The steady-state event evaluates the vector field once at $t_0$ and once per
        step, and the reported residual once more.
    - `-1` is returned for implicit and stochastic solvers (their cost depends on
        Newton iterations or on the terms), wrapped solvers,
        `diffrax.ClipStepSizeController` with `jump_ts` (the step after a jump
        evaluates the first stage again), and step-size controllers other than
        `ConstantStepSize`, `StepTo`, `PIDController` and a
        `ClipStepSizeController` around a `PIDController`.
    - Under `vmap`, the count is that of each sample solved alone; the batched loop
        runs until its slowest sample stops, evaluating the field for all samples.

    **Backward modes** (`adjoint`):

    - `diffrax.RecursiveCheckpointAdjoint(checkpoints=32)` (default): backpropagates
        through the solver's operations. The gradient is the exact gradient of the
        computed solution. Up to 32 steps are stored; a longer solve recomputes some
        steps in the backward pass (online binomial checkpointing), so memory stays
        at 32 states. diffrax's own default, `RecursiveCheckpointAdjoint()`, sizes its
        buffers by `max_steps` (about $\sqrt{2\,\text{max\_steps}}$ states) and
        pays for them on every call, however few steps the solve takes; pass it, or
        a larger `checkpoints`, for long solves that should recompute nothing.
    - `diffrax.BacksolveAdjoint()`: the continuous adjoint of Chen et al. (2018):
        solves the adjoint ODE backwards in time. Memory is constant, but the
        gradient is only as accurate as the solver's tolerances, and the backward
        solve costs evaluations of its own. Not with `steady_state=True`.
    - `diffrax.ImplicitAdjoint()`: only with `steady_state=True`. Differentiates the
        steady-state condition $f_\theta(y^*) = 0$ by the implicit function theorem,
        as a deep equilibrium model does: constant memory, and a cost independent of
        the path taken to $y^*$.

    **Batches.** `jax.vmap` gives every sample its own step sizes and statistics.
    The block also takes a whole batch as one state (a vector field that maps
    batches, one step size for all, as torchdiffeq does), which is cheaper to train:
    in `benchmarks/continuous.py`, backpropagating through the solver per sample
    costs about 3× the batched solve, and `BacksolveAdjoint` under `vmap` about 100×
    (every sample carries its own copy of the parameter cotangents through the
    adjoint solve). Train with `BacksolveAdjoint` on batched states.

    **Augmentation** (`augment > 0`, ANODE, Dupont et al. 2019): `augment` zero
    channels are appended along axis 0 of the state before solving, so that the flow
    can move through extra dimensions (a flow of a fixed dimension is a
    homeomorphism and cannot, for example, separate nested rings). A vector of shape
    `(n,)` becomes `(n + augment,)` and an image `(C, H, W)` becomes
    `(C + augment, H, W)`; the vector field works on the augmented state and the
    output keeps the augmented channels.

    **Steady state** (`steady_state=True`, typically with `t1=math.inf`): integrates
    until diffrax's `steady_state_event` fires, i.e. until
    $\|f_\theta(t, y)\| < \text{atol} + \text{rtol}\,\|y\|$ with the step-size
    controller's tolerances and norm; a finite `t1` then caps the time. Pair it with
    `diffrax.ImplicitAdjoint()`.

    Neural CDEs and SDEs need a control or a Brownian motion next to the vector
    field; they stay in diffrax: build a `diffrax.ControlTerm` (in a
    `diffrax.MultiTerm` with the drift) and call `diffrax.diffeqsolve` directly.

    !!! Example

        ```python
        field = jaxdeq.ode.ConcatField(state_size=4, input_size=0, width=32, key=key)
        block = jaxdeq.ode.NeuralODE(field, augment=2)
        y1, report = jax.vmap(block)(y0)   # y0: (batch, 2) -> y1: (batch, 4)
        report.num_fn_evals, report.extra["num_rejected_steps"], report.successful
        ```

    ??? cite "References"

        ```bibtex
        @inproceedings{chen2018neural,
            author = {Chen, Ricky T. Q. and Rubanova, Yulia and Bettencourt, Jesse
                      and Duvenaud, David K.},
            title = {Neural Ordinary Differential Equations},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2018},
        }

        @inproceedings{dupont2019augmented,
            author = {Dupont, Emilien and Doucet, Arnaud and Teh, Yee Whye},
            title = {Augmented Neural ODEs},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2019},
        }

        @phdthesis{kidger2021on,
            author = {Kidger, Patrick},
            title = {On Neural Differential Equations},
            school = {University of Oxford},
            year = {2021},
        }
        ```
    """

    vector_field: Callable
    t0: float = eqx.field(static=True, default=0.0, converter=_to_float)
    t1: float = eqx.field(static=True, default=1.0, converter=_to_float)
    solver: dfx.AbstractSolver = dfx.Tsit5()
    stepsize_controller: dfx.AbstractStepSizeController = dfx.PIDController(
        rtol=1e-3, atol=1e-3
    )
    adjoint: dfx.AbstractAdjoint = eqx.field(default_factory=_default_adjoint)
    dt0: float | None = eqx.field(
        static=True, default=None, converter=_to_optional_float
    )
    augment: int = eqx.field(static=True, default=0)
    steady_state: bool = eqx.field(static=True, default=False)
    max_steps: int = eqx.field(static=True, default=4096)
    throw: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_ode_config(
            "NeuralODE",
            vector_field=self.vector_field,
            t0=self.t0,
            t1=self.t1,
            solver=self.solver,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            dt0=self.dt0,
            max_steps=self.max_steps,
            throw=self.throw,
            steady_state=self.steady_state,
        )
        check_positive_int("NeuralODE", "augment", self.augment, minimum=0)

    def __call__(
        self, y0: PyTree[Array], args: PyTree[Any] = None, *, key: Any = None
    ) -> tuple[PyTree[Array], Report]:
        """Solve from `y0` and return the state at the end time.

        **Arguments:**

        - `y0`: the initial state of one sample, a pytree of floating-point arrays
            (one array when `augment > 0`).
        - `args`: passed to the vector field as its third argument (e.g. an input to
            condition on).
        - `key`: unused; accepted for compatibility with `eqx.nn.Sequential`.

        **Returns:**

        `(y1, report)`: the state at $t_1$ (or at the steady state), augmented
        channels included, and its [`jaxdeq.Report`][] (see above).

        **Raises:**

        `TypeError`/`ValueError` while tracing when `y0` is not floating point, when
        `augment > 0` and `y0` is not one array with a leading channel axis, or when
        the vector field's output does not match the (augmented) state. With
        `throw=True`, a runtime error carrying the result's message when the solve
        fails.
        """
        del key
        sol, nfe, residual = _solve(self, y0, args, dfx.SaveAt(t1=True), True)
        assert sol.ts is not None
        y1 = first(sol.ys)
        report = _report(sol, nfe, residual, self.steady_state)
        if self.throw:
            y1 = report.result.error_if(y1, ~report.successful)
        return y1, report

    def solution(
        self,
        y0: PyTree[Array],
        args: PyTree[Any] = None,
        saveat: dfx.SaveAt = dfx.SaveAt(t1=True),
    ) -> dfx.Solution:
        """Solve from `y0` and return diffrax's whole solution, e.g. a trajectory to
        plot.

        **Arguments:**

        - `y0`, `args`: as for `__call__`.
        - `saveat`: what to save, e.g. `diffrax.SaveAt(ts=jnp.linspace(0, 1, 50))` or
            `diffrax.SaveAt(steps=True)`. `diffrax.ImplicitAdjoint()` accepts only
            `SaveAt(t1=True)`; to save a trajectory of such a model, swap its adjoint
            first: `eqx.tree_at(lambda m: m.adjoint, model,
            diffrax.RecursiveCheckpointAdjoint())`.

        **Returns:**

        A `diffrax.Solution` (`ts`, `ys`, `stats`, `result`, ...). Its `stats` and
        `result` are diffrax's (with `throw=True`, diffrax raises on failure); the
        evaluation count is reported by `__call__`.
        """
        sol, _, _ = _solve(self, y0, args, saveat, False)
        return sol

    def _augment(self, y0):
        if self.augment == 0:
            return y0
        if not isinstance(y0, (jax.Array, np.ndarray)) or jnp.ndim(y0) < 1:
            raise ValueError(
                "NeuralODE: `augment > 0` needs the state to be one array whose first "
                "axis holds the channels, e.g. shape (n,) or (C, H, W); got "
                f"{jax.eval_shape(lambda: y0)}."
            )
        zeros = jnp.zeros((self.augment,) + jnp.shape(y0)[1:], jnp.result_type(y0))
        return jnp.concatenate([y0, zeros], axis=0)

    def _integrate(self, y0, args, saveat, report):
        """The solve, its evaluation count and (with `report` and `steady_state`)
        the residual at the returned state, compiled as one unit by `_solve`.
        `report=True` means the caller builds a report and throws itself."""
        leaves = jtu.tree_leaves(y0)
        if not leaves:
            raise ValueError("NeuralODE: `y0` has no arrays.")
        for leaf in leaves:
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise TypeError(
                    "NeuralODE: every leaf of `y0` must be real floating point, got "
                    f"{jnp.result_type(leaf)}. Cast it, e.g. `y0.astype(jnp.float32)`."
                )
        y0 = self._augment(y0)
        # Times in the state's precision (at least float32): with Python floats,
        # diffrax would promote a float32 state to float64 when x64 is on.
        dtype = real_dtype(bookkeeping_dtype(y0))
        t0 = jnp.asarray(self.t0, dtype)
        t1 = jnp.asarray(self.t1, dtype)
        dt0 = None if self.dt0 is None else jnp.asarray(self.dt0, dtype)
        check_vector_field("NeuralODE", self.vector_field, t0, y0, args, self.augment)
        vector_field = self.vector_field
        narrow = jax.eval_shape(lambda: y0)
        widen = any(jnp.finfo(leaf.dtype).bits < 32 for leaf in jtu.tree_leaves(y0))
        if widen:
            # Mixed precision: diffrax's Runge-Kutta updates need a state of at
            # least float32, so the state is carried in float32 and the vector
            # field still runs in the user's (bfloat16/float16) precision.
            vector_field = _Widened(self.vector_field, narrow)
            y0 = jtu.tree_map(lambda y: _at_least_float32(y), y0)

        term = dfx.ODETerm(vector_field)
        cost = stage_cost(self.solver)
        init_cost = initial_step_cost(self.stepsize_controller, self.dt0)
        counted = cost is not None and init_cost is not None
        solver_state = None
        if cost is not None and cost[1]:
            solver_state = fsal_state(self.solver, term, t0, y0, args, vector_field)
            if solver_state is None:
                counted = False
            elif isinstance(self.adjoint, _STATELESS_ADJOINTS):
                solver_state = jax.lax.stop_gradient(solver_state)
        sol = dfx.diffeqsolve(
            term,
            self.solver,
            t0,
            t1,
            dt0,
            y0,
            args,
            saveat=saveat,
            stepsize_controller=self.stepsize_controller,
            adjoint=self.adjoint,
            event=_STEADY_STATE if self.steady_state else None,
            max_steps=self.max_steps,
            throw=False if report else self.throw,
            solver_state=solver_state,
        )
        num_steps = jnp.asarray(sol.stats["num_steps"])
        measured = report and self.steady_state
        if counted:
            assert cost is not None and init_cost is not None
            stages, fsal = cost
            nfe = count_nfe(num_steps, stages, fsal, init_cost, self.steady_state)
            nfe = jnp.asarray(nfe + int(measured), num_steps.dtype)
        else:
            nfe = unknown_nfe(num_steps)
        residual = None
        if measured:
            # One more evaluation, at the returned state: the quantities the
            # steady-state event compares, in the controller's norm.
            assert sol.ts is not None
            y1, t1 = jax.lax.stop_gradient((first(sol.ys), sol.ts[-1]))
            norm = self.stepsize_controller.norm  # pyright: ignore
            f1 = jax.lax.stop_gradient(vector_field(t1, y1, args))
            abs_residual = jnp.asarray(norm(f1)).astype(dtype)
            scale = jnp.maximum(jnp.asarray(norm(y1)).astype(dtype), _tiny(dtype))
            residual = (abs_residual, abs_residual / scale)
        if widen and sol.ys is not None:
            ys = jtu.tree_map(lambda y, n: y.astype(n.dtype), sol.ys, narrow)
            sol = eqx.tree_at(lambda s: s.ys, sol, ys)
        return sol, nfe, residual


class _Widened(eqx.Module):
    """A vector field evaluated in the state's own low precision, returning float32
    for a state that the solver carries in float32."""

    vector_field: Callable
    narrow: Any = eqx.field(static=True)

    def __call__(self, t, y, args):
        y = jtu.tree_map(lambda v, n: v.astype(n.dtype), y, self.narrow)
        return jtu.tree_map(_at_least_float32, self.vector_field(t, y, args))


def _at_least_float32(x):
    dtype = jnp.result_type(x)
    return x.astype(jnp.float32) if jnp.finfo(dtype).bits < 32 else x


def _tiny(dtype):
    return jnp.finfo(dtype).tiny


def _report(sol: dfx.Solution, nfe: Array, residual, steady_state: bool) -> Report:
    """The layer report of a `SaveAt(t1=True)` solve."""
    assert sol.ts is not None
    raw = sol.result
    result = as_results(raw)
    if steady_state:
        # A steady-state solve succeeds by its event; reaching t1 first is failure.
        result = RESULTS.where(
            result == RESULTS.successful, RESULTS.steady_state_not_reached, result
        )
        result = RESULTS.where(
            result == RESULTS.event_occurred,
            RESULTS.successful,  # pyright: ignore[reportArgumentType]
            result,
        )
    t_final = sol.ts[-1]
    report = Report.unmeasured(
        result,
        sol.stats["num_steps"],
        nfe,
        dtype=t_final.dtype,
        t_final=t_final,
        num_accepted_steps=sol.stats["num_accepted_steps"],
        num_rejected_steps=sol.stats["num_rejected_steps"],
        diffrax_result=raw,
    )
    if residual is not None:
        abs_residual, rel_residual = residual
        report = eqx.tree_at(
            lambda r: (r.abs_residual, r.rel_residual),
            report,
            (abs_residual, rel_residual),
        )
    return report


def _solve(block: NeuralODE, y0, args, saveat, report):
    if isinstance(block.adjoint, dfx.ImplicitAdjoint):
        # Differentiating diffrax's implicit adjoint multiplies a float time by an
        # int64 direction, which strict dtype promotion rejects. JAX differentiates
        # the compiled solve when it is called, so the setting must hold here.
        with jax.numpy_dtype_promotion("standard"):
            return _solve_jit(block, y0, args, saveat, report)
    return _solve_jit(block, y0, args, saveat, report)


# One compilation for the checks, the first evaluation and the solve: eager calls
# would otherwise run the first evaluation op by op.
@eqx.filter_jit
def _solve_jit(block: NeuralODE, y0, args, saveat, report):
    return block._integrate(y0, args, saveat, report)


def check_vector_field(name, vector_field, t0, y0, args, augment=0) -> None:
    out = eqx.filter_eval_shape(vector_field, t0, y0, args)
    y_struct = jax.eval_shape(lambda: y0)
    note = f" (the state after appending {augment} zero channels)" if augment else ""
    if jtu.tree_structure(out) != jtu.tree_structure(y_struct) or any(
        a.shape != b.shape
        for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(y_struct))
    ):
        raise ValueError(
            f"{name}: `vector_field(t, y, args)` must return dy/dt with the "
            f"structure and shapes of the state{note}; got {out} for a state of "
            f"{y_struct}. Check the output size of the vector field."
        )
    for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(y_struct)):
        if a.dtype != b.dtype:
            raise TypeError(
                f"{name}: `vector_field(t, y, args)` returns {a.dtype} where the "
                f"state is {b.dtype}. Make them agree, e.g. build `y0` with "
                f"dtype={a.dtype} or cast the vector field's parameters."
            )


NeuralODE.__init__.__doc__ = r"""**Arguments:**

- `vector_field`: $f_\theta$, called as `vector_field(t, y, args)` and returning
    $\mathrm{d}y/\mathrm{d}t$ with the structure of `y` (diffrax's convention); any
    callable, typically an equinox Module such as [`jaxdeq.ode.ConcatField`][].
- `t0`, `t1`: the time interval, Python numbers (fixed, not learnt) with
    `t1 > t0`. `t1=math.inf` only with `steady_state=True`.
- `solver`: a diffrax solver (default `diffrax.Tsit5()`).
- `stepsize_controller`: a diffrax step-size controller (default
    `diffrax.PIDController(rtol=1e-3, atol=1e-3)`); `diffrax.ConstantStepSize()`
    needs `dt0`.
- `adjoint`: the backward mode: `diffrax.RecursiveCheckpointAdjoint(checkpoints=32)`
    (default),
    `diffrax.BacksolveAdjoint()`, or `diffrax.ImplicitAdjoint()` (with
    `steady_state=True` only); see above.
- `dt0`: the first step (every step, with `ConstantStepSize`); `None` lets an
    adaptive controller choose.
- `augment`: the number of zero channels appended along axis 0 (ANODE); 0 for none.
- `steady_state`: integrate until the state stops changing instead of to `t1`.
- `max_steps`: the step budget of one solve.
- `throw`: whether a failed solve raises (default `False`: failures are reported
    per sample in `report.result`, and training goes on).

**Raises:**

`TypeError`/`ValueError` naming the fix for non-callable `vector_field`, non-number
or non-increasing times, `t1=inf` without `steady_state`, negative `augment`,
non-positive `max_steps` or `dt0`, `ConstantStepSize` without `dt0`, an adaptive
controller with a solver that has no error estimate, `steady_state=True` with a
non-adaptive controller or `BacksolveAdjoint`, and `ImplicitAdjoint` without
`steady_state`.
"""
