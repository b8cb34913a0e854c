"""Neural ODE blocks: accuracy, exact evaluation counts, augmentation, gradients,
steady states, HomoODE, jit/vmap hygiene and constructor errors."""

import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.linalg as jsl
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jaxdeq
import jaxdeq.ode as ode


# Tight enough that the discretisation error (~1e-10 per unit time) sits far below
# what a central difference with step 1e-4 resolves: FD noise is ~tol / eps = 1e-6.
TIGHT = dfx.PIDController(rtol=1e-10, atol=1e-10)


class Linear(eqx.Module):
    matrix: jax.Array

    def __call__(self, t, y, args):
        del t, args
        return self.matrix @ y


class Relax(eqx.Module):
    """dy/dt = -A (y - b): relaxes to y = b when A is positive definite."""

    matrix: jax.Array
    target: jax.Array

    def __call__(self, t, y, args):
        del t, args
        return -self.matrix @ (y - self.target)


class Decay(eqx.Module):
    """dy/dt = -rate (1 + t) y, elementwise: any shape."""

    rate: jax.Array

    def __call__(self, t, y, args):
        del args
        return -self.rate * (1 + t) * y


class Counted(eqx.Module):
    """Counts its evaluations at run time, through a callback."""

    inner: eqx.Module
    counter: list = eqx.field(static=True)

    def __call__(self, t, y, args):
        jax.debug.callback(self._tick)
        return self.inner(t, y, args)

    def _tick(self):
        self.counter[0] += 1


class Traced(eqx.Module):
    """Counts how often it is traced (a Python side effect runs at trace time only)."""

    inner: eqx.Module
    counter: list = eqx.field(static=True)

    def __call__(self, t, y, args):
        self.counter[0] += 1
        return self.inner(t, y, args)


class MLPField(eqx.Module):
    """A small time-dependent field on vectors."""

    mlp: eqx.nn.MLP

    def __call__(self, t, y, args):
        del args
        return self.mlp(y) * (1 + 0.5 * jnp.sin(t))


def _mlp_field(key, size=3, width=8):
    return MLPField(eqx.nn.MLP(size, size, width, 1, activation=jnp.tanh, key=key))


def _check_fd(loss, tree, key, num_directions=2, eps=1e-4, rtol=1e-5, atol=1e-6):
    """Directional derivatives of `loss(tree)` from AD against central differences.

    For each top-level entry of the tuple `tree` (e.g. parameters, input, initial
    point), `num_directions` random directions supported on that entry alone, so
    that every entry's gradient is checked on its own.
    """
    flat, unravel = ravel_pytree(tree)
    # One compilation serves both: the differences reuse the value.
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: loss(unravel(v))))
    grad = np.asarray(value_and_grad(flat)[1])
    sizes = [ravel_pytree(entry)[0].size for entry in tree]
    starts = np.cumsum([0] + sizes)
    for start, size in zip(starts[:-1], sizes):
        for _ in range(num_directions):
            key, sub = jr.split(key)
            direction = np.zeros(flat.size)
            direction[start : start + size] = np.asarray(jr.normal(sub, (size,)))
            plus = value_and_grad(flat + eps * direction)[0]
            minus = value_and_grad(flat - eps * direction)[0]
            fd = float(plus - minus) / (2 * eps)
            np.testing.assert_allclose(grad @ direction, fd, rtol=rtol, atol=atol)


#
# Accuracy
#


def test_linear_ode_matches_expm(getkey):
    a = 0.5 * jr.normal(getkey(), (4, 4))
    y0 = jr.normal(getkey(), (4,))
    block = ode.NeuralODE(Linear(a), t0=0.5, t1=2.0, stepsize_controller=TIGHT)
    y1, stats = block(y0)
    # rtol = atol = 1e-10 bounds each step's local error; over t1 - t0 = 1.5 with
    # ||A|| ~ 1 the global error stays within a small multiple of that.
    np.testing.assert_allclose(y1, jsl.expm(1.5 * a) @ y0, rtol=1e-8, atol=1e-9)
    assert stats.result == jaxdeq.RESULTS.successful
    assert float(stats.extra["t_final"]) == 2.0

    ts = jnp.linspace(0.5, 2.0, 5)
    sol = block.solution(y0, saveat=dfx.SaveAt(ts=ts))
    assert sol.ys is not None
    expected = jnp.stack([jsl.expm((t - 0.5) * a) @ y0 for t in ts])
    np.testing.assert_allclose(sol.ys, expected, rtol=1e-8, atol=1e-9)


