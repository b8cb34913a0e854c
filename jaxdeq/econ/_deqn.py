"""Deep Equilibrium Nets: a policy network trained on the equilibrium conditions of a
discrete-time model, on states simulated from its own ergodic set."""

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from .._solution import RESULTS
from ..pinn import accuracy_report, fit
from ._checks import check_int
from ._quadrature import _default_float, gauss_hermite, monomial_rule, Quadrature


# An expectation operator: `expect(fn)` with `fn(next_state, next_policy) -> PyTree`.
Expectation = Callable[[Callable[[Array, Array], PyTree[Array]]], PyTree[Array]]
Policy = Callable[[Float[Array, " state"]], Float[Array, " policy"]]


def fischer_burmeister(a: ArrayLike, b: ArrayLike) -> Array:
    r"""The Fischer–Burmeister function $\phi(a, b) = a + b - \sqrt{a^2 + b^2}$.

    It turns a complementarity condition into one equation:

    $$\phi(a, b) = 0 \iff a \ge 0,\; b \ge 0,\; a\,b = 0.$$

    It is positive when both arguments are positive and negative when either is
    negative. In a Deep Equilibrium Net, $a$ is a (scaled) Karush–Kuhn–Tucker
    multiplier and $b$ the (scaled) slack of an occasionally binding constraint, and
    $\phi(a, b)$ is one more residual to drive to zero.

    The root is computed as $m\sqrt{1 + (n/m)^2}$ with $m = \max(|a|, |b|)$ and
    $n = \min(|a|, |b|)$, so that $\phi$ is exactly zero at complementary pairs
    ($a \ge 0$, $b = 0$ or $a = 0$, $b \ge 0$), does not overflow or underflow, and
    has the finite gradient $(1, 1)$ at $a = b = 0$.

    **Arguments:**

    - `a`, `b`: arrays of the same shape (or broadcastable) and floating dtype.

    **Returns:**

    $\phi(a, b)$, elementwise.

    ??? cite "References"

        ```bibtex
        @article{fischer1992special,
            title={A special {Newton}-type optimization method},
            author={Fischer, Andreas},
            journal={Optimization},
            volume={24},
            number={3--4},
            pages={269--284},
            year={1992}
        }
        ```
    """
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    big = jnp.maximum(jnp.abs(a), jnp.abs(b))
    small = jnp.minimum(jnp.abs(a), jnp.abs(b))
    # Double `where`: the root and its gradient are both finite at a = b = 0.
    nonzero = big > 0
    safe_big = jnp.where(nonzero, big, jnp.ones_like(big))
    root = safe_big * jnp.sqrt(1 + jnp.square(small / safe_big))
    root = jnp.where(nonzero, root, jnp.zeros_like(root))
    return a + b - root


class EulerErrorSummary(eqx.Module):
    r"""Summary statistics of relative Euler errors $|e|$ on simulated states.

    **Attributes:**

    - `num`: the number of errors summarised.
    - `mean`, `max`: the mean and the maximum of $|e|$.
    - `p50`, `p90`, `p99`: percentiles of $|e|$.

    The properties `log10_mean`, `log10_max`, `log10_p50`, `log10_p90` and
    `log10_p99` give $\log_{10}$ of each, the units in which the literature reports
    them (a mean of $-3$ or below is called economically small). Since $\log_{10}$ is
    increasing, `log10_p90` is also the 90th percentile of $\log_{10}|e|$.
    """

    num: int
    mean: float
    max: float
    p50: float
    p90: float
    p99: float

    @property
    def log10_mean(self) -> float:
        return _log10(self.mean)

    @property
    def log10_max(self) -> float:
        return _log10(self.max)

    @property
    def log10_p50(self) -> float:
        return _log10(self.p50)

    @property
    def log10_p90(self) -> float:
        return _log10(self.p90)

    @property
    def log10_p99(self) -> float:
        return _log10(self.p99)

    def to_dict(self) -> dict[str, float]:
        """All statistics and their $\\log_{10}$, as a dict of floats."""
        out: dict[str, float] = {"num": self.num}
        for name in ("mean", "max", "p50", "p90", "p99"):
            out[name] = getattr(self, name)
            out[f"log10_{name}"] = getattr(self, f"log10_{name}")
        return out

    def __str__(self) -> str:
        return (
            f"Euler errors (log10 |e|, {self.num} values): "
            f"mean {self.log10_mean:.2f}, p50 {self.log10_p50:.2f}, "
            f"p90 {self.log10_p90:.2f}, p99 {self.log10_p99:.2f}, "
            f"max {self.log10_max:.2f}"
        )


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


