"""`solve_equilibrium`: an economy and a solver for its households, in the shape of
`optimistix.root_find(fn, solver, y0)`."""

from collections.abc import Callable
from typing import Any, overload

from jaxtyping import Array, PRNGKeyArray

from ._equilibrium import (
    _bracket,
    _check_economy,
    _is_concrete,
    _raise_if_failed,
    _solve_fd,
    AbstractEconomy,
    EquilibriumSolution,
    FiniteDifference,
    Huggett,
)
from ._huggett_pinn import _solve_pinn, HuggettPINNSolution, PINNHousehold


@overload
def solve_equilibrium(
    economy: AbstractEconomy,
    solver: FiniteDifference = ...,
    *,
    r0: float | Array | None = ...,
    bracket: tuple[float | Array, float | Array] | None = ...,
    throw: bool = ...,
    key: None = ...,
    progress: None = ...,
) -> EquilibriumSolution: ...


@overload
def solve_equilibrium(
    economy: AbstractEconomy,
    solver: PINNHousehold,
    *,
    r0: float | Array | None = ...,
    bracket: tuple[float | Array, float | Array] | None = ...,
    throw: bool = ...,
    key: PRNGKeyArray,
    progress: Callable[[dict[str, Any]], None] | None = ...,
) -> HuggettPINNSolution: ...


def solve_equilibrium(
    economy: AbstractEconomy,
    solver: FiniteDifference | PINNHousehold = FiniteDifference(),
    *,
    r0: float | Array | None = None,
    bracket: tuple[float | Array, float | Array] | None = None,
    throw: bool = True,
    key: PRNGKeyArray | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> EquilibriumSolution | HuggettPINNSolution:
    r"""The stationary general equilibrium of an economy: the interest rate $r^*$
    with $S(r^*) = 0$, the households' solution there, and the aggregates.

    $S(r)$ (for example Huggett's bond supply $\int a\,dG$) comes from the
    households' solution at $r$, by the method `solver` names, and its root is
    found by [`jaxdeq.BracketedNewton`][] on a bracket: Newton steps kept inside
    the bracket by bisection.

    - [`jaxdeq.econ.FiniteDifference`][] (the default): the implicit upwind
        scheme on the economy's wealth grid, with $S'(r)$ from one implicit
        forward-mode derivative through the household. Derivatives of $r^*$ and
        of anything in the solution with respect to any parameter $\theta$ of
        the economy come from the implicit function theorem,
        $dr^*/d\theta = -\partial_\theta S / \partial_r S$, with the household's
        own implicit derivatives inside: `jax.grad`, `jax.jacfwd` and `jax.vmap`
        work through `solve_equilibrium`, with no bisection or finite
        differences. Returns an [`jaxdeq.econ.EquilibriumSolution`][].
    - [`jaxdeq.econ.PINNHousehold`][]: neural networks for the value functions
        and the wealth distribution of the [`jaxdeq.econ.Huggett`][] economy,
        trained at each rate the root finder asks for. Returns a
        [`jaxdeq.econ.HuggettPINNSolution`][]; not differentiable.

    **Arguments:**

    - `economy`: an [`jaxdeq.econ.AbstractEconomy`][] (e.g.
        [`jaxdeq.econ.Huggett`][], [`jaxdeq.econ.Aiyagari`][]).
    - `solver`: [`jaxdeq.econ.FiniteDifference`][] or
        [`jaxdeq.econ.PINNHousehold`][], with their settings.
    - `r0`: the starting rate (default: the middle of the bracket).
    - `bracket`: `(lower, upper)`, below rho (default `economy.bracket()`); $S$
        must change sign on it. Its top is kept a little below rho, where the
        stationary distribution exists.
    - `throw`: raise if the equilibrium is not found (otherwise see the
        solution's `result`).
    - `key`: a JAX PRNG key for the initial networks of `PINNHousehold`;
        `FiniteDifference`, which is deterministic, takes none.
    - `progress`: called by `PINNHousehold` with each logged row of training
        (with a `"stage"`), and after each solve with `"stage": "clearing"`,
        `"iteration"`, `"r"` and `"excess_supply"`; `FiniteDifference`, one
        compiled solve, takes none.

    **Returns:**

    An [`jaxdeq.econ.EquilibriumSolution`][] (`FiniteDifference`) or a
    [`jaxdeq.econ.HuggettPINNSolution`][] (`PINNHousehold`).

    **Raises:**

    - `TypeError` for an `economy` or `solver` of the wrong kind, a
        `PINNHousehold` without a `key`, or an economy other than `Huggett`
        for it.
    - `ValueError` for a bad `bracket` or `r0`, a `key` or `progress` given to
        `FiniteDifference`, and with `throw=True` when the excess supply does
        not change sign on the bracket.
    - `RuntimeError` with `throw=True` when the root finder does not converge.
    """
    name = "solve_equilibrium"
    _check_economy(name, economy)
    if isinstance(solver, FiniteDifference):
        for label, value in (("key", key), ("progress", progress)):
            if value is not None:
                raise ValueError(
                    f"{name}: FiniteDifference is deterministic and solves in one "
                    f"compiled call, so it takes no `{label}`. Remove `{label}`, or "
                    "pass a `PINNHousehold` solver."
                )
        return _solve_fd(economy, solver, r0=r0, bracket=bracket, throw=throw)
    if not isinstance(solver, PINNHousehold):
        raise TypeError(
            f"{name}: `solver` must be a jaxdeq.econ.FiniteDifference or "
            f"PINNHousehold, got {type(solver).__name__}. Pass e.g. "
            "`jaxdeq.econ.FiniteDifference()`."
        )
    if not isinstance(economy, Huggett):
        raise TypeError(
            f"{name}: PINNHousehold solves the Huggett economy (two income states "
            f"and a bond in zero net supply), got {type(economy).__name__}. Use "
            "`jaxdeq.econ.FiniteDifference()` for other economies."
        )
    if key is None:
        raise TypeError(
            f"{name}: PINNHousehold draws its initial networks at random and needs "
            "a key. Pass `key=jax.random.PRNGKey(0)`."
        )
    if not _is_concrete(economy):
        raise ValueError(
            f"{name}: PINNHousehold trains networks outside of JAX's "
            "transformations; call it with a concrete economy, not under `jit`, "
            "`vmap` or `grad`."
        )
    low, high, start = _bracket(name, economy, bracket, r0)
    # As for FiniteDifference: the top of the bracket a little below rho.
    rho = float(economy.household().rho)
    low, high = float(low), min(float(high), rho - 1e-3 * abs(rho))
    start = min(float(start), high)
    solution, (f_low, f_high) = _solve_pinn(
        economy, solver, r0=start, lower=low, upper=high, key=key, progress=progress
    )
    if throw:
        _raise_if_failed(solution, low, high, f_low, f_high)
    return solution
