"""Problems with known fixed points and the solver/adjoint tuples tests run over.

Adding a solver to `fixed_point_solvers` puts it through the whole battery.
"""

import dataclasses
import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
import pytest
from jaxtyping import Array

import jaxdeq
import jaxdeq.train


TOL = 1e-10
fixed_point_solvers = (
    jaxdeq.Anderson(rtol=TOL, atol=TOL),
    jaxdeq.Anderson(rtol=TOL, atol=TOL, memory=1),
    jaxdeq.Anderson(rtol=TOL, atol=TOL, memory=3, damping=0.7),
    jaxdeq.Broyden(rtol=TOL, atol=TOL),
    jaxdeq.Broyden(rtol=TOL, atol=TOL, memory=4, line_search=True),
    jaxdeq.Homotopy(rtol=TOL, atol=TOL),
    jaxdeq.SteadyState(rtol=TOL, atol=TOL),
    # A root finder; optimistix hands it g(y) = f(y) - y. The two-norm so that its
    # reported residual is the battery's.
    jaxdeq.PseudoTransientNewton(rtol=TOL, atol=TOL, norm=optx.two_norm),
)
# Operator splitting needs a monotone problem (`options={"problem": problem}`);
# `monotone_problem` below builds one, and test_solvers runs these over it.
splitting_solvers = (
    jaxdeq.ForwardBackward(rtol=TOL, atol=TOL),
    jaxdeq.PeacemanRachford(rtol=TOL, atol=TOL),
    jaxdeq.PeacemanRachford(rtol=TOL, atol=TOL, relaxation=0.5),
)
# Scalar root finders that need a bracket (`options=dict(lower=..., upper=...)`).
bracketed_root_finders = (jaxdeq.BracketedNewton(rtol=TOL, atol=TOL),)
# The fixed-point homotopy needs a map into a bounded set (a DEQ cell) to be sure of
# arriving; general root problems get the Newton homotopy (tested with the Heun
# predictor and matrix-free GMRES solves, the cheap end of its options).
root_finders = tuple(
    s
    for s in fixed_point_solvers
    if isinstance(s, (jaxdeq.Broyden, jaxdeq.PseudoTransientNewton))
) + (
    jaxdeq.Homotopy(
        rtol=TOL,
        atol=TOL,
        kind="newton",
        parametrisation="lambda",
        predictor=diffrax.Heun(),
        linear_solver=lx.GMRES(rtol=1e-12, atol=1e-12),
    ),
)

# The default `pytest` run (under 10 minutes on 2 cores) puts every solver through
# the known-answer tests, and the compile-heavy ones (a diffrax ODE inside each step:
# Homotopy's path, SteadyState's flow; 3-4 s to compile against 1-2 s) through the
# rest of the battery in the slow stage (`pytest -m slow`).
_COMPILE_HEAVY = (jaxdeq.Homotopy, jaxdeq.SteadyState)


def every_variant(solvers):
    """`solvers` as pytest parameters, all in the default run but the compile-heavy
    classes (which have their known-answer tests in test_continuous_solvers.py)."""
    return [
        pytest.param(s, marks=pytest.mark.slow) if isinstance(s, _COMPILE_HEAVY) else s
        for s in solvers
    ]


def battery(solvers, default=None):
    """`solvers` as pytest parameters. The default run keeps the first solver of
    each class that is not compile-heavy (of the classes in `default` only, when
    given: for the parts of the battery where one class stands for the rest); the
    slow stage runs every variant (other memories, damping, line search) and the
    compile-heavy classes."""
    seen = set()
    params = []
    for s in solvers:
        excluded = default is not None and not isinstance(s, default)
        if isinstance(s, _COMPILE_HEAVY) or type(s) in seen or excluded:
            params.append(pytest.param(s, marks=pytest.mark.slow))
        else:
            params.append(s)
        seen.add(type(s))
    return params


def slow_unless(values, keep, ids=None):
    """`values` as pytest parameters, every one whose id is not in `keep` marked
    `slow`: the default run keeps `keep`, the slow stage runs the rest."""
    ids = [str(v) for v in values] if ids is None else ids
    return [
        pytest.param(v, id=i, marks=() if i in keep else pytest.mark.slow)
        for v, i in zip(values, ids)
    ]


