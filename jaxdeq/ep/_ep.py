import dataclasses
import warnings
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import optimistix as optx
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from .._adjoint import ImplicitAdjoint
from .._deq import fixed_point
from .._misc import check_positive_int
from .._solution import first_failure, Report
from .._solver.anderson import Anderson
from ._network import AbstractEnergyNetwork


_ESTIMATORS = ("one_sided", "symmetric", "holomorphic")
_FORMS = ("auto", "energy", "vector_field")


def squared_error(prediction: Array, target: Array) -> Scalar:
    r"""$C = \tfrac12 \|\hat y - y\|^2$, the usual equilibrium-propagation cost.

    Holomorphic in `prediction` (no conjugate), as complex nudging needs.

    **Arguments:**

    - `prediction`: the network's output.
    - `target`: the target, e.g. a one-hot vector; cast to the prediction's dtype.

    **Returns:**

    A scalar.
    """
    diff = prediction - jnp.asarray(target).astype(jnp.result_type(prediction))
    return 0.5 * jnp.sum(diff * diff)


def _default_solver():
    return Anderson(rtol=1e-6, atol=1e-8)


def _check_model(name, model):
    if not isinstance(model, AbstractEnergyNetwork):
        raise TypeError(
            f"{name}: `model` must be a jaxdeq.ep.AbstractEnergyNetwork, e.g. "
            f"jaxdeq.ep.LayeredNetwork((64, 128, 10), key=key); got "
            f"{type(model).__name__}."
        )


def _cost_gradient(model, cost, s, y):
    """$\\nabla_s C(\\text{output}(s), y)$, holomorphic for a complex state."""
    complex_state = jnp.issubdtype(
        jnp.result_type(model.output(s)), jnp.complexfloating
    )

    def c(state):
        out = model.output(state)
        return cost(out, jnp.asarray(y).astype(jnp.result_type(out)))

    return jax.grad(c, holomorphic=complex_state)(s)


# The maps iterated by the phases live at module level: jaxdeq.fixed_point is
# compiled per map, and a fresh closure on every call would recompile it.
def _free_map(s, args):
    model, x = args
    return model.relax(s, x, jtu.tree_map(jnp.zeros_like, s))


def _nudged_step(s, model, x, y, beta, cost):
    grad = _cost_gradient(model, cost, s, y)
    drive = jtu.tree_map(lambda g: -beta * g, grad)
    return model.relax(s, x, drive)


def _nudged_map(s, args):
    return _nudged_step(s, *args)


def _nudged_map_complex(parts, args):
    model, x, y, beta, cost = args
    re, im = parts
    dtype, real_dtype = beta.dtype, jnp.result_type(jtu.tree_leaves(re)[0])
    s = jtu.tree_map(lambda a, b: a.astype(dtype) + 1j * b.astype(dtype), re, im)
    new = _nudged_step(s, model, x, y, beta, cost)
    return (
        jtu.tree_map(lambda a: jnp.real(a).astype(real_dtype), new),
        jtu.tree_map(lambda a: jnp.imag(a).astype(real_dtype), new),
    )


def free_phase(
    model: AbstractEnergyNetwork,
    x: Array,
    *,
    solver: optx.AbstractFixedPointSolver | None = None,
    s0: PyTree[Array] | None = None,
    max_steps: int = 256,
    adjoint: optx.AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
) -> optx.Solution:
    r"""Relax the free network ($\beta = 0$) to its fixed point $s^0$.

    The fixed point of `model.relax(s, x, 0)` by [`jaxdeq.fixed_point`][], so any
    jaxdeq or optimistix solver can be used, and the result is differentiable with
    respect to the model and `x` by implicit differentiation (or by `adjoint`).

    **Arguments:**

    - `model`: a [`jaxdeq.ep.AbstractEnergyNetwork`][].
    - `x`: one input (use `jax.vmap` for a batch).
    - `solver`: default `jaxdeq.Anderson(rtol=1e-6, atol=1e-8)`.
    - `s0`: initial state (default `model.init_state(x)`).
    - `max_steps`: the step budget.
    - `adjoint`: the backward mode, default [`jaxdeq.ImplicitAdjoint`][].
    - `throw`: raise if the relaxation fails (otherwise see `sol.result`).

    **Returns:**

    An [`optimistix.Solution`][]: `sol.value` is $s^0$, `sol.stats` the jaxdeq
    diagnostics (steps, residuals).
    """
    _check_model("jaxdeq.ep.free_phase", model)
    check_positive_int("jaxdeq.ep.free_phase", "max_steps", max_steps)
    solver = _default_solver() if solver is None else solver
    if s0 is None:
        s0 = model.init_state(x)

    return fixed_point(
        _free_map,
        solver,
        s0,
        (model, x),
        max_steps=max_steps,
        adjoint=adjoint,
        throw=throw,
    )