def euler_error_summary(errors: ArrayLike) -> EulerErrorSummary:
    r"""Summarise relative Euler errors: mean, maximum and percentiles of $|e|$.

    **Arguments:**

    - `errors`: relative Euler errors of any shape, e.g. the `(num_states,
        num_errors)` output of [`jaxdeq.econ.evaluate_euler_errors`][]. All entries
        are pooled.

    **Returns:**

    An [`jaxdeq.econ.EulerErrorSummary`][].

    **Raises:**

    `ValueError` when `errors` is empty or holds non-finite values: the policy took
    the model out of its domain (e.g. a savings share outside $(0, 1)$, hence
    non-positive consumption), or the solution diverged.
    """
    e = np.abs(np.asarray(errors, dtype=np.float64)).ravel()
    if e.size == 0:
        raise ValueError(
            "euler_error_summary: `errors` is empty. Pass the errors of at least "
            "one state."
        )
    bad = ~np.isfinite(e)
    if bad.any():
        raise ValueError(
            f"euler_error_summary: {int(bad.sum())} of {e.size} Euler errors are not "
            "finite. The policy is out of range at those states (e.g. it makes "
            "consumption or capital non-positive), or training diverged. Check the "
            "policy's constraints, or evaluate on states inside the ergodic set."
        )
    p50, p90, p99 = np.percentile(e, [50.0, 90.0, 99.0])
    return EulerErrorSummary(
        num=int(e.size),
        mean=float(e.mean()),
        max=float(e.max()),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
    )


class AbstractDEQNModel(eqx.Module):
    r"""A discrete-time model for a Deep Equilibrium Net.

    Subclass it and give:

    - `state_names`: a tuple of names, one per state variable (e.g. `("K", "z")`).
    - `policy_names`: a tuple of names, one per policy output (e.g. `("s",)`); the
        network has one raw output per name.
    - `shock_dim`: the number of independent standard normal shocks
        $\varepsilon \sim N(0, I)$ per period.

    (Class attributes, `ClassVar[...]`, or dataclass fields.) And the five methods
    below. All of them except `initial_states` act on **one** state, a vector of
    shape `(len(state_names),)`; the machinery `vmap`s them.

    The equilibrium conditions in `residuals` are written with an expectation
    operator `expect`: `expect(fn)` is $\mathbb{E}_t[\texttt{fn}(x_{t+1},
    p(x_{t+1}))]$, with $x_{t+1}$ = `transition(state, policy, shock)` and
    $p$ the current policy, computed by the quadrature rule of the solver. `fn` may
    return any PyTree of arrays. Constraints on the policy are imposed by
    construction in `policy` (softplus for positivity, sigmoid for shares) or, for
    occasionally binding constraints, by a multiplier output and a
    [`jaxdeq.econ.fischer_burmeister`][] residual.

    A model that cannot evaluate a policy (e.g. non-positive consumption) should
    return NaN rather than a number: [`jaxdeq.econ.euler_error_summary`][] then
    reports the policy as out of range.
    """

    state_names: eqx.AbstractVar[tuple[str, ...]]
    policy_names: eqx.AbstractVar[tuple[str, ...]]
    shock_dim: eqx.AbstractVar[int]

    @abc.abstractmethod
    def initial_states(self, key: PRNGKeyArray, num: int) -> Float[Array, "num state"]:
        """`num` starting states for simulation, shape `(num, state_dim)`: they
        should cover a plausible region around the ergodic set. They also set the
        normalisation of the network's inputs."""

    @abc.abstractmethod
    def policy(
        self, raw: Float[Array, " policy"], state: Float[Array, " state"]
    ) -> Float[Array, " policy"]:
        """The policy from the network's raw outputs at `state`, with the constraints
        imposed by construction."""

    @abc.abstractmethod
    def transition(
        self,
        state: Float[Array, " state"],
        policy: Float[Array, " policy"],
        shock: Float[Array, " shock"],
    ) -> Float[Array, " state"]:
        """Next period's state, given this period's state, policy and a shock
        $\\varepsilon \\sim N(0, I)$ of shape `(shock_dim,)`."""

    @abc.abstractmethod
    def residuals(
        self,
        state: Float[Array, " state"],
        policy: Float[Array, " policy"],
        expect: Expectation,
    ) -> dict[str, Float[Array, "..."]]:
        """The equilibrium conditions at one state, named: each value is a scalar or
        an array that is zero in equilibrium. The loss is the sum over names of the
        mean square of each; the names label the per-term losses in the history.
        Scale residuals to be unit-free (relative errors)."""

    @abc.abstractmethod
    def euler_errors(
        self,
        state: Float[Array, " state"],
        policy: Float[Array, " policy"],
        expect: Expectation,
    ) -> Float[Array, " errors"]:
        """The relative Euler errors at one state, e.g.
        $u'^{-1}(\\beta\\,\\mathbb{E}[R' u'(c')])/c - 1$, unit-free (consumption
        units): a scalar or a vector with one entry per Euler equation."""