implicit_adjoints = (
    jaxdeq.ImplicitAdjoint(),
    jaxdeq.ImplicitAdjoint(linear_solver=lx.BiCGStab(rtol=1e-10, atol=1e-12)),
    jaxdeq.ImplicitAdjoint(linear_solver=lx.LU()),
    jaxdeq.ImplicitAdjoint(linear_solver=jaxdeq.Anderson(rtol=1e-11, atol=1e-12)),
    jaxdeq.ImplicitAdjoint(
        linear_solver=optx.FixedPointIteration(rtol=1e-11, atol=1e-12), max_steps=2000
    ),
)
implicit_adjoints = (
    jaxdeq.ImplicitAdjoint(linear_solver=lx.GMRES(rtol=1e-11, atol=1e-12)),
) + implicit_adjoints[1:]


# An implicit adjoint whose backward solve is far tighter than any test tolerance.
tight_implicit = jaxdeq.ImplicitAdjoint(
    linear_solver=jaxdeq.Anderson(rtol=1e-12, atol=0.0)
)


def contraction(key, n, norm=0.8, dtype=jnp.float64):
    w = jr.normal(key, (n, n), jnp.float64)
    return (norm * w / jnp.linalg.norm(w, 2)).astype(dtype)


def affine(z, args):
    w, b = args
    return w @ z + b


def affine_solution(w, b):
    return jnp.linalg.solve(jnp.eye(w.shape[0], dtype=w.dtype) - w, b)


def tanh_cell(z, args):
    w, u, x, b = args
    return jnp.tanh(w @ z + u @ x + b)


def tanh_args(key, n=6, m=3, norm=0.8, dtype=jnp.float64):
    k1, k2, k3, k4 = jr.split(key, 4)
    return (
        contraction(k1, n, norm, dtype),
        jr.normal(k2, (n, m), dtype) / math.sqrt(m),
        jr.normal(k3, (m,), dtype),
        0.1 * jr.normal(k4, (n,), dtype),
    )


def pytree_affine(z, args):
    w, b = args
    flat = jnp.concatenate([z["a"], z["b"].ravel()])
    out = w @ flat + b
    return {"a": out[:2], "b": out[2:].reshape(2, 2)}


def pytree_zeros(dtype=jnp.float64):
    return {"a": jnp.zeros(2, dtype), "b": jnp.zeros((2, 2), dtype)}


# Dottie number: the unique real fixed point of cos.
DOTTIE = 0.7390851332151607


def cosine(z, args):
    del args
    return jnp.cos(z)


def monotone_problem(key, n=6, margin=0.5, scale=2.0):
    """A small monotone fixed point z = relu(W z + b) with I - W >= margin I."""
    k1, k2 = jr.split(key)
    op = jaxdeq.monotone.MonotoneLinear(n, margin=margin, key=k1)
    op = eqx.tree_at(lambda o: (o.A, o.B), op, (scale * op.A, scale * op.B))
    return jaxdeq.monotone.MonotoneProblem(
        op, jaxdeq.monotone.ReLU(), jr.normal(k2, (n,))
    )


def finite_difference(fn, x, direction, eps=1e-6):
    """Central difference of a scalar function along `direction` (float64)."""
    return (fn(x + eps * direction) - fn(x - eps * direction)) / (2 * eps)


# ---------------------------------------------------------------------------------
# Layers. Every public layer is listed in `layers`, and tests/test_layers.py runs the
# same battery over each: the report contract, vmap against a loop, no recompilation
# when only data changes, parameter gradients against central finite differences in
# float64, a forced failure reported per sample (and raised with `throw=True`), and
# low-precision inputs. Adding a family means adding one `LayerCase`.


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """How the battery builds and calls one layer.

    - `make(key, dtype, *, tol, max_steps, throw)`: the layer, with a forward solve
        to `tol` and an exact (implicit, tight) backward mode, so that gradients can
        be checked against finite differences;
    - `inputs(key, batch, dtype)`: a tuple of batched inputs, mapped over axis 0;
    - `failing(key, batch, dtype)`: `(layer kwargs, inputs, expected)` for a forced
        failure: layer settings (e.g. a tiny `max_steps`) and inputs under which the
        samples where `expected` is True succeed and the others fail;
    - `failure`: the result code a failing sample reports;
    - `call(layer, *inputs)`: one sample's `(output, report)`;
    - `dtypes`: the low-precision dtypes the layer supports;
    - `has_residual`: False for solves with no residual (a fixed-horizon ODE
        reports NaN residuals).
    """

    name: str
    make: Callable
    inputs: Callable
    failing: Callable
    failure: str = "fixed_point_max_steps_reached"
    call: Callable = lambda layer, *xs: layer(*xs)
    dtypes: tuple = (jnp.float32, jnp.bfloat16)
    has_residual: bool = True


