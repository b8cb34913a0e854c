from collections.abc import Callable
from typing import ClassVar

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PyTree, Scalar

from .._misc import (
    as_int,
    bookkeeping_dtype,
    check_positive_int,
    check_tolerances,
    DIVERGENCE_RATIO,
    flatten,
    iterate_diverged,
    passes,
    real_dtype,
    record,
    relative,
    stopping,
)
from .._solution import AbstractReportingState


def evals_per_step(solver: diffrax.AbstractSolver) -> int | None:
    """New vector-field evaluations per step of an explicit Runge–Kutta method (first
    same as last: the last stage is the next step's first), or `None` if unknown."""
    if isinstance(solver, diffrax.Euler):
        return 1
    if isinstance(solver, diffrax.AbstractERK):
        tableau = _tableau(solver)
        stages = len(tableau.a_lower) + 1
        return stages - 1 if tableau.fsal else stages
    return None


def _tableau(solver: diffrax.AbstractERK) -> diffrax.ButcherTableau:
    # An explicit Runge–Kutta method has one tableau; diffrax types it more widely.
    tableau = solver.tableau
    assert isinstance(tableau, diffrax.ButcherTableau)
    return tableau


def _field(fn):
    """dz/dt = f(z) - z for an optimistix-wrapped `fn(z, args) -> (f(z), aux)`."""

    def field(t, z, args):
        del t
        return jtu.tree_map(lambda fz, zz: fz - zz, fn(z, args)[0], z)

    return field


class _SteadyEvent(eqx.Module):
    """The steady-state event, with the solver's own success test (see `passes`),
    so that the integration stops exactly when the solve may."""

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar]
    first_residual: Scalar
    initial_scale: Scalar

    def __call__(self, t, y, args, *, terms, solver, **kwargs):
        del kwargs
        vf = solver.func(terms, t, y, args)
        abs_residual = self.norm(vf)
        f_norm = self.norm(jtu.tree_map(jnp.add, vf, y))
        return passes(
            abs_residual,
            f_norm,
            self.first_residual,
            self.initial_scale,
            self.rtol,
            self.atol,
        )


class _SteadyStateState(AbstractReportingState):
    t: Scalar
    dt: Scalar
    solver_state: PyTree
    controller_state: PyTree
    made_jump: Bool[Array, ""]
    num_ode_steps: Int[Array, ""]
    num_rejected_steps: Int[Array, ""]
    num_fn_evals: Int[Array, ""]
    first_residual: Scalar
    initial_scale: Scalar
    abs_residual: Scalar
    rel_residual: Scalar
    converged: Bool[Array, ""]
    diverged: Bool[Array, ""]
    nonfinite: Bool[Array, ""]
    step: Int[Array, ""]
    trace: Float[Array, " trace_size"]