class AbstractClosedFormDEQNModel(AbstractDEQNModel):
    """An [`jaxdeq.econ.AbstractDEQNModel`][] that knows its policy in closed
    form: the marker of that capability (test it with `isinstance`).
    [`jaxdeq.econ.DEQNSolution.closed_form_errors`][] compares a trained policy
    with it."""

    @abc.abstractmethod
    def policy_true(self, state: Float[Array, " state"]) -> Float[Array, " policy"]:
        """The closed-form policy at one state, one entry per policy name."""


def _state_dim(model: AbstractDEQNModel) -> int:
    return len(model.state_names)


def _at_state(model, policy, quadrature, state, pol) -> Expectation:
    """The expectation operator at one state. Next period's states and policies at
    the quadrature nodes are computed once and shared by every `expect` call, so a
    model may take several expectations (and the DEQN loss both its residuals and
    its Euler errors) for the cost of one."""
    next_states = jax.vmap(lambda shock: model.transition(state, pol, shock))(
        quadrature.nodes
    )
    next_policies = jax.vmap(policy)(next_states)
    weights = quadrature.weights

    def expect(fn):
        values = jax.vmap(fn)(next_states, next_policies)
        return jax.tree_util.tree_map(
            lambda v: jnp.tensordot(weights.astype(v.dtype), v, axes=1), values
        )

    return expect


@eqx.filter_jit
def _evaluate(model, policy, states, quadrature, *, residuals: bool, errors: bool):
    def one(state):
        pol = policy(state)
        expect = _at_state(model, policy, quadrature, state, pol)
        res = err = None
        if residuals:
            res = model.residuals(state, pol, expect)
            if not isinstance(res, dict) or not res:
                raise TypeError(
                    f"{type(model).__name__}.residuals must return a non-empty dict "
                    f"of named residuals, e.g. {{'euler': e}}; got "
                    f"{type(res).__name__}."
                )
        if errors:
            err = jnp.reshape(model.euler_errors(state, pol, expect), (-1,))
        return res, err

    return jax.vmap(one)(states)


def _check_states(name: str, model: AbstractDEQNModel, states) -> None:
    d = _state_dim(model)
    if jnp.ndim(states) != 2 or jnp.shape(states)[1] != d:
        raise ValueError(
            f"{name}: `states` must have shape (num, {d}) (one row per state, columns "
            f"{model.state_names}), got {jnp.shape(states)}."
        )


def _check_quadrature(name: str, model: AbstractDEQNModel, quadrature) -> None:
    if not isinstance(quadrature, Quadrature):
        raise TypeError(
            f"{name}: `quadrature` must be a jaxdeq.econ.Quadrature, e.g. "
            f"`gauss_hermite(7, dim={model.shock_dim})`; got "
            f"{type(quadrature).__name__}."
        )
    if quadrature.dim != model.shock_dim:
        raise ValueError(
            f"{name}: the quadrature integrates over {quadrature.dim} shocks but the "
            f"model has shock_dim={model.shock_dim}. Build it with "
            f"`gauss_hermite(n, dim={model.shock_dim})` or "
            f"`monomial_rule({model.shock_dim})`."
        )


def evaluate_residuals(
    model: AbstractDEQNModel,
    policy: Policy,
    states: Float[Array, "num state"],
    quadrature: Quadrature,
) -> dict[str, Float[Array, "num ..."]]:
    """The model's equilibrium residuals under a policy, at many states.

    Pure JAX: it can be jitted and differentiated, which is how the DEQN loss uses
    it.

    **Arguments:**

    - `model`: a [`jaxdeq.econ.AbstractDEQNModel`][].
    - `policy`: a function from one state to the policy vector, e.g. a trained
        [`jaxdeq.econ.DEQNPolicy`][] or a closed-form policy.
    - `states`: shape `(num, state_dim)`.
    - `quadrature`: the rule for the expectations.

    **Returns:**

    The dict returned by `model.residuals`, each value with a leading axis `num`.
    """
    _check_states("evaluate_residuals", model, states)
    _check_quadrature("evaluate_residuals", model, quadrature)

    res, _ = _evaluate(model, policy, states, quadrature, residuals=True, errors=False)
    assert res is not None
    return res


