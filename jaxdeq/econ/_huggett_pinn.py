"""General equilibrium of the continuous-time Huggett economy by PINNs: at each
interest rate, networks for the value functions and for the wealth distribution;
the rate that clears the bond market, by the bracketed root finder of the
finite-difference equilibrium."""

import math
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from .._solution import as_results, Report, RESULTS
from .._solver.bracketed_newton import BracketedNewton
from ..pinn import fit, ShapeConstrainedNetwork
from ._checks import check_int, check_real
from ._equilibrium import Huggett
from ._hjb import crra, positive_marginal_value
from ._households import _report


# The width of the state-constraint correction, relative to the wealth range.
_BUMP = 0.05
# Where the envelope residual's weight turns from a wealth derivative (above) to
# an xi derivative (below); see _envelope_residual.
_ENVELOPE_XI = 0.05


def _length(econ: Huggett) -> Scalar:
    return econ.a_max - econ.a_min


def _shares(econ: Huggett) -> Float[Array, "2"]:
    """The stationary income shares pi_j = lam_{-j} / (lam_1 + lam_2)."""
    return econ.lam[::-1] / jnp.sum(econ.lam)


class _Unknowns(eqx.Module):
    value: eqx.nn.MLP
    cdf: tuple[ShapeConstrainedNetwork, ShapeConstrainedNetwork]
    # The interest rate of this solve: fixed while the networks are trained.
    r: Scalar
    # Set from the value network, not trained by gradient: the top of the
    # distribution's support, and the low type's speed of dissaving at the
    # borrowing limit, lim -s_1(a) / sqrt(a - a_min).
    top: Scalar
    edge_speed: Scalar


def _rate(econ: Huggett, unk: _Unknowns) -> Scalar:
    del econ
    return unk.r


def _xi(econ: Huggett, a: Scalar) -> Scalar:
    # The square-root coordinate in which both V and G are smooth at a_min.
    return jnp.sqrt(jnp.maximum(a - econ.a_min, 0.0) / _length(econ))


def _guess(econ: Huggett, a: Scalar, r: Scalar | float) -> Float[Array, "2"]:
    # The value of consuming income forever (the usual initial guess), at the
    # current r, so that the network only learns the correction to it.
    income = econ.z + r * a
    return crra(income, econ.gamma) / econ.rho


def _wealth(econ: Huggett, xi: Scalar) -> Scalar:
    return econ.a_min + _length(econ) * xi**2