def test_float32_state_stays_float32(getkey):
    a = (0.5 * jr.normal(getkey(), (3, 3))).astype(jnp.float32)
    y1, stats = ode.NeuralODE(Linear(a))(jnp.ones(3, jnp.float32))
    assert y1.dtype == jnp.float32
    np.testing.assert_allclose(y1, jsl.expm(a) @ jnp.ones(3, jnp.float32), rtol=1e-2)
    assert stats.extra["t_final"].dtype == jnp.float32


#
# Evaluation counts
#


_PID = dfx.PIDController(rtol=1e-6, atol=1e-6)
_NFE_CASES = [
    # FSAL tableaus, adaptive, with and without a first step; a first step of 1.0 is
    # rejected before any is accepted.
    (dfx.Tsit5(), _PID, None),
    (dfx.Dopri5(), _PID, 1.0),
    (dfx.Bosh3(), _PID, None),
    # Non-FSAL tableau, adaptive.
    (dfx.Heun(), dfx.PIDController(rtol=1e-4, atol=1e-4), 1.0),
    # Constant steps.
    (dfx.Euler(), dfx.ConstantStepSize(), 0.1),
    (dfx.Tsit5(), dfx.ConstantStepSize(), 0.1),
    pytest.param(dfx.Tsit5(), _PID, 1.0, marks=pytest.mark.slow),
    # Clipped to given times (no jumps): still exact.
    pytest.param(
        dfx.Tsit5(),
        dfx.ClipStepSizeController(_PID, step_ts=[0.3, 0.6]),
        None,
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("solver, controller, dt0", _NFE_CASES)
def test_nfe_is_exact(solver, controller, dt0):
    counter = [0]
    field = Counted(Decay(jnp.array(2.0)), counter)
    block = ode.NeuralODE(field, solver=solver, stepsize_controller=controller, dt0=dt0)
    _, stats = eqx.filter_jit(block)(jnp.ones(3))
    jax.effects_barrier()
    assert int(stats.num_fn_evals) == counter[0]
    assert int(stats.num_steps) == int(stats.extra["num_accepted_steps"]) + int(
        stats.extra["num_rejected_steps"]
    )
    if dt0 == 1.0:
        assert int(stats.extra["num_rejected_steps"]) > 0


@pytest.mark.slow
def test_nfe_steady_state_and_homoode(getkey):
    counter = [0]
    matrix = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    field = Counted(Relax(matrix, jnp.array([1.0, -1.0])), counter)
    block = ode.NeuralODE(
        field,
        t1=math.inf,
        steady_state=True,
        adjoint=dfx.ImplicitAdjoint(),
        stepsize_controller=_PID,
    )
    _, stats = eqx.filter_jit(block)(jnp.zeros(2))
    jax.effects_barrier()
    assert stats.result == jaxdeq.RESULTS.successful
    assert stats.extra["diffrax_result"] == dfx.RESULTS.event_occurred
    assert int(stats.extra["num_rejected_steps"]) >= 0
    assert int(stats.num_fn_evals) == counter[0]

    counter[0] = 0
    field = ode.ConcatField(3, 2, 6, depth=1, key=getkey())
    model = ode.HomoODE(Counted(field, counter), jnp.zeros(3))
    _, stats = eqx.filter_jit(model)(jnp.ones(2))
    jax.effects_barrier()
    assert int(stats.num_fn_evals) == counter[0]


@pytest.mark.parametrize(
    "solver, controller",
    [
        (dfx.Tsit5(), dfx.ClipStepSizeController(_PID, jump_ts=[0.5])),
        pytest.param(
            dfx.ImplicitEuler(),
            dfx.PIDController(rtol=1e-3, atol=1e-3),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_nfe_not_counted_is_minus_one(solver, controller):
    block = ode.NeuralODE(
        Decay(jnp.array(1.0)), solver=solver, stepsize_controller=controller
    )
    _, stats = block(jnp.ones(2))
    assert int(stats.num_fn_evals) == -1
    assert stats.result == jaxdeq.RESULTS.successful


#
# Augmentation
#


@pytest.mark.slow
def test_augment_vector_and_image_states(getkey):
    y1, _ = ode.NeuralODE(Decay(jnp.array(1.0)), augment=2)(jnp.ones(3))
    assert y1.shape == (5,)
    # The appended channels start at zero, and dy/dt = -y keeps them there.
    np.testing.assert_allclose(y1[3:], 0.0)
    # The default atol = 1e-3 dominates at |y| ~ 0.2: a few per mille.
    np.testing.assert_allclose(y1[:3], math.exp(-1.5), rtol=1e-2)

    class ChannelMix(eqx.Module):
        """Mixes channels pixel by pixel, so the augmented ones get used."""

        mix: jax.Array

        def __call__(self, t, y, args):
            del t, args
            return jnp.tanh(jnp.einsum("cd,dhw->chw", self.mix, y))

    image = jr.normal(getkey(), (2, 4, 4))
    block = ode.NeuralODE(ChannelMix(jr.normal(getkey(), (5, 5))), augment=3)
    y1, stats = block(image)
    assert y1.shape == (5, 4, 4)
    assert stats.result == jaxdeq.RESULTS.successful
    assert float(jnp.max(jnp.abs(y1[2:]))) > 0


def test_augment_needs_one_array_with_channels():
    block = ode.NeuralODE(Decay(jnp.array(1.0)), augment=1)
    with pytest.raises(ValueError, match="first axis holds the channels"):
        block({"a": jnp.ones(2)})
    with pytest.raises(ValueError, match="first axis holds the channels"):
        block(jnp.ones(()))


#
# Gradients
#


@pytest.mark.parametrize(
    "adjoint",
    [
        dfx.RecursiveCheckpointAdjoint(),
        pytest.param(dfx.BacksolveAdjoint(), marks=pytest.mark.slow),
    ],
)
def test_neural_ode_gradients_match_finite_differences(adjoint, getkey):
    block = ode.NeuralODE(
        _mlp_field(getkey()), stepsize_controller=TIGHT, adjoint=adjoint
    )
    y0 = jr.normal(getkey(), (3,))
    weights = jr.normal(getkey(), (3,))
    params, static = eqx.partition(block, eqx.is_inexact_array)

    def loss(tree):
        p, y = tree
        y1, _ = eqx.combine(p, static)(y)
        return jnp.sum(weights * y1)

    _check_fd(loss, (params, y0), getkey())


@pytest.mark.slow
def test_steady_state_reaches_target_and_implicit_gradients(getkey):
    m = jr.normal(getkey(), (3, 3))
    matrix = m @ m.T / 3 + jnp.eye(3)
    target = jr.normal(getkey(), (3,))
    block = ode.NeuralODE(
        Relax(matrix, target),
        t1=math.inf,
        steady_state=True,
        adjoint=dfx.ImplicitAdjoint(),
        stepsize_controller=TIGHT,
    )
    y_star, stats = block(jnp.zeros(3))
    assert stats.result == jaxdeq.RESULTS.successful
    assert stats.extra["diffrax_result"] == dfx.RESULTS.event_occurred
    # The event fires at ||A (y - b)|| < 1e-10 (1 + ||y||), and A >= I.
    np.testing.assert_allclose(y_star, target, atol=1e-9)
    assert math.isfinite(float(stats.extra["t_final"]))

    weights = jr.normal(getkey(), (3,))

    def loss(tree):
        field = Relax(*tree)
        y_star, _ = eqx.tree_at(lambda m: m.vector_field, block, field)(jnp.zeros(3))
        return jnp.sum(weights * y_star)

    _check_fd(loss, (matrix, target), getkey())


@pytest.mark.slow
def test_steady_state_not_reached_before_t1_is_failure(getkey):
    """A steady-state solve capped at a finite t1 that ends before the state stops
    changing did not find a steady state: it must not report success."""
    m = jr.normal(getkey(), (3, 3))
    matrix = m @ m.T / 3 + jnp.eye(3)
    field = Relax(matrix, jr.normal(getkey(), (3,)))
    settings = dict(t1=0.1, steady_state=True, stepsize_controller=TIGHT)
    _, report = ode.NeuralODE(field, **settings)(jnp.zeros(3))
    assert report.result == jaxdeq.RESULTS.steady_state_not_reached
    assert report.extra["diffrax_result"] == dfx.RESULTS.successful
    raising = ode.NeuralODE(field, throw=True, **settings)
    with pytest.raises(eqx.EquinoxRuntimeError, match="steady state"):
        jax.block_until_ready(raising(jnp.zeros(3)))


@pytest.mark.slow
def test_steady_state_of_a_nonlinear_field(getkey):
    """A contractive field y' = tanh(W y) + b - y: its steady state is a DEQ's fixed
    point; implicit and checkpointed gradients both match finite differences."""
    w = jr.normal(getkey(), (3, 3))
    w = 0.5 * w / jnp.linalg.norm(w, 2)
    b = jr.normal(getkey(), (3,))
    weights = jr.normal(getkey(), (3,))

    class Contract(eqx.Module):
        w: jax.Array
        b: jax.Array

        def __call__(self, t, y, args):
            del t, args
            return jnp.tanh(self.w @ y) + self.b - y

    for adjoint in (dfx.ImplicitAdjoint(), dfx.RecursiveCheckpointAdjoint()):
        block = ode.NeuralODE(
            Contract(w, b),
            t1=math.inf,
            steady_state=True,
            adjoint=adjoint,
            stepsize_controller=TIGHT,
        )
        y_star, _ = block(jnp.zeros(3))
        np.testing.assert_allclose(jnp.tanh(w @ y_star) + b, y_star, atol=1e-9)

        def loss(tree, block=block):
            block = eqx.tree_at(
                lambda m: (m.vector_field.w, m.vector_field.b), block, tree
            )
            return jnp.sum(weights * block(jnp.zeros(3))[0])

        _check_fd(loss, (w, b), getkey())


@pytest.mark.slow
def test_homoode_gradients_match_finite_differences(getkey):
    field = ode.ConcatField(3, 2, 6, depth=1, key=getkey())
    model = ode.HomoODE(
        field, 0.1 * jr.normal(getkey(), (3,)), stepsize_controller=TIGHT
    )
    x = jr.normal(getkey(), (2,))
    weights = jr.normal(getkey(), (3,))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(tree):
        field_params, x, point = tree
        p = eqx.tree_at(
            lambda m: (m.vector_field, m.initial_point), params, (field_params, point)
        )
        z1, _ = eqx.combine(p, static)(x)
        return jnp.sum(weights * z1)

    # Parameters of the field, the input and the shared initial point, each alone.
    _check_fd(loss, (params.vector_field, x, params.initial_point), getkey())


#
# HomoODE's initial point
#


def test_update_initial_point_moves_to_batch_mean_without_gradient(getkey):
    field = ode.ConcatField(3, 2, 6, key=getkey())
    model = ode.HomoODE(field, jnp.zeros(3))
    solutions = jr.normal(getkey(), (5, 3)) + 2.0
    mean = jnp.mean(solutions, axis=0)

    moved = model.update_initial_point(solutions, momentum=0.25)
    np.testing.assert_allclose(moved.initial_point, 0.25 * mean, rtol=1e-12)
    assert jnp.linalg.norm(moved.initial_point - mean) < jnp.linalg.norm(
        model.initial_point - mean
    )
    jumped = model.update_initial_point(solutions, momentum=1.0)
    np.testing.assert_allclose(jumped.initial_point, mean, rtol=1e-12)
    # Everything else is untouched.
    assert bool(eqx.tree_equal(moved.vector_field, model.vector_field))

    def moved_sum(solutions, point):
        m = eqx.tree_at(lambda m: m.initial_point, model, point)
        return jnp.sum(m.update_initial_point(solutions).initial_point)

    g_sol, g_point = jax.grad(moved_sum, argnums=(0, 1))(solutions, jnp.ones(3))
    np.testing.assert_array_equal(g_sol, 0.0)
    np.testing.assert_array_equal(g_point, 0.0)

    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        model.update_initial_point(jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="momentum"):
        model.update_initial_point(solutions, momentum=0.0)
    with pytest.raises(ValueError, match="momentum"):
        model.update_initial_point(solutions, momentum=1.5)


@pytest.mark.slow
def test_fitted_initial_point_cuts_evaluations(getkey):
    class Relaxing(eqx.Module):
        """Pulls z towards tanh(W z + U x + 2): paths end far from zero."""

        w: jax.Array
        u: jax.Array

        def __call__(self, t, z, x):
            del t
            return 5.0 * (jnp.tanh(self.w @ z + self.u @ x + 2.0) - z)

    field = Relaxing(
        0.3 * jr.normal(getkey(), (4, 4)), 0.3 * jr.normal(getkey(), (4, 2))
    )
    model = ode.HomoODE(field, jnp.zeros(4))
    x = jr.normal(getkey(), (8, 2))
    z, before = jax.vmap(model)(x)
    fitted = model.update_initial_point(z, momentum=1.0)
    _, after = jax.vmap(fitted)(x)
    # A shorter path lets the adaptive solver take fewer steps.
    assert int(jnp.sum(after.num_fn_evals)) < int(jnp.sum(before.num_fn_evals))


#
# jit and vmap
#


@pytest.mark.slow  # test_layers checks NeuralODE for retracing in the default run.
def test_jit_does_not_retrace_on_new_data(getkey):
    counter = [0]
    block = ode.NeuralODE(Traced(_mlp_field(getkey()), counter))
    forward = eqx.filter_jit(lambda m, y: m(y))
    forward(block, jnp.ones(3))
    traces = counter[0]
    assert traces > 0
    forward(block, jr.normal(getkey(), (3,)))
    assert counter[0] == traces

    counter = [0]
    field = Traced(ode.ConcatField(3, 2, 6, key=getkey()), counter)
    model = ode.HomoODE(field, jnp.zeros(3))
    forward = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))
    z, _ = forward(model, jnp.ones((4, 2)))
    traces = counter[0]
    forward(model, jr.normal(getkey(), (4, 2)))
    # A new initial point (same shape) is new data too.
    forward(model.update_initial_point(z), jr.normal(getkey(), (4, 2)))
    assert counter[0] == traces


@pytest.mark.slow  # test_layers checks NeuralODE's vmap in the default run.
def test_vmap_equals_loop(getkey):
    block = ode.NeuralODE(_mlp_field(getkey(), size=4), augment=1)
    ys = jr.normal(getkey(), (3, 3))
    batched, stats = jax.vmap(block)(ys)
    single = eqx.filter_jit(block)
    for i in range(3):
        y1, stats_i = single(ys[i])
        np.testing.assert_allclose(batched[i], y1, rtol=1e-12, atol=1e-12)
        # Statistics are per sample: those of the sample solved alone.
        assert int(stats.num_fn_evals[i]) == int(stats_i.num_fn_evals)
        assert int(stats.num_steps[i]) == int(stats_i.num_steps)


@pytest.mark.slow
def test_homoode_vmap_equals_loop(getkey):
    model = ode.HomoODE(ode.ConcatField(3, 2, 6, key=getkey()), jnp.ones(3))
    xs = jr.normal(getkey(), (3, 2))
    batched, stats = jax.vmap(model)(xs)
    single = eqx.filter_jit(model)
    for i in range(3):
        z1, stats_i = single(xs[i])
        np.testing.assert_allclose(batched[i], z1, rtol=1e-12, atol=1e-12)
        assert int(stats.num_fn_evals[i]) == int(stats_i.num_fn_evals)


#
# Errors
#


_FIELD = Decay(jnp.array(1.0))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(t0=1.0, t1=1.0), ValueError, "greater than `t0`"),
        (dict(t0=0.0, t1=-1.0), ValueError, "greater than `t0`"),
        (dict(t1=math.inf), ValueError, "steady_state=True"),
        (dict(t1="1"), TypeError, "Python number"),
        (dict(augment=-1), ValueError, "augment"),
        (dict(augment=1.5), TypeError, "augment"),
        (dict(max_steps=0), ValueError, "max_steps"),
        (dict(dt0=-0.1), ValueError, "dt0"),
        (dict(stepsize_controller=dfx.ConstantStepSize()), ValueError, "dt0"),
        (dict(solver=dfx.Euler()), ValueError, "error estimate"),
        (dict(solver="tsit5"), TypeError, "diffrax solver"),
        (dict(adjoint=dfx.ImplicitAdjoint()), ValueError, "steady_state=True"),
        (
            dict(steady_state=True, t1=math.inf, adjoint=dfx.BacksolveAdjoint()),
            ValueError,
            "BacksolveAdjoint",
        ),
        (
            dict(
                steady_state=True,
                stepsize_controller=dfx.ConstantStepSize(),
                dt0=0.1,
            ),
            ValueError,
            "adaptive",
        ),
    ],
)
@pytest.mark.unchecked
def test_neural_ode_rejects_bad_configuration(kwargs, error, match):
    with pytest.raises(error, match=match):
        ode.NeuralODE(_FIELD, **kwargs)