def evaluate_euler_errors(
    model: AbstractDEQNModel,
    policy: Policy,
    states: Float[Array, "num state"],
    quadrature: Quadrature,
) -> Float[Array, "num errors"]:
    """The model's relative Euler errors under a policy, at many states.

    **Arguments:** as for [`jaxdeq.econ.evaluate_residuals`][].

    **Returns:**

    An array of shape `(num, num_errors)`; summarise it with
    [`jaxdeq.econ.euler_error_summary`][].
    """
    _check_states("evaluate_euler_errors", model, states)
    _check_quadrature("evaluate_euler_errors", model, quadrature)

    _, err = _evaluate(model, policy, states, quadrature, residuals=False, errors=True)
    assert err is not None
    return err


@eqx.filter_jit
def _simulate(model, policy, key, num_paths, path_length, burn_in, initial_states):
    init_key, key = jr.split(key)
    if initial_states is None:
        initial_states = model.initial_states(init_key, num_paths)
    dtype = jnp.result_type(initial_states)

    def step(states, shock_key):
        shocks = jr.normal(shock_key, (num_paths, model.shock_dim), dtype)
        pols = jax.vmap(policy)(states)
        return jax.vmap(model.transition)(states, pols, shocks), states

    burn_key, path_key = jr.split(key)
    states, _ = jax.lax.scan(
        lambda s, k: (step(s, k)[0], None), initial_states, jr.split(burn_key, burn_in)
    )
    _, path = jax.lax.scan(step, states, jr.split(path_key, path_length))
    return jnp.swapaxes(path, 0, 1)


def simulate(
    model: AbstractDEQNModel,
    policy: Policy,
    key: PRNGKeyArray,
    *,
    num_paths: int,
    path_length: int,
    burn_in: int = 0,
    initial_states: Float[Array, "paths state"] | None = None,
) -> Float[Array, "paths length state"]:
    r"""Simulate the model forward under a policy, with standard normal shocks.

    Starting from `model.initial_states` (or `initial_states`) in period 0, records
    the states of periods `burn_in`, ..., `burn_in + path_length - 1`. After a long
    enough burn-in they are draws from the ergodic set of the policy; with
    `burn_in=0` they include the transition from the initial states.

    **Arguments:**

    - `model`: a [`jaxdeq.econ.AbstractDEQNModel`][].
    - `policy`: a function from one state to the policy vector.
    - `key`: a JAX PRNG key.
    - `num_paths`: the number of independent paths.
    - `path_length`: the number of periods recorded per path.
    - `burn_in`: the number of periods run before recording.
    - `initial_states`: optional starting states, shape `(num_paths, state_dim)`.

    **Returns:**

    The states, shape `(num_paths, path_length, state_dim)`.

    **Raises:**

    `ValueError` for sizes below 1 (0 for `burn_in`), badly shaped starting states,
    or a simulation that leaves the model's domain (non-finite states: the policy
    is out of range).
    """
    for label, value, minimum, example in (
        ("num_paths", num_paths, 1, 256),
        ("path_length", path_length, 1, 8),
        ("burn_in", burn_in, 0, 100),
    ):
        check_int("simulate", label, value, minimum, example)
    num_paths, path_length, burn_in = int(num_paths), int(path_length), int(burn_in)
    if initial_states is not None:
        _check_states("simulate", model, initial_states)
        if jnp.shape(initial_states)[0] != num_paths:
            raise ValueError(
                f"simulate: `initial_states` has {jnp.shape(initial_states)[0]} rows "
                f"but `num_paths={num_paths}`; give one starting state per path."
            )
    states = _simulate(
        model, policy, key, num_paths, path_length, burn_in, initial_states
    )
    try:
        finite = bool(jnp.all(jnp.isfinite(states)))
    except jax.errors.ConcretizationTypeError:
        finite = True
    if not finite:
        raise ValueError(
            "simulate: the simulated states are not finite: the policy takes the "
            "model out of its domain (check that `model.policy` imposes the "
            "constraints, e.g. a sigmoid share in (0, 1)), or the policy diverged."
        )
    return states


