import functools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Int, PyTree


class ODEStats(eqx.Module):
    r"""Statistics of one neural ODE solve, returned next to its output.

    Under `jax.vmap` every field gets the batch axis: the statistics are per sample.

    **Attributes:**

    - `num_steps`: steps attempted by diffrax, $n = n_\text{accepted} +
        n_\text{rejected}$.
    - `num_accepted_steps`, `num_rejected_steps`: as diffrax counts them.
    - `nfe`: forward evaluations of the vector field: exact for the solvers and
        step-size controllers below, `-1` ("not counted") for the others.
    - `t_final`: the time the solve stopped: $t_1$, the time at which the steady
        state was detected, or where it stopped on failure.
    - `result`: a `diffrax.RESULTS`. A fixed-horizon solve succeeded when
        `result == diffrax.RESULTS.successful`; a steady-state solve when
        `result == diffrax.RESULTS.event_occurred` (the steady-state event fired;
        `successful` there means a finite $t_1$ was reached first).
        `diffrax.is_okay(result)` accepts both.

    **The evaluation count.** With $s$ the number of stages of an explicit
    Runge–Kutta tableau,

    $$\text{nfe} = c_\text{init} + \begin{cases} 1 + (s - 1)\,n &
    \text{first-same-as-last (FSAL) tableaus: Tsit5, Dopri5, Dopri8, Bosh3,}\\
    s\,n & \text{other tableaus (Heun, Midpoint, Ralston) and Euler } (s = 1),
    \end{cases} \; + \; [\text{steady state}]\,(1 + n).$$

    - The FSAL count is exact because [`jaxdeq.ode.NeuralODE`][] evaluates
        $f(t_0, y_0)$ once itself and hands it to the solver: every later step,
        rejected or not, reuses the last stage of the previous accepted step (or this
        first evaluation), so a rejected first step does not evaluate it again.
    - $c_\text{init}$ is the cost of `diffrax.PIDController`'s initial step-size
        selection when `dt0=None`: two evaluations, $f(t_0, y_0)$ and
        $f(t_0 + h, y_0 + h f(t_0, y_0))$, if diffrax runs it. diffrax 0.7 does not
        for ODEs (the selection sees diffrax's direction-wrapped term, not an
        `ODETerm`, and falls back to a first step of $0.01$), so there
        $c_\text{init} = 0$; which case holds is detected once per process. It is 0
        with a given `dt0`.
    - The steady-state event evaluates the vector field once at $t_0$ and once per
        step.
    - `-1` is returned for implicit and stochastic solvers (their cost depends on
        Newton iterations or on the terms), wrapped solvers,
        `diffrax.ClipStepSizeController` with `jump_ts` (the step after a jump
        evaluates the first stage again), and step-size controllers other than
        `ConstantStepSize`, `StepTo`, `PIDController` and a
        `ClipStepSizeController` around a `PIDController`.
    - Under `vmap`, `nfe` is the count of each sample solved alone; the batched loop
        runs until its slowest sample stops, evaluating the field for all samples.
    """

    num_steps: Int[Array, "*batch"]
    num_accepted_steps: Int[Array, "*batch"]
    num_rejected_steps: Int[Array, "*batch"]
    nfe: Int[Array, "*batch"]
    t_final: Float[Array, "*batch"]
    result: dfx.RESULTS


def stage_cost(solver: dfx.AbstractSolver) -> tuple[int, bool] | None:
    """`(stages, fsal)` of a solver whose cost per step is fixed, else None."""
    if isinstance(solver, dfx.Euler):
        return 1, False
    if isinstance(solver, dfx.AbstractERK):
        tableau = type(solver).tableau
        if isinstance(tableau, dfx.ButcherTableau):
            return tableau.num_stages, tableau.fsal
    return None


def fsal_state(solver, term, t0, y0, args, vector_field):
    """An FSAL Runge–Kutta solver state holding $f(t_0, y_0)$, or None.

    diffrax's explicit Runge–Kutta state is `(first_step, f0)`; starting it with
    `first_step=False` makes the first step read `f0` instead of evaluating it, so a
    rejected first step does not evaluate it again. Any other layout (a future
    diffrax) gives None, and the solve falls back to diffrax's own start.
    """
    struct = eqx.filter_eval_shape(solver.init, term, t0, t0, y0, args)
    if not (isinstance(struct, tuple) and len(struct) == 2):
        return None
    flag, f_struct = struct
    if not (
        isinstance(flag, jax.ShapeDtypeStruct)
        and flag.shape == ()
        and flag.dtype == jnp.bool_
        and eqx.tree_equal(f_struct, jax.eval_shape(lambda: y0)) is True
    ):
        return None
    return jnp.array(False), vector_field(t0, y0, args)


@functools.cache
def pid_initial_step_evaluates() -> bool:
    """Whether `diffeqsolve` with a `PIDController` and `dt0=None` evaluates an
    ODE's vector field to choose its first step.

    Found by tracing a toy solve with and without `dt0` and comparing how often the
    vector field is traced: only the initial step selection differs.
    """
    traces = []

    def vector_field(t, y, args):
        del t, args
        traces.append(None)
        return -y

    def solve(dt0):
        return dfx.diffeqsolve(
            dfx.ODETerm(vector_field),
            dfx.Tsit5(),
            0.0,
            1.0,
            dt0,
            jnp.ones((), jnp.float32),
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3),
            max_steps=1,
            throw=False,
        )

    jax.eval_shape(lambda: solve(None))
    without_dt0 = len(traces)
    traces.clear()
    jax.eval_shape(lambda: solve(0.1))
    return without_dt0 > len(traces)


def initial_step_cost(controller, dt0) -> int | None:
    """Evaluations spent choosing the first step, or None if not known."""
    if isinstance(controller, (dfx.ConstantStepSize, dfx.StepTo)):
        return 0
    if isinstance(controller, dfx.ClipStepSizeController):
        if controller.jump_ts is not None:
            return None
        controller = controller.controller
    if not isinstance(controller, dfx.PIDController):
        return None
    if dt0 is not None:
        return 0
    # diffrax's `_select_initial_step`: f(t0, y0) and f(t0 + h, y0 + h f(t0, y0)).
    return 2 if pid_initial_step_evaluates() else 0


def count_nfe(num_steps, stages, fsal, init_cost, steady_state):
    if fsal:
        nfe = 1 + (stages - 1) * num_steps
    else:
        nfe = stages * num_steps
    nfe = nfe + init_cost
    if steady_state:
        nfe = nfe + 1 + num_steps
    return nfe


def unknown_nfe(num_steps):
    return jnp.full_like(num_steps, -1)


def first(tree: PyTree[Array]) -> PyTree[Array]:
    return jtu.tree_map(lambda x: x[0], tree)
