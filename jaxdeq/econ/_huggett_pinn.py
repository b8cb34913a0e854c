"""General equilibrium of the continuous-time Huggett economy by PINNs: the value
functions, the wealth distribution and the interest rate, trained together."""

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from ..pinn import fit, ShapeConstrainedNetwork
from ._hjb import crra, positive_marginal_value


# r = r0 + _R_SCALE * r_raw: Adam moves every parameter by about its learning rate
# per step, which must be a small change of an interest rate.
_R_SCALE = 0.01
# The width of the state-constraint correction, relative to the wealth range.
_BUMP = 0.05


class _Economy(eqx.Module):
    gamma: float = eqx.field(static=True)
    rho: float = eqx.field(static=True)
    z: tuple[float, float] = eqx.field(static=True)
    lam: tuple[float, float] = eqx.field(static=True)
    a_min: float = eqx.field(static=True)
    a_max: float = eqx.field(static=True)
    r0: float = eqx.field(static=True)

    @property
    def length(self) -> float:
        return self.a_max - self.a_min

    @property
    def shares(self) -> tuple[float, float]:
        total = self.lam[0] + self.lam[1]
        return self.lam[1] / total, self.lam[0] / total


class _Unknowns(eqx.Module):
    value: eqx.nn.MLP
    cdf: tuple[ShapeConstrainedNetwork, ShapeConstrainedNetwork]
    mass_logit: Float[Array, "2"]
    r_raw: Scalar


def _rate(econ: _Economy, unk: _Unknowns) -> Scalar:
    return econ.r0 + _R_SCALE * unk.r_raw


def _xi(econ: _Economy, a: Scalar) -> Scalar:
    # The square-root coordinate in which both V and G are smooth at a_min.
    return jnp.sqrt(jnp.maximum(a - econ.a_min, 0.0) / econ.length)


def _guess(econ: _Economy, a: Scalar, r: Scalar | float) -> Float[Array, "2"]:
    # The value of consuming income forever (the usual initial guess), at the
    # current r, so that the network only learns the correction to it.
    income = jnp.asarray(econ.z, a.dtype) + r * a
    return crra(income, econ.gamma) / econ.rho


def _wealth(econ: _Economy, xi: Scalar) -> Scalar:
    return econ.a_min + econ.length * xi**2


def _value_and_slope(
    econ: _Economy, unk: _Unknowns, xi: Scalar
) -> tuple[Float[Array, "2"], Float[Array, "2"]]:
    """V_j and V_j' (in wealth) at a = a_min + L xi^2.

    V = guess + scale * (M(xi) - xi M'(0)) + bump: smooth in xi with no linear
    term, so that V' = (M'(xi) - M'(0)) / (2 L xi) is finite at a_min, and with
    V_1'(a_min) = u'(z_1 + r a_min) exactly."""
    one = jnp.ones_like(xi)
    zero = jnp.zeros_like(xi)

    def net(x):
        return unk.value((2 * x - 1)[None])

    def net_slope(x):
        return jax.jvp(net, (x,), (one,))[1]

    m, dm = jax.jvp(net, (xi,), (one,))
    dm0, d2m0 = jax.jvp(net_slope, (zero,), (one,))
    a = _wealth(econ, xi)
    r = _rate(econ, unk)
    guess, dguess = jax.jvp(lambda b: _guess(econ, b, r), (a,), (one,))
    scale = jnp.abs(_guess(econ, jnp.asarray(econ.a_min, xi.dtype), econ.r0))
    safe = jnp.where(xi > 1e-8, xi, one)
    slope = jnp.where(
        xi > 1e-8, (dm - dm0) / (2 * econ.length * safe), d2m0 / (2 * econ.length)
    )
    v = guess + scale * (m - xi * dm0)
    dv = dguess + scale * slope
    # A bump with slope 1 at a_min, local so that the guess stays a guess.
    a_lo = jnp.asarray(econ.a_min, xi.dtype)
    target = (econ.z[0] + r * econ.a_min) ** (-econ.gamma)
    slope_lo = jax.jvp(lambda b: _guess(econ, b, r)[0], (a_lo,), (one,))[1]
    kappa = target - slope_lo - scale[0] * d2m0[0] / (2 * econ.length)
    d = a - econ.a_min
    width = _BUMP * econ.length
    e = jnp.exp(-d / width)
    v = v.at[0].add(kappa * d * e)
    dv = dv.at[0].add(kappa * e * (1 - d / width))
    return v, dv