def _value_and_slope(
    econ: Huggett, unk: _Unknowns, xi: Scalar
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
    scale = jnp.abs(_guess(econ, econ.a_min, r))
    safe = jnp.where(xi > 1e-8, xi, one)
    slope = jnp.where(
        xi > 1e-8, (dm - dm0) / (2 * _length(econ) * safe), d2m0 / (2 * _length(econ))
    )
    v = guess + scale * (m - xi * dm0)
    dv = dguess + scale * slope
    # A bump with slope 1 at a_min, local so that the guess stays a guess.
    a_lo = econ.a_min
    target = (econ.z[0] + r * econ.a_min) ** (-econ.gamma)
    slope_lo = jax.jvp(lambda b: _guess(econ, b, r)[0], (a_lo,), (one,))[1]
    kappa = target - slope_lo - scale[0] * d2m0[0] / (2 * _length(econ))
    d = a - econ.a_min
    width = _BUMP * _length(econ)
    e = jnp.exp(-d / width)
    v = v.at[0].add(kappa * d * e)
    dv = dv.at[0].add(kappa * e * (1 - d / width))
    return v, dv


def _policies(econ: Huggett, unk: _Unknowns, xi: Scalar) -> dict[str, Array]:
    v, dv = _value_and_slope(econ, unk, xi)
    c = positive_marginal_value(dv) ** (-1 / econ.gamma)
    a = _wealth(econ, xi)
    income = econ.z + _rate(econ, unk) * a
    return {"value": v, "dvalue": dv, "consumption": c, "savings": income - c}


def _value(econ: Huggett, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    return _value_and_slope(econ, unk, xi)[0]


def _hjb_raw(
    econ: Huggett, unk: _Unknowns, xi: Scalar
) -> tuple[Float[Array, "2"], Float[Array, "2"], Float[Array, "2"]]:
    """rho V_j - max_c H_j, with V_j and V_j'."""
    p = _policies(econ, unk, xi)
    v, lam = p["value"], econ.lam
    rhs = (
        crra(p["consumption"], econ.gamma)
        + p["dvalue"] * p["savings"]
        + lam * (v[::-1] - v)
    )
    return econ.rho * v - rhs, v, p["dvalue"]


def _hjb_residual(econ: Huggett, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    res, v, _ = _hjb_raw(econ, unk, xi)
    return res / jnp.abs(econ.rho * v)


def _envelope_residual(econ: Huggett, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    r"""The HJB differentiated in wealth, relative to $|\rho V_j'|$: by the
    envelope theorem the consumption terms cancel and
    $(\rho - r)V_j' - V_j'' s_j - \lambda_j(V_{-j}' - V_j') = 0$.

    The HJB residual moves with an error in $V'$ only in proportion to the
    savings $s_j$, so it barely sees the policy where households stop saving,
    which is where the top of the wealth distribution is decided; this residual
    sees it directly."""

    def raw(x):
        res, _, dv = _hjb_raw(econ, unk, x)
        return res, dv

    (_, dv), (dres, _) = jax.jvp(raw, (xi,), (jnp.ones_like(xi),))
    # d/da = d/dxi / (2 L xi), weighted by xi / (xi + _ENVELOPE_XI): near the
    # borrowing limit the wealth derivative of anything smooth in xi (but not
    # zero) grows like 1/xi, and that weight keeps it bounded.
    return dres / (2 * _length(econ) * (xi + _ENVELOPE_XI) * jnp.abs(econ.rho * dv))


def _edge_speed(econ: Huggett, unk: _Unknowns) -> Scalar:
    """lim -s_1(a) / sqrt(a - a_min) at the borrowing limit, where s_1 = 0: s_1
    is smooth in xi, so this is -s_1'(0) / sqrt(L) in xi, by a one-sided
    difference of second order."""
    h = jnp.asarray(1e-3, unk.r.dtype)
    s1 = [_policies(econ, unk, x)["savings"][0] for x in (h, 2 * h)]
    return -(4 * s1[0] - s1[1]) / (2 * h * jnp.sqrt(_length(econ)))


def _masses(econ: Huggett, unk: _Unknowns) -> Float[Array, "2"]:
    r"""The mass points $m_j = G_j(\underline a)$. The high type saves at the
    limit, so $m_2 = 0$. The low type's mass is what the flux into it requires:
    the integrated KFE at $\underline a$ is $\lim s_1 g_1 = -\lambda_1 m_1$, and
    with $s_1 \approx -c\sqrt{a - \underline a}$ and $G_1 = m_1 + (\pi_1 -
    m_1) H_1(\eta)$ the limit is $-c(\pi_1 - m_1)H_1'(0) / (2\sqrt{\bar a -
    \underline a})$. A trained mass (a sigmoid of a parameter) got stuck at zero
    in a saturated sigmoid."""
    dtype = unk.r.dtype
    pi = _shares(econ)[0]
    net = unk.cdf[0]
    zero, one = jnp.zeros((1,), dtype), jnp.ones((1,), dtype)
    slope = jax.jvp(net, (zero,), (one,))[1] / (net(one) - net(zero))
    q = unk.edge_speed * slope / (2 * econ.lam[0] * jnp.sqrt(unk.top - econ.a_min))
    return jnp.stack([pi * q / (1 + q), jnp.zeros((), dtype)])


def _support_top(econ: Huggett, unk: _Unknowns, num: int = 4001) -> Scalar:
    """The top of the wealth distribution's support: the first wealth where the
    high type stops saving (its savings change sign), by a scan on a grid even in
    xi and bisection; a_max if it saves everywhere."""
    dtype = unk.r.dtype
    xi = jnp.linspace(0.0, 1.0, num, dtype=dtype)
    s_high = jax.vmap(lambda x: _policies(econ, unk, x)["savings"][1])(xi)
    below = s_high <= 0
    i = jnp.argmax(below)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        saves = _policies(econ, unk, mid)["savings"][1] > 0
        return jnp.where(saves, mid, lo), jnp.where(saves, hi, mid)

    lo, hi = xi[jnp.maximum(i - 1, 0)], xi[i]
    _, hi = jax.lax.fori_loop(0, 60, halve, (lo, hi))
    return jnp.where(jnp.any(below), _wealth(econ, hi), econ.a_max)


def _eta(econ: Huggett, unk: _Unknowns, a: Scalar) -> Scalar:
    # The distribution's coordinate: xi's square root, but on the support.
    frac = (a - econ.a_min) / (unk.top - econ.a_min)
    return jnp.sqrt(jnp.clip(frac, 0.0, 1.0))


def _support_wealth(econ: Huggett, unk: _Unknowns, eta: Scalar) -> Scalar:
    return econ.a_min + (unk.top - econ.a_min) * eta**2


def _cdf_eta(econ: Huggett, unk: _Unknowns, eta: Scalar) -> Float[Array, "2"]:
    """G_j as a function of eta: m_j + (pi_j - m_j) H_j(eta), H_j increasing from
    H_j(0) = 0 to H_j(1) = 1."""
    shares = _shares(econ)
    m = _masses(econ, unk)
    lo, hi = jnp.zeros_like(eta), jnp.ones_like(eta)
    out = []
    for j in range(2):
        net = unk.cdf[j]
        n0, n1 = net(lo[None]), net(hi[None])
        out.append((net(eta[None]) - n0) / (n1 - n0))
    cdf = m + (shares - m) * jnp.stack(out)
    # At the ends the value is exact, whatever rounding the network's evaluation
    # at eta and at 0 or 1 had (batched and unbatched matmuls may differ by an
    # ulp): G = m at the limit, G = pi from the support's top on. The correction
    # is an ulp or so, so adding it is exact; its derivative is left out, which
    # keeps the one-sided derivatives there.
    end = jnp.where(eta <= 0, m, jnp.where(eta >= 1, shares, cdf))
    return cdf + jax.lax.stop_gradient(end - cdf)


def _cdf(econ: Huggett, unk: _Unknowns, a: Scalar) -> Float[Array, "2"]:
    return _cdf_eta(econ, unk, _eta(econ, unk, a))


def _density(econ: Huggett, unk: _Unknowns, a: Scalar) -> Float[Array, "2"]:
    return jax.jvp(lambda b: _cdf(econ, unk, b), (a,), (jnp.ones_like(a),))[1]


def _kfe_residual(
    econ: Huggett, unk: _Unknowns, a: Scalar, s: Float[Array, "2"]
) -> Float[Array, "2"]:
    """s_j G_j' + lam_j G_j - lam_{-j} G_{-j} at a > a_min, given the savings s
    there, relative to the flux scale lam_1 pi_1. Zero above the support, where
    G_j = pi_j."""
    g, dg = jax.jvp(lambda b: _cdf(econ, unk, b), (a,), (jnp.ones_like(a),))
    lam = econ.lam
    res = s * dg + lam * g - lam[::-1] * g[::-1]
    return res / (econ.lam[0] * _shares(econ)[0])


def _legendre(t: Scalar, num: int) -> tuple[Array, Array]:
    """P_1..P_num and their derivatives at t, by the three-term recurrence."""
    p = [jnp.ones_like(t), t]
    dp = [jnp.zeros_like(t), jnp.ones_like(t)]
    for k in range(1, num):
        p.append(((2 * k + 1) * t * p[k] - k * p[k - 1]) / (k + 1))
        dp.append(dp[k - 1] + (2 * k + 1) * p[k])
    return jnp.stack(p[1 : num + 1]), jnp.stack(dp[1 : num + 1])


class _KFEData(eqx.Module):
    """What the distribution's loss needs from the value network: the savings at
    the collocation points, and the test-function terms at the quadrature nodes
    and at the top of the support. Computed once when the value network is
    fixed."""

    points: Float[Array, " p"]
    savings: Float[Array, "p 2"]
    nodes: Float[Array, " q"]
    weights: Float[Array, " q"]
    d_self: Float[Array, "q k 2"]
    d_other: Float[Array, "q k 2"]
    top: Float[Array, "k 2"]


def _kfe_data(
    econ: Huggett, unk: _Unknowns, eta_points, eta_nodes, eta_weights, num: int
) -> _KFEData:
    r"""The weak form uses the test functions $\psi_k$ (Legendre in wealth
    normalised to the support) on type $i$: $f_{\rm self}[k, i] = s_i\psi_k' -
    \lambda_i\psi_k$ (against $dG_i$) and $f_{\rm other}[k, i] =
    \lambda_{-i}\psi_k$ (against $dG_{-i}$), and $\int f\,dG_j = f(a^\star)
    \pi_j - \int \partial_a f\, G_j\,da$ needs their wealth derivatives at the
    nodes."""
    length = unk.top - econ.a_min
    lam = econ.lam

    def savings(a):
        return _policies(econ, unk, _xi(econ, a))["savings"]

    def integrands(a):
        t = 2 * (a - econ.a_min) / length - 1
        psi, dpsi = _legendre(t, num)
        f_self = savings(a)[None, :] * dpsi[:, None] * (2 / length)
        f_self = f_self - lam[None, :] * psi[:, None]
        return f_self, lam[::-1][None, :] * psi[:, None]

    def at_node(eta):
        a = _support_wealth(econ, unk, eta)
        return jax.jvp(integrands, (a,), (jnp.ones_like(a),))[1]

    d_self, d_other = jax.vmap(at_node)(eta_nodes)
    f_self, f_other = integrands(unk.top)
    shares = _shares(econ)
    a_points = jax.vmap(lambda e: _support_wealth(econ, unk, e))(eta_points)
    return _KFEData(
        points=a_points,
        savings=jax.vmap(savings)(a_points),
        nodes=eta_nodes,
        weights=eta_weights,
        d_self=d_self,
        d_other=d_other,
        top=f_self * shares[None, :] + f_other * shares[::-1][None, :],
    )


def _strong_residual(econ: Huggett, unk: _Unknowns, data: _KFEData) -> Array:
    return jax.vmap(lambda a, s: _kfe_residual(econ, unk, a, s))(
        data.points, data.savings
    )


def _weak_residual(
    econ: Huggett, unk: _Unknowns, data: _KFEData
) -> Float[Array, "num 2"]:
    r"""$\sum_j \int (A\varphi)_j\,dG_j$ for the test functions
    $\varphi = \psi_k e_i$: the stationarity of $G$ in weak form, by
    Gauss–Legendre quadrature in eta ($da = 2(\bar a - \underline a)\eta\,
    d\eta$). It needs $G$ only at the nodes, so a mass point (or a step of $G$
    between nodes) is seen for what it is."""
    length = unk.top - econ.a_min

    def at_node(eta, d_self, d_other):
        g = _cdf_eta(econ, unk, eta)
        return 2 * length * eta * (d_self * g[None, :] + d_other * g[::-1][None, :])

    inner = jax.vmap(at_node)(data.nodes, data.d_self, data.d_other)
    inner = jnp.einsum("q,qki->ki", data.weights, inner)
    num = data.top.shape[0]
    k = jnp.arange(1, num + 1, dtype=data.nodes.dtype)
    bound = 1 + k * (k + 1) * (econ.z[1] - econ.z[0]) / length
    return (data.top - inner) / (econ.lam[0] * _shares(econ)[0] * bound[:, None])


def _quadrature(num: int, panels: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(num)
    edges = np.linspace(0.0, 1.0, panels + 1)
    nodes = [(lo + hi) / 2 + (hi - lo) / 2 * x for lo, hi in zip(edges, edges[1:])]
    weights = [(hi - lo) / 2 * w for lo, hi in zip(edges, edges[1:])]
    return np.concatenate(nodes), np.concatenate(weights)


def _excess_supply(
    econ: Huggett, unk: _Unknowns, nodes: Array, weights: Array
) -> Scalar:
    """int a dG = top - int_{a_min}^{top} (G_1 + G_2) da by parts (G = pi above
    the support, with pi_1 + pi_2 = 1); in eta, da = 2 (top - a_min) eta deta."""
    length = unk.top - econ.a_min
    g = jax.vmap(lambda e: jnp.sum(_cdf_eta(econ, unk, e)))(nodes)
    return unk.top - jnp.sum(weights * g * 2 * length * nodes)


class HuggettPINNSolution(eqx.Module):
    r"""What [`jaxdeq.econ.solve_equilibrium`][] returns for a
    [`jaxdeq.econ.PINNHousehold`][] solver: the stationary equilibrium of the
    Huggett economy as trained networks.

    The methods take wealth `a` of any shape `(...)` and return arrays of shape
    `(..., 2)`, the last axis being the income state (low, high).

    **Attributes:**

    - `r`: the equilibrium interest rate, the last rate the root finder tried.
    - `mass`: shape `(2,)`, the mass of each type at the borrowing limit,
        $m_j = G_j(\underline a)$.
    - `shares`: shape `(2,)`, the stationary income shares
        $\pi_j = \lambda_{-j}/(\lambda_1 + \lambda_2)$.
    - `excess_supply`: $\int a\, dG$, the market-clearing residual.
    - `support_top`: the top of the wealth distribution's support, where the
        high type stops saving ($G_j = \pi_j$ above it).
    - `terms`: the final loss terms at `r` (the mean squares `"hjb"`,
        `"envelope"`, `"kfe"`, `"weak"`, the weighted `"loss"`, and `"clearing"`
        $= S^2$) as floats, and `"hjb_max"`, `"envelope_max"`, `"kfe_max"`: the
        largest absolute normalised residuals on a fine grid.
    - `clearing`: the `(r, S(r))` of every solve, in the order the root finder
        asked for them (the ends of the bracket first, then each rate and the
        rate a `slope_step` beside it).
    - `steps`: the root finder's steps ([`jaxdeq.BracketedNewton`][]).
    - `result`: a [`jaxdeq.RESULTS`][]: `successful` when the root finder
        converged (its last step, or the bracket, within `atol + rtol |r|`).
    - `history`: one [`jaxdeq.pinn.FitResult`][] history per training stage,
        keyed `"hjb_k"`, `"kfe_k"` and `"both_k"` for the `k`-th solve, and
        `"polish_k"` (the loss before and after, and the steps taken).
    - `wall_time`: seconds, compilation included.
    - `economy`: the [`jaxdeq.econ.Huggett`][] economy solved.
    """

    r: Scalar
    mass: Float[Array, "2"]
    shares: Float[Array, "2"]
    excess_supply: Scalar
    support_top: Scalar
    terms: dict[str, float]
    clearing: tuple[tuple[float, float], ...]
    steps: Int[Array, ""]
    result: RESULTS
    history: dict[str, dict[str, np.ndarray]]
    wall_time: float
    economy: Huggett
    unknowns: _Unknowns

    @property
    def report(self) -> Report:
        """The solve as a [`jaxdeq.Report`][]: `result`, `num_steps` (root-finding
        steps) and `abs_residual` ($|S(r^*)|$, the market-clearing error)."""
        return _report(self.result, self.steps, jnp.abs(self.excess_supply))

    def _map(self, fn: Callable, a, in_xi: bool = True) -> Float[Array, "... 2"]:
        a = jnp.asarray(a)
        flat = a.reshape(-1)
        if in_xi:
            flat = jax.vmap(lambda b: _xi(self.economy, b))(flat)
        out = jax.vmap(lambda x: fn(self.economy, self.unknowns, x))(flat)
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
        return self._map(_cdf, a, in_xi=False)

    def density(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""The density $g_j = G_j'$ for $a > \underline a$ (the mass point is
        `mass`; the low type's density has an integrable singularity
        $\propto (a - \underline a)^{-1/2}$ there); zero above `support_top`."""
        return self._map(_density, a, in_xi=False)

    def hjb_residual(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""The HJB residual relative to $|\rho V_j(a)|$."""
        return self._map(_hjb_residual, a)

    def envelope_residual(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""The HJB differentiated in wealth, $(\rho - r)V_j' - V_j'' s_j -
        \lambda_j(V_{-j}' - V_j')$, relative to $|\rho V_j'(a)|$ and weighted by
        $x/(x + 0.05)$ (bounded near the borrowing limit), for
        $a > \underline a$."""
        return self._map(_envelope_residual, a)

    def kfe_residual(self, a: Float[Array, "..."]) -> Float[Array, "... 2"]:
        r"""$s_j G_j' + \lambda_j G_j - \lambda_{-j} G_{-j}$ relative to
        $\lambda_1\pi_1$, for $a > \underline a$."""

        def residual(econ, unk, b):
            s = _policies(econ, unk, _xi(econ, b))["savings"]
            return _kfe_residual(econ, unk, b, s)

        return self._map(residual, a, in_xi=False)


def _collocation(num: int, focus: float = 1.0) -> np.ndarray:
    """Points in xi in (0, 1): half equally spaced in xi (dense near the
    borrowing limit in wealth), half equally spaced in wealth over the lowest
    `focus` of the range."""
    n1 = num // 2
    n2 = num - n1
    xi = (np.arange(n1) + 0.5) / n1
    a_unit = (np.arange(n2) + 0.5) / n2 * focus
    return np.sort(np.concatenate([xi, np.sqrt(a_unit)]))


def _as_stages(num: int) -> Callable[[Any], Any]:
    """A field converter: one step count for every stage, or one per stage."""

    def convert(value):
        if isinstance(value, (int, np.integer)) and not isinstance(
            value, (bool, np.bool_)
        ):
            return (int(value),) * num
        if isinstance(value, (tuple, list)):
            return tuple(int(v) if isinstance(v, np.integer) else v for v in value)
        return value

    return convert


class PINNHousehold(eqx.Module):
    r"""Solves the Huggett economy's households with neural networks, for
    [`jaxdeq.econ.solve_equilibrium`][]: at each interest rate, a network for the
    value functions and one for each income state's wealth distribution; the
    rate that clears the bond market by [`jaxdeq.BracketedNewton`][], as with
    [`jaxdeq.econ.FiniteDifference`][].

    It takes a [`jaxdeq.econ.Huggett`][] economy (two income states, low first;
    its `grid_size` is not used) and returns a
    [`jaxdeq.econ.HuggettPINNSolution`][]. The finite-difference solution is the
    reference it is checked against; the PINN is for problems where a grid is
    not an option.

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
        that save out of the domain (found without it). The loss also has the
        HJB differentiated in wealth, which by the envelope theorem is
        $(\rho - r)V_j' - V_j''s_j - \lambda_j(V_{-j}' - V_j') = 0$: the HJB
        residual sees an error of $V'$ (the policy) only in proportion to the
        savings, so where households save little, which is where the top of
        the distribution is decided, it hardly sees it at all. This term cut the
        largest savings error sevenfold.
    - *Distribution.* It lives on $[\underline a, a^\star]$, $a^\star$ the
        wealth where the high type stops saving (found from the value network
        by bisection): above it everyone dissaves, so $G_j = \pi_j$ there
        exactly. The density has a Dirac mass at $\underline a$ and an
        integrable singularity next to it, so the networks represent the
        cumulative distributions $G_j(a) = m_j + (\pi_j - m_j) H_j(\eta)$ with
        $\eta = ((a - \underline a)/(a^\star - \underline a))^{1/2}$, $H_j$
        increasing from 0 to 1 (a monotone network,
        [`jaxdeq.pinn.ShapeConstrainedNetwork`][], rescaled) and
        $\pi_j = \lambda_{-j}/(\lambda_1+\lambda_2)$. The high type saves at
        the limit, so $m_2 = 0$; the low type's mass is what the flux into it
        requires, $\lambda_1 m_1 = \lim s_1 g_1$, from the dissaving speed
        $-s_1/\sqrt{a - \underline a}$ at the limit and $H_1'(0)$. Integrating
        the KFE from $\underline a$, it becomes the first-order system
        $s_j G_j' = -\lambda_j G_j + \lambda_{-j} G_{-j}$ for $a > \underline a$
        (strong form, at collocation points). Collocation alone cannot see a
        step of $G$ between two points, so the loss also has the weak form
        $\sum_j \int (\mathcal A\varphi)_j\,dG_j = 0$ for Legendre test
        functions $\varphi$ on each type ($\mathcal A$ the generator), with
        $\int f\,dG_j = f(a^\star)\pi_j - \int \partial_a f\,G_j\,da$ by
        Gauss–Legendre quadrature, which needs $G$ only at the nodes. On the
        whole wealth range the networks spread a thin tail over the region
        where nobody is (the residuals there are of order savings times
        density, both small); on the support, the distribution's error in $S$
        fell from about $10^{-2}$ to $5\cdot10^{-5}$.
    - *Excess supply.* $S(r) = \int a\,dG = a^\star -
        \int_{\underline a}^{a^\star} (G_1 + G_2)\,da$ (by parts), by composite
        Gauss–Legendre quadrature in $\eta$, where the integrand is smooth.
    - *Training.* At a given $r$, by [`jaxdeq.pinn.fit`][] (Adam then
        L-BFGS) and a Levenberg–Marquardt polish: the HJB (value network only),
        then the KFE (distribution only, with what it needs from the fixed
        value network computed once), then optionally both together (the
        support held fixed). Each solve starts from the same initial networks.
    - *Market clearing.* $S(r)$ increases in $r$; the rate that clears the
        market is found by [`jaxdeq.BracketedNewton`][], the root finder of the
        finite-difference equilibrium, on the bracket of
        [`jaxdeq.econ.solve_equilibrium`][]. A solve is a training run, which
        JAX does not differentiate, so the slope $S'(r)$ of each Newton step is
        the forward difference $(S(r + h) - S(r))/h$, $h$ = `slope_step`: one
        more solve per step. Training $r$ by gradient together with the
        networks, with $S^2$ as a penalty, did not work: $S$ is poorly
        conditioned with respect to the residuals (residuals of $10^{-6}$
        allowed $S$ to move by $10^{-2}$), so the optimiser cleared the market
        by bending $G$ and $V$ and left $r$ near where it started. Warm
        starting the networks from the previous $r$ failed the same way.
    - *Accuracy.* $S$ depends on the policy almost only where households are: a
        savings error of $10^{-4}$ on $[\underline a, 0.5]$ moves $S$ by
        $10^{-3}$ (and $r^*$ by about $1.6\cdot10^{-4}$, as $dS/dr \approx 6$),
        the same error above $a = 0.5$ by less than $10^{-7}$. The savings
        error of the default solve is about $2\cdot10^{-4}$, so each $S(r)$ is
        off by a few $10^{-4}$, which sets the accuracy of $r^*$.

    Run in float64 (`jax.config.update("jax_enable_x64", True)`).

    **Arguments:**

    - `width`, `depth`: the value network's.
    - `cdf_width`, `cdf_depth`: each distribution network's.
    - `num_points`: collocation points (of the value and of the distribution).
    - `value_focus`: half the value's collocation points are equally spaced in
        wealth over this fraction of the range above the borrowing limit, the
        other half equally spaced in $x$. The default suits economies whose
        wealth distribution lies in the lowest tenth or so of the range, as in
        Moll's calibration. In a solve at $r = 0.0361$ it cut the largest
        savings error where households are from $2\cdot10^{-4}$ to
        $9\cdot10^{-5}$ and the error of $S$ due to the policy from
        $8\cdot10^{-4}$ to $4\cdot10^{-5}$.
    - `quadrature_panels`: panels of 16-point Gauss–Legendre for $\int G\,da$.
    - `test_functions`: Legendre test functions per type in the weak form.
    - `adam_steps`: Adam steps of the (hjb, kfe) stages, or one int for both.
    - `lbfgs_steps`: L-BFGS steps of the (hjb, kfe, both) stages, or one int.
        The joint stage is off by default: it traded accuracy of the
        distribution for a smaller HJB residual.
    - `learning_rate`: Adam's.
    - `envelope_weight`: the weight of the envelope residual in the value's loss.
    - `kfe_weight`, `weak_weight`: weights of the strong and weak KFE terms.
    - `polish_steps`: Levenberg–Marquardt steps on the value's residuals after
        L-BFGS (`optimistix.LevenbergMarquardt`, a dense QR of the Jacobian per
        step); 0 for none.
    - `rtol`, `atol`: market clearing: stop when the last Newton step on $r$, or
        the bracket, is at most `atol` $+$ `rtol` $|r|$. The default `atol`,
        $10^{-4}$, is the accuracy that a solve's error in $S$ allows.
    - `max_steps`: the most root-finding steps; each costs two solves, and the
        first three more (both ends of the bracket, the start and its slope).
    - `slope_step`: $h$ in the slope $(S(r + h) - S(r))/h$ (taken to the left
        near the top of the bracket). Each solve's $S$ is off by up to a few
        $10^{-4}$, so $h$ must be large enough for that to be small against
        $h\,S'(r) \approx 6h$.
    - `log_every`: as in [`jaxdeq.pinn.fit`][].

    **Raises:**

    `TypeError` for a setting of the wrong type, `ValueError` for one out of
    range.

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

    width: int = 32
    depth: int = 3
    cdf_width: int = 16
    cdf_depth: int = 2
    num_points: int = 512
    value_focus: float = 0.15
    quadrature_panels: int = 16
    test_functions: int = 16
    adam_steps: tuple[int, ...] = eqx.field(
        default=(2000, 2000), converter=_as_stages(2)
    )
    lbfgs_steps: tuple[int, ...] = eqx.field(
        default=(3000, 12000, 0), converter=_as_stages(3)
    )
    learning_rate: float = 1e-3
    envelope_weight: float = 10.0
    kfe_weight: float = 1.0
    weak_weight: float = 1.0
    polish_steps: int = 40
    rtol: float = 0.0
    atol: float = 1e-4
    max_steps: int = 8
    slope_step: float = 2e-3
    log_every: int = 250

    def __check_init__(self):
        name = "PINNHousehold"
        for label, minimum, example in (
            ("width", 1, 32),
            ("depth", 1, 3),
            ("cdf_width", 1, 16),
            ("cdf_depth", 1, 2),
            ("num_points", 2, 512),
            ("quadrature_panels", 1, 16),
            ("test_functions", 1, 16),
            ("polish_steps", 0, 40),
            ("max_steps", 1, 8),
            ("log_every", 1, 250),
        ):
            check_int(name, label, getattr(self, label), minimum, example)
        for label, num, example in (
            ("adam_steps", 2, (2000, 2000)),
            ("lbfgs_steps", 3, (3000, 12000, 0)),
        ):
            value = getattr(self, label)
            if not isinstance(value, tuple):
                raise TypeError(
                    f"{name}: `{label}` must be an int or a tuple of {num} ints, "
                    f"got {value!r}. Pass e.g. `{label}={example!r}`."
                )
            if len(value) != num:
                raise ValueError(
                    f"{name}: `{label}` must be one int or {num} of them (one per "
                    f"stage), got {value!r}. Pass e.g. `{label}={example!r}`."
                )
            for v in value:
                check_int(name, label, v, 0, example[0])
        check_real(name, "value_focus", self.value_focus, 0.15, positive=True, upper=1)
        check_real(name, "learning_rate", self.learning_rate, 1e-3, positive=True)
        for label, example in (
            ("envelope_weight", 10.0),
            ("kfe_weight", 1.0),
            ("weak_weight", 1.0),
            ("rtol", 0.0),
            ("atol", 1e-4),
        ):
            check_real(name, label, getattr(self, label), example)
        check_real(name, "slope_step", self.slope_step, 2e-3, positive=True)
        if self.rtol == 0 and self.atol == 0:
            raise ValueError(
                f"{name}: `rtol` and `atol` are both 0, so market clearing would "
                "never stop before `max_steps`. Pass e.g. `atol=1e-4`."
            )


def _check_pinn_economy(
    economy: Huggett, lower: float, upper: float, r0: float
) -> None:
    """What the PINN's formulation assumes beyond what Huggett checks: the low
    income state first (its mass point and its binding constraint are built into
    the networks), and positive income at the borrowing limit on the whole
    bracket."""
    name = "solve_equilibrium"
    z = np.asarray(economy.z)
    if not z[0] < z[1]:
        raise ValueError(
            f"{name}: PINNHousehold needs the low income state first, got z = "
            f"{tuple(float(v) for v in z)}. Swap the income states and their "
            "rates: `Huggett(z=(low, high), lam=(rate out of low, rate out of "
            "high))`."
        )
    a_min = float(economy.a_min)
    for r in (lower, upper):
        if not float(z[0]) + r * a_min > 0:
            raise ValueError(
                f"{name}: income at the borrowing limit, z_low + r a_min = "
                f"{float(z[0]) + r * a_min:.6g}, is not positive at r = {r:.6g} "
                "(an end of the bracket). Pass a `bracket` on which it is, or "
                "raise a_min."
            )
    if not lower <= r0 <= upper:
        raise ValueError(
            f"{name}: r0 = {r0:.6g} is outside the bracket [{lower:.6g}, "
            f"{upper:.6g}]. Pass an r0 inside it, or a `bracket` around it (below "
            "rho)."
        )


class _Clearing:
    """The host side of market clearing: every solve, by interest rate (a solve
    is deterministic in r, so a rate asked for twice is solved once), and the
    first error raised in one."""

    def __init__(self, solve_at: Callable, progress: Callable | None, dtype):
        self.solve_at: Callable | None = solve_at
        self.progress: Callable | None = progress
        self.dtype = np.dtype(dtype)
        self.solves: dict[float, tuple[_Unknowns, float]] = {}
        self.order: list[tuple[float, float]] = []
        self.history: dict[str, dict[str, np.ndarray]] = {}
        self.error: BaseException | None = None

    def close(self) -> tuple:
        """What was found: the first error, the solves by rate, the rates in the
        order asked, and the training histories. Afterwards the host side holds
        nothing (the compiled root finder keeps this object, which would keep
        every network and compiled training program alive)."""
        out = (self.error, self.solves, self.order, self.history)
        self.solve_at = self.progress = self.error = None
        self.solves, self.order, self.history = {}, [], {}
        return out

    def excess_supply(self, r) -> np.ndarray:
        r = float(r)
        dtype = self.dtype
        if r in self.solves:
            return np.asarray(self.solves[r][1], dtype)
        if self.error is not None:
            return np.asarray(math.nan, dtype)
        k = len(self.order)
        assert self.solve_at is not None, "asked for a solve after close()"
        try:
            unknowns, excess, history = self.solve_at(r, f"_{k}")
        except Exception as error:  # re-raised once the root finder returns
            self.error = error
            return np.asarray(math.nan, dtype)
        self.solves[r] = (unknowns, excess)
        self.order.append((r, excess))
        self.history.update(history)
        if self.progress is not None:
            self.progress(
                {"stage": "clearing", "iteration": k, "r": r, "excess_supply": excess}
            )
        return np.asarray(excess, dtype)


def _market(clearing: _Clearing, dtype, step: float, upper: float) -> Callable:
    """S(r) for the root finder: each value a solve on the host, each slope the
    forward difference over `step` (backward near the top of the bracket)."""

    @jax.custom_jvp
    def excess_supply(r):
        return jax.pure_callback(
            clearing.excess_supply,
            jax.ShapeDtypeStruct((), dtype),
            r,
            vmap_method="sequential",
        )

    @excess_supply.defjvp
    def excess_supply_jvp(primals, tangents):
        (r,), (dr,) = primals, tangents
        h = jnp.where(r + step <= upper, step, -step).astype(dtype)
        s = excess_supply(r)
        slope = (excess_supply(r + h) - s) / h
        return s, slope * dr

    return lambda r, args: excess_supply(r)


def _solve_pinn(
    economy: Huggett,
    solver: PINNHousehold,
    *,
    r0: float,
    lower: float,
    upper: float,
    key: PRNGKeyArray,
    progress: Callable[[dict[str, Any]], None] | None,
) -> tuple[HuggettPINNSolution, tuple[float, float]]:
    """The PINN equilibrium, and S at the ends of the bracket."""
    _check_pinn_economy(economy, lower, upper, r0)
    start = time.perf_counter()
    k_value, k_cdf1, k_cdf2, k_fit = jr.split(key, 4)
    econ = economy
    dtype = jnp.result_type(econ.rho)
    adam_steps, lbfgs_steps = solver.adam_steps, solver.lbfgs_steps
    mlp = eqx.nn.MLP(
        1, 2, solver.width, solver.depth, activation=jnp.tanh, key=k_value, dtype=dtype
    )
    # Start from the guess: the last layer is zero.
    mlp = eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        mlp,
        replace_fn=jnp.zeros_like,
    )
    cdf1, cdf2 = (
        ShapeConstrainedNetwork(
            [0.0],
            [1.0],
            width=solver.cdf_width,
            depth=solver.cdf_depth,
            concave=False,
            key=k,
        )
        for k in (k_cdf1, k_cdf2)
    )
    unk0 = _Unknowns(
        value=mlp,
        cdf=(cdf1, cdf2),
        r=jnp.asarray(r0, dtype),
        top=jnp.asarray(econ.a_max, dtype),
        edge_speed=jnp.ones((), dtype),
    )
    points = jnp.asarray(_collocation(solver.num_points), dtype)
    value_points = jnp.asarray(
        _collocation(solver.num_points, solver.value_focus), dtype
    )
    nodes, weights = (
        jnp.asarray(v, dtype) for v in _quadrature(16, solver.quadrature_panels)
    )
    envelope_weight = solver.envelope_weight

    def residuals(u):
        h = jax.vmap(lambda x: _hjb_residual(econ, u, x))(value_points)
        e = jax.vmap(lambda x: _envelope_residual(econ, u, x))(value_points)
        return h, e

    def hjb_vector(u):
        """The value's loss is the sum of squares of this vector."""
        h, e = residuals(u)
        # The state constraint at the top, s_j(a_max) <= 0: without it the
        # equation has a family of solutions that save out of the domain.
        s_top = _policies(econ, u, jnp.ones((), dtype))["savings"]
        return jnp.concatenate(
            [
                h.ravel() / np.sqrt(h.size),
                np.sqrt(envelope_weight) * e.ravel() / np.sqrt(e.size),
                jnp.maximum(s_top / econ.z[1], 0.0),
            ]
        ), (jnp.mean(h**2), jnp.mean(e**2))

    def hjb_term(u):
        vec, (h, e) = hjb_vector(u)
        return jnp.sum(vec**2), {"hjb": h, "envelope": e}

    def kfe_data(u):
        return _kfe_data(econ, u, points, nodes, weights, solver.test_functions)

    def kfe_terms(u, data):
        k = jnp.mean(_strong_residual(econ, u, data) ** 2)
        w = jnp.mean(_weak_residual(econ, u, data) ** 2)
        return solver.kfe_weight * k + solver.weak_weight * w, {"kfe": k, "weak": w}

    def loss_fixed_r(u):
        h, h_terms = hjb_term(u)
        k, k_terms = kfe_terms(u, kfe_data(u))
        return h + k, {**h_terms, **k_terms}

    def stage_progress(stage):
        if progress is None:
            return None
        report = progress
        return lambda info: report({**info, "stage": stage})

    # The loss functions, and everything else compiled, are built once: what
    # changes from one solve to the next (the rate, and what a stage takes from
    # the one before) is passed in as data, so that the solves after the first
    # reuse the first one's compiled programs.
    # (Only arrays go in as data: the rest of the unknowns, the same in every
    # solve, is put back here.)
    _, unk_static = eqx.partition(unk0, eqx.is_array)

    def arrays(u):
        return eqx.filter(u, eqx.is_array)

    def loss_hjb(value, u):
        u = eqx.combine(u, unk_static)
        return hjb_term(eqx.tree_at(lambda u: u.value, u, value))

    def loss_kfe(cdf, u_and_data):
        u, data = u_and_data
        u = eqx.combine(u, unk_static)
        return kfe_terms(eqx.tree_at(lambda u: u.cdf, u, cdf), data)

    def loss_both(params, u):
        u = eqx.combine(u, unk_static)
        return loss_fixed_r(eqx.tree_at(lambda u: (u.value, u.cdf), u, params))

    value_params, value_static = eqx.partition(unk0.value, eqx.is_inexact_array)
    _, unravel = ravel_pytree(value_params)

    def residual_vector(p, u):
        u = eqx.combine(u, unk_static)
        value = eqx.combine(unravel(p), value_static)
        return hjb_vector(eqx.tree_at(lambda u: u.value, u, value))[0]

    sum_of_squares = eqx.filter_jit(lambda p, u: jnp.sum(residual_vector(p, u) ** 2))
    support = eqx.filter_jit(lambda u: (_support_top(econ, u), _edge_speed(econ, u)))
    data_for = eqx.filter_jit(kfe_data)
    excess_supply = eqx.filter_jit(lambda u: _excess_supply(econ, u, nodes, weights))
    polisher = optx.LevenbergMarquardt(rtol=1e-13, atol=1e-13, linear_solver=lx.QR())

    def solve_at(r, tag):
        """Value, then distribution (on the support the value network gives),
        then optionally both, at a fixed r, from the initial networks."""
        u0 = eqx.tree_at(lambda u: u.r, unk0, jnp.asarray(r, dtype))
        keys = jr.split(k_fit, 3)
        out = {}
        res = fit(
            loss_hjb,
            u0.value,
            lambda key, params: arrays(u0),
            key=keys[0],
            adam_steps=adam_steps[0],
            lbfgs_steps=lbfgs_steps[0],
            learning_rate=solver.learning_rate,
            log_every=solver.log_every,
            progress=stage_progress(f"hjb{tag}"),
        )
        u1 = eqx.tree_at(lambda u: u.value, u0, res.params)
        out[f"hjb{tag}"] = res.history
        if solver.polish_steps > 0:
            # Levenberg–Marquardt on the residual vector: where L-BFGS stalls,
            # Gauss–Newton steps keep reducing the residual of a network this
            # small, and the policy's error with it.
            flat = ravel_pytree(eqx.filter(u1.value, eqx.is_inexact_array))[0]
            before = float(sum_of_squares(flat, arrays(u0)))
            sol = optx.least_squares(
                residual_vector,
                polisher,
                flat,
                args=arrays(u0),
                max_steps=solver.polish_steps,
                throw=False,
            )
            after = float(sum_of_squares(sol.value, arrays(u0)))
            if after < before:
                value = eqx.combine(unravel(sol.value), value_static)
                u1 = eqx.tree_at(lambda u: u.value, u1, value)
            out[f"polish{tag}"] = {
                "loss": np.asarray([before, after]),
                "steps": np.asarray([int(sol.stats["num_steps"])]),
            }
        u1 = eqx.tree_at(lambda u: (u.top, u.edge_speed), u1, support(u1))
        # The value network is fixed from here: what the distribution's loss
        # needs from it is computed once.
        data = data_for(u1)
        res = fit(
            loss_kfe,
            u1.cdf,
            lambda key, params: (arrays(u1), data),
            key=keys[1],
            adam_steps=adam_steps[1],
            lbfgs_steps=lbfgs_steps[1],
            learning_rate=solver.learning_rate,
            log_every=solver.log_every,
            progress=stage_progress(f"kfe{tag}"),
        )
        u2 = eqx.tree_at(lambda u: u.cdf, u1, res.params)
        out[f"kfe{tag}"] = res.history
        if lbfgs_steps[2] > 0:
            # The support stays where the value stage put it.
            res = fit(
                loss_both,
                (u2.value, u2.cdf),
                lambda key, params: arrays(u2),
                key=keys[2],
                adam_steps=0,
                lbfgs_steps=lbfgs_steps[2],
                log_every=solver.log_every,
                progress=stage_progress(f"both{tag}"),
            )
            u2 = eqx.tree_at(lambda u: (u.value, u.cdf), u2, res.params)
            out[f"both{tag}"] = res.history
        return u2, float(excess_supply(u2)), out

    clearing = _Clearing(solve_at, progress, dtype)
    sol = optx.root_find(
        _market(clearing, dtype, solver.slope_step, upper),
        BracketedNewton(rtol=solver.rtol, atol=solver.atol),
        jnp.asarray(r0, dtype),
        options=dict(lower=lower, upper=upper),
        max_steps=solver.max_steps,
        throw=False,
    )
    r = float(sol.value)
    error, solves, order, history = clearing.close()
    if error is not None:
        raise error
    unk = solves[r][0]
    loss, terms = loss_fixed_r(unk)
    excess = _excess_supply(econ, unk, nodes, weights)
    out_terms = {"loss": float(loss), **{k: float(v) for k, v in terms.items()}}
    out_terms["clearing"] = float(excess**2)
    fine = jnp.linspace(0.0, 1.0, 2001, dtype=dtype)[1:]
    h, e = jax.vmap(
        lambda x: (_hjb_residual(econ, unk, x), _envelope_residual(econ, unk, x))
    )(fine)
    out_terms["hjb_max"] = float(jnp.max(jnp.abs(h)))
    out_terms["envelope_max"] = float(jnp.max(jnp.abs(e)))

    def kfe_at(eta):
        a = _support_wealth(econ, unk, eta)
        s = _policies(econ, unk, _xi(econ, a))["savings"]
        return _kfe_residual(econ, unk, a, s)

    out_terms["kfe_max"] = float(jnp.max(jnp.abs(jax.vmap(kfe_at)(fine))))
    solution = HuggettPINNSolution(
        r=_rate(econ, unk),
        mass=_masses(econ, unk),
        shares=_shares(econ),
        excess_supply=excess,
        support_top=unk.top,
        terms=out_terms,
        clearing=tuple(order),
        steps=sol.stats["num_steps"],
        result=as_results(sol.result),
        history=history,
        wall_time=time.perf_counter() - start,
        economy=economy,
        unknowns=unk,
    )
    ends = (solves[lower][1], solves[upper][1])
    return solution, ends