class DEQNPolicy(eqx.Module):
    r"""A trained Deep Equilibrium Net policy: $p(x) = \texttt{model.policy}(
    \mathrm{MLP}((x - \mu)/\varsigma), x)$, with the input normalisation
    $(\mu, \varsigma)$ taken from the model's initial states.

    Called on one state of shape `(state_dim,)`; `jax.vmap` it over a batch.

    **Attributes:**

    - `mlp`: the `equinox.nn.MLP` from normalised states to raw outputs.
    - `loc`, `scale`: the input normalisation $\mu$, $\varsigma$.
    - `model`: the [`jaxdeq.econ.AbstractDEQNModel`][] whose `policy` maps the raw
        outputs to the policy.
    """

    mlp: eqx.nn.MLP
    loc: Float[Array, " state"]
    scale: Float[Array, " state"]
    model: AbstractDEQNModel

    def raw(self, state: Float[Array, " state"]) -> Float[Array, " policy"]:
        """The network's raw outputs at one state, before the constraints."""
        if jnp.shape(state) != jnp.shape(self.loc):
            raise ValueError(
                f"DEQNPolicy: expected one state of shape {jnp.shape(self.loc)}, got "
                f"shape {jnp.shape(state)}. Use `jax.vmap(policy)(states)` for a "
                "batch."
            )
        return self.mlp((state - self.loc) / self.scale)

    def __call__(self, state: Float[Array, " state"]) -> Float[Array, " policy"]:
        """The policy at one state."""
        return self.model.policy(self.raw(state), state)


def _default_quadrature(dim: int) -> Quadrature:
    if dim == 1:
        return gauss_hermite(7, 1)
    if dim == 2:
        return gauss_hermite(5, 2)
    return monomial_rule(dim, 2)


_DEQN_EXAMPLES = {
    "width": 32,
    "depth": 2,
    "num_paths": 256,
    "path_length": 8,
    "burn_in": 0,
    "adam_steps": 2000,
    "lbfgs_steps": 1000,
    "resample_every": 100,
    "log_every": 100,
    "report_paths": 512,
    "report_length": 32,
    "report_burn_in": 100,
}


def _check_size(label: str, value, minimum: int = 1) -> None:
    check_int("DEQN", label, value, minimum, _DEQN_EXAMPLES[label])