class _TanhCell(eqx.Module):
    weight: Array
    inject: Array

    def __call__(self, z, x):
        return jnp.tanh(self.weight @ z + self.inject @ x)


def _contraction(key, n, norm, dtype):
    q = jr.orthogonal(key, n).astype(dtype)
    return (norm * q).astype(dtype)


def _deq_make(key, dtype, *, tol, max_steps, throw):
    k1, k2 = jr.split(key)
    cell = _TanhCell(
        _contraction(k1, 6, 0.8, dtype), (0.5 * jr.normal(k2, (6, 3))).astype(dtype)
    )
    return jaxdeq.DEQ(
        cell,
        y0=jnp.zeros(6, dtype),
        solver=jaxdeq.Anderson(rtol=tol, atol=tol),
        adjoint=tight_implicit,
        max_steps=max_steps,
        throw=throw,
    )


def _vector_inputs(size):
    def inputs(key, batch, dtype):
        return (jr.normal(key, (batch, size)).astype(dtype),)

    return inputs


def _zero_half(size):
    """Inputs whose first half is zero: a layer whose fixed point for x = 0 is its
    initial state succeeds there in one step, and fails with `max_steps=1` on the
    rest."""

    def failing(key, batch, dtype):
        x = jr.normal(key, (batch, size)).astype(dtype)
        expected = jnp.arange(batch) < batch // 2
        x = jnp.where(expected[:, None], jnp.zeros((), dtype), x)
        return {"max_steps": 1}, (x,), expected

    return failing


def _mondeq_make(key, dtype, *, tol, max_steps, throw):
    k1, k2 = jr.split(key)
    return jaxdeq.monotone.MonDEQ(
        jaxdeq.monotone.MonotoneLinear(6, margin=0.5, key=k1, dtype=dtype),
        eqx.nn.Linear(3, 6, use_bias=False, key=k2, dtype=dtype),
        solver=jaxdeq.PeacemanRachford(rtol=tol, atol=tol),
        adjoint=tight_implicit,
        max_steps=max_steps,
        throw=throw,
    )


def _dbm_make(key, dtype, *, tol, max_steps, throw):
    k1, k2 = jr.split(key)
    dbm = jaxdeq.monotone.MonotoneDBM(
        ((2, 3), (1, 2)),
        margin=0.3,
        solver=jaxdeq.PeacemanRachford(rtol=tol, atol=tol),
        adjoint=tight_implicit,
        max_steps=max_steps,
        throw=throw,
        key=k1,
        dtype=dtype,
    )
    return eqx.tree_at(
        lambda d: d.bias, dbm, jr.normal(k2, dbm.bias.shape).astype(dtype)
    )


def _dbm_inputs(key, batch, dtype):
    groups = ((2, 3), (1, 2))
    k1, k2 = jr.split(key)
    cats = jr.randint(k1, (batch, 3), 0, 2)
    values = jax.vmap(lambda c: jaxdeq.monotone.one_hot_groups(c, groups))(cats)
    observed = jr.bernoulli(k2, 0.5, (batch, 3))
    return values.astype(dtype), observed


def _dbm_failing(key, batch, dtype):
    values, _ = _dbm_inputs(key, batch, dtype)
    # Fully clamped samples are solved by their clamp at once; free ones are not.
    expected = jnp.arange(batch) < batch // 2
    observed = jnp.broadcast_to(expected[:, None], (batch, 3))
    return {"max_steps": 1}, (values, observed), expected


class _TanhRefiner(eqx.Module):
    weight: Array

    def __call__(self, u):
        return jnp.tanh(self.weight @ u) - u


def _attractor_make(key, dtype, *, tol, max_steps, throw):
    k1, k2 = jr.split(key)
    backbone = eqx.nn.Linear(3, 6, use_bias=False, key=k1, dtype=dtype)
    return jaxdeq.attractor.AttractorRefiner(
        backbone,
        _TanhRefiner(_contraction(k2, 6, 0.7, dtype)),
        solver=jaxdeq.Anderson(rtol=tol, atol=tol),
        adjoint=tight_implicit,
        min_steps=0,
        max_steps=max_steps,
        throw=throw,
    )