def nudged_phase(
    model: AbstractEnergyNetwork,
    x: Array,
    y: Array,
    beta: complex | Array,
    s0: PyTree[Array],
    *,
    cost: Callable[[Array, Array], Scalar] = squared_error,
    solver: optx.AbstractFixedPointSolver | None = None,
    max_steps: int = 256,
    throw: bool = True,
) -> optx.Solution:
    r"""Relax the nudged network: a fixed point of $f(s; x) - \beta \nabla_s C = 0$.

    Starts from `s0` (usually the free fixed point). `beta` may be negative or
    complex; a complex state is solved as its real and imaginary parts, so every real
    fixed-point solver applies. No gradient flows through this phase (equilibrium
    propagation does not need one).

    **Arguments:**

    - `model`: a [`jaxdeq.ep.AbstractEnergyNetwork`][].
    - `x`, `y`: one input and its target.
    - `beta`: the nudging strength (real or complex Python or JAX scalar).
    - `s0`: where the relaxation starts, e.g. `free_phase(...).value`.
    - `cost`: `cost(prediction, target) -> scalar`, holomorphic in `prediction`
        for complex `beta`. Default [`jaxdeq.ep.squared_error`][].
    - `solver`, `max_steps`, `throw`: as in [`jaxdeq.ep.free_phase`][].

    **Returns:**

    An [`optimistix.Solution`][] whose `value` is $s^\beta$ (complex when `beta` is).
    """
    _check_model("jaxdeq.ep.nudged_phase", model)
    check_positive_int("jaxdeq.ep.nudged_phase", "max_steps", max_steps)
    solver = _default_solver() if solver is None else solver
    model, x, y, s0 = lax.stop_gradient((model, x, y, s0))
    beta = jnp.asarray(beta)
    real_dtype = jnp.result_type(jtu.tree_leaves(s0)[0])
    is_complex = jnp.issubdtype(beta.dtype, jnp.complexfloating)
    if is_complex:
        dtype = jnp.dtype(f"complex{2 * jnp.finfo(real_dtype).bits}")
    else:
        dtype = real_dtype
    beta = beta.astype(dtype)

    if is_complex:
        start = (s0, jtu.tree_map(jnp.zeros_like, s0))
        fn = _nudged_map_complex
    else:
        start, fn = s0, _nudged_map

    args = (model, x, y, beta, cost)
    sol = fixed_point(fn, solver, start, args, max_steps=max_steps, throw=throw)
    if is_complex:
        re, im = sol.value
        value = jtu.tree_map(
            lambda a, b: a.astype(dtype) + 1j * b.astype(dtype), re, im
        )
        sol = eqx.tree_at(lambda s: s.value, sol, value)
    return sol


def _nudges(estimator, beta, num_nudges, dtype):
    """Nudging strengths and the weights of the derivative estimate at beta = 0."""
    beta = beta.astype(dtype)
    if estimator == "one_sided":
        return [beta], [1 / beta]
    if estimator == "symmetric":
        return [beta, -beta], [1 / (2 * beta), -1 / (2 * beta)]
    # Cauchy's formula for d/dbeta at 0 on the circle |beta| = r by the trapezoidal
    # rule, (1/N) sum_k g(beta_k) / beta_k: its error is O(r^N).
    complex_dtype = jnp.dtype(f"complex{2 * jnp.finfo(dtype).bits}")
    angles = 2 * jnp.pi * jnp.arange(num_nudges, dtype=dtype) / num_nudges
    points = beta.astype(complex_dtype) * jnp.exp(1j * angles.astype(complex_dtype))
    points = [points[k] for k in range(num_nudges)]
    return points, [1 / (num_nudges * p) for p in points]


