"""Continuous-time models solved by PINNs: the common interface and the solve loop."""

import abc
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Scalar

from .._solution import RESULTS
from ..pinn import accuracy_report, fit, FitResult, HJB
from ._checks import check_int, check_real


def crra(c: ArrayLike, gamma: float | Array) -> Array:
    r"""CRRA utility $u(c) = c^{1-\gamma}/(1-\gamma)$, and $\log c$ at $\gamma = 1$."""
    c = jnp.asarray(c)
    if isinstance(gamma, (int, float)):
        if gamma == 1:
            return jnp.log(c)
        return c ** (1 - gamma) / (1 - gamma)
    # An array gamma (a parameter of an economy) may be 1: both branches stay
    # finite, so that neither poisons the other's derivative.
    log = gamma == 1
    safe = jnp.where(log, 2 * jnp.ones_like(gamma), gamma)
    return jnp.where(log, jnp.log(c), c ** (1 - safe) / (1 - safe))


def positive_marginal_value(dV: Array) -> Array:
    """$V'$ floored at $10^{-12}$, so that the first-order condition
    $c = (V')^{-1/\\gamma}$ stays finite while a network is still far from a value
    function that is increasing in wealth (the residual is then large, and pushes
    it back)."""
    return jnp.maximum(dV, 1e-12)


