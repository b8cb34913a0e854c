r"""Continuous-time households with idiosyncratic income risk, solved by the
implicit upwind finite-difference scheme (Achdou, Han, Lasry, Lions and Moll,
ReStud 2022), in JAX and differentiable by implicit differentiation.

The household holds wealth $a \in [\underline a, \bar a]$ on a uniform grid of $N$
points and is in one of $J$ income states, which switch as a continuous-time
Markov chain with intensity matrix $\Lambda$ (Poisson income; a diffusion in
income discretised on a grid is the same object, see
[`jaxdeq.econ.diffusion_generator`][]). The HJB equation

$$\rho V_j(a) = \max_c\, u(c) + V_j'(a)\, s_j(a, c) + \sum_k \Lambda_{jk} V_k(a),
\qquad s_j(a, c) = y_j(a) - c,$$

with $y_j(a)$ the household's income ($w z_j + r a$ by default) and the state
constraint $s_j \ge 0$ at $\underline a$ (and $s_j \le 0$ at $\bar a$), is
discretised with forward differences where the drift is positive and backward
differences where it is negative. The scheme is $\rho V - u(c(V)) - A(V) V = 0$
with $A(V)$ the generator of the discretised wealth-and-income process; its
transpose gives the Kolmogorov forward equation $A^\top g = 0$ for the stationary
density, including the mass point at the borrowing limit.
"""

import abc
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

from .._linear import BlockTridiagonal, BlockTridiagonalLinearOperator
from .._solution import as_results, Report, RESULTS, TRACE_SIZE
from .._solver.pseudo_transient import PseudoTransientNewton


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs))


class Prices(eqx.Module):
    """The prices a household takes as given: the interest rate `r` on wealth and
    the wage `w` that multiplies its labour endowment."""

    r: Scalar
    w: Scalar

    def __init__(self, r, w: ArrayLike = 1.0):
        """**Arguments:**

        - `r`: the interest rate.
        - `w`: the wage (default 1: income is the endowment itself, as in Huggett).
        """
        self.r = jnp.asarray(r)
        self.w = jnp.asarray(
            w, self.r.dtype if jnp.issubdtype(self.r.dtype, jnp.floating) else None
        )


def poisson_generator(rates) -> Float[Array, "J J"]:
    r"""The intensity matrix of a two-state Poisson income process.

    **Arguments:**

    - `rates`: $(\lambda_1, \lambda_2)$, the rate at which state 1 switches to
        state 2 and state 2 to state 1.

    **Returns:**

    $\Lambda = \begin{pmatrix} -\lambda_1 & \lambda_1 \\ \lambda_2 & -\lambda_2
    \end{pmatrix}$.
    """
    rates = jnp.asarray(rates)
    if rates.shape != (2,):
        raise ValueError(
            f"poisson_generator: `rates` must be (lambda_1, lambda_2), got shape "
            f"{rates.shape}. For more states pass the intensity matrix itself."
        )
    l1, l2 = rates[0], rates[1]
    return jnp.stack([jnp.stack([-l1, l1]), jnp.stack([l2, -l2])])


def diffusion_generator(z, drift, volatility) -> Float[Array, "J J"]:
    r"""The intensity matrix of a diffusion in income, $dz = \mu(z)\,dt +
    \sigma(z)\,dW$, discretised on a grid of income levels by the upwind scheme
    with reflecting ends.

    Feeding it to a [`jaxdeq.econ.Household`][] as `generator` (with `z` as its
    income levels) gives the finite-difference model with diffusion income: the
    discretised diffusion is a continuous-time Markov chain on the grid, and the
    solver treats it like Poisson switching.

    **Arguments:**

    - `z`: the income grid, shape `(J,)`, uniformly spaced.
    - `drift`: $\mu$ at the grid points, shape `(J,)` (or a scalar).
    - `volatility`: $\sigma$ at the grid points, shape `(J,)` (or a scalar).

    **Returns:**

    The `(J, J)` tridiagonal intensity matrix; its rows sum to zero and its
    off-diagonal entries are non-negative.
    """
    z = jnp.asarray(z)
    if z.ndim != 1 or z.shape[0] < 2:
        raise ValueError(
            f"diffusion_generator: `z` must be a grid of at least two points, got "
            f"shape {z.shape}. Pass e.g. `z=jnp.linspace(0.5, 1.5, 20)`."
        )
    dz = z[1] - z[0]
    mu = jnp.broadcast_to(jnp.asarray(drift, z.dtype), z.shape)
    var = jnp.broadcast_to(jnp.asarray(volatility, z.dtype), z.shape) ** 2
    up = jnp.maximum(mu, 0) / dz + var / (2 * dz**2)
    down = -jnp.minimum(mu, 0) / dz + var / (2 * dz**2)
    up = up.at[-1].set(0.0)  # reflecting ends
    down = down.at[0].set(0.0)
    return jnp.diag(up[:-1], 1) + jnp.diag(down[1:], -1) - jnp.diag(up + down)