def _policies(econ: _Economy, unk: _Unknowns, xi: Scalar) -> dict[str, Array]:
    v, dv = _value_and_slope(econ, unk, xi)
    c = positive_marginal_value(dv) ** (-1 / econ.gamma)
    a = _wealth(econ, xi)
    income = jnp.asarray(econ.z, xi.dtype) + _rate(econ, unk) * a
    return {"value": v, "dvalue": dv, "consumption": c, "savings": income - c}


def _value(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    return _value_and_slope(econ, unk, xi)[0]


def _hjb_residual(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    p = _policies(econ, unk, xi)
    v, lam = p["value"], jnp.asarray(econ.lam, xi.dtype)
    rhs = (
        crra(p["consumption"], econ.gamma)
        + p["dvalue"] * p["savings"]
        + lam * (v[::-1] - v)
    )
    return (econ.rho * v - rhs) / jnp.abs(econ.rho * v)


def _masses(econ: _Economy, unk: _Unknowns) -> Float[Array, "2"]:
    shares = jnp.asarray(econ.shares, unk.mass_logit.dtype)
    return shares * jax.nn.sigmoid(unk.mass_logit)


def _cdf_xi(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    """G_j as a function of xi: m_j + (pi_j - m_j) H_j(xi), H_j increasing from
    H_j(0) = 0 to H_j(1) = 1."""
    shares = jnp.asarray(econ.shares, xi.dtype)
    m = _masses(econ, unk)
    lo, hi = jnp.zeros_like(xi), jnp.ones_like(xi)
    out = []
    for j in range(2):
        net = unk.cdf[j]
        n0, n1 = net(lo[None]), net(hi[None])
        out.append((net(xi[None]) - n0) / (n1 - n0))
    return m + (shares - m) * jnp.stack(out)


def _kfe_residual(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    """s_j G_j' + lam_j G_j - lam_{-j} G_{-j} at a = a_min + L xi^2 (xi > 0),
    relative to the flux scale lam_1 pi_1."""
    s = _policies(econ, unk, xi)["savings"]
    g, dg_dxi = jax.jvp(lambda x: _cdf_xi(econ, unk, x), (xi,), (jnp.ones_like(xi),))
    lam = jnp.asarray(econ.lam, xi.dtype)
    res = s * dg_dxi / (2 * econ.length * xi) + lam * g - lam[::-1] * g[::-1]
    return res / (econ.lam[0] * econ.shares[0])


def _legendre(t: Scalar, num: int) -> tuple[Array, Array]:
    """P_1..P_num and their derivatives at t, by the three-term recurrence."""
    p = [jnp.ones_like(t), t]
    dp = [jnp.zeros_like(t), jnp.ones_like(t)]
    for k in range(1, num):
        p.append(((2 * k + 1) * t * p[k] - k * p[k - 1]) / (k + 1))
        dp.append(dp[k - 1] + (2 * k + 1) * p[k])
    return jnp.stack(p[1 : num + 1]), jnp.stack(dp[1 : num + 1])


def _weak_integrands(econ: _Economy, unk: _Unknowns, xi: Scalar, num: int):
    """For the test functions psi_k (Legendre in normalised wealth) on type i:
    f_self[k, i] = s_i psi_k' - lam_i psi_k (against dG_i) and
    f_other[k, i] = lam_{-i} psi_k (against dG_{-i})."""
    a = _wealth(econ, xi)
    s = _policies(econ, unk, xi)["savings"]
    t = 2 * (a - econ.a_min) / econ.length - 1
    psi, dpsi = _legendre(t, num)
    dpsi = dpsi * (2 / econ.length)
    lam = jnp.asarray(econ.lam, xi.dtype)
    f_self = s[None, :] * dpsi[:, None] - lam[None, :] * psi[:, None]
    f_other = lam[::-1][None, :] * psi[:, None]
    return f_self, f_other


def _weak_residual(
    econ: _Economy, unk: _Unknowns, num: int, nodes: Array, weights: Array
) -> Float[Array, "num 2"]:
    r"""$\sum_j \int (A\varphi)_j\,dG_j$ for the test functions
    $\varphi = \psi_k e_i$: the stationarity of $G$ in weak form. Each
    $\int f\,dG_j = f(\bar a)\pi_j - \int_0^1 \partial_x f\, G_j\,dx$ needs
    $G$ only at the quadrature nodes, so a mass point (or a step of $G$ between
    nodes) is seen for what it is."""
    shares = jnp.asarray(econ.shares, nodes.dtype)

    def at_node(xi):
        (_, _), (d_self, d_other) = jax.jvp(
            lambda x: _weak_integrands(econ, unk, x, num), (xi,), (jnp.ones_like(xi),)
        )
        g = _cdf_xi(econ, unk, xi)
        return d_self * g[None, :] + d_other * g[::-1][None, :]

    inner = jnp.einsum("q,qki->ki", weights, jax.vmap(at_node)(nodes))
    f_self, f_other = _weak_integrands(econ, unk, jnp.ones((), nodes.dtype), num)
    top = f_self * shares[None, :] + f_other * shares[::-1][None, :]
    k = jnp.arange(1, num + 1, dtype=nodes.dtype)
    bound = 1 + k * (k + 1) * (econ.z[1] - econ.z[0]) / econ.length
    return (top - inner) / (econ.lam[0] * econ.shares[0] * bound[:, None])


def _quadrature(num: int, panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(num)
    edges = np.linspace(0.0, 1.0, panels + 1)
    nodes = [(lo + hi) / 2 + (hi - lo) / 2 * x for lo, hi in zip(edges, edges[1:])]
    weights = [(hi - lo) / 2 * w for lo, hi in zip(edges, edges[1:])]
    return np.concatenate(nodes), np.concatenate(weights)


def _excess_supply(
    econ: _Economy, unk: _Unknowns, nodes: Array, weights: Array
) -> Scalar:
    """int a dG = a_max G(a_max) - int G da, with G(a_max) = 1; in xi, da = 2 L xi
    dxi."""
    g = jax.vmap(lambda x: jnp.sum(_cdf_xi(econ, unk, x)))(nodes)
    return econ.a_max - jnp.sum(weights * g * 2 * econ.length * nodes)


def _density(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    _, dg = jax.jvp(lambda x: _cdf_xi(econ, unk, x), (xi,), (jnp.ones_like(xi),))
    return dg / (2 * econ.length * xi)


class HuggettPINNSolution(eqx.Module):
    r"""What [`jaxdeq.econ.solve_huggett_pinn`][] returns: the stationary
    equilibrium of the Huggett economy as trained networks.

    The methods take wealth `a` of any shape `(...)` and return arrays of shape
    `(..., 2)`, the last axis being the income state (low, high).

    **Attributes:**

    - `r`: the equilibrium interest rate.
    - `mass`: shape `(2,)`, the mass of each type at the borrowing limit,
        $m_j = G_j(\underline a)$.
    - `shares`: shape `(2,)`, the stationary income shares
        $\pi_j = \lambda_{-j}/(\lambda_1 + \lambda_2)$.
    - `excess_supply`: $\int a\, dG$, the market-clearing residual.
    - `terms`: the final loss terms at `r` (`"hjb"`, `"kfe"`, `"weak"`,
        `"loss"`, and `"clearing"` $= S^2$) as floats, and `"hjb_max"`,
        `"kfe_max"`: the largest absolute normalised residuals on a fine grid.
    - `clearing`: the `(r, S(r))` of every solve of the secant iteration.
    - `history`: one [`jaxdeq.pinn.FitResult`][] history per training stage,
        keyed `"hjb_k"`, `"kfe_k"` and `"both_k"` for the `k`-th solve.
    - `wall_time`: seconds, compilation included.
    """

    r: Scalar
    mass: Float[Array, "2"]
    shares: Float[Array, "2"]
    excess_supply: Scalar
    terms: dict[str, float]
    clearing: tuple[tuple[float, float], ...]
    history: dict[str, dict[str, np.ndarray]]
    wall_time: float
    economy: _Economy
    unknowns: _Unknowns

    def _map(self, fn: Callable, a) -> Float[Array, "... 2"]:
        a = jnp.asarray(a)
        flat = a.reshape(-1)
        xi = jax.vmap(lambda b: _xi(self.economy, b))(flat)
        out = jax.vmap(lambda x: fn(self.economy, self.unknowns, x))(xi)
        return out.reshape(*a.shape, 2)

    def value(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        """The value functions $V_j(a)$."""
        return self._map(_value, a)

    def consumption(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""Consumption $c_j(a) = V_j'(a)^{-1/\gamma}$."""
        return self._map(lambda e, u, b: _policies(e, u, b)["consumption"], a)

    def savings(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        """Savings (the drift of wealth) $s_j(a) = z_j + r a - c_j(a)$."""
        return self._map(lambda e, u, b: _policies(e, u, b)["savings"], a)

    def cdf(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""The cumulative distribution $G_j(a)$: the mass of type $j$ with wealth
        at most $a$, the mass point included; $G_j(\bar a) = \pi_j$."""
        return self._map(_cdf_xi, a)

    def density(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""The density $g_j = G_j'$ for $a > \underline a$ (the mass point is
        `mass`; the low type's density has an integrable singularity
        $\propto (a - \underline a)^{-1/2}$ there)."""
        return self._map(_density, a)

    def hjb_residual(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""The HJB residual relative to $|\rho V_j(a)|$."""
        return self._map(_hjb_residual, a)

    def kfe_residual(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""$s_j G_j' + \lambda_j G_j - \lambda_{-j} G_{-j}$ relative to
        $\lambda_1\pi_1$, for $a > \underline a$."""
        return self._map(_kfe_residual, a)


def _collocation(num: int) -> np.ndarray:
    """Points in xi in (0, 1): half equally spaced in xi (dense near the
    borrowing limit in wealth), half equally spaced in wealth."""
    n1 = num // 2
    n2 = num - n1
    xi = (np.arange(n1) + 0.5) / n1
    a_unit = (np.arange(n2) + 0.5) / n2
    return np.sort(np.concatenate([xi, np.sqrt(a_unit)]))


def solve_huggett_pinn(
    *,
    gamma: float = 2.0,
    rho: float = 0.05,
    z: tuple[float, float] = (0.1, 0.2),
    lam: tuple[float, float] = (1.2, 1.2),
    a_min: float = -0.15,
    a_max: float = 5.0,
    r0: float = 0.03,
    key: PRNGKeyArray | None = None,
    width: int = 32,
    depth: int = 3,
    cdf_width: int = 16,
    cdf_depth: int = 2,
    num_points: int = 512,
    quadrature_panels: int = 16,
    adam_steps: int | tuple[int, int] = 2000,
    lbfgs_steps: int | tuple[int, int, int] = 3000,
    learning_rate: float = 1e-3,
    clearing_iterations: int = 8,
    clearing_tol: float = 1e-7,
    initial_step: float = 0.002,
    kfe_weight: float = 1.0,
    weak_weight: float = 1.0,
    test_functions: int = 16,
    log_every: int = 250,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> HuggettPINNSolution:
    r"""Solve the stationary general equilibrium of the Huggett economy with
    neural networks for the value functions and for the wealth distribution, and
    the interest rate as a trained scalar.

    Households with CRRA utility $u(c) = c^{1-\gamma}/(1-\gamma)$ and income
    $z_j$ that switches from $j$ to $-j$ at rate $\lambda_j$ save in a bond at
    rate $r$ and cannot borrow below $\underline a$:

    $$\rho V_j = \max_c\, u(c) + V_j'(a)(z_j + r a - c)
        + \lambda_j (V_{-j} - V_j), \qquad
        V_j'(\underline a) \ge u'(z_j + r \underline a).$$

    The stationary distribution solves $0 = -(s_j g_j)' - \lambda_j g_j +
    \lambda_{-j} g_{-j}$, and in equilibrium bonds are in zero net supply,
    $\int a\,dG = 0$.

    **Formulation.**

    - *Value.* $V_j(a) = \bar V_j(a) + |\bar V_j(\underline a)|\,(M_j(x) -
        x M_j'(0)) + \kappa\,(a - \underline a)e^{-(a-\underline a)/\ell}\,[j=1]$
        with $x = ((a - \underline a)/(\bar a - \underline a))^{1/2}$, $\bar V_j
        = u(z_j + r a)/\rho$ (the value of consuming income forever) and $M$ one
        MLP in $x$ with two outputs. Near the limit the low type dissaves like
        $-\sqrt{a - \underline a}$, so $V_1$ is a smooth function of $x$ with no
        linear term, which is exactly this class; taking $x$ as the input also
        gives the network its resolution where the distribution lives (a network
        in $a$ converged 30 times more slowly). $\kappa$ makes the state
        constraint $V_1'(\underline a) = u'(z_1 + r\underline a)$ hold exactly
        (the constraint binds for the low type when $r < \rho$); it selects the
        right solution among those of the equation on the open interval. The
        high type saves at the limit; its constraint is slack. At the top, a
        penalty on $\max(0, s_j(\bar a))^2$ rules out the family of solutions
        that save out of the domain (found without it).
    - *Distribution.* The density has a Dirac mass at $\underline a$ and an
        integrable singularity next to it, so the networks represent the
        cumulative distributions $G_j(a) = m_j + (\pi_j - m_j) H_j(x)$, with
        $H_j$ increasing from 0 to 1 (a monotone network,
        [`jaxdeq.pinn.ShapeConstrainedNetwork`][], rescaled), the mass points
        $m_j = \pi_j \operatorname{sigmoid}(\theta_j)$ trained, and
        $\pi_j = \lambda_{-j}/(\lambda_1+\lambda_2)$. Integrating the KFE from
        $\underline a$ (where nothing flows out), it becomes the first-order
        system $s_j G_j' = -\lambda_j G_j + \lambda_{-j} G_{-j}$ for
        $a > \underline a$ (strong form, at collocation points); at $\bar a$ both
        sides vanish by the choice of $\pi$. Collocation alone cannot see a step
        of $G$ between two points, so the loss also has the weak form
        $\sum_j \int (\mathcal A\varphi)_j\,dG_j = 0$ for Legendre test
        functions $\varphi$ on each type ($\mathcal A$ the generator), with
        $\int f\,dG_j = f(\bar a)\pi_j - \int \partial_x f\,G_j\,dx$ by
        Gauss–Legendre quadrature, which needs $G$ only at the nodes.
    - *Market clearing.* $S(r) = \int a\,dG = \bar a - \int_{\underline a}^{\bar
        a} (G_1 + G_2)\,da$ (by parts), by composite Gauss–Legendre quadrature in
        $x$, where the integrand is smooth.
    - *Training.* At a given $r$, by [`jaxdeq.pinn.fit`][] (Adam then
        L-BFGS): the HJB (value network only), then the KFE (distribution
        only), then optionally both together. $r$ is a scalar in the parameter
        pytree, updated between solves by a safeguarded secant iteration on
        $S(r)$ (increasing in $r$), each solve starting from the same initial
        networks. Training $r$ by gradient together with the networks, with
        $S^2$ as a penalty, did not work: $S$ is poorly conditioned with respect
        to the residuals (residuals of $10^{-6}$ allowed $S$ to move by
        $10^{-2}$), so the optimiser cleared the market by bending $G$ and $V$
        and left $r$ near $r_0$. Warm starting the networks from the previous
        $r$ failed the same way.

    Run in float64 (`jax.config.update("jax_enable_x64", True)`).

    **Arguments:**

    - `gamma`, `rho`, `z`, `lam`, `a_min`, `a_max`: the economy (Moll's values
        by default); `z` and `lam` are (low, high).
    - `r0`: the first interest rate tried; must be below `rho`.
    - `key`: PRNG key for the initial weights (default `jax.random.PRNGKey(0)`).
    - `width`, `depth`: the value network's.
    - `cdf_width`, `cdf_depth`: each distribution network's.
    - `num_points`: collocation points.
    - `quadrature_panels`: panels of 16-point Gauss–Legendre for $\int G\,da$.
    - `adam_steps`: Adam steps of the (hjb, kfe) stages, or one int for both.
    - `lbfgs_steps`: L-BFGS steps of the (hjb, kfe, both) stages, or one int.
    - `learning_rate`: Adam's.
    - `kfe_weight`, `weak_weight`: weights of the strong and weak KFE terms.
    - `test_functions`: Legendre test functions per type in the weak form.
    - `clearing_iterations`: the most solves at different $r$.
    - `clearing_tol`: stop when $|S(r)|$ is below this.
    - `initial_step`: the first change of $r$ (towards clearing).
    - `log_every`, `progress`: as in [`jaxdeq.pinn.fit`][]; `progress` also
        receives `"stage"`, and after each solve a dict with `"stage":
        "clearing"`, `"iteration"`, `"r"` and `"excess_supply"`.

    **Returns:**

    A [`jaxdeq.econ.HuggettPINNSolution`][].

    **Raises:**

    `ValueError` for an economy outside the model's assumptions.

    ??? cite "References"

        ```bibtex
        @article{achdou2022income,
            title={Income and Wealth Distribution in Macroeconomics: A
                   Continuous-Time Approach},
            author={Achdou, Yves and Han, Jiequn and Lasry, Jean-Michel and
                    Lions, Pierre-Louis and Moll, Benjamin},
            journal={The Review of Economic Studies},
            volume={89},
            number={1},
            pages={45--86},
            year={2022}
        }
        ```
    """
    z = (float(z[0]), float(z[1]))
    lam = (float(lam[0]), float(lam[1]))
    if gamma <= 0 or rho <= 0:
        raise ValueError(f"Need gamma > 0 and rho > 0, got {gamma}, {rho}.")
    if not 0 < z[0] < z[1] or min(lam) <= 0:
        raise ValueError(
            f"Need 0 < z[0] < z[1] (low income first) and lam > 0, got z={z}, "
            f"lam={lam}."
        )
    if not a_min < a_max or z[0] + r0 * a_min <= 0:
        raise ValueError(
            f"Need a_min < a_max and income z[0] + r0 a_min > 0 at the limit, got "
            f"a_min={a_min}, a_max={a_max}, r0={r0}."
        )
    if not r0 < rho:
        raise ValueError(f"Need r0 < rho (or wealth diverges), got {r0} >= {rho}.")
    steps = []
    for name, value, num in (
        ("adam_steps", adam_steps, 2),
        ("lbfgs_steps", lbfgs_steps, 3),
    ):
        value = (value,) * num if isinstance(value, int) else tuple(value)
        if len(value) != num or min(value) < 0:
            raise ValueError(
                f"{name}={value!r}: give a non-negative int or {num} of them."
            )
        steps.append(value)
    if clearing_iterations < 1:
        raise ValueError(f"clearing_iterations={clearing_iterations} must be >= 1.")
    start = time.perf_counter()
    key = jr.PRNGKey(0) if key is None else key
    k_value, k_cdf1, k_cdf2, k_fit = jr.split(key, 4)
    econ = _Economy(
        gamma=float(gamma),
        rho=float(rho),
        z=z,
        lam=lam,
        a_min=float(a_min),
        a_max=float(a_max),
        r0=float(r0),
    )
    dtype = jnp.zeros(()).dtype
    mlp = eqx.nn.MLP(1, 2, width, depth, activation=jnp.tanh, key=k_value)
    # Start from the guess: the last layer is zero.
    mlp = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        mlp,
        replace_fn=jnp.zeros_like,
    )
    cdf = tuple(
        ShapeConstrainedNetwork(
            [0.0], [1.0], width=cdf_width, depth=cdf_depth, concave=False, key=k
        )
        for k in (k_cdf1, k_cdf2)
    )
    unk = _Unknowns(
        value=mlp,
        cdf=cdf,
        mass_logit=jnp.asarray([-2.0, -6.0], dtype),
        r_raw=jnp.zeros((), dtype),
    )
    points = jnp.asarray(_collocation(num_points), dtype)
    nodes, weights = (jnp.asarray(v, dtype) for v in _quadrature(16, quadrature_panels))

    def hjb_term(u):
        h = jnp.mean(jax.vmap(lambda x: _hjb_residual(econ, u, x))(points) ** 2)
        # The state constraint at the top, s_j(a_max) <= 0: without it the
        # equation has a family of solutions that save out of the domain.
        s_top = _policies(econ, u, jnp.ones((), dtype))["savings"]
        return h + jnp.sum(jnp.maximum(s_top / econ.z[1], 0.0) ** 2)

    def kfe_term(u):
        return jnp.mean(jax.vmap(lambda x: _kfe_residual(econ, u, x))(points) ** 2)

    def sample(key, params):
        del key, params
        return points

    def stage_progress(stage):
        if progress is None:
            return None
        return lambda info: progress({**info, "stage": stage})

    def weak_term(u):
        return jnp.mean(_weak_residual(econ, u, test_functions, nodes, weights) ** 2)

    def loss_fixed_r(u):
        h, k, w = hjb_term(u), kfe_term(u), weak_term(u)
        return h + kfe_weight * k + weak_weight * w, {"hjb": h, "kfe": k, "weak": w}

    def solve_at(r, tag):
        """Value, then distribution, then both, at a fixed r, from the initial
        networks."""
        u0 = eqx.tree_at(
            lambda u: u.r_raw, unk0, jnp.asarray((r - r0) / _R_SCALE, dtype)
        )
        keys = jr.split(k_fit, 3)
        out = {}

        def loss_hjb(value, _):
            h = hjb_term(eqx.tree_at(lambda u: u.value, u0, value))
            return h, {"hjb": h}

        res = fit(
            loss_hjb,
            u0.value,
            sample,
            key=keys[0],
            adam_steps=steps[0][0],
            lbfgs_steps=steps[1][0],
            learning_rate=learning_rate,
            log_every=log_every,
            progress=stage_progress(f"hjb{tag}"),
        )
        u1 = eqx.tree_at(lambda u: u.value, u0, res.params)
        out[f"hjb{tag}"] = res.history

        def loss_kfe(params, _):
            u = eqx.tree_at(lambda u: (u.cdf, u.mass_logit), u1, params)
            k, w = kfe_term(u), weak_term(u)
            return k + weak_weight * w, {"kfe": k, "weak": w}

        res = fit(
            loss_kfe,
            (u1.cdf, u1.mass_logit),
            sample,
            key=keys[1],
            adam_steps=steps[0][1],
            lbfgs_steps=steps[1][1],
            learning_rate=learning_rate,
            log_every=log_every,
            progress=stage_progress(f"kfe{tag}"),
        )
        u2 = eqx.tree_at(lambda u: (u.cdf, u.mass_logit), u1, res.params)
        out[f"kfe{tag}"] = res.history
        if steps[1][2] > 0:

            def loss_both(params, _):
                return loss_fixed_r(
                    eqx.tree_at(lambda u: (u.value, u.cdf, u.mass_logit), u2, params)
                )

            res = fit(
                loss_both,
                (u2.value, u2.cdf, u2.mass_logit),
                sample,
                key=keys[2],
                adam_steps=0,
                lbfgs_steps=steps[1][2],
                log_every=log_every,
                progress=stage_progress(f"both{tag}"),
            )
            u2 = eqx.tree_at(lambda u: (u.value, u.cdf, u.mass_logit), u2, res.params)
            out[f"both{tag}"] = res.history
        return u2, out

    # Market clearing: a safeguarded secant iteration on the excess supply S(r),
    # which increases in r, each S(r) from a fresh solve at that r.
    unk0 = unk
    history: dict[str, dict[str, np.ndarray]] = {}
    r_lo, r_hi = -np.inf, float(rho)
    tried: list[tuple[float, float]] = []
    r = float(r0)
    for it in range(clearing_iterations):
        unk, out = solve_at(r, f"_{it}")
        history.update(out)
        excess_r = float(_excess_supply(econ, unk, nodes, weights))
        tried.append((r, excess_r))
        if progress is not None:
            progress(
                {
                    "stage": "clearing",
                    "iteration": it,
                    "r": r,
                    "excess_supply": excess_r,
                }
            )
        if excess_r < 0:
            r_lo = max(r_lo, r)
        else:
            r_hi = min(r_hi, r)
        if abs(excess_r) <= clearing_tol or it == clearing_iterations - 1:
            break
        if len(tried) == 1:
            r_new = r + initial_step if excess_r < 0 else r - initial_step
        else:
            (r_a, s_a), (r_b, s_b) = tried[-2], tried[-1]
            r_new = r_b - s_b * (r_b - r_a) / (s_b - s_a) if s_b != s_a else r_b
        if not r_lo < r_new < r_hi:
            r_new = 0.5 * (r_lo + r_hi) if np.isfinite(r_lo) else r - initial_step
        r = r_new
    loss, terms = loss_fixed_r(unk)
    terms = {**terms, "clearing": _excess_supply(econ, unk, nodes, weights) ** 2}
    fine = jnp.linspace(0.0, 1.0, 2001, dtype=dtype)[1:]
    out_terms = {"loss": float(loss), **{k: float(v) for k, v in terms.items()}}
    out_terms["hjb_max"] = float(
        jnp.max(jnp.abs(jax.vmap(lambda x: _hjb_residual(econ, unk, x))(fine)))
    )
    out_terms["kfe_max"] = float(
        jnp.max(jnp.abs(jax.vmap(lambda x: _kfe_residual(econ, unk, x))(fine)))
    )
    return HuggettPINNSolution(
        r=_rate(econ, unk),
        mass=_masses(econ, unk),
        shares=jnp.asarray(econ.shares, dtype),
        excess_supply=_excess_supply(econ, unk, nodes, weights),
        terms=out_terms,
        clearing=tuple(tried),
        history=history,
        wall_time=time.perf_counter() - start,
        economy=econ,
        unknowns=unk,
    )
