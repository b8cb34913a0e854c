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
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .._solution import RESULTS
from ..pinn import accuracy_report, fit, FitResult, HJB


def crra(c: Array, gamma: float | Array) -> Array:
    r"""CRRA utility $u(c) = c^{1-\gamma}/(1-\gamma)$, and $\log c$ at $\gamma = 1$."""
    if isinstance(gamma, (int, float)) and gamma == 1:
        return jnp.log(c)
    return c ** (1 - gamma) / (1 - gamma)


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


def solve_hjb(
    model: AbstractHJBModel,
    *,
    key: PRNGKeyArray | None = None,
    num_points: int = 256,
    width: int = 32,
    depth: int = 3,
    adam_steps: int = 3000,
    lbfgs_steps: int = 3000,
    learning_rate: float | None = None,
    guess_steps: int = 500,
    shape_weight: float = 1.0,
    resample_every: int | None = None,
    log_every: int = 250,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> HJBSolution:
    """Solve a model's HJB equation with a PINN and check it.

    The steps: build the model's network (its hard conditions by construction);
    if the model has an `initial_guess`, fit the network to it (Adam then
    L-BFGS, `guess_steps` each); minimise the mean squared normalised residual
    on the model's training points by Adam then L-BFGS
    plus `shape_weight` times the model's shape penalty
    ([`jaxdeq.pinn.fit`][]); report the accuracy
    ([`jaxdeq.econ.evaluate_hjb`][]). Runs in the default float dtype; use float64
    (`jax.config.update("jax_enable_x64", True)`) for accuracies below about
    1e-4, which is the regime L-BFGS is there for.

    **Arguments:**

    - `model`: an [`jaxdeq.econ.AbstractHJBModel`][].
    - `key`: PRNG key (default `jax.random.PRNGKey(0)`).
    - `num_points`: training points (a fixed set).
    - `width`, `depth`: the network's hidden width and depth.
    - `adam_steps`, `lbfgs_steps`, `log_every`: as in [`jaxdeq.pinn.fit`][].
    - `learning_rate`: Adam's; by default 1e-3, or 1e-4 after a fit to an
        initial guess (small steps keep the optimiser in the guess's basin).
    - `guess_steps`: Adam and L-BFGS steps of the fit to the initial guess.
    - `resample_every`: draw fresh training points every this many Adam steps
        (`None`: one fixed set). In many dimensions a fixed set is overfitted;
        L-BFGS always runs on the last set drawn.
    - `shape_weight`: weight of the model's shape penalty
        (`AbstractHJBModel.shape_violation`) in the loss.
    - `progress`: a callback for progress bars, as in [`jaxdeq.pinn.fit`][]; the
        initial-guess phase reports `phase="guess"`.

    **Returns:**

    An [`jaxdeq.econ.HJBSolution`][].
    """
    if num_points < 1:
        raise ValueError(f"num_points={num_points} must be positive.")
    start = time.perf_counter()
    key = jr.PRNGKey(0) if key is None else key
    key_net, key_points, key_guess, key_fit = jr.split(key, 4)
    value = model.value_network(key_net, width, depth)
    points = model.sample(key_points, num_points)

    def sample(key, params):
        del params
        return points if resample_every is None else model.sample(key, num_points)

    has_guess = model.initial_guess(points[0]) is not None and guess_steps > 0
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
            adam_steps=guess_steps,
            lbfgs_steps=guess_steps,
            learning_rate=1e-3,
            log_every=log_every,
            progress=guess_progress,
        ).params
    hjb = model.hjb()

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
        adam_steps=adam_steps,
        lbfgs_steps=lbfgs_steps,
        learning_rate=learning_rate,
        resample_every=resample_every,
        log_every=log_every,
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


def plot_hjb(solution: HJBSolution, outdir) -> list:
    """Write the figures of an HJB solve as PNGs into `outdir` (created if
    missing): `value.png` (the value function and, when known, the closed form),
    `policies.png` (each policy against the closed form), `errors.png` (relative
    errors of value and policies, log scale) and `loss.png` (the loss per term
    over training). Models with more than one state variable are drawn along a
    line through their evaluation box: for a time-dependent model, wealth at the
    first time; for the LQR, the segment from $-x$ to $x$ along a fixed random
    direction. Needs matplotlib.

    **Returns:**

    The paths written.
    """
    import pathlib

    # Figures without pyplot: no backend is chosen or changed for the caller.
    from matplotlib.figure import Figure

    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model, value = solution.model, solution.value
    z = np.asarray(model.evaluation_points(400))
    if z.shape[1] == 1:
        grid, axis, label = z, z[:, 0], "state"
    elif getattr(model, "horizon", None) is not None:
        first = z[:, 0] == z[0, 0]
        grid, axis, label = z[first], z[first][:, 1], "wealth W at t = 0"
    else:
        direction = np.random.default_rng(0).standard_normal(z.shape[1])
        direction *= np.max(np.abs(z)) / np.max(np.abs(direction))
        s = np.linspace(-1, 1, 201)
        grid, axis, label = s[:, None] * direction, s, "position along a line"
    grid = jnp.asarray(grid)
    v = np.asarray(jax.vmap(value)(grid))
    pols = {k: np.asarray(p) for k, p in solution.policies(grid).items()}
    if has_closed_form(model):
        assert isinstance(model, AbstractClosedFormHJBModel)
        v_true = np.asarray(jax.vmap(model.value_true)(grid))
        p_true = {
            k: np.asarray(p) for k, p in jax.vmap(model.policies_true)(grid).items()
        }
    else:
        v_true, p_true = None, {}
    paths = []

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.plot(axis, v, label="PINN")
    if v_true is not None:
        ax.plot(axis, v_true, "k--", label="closed form")
    ax.set(xlabel=label, ylabel="V", title=f"{type(model).__name__}: value")
    ax.legend()
    paths.append(outdir / "value.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    fig = Figure(figsize=(5 * len(pols), 4))
    axes = np.atleast_1d(fig.subplots(1, len(pols)))
    for ax, (name, p) in zip(axes, pols.items()):
        p2 = p.reshape(len(axis), -1)
        for j in range(min(p2.shape[1], 3)):
            ax.plot(axis, p2[:, j], label=f"PINN[{j}]" if p2.shape[1] > 1 else "PINN")
            if name in p_true:
                ax.plot(axis, p_true[name].reshape(len(axis), -1)[:, j], "k--")
        ax.set(xlabel=label, title=f"{name} (dashed: closed form)")
        ax.legend()
    paths.append(outdir / "policies.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    if v_true is not None:
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.semilogy(axis, np.abs(v - v_true) / np.abs(v_true), label="value")
        for name, p in pols.items():
            t = p_true[name]
            err = np.abs(p - t).reshape(len(axis), -1).max(axis=1)
            ax.semilogy(
                axis, err / np.abs(t).reshape(len(axis), -1).max(axis=1), label=name
            )
        ax.set(xlabel=label, ylabel="relative error", title="errors")
        ax.legend()
        paths.append(outdir / "errors.png")
        fig.savefig(paths[-1], dpi=120, bbox_inches="tight")

    history = solution.fit.history
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name in ("loss", "hjb", "shape"):
        if name in history and np.any(history[name] > 0):
            ax.semilogy(history["step"], history[name], label=name)
    switch = history["step"][history["phase"] == 0]
    if switch.size:
        ax.axvline(switch[-1], color="grey", ls=":", label="Adam → L-BFGS")
    ax.set(xlabel="step", title="training loss")
    ax.legend()
    paths.append(outdir / "loss.png")
    fig.savefig(paths[-1], dpi=120, bbox_inches="tight")
    return paths