def stationary_income_distribution(generator) -> Float[Array, " J"]:
    r"""The stationary distribution $\pi$ of an income process, $\pi^\top \Lambda = 0$,
    $\sum_j \pi_j = 1$."""
    generator = jnp.asarray(generator)
    j = generator.shape[0]
    m = generator.T.at[-1].set(jnp.ones(j, generator.dtype))
    rhs = jnp.zeros(j, generator.dtype).at[-1].set(1.0)
    return jnp.linalg.solve(m, rhs)


class AbstractHousehold(eqx.Module):
    r"""A household on a wealth grid with $J$ income states, for the implicit upwind
    finite-difference scheme ([`jaxdeq.econ.solve_household`][]).

    A subclass says what the household enjoys (`utility`, `marginal_utility` and
    its inverse `consumption`), what it earns (`income`), and holds the grid
    (`a_min`, `a_max`, `grid_size`), the discount rate `rho` and the income
    process (`generator`). Another utility function, income process or
    borrowing limit is a new subclass or new field values;
    [`jaxdeq.econ.Household`][] is the CRRA case.
    """

    a_min: eqx.AbstractVar[Scalar]
    a_max: eqx.AbstractVar[Scalar]
    grid_size: eqx.AbstractVar[int]
    rho: eqx.AbstractVar[Scalar]
    generator: eqx.AbstractVar[Float[Array, "J J"]]

    @abc.abstractmethod
    def utility(self, c: Array) -> Array:
        """Flow utility $u(c)$."""

    @abc.abstractmethod
    def marginal_utility(self, c: Array) -> Array:
        """$u'(c)$."""

    @abc.abstractmethod
    def consumption(self, dv: Array) -> Array:
        """The consumption that the first-order condition $u'(c) = V'(a)$ gives for a
        marginal value `dv` > 0: $(u')^{-1}$."""

    @abc.abstractmethod
    def income(self, a: Float[Array, " N"], prices: Prices) -> Float[Array, "N J"]:
        """Income before consumption in each state, $y_j(a)$, so that wealth moves
        as $\\dot a = y_j(a) - c$."""

    @property
    def grid(self) -> Float[Array, " N"]:
        """The wealth grid, `grid_size` uniformly spaced points."""
        return jnp.linspace(self.a_min, self.a_max, self.grid_size)

    @property
    def step(self) -> Scalar:
        """The grid spacing $\\Delta a$."""
        return (self.a_max - self.a_min) / (self.grid_size - 1)

    @property
    def num_states(self) -> int:
        """$J$, the number of income states."""
        return self.generator.shape[0]

    def initial_value(self, prices: Prices) -> Float[Array, "N J"]:
        """The value of consuming income forever, $u(y_j(a))/\\rho$: the usual
        starting point of the iteration."""
        return self.utility(self.income(self.grid, prices)) / self.rho

    def check(self, prices: Prices) -> None:
        """Raise a `ValueError` for prices at which the household problem has no
        solution with a stationary distribution; called by
        [`jaxdeq.econ.solve_household`][] when the values are concrete."""
        r, rho = prices.r, self.rho
        if not _is_concrete(r, rho):
            return
        if float(r) >= float(rho):
            raise ValueError(
                f"solve_household: r = {float(r):.6g} >= rho = {float(rho):.6g}: "
                "households with r >= rho save without bound and have no "
                "stationary wealth distribution. Use r < rho (a general-equilibrium "
                "bracket below rho)."
            )
        income = np.asarray(self.income(self.grid, prices))
        if _is_concrete(income) and not np.all(income[0] > 0):
            raise ValueError(
                f"solve_household: income at the borrowing limit a_min = "
                f"{float(self.a_min):.6g} is {income[0]} at r = {float(r):.6g}: "
                "consumption cannot stay positive there. Raise a_min above the "
                "natural borrowing limit -w z_min / r."
            )


