"""General equilibrium of the continuous-time Huggett economy by PINNs: the value
functions, the wealth distribution and the interest rate, trained together."""

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
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from ..pinn import fit, ShapeConstrainedNetwork
from ._hjb import crra, positive_marginal_value


# r = r0 + _R_SCALE * r_raw: Adam moves every parameter by about its learning rate
# per step, which must be a small change of an interest rate.
_R_SCALE = 0.01
# The width of the state-constraint correction, relative to the wealth range.
_BUMP = 0.05
# Where the envelope residual's weight turns from a wealth derivative (above) to
# an xi derivative (below); see _envelope_residual.
_ENVELOPE_XI = 0.05


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
    r_raw: Scalar
    # Set from the value network, not trained by gradient: the top of the
    # distribution's support, and the low type's speed of dissaving at the
    # borrowing limit, lim -s_1(a) / sqrt(a - a_min).
    top: Scalar
    edge_speed: Scalar


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


def _hjb_raw(
    econ: _Economy, unk: _Unknowns, xi: Scalar
) -> tuple[Float[Array, "2"], Float[Array, "2"], Float[Array, "2"]]:
    """rho V_j - max_c H_j, with V_j and V_j'."""
    p = _policies(econ, unk, xi)
    v, lam = p["value"], jnp.asarray(econ.lam, xi.dtype)
    rhs = (
        crra(p["consumption"], econ.gamma)
        + p["dvalue"] * p["savings"]
        + lam * (v[::-1] - v)
    )
    return econ.rho * v - rhs, v, p["dvalue"]