class EPStats(eqx.Module):
    """Deprecated: [`jaxdeq.ep.ep_gradient`][] now returns a [`jaxdeq.Report`][].

    Kept importable for one release; constructing one warns. The fields map to the
    report as `loss` -> `report.extra["loss"]`, `prediction` ->
    `report.extra["prediction"]`, `free_steps`, `free_residual` ->
    `report.num_steps`, `report.rel_residual` (the free phase's), and
    `nudged_steps`, `nudged_residual` -> `report.extra["nudged"].num_steps`,
    `.rel_residual`.

    **Fields:**

    - `loss`: the cost at the free fixed point.
    - `free_steps`, `free_residual`: steps and relative residual of the free phase.
    - `nudged_steps`, `nudged_residual`: the same for each nudged phase, shape
        `(num_nudges,)`.
    - `prediction`: the output at the free fixed point.
    """

    loss: Array
    free_steps: Array
    free_residual: Array
    nudged_steps: Array
    nudged_residual: Array
    prediction: Array

    def __check_init__(self):
        warnings.warn(
            "jaxdeq.ep.EPStats is deprecated: ep_gradient returns a jaxdeq.Report; "
            "read `report.num_steps`, `report.rel_residual` (free phase), "
            "`report.extra['nudged']`, `report.extra['loss']` and "
            "`report.extra['prediction']`.",
            DeprecationWarning,
            stacklevel=2,
        )