class SteadyState(optx.AbstractFixedPointSolver):
    r"""A fixed point $z^* = f(z^*)$ as the steady state of the ODE
    $dz/dt = f(z) - z$, integrated with diffrax until its steady-state event fires.

    Each solver step continues the integration for up to `steps_per_call` ODE steps
    (carrying the diffrax solver and step-size controller state across calls, so the
    integration is the same as one long solve) and stops early once a steady-state
    event sees the success test below pass. The same test ends the solve; the
    residual trace holds one entry per call.

    Success test: the returned $z$ satisfies $\|f(z) - z\| \le \mathrm{atol} +
    \mathrm{rtol}\,\|f(z)\|$ in `norm` (`abs_residual` is $\|f(z) - z\|$,
    `rel_residual` is $\|f(z) - z\| / \|f(z)\|$), with a residual below the first
    one unless it also passes with $\|f(z)\|$ replaced by the initial scale
    $s_0 = \|z_0\| + \|f(z_0)\|$, and the solve has not diverged (a residual $10^8$
    times the first one, or an iterate $10^8$ times $s_0$).

    Where $f$ is a contraction the flow converges from any start at rate
    $e^{-(1 - \rho)t}$; the flow also reaches stable fixed points of maps that are not
    contractions, which plain iteration may not. Gradients do not go through the
    integration: as for every fixed-point solver, the adjoint of
    [`jaxdeq.fixed_point`][] (default [`jaxdeq.ImplicitAdjoint`][]) differentiates
    the fixed point implicitly. Pass it to [`jaxdeq.DEQ`][] as `solver=`.

    The step-size controller's tolerances bound the accuracy of the steady state:
    near it the step size grows until the explicit method's stability limit, where the
    residual stalls at about the controller's tolerance. So the default controller is
    `diffrax.PIDController(rtol=rtol / 10, atol=atol / 10)`, a decade below the
    solver's own tolerances; controller tolerances at or above `rtol`/`atol` can stall
    above them.

    The state reports `t` (the time reached), `num_ode_steps`,
    `num_rejected_steps` and `num_fn_evals` (evaluations of $f$; `-1` when the
    diffrax solver is not an explicit Runge–Kutta method, whose cost is not counted).
    """

    rtol: float
    atol: float
    norm: Callable[[PyTree], Scalar] = optx.two_norm
    solver: diffrax.AbstractSolver = diffrax.Tsit5()
    stepsize_controller: diffrax.AbstractStepSizeController | None = None
    dt0: float | None = None
    steps_per_call: int = eqx.field(static=True, default=16, converter=as_int)
    trace_size: int = eqx.field(static=True, default=64, converter=as_int)

    _name: ClassVar[str] = "SteadyState"

    def __check_init__(self):
        check_tolerances(self._name, self.rtol, self.atol)
        check_positive_int(self._name, "steps_per_call", self.steps_per_call)
        check_positive_int(self._name, "trace_size", self.trace_size)
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise TypeError(
                "SteadyState: `solver` must be a diffrax solver, e.g. diffrax.Tsit5(); "
                f"got {type(self.solver).__name__}."
            )
        if self.stepsize_controller is not None and not isinstance(
            self.stepsize_controller, diffrax.AbstractStepSizeController
        ):
            raise TypeError(
                "SteadyState: `stepsize_controller` must be a diffrax step-size "
                "controller, e.g. diffrax.PIDController(rtol=1e-3, atol=1e-6); got "
                f"{type(self.stepsize_controller).__name__}."
            )
        adaptive = isinstance(
            self._controller, diffrax.AbstractAdaptiveStepSizeController
        )
        if self.dt0 is None and not adaptive:
            raise ValueError(
                "SteadyState: a constant step size needs `dt0`, e.g. dt0=0.5; or use "
                "an adaptive controller such as diffrax.PIDController."
            )
        if self.dt0 is not None and not self.dt0 > 0:
            raise ValueError(f"SteadyState: `dt0` must be > 0, got {self.dt0!r}.")

    @property
    def _controller(self) -> diffrax.AbstractStepSizeController:
        if self.stepsize_controller is None:
            return diffrax.PIDController(rtol=0.1 * self.rtol, atol=0.1 * self.atol)
        return self.stepsize_controller

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        del options, f_struct, aux_struct, tags
        dtype = bookkeeping_dtype(y)
        rdtype = real_dtype(dtype)
        term = diffrax.ODETerm(_field(fn))
        t0 = jnp.array(0.0, rdtype)
        t1 = jnp.array(jnp.inf, rdtype)
        dt0 = self.dt0
        if dt0 is None and jnp.issubdtype(dtype, jnp.complexfloating):
            # diffrax's initial step selection does not take complex states; the flow
            # relaxes on a time scale of about 1, so start a decade below it.
            dt0 = 0.1
        dt0 = None if dt0 is None else jnp.array(dt0, rdtype)
        tnext, controller_state = self._controller.init(
            term, t0, t1, y, dt0, args, self.solver.func, self.solver.error_order(term)
        )
        solver_state = self.solver.init(term, t0, tnext, y, args)
        fsal = (
            isinstance(self.solver, diffrax.AbstractERK) and _tableau(self.solver).fsal
        )
        inf = jnp.array(jnp.inf, rdtype)
        fsal_state = isinstance(solver_state, tuple) and len(solver_state) == 2
        if fsal and fsal_state:
            # diffrax's FSAL state is (first_step, f0): hand it f(y0) so that rejected
            # first steps do not evaluate it again, which keeps the count exact. It
            # also gives the first residual and the initial scale of the test.
            vf0 = term.vf(t0, y, args)
            solver_state = (jnp.array(False), vf0)
            g0 = flatten(vf0, dtype)
            x0 = flatten(y, dtype)
            first_residual = self.norm(g0)
            initial_scale = self.norm(x0) + self.norm(x0 + g0)
        else:
            # Without FSAL, f(y0) is not evaluated: the first measured point (after
            # the first call) stands in for y0.
            first_residual = initial_scale = inf
        per_step = evals_per_step(self.solver)
        # Initial evaluations: the first stage (first same as last) and, without dt0,
        # the two of diffrax's initial step-size selection.
        first = int(fsal and fsal_state) + (2 if dt0 is None else 0)
        return _SteadyStateState(
            t=t0,
            dt=jnp.asarray(tnext - t0, rdtype),
            solver_state=solver_state,
            # As arrays: diffrax returns them so after a solve.
            controller_state=jtu.tree_map(jnp.asarray, controller_state),
            made_jump=jnp.array(False),
            num_ode_steps=jnp.array(0),
            num_rejected_steps=jnp.array(0),
            num_fn_evals=jnp.array(first if per_step is not None else -1),
            first_residual=first_residual.astype(rdtype),
            initial_scale=initial_scale.astype(rdtype),
            abs_residual=inf,
            rel_residual=inf,
            converged=jnp.array(False),
            diverged=jnp.array(False),
            nonfinite=jnp.array(False),
            step=jnp.array(0),
            trace=jnp.full((self.trace_size,), jnp.nan, rdtype),
        )

    def step(self, fn, y, args, options, state, tags):
        del options, tags
        term = diffrax.ODETerm(_field(fn))
        event = diffrax.Event(
            _SteadyEvent(
                self.rtol,
                self.atol,
                self.norm,
                state.first_residual,
                state.initial_scale,
            )
        )
        saveat = diffrax.SaveAt(
            subs=[
                diffrax.SubSaveAt(t1=True),
                diffrax.SubSaveAt(steps=True, fn=lambda t, z, a: t),
            ],
            solver_state=True,
            controller_state=True,
            made_jump=True,
        )
        sol = diffrax.diffeqsolve(
            term,
            self.solver,
            t0=state.t,
            t1=jnp.array(jnp.inf, state.t.dtype),
            dt0=state.dt,
            y0=y,
            args=args,
            saveat=saveat,
            stepsize_controller=self._controller,
            event=event,
            max_steps=self.steps_per_call,
            solver_state=state.solver_state,
            controller_state=state.controller_state,
            made_jump=state.made_jump,
            # Differentiating the solver itself (an unrolled adjoint, forward or reverse
            # mode) needs an ODE solve that both modes can go through.
            adjoint=diffrax.DirectAdjoint(),
            throw=False,
        )
        ys_end, step_ts = sol.ys  # pyright: ignore
        new_y = jtu.tree_map(lambda x: x[-1], ys_end)
        accepted = sol.stats["num_accepted_steps"]
        steps = sol.stats["num_steps"]
        # The next step starts with the last accepted step's size.
        ts = jnp.where(jnp.isfinite(step_ts), step_ts, -jnp.inf)
        order = jnp.sort(ts)
        last, before = order[-1], order[-2] if ts.size > 1 else state.t
        before = jnp.where(jnp.isfinite(before), before, state.t)
        dt = jnp.where(accepted > 0, last - before, state.dt)
        dt = jnp.where(dt > 0, dt, state.dt)
        t_new = jnp.where(accepted > 0, last, state.t)

        fz, aux = fn(new_y, args)
        dtype = bookkeeping_dtype(y)
        diff = flatten(fz, dtype) - flatten(new_y, dtype)
        abs_residual = self.norm(diff)
        f_norm = self.norm(flatten(fz, dtype))
        z_norm = self.norm(flatten(new_y, dtype))
        first_residual = jnp.where(
            jnp.isfinite(state.first_residual), state.first_residual, abs_residual
        )
        initial_scale = jnp.where(
            jnp.isfinite(state.initial_scale), state.initial_scale, z_norm + f_norm
        )
        diverged = (abs_residual > DIVERGENCE_RATIO * first_residual) | (
            iterate_diverged(z_norm, initial_scale)
        )
        converged = passes(
            abs_residual,
            f_norm,
            first_residual,
            initial_scale,
            self.rtol,
            self.atol,
        ) & jnp.invert(diverged)
        per_step = evals_per_step(self.solver)
        if per_step is None:
            evals = state.num_fn_evals
        else:
            # The steady-state event evaluates f once at the start and after every
            # step; one more evaluation measures the residual.
            evals = state.num_fn_evals + (per_step + 1) * steps + 2
        rel = relative(abs_residual, f_norm)
        new_state = _SteadyStateState(
            t=t_new.astype(state.t.dtype),
            dt=dt.astype(state.dt.dtype),
            solver_state=sol.solver_state,
            controller_state=sol.controller_state,
            made_jump=jnp.asarray(sol.made_jump),
            num_ode_steps=state.num_ode_steps + steps,
            num_rejected_steps=state.num_rejected_steps
            + sol.stats["num_rejected_steps"],
            num_fn_evals=evals,
            first_residual=first_residual,
            initial_scale=initial_scale,
            abs_residual=abs_residual,
            rel_residual=rel,
            converged=converged,
            diverged=diverged,
            nonfinite=jnp.invert(jnp.isfinite(abs_residual)),
            step=state.step + 1,
            trace=record(state.trace, state.step, rel),
        )
        return new_y, new_state, aux

    def terminate(self, fn, y, args, options, state, tags):
        del fn, y, args, options, tags
        return stopping(state.converged, state.diverged, state.nonfinite)

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        del fn, args, options, state, tags, result
        return y, aux, {}


SteadyState.__init__.__doc__ = r"""**Arguments:**

- `rtol`, `atol`: stop once $\|f(z) - z\| \le \text{atol} + \text{rtol}\,\|f(z)\|$
    (see the success test above).
- `norm`: the norm of that test (default two-norm).
- `solver`: the diffrax solver (default `diffrax.Tsit5()`).
- `stepsize_controller`: a diffrax step-size controller; default
    `diffrax.PIDController(rtol=rtol / 10, atol=atol / 10)` (see above).
- `dt0`: the first step size; `None` lets the adaptive controller choose it (two
    extra evaluations; 0.1 for complex states, which diffrax's selection does not
    take). Required with `diffrax.ConstantStepSize()`: then
    `solver=diffrax.Euler(), dt0=1.0` is plain fixed-point iteration and `dt0 < 1`
    damped iteration.
- `steps_per_call`: ODE steps per solver step, i.e. between residual checks and trace
    entries (default 16).
- `trace_size`: length of the residual trace.
"""