class AbstractHJBModel(eqx.Module):
    """A continuous-time model whose value function solves an
    [`jaxdeq.pinn.HJB`][] equation, in the form that [`jaxdeq.econ.solve_hjb`][]
    solves and checks.

    A model says: its equation (`hjb`), the box its network normalises from and
    the points it trains on (`sample`), the network with its hard conditions
    (`value_network`), where its accuracy is reported (`evaluation_points`) and
    its named policies (`policies`). A model that knows its closed form subclasses
    [`jaxdeq.econ.AbstractClosedFormHJBModel`][] instead, which adds `value_true`
    and `policies_true`.

    Three hooks are abstract too, so that a model states them rather than
    inheriting a silent default: `shape_violation` (a shape penalty, or
    [`jaxdeq.econ.no_shape_violation`][]), `residual_scale` (what the residual is
    divided by, usually [`jaxdeq.econ.discount_scale`][]) and `initial_guess` (a
    value function an economist would start an iteration from, such as the value
    of staying at the current state forever, or `None`). The network is fitted to
    an initial guess before the residual is minimised, which puts the optimiser in
    the basin of the right solution of an equation that has several.
    """

    @abc.abstractmethod
    def hjb(self) -> HJB:
        """The equation."""

    @abc.abstractmethod
    def value_network(self, key: PRNGKeyArray, width: int, depth: int) -> Callable:
        """A fresh network `z -> V(z)` that satisfies the model's hard conditions."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, num: int) -> Float[Array, "num n"]:
        """`num` training points."""

    @abc.abstractmethod
    def evaluation_points(self, num: int) -> Float[Array, "num n"]:
        """Where the accuracy is reported."""

    @abc.abstractmethod
    def policies(self, value_fn: Callable, z: Float[Array, " n"]) -> dict[str, Array]:
        """Named policies at one point, from the first-order conditions."""

    @abc.abstractmethod
    def shape_violation(self, value_fn: Callable, z: Float[Array, " n"]) -> Scalar:
        """A non-negative measure of how far `value_fn` is from the shape the
        value function is known to have at `z` (for example
        [`jaxdeq.pinn.shape_violation`][] for one that is increasing and concave),
        added to the loss with `shape_weight`. A model that knows no shape returns
        [`jaxdeq.econ.no_shape_violation`][]`(value_fn, z)`, a zero."""

    @abc.abstractmethod
    def residual_scale(self, z: Float[Array, " n"], terms: dict[str, Scalar]) -> Scalar:
        r"""What the residual at `z` is divided by (see
        [`jaxdeq.pinn.HJB.residual`][]; `terms` are the equation's named terms).
        Most models return [`jaxdeq.econ.discount_scale`][]`(z, terms)`,
        $|\rho V|$; a model whose value function crosses or touches zero returns
        another positive scale of the equation's terms."""

    @abc.abstractmethod
    def initial_guess(self, z: Float[Array, " n"]) -> Scalar | None:
        """A value function at `z` that the network is fitted to before the
        residual is minimised (for example the value of staying at the current
        state forever), or `None` for no such fit."""


def no_shape_violation(value_fn: Callable, z: Float[Array, " n"]) -> Scalar:
    """The [`jaxdeq.econ.AbstractHJBModel.shape_violation`][] of a model that knows
    no shape of its value function: zero, in the dtype of `z`."""
    del value_fn
    return jnp.zeros((), jnp.result_type(z))


def discount_scale(z: Float[Array, " n"], terms: dict[str, Scalar]) -> Scalar:
    r"""The usual [`jaxdeq.econ.AbstractHJBModel.residual_scale`][]: $|\rho V(z)|$,
    the size of the discount term, which is bounded away from zero wherever the
    value function is."""
    del z
    return jnp.abs(terms["discount"])


class AbstractClosedFormHJBModel(AbstractHJBModel):
    r"""An [`jaxdeq.econ.AbstractHJBModel`][] that knows its solution in closed form:
    the marker of that capability (test it with `isinstance`), as diffrax marks
    adaptive or implicit solvers.

    [`jaxdeq.econ.evaluate_hjb`][] and [`jaxdeq.econ.solve_hjb`][] report the errors
    of the value and of every policy against `value_true` and `policies_true` when
    `has_closed_form` is true: a model whose closed form holds only for some
    parameter values (e.g. [`jaxdeq.econ.Growth`][], at $\gamma = \alpha$) says
    so there.
    """

    has_closed_form: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def value_true(self, z: Float[Array, " n"]) -> Scalar:
        """The closed-form value function at one point."""

    @abc.abstractmethod
    def policies_true(self, z: Float[Array, " n"]) -> dict[str, Array]:
        """The closed-form policies at one point, named as in `policies`."""


def has_closed_form(model: AbstractHJBModel) -> bool:
    """Whether a model's closed form is known at its parameters: an
    [`jaxdeq.econ.AbstractClosedFormHJBModel`][] whose `has_closed_form` is true."""
    return isinstance(model, AbstractClosedFormHJBModel) and bool(model.has_closed_form)


class HJBSolution(eqx.Module):
    """What [`jaxdeq.econ.solve_hjb`][] returns.

    **Attributes:**

    - `model`: the model solved.
    - `value`: the trained network, `value(z) -> V`.
    - `fit`: the [`jaxdeq.pinn.FitResult`][] of the residual minimisation (loss
        history per term, steps, time).
    - `report`: a dict: `"value"` and one entry per policy with the accuracy
        against the closed form ([`jaxdeq.pinn.accuracy_report`][]), when the
        model has one; `"residual"` with the mean and max absolute normalised
        residual at the evaluation points; `"wall_time"`.
    """

    model: AbstractHJBModel
    value: Callable
    fit: FitResult
    report: dict[str, Any]

    @property
    def result(self) -> RESULTS:
        """The fit's [`jaxdeq.RESULTS`][] (see [`jaxdeq.pinn.FitResult`][])."""
        return self.fit.result

    def policies(self, z: Float[Array, "num n"]) -> dict[str, Array]:
        """The named policies at a batch of points."""
        return jax.vmap(lambda p: self.model.policies(self.value, p))(z)


def _relative_fit_loss(target: Callable) -> Callable:
    def loss(value, points):
        v = jax.vmap(value)(points)
        t = jax.vmap(target)(points)
        err = jnp.mean(((v - t) / jnp.abs(t)) ** 2)
        return err, {"guess": err}

    return loss


def evaluate_hjb(
    model: AbstractHJBModel, value: Callable, num: int = 1000
) -> dict[str, Any]:
    """The accuracy report of a value function for a model: residuals at the
    evaluation points and, when the model has a closed form, the errors of the
    value and of every policy (see [`jaxdeq.econ.HJBSolution`][])."""
    z = model.evaluation_points(num)
    hjb = model.hjb()
    res = jnp.abs(
        jax.vmap(lambda p: hjb.residual(value, p, normalise=model.residual_scale))(z)
    )
    report: dict[str, Any] = {
        "residual": {"mean_abs": float(jnp.mean(res)), "max_abs": float(jnp.max(res))}
    }
    if not has_closed_form(model):
        return report
    assert isinstance(model, AbstractClosedFormHJBModel)
    v_true = jax.vmap(model.value_true)(z)
    p_true = jax.vmap(model.policies_true)(z)
    report["value"] = accuracy_report(jax.vmap(value)(z), v_true)
    policies = jax.vmap(lambda p: model.policies(value, p))(z)
    for name, true in p_true.items():
        report[name] = accuracy_report(policies[name], true)
    return report


class PINN(eqx.Module):
    """How [`jaxdeq.econ.solve_hjb`][] trains a physics-informed network on a
    model's HJB equation: the network, the training points and the optimiser.

    The steps: build the model's network (its hard conditions by construction);
    if the model has an `initial_guess`, fit the network to it (Adam then
    L-BFGS, `guess_steps` each); minimise the mean squared normalised residual
    on the model's training points plus `shape_weight` times the model's shape
    penalty, by Adam then L-BFGS ([`jaxdeq.pinn.fit`][]).

    **Arguments:**

    - `num_points`: training points, drawn by the model's `sample`.
    - `width`, `depth`: the network's hidden width and depth.
    - `adam_steps`, `lbfgs_steps`, `log_every`: as in [`jaxdeq.pinn.fit`][].
    - `learning_rate`: Adam's; `None` (the default) is 1e-3, or 1e-4 after a fit
        to an initial guess (small steps keep the optimiser in the guess's basin).
    - `guess_steps`: Adam and L-BFGS steps of the fit to the initial guess (0: no
        such fit).
    - `shape_weight`: the weight of the model's shape penalty
        ([`jaxdeq.econ.AbstractHJBModel.shape_violation`][]) in the loss.
    - `resample_every`: draw fresh training points every this many Adam steps
        (`None`: one fixed set). In many dimensions a fixed set is overfitted;
        L-BFGS always runs on the last set drawn.

    The defaults suit the one- and two-state models of `jaxdeq.econ`; the LQR in
    20 dimensions wants `PINN(num_points=4096, width=64, resample_every=100,
    lbfgs_steps=2000)`.

    **Raises:**

    `TypeError` for a count that is not an int or a weight that is not a number,
    `ValueError` for one out of range.
    """

    num_points: int = 256
    width: int = 32
    depth: int = 3
    adam_steps: int = 3000
    lbfgs_steps: int = 3000
    learning_rate: float | None = None
    guess_steps: int = 500
    shape_weight: float = 1.0
    resample_every: int | None = None
    log_every: int = 250

    def __check_init__(self):
        for label, minimum, example in (
            ("num_points", 1, 256),
            ("width", 1, 32),
            ("depth", 1, 3),
            ("adam_steps", 0, 3000),
            ("lbfgs_steps", 0, 3000),
            ("guess_steps", 0, 500),
            ("log_every", 1, 250),
        ):
            check_int("PINN", label, getattr(self, label), minimum, example)
        if self.resample_every is not None:
            check_int("PINN", "resample_every", self.resample_every, 1, 100)
        if self.learning_rate is not None:
            check_real("PINN", "learning_rate", self.learning_rate, 1e-3, positive=True)
        check_real("PINN", "shape_weight", self.shape_weight, 1.0)
        if self.adam_steps + self.lbfgs_steps == 0:
            raise ValueError(
                "PINN: `adam_steps` and `lbfgs_steps` are both 0, so the residual "
                "would not be minimised at all. Pass e.g. `adam_steps=3000, "
                "lbfgs_steps=3000`."
            )


def solve_hjb(
    model: AbstractHJBModel,
    solver: PINN = PINN(),
    *,
    key: PRNGKeyArray,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> HJBSolution:
    """Solve a model's HJB equation with a PINN and check it.

    Trains the network as `solver` says ([`jaxdeq.econ.PINN`][]), then reports
    its accuracy ([`jaxdeq.econ.evaluate_hjb`][]). Runs in the default float
    dtype; use float64 (`jax.config.update("jax_enable_x64", True)`) for
    accuracies below about 1e-4, which is the regime L-BFGS is there for.

    **Arguments:**

    - `model`: an [`jaxdeq.econ.AbstractHJBModel`][].
    - `solver`: the [`jaxdeq.econ.PINN`][] settings.
    - `key`: a JAX PRNG key (network initialisation, training points).
    - `progress`: a callback for progress bars, as in [`jaxdeq.pinn.fit`][]; the
        initial-guess phase reports `phase="guess"`.

    **Returns:**

    An [`jaxdeq.econ.HJBSolution`][].

    **Raises:**

    `TypeError` when `model` is not an `AbstractHJBModel` or `solver` not a
    `PINN`.
    """
    if not isinstance(model, AbstractHJBModel):
        raise TypeError(
            "solve_hjb: `model` must subclass jaxdeq.econ.AbstractHJBModel, got "
            f"{type(model).__name__}. Pass e.g. `jaxdeq.econ.CakeEating()`."
        )
    if not isinstance(solver, PINN):
        raise TypeError(
            "solve_hjb: `solver` must be a jaxdeq.econ.PINN, got "
            f"{type(solver).__name__}. Pass e.g. `jaxdeq.econ.PINN(adam_steps=1000)`."
        )
    start = time.perf_counter()
    key_net, key_points, key_guess, key_fit = jr.split(key, 4)
    value = model.value_network(key_net, solver.width, solver.depth)
    points = model.sample(key_points, solver.num_points)
    resample_every = solver.resample_every

    def sample(key, params):
        del params
        if resample_every is None:
            return points
        return model.sample(key, solver.num_points)

    has_guess = model.initial_guess(points[0]) is not None and solver.guess_steps > 0
    learning_rate = solver.learning_rate
    if learning_rate is None:
        learning_rate = 1e-4 if has_guess else 1e-3
    if has_guess:

        def guess_progress(info):
            if progress is not None:
                progress({**info, "phase": "guess"})

        value = fit(
            _relative_fit_loss(model.initial_guess),
            value,
            sample,
            key=key_guess,
            adam_steps=solver.guess_steps,
            lbfgs_steps=solver.guess_steps,
            learning_rate=1e-3,
            log_every=solver.log_every,
            progress=guess_progress,
        ).params
    hjb = model.hjb()
    shape_weight = solver.shape_weight

    def loss(value, points):
        r = jax.vmap(lambda z: hjb.residual(value, z, normalise=model.residual_scale))(
            points
        )
        shape = jnp.mean(jax.vmap(lambda z: model.shape_violation(value, z))(points))
        residual = jnp.mean(r**2)
        return residual + shape_weight * shape, {"hjb": residual, "shape": shape}

    result = fit(
        loss,
        value,
        sample,
        key=key_fit,
        adam_steps=solver.adam_steps,
        lbfgs_steps=solver.lbfgs_steps,
        learning_rate=learning_rate,
        resample_every=resample_every,
        log_every=solver.log_every,
        progress=progress,
    )
    report = evaluate_hjb(model, result.params)
    report["wall_time"] = time.perf_counter() - start
    return HJBSolution(model=model, value=result.params, fit=result, report=report)


def _log_uniform_and_uniform(key, num, low_log, low, high):
    """Half the points log-uniform on [low_log, high] (dense near a borrowing
    limit), half uniform on [low, high]."""
    k1, k2 = jr.split(key)
    n1 = num // 2
    a = jnp.exp(jr.uniform(k1, (n1,), minval=np.log(low_log), maxval=np.log(high)))
    b = jr.uniform(k2, (num - n1,), minval=low, maxval=high)
    return jnp.concatenate([a, b])[:, None]