def _classifier_make(key, dtype, *, tol, max_steps, throw):
    # jaxdeq.train.Classifier around the DEQ case: its report is the layer's.
    k1, k2 = jr.split(key)
    return jaxdeq.train.Classifier(
        eqx.nn.Identity(),
        _deq_make(k1, dtype, tol=tol, max_steps=max_steps, throw=throw),
        eqx.nn.Linear(6, 2, key=k2, dtype=dtype),
    )


layers = (
    LayerCase("DEQ", _deq_make, _vector_inputs(3), _zero_half(3)),
    # bfloat16 is the recipe's business (it loosens the layer's tolerances).
    LayerCase(
        "Classifier",
        _classifier_make,
        _vector_inputs(3),
        _zero_half(3),
        dtypes=(jnp.float32,),
    ),
    LayerCase("MonDEQ", _mondeq_make, _vector_inputs(3), _zero_half(3)),
    LayerCase("MonotoneDBM", _dbm_make, _dbm_inputs, _dbm_failing),
    LayerCase("AttractorRefiner", _attractor_make, _vector_inputs(3), _zero_half(3)),
)


class _ODEField(eqx.Module):
    # f(t, y, x) = tanh(W y + U x): zero at y = 0 for x = 0 (or no input).
    weight: Array
    inject: Array

    def __call__(self, t, y, x):
        del t
        drive = 0 if x is None else self.inject @ x
        return jnp.tanh(self.weight @ y + drive)


def _ode_field(key, dtype):
    k1, k2 = jr.split(key)
    weight = (0.5 * jr.normal(k1, (6, 6))).astype(dtype)
    return _ODEField(weight, (0.5 * jr.normal(k2, (6, 3))).astype(dtype))


def _ode_settings(tol, max_steps, throw):
    controller = diffrax.PIDController(rtol=tol, atol=tol)
    return dict(stepsize_controller=controller, max_steps=max_steps, throw=throw)


def _neural_ode_make(key, dtype, *, tol, max_steps, throw):
    return jaxdeq.ode.NeuralODE(
        _ode_field(key, dtype), **_ode_settings(tol, max_steps, throw)
    )


def _homoode_make(key, dtype, *, tol, max_steps, throw):
    return jaxdeq.ode.HomoODE(
        _ode_field(key, dtype),
        jnp.zeros(6, dtype),
        **_ode_settings(tol, max_steps, throw),
    )


def _ode_failing(size):
    # A zero state in a field that vanishes there takes a few growing steps to t1;
    # the others need many more at this tolerance.
    zero_half = _zero_half(size)

    def failing(key, batch, dtype):
        _, inputs, expected = zero_half(key, batch, dtype)
        return {"max_steps": 4}, (2 * inputs[0],), expected

    return failing


def _graph_make(key, dtype, *, tol, max_steps, throw):
    return jaxdeq.graph.ConvergentGraphSolver(
        3,
        2,
        edge_features=1,
        hidden=4,
        heads=2,
        width=8,
        depth=1,
        method="iterate",
        activation="tanh",
        solver=jaxdeq.Anderson(rtol=tol, atol=tol),
        adjoint=tight_implicit,
        max_steps=max_steps,
        throw=throw,
        dtype=dtype,
        key=key,
    )


def _random_graph(seed, dtype, p=0.35):
    rng = np.random.default_rng(seed)
    adj = rng.random((5, 5)) < p
    np.fill_diagonal(adj, False)
    receivers, senders = np.nonzero(adj)
    keep = min(len(senders), 12)
    return jaxdeq.graph.graph(
        rng.normal(size=(5, 3)),
        senders[:keep],
        receivers[:keep],
        rng.normal(size=(keep, 1)),
        max_nodes=6,
        max_edges=12,
        dtype=dtype,
    )


def _stack_graphs(graphs):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *graphs)


def _graph_inputs(key, batch, dtype):
    seed = int(jr.randint(key, (), 0, 2**16))
    return (_stack_graphs([_random_graph(seed + i, dtype) for i in range(batch)]),)


def _graph_failing(key, batch, dtype):
    # A graph without edges is solved at once (T(B) = B); the others are not in
    # one step.
    seed = int(jr.randint(key, (), 0, 2**16))
    expected = jnp.arange(batch) < batch // 2
    graphs = [
        _random_graph(seed + i, dtype, p=0.0 if bool(expected[i]) else 0.6)
        for i in range(batch)
    ]
    return {"max_steps": 1}, (_stack_graphs(graphs),), expected