class DEQN(eqx.Module):
    r"""Settings for training a Deep Equilibrium Net with
    [`jaxdeq.econ.solve_deqn`][].

    The policy is an MLP on normalised states. Training alternates simulating the
    ergodic set of the current policy and minimising the mean squared equilibrium
    residuals on those states, first with Adam (re-simulating every
    `resample_every` steps), then with L-BFGS on one fixed simulated set. Run it in
    float64 (`jax.config.update("jax_enable_x64", True)`) to reach Euler errors
    below $10^{-5}$: in float32 the small Brock–Mirman run stalls at a mean of
    about $2 \cdot 10^{-5}$.

    **Arguments:**

    - `width`, `depth`: the MLP's hidden width and number of hidden layers.
    - `activation`: its hidden activation; smooth ones suit L-BFGS.
    - `quadrature`: the [`jaxdeq.econ.Quadrature`][] for the expectations in the
        loss. Default: Gauss–Hermite with 7 nodes for one shock, $5^2$ for two,
        the monomial rule M2 for more.
    - `num_paths`, `path_length`, `burn_in`: the training set is the states of
        `num_paths` simulated paths in periods `burn_in`, ...,
        `burn_in + path_length - 1`. With `burn_in=0` (the default) it holds the
        initial states and the transition from them into the ergodic set, so the
        policy is also trained off the ergodic set (where fresh paths' rare
        states fall); a positive `burn_in` trains on the ergodic set only.
    - `adam_steps`, `learning_rate` (a float or an optax schedule): the Adam phase.
    - `lbfgs_steps`: the L-BFGS phase (`optax.lbfgs`), on the last simulated set.
    - `resample_every`: re-simulate the training set every this many Adam steps
        (None: simulate once).
    - `log_every`: record diagnostics every this many steps.
    - `report_paths`, `report_length`, `report_burn_in`: the fresh simulation (new
        shocks) on which the final Euler errors are reported: `report_length`
        periods after `report_burn_in`, i.e. the ergodic set of the trained
        policy.
    - `report_quadrature`: the rule for those errors (default: `quadrature`).
    - `target`: the training loss to reach (the sum of the residuals' mean
        squares); training stops once it is met, and the solution's `result` is
        `fit_not_converged` when it is not. `None` (the default): no target, the
        whole budget is trained.
    """

    width: int = 32
    depth: int = 2
    activation: Callable = eqx.field(default=jax.nn.tanh, static=True)
    quadrature: Quadrature | None = None
    num_paths: int = 256
    path_length: int = 8
    burn_in: int = 0
    adam_steps: int = 2000
    learning_rate: float | optax.Schedule = 1e-3
    lbfgs_steps: int = 1000
    resample_every: int | None = 100
    log_every: int = 100
    report_paths: int = 512
    report_length: int = 32
    report_burn_in: int = 100
    report_quadrature: Quadrature | None = None
    target: float | None = None

    def __check_init__(self):
        _check_size("width", self.width)
        _check_size("depth", self.depth, 0)
        _check_size("num_paths", self.num_paths)
        _check_size("path_length", self.path_length)
        _check_size("burn_in", self.burn_in, 0)
        _check_size("adam_steps", self.adam_steps, 0)
        _check_size("lbfgs_steps", self.lbfgs_steps, 0)
        _check_size("log_every", self.log_every)
        _check_size("report_paths", self.report_paths)
        _check_size("report_length", self.report_length)
        _check_size("report_burn_in", self.report_burn_in, 0)
        if self.resample_every is not None:
            _check_size("resample_every", self.resample_every)
        if self.target is not None and not (
            isinstance(self.target, (int, float, np.floating))
            and 0 <= self.target < math.inf
        ):
            raise ValueError(
                f"DEQN: `target` must be a finite loss >= 0 or None, got "
                f"{self.target!r}. Pass e.g. `target=1e-10`."
            )
        if self.adam_steps + self.lbfgs_steps == 0:
            raise ValueError(
                "DEQN: `adam_steps` and `lbfgs_steps` are both 0, so nothing would "
                "be trained. Use e.g. `adam_steps=2000, lbfgs_steps=500`."
            )
        if not callable(self.learning_rate):
            lr = self.learning_rate
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
                raise ValueError(
                    "DEQN: `learning_rate` must be a positive number or an optax "
                    f"schedule, got {lr!r}. Use e.g. `learning_rate=1e-3`."
                )
        for label in ("quadrature", "report_quadrature"):
            value = getattr(self, label)
            if value is not None and not isinstance(value, Quadrature):
                raise TypeError(
                    f"DEQN: `{label}` must be a jaxdeq.econ.Quadrature or None, got "
                    f"{type(value).__name__}. Build one with `gauss_hermite(n, dim)`."
                )

    @classmethod
    def brock_mirman(cls, *, small: bool = False) -> "DEQN":
        r"""The settings tuned for [`jaxdeq.econ.BrockMirman`][]: a width-16 MLP
        on wide training sets of short paths (the box of initial states and the
        transition from it cover the rare states of long fresh paths), Adam with
        a cosine-decayed learning rate to find the basin, then L-BFGS, which takes
        the error from $10^{-3}$ to $10^{-6}$.

        In float64, on fresh simulated paths, the full run reaches a mean
        relative Euler error near $10^{-5.9}$ and a maximum near $10^{-4.8}$
        (2000 Adam and 2000 L-BFGS steps, about 30 s on two CPU cores,
        compilation included); the small run about $10^{-5.4}$ and $10^{-4.8}$
        in 10–20 s.

        **Arguments:**

        - `small`: 500 Adam and 1000 L-BFGS steps on a smaller training set, and
            Euler errors reported on fewer fresh paths.

        **Returns:**

        A `DEQN`, e.g. for `solve_deqn(BrockMirman(), DEQN.brock_mirman(),
        key=key)`.
        """
        if not isinstance(small, (bool, np.bool_)):
            raise TypeError(
                f"DEQN.brock_mirman: `small` must be True or False, got {small!r}. "
                "Pass e.g. `small=True`."
            )
        adam_steps = 500 if small else 2000
        return cls(
            width=16,
            depth=2,
            quadrature=gauss_hermite(5),
            num_paths=128 if small else 256,
            path_length=4 if small else 8,
            burn_in=0,
            adam_steps=adam_steps,
            learning_rate=optax.cosine_decay_schedule(1e-2, adam_steps, alpha=0.1),
            lbfgs_steps=1000 if small else 2000,
            resample_every=100,
            log_every=100,
            report_paths=128 if small else 512,
            report_length=16 if small else 32,
            report_burn_in=100,
            report_quadrature=gauss_hermite(10),
        )