@pytest.mark.unchecked
def test_bad_calls_raise():
    with pytest.raises(TypeError, match="callable"):
        ode.NeuralODE(3.0)
    with pytest.raises(TypeError, match="floating point"):
        ode.NeuralODE(_FIELD)(jnp.ones(2, jnp.int32))

    class WrongSize(eqx.Module):
        def __call__(self, t, y, args):
            return jnp.zeros(4)

    with pytest.raises(ValueError, match="shapes of the state"):
        ode.NeuralODE(WrongSize())(jnp.ones(3))


@pytest.mark.unchecked
def test_homoode_rejects_bad_initial_point(getkey):
    field = ode.ConcatField(3, 2, 6, key=getkey())
    with pytest.raises(ValueError, match="shape of the vector field's state"):
        ode.HomoODE(field, jnp.zeros(4))
    with pytest.raises(TypeError, match="floating point"):
        ode.HomoODE(field, jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="array"):
        ode.HomoODE(field, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="steady_state=True"):
        ode.HomoODE(field, jnp.zeros(3), adjoint=dfx.ImplicitAdjoint())

    # A generic vector field is checked against the initial point when called.
    generic = ode.HomoODE(lambda t, z, x: jnp.zeros(3) + x[0], jnp.zeros(4))
    with pytest.raises(ValueError, match="HomoODE: `vector_field"):
        generic(jnp.ones(2))
    model = ode.HomoODE(field, jnp.zeros(3))
    with pytest.raises(ValueError, match="`y0` must have the shape"):
        model(jnp.ones(2), jnp.zeros(4))
    with pytest.raises(ValueError, match="input must have shape"):
        model(jnp.ones(3))