def _hjb_residual(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
    res, v, _ = _hjb_raw(econ, unk, xi)
    return res / jnp.abs(econ.rho * v)


def _envelope_residual(econ: _Economy, unk: _Unknowns, xi: Scalar) -> Float[Array, "2"]:
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
    return dres / (2 * econ.length * (xi + _ENVELOPE_XI) * jnp.abs(econ.rho * dv))


def _edge_speed(econ: _Economy, unk: _Unknowns) -> Scalar:
    """lim -s_1(a) / sqrt(a - a_min) at the borrowing limit, where s_1 = 0: s_1
    is smooth in xi, so this is -s_1'(0) / sqrt(L) in xi, by a one-sided
    difference of second order."""
    h = jnp.asarray(1e-3, unk.r_raw.dtype)
    s1 = [_policies(econ, unk, x)["savings"][0] for x in (h, 2 * h)]
    return -(4 * s1[0] - s1[1]) / (2 * h * jnp.sqrt(econ.length))


def _masses(econ: _Economy, unk: _Unknowns) -> Float[Array, "2"]:
    r"""The mass points $m_j = G_j(\underline a)$. The high type saves at the
    limit, so $m_2 = 0$. The low type's mass is what the flux into it requires:
    the integrated KFE at $\underline a$ is $\lim s_1 g_1 = -\lambda_1 m_1$, and
    with $s_1 \approx -c\sqrt{a - \underline a}$ and $G_1 = m_1 + (\pi_1 -
    m_1) H_1(\eta)$ the limit is $-c(\pi_1 - m_1)H_1'(0) / (2\sqrt{\bar a -
    \underline a})$. A trained mass (a sigmoid of a parameter) got stuck at zero
    in a saturated sigmoid."""
    dtype = unk.r_raw.dtype
    pi = econ.shares[0]
    net = unk.cdf[0]
    zero, one = jnp.zeros((1,), dtype), jnp.ones((1,), dtype)
    slope = jax.jvp(net, (zero,), (one,))[1] / (net(one) - net(zero))
    q = unk.edge_speed * slope / (2 * econ.lam[0] * jnp.sqrt(unk.top - econ.a_min))
    return jnp.stack([pi * q / (1 + q), jnp.zeros((), dtype)])


def _support_top(econ: _Economy, unk: _Unknowns, num: int = 4001) -> Scalar:
    """The top of the wealth distribution's support: the first wealth where the
    high type stops saving (its savings change sign), by a scan on a grid even in
    xi and bisection; a_max if it saves everywhere."""
    dtype = unk.r_raw.dtype
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


def _eta(econ: _Economy, unk: _Unknowns, a: Scalar) -> Scalar:
    # The distribution's coordinate: xi's square root, but on the support.
    frac = (a - econ.a_min) / (unk.top - econ.a_min)
    return jnp.sqrt(jnp.clip(frac, 0.0, 1.0))


def _support_wealth(econ: _Economy, unk: _Unknowns, eta: Scalar) -> Scalar:
    return econ.a_min + (unk.top - econ.a_min) * eta**2


def _cdf_eta(econ: _Economy, unk: _Unknowns, eta: Scalar) -> Float[Array, "2"]:
    """G_j as a function of eta: m_j + (pi_j - m_j) H_j(eta), H_j increasing from
    H_j(0) = 0 to H_j(1) = 1."""
    shares = jnp.asarray(econ.shares, eta.dtype)
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


def _cdf(econ: _Economy, unk: _Unknowns, a: Scalar) -> Float[Array, "2"]:
    return _cdf_eta(econ, unk, _eta(econ, unk, a))


def _density(econ: _Economy, unk: _Unknowns, a: Scalar) -> Float[Array, "2"]:
    return jax.jvp(lambda b: _cdf(econ, unk, b), (a,), (jnp.ones_like(a),))[1]


def _kfe_residual(
    econ: _Economy, unk: _Unknowns, a: Scalar, s: Float[Array, "2"]
) -> Float[Array, "2"]:
    """s_j G_j' + lam_j G_j - lam_{-j} G_{-j} at a > a_min, given the savings s
    there, relative to the flux scale lam_1 pi_1. Zero above the support, where
    G_j = pi_j."""
    g, dg = jax.jvp(lambda b: _cdf(econ, unk, b), (a,), (jnp.ones_like(a),))
    lam = jnp.asarray(econ.lam, a.dtype)
    res = s * dg + lam * g - lam[::-1] * g[::-1]
    return res / (econ.lam[0] * econ.shares[0])


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
    econ: _Economy, unk: _Unknowns, eta_points, eta_nodes, eta_weights, num: int
) -> _KFEData:
    r"""The weak form uses the test functions $\psi_k$ (Legendre in wealth
    normalised to the support) on type $i$: $f_{\rm self}[k, i] = s_i\psi_k' -
    \lambda_i\psi_k$ (against $dG_i$) and $f_{\rm other}[k, i] =
    \lambda_{-i}\psi_k$ (against $dG_{-i}$), and $\int f\,dG_j = f(a^\star)
    \pi_j - \int \partial_a f\, G_j\,da$ needs their wealth derivatives at the
    nodes."""
    length = unk.top - econ.a_min
    lam = jnp.asarray(econ.lam, eta_nodes.dtype)

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
    shares = jnp.asarray(econ.shares, eta_nodes.dtype)
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


def _strong_residual(econ: _Economy, unk: _Unknowns, data: _KFEData) -> Array:
    return jax.vmap(lambda a, s: _kfe_residual(econ, unk, a, s))(
        data.points, data.savings
    )


