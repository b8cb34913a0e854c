"""The neoclassical growth model in continuous time (Ramsey–Cass–Koopmans)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..pinn import HJB, shape_violation, ValueNetwork
from ._checks import check_numbers
from ._hjb import (
    _log_uniform_and_uniform,
    AbstractClosedFormHJBModel,
    crra,
    discount_scale,
    positive_marginal_value,
)


class Growth(AbstractClosedFormHJBModel):
    r"""The neoclassical growth model:

    $$\rho V(k) = \max_c \; u(c) + V'(k)\,(A k^\alpha - \delta k - c),$$

    with CRRA utility of curvature $\gamma$. When $\gamma = \alpha$ it has the
    closed form (Smith 2006) $c = x k$, $x = (\rho + (1-\alpha)\delta)/\alpha$,
    $V(k) = x^{-\alpha}\big(k^{1-\alpha}/(1-\alpha) + A/\rho\big)$; that is the
    default ($\alpha = \gamma = 0.3$, $\delta = \rho = 0.05$, $A = 1$). Other
    $\gamma$ are allowed (Moll's finite-difference setting is $\gamma = 2$); they
    have no closed form.

    The domain is $k \in [0.001 k_{ss}, 2 k_{ss}]$ with the steady state
    $k_{ss} = (\alpha A/(\rho+\delta))^{1/(1-\alpha)}$. The network takes
    $\log k$. The equation has smooth solutions besides the value function
    (for example one that dissaves at every $k$, convex rather than concave);
    the fit therefore starts from the initial guess of the finite-difference
    literature, the value of staying at $k$ forever,
    $V_0(k) = u(A k^\alpha - \delta k)/\rho$, which lies in the right basin.
    """

    gamma: float = 0.3
    alpha: float = 0.3
    delta: float = 0.05
    rho: float = 0.05
    A: float = 1.0

    def __check_init__(self):
        check_numbers(
            "Growth",
            alpha=self.alpha,
            gamma=self.gamma,
            delta=self.delta,
            rho=self.rho,
            A=self.A,
        )
        if not 0 < self.alpha < 1:
            raise ValueError(
                f"Growth: need 0 < alpha < 1, got {self.alpha}. Pass e.g. `alpha=0.3`."
            )
        if self.gamma <= 0 or self.rho <= 0 or self.delta < 0 or self.A <= 0:
            raise ValueError(
                "Growth: need gamma > 0, rho > 0, delta >= 0 and A > 0; got "
                f"{self.gamma}, {self.rho}, {self.delta}, {self.A}. Pass positive "
                "values (delta may be 0)."
            )

    @property
    def k_ss(self) -> float:
        """The steady-state capital stock."""
        return (self.alpha * self.A / (self.rho + self.delta)) ** (1 / (1 - self.alpha))

    @property
    def bounds(self) -> tuple[float, float]:
        """The capital grid's ends, $0.001 k_{ss}$ and $2 k_{ss}$."""
        return 0.001 * self.k_ss, 2 * self.k_ss

    def _output(self, k):
        return self.A * k**self.alpha - self.delta * k

    def hjb(self) -> HJB:
        return HJB(
            discount=self.rho,
            payoff=lambda k, c: crra(c, self.gamma),
            drift=lambda k, c: self._output(k) - c,
            policy=lambda k, dV, _: positive_marginal_value(dV[0]) ** (-1 / self.gamma),
        )

    def value_network(self, key, width, depth):
        lo, hi = self.bounds
        c_ss = self._output(self.k_ss)
        scale = float(np.abs(crra(c_ss, self.gamma))) / self.rho

        # The network sees log k; the value is scaled to order one.
        net = ValueNetwork(
            [np.log(lo)],
            [np.log(hi)],
            width=width,
            depth=depth,
            transform=lambda s, n: scale * n,
            key=key,
        )
        return _LogInput(net)

    def sample(self, key, num):
        lo, hi = self.bounds
        return _log_uniform_and_uniform(key, num, lo, lo, hi)

    def evaluation_points(self, num):
        lo, hi = self.bounds
        return jnp.linspace(lo, hi, num)[:, None]

    def initial_guess(self, z):
        return crra(self._output(z[0]), self.gamma) / self.rho

    def shape_violation(self, value_fn, z):
        return shape_violation(value_fn, z)

    def policies(self, value_fn, z):
        return {"consumption": self.hjb().controls(value_fn, z)}

    @property
    def has_closed_form(self) -> bool:
        """Whether $\\gamma = \\alpha$, where the closed form holds."""
        return self.gamma == self.alpha

    def residual_scale(self, z, terms):
        return discount_scale(z, terms)

    def _check_closed_form(self):
        if self.gamma != self.alpha:
            raise ValueError(
                "Growth.value_true/policies_true: the closed form holds only when "
                f"gamma == alpha (here gamma={self.gamma}, alpha={self.alpha}). Check "
                "`model.has_closed_form` (or `jaxdeq.econ.has_closed_form(model)`) "
                "first, or compare with an independent solution."
            )

    def value_true(self, z):
        self._check_closed_form()
        x = (self.rho + (1 - self.alpha) * self.delta) / self.alpha
        k = z[0]
        return x ** (-self.alpha) * (
            k ** (1 - self.alpha) / (1 - self.alpha) + self.A / self.rho
        )

    def policies_true(self, z):
        self._check_closed_form()
        x = (self.rho + (1 - self.alpha) * self.delta) / self.alpha
        return {"consumption": x * z[0]}


class _LogInput(eqx.Module):
    net: ValueNetwork

    def __call__(self, z):
        return self.net(jnp.log(z))