def _as_int(name: str, label: str, value, example: int) -> int:
    """A Python or NumPy integer as a Python int (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name}: `{label}` must be an integer, got {value!r} "
            f"({type(value).__name__}). Pass e.g. `{label}={example}`."
        )
    return int(value)


def _finite_scalar(name: str, label: str, value, meaning: str) -> None:
    if _is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(
            f"{name}: {meaning} `{label}` must be finite, got {np.asarray(value)}. "
            f"Give a finite `{label}`."
        )


def _check_generator(name: str, g: np.ndarray) -> None:
    """An intensity matrix whose chain has one stationary distribution that visits
    every income state: finite, rows summing to zero, non-negative switching rates,
    and every state reachable from every other (irreducible)."""
    if not np.all(np.isfinite(g)):
        raise ValueError(
            f"{name}: the switching intensities of the income process must be "
            f"finite, got\n{g}\nGive finite rates."
        )
    off = g - np.diag(np.diag(g))
    if np.any(off < 0) or np.any(np.abs(g.sum(axis=1)) > 1e-8 * (1 + np.abs(g).max())):
        raise ValueError(
            f"{name}: `generator` must be an intensity matrix: non-negative "
            f"off-diagonal rates and rows that sum to zero; got\n{g}\nBuild one "
            "with `jaxdeq.econ.poisson_generator(rates)`."
        )
    j = g.shape[0]
    reach = (off > 0) | np.eye(j, dtype=bool)
    for _ in range(max(1, int(np.ceil(np.log2(max(j, 2)))))):
        reach = reach | ((reach.astype(np.int64) @ reach.astype(np.int64)) > 0)
    if not reach.all():
        stuck = [int(k) for k in range(j) if not reach[k].all()]
        raise ValueError(
            f"{name}: the income process never leaves some income states: from "
            f"state(s) {stuck} the household never reaches every other state (zero "
            "switching "
            "intensities), so the stationary income distribution is not unique or "
            "leaves states empty, and aggregate labour and the equilibrium are not "
            "defined. Make every switching rate (`lam`, or a path of off-diagonal "
            f"rates of `generator`) positive; got\n{g}"
        )


def _check_grid(name: str, a_min, a_max, grid_size, rho, generator):
    """The wealth grid, the discount rate and the income process of a household
    (`name`: the class the user built, for the messages)."""
    grid_size = _as_int(name, "grid_size", grid_size, 500)
    if grid_size < 3:
        raise ValueError(
            f"{name}: `grid_size` must be at least 3 (an empty or trivial grid has "
            f"no derivatives), got {grid_size}. Pass e.g. `grid_size=500`."
        )
    _finite_scalar(name, "a_min", a_min, "the borrowing limit")
    _finite_scalar(name, "a_max", a_max, "the top of the wealth grid")
    if _is_concrete(a_min, a_max) and not float(a_max) > float(a_min):
        raise ValueError(
            f"{name}: the wealth grid is empty: a_max = {float(a_max):.6g} must be "
            f"above a_min = {float(a_min):.6g}. Raise a_max or lower a_min."
        )
    if _is_concrete(rho) and not (0 < float(rho) < np.inf):
        raise ValueError(
            f"{name}: the discount rate rho must be > 0 and finite, got "
            f"{float(rho):.6g}. Pass e.g. `rho=0.05`."
        )
    generator = jnp.asarray(generator)
    if generator.ndim != 2 or generator.shape[0] != generator.shape[1]:
        raise ValueError(
            f"{name}: `generator` must be a square (J, J) intensity matrix, got "
            f"shape {generator.shape}. Build one with "
            "`jaxdeq.econ.poisson_generator(rates)`."
        )
    if _is_concrete(generator):
        _check_generator(name, np.asarray(generator))
    return grid_size


def _check_gamma(name: str, gamma) -> None:
    if _is_concrete(gamma) and not 0 < float(gamma) < np.inf:
        raise ValueError(
            f"{name}: risk aversion gamma must be > 0 and finite, got "
            f"{float(gamma)}. Pass e.g. `gamma=2.0`."
        )


class Household(AbstractHousehold):
    r"""A household with CRRA utility $u(c) = c^{1-\gamma}/(1-\gamma)$ ($\log c$ at
    $\gamma = 1$), labour income $w z_j$ in income state $j$ and interest $r a$ on
    wealth, borrowing limit $\underline a$ = `a_min`.
    """

    a_min: Scalar
    a_max: Scalar
    grid_size: int = eqx.field(static=True)
    rho: Scalar
    gamma: Scalar
    z: Float[Array, " J"]
    generator: Float[Array, "J J"]

    def __init__(
        self,
        *,
        z,
        generator,
        rho: ArrayLike = 0.05,
        gamma: ArrayLike = 2.0,
        a_min: ArrayLike = 0.0,
        a_max: ArrayLike = 20.0,
        grid_size=500,
    ):
        r"""**Arguments:**

        - `z`: the labour endowment in each income state, shape `(J,)`.
        - `generator`: the `(J, J)` intensity matrix of the income process
            ([`jaxdeq.econ.poisson_generator`][],
            [`jaxdeq.econ.diffusion_generator`][]).
        - `rho`: the discount rate $\rho > 0$.
        - `gamma`: relative risk aversion $\gamma > 0$.
        - `a_min`, `a_max`: the borrowing limit and the top of the wealth grid.
        - `grid_size`: the number of wealth grid points $N \ge 3$.
        """
        generator = jnp.asarray(generator)
        grid_size = _check_grid("Household", a_min, a_max, grid_size, rho, generator)
        self.z = jnp.asarray(z)
        if self.z.ndim != 1 or self.z.shape[0] != generator.shape[0]:
            raise ValueError(
                "Household: `z` must have one entry per income state "
                f"({generator.shape[0]}), got shape {self.z.shape}. Give one "
                "endowment per row of `generator`."
            )
        if _is_concrete(self.z):
            z_np = np.asarray(self.z)
            if not np.all(np.isfinite(z_np)) or np.any(z_np < 0):
                raise ValueError(
                    "Household: the labour endowment `z` of every income state must be "
                    f"finite and non-negative (income is w z + r a), got {z_np}. "
                    "Negative income is not an income state: model a cost or a "
                    "tax as a lower endowment, down to zero."
                )
        dtype = (
            self.z.dtype
            if jnp.issubdtype(self.z.dtype, jnp.floating)
            else jnp.result_type(float)
        )
        self.z = self.z.astype(dtype)
        self.generator = jnp.asarray(generator, dtype)
        self.rho = jnp.asarray(rho, dtype)
        self.gamma = jnp.asarray(gamma, dtype)
        _check_gamma("Household", self.gamma)
        self.a_min = jnp.asarray(a_min, dtype)
        self.a_max = jnp.asarray(a_max, dtype)
        self.grid_size = grid_size

    def utility(self, c):
        safe = jnp.where(self.gamma == 1, 2.0, self.gamma)
        return jnp.where(self.gamma == 1, jnp.log(c), c ** (1 - safe) / (1 - safe))

    def marginal_utility(self, c):
        return c ** (-self.gamma)

    def consumption(self, dv):
        return dv ** (-1 / self.gamma)

    def income(self, a, prices):
        return prices.w * self.z[None, :] + prices.r * a[:, None]


def upwind_policy(household: AbstractHousehold, v: Float[Array, "N J"], prices: Prices):
    r"""Consumption and drift of the implicit upwind scheme at a value function.

    $V'$ is the forward difference where the drift it implies is positive, the
    backward difference where that drift is negative, and $u'(y_j(a))$ (zero
    drift) otherwise; at $\underline a$ and $\bar a$ the missing difference is
    replaced by $u'(y_j)$, which imposes the state constraints.

    **Returns:**

    `(c, s, up, down)`: consumption and drift $s = y - c$, each `(N, J)`, and the
    rates $\max(s, 0)/\Delta a$ and $\max(-s, 0)/\Delta a$ at which wealth moves
    one grid point up or down.
    """
    da = household.step
    y = household.income(household.grid, prices)
    edge = household.marginal_utility(y)
    diff = (v[1:] - v[:-1]) / da
    floor = 1e-8 * jnp.min(edge)
    dvf = jnp.maximum(jnp.concatenate([diff, edge[-1:]], axis=0), floor)
    dvb = jnp.maximum(jnp.concatenate([edge[:1], diff], axis=0), floor)
    s_f = y - household.consumption(dvf)
    s_b = y - household.consumption(dvb)
    forward = s_f > 0
    backward = (s_b < 0) & jnp.invert(forward)
    s = jnp.where(forward, s_f, jnp.where(backward, s_b, 0.0))
    c = y - s
    up = jnp.where(forward, s_f, 0.0) / da
    down = jnp.where(backward, -s_b, 0.0) / da
    return c, s, up, down


def transition_operator(
    household: AbstractHousehold, up: Float[Array, "N J"], down: Float[Array, "N J"]
) -> BlockTridiagonalLinearOperator:
    r"""The generator $A$ of the discretised wealth-and-income process: row
    $(i, j)$ moves to $(i \pm 1, j)$ at rates `up`/`down` and to $(i, k)$ at rate
    $\Lambda_{jk}$. Rows sum to zero; $A^\top$ is the discretised Kolmogorov
    forward operator."""
    diag_blocks = jax.vmap(jnp.diag)(-(up + down)) + household.generator[None]
    lower = jax.vmap(jnp.diag)(down[1:])
    upper = jax.vmap(jnp.diag)(up[:-1])
    return BlockTridiagonalLinearOperator(diag_blocks, lower, upper)


def hjb_residual(v: Float[Array, "N J"], args) -> Float[Array, "N J"]:
    r"""The residual $\rho V - u(c) - A(V) V$ of the upwind scheme; `args` is
    `(household, prices)`. Its root is the finite-difference value function, and
    its Jacobian is $\rho I - A(V)$ (envelope theorem)."""
    household, prices = args
    c, _, up, down = upwind_policy(household, v, prices)
    generator = transition_operator(household, up, down)
    return household.rho * v - household.utility(c) - generator.mv(v)


def stationary_density(
    generator: BlockTridiagonalLinearOperator, step: Scalar, iterations: int = 3
) -> Float[Array, "N J"]:
    r"""The stationary density $g$ of a generator: $A^\top g = 0$, $g \ge 0$,
    $\sum g\,\Delta a = 1$.

    Found by inverse iteration with a tiny shift, $(\varepsilon I - A^\top)
    x_{k+1} = x_k$, with $\varepsilon = \epsilon_{\text{mach}}^{2/3} \max|A_{ii}|$:
    $\varepsilon I - A^\top$ is a non-singular M-matrix (its columns sum to
    $\varepsilon$), so every iterate is non-negative and block-tridiagonal
    solvable, and the error shrinks by $\varepsilon/|\lambda_2|$ per iteration
    ($\lambda_2$ the slowest decaying mode). Unlike fixing one entry of $g$, this
    needs no knowledge of where the mass is, and it is differentiable.
    """
    dtype = generator.diagonal.dtype
    n, j, _ = generator.diagonal.shape
    scale = jnp.max(jnp.abs(jnp.diagonal(generator.diagonal, axis1=1, axis2=2)))
    eps = jnp.finfo(dtype).eps ** (2 / 3) * scale
    transposed = generator.transpose()
    shifted = BlockTridiagonalLinearOperator(
        eps * jnp.eye(j, dtype=dtype)[None] - transposed.diagonal,
        -transposed.lower,
        -transposed.upper,
    )
    x = jnp.full((n, j), 1.0 / (n * j), dtype)
    solver = BlockTridiagonal()
    for _ in range(iterations):
        x = lx.linear_solve(shifted, x, solver, throw=False).value
        x = x / jnp.sum(x)
    return x / step


class HouseholdSolution(eqx.Module):
    """The finite-difference solution of a household problem at given prices
    ([`jaxdeq.econ.solve_household`][]).

    Its arrays are `(N, J)`: grid point by income state. It is differentiable with
    respect to the household's parameters and the prices (implicit
    differentiation of the HJB scheme, then of the KFE solve).
    """

    grid: Float[Array, " N"]
    v: Float[Array, "N J"]
    c: Float[Array, "N J"]
    s: Float[Array, "N J"]
    density: Float[Array, "N J"]
    prices: Prices
    steps: Int[Array, ""]
    hjb_residual: Scalar
    kfe_residual: Scalar
    result: RESULTS

    @property
    def step(self) -> Scalar:
        """The grid spacing $\\Delta a$."""
        return self.grid[1] - self.grid[0]

    @property
    def assets(self) -> Scalar:
        """Aggregate wealth $\\sum_{i,j} a_i g_{ij} \\Delta a$."""
        return jnp.sum(self.grid[:, None] * self.density) * self.step

    @property
    def consumption(self) -> Scalar:
        """Aggregate consumption $\\sum_{i,j} c_{ij} g_{ij} \\Delta a$."""
        return jnp.sum(self.c * self.density) * self.step

    @property
    def mass_at_limit(self) -> Float[Array, " J"]:
        """The mass at the borrowing limit in each income state, $g_{0j}\\Delta a$:
        the discrete counterpart of the point mass at $\\underline a$."""
        return self.density[0] * self.step

    @property
    def wealth_distribution(self) -> Float[Array, " N"]:
        """The probability of each wealth grid point, summed over income states."""
        return jnp.sum(self.density, axis=1) * self.step

    @property
    def report(self) -> Report:
        """The solve as a [`jaxdeq.Report`][]: `result`, `num_steps` (Newton steps
        of the HJB scheme), `abs_residual` (`hjb_residual`, the max-norm residual of
        the scheme at the returned $V$), and `extra["kfe_residual"]`."""
        return _report(
            self.result, self.steps, self.hjb_residual, kfe=self.kfe_residual
        )


def _report(result, steps, abs_residual, **extra) -> Report:
    abs_residual = jnp.asarray(abs_residual)
    nan = jnp.full(abs_residual.shape, jnp.nan, abs_residual.dtype)
    return Report(
        result=result,
        num_steps=jnp.asarray(steps),
        num_fn_evals=jnp.full(abs_residual.shape, -1, jnp.int32),
        abs_residual=abs_residual,
        rel_residual=nan,
        residual_trace=jnp.full(abs_residual.shape + (TRACE_SIZE,), jnp.nan),
        extra={k + "_residual" if k == "kfe" else k: v for k, v in extra.items()},
    )


def _default_rtol(dtype) -> float:
    return max(1e-12, 100 * float(jnp.finfo(dtype).eps))


@eqx.filter_jit
def _solve_household(household, prices, v0, delta, rtol, atol, max_steps):
    solver = PseudoTransientNewton(
        rtol=rtol, atol=atol, delta=delta, linear_solver=BlockTridiagonal()
    )
    sol = optx.root_find(
        hjb_residual,
        solver,
        v0,
        args=(household, prices),
        max_steps=max_steps,
        adjoint=optx.ImplicitAdjoint(linear_solver=BlockTridiagonal()),
        throw=False,
    )
    v = sol.value
    c, s, up, down = upwind_policy(household, v, prices)
    generator = transition_operator(household, up, down)
    g = stationary_density(generator, household.step)
    residual = jnp.max(jnp.abs(hjb_residual(v, (household, prices))))
    kfe = (
        jnp.max(jnp.abs(generator.transpose().mv(g)))
        / jnp.max(jnp.abs(jnp.diagonal(generator.diagonal, axis1=1, axis2=2)))
        / jnp.max(g)
    )
    return HouseholdSolution(
        grid=household.grid,
        v=v,
        c=c,
        s=s,
        density=g,
        prices=prices,
        steps=sol.stats["num_steps"],
        hjb_residual=jax.lax.stop_gradient(residual),
        kfe_residual=jax.lax.stop_gradient(kfe),
        result=as_results(sol.result),
    )


def solve_household(
    household: AbstractHousehold,
    prices: Prices,
    *,
    v0: Float[Array, "N J"] | None = None,
    delta: float = 1000.0,
    rtol: float | None = None,
    atol: float = 0.0,
    max_steps: int = 500,
    throw: bool = True,
) -> HouseholdSolution:
    r"""Solve a household's HJB equation by the implicit upwind scheme and its
    Kolmogorov forward equation for the stationary density.

    The HJB scheme $\rho V - u(c(V)) - A(V)V = 0$ is solved by
    [`jaxdeq.PseudoTransientNewton`][] with step $\Delta$ (exactly the iteration
    $(\tfrac1\Delta + \rho - A_n)V_{n+1} = u(c_n) + V_n/\Delta$ of Achdou et al.)
    and a block-tridiagonal solve per step ([`jaxdeq.BlockTridiagonal`][],
    $O(NJ^3)$). The density solves $A^\top g = 0$ with the transposed generator
    ([`jaxdeq.econ.stationary_density`][]); the first grid point carries the mass
    point at the borrowing limit.

    Derivatives with respect to anything in `household` and `prices` are implicit
    ($\partial V/\partial\theta = -(\rho I - A)^{-1}\partial_\theta
    \text{residual}$, one more block-tridiagonal solve), in forward and reverse
    mode.

    **Arguments:**

    - `household`: an [`jaxdeq.econ.AbstractHousehold`][].
    - `prices`: [`jaxdeq.econ.Prices`][].
    - `v0`: the starting value function (default $u(y)/\rho$).
    - `delta`: the pseudo-time step (Moll's codes: 1000; `float("inf")` for policy
        iteration).
    - `rtol`, `atol`: stop when $\max|V_{n+1} - V_n| \le$ `atol` $+$ `rtol`
        $\max|V|$ (default `rtol`: $10^{-12}$ in float64, $100\epsilon$ otherwise).
    - `max_steps`: the most iterations.
    - `throw`: raise if the iteration fails (otherwise see `result`).

    **Returns:**

    A [`jaxdeq.econ.HouseholdSolution`][].

    **Raises:**

    `ValueError` before solving, when the values are concrete, for $r \ge \rho$
    (no stationary distribution) or income at the borrowing limit that is not
    positive.
    """
    household.check(prices)
    if v0 is None:
        v0 = household.initial_value(prices)
    dtype = jnp.result_type(v0)
    if rtol is None:
        rtol = _default_rtol(dtype)
    max_steps = _as_int("solve_household", "max_steps", max_steps, 500)
    if max_steps < 1:
        raise ValueError(
            f"solve_household: `max_steps` must be at least 1, got {max_steps}. "
            "Pass e.g. `max_steps=500`."
        )
    sol = _solve_household(
        household, prices, v0, float(delta), float(rtol), float(atol), max_steps
    )
    if throw:
        sol = eqx.tree_at(
            lambda s: s.v,
            sol,
            eqx.error_if(
                sol.v,
                sol.result != RESULTS.successful,
                "solve_household: the upwind iteration did not converge (max_steps "
                "reached, divergence or NaN). Try a smaller `delta`, more "
                "`max_steps`, or check the parameters (r < rho, positive income).",
            ),
        )
    return sol


del warnings, Any