def _weak_residual(
    econ: _Economy, unk: _Unknowns, data: _KFEData
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
    return (data.top - inner) / (econ.lam[0] * econ.shares[0] * bound[:, None])


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
    """int a dG = top - int_{a_min}^{top} (G_1 + G_2) da by parts (G = pi above
    the support, with pi_1 + pi_2 = 1); in eta, da = 2 (top - a_min) eta deta."""
    length = unk.top - econ.a_min
    g = jax.vmap(lambda e: jnp.sum(_cdf_eta(econ, unk, e)))(nodes)
    return unk.top - jnp.sum(weights * g * 2 * length * nodes)


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
    - `support_top`: the top of the wealth distribution's support, where the
        high type stops saving ($G_j = \pi_j$ above it).
    - `terms`: the final loss terms at `r` (the mean squares `"hjb"`,
        `"envelope"`, `"kfe"`, `"weak"`, the weighted `"loss"`, and `"clearing"`
        $= S^2$) as floats, and `"hjb_max"`, `"envelope_max"`, `"kfe_max"`: the
        largest absolute normalised residuals on a fine grid.
    - `clearing`: the `(r, S(r))` of every solve of the clearing iteration;
        the solution is the solve with the smallest $|S|$.
    - `history`: one [`jaxdeq.pinn.FitResult`][] history per training stage,
        keyed `"hjb_k"`, `"kfe_k"` and `"both_k"` for the `k`-th solve, and
        `"polish_k"` (the loss before and after, and the steps taken).
    - `wall_time`: seconds, compilation included.
    """

    r: Scalar
    mass: Float[Array, "2"]
    shares: Float[Array, "2"]
    excess_supply: Scalar
    support_top: Scalar
    terms: dict[str, float]
    clearing: tuple[tuple[float, float], ...]
    history: dict[str, dict[str, np.ndarray]]
    wall_time: float
    economy: _Economy
    unknowns: _Unknowns

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
    value_focus: float = 0.15,
    quadrature_panels: int = 16,
    adam_steps: int | tuple[int, int] = 2000,
    lbfgs_steps: int | tuple[int, int, int] = (3000, 12000, 0),
    learning_rate: float = 1e-3,
    clearing_iterations: int = 8,
    clearing_tol: float = 1e-7,
    initial_step: float = 0.002,
    envelope_weight: float = 10.0,
    polish_steps: int = 40,
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
    - *Market clearing.* $S(r) = \int a\,dG = a^\star -
        \int_{\underline a}^{a^\star} (G_1 + G_2)\,da$ (by parts), by composite
        Gauss–Legendre quadrature in $\eta$, where the integrand is smooth.
    - *Training.* At a given $r$, by [`jaxdeq.pinn.fit`][] (Adam then
        L-BFGS) and a Levenberg–Marquardt polish: the HJB (value network only),
        then the KFE (distribution only, with what it needs from the fixed
        value network computed once), then optionally both together (the
        support held fixed). $r$ is a scalar in the parameter pytree, updated
        between solves by secant steps on $S(r)$ (increasing in $r$) until the
        root is bracketed and by false position (Illinois) after, each solve
        starting from the same initial networks; the result is the solve with
        the smallest $|S|$. Training $r$ by gradient together with the
        networks, with $S^2$ as a penalty, did not work: $S$ is poorly
        conditioned with respect to the residuals (residuals of $10^{-6}$
        allowed $S$ to move by $10^{-2}$), so the optimiser cleared the market
        by bending $G$ and $V$ and left $r$ near $r_0$. Warm starting the
        networks from the previous $r$ failed the same way.
    - *Accuracy.* $S$ depends on the policy almost only where households are: a
        savings error of $10^{-4}$ on $[\underline a, 0.5]$ moves $S$ by
        $10^{-3}$ (and $r^*$ by about $1.6\cdot10^{-4}$, as $dS/dr \approx 6$),
        the same error above $a = 0.5$ by less than $10^{-7}$. The savings
        error of the default solve is about $2\cdot10^{-4}$, so each $S(r)$ is
        off by a few $10^{-4}$, which sets the accuracy of $r^*$.

    Run in float64 (`jax.config.update("jax_enable_x64", True)`).

    **Arguments:**

    - `gamma`, `rho`, `z`, `lam`, `a_min`, `a_max`: the economy (Moll's values
        by default); `z` and `lam` are (low, high).
    - `r0`: the first interest rate tried; must be below `rho`.
    - `key`: PRNG key for the initial weights (default `jax.random.PRNGKey(0)`).
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
    - `adam_steps`: Adam steps of the (hjb, kfe) stages, or one int for both.
    - `lbfgs_steps`: L-BFGS steps of the (hjb, kfe, both) stages, or one int.
        The joint stage is off by default: it traded accuracy of the
        distribution for a smaller HJB residual.
    - `learning_rate`: Adam's.
    - `envelope_weight`: the weight of the envelope residual in the value's loss.
    - `polish_steps`: Levenberg–Marquardt steps on the value's residuals after
        L-BFGS (`optimistix.LevenbergMarquardt`, a dense QR of the Jacobian per
        step); 0 for none.
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
    if not 0 < value_focus <= 1:
        raise ValueError(f"value_focus={value_focus} must be in (0, 1].")
    if polish_steps < 0 or min(envelope_weight, kfe_weight, weak_weight) < 0:
        raise ValueError(
            f"Need polish_steps >= 0 and non-negative weights, got polish_steps="
            f"{polish_steps}, envelope_weight={envelope_weight}, kfe_weight="
            f"{kfe_weight}, weak_weight={weak_weight}."
        )
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
    cdf1, cdf2 = (
        ShapeConstrainedNetwork(
            [0.0], [1.0], width=cdf_width, depth=cdf_depth, concave=False, key=k
        )
        for k in (k_cdf1, k_cdf2)
    )
    unk = _Unknowns(
        value=mlp,
        cdf=(cdf1, cdf2),
        r_raw=jnp.zeros((), dtype),
        top=jnp.asarray(econ.a_max, dtype),
        edge_speed=jnp.ones((), dtype),
    )
    points = jnp.asarray(_collocation(num_points), dtype)
    value_points = jnp.asarray(_collocation(num_points, value_focus), dtype)
    nodes, weights = (jnp.asarray(v, dtype) for v in _quadrature(16, quadrature_panels))

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
        return _kfe_data(econ, u, points, nodes, weights, test_functions)

    def kfe_terms(u, data):
        k = jnp.mean(_strong_residual(econ, u, data) ** 2)
        w = jnp.mean(_weak_residual(econ, u, data) ** 2)
        return kfe_weight * k + weak_weight * w, {"kfe": k, "weak": w}

    def loss_fixed_r(u):
        h, h_terms = hjb_term(u)
        k, k_terms = kfe_terms(u, kfe_data(u))
        return h + k, {**h_terms, **k_terms}

    def sample(key, params):
        del key, params
        return points

    def stage_progress(stage):
        if progress is None:
            return None
        report = progress
        return lambda info: report({**info, "stage": stage})

    def solve_at(r, tag):
        """Value, then distribution (on the support the value network gives),
        then optionally both, at a fixed r, from the initial networks."""
        u0 = eqx.tree_at(
            lambda u: u.r_raw, unk0, jnp.asarray((r - r0) / _R_SCALE, dtype)
        )
        keys = jr.split(k_fit, 3)
        out = {}

        def loss_hjb(value, _):
            return hjb_term(eqx.tree_at(lambda u: u.value, u0, value))

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
        if polish_steps > 0:
            # Levenberg–Marquardt on the residual vector: where L-BFGS stalls,
            # Gauss–Newton steps keep reducing the residual of a network this
            # small, and the policy's error with it.
            params, static = eqx.partition(u1.value, eqx.is_inexact_array)
            flat, unravel = ravel_pytree(params)

            def residual_vector(p, _):
                value = eqx.combine(unravel(p), static)
                return hjb_vector(eqx.tree_at(lambda u: u.value, u0, value))[0]

            before = float(jnp.sum(residual_vector(flat, None) ** 2))
            sol = optx.least_squares(
                residual_vector,
                optx.LevenbergMarquardt(rtol=1e-13, atol=1e-13, linear_solver=lx.QR()),
                flat,
                max_steps=polish_steps,
                throw=False,
            )
            after = float(jnp.sum(residual_vector(sol.value, None) ** 2))
            if after < before:
                value = eqx.combine(unravel(sol.value), static)
                u1 = eqx.tree_at(lambda u: u.value, u1, value)
            out[f"polish{tag}"] = {
                "loss": np.asarray([before, after]),
                "steps": np.asarray([int(sol.stats["num_steps"])]),
            }
        u1 = eqx.tree_at(
            lambda u: (u.top, u.edge_speed),
            u1,
            (_support_top(econ, u1), _edge_speed(econ, u1)),
        )
        # The value network is fixed from here: what the distribution's loss
        # needs from it is computed once.
        data = kfe_data(u1)

        def loss_kfe(params, _):
            u = eqx.tree_at(lambda u: u.cdf, u1, params)
            return kfe_terms(u, data)

        res = fit(
            loss_kfe,
            u1.cdf,
            sample,
            key=keys[1],
            adam_steps=steps[0][1],
            lbfgs_steps=steps[1][1],
            learning_rate=learning_rate,
            log_every=log_every,
            progress=stage_progress(f"kfe{tag}"),
        )
        u2 = eqx.tree_at(lambda u: u.cdf, u1, res.params)
        out[f"kfe{tag}"] = res.history
        if steps[1][2] > 0:
            # The support stays where the value stage put it.

            def loss_both(params, _):
                return loss_fixed_r(eqx.tree_at(lambda u: (u.value, u.cdf), u2, params))

            res = fit(
                loss_both,
                (u2.value, u2.cdf),
                sample,
                key=keys[2],
                adam_steps=0,
                lbfgs_steps=steps[1][2],
                log_every=log_every,
                progress=stage_progress(f"both{tag}"),
            )
            u2 = eqx.tree_at(lambda u: (u.value, u.cdf), u2, res.params)
            out[f"both{tag}"] = res.history
        return u2, out

    # Market clearing on the excess supply S(r), which increases in r, each S(r)
    # from a fresh solve at that r: secant steps until the root is bracketed,
    # then false position with the Illinois rule on the bracket (each solve's S
    # has an error of order 1e-4 that varies with r, and the bracket keeps the
    # iteration from following it out).
    unk0 = unk
    history: dict[str, dict[str, np.ndarray]] = {}
    lo: list[float] | None = None  # [r, S(r)] with S < 0
    hi: list[float] | None = None  # [r, S(r)] with S >= 0
    kept = ""  # the side false position kept last
    tried: list[tuple[float, float]] = []
    best = None
    r = float(r0)
    for it in range(clearing_iterations):
        unk_r, out = solve_at(r, f"_{it}")
        history.update(out)
        excess_r = float(_excess_supply(econ, unk_r, nodes, weights))
        tried.append((r, excess_r))
        if best is None or abs(excess_r) < abs(best[1]):
            best = (unk_r, excess_r)
        if progress is not None:
            progress(
                {
                    "stage": "clearing",
                    "iteration": it,
                    "r": r,
                    "excess_supply": excess_r,
                }
            )
        if abs(excess_r) <= clearing_tol or it == clearing_iterations - 1:
            break
        if excess_r < 0:
            if lo is None or r > lo[0]:
                lo = [r, excess_r]
            if kept == "hi" and hi is not None:
                hi[1] /= 2
            kept = "hi"
        else:
            if hi is None or r < hi[0]:
                hi = [r, excess_r]
            if kept == "lo" and lo is not None:
                lo[1] /= 2
            kept = "lo"
        if lo is not None and hi is not None:
            r = lo[0] - lo[1] * (hi[0] - lo[0]) / (hi[1] - lo[1])
        elif len(tried) == 1:
            r = r + initial_step if excess_r < 0 else r - initial_step
        else:
            (r_a, s_a), (r_b, s_b) = tried[-2], tried[-1]
            step = -s_b * (r_b - r_a) / (s_b - s_a) if s_b != s_a else 0.0
            # S increases in r: a step the wrong way (noise) becomes the
            # initial step the right way.
            if step * -s_b <= 0:
                step = initial_step if s_b < 0 else -initial_step
            r = min(r_b + step, (r_b + float(rho)) / 2)
    assert best is not None  # clearing_iterations >= 1
    unk = best[0]
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
    return HuggettPINNSolution(
        r=_rate(econ, unk),
        mass=_masses(econ, unk),
        shares=jnp.asarray(econ.shares, dtype),
        excess_supply=excess,
        support_top=unk.top,
        terms=out_terms,
        clearing=tuple(tried),
        history=history,
        wall_time=time.perf_counter() - start,
        economy=econ,
        unknowns=unk,
    )