#
# Reports: failures per sample, throw, the steady-state residual, deprecations
#


def _failing_block(**kwargs):
    # The zero state finishes in a few steps; the others need far more than 8.
    return ode.NeuralODE(Decay(jnp.array(1.0)), stepsize_controller=TIGHT, **kwargs)


@pytest.mark.slow
def test_forced_failure_is_reported_per_sample_and_throw_raises():
    ys = jnp.stack([jnp.zeros(2), jnp.ones(2), jnp.zeros(2)])
    _, report = jax.vmap(_failing_block(max_steps=8))(ys)
    assert isinstance(report, jaxdeq.Report)
    np.testing.assert_array_equal(report.successful, [True, False, True])
    failed = report.result == jaxdeq.RESULTS.max_steps_reached
    np.testing.assert_array_equal(failed, [False, True, False])
    np.testing.assert_array_equal(report.num_steps, [3, 8, 3])
    # A fixed horizon has no residual.
    assert bool(jnp.all(jnp.isnan(report.abs_residual)))
    assert bool(jnp.all(jnp.isnan(report.rel_residual)))
    with pytest.raises(Exception, match="maximum number of solver steps"):
        jax.vmap(_failing_block(max_steps=8, throw=True))(ys)

    def homoode(**kwargs):
        field = Decay(jnp.array(1.0))
        return ode.HomoODE(field, jnp.ones(2), stepsize_controller=TIGHT, **kwargs)

    _, report = jax.vmap(lambda y: homoode(max_steps=8)(None, y))(ys)
    np.testing.assert_array_equal(report.successful, [True, False, True])
    with pytest.raises(Exception, match="maximum number of solver steps"):
        homoode(max_steps=8, throw=True)(None)


