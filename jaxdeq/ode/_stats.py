import functools
import warnings

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float, Int, PyTree


class ODEStats(eqx.Module):
    """Deprecated: the neural ODE blocks now return a [`jaxdeq.Report`][].

    Kept importable for one release; constructing one warns. The fields map to the
    report as `num_steps` -> `report.num_steps`, `nfe` -> `report.num_fn_evals`,
    `result` -> `report.extra["diffrax_result"]` (`report.result` is the same
    result lifted to [`jaxdeq.RESULTS`][], with a fired steady-state event counted
    as `successful`), and `num_accepted_steps`, `num_rejected_steps`, `t_final` ->
    `report.extra[...]` under the same names.
    """

    num_steps: Int[Array, "*batch"]
    num_accepted_steps: Int[Array, "*batch"]
    num_rejected_steps: Int[Array, "*batch"]
    nfe: Int[Array, "*batch"]
    t_final: Float[Array, "*batch"]
    result: dfx.RESULTS

    def __check_init__(self):
        warnings.warn(
            "jaxdeq.ode.ODEStats is deprecated: NeuralODE and HomoODE return a "
            "jaxdeq.Report; read `report.num_fn_evals` (was `nfe`), "
            "`report.num_steps` and `report.extra['t_final']`.",
            DeprecationWarning,
            stacklevel=2,
        )


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