class DEQNSolution(eqx.Module):
    """The result of [`jaxdeq.econ.solve_deqn`][].

    **Attributes:**

    - `policy`: the trained [`jaxdeq.econ.DEQNPolicy`][].
    - `euler`: an [`jaxdeq.econ.EulerErrorSummary`][] of the relative Euler errors
        on freshly simulated paths (new shocks; not the training states).
    - `errors`: those errors, shape `(num_states, num_errors)`.
    - `states`: the fresh states, shape `(report_paths, report_length, state_dim)`.
    - `training_states`: the fixed training set of the L-BFGS phase, shape
        `(num_paths * path_length, state_dim)`.
    - `history`: a dict of NumPy arrays, one entry per logged step (see
        [`jaxdeq.pinn.fit`][]): `step`, `phase` (0 for Adam, 1 for L-BFGS), `loss`,
        `grad_norm`, one `loss_<name>` per residual, and `euler_mean`, `euler_max`
        (of $|e|$ on the training states).
    - `num_steps`: optimiser steps taken (Adam and L-BFGS).
    - `wall_time`: seconds spent training, compilation included.
    - `result`: a [`jaxdeq.RESULTS`][]: `successful`, or `fit_not_converged`
        when the training loss missed `DEQN.target` (see [`jaxdeq.pinn.fit`][]).
    - `loss`: the final training loss, and `terms` its named parts.
    """

    policy: DEQNPolicy
    euler: EulerErrorSummary
    errors: np.ndarray
    states: np.ndarray
    training_states: np.ndarray
    history: dict[str, np.ndarray]
    num_steps: int
    wall_time: float
    result: RESULTS
    loss: float
    terms: dict[str, float]

    def closed_form_errors(self) -> dict[str, dict[str, float]]:
        r"""The trained policy against the model's closed form on the fresh
        simulated `states`, per policy name: the relative L2 error, the largest
        absolute and relative errors and the mean relative error
        ([`jaxdeq.pinn.accuracy_report`][]).

        For [`jaxdeq.econ.BrockMirman`][] the policy is the savings share $s$;
        since next period's capital is $K' = s\,zK^\alpha$, its relative error is
        that of $K'$.

        **Raises:**

        `TypeError` when the model has no closed form (is not an
        [`jaxdeq.econ.AbstractClosedFormDEQNModel`][]).
        """
        model = self.policy.model
        if not isinstance(model, AbstractClosedFormDEQNModel):
            raise TypeError(
                "DEQNSolution.closed_form_errors: the model "
                f"{type(model).__name__} has no closed form to compare with. "
                "Subclass jaxdeq.econ.AbstractClosedFormDEQNModel and give its "
                "`policy_true`, or check the Euler errors in `euler` instead."
            )
        states = jnp.asarray(self.states.reshape(-1, self.states.shape[-1]))
        trained = jax.vmap(self.policy)(states)
        true = jax.vmap(model.policy_true)(states)
        out = {}
        for i, name in enumerate(model.policy_names):
            report = accuracy_report(trained[:, i], true[:, i])
            out[name] = {k: float(v) for k, v in report.items()}
        return out