def ep_gradient(
    model: AbstractEnergyNetwork,
    x: Array,
    y: Array,
    *,
    beta: float = 0.1,
    estimator: Literal["one_sided", "symmetric", "holomorphic"] = "symmetric",
    num_nudges: int = 4,
    form: Literal["auto", "energy", "vector_field"] = "auto",
    cost: Callable[[Array, Array], Scalar] = squared_error,
    solver: optx.AbstractFixedPointSolver | None = None,
    max_steps: int = 256,
    throw: bool = True,
) -> tuple[PyTree, Report]:
    r"""The equilibrium-propagation estimate of $\partial L / \partial \theta$, with
    $L = C(\text{output}(s^0), y)$ at the free fixed point $s^0$.

    With $F = E + \beta C$ and $s^\beta$ the nudged fixed point, the estimates of
    $\frac{d}{d\beta}\,\partial_\theta F(s^\beta)\big|_{\beta=0}$ are

    - `"one_sided"` (Scellier & Bengio 2017):
        $\frac{1}{\beta}\big(\partial_\theta F(s^\beta) - \partial_\theta F(s^0)\big)$,
        bias $O(\beta)$;
    - `"symmetric"`: $\frac{1}{2\beta}\big(\partial_\theta F(s^{\beta}) -
        \partial_\theta F(s^{-\beta})\big)$, bias $O(\beta^2)$;
    - `"holomorphic"` (Laborieux & Zenke 2022): $N$ = `num_nudges` complex nudges
        $\beta_k = \beta e^{2\pi i k / N}$ and
        $\mathrm{Re}\,\frac1N \sum_k \partial_\theta F(s^{\beta_k}) / \beta_k$, bias
        $O(\beta^N)$; $N = 2$ is the symmetric estimator.

    `form="energy"` uses these differences of $\partial_\theta F$ (needs
    `model.has_energy`). `form="vector_field"` is generalised EP for any vector field
    $f$: it estimates $\frac{ds^\beta}{d\beta}$ with the same weights and returns
    $\partial_\theta C - \big(\frac{ds}{d\beta}\big)^\top \partial_\theta f(s^0)$, which
    equals the true gradient when $\partial f / \partial s$ is symmetric at $s^0$ and
    is biased otherwise (see [`jaxdeq.ep.homeostatic_loss`][]). `"auto"` picks
    `"energy"` when the model has one.

    **Arguments:**

    - `model`: a [`jaxdeq.ep.AbstractEnergyNetwork`][].
    - `x`, `y`: one input and its target (`jax.vmap` for a batch, then average).
    - `beta`: the nudging strength $> 0$ (the radius of the circle for
        `"holomorphic"`).
    - `estimator`, `num_nudges`, `form`: as above; `num_nudges` is used by
        `"holomorphic"` only and must be at least 2.
    - `cost`: `cost(prediction, target) -> scalar`.
    - `solver`, `max_steps`: for every relaxation, as in
        [`jaxdeq.ep.free_phase`][].
    - `throw`: raise if any relaxation fails (default `True`, as optimistix's
        functions do); with `False` the failure is only reported.

    **Returns:**

    `(grads, report)`: `grads` has the structure of `model` (as from
    `equinox.filter_grad`: arrays for its floating-point leaves), to pass to optax;
    `report` is a [`jaxdeq.Report`][]: the free phase's (`num_steps`,
    `num_fn_evals`, residuals and trace of the free relaxation), except that its
    `result` is a failure if any phase failed (the free phase's own, else the first
    failing nudge's). `report.extra` holds `"free"` (the free phase's own
    report), `"nudged"` (the nudged phases' reports, one `jaxdeq.Report` whose
    fields have a leading axis of length `len(nudges)`: 1 for `"one_sided"`, 2 for
    `"symmetric"`, `num_nudges` for `"holomorphic"`), `"loss"` (the cost at the free
    fixed point) and `"prediction"` (the output there). Under `jax.vmap`, every
    field gets the batch axis first.

    **Raises:**

    `ValueError` for a non-positive `beta`, an unknown estimator or form,
    `num_nudges < 2`, or `form="energy"` on a model without an energy. With
    `throw=True`, a runtime error carrying the result's message when a relaxation
    fails.

    ??? cite "References"

        ```bibtex
        @article{scellier2017equilibrium,
            author = {Scellier, Benjamin and Bengio, Yoshua},
            title = {Equilibrium Propagation: Bridging the Gap between Energy-Based
                     Models and Backpropagation},
            journal = {Frontiers in Computational Neuroscience},
            volume = {11},
            year = {2017},
        }
        @inproceedings{laborieux2022holomorphic,
            author = {Laborieux, Axel and Zenke, Friedemann},
            title = {Holomorphic Equilibrium Propagation Computes Exact Gradients
                     Through Finite Size Oscillations},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2022},
        }
        ```
    """
    name = "jaxdeq.ep.ep_gradient"
    _check_model(name, model)
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"{name}: `estimator` must be one of {_ESTIMATORS}, got {estimator!r}."
        )
    if form not in _FORMS:
        raise ValueError(f"{name}: `form` must be one of {_FORMS}, got {form!r}.")
    if isinstance(beta, complex) or not float(beta) > 0:
        raise ValueError(
            f"{name}: `beta` must be a positive real number (the sign and phase of the "
            f"nudges come from `estimator`), got {beta!r}. Try beta=0.1."
        )
    check_positive_int(name, "num_nudges", num_nudges, minimum=2)
    if form == "auto":
        form = "energy" if model.has_energy else "vector_field"
    if form == "energy" and not model.has_energy:
        raise ValueError(
            f"{name}: form='energy' needs a model with an energy (model.has_energy is "
            "False); use form='vector_field' (generalised EP)."
        )
    return _ep_gradient(
        model,
        x,
        y,
        jnp.asarray(float(beta)),
        estimator,
        num_nudges,
        form,
        cost,
        _default_solver() if solver is None else solver,
        max_steps,
        throw,
    )