layers = layers + (
    LayerCase(
        "NeuralODE",
        _neural_ode_make,
        _vector_inputs(6),
        _ode_failing(6),
        failure="max_steps_reached",
        has_residual=False,
    ),
    LayerCase(
        "HomoODE",
        _homoode_make,
        _vector_inputs(3),
        _ode_failing(3),
        failure="max_steps_reached",
        has_residual=False,
    ),
    LayerCase("ConvergentGraphSolver", _graph_make, _graph_inputs, _graph_failing),
)


# ---------------------------------------------------------------------------------
# Sequence solvers (tests/test_deer.py runs them over tanh RNNs and GRUs), and the
# layer built on them.

sequence_solvers = (
    jaxdeq.DEER(rtol=1e-12, atol=1e-12),
    jaxdeq.QuasiDEER(rtol=1e-12, atol=1e-12),
    jaxdeq.ELK(rtol=1e-12, atol=1e-12, diagonal=True),
    jaxdeq.ELK(rtol=1e-12, atol=1e-12),
    jaxdeq.ELK(rtol=1e-12, atol=1e-12, damping=0.1, adaptive=False),
)


class TanhRNN(eqx.Module):
    """h' = tanh(W h + U x + b), contracting for ||W|| < 1."""

    weight: Array
    inject: Array
    bias: Array

    def __call__(self, h, x):
        return jnp.tanh(self.weight @ h + self.inject @ x + self.bias)


def tanh_rnn(key, n=4, m=3, norm=0.8, bias=0.1, dtype=jnp.float64):
    k1, k2, k3 = jr.split(key, 3)
    return TanhRNN(
        _contraction(k1, n, norm, dtype),
        (jr.normal(k2, (n, m)) / math.sqrt(m)).astype(dtype),
        (bias * jr.normal(k3, (n,))).astype(dtype),
    )


class GRU(eqx.Module):
    """A gated recurrent unit: z, r gates, candidate n, h' = (1 - z) n + z h."""

    hidden: Array  # (3, n, n): update, reset, candidate
    inject: Array  # (3, n, m)
    bias: Array  # (3, n)

    def __call__(self, h, x):
        pre = self.inject @ x + self.bias
        z = jax.nn.sigmoid(pre[0] + self.hidden[0] @ h)
        r = jax.nn.sigmoid(pre[1] + self.hidden[1] @ h)
        n = jnp.tanh(pre[2] + r * (self.hidden[2] @ h))
        return (1 - z) * n + z * h


def gru(key, n=4, m=3, dtype=jnp.float64):
    k1, k2, k3 = jr.split(key, 3)
    return GRU(
        (jr.normal(k1, (3, n, n)) / math.sqrt(n)).astype(dtype),
        (jr.normal(k2, (3, n, m)) / math.sqrt(m)).astype(dtype),
        (0.1 * jr.normal(k3, (3, n))).astype(dtype),
    )


def scan_trajectory(cell, h0, xs):
    """The reference: the recurrence by `jax.lax.scan`."""
    return jax.lax.scan(lambda h, x: (cell(h, x), cell(h, x)), h0, xs)[1]


_RNN_LENGTH = 12


def _rnn_make(key, dtype, *, tol, max_steps, throw, fallback=True):
    # Zero bias: a zero input sequence leaves the zero state where it is.
    return jaxdeq.ParallelRNN(
        tanh_rnn(key, n=6, m=3, bias=0.0, dtype=dtype),
        jnp.zeros(6, dtype),
        solver=jaxdeq.DEER(rtol=tol, atol=tol),
        max_steps=max_steps,
        throw=throw,
        fallback=fallback,
    )


def _rnn_inputs(key, batch, dtype):
    return (jr.normal(key, (batch, _RNN_LENGTH, 3)).astype(dtype),)


def _rnn_failing(key, batch, dtype):
    # Zero sequences are solved by the initial guess in one step; the others need
    # more than one Newton step. Without the fallback, they fail.
    (xs,) = _rnn_inputs(key, batch, dtype)
    expected = jnp.arange(batch) < batch // 2
    xs = jnp.where(expected[:, None, None], jnp.zeros((), dtype), xs)
    return {"max_steps": 1, "fallback": False}, (xs,), expected


layers = layers + (
    LayerCase(
        "ParallelRNN",
        _rnn_make,
        _rnn_inputs,
        _rnn_failing,
        failure="nonlinear_max_steps_reached",
    ),
)