def solve_deqn(
    model: AbstractDEQNModel,
    solver: DEQN = DEQN(),
    *,
    key: PRNGKeyArray,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> DEQNSolution:
    r"""Train a Deep Equilibrium Net: a policy network whose equilibrium residuals
    vanish on the model's simulated ergodic set.

    1. Draw `model.initial_states` to fix the network's input normalisation, and
        build an MLP from states to one raw output per policy name.
    2. Simulate the current policy forward from initial states (`num_paths`
        paths, `path_length` periods recorded after `burn_in`) to get the training
        states; re-simulate every `resample_every` Adam steps.
    3. Minimise $\sum_k \operatorname{mean}(r_k^2)$ over the residuals $r_k$ of
        `model.residuals`, with the expectations taken by the quadrature rule:
        Adam, then L-BFGS on the last simulated set.
    4. Report the relative Euler errors on freshly simulated paths, after
        `report_burn_in` periods.

    **Arguments:**

    - `model`: a [`jaxdeq.econ.AbstractDEQNModel`][].
    - `solver`: the [`jaxdeq.econ.DEQN`][] settings.
    - `key`: a JAX PRNG key (network initialisation, simulations).
    - `progress`: called after every block of `log_every` steps with a dict
        (`phase`, `step`, `total`, `loss` and the terms), e.g. `print`.

    **Returns:**

    A [`jaxdeq.econ.DEQNSolution`][].

    **Raises:**

    - `TypeError` when `model` is not an `AbstractDEQNModel`.
    - `ValueError` when the quadrature does not match `model.shock_dim`, when
        `model.initial_states` returns a bad shape or non-finite values, or when a
        simulation leaves the model's domain.
    - [`jaxdeq.pinn.NonFiniteLossError`][] when the loss or its gradient becomes
        NaN or infinite; the message names the step, and its `result` holds the
        last finite parameters.

    ??? cite "References"

        ```bibtex
        @article{azinovic2022deep,
            title={Deep equilibrium nets},
            author={Azinovic, Marlon and Gaegauf, Luca and Scheidegger, Simon},
            journal={International Economic Review},
            volume={63},
            number={4},
            pages={1471--1525},
            year={2022}
        }
        ```
    """
    if not isinstance(model, AbstractDEQNModel):
        raise TypeError(
            "solve_deqn: `model` must subclass jaxdeq.econ.AbstractDEQNModel, got "
            f"{type(model).__name__}. Pass e.g. `jaxdeq.econ.BrockMirman()`."
        )
    if not isinstance(solver, DEQN):
        raise TypeError(
            f"solve_deqn: `solver` must be a jaxdeq.econ.DEQN, got "
            f"{type(solver).__name__}. Pass e.g. `jaxdeq.econ.DEQN()`."
        )
    quadrature = solver.quadrature
    if quadrature is None:
        quadrature = _default_quadrature(model.shock_dim)
    report_quadrature = solver.report_quadrature
    if report_quadrature is None:
        report_quadrature = quadrature
    _check_quadrature("solve_deqn", model, quadrature)
    _check_quadrature("solve_deqn", model, report_quadrature)
    d, num_outputs = _state_dim(model), len(model.policy_names)
    dtype = _default_float()

    norm_key, init_key, fit_key, report_key = jr.split(key, 4)
    start_states = jnp.asarray(model.initial_states(norm_key, 1024))
    if jnp.shape(start_states) != (1024, d):
        raise ValueError(
            f"solve_deqn: `{type(model).__name__}.initial_states(key, 1024)` returned "
            f"shape {jnp.shape(start_states)}; expected (1024, {d}), one column per "
            f"state name {model.state_names}."
        )
    if not bool(jnp.all(jnp.isfinite(start_states))):
        raise ValueError(
            f"solve_deqn: `{type(model).__name__}.initial_states` returned non-finite "
            "states. Draw them from a bounded box around the ergodic set."
        )
    start_states = start_states.astype(dtype)
    loc = jnp.mean(start_states, axis=0)
    scale = jnp.std(start_states, axis=0)
    # A state that does not vary among the starting states is only centred.
    scale = jnp.where(scale > 1e-8 * (1 + jnp.abs(loc)), scale, jnp.ones_like(scale))
    mlp = eqx.nn.MLP(
        d,
        num_outputs,
        solver.width,
        solver.depth,
        activation=solver.activation,
        key=init_key,
        dtype=dtype,
    )

    def make_policy(mlp):
        return DEQNPolicy(mlp, loc, scale, model)

    def loss_fn(mlp, points):
        policy = make_policy(mlp)
        res, errors = _evaluate(
            model, policy, points, quadrature, residuals=True, errors=True
        )
        assert res is not None and errors is not None
        terms = {f"loss_{name}": jnp.mean(jnp.square(r)) for name, r in res.items()}
        loss = jnp.asarray(sum(terms.values()))
        errors = jnp.abs(errors)
        terms["euler_mean"] = jax.lax.stop_gradient(jnp.mean(errors))
        terms["euler_max"] = jax.lax.stop_gradient(jnp.max(errors))
        return loss, terms

    @eqx.filter_jit
    def simulate_points(mlp, key):
        states = _simulate(
            model,
            make_policy(mlp),
            key,
            solver.num_paths,
            solver.path_length,
            solver.burn_in,
            None,
        )
        return states.reshape(-1, d)

    def sample(key, mlp):
        points = simulate_points(mlp, key)
        if not bool(jnp.all(jnp.isfinite(points))):
            raise ValueError(
                "solve_deqn: the simulated training states are not finite: the "
                "current policy takes the model out of its domain. Check that "
                "`model.policy` imposes the constraints by construction, and that "
                "`model.initial_states` lie in the domain."
            )
        return points

    # Trace the loss once here, under the caller's settings: a model whose
    # residuals are malformed fails now, with its own stack trace.
    eqx.filter_eval_shape(loss_fn, mlp, start_states[:2])
    fitted = fit(
        loss_fn,
        mlp,
        sample,
        key=fit_key,
        adam_steps=solver.adam_steps,
        learning_rate=solver.learning_rate,
        lbfgs_steps=solver.lbfgs_steps,
        resample_every=solver.resample_every,
        log_every=solver.log_every,
        target=solver.target,
        progress=progress,
    )
    policy = make_policy(fitted.params)
    states = simulate(
        model,
        policy,
        report_key,
        num_paths=solver.report_paths,
        path_length=solver.report_length,
        burn_in=solver.report_burn_in,
    )
    errors = evaluate_euler_errors(
        model, policy, states.reshape(-1, d), report_quadrature
    )
    errors = np.asarray(errors)
    return DEQNSolution(
        policy=policy,
        euler=euler_error_summary(errors),
        errors=errors,
        states=np.asarray(states),
        training_states=np.asarray(fitted.points),
        history=fitted.history,
        num_steps=fitted.num_steps,
        wall_time=fitted.wall_time,
        result=fitted.result,
        loss=fitted.loss,
        terms=fitted.terms,
    )