@eqx.filter_jit
def _ep_gradient(
    model, x, y, beta, estimator, num_nudges, form, cost, solver, max_steps, throw
):
    free = free_phase(model, x, solver=solver, max_steps=max_steps, throw=False)
    s_free = lax.stop_gradient(free.value)
    dtype = jnp.result_type(jtu.tree_leaves(s_free)[0])
    points, weights = _nudges(estimator, beta, num_nudges, dtype)
    nudged = [
        nudged_phase(
            model,
            x,
            y,
            b,
            s_free,
            cost=cost,
            solver=solver,
            max_steps=max_steps,
            throw=False,
        )
        for b in points
    ]
    states = [sol.value for sol in nudged]
    if estimator == "one_sided":
        states = [s_free] + states
        weights = [-weights[0]] + weights
        points = [jnp.zeros((), dtype)] + points

    def c(m, s):
        out = m.output(s)
        return cost(out, jnp.asarray(y).astype(jnp.result_type(out)))

    def surrogate(m):
        if form == "energy":
            total = jnp.zeros((), dtype)
            for w, b, s in zip(weights, points, states):
                s = lax.stop_gradient(s)
                f_value = m.energy(s, x) + b * c(m, s)
                total = total + jnp.real(w * f_value).astype(dtype)
            return total
        # Generalised EP: ds/dbeta by the same rule, then
        # dC/dtheta - (ds/dbeta)^T df/dtheta at the free fixed point.
        ds = jtu.tree_map(
            lambda *leaves: sum(jnp.real(w * leaf) for w, leaf in zip(weights, leaves)),
            *states,
        )
        ds = lax.stop_gradient(jtu.tree_map(lambda d, s: d.astype(s.dtype), ds, s_free))
        field = m.vector_field(s_free, x)
        inner = sum(
            jnp.sum(d * f) for d, f in zip(jtu.tree_leaves(ds), jtu.tree_leaves(field))
        )
        return c(m, s_free) - inner

    grads = eqx.filter_grad(surrogate)(model)
    free_report = Report.from_solution(free)
    nudged_report = jtu.tree_map(
        lambda *leaves: jnp.stack(leaves),
        *[Report.from_solution(sol) for sol in nudged],
    )
    results = jtu.tree_map(
        lambda a, b: jnp.concatenate([a[None], b]),
        free_report.result,
        nudged_report.result,
    )
    report = dataclasses.replace(
        free_report,
        result=first_failure(results),
        extra={
            "free": free_report,
            "nudged": nudged_report,
            "loss": c(model, s_free),
            "prediction": model.output(s_free),
        },
    )
    if throw:
        grads = report.result.error_if(grads, ~report.successful)
    return grads, report


def implicit_gradient(
    model: AbstractEnergyNetwork,
    x: Array,
    y: Array,
    *,
    cost: Callable[[Array, Array], Scalar] = squared_error,
    solver: optx.AbstractFixedPointSolver | None = None,
    max_steps: int = 256,
    adjoint: optx.AbstractAdjoint = ImplicitAdjoint(),
    throw: bool = True,
) -> tuple[Scalar, PyTree]:
    r"""The exact gradient that equilibrium propagation estimates, for comparison.

    $L(\theta) = C(\text{output}(s^0(\theta)), y)$ differentiated through the free
    phase by `adjoint`: implicit differentiation by default (what the EP estimate
    converges to as $\beta \to 0$ for a symmetric network), or
    `optimistix.RecursiveCheckpointAdjoint()` for backpropagation through the
    relaxation's iterations.

    **Arguments:**

    - `model`, `x`, `y`, `cost`, `solver`, `max_steps`, `throw`: as in
        [`jaxdeq.ep.ep_gradient`][].
    - `adjoint`: the backward mode of the free phase.

    **Returns:**

    `(loss, grads)` with `grads` shaped like `model`.
    """
    _check_model("jaxdeq.ep.implicit_gradient", model)

    def loss(m):
        s = free_phase(
            m, x, solver=solver, max_steps=max_steps, adjoint=adjoint, throw=throw
        ).value
        out = m.output(s)
        return cost(out, jnp.asarray(y).astype(jnp.result_type(out)))

    return eqx.filter_value_and_grad(loss)(model)


