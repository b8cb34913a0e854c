"""Merton's portfolio–consumption problem: one or several risky assets, infinite
or finite horizon."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ..pinn import HJB, ValueNetwork
from ._checks import check_numbers
from ._hjb import (
    _log_uniform_and_uniform,
    AbstractClosedFormHJBModel,
    crra,
    discount_scale,
    no_shape_violation,
    positive_marginal_value,
)


class Merton(AbstractClosedFormHJBModel):
    r"""Merton's problem: wealth $W$ is split between a safe asset (return $r$)
    and risky assets with mean excess returns $\mu - r$ and covariance
    $\Sigma$; the investor consumes at rate $c$:

    $$\rho V = \partial_t V + \max_{c, \pi} \; u(c) + V_W\big(rW
        + W\pi^\top(\mu - r) - c\big) + \tfrac12 W^2 \pi^\top \Sigma \pi\, V_{WW}.$$

    First-order conditions: $c = V_W^{-1/\gamma}$ and
    $\pi = -\Sigma^{-1}(\mu - r)\, V_W/(W V_{WW})$. Closed form (CRRA $\gamma$):
    $\pi^* = \Sigma^{-1}(\mu - r)/\gamma$, and with
    $\nu = \rho/\gamma - (1-\gamma)\big(\theta/(2\gamma^2) + r/\gamma\big)$,
    $\theta = (\mu - r)^\top \Sigma^{-1} (\mu - r)$:

    - infinite horizon (`horizon=None`): $c = \nu W$,
        $V = \nu^{-\gamma} W^{1-\gamma}/(1-\gamma)$;
    - finite horizon $T$ with bequest $V(T, W) = \varepsilon^\gamma u(W)$:
        $c = \nu\big(1 + (\nu\varepsilon - 1)e^{-\nu(T-t)}\big)^{-1} W$ and
        $V = h(t)\,u(W)$, $h = \big((1 + (\nu\varepsilon - 1)e^{-\nu(T-t)})/\nu
        \big)^\gamma$. The state is then $(t, W)$.

    As for [`jaxdeq.econ.CakeEating`][], the network imposes the state
    constraint at $W = 0$ by construction, $V = u(W)e^{N}/\rho$ (infinite
    horizon) or $V = \varepsilon^\gamma u(W) e^{(T - t) N(t, W)}$ (finite
    horizon, which also makes the terminal condition exact).

    Under the optimal policy wealth drifts up, so the value at $W$ depends on
    what happens above it, and the top of a truncated domain has no boundary
    condition to give: a PINN trained on $[0, w_{\max}]$ alone is off near
    $w_{\max}$ (by about $10^{-3}$ in the risky share). The network therefore
    trains on $[0, 10\,w_{\max}]$ (`train_factor`), and accuracy is reported on
    $[w_{\min}, w_{\max}]$, where the effect of the missing condition has
    decayed.

    **Arguments:** `gamma`, `rho`, `r`; `mu` and `volatility` (one entry per
    asset) and `correlation` (a matrix, identity by default); `horizon` ($T$ or
    `None`) and `bequest` ($\varepsilon$); `w_min`, `w_max` (where accuracy is
    reported; training reaches down to $10^{-3} w_{\max}$ and up to
    `train_factor` $\times\, w_{\max}$).
    """

    gamma: float = 2.0
    rho: float = 0.05
    r: float = 0.02
    mu: tuple[float, ...] = (0.07,)
    volatility: tuple[float, ...] = (0.2,)
    correlation: tuple[tuple[float, ...], ...] | None = None
    horizon: float | None = None
    bequest: float = 1.0
    w_min: float = 0.1
    w_max: float = 4.0
    train_factor: float = 10.0

    def __check_init__(self):
        mu, vol = np.asarray(self.mu, float), np.asarray(self.volatility, float)
        if mu.ndim != 1 or mu.shape != vol.shape or np.any(vol <= 0):
            raise ValueError(
                "Merton: mu and volatility need one entry per asset, with positive "
                f"volatilities; got mu={self.mu}, volatility={self.volatility}. "
                "Pass e.g. `mu=(0.07,), volatility=(0.2,)`."
            )
        if self.correlation is not None:
            corr = np.asarray(self.correlation, float)
            if corr.shape != (mu.size, mu.size) or np.any(
                np.linalg.eigvalsh(0.5 * (corr + corr.T)) <= 0
            ):
                raise ValueError(
                    "Merton: correlation must be a symmetric positive definite "
                    f"{mu.size}x{mu.size} matrix. Pass one with unit diagonal and "
                    "off-diagonal entries in (-1, 1), or None for independence."
                )
        check_numbers(
            "Merton",
            gamma=self.gamma,
            rho=self.rho,
            r=self.r,
            bequest=self.bequest,
            w_min=self.w_min,
            w_max=self.w_max,
            train_factor=self.train_factor,
        )
        if self.horizon is not None:
            check_numbers("Merton", horizon=self.horizon)
        if self.gamma <= 0 or self.gamma == 1 or self.rho <= 0:
            raise ValueError(
                f"Merton: need gamma > 0, gamma != 1 and rho > 0; got {self.gamma}, "
                f"{self.rho}. Pass e.g. `gamma=2.0, rho=0.05`."
            )
        if self.nu <= 0:
            raise ValueError(
                f"Merton: nu = {self.nu:.4g} <= 0: the investor's problem has no "
                "solution (the value is infinite). Raise rho or lower the returns."
            )
        if self.horizon is not None and (self.horizon <= 0 or self.bequest <= 0):
            raise ValueError(
                f"Merton: need horizon > 0 and bequest > 0, got {self.horizon}, "
                f"{self.bequest}. Pass e.g. `horizon=10.0, bequest=1.0`."
            )
        if self.train_factor < 1:
            raise ValueError(
                f"Merton: `train_factor` must be >= 1, got {self.train_factor}. Pass "
                "e.g. `train_factor=10.0`."
            )
        if not 0 < self.w_min < self.w_max:
            raise ValueError(
                f"Merton: need 0 < w_min < w_max, got {self.w_min}, {self.w_max}. "
                "Pass e.g. `w_min=0.1, w_max=4.0`."
            )

    @property
    def train_max(self) -> float:
        """The top of the training domain, `train_factor * w_max`."""
        return self.train_factor * self.w_max

    @property
    def covariance(self) -> np.ndarray:
        """$\\Sigma$."""
        vol = np.asarray(self.volatility, float)
        corr = (
            np.eye(vol.size)
            if self.correlation is None
            else np.asarray(self.correlation, float)
        )
        return vol[:, None] * corr * vol[None, :]

    @property
    def excess(self) -> np.ndarray:
        """$\\mu - r$."""
        return np.asarray(self.mu, float) - self.r

    @property
    def nu(self) -> float:
        """The marginal propensity to consume of the infinite-horizon problem."""
        theta = self.excess @ np.linalg.solve(self.covariance, self.excess)
        g = self.gamma
        # NumPy types the product of two vectors as an array; it is a scalar.
        return self.rho / g - (1 - g) * (theta / (2 * g**2) + self.r / g)  # pyright: ignore[reportReturnType]

    def hjb(self) -> HJB:
        sigma_inv_excess = jnp.asarray(np.linalg.solve(self.covariance, self.excess))
        excess = jnp.asarray(self.excess)
        chol = jnp.asarray(np.linalg.cholesky(self.covariance))

        def policy(*args):
            W, dV, d2V = args[-3:]
            W = W[0]
            dV = positive_marginal_value(dV[0])
            d2V = jnp.minimum(d2V[0, 0], -jnp.finfo(d2V.dtype).tiny)
            c = dV ** (-1 / self.gamma)
            pi = -sigma_inv_excess * dV / (W * d2V)
            return c, pi

        def payoff(*args):
            c, _ = args[-1]
            return crra(c, self.gamma)

        def drift(*args):
            W, (c, pi) = args[-2][0], args[-1]
            return jnp.stack([self.r * W + W * jnp.dot(pi, excess) - c])

        def diffusion(*args):
            W, (_, pi) = args[-2][0], args[-1]
            return (W * pi @ chol)[None, :]

        return HJB(
            discount=self.rho,
            payoff=payoff,
            drift=drift,
            policy=policy,
            diffusion=diffusion,
            policy_needs_hessian=True,
            time_dependent=self.horizon is not None,
        )

    def value_network(self, key, width, depth):
        g = self.gamma
        if self.horizon is None:
            transform = lambda z, n: crra(z[0], g) * jnp.exp(n) / self.rho  # noqa: E731
            return ValueNetwork(
                [0.0],
                [self.train_max],
                width=width,
                depth=depth,
                transform=transform,
                key=key,
            )
        T, eps = self.horizon, self.bequest

        def transform(z, n):
            return eps**g * crra(z[1], g) * jnp.exp((T - z[0]) * n)

        return ValueNetwork(
            [0.0, 0.0],
            [T, self.train_max],
            width=width,
            depth=depth,
            transform=transform,
            key=key,
        )

    def sample(self, key, num):
        key_w, key_t = jr.split(key)
        W = _log_uniform_and_uniform(
            key_w, num, 1e-3 * self.w_max, self.w_min, self.train_max
        )
        if self.horizon is None:
            return W
        t = jr.uniform(key_t, (num, 1), minval=0.0, maxval=self.horizon)
        return jnp.concatenate([t, W], axis=1)

    def evaluation_points(self, num):
        W = jnp.linspace(self.w_min, self.w_max, num)
        if self.horizon is None:
            return W[:, None]
        side = max(int(np.sqrt(num)), 2)
        t, W = jnp.meshgrid(
            jnp.linspace(0.0, self.horizon, side),
            jnp.linspace(self.w_min, self.w_max, side),
            indexing="ij",
        )
        return jnp.stack([t.ravel(), W.ravel()], axis=1)

    def shape_violation(self, value_fn, z):
        return no_shape_violation(value_fn, z)

    def residual_scale(self, z, terms):
        return discount_scale(z, terms)

    def initial_guess(self, z):
        return None

    def policies(self, value_fn, z):
        c, pi = self.hjb().controls(value_fn, z)
        return {"consumption": c, "risky_share": pi}

    def _h(self, t):
        nu, g = self.nu, self.gamma
        if self.horizon is None:
            return nu ** (-g)
        decay = jnp.exp(-nu * (self.horizon - t))
        return ((1 + (nu * self.bequest - 1) * decay) / nu) ** g

    @property
    def has_closed_form(self) -> bool:
        """Always, with or without a horizon."""
        return True

    def value_true(self, z):
        if self.horizon is None:
            return self._h(None) * crra(z[0], self.gamma)
        return self._h(z[0]) * crra(z[1], self.gamma)

    def policies_true(self, z):
        pi = jnp.asarray(np.linalg.solve(self.covariance, self.excess) / self.gamma)
        if self.horizon is None:
            W, h = z[0], self._h(None)
        else:
            W, h = z[1], self._h(z[0])
        return {"consumption": h ** (-1 / self.gamma) * W, "risky_share": pi}