def test_steady_state_reports_its_residual(getkey):
    matrix = jnp.array([[2.0, 0.5], [0.5, 1.0]])
    block = ode.NeuralODE(
        Relax(matrix, jnp.array([1.0, -1.0])),
        t1=math.inf,
        steady_state=True,
        adjoint=dfx.ImplicitAdjoint(),
        stepsize_controller=_PID,
    )
    y_star, report = block(jnp.zeros(2))
    assert report.successful
    norm = _PID.norm
    residual = norm(Relax(matrix, jnp.array([1.0, -1.0]))(0.0, y_star, None))
    np.testing.assert_allclose(report.abs_residual, residual, rtol=1e-6)
    np.testing.assert_allclose(report.rel_residual, residual / norm(y_star), rtol=1e-6)
    # The steady-state test holds at the returned value.
    assert float(report.abs_residual) < _PID.atol + _PID.rtol * float(norm(y_star))


def test_homoode_z0_keyword_is_deprecated(getkey):
    model = ode.HomoODE(ode.ConcatField(3, 2, 6, key=getkey()), jnp.zeros(3))
    x, start = jnp.ones(2), jnp.full(3, 0.5)
    new, _ = model(x, y0=start)
    with pytest.warns(DeprecationWarning, match="z0"):
        old, _ = model(x, z0=start)
    np.testing.assert_array_equal(new, old)
    with pytest.warns(DeprecationWarning, match="z0"):
        with pytest.raises(TypeError, match="only"):
            model(x, start, z0=start)
    with pytest.warns(DeprecationWarning, match="ODEStats"):
        ode.ODEStats(
            *(jnp.zeros((), jnp.int32),) * 4, jnp.zeros(()), dfx.RESULTS.successful
        )