def homeostatic_loss(
    model: AbstractEnergyNetwork,
    s: PyTree[Array],
    x: Array,
    *,
    key: PRNGKeyArray | None = None,
    num_samples: int = 1,
    method: Literal["antisymmetric", "two_jvp"] = "antisymmetric",
) -> Scalar:
    r"""Jacobian homeostasis: the asymmetry of the network's Jacobian at a state.

    With $J = \partial f / \partial s$ at `s` (usually the free fixed point, passed
    through `jax.lax.stop_gradient`) and $n$ the state size,

    $$L_h = \frac{\|J - J^\top\|_F^2}{2n}
    = \frac{1}{2n} \mathbb{E}_\varepsilon \|(J - J^\top)\varepsilon\|^2
    = \frac1n \mathbb{E}_\varepsilon\big[\|J\varepsilon\|^2
    - \varepsilon^\top J^2 \varepsilon\big],\quad \varepsilon \sim N(0, I).$$

    Exact (from the dense Jacobian) when `key` is `None`; otherwise an unbiased
    estimate with `num_samples` Gaussian probes that never forms $J$:
    `method="antisymmetric"` (default) uses one Jacobian–vector and one
    vector–Jacobian product per probe and the middle form, in which any symmetric part
    of $J$ cancels exactly, so the estimate is non-negative and its variance does not
    grow with a stiff diagonal (e.g. saturated sigmoid units);
    `method="two_jvp"` uses the last form, two Jacobian–vector products as in
    Laborieux & Zenke (forward-mode only, but noisy when $J$ has a large symmetric
    part). Zero exactly when $J$ is symmetric, where generalised EP is unbiased;
    adding $\lambda L_h$ to the training loss reduces the bias of asymmetric networks
    (Laborieux & Zenke report $\lambda$ from 0.1 to 15).

    **Arguments:**

    - `model`: a [`jaxdeq.ep.AbstractEnergyNetwork`][].
    - `s`: the state, e.g. `jax.lax.stop_gradient(free_phase(model, x).value)`.
    - `x`: the input.
    - `key`: PRNG key for the stochastic estimate, or `None` for the exact value.
    - `num_samples`: probes of the stochastic estimate.
    - `method`: `"antisymmetric"` or `"two_jvp"`, as above.

    **Returns:**

    A scalar, differentiable with respect to `model`.

    ??? cite "References"

        ```bibtex
        @inproceedings{laborieux2024improving,
            author = {Laborieux, Axel and Zenke, Friedemann},
            title = {Improving equilibrium propagation without weight symmetry
                     through Jacobian homeostasis},
            booktitle = {International Conference on Learning Representations},
            year = {2024},
        }
        ```
    """
    name = "jaxdeq.ep.homeostatic_loss"
    _check_model(name, model)
    check_positive_int(name, "num_samples", num_samples)
    if method not in ("antisymmetric", "two_jvp"):
        raise ValueError(
            f"{name}: `method` must be 'antisymmetric' or 'two_jvp', got {method!r}."
        )
    flat, unravel = jfu.ravel_pytree(s)
    n = flat.shape[0]

    def field(v):
        return jfu.ravel_pytree(model.vector_field(unravel(v), x))[0]

    if key is None:
        jac = jax.jacfwd(field)(flat)
        return jnp.sum((jac - jac.T) ** 2) / (2 * n)
    eps = jr.normal(key, (num_samples, n), flat.dtype)
    if method == "antisymmetric":
        _, vjp = jax.vjp(field, flat)

        def one(e):
            _, je = jax.jvp(field, (flat,), (e,))
            (jte,) = vjp(e)
            return 0.5 * jnp.sum((je - jte) ** 2)
    else:

        def one(e):
            _, je = jax.jvp(field, (flat,), (e,))
            _, jje = jax.jvp(field, (flat,), (je,))
            return jnp.sum(je * je) - jnp.sum(e * jje)

    return jnp.mean(jax.vmap(one)(eps)) / n
