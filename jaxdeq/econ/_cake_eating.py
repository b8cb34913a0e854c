"""Consumption–savings ("cake-eating") with CRRA utility and a constant interest
rate, in continuous time."""

import jax.numpy as jnp

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


class CakeEating(AbstractClosedFormHJBModel):
    r"""Consumption–savings with CRRA utility and a safe return $r$:

    $$\rho V(a) = \max_c \; u(c) + V'(a)\,(r a - c), \qquad
        u(c) = \frac{c^{1-\gamma}}{1-\gamma}, \qquad a \ge 0.$$

    The first-order condition gives $c = (V')^{-1/\gamma}$. Closed form:
    $c = \kappa a$, $V = \kappa^{-\gamma} a^{1-\gamma}/(1-\gamma)$ with
    $\kappa = (\rho - (1-\gamma) r)/\gamma$ (needs $\kappa > 0$).

    On a domain that stops short of the borrowing limit $a = 0$ the equation
    has a one-parameter family of solutions, and a PINN fitted to the residual
    alone converges to one of them with a near-zero loss. The economically right
    one satisfies the state constraint at the limit: consumption vanishes at
    $a = 0$ because nothing else is feasible there. The network imposes it by
    construction, $V(a) = u(a)\,e^{N(a)}/\rho$ with $N$ bounded on $[0, a_{\max}]$,
    and trains on points down to $a = 10^{-3} a_{\max}$. Accuracy is reported on
    $[a_{\min}, a_{\max}]$ (teaching default $[0.1, 4]$).
    """

    gamma: float = 2.0
    rho: float = 0.05
    r: float = 0.03
    a_min: float = 0.1
    a_max: float = 4.0

    def __check_init__(self):
        check_numbers(
            "CakeEating",
            gamma=self.gamma,
            rho=self.rho,
            r=self.r,
            a_min=self.a_min,
            a_max=self.a_max,
        )
        if self.gamma <= 0 or self.rho <= 0:
            raise ValueError(
                f"CakeEating: need gamma > 0 and rho > 0, got {self.gamma}, "
                f"{self.rho}. Pass e.g. `gamma=2.0, rho=0.05`."
            )
        if (self.rho - (1 - self.gamma) * self.r) / self.gamma <= 0:
            raise ValueError(
                "CakeEating: rho - (1 - gamma) r must be positive, or consumption "
                f"is not bounded (gamma={self.gamma}, rho={self.rho}, r={self.r}). "
                "Raise rho or lower r."
            )
        if not 0 < self.a_min < self.a_max:
            raise ValueError(
                f"CakeEating: need 0 < a_min < a_max, got {self.a_min}, "
                f"{self.a_max}. Pass e.g. `a_min=0.1, a_max=4.0`."
            )

    @property
    def kappa(self) -> float:
        """The marginal propensity to consume out of wealth."""
        return (self.rho - (1 - self.gamma) * self.r) / self.gamma

    @property
    def train_max(self) -> float:
        """The top of the training domain: `a_max` (wealth drifts down under the
        optimal policy, so no condition is missing at the top)."""
        return self.a_max

    def hjb(self) -> HJB:
        return HJB(
            discount=self.rho,
            payoff=lambda a, c: crra(c, self.gamma),
            drift=lambda a, c: self.r * a - c,
            policy=lambda a, dV, _: positive_marginal_value(dV[0]) ** (-1 / self.gamma),
        )

    def value_network(self, key, width, depth):
        def transform(a, n):
            return crra(a[0], self.gamma) * jnp.exp(n) / self.rho

        return ValueNetwork(
            [0.0], [self.a_max], width=width, depth=depth, transform=transform, key=key
        )

    def sample(self, key, num):
        return _log_uniform_and_uniform(
            key, num, 1e-3 * self.a_max, self.a_min, self.a_max
        )

    def evaluation_points(self, num):
        return jnp.linspace(self.a_min, self.a_max, num)[:, None]

    def shape_violation(self, value_fn, z):
        return no_shape_violation(value_fn, z)

    def residual_scale(self, z, terms):
        return discount_scale(z, terms)

    def initial_guess(self, z):
        return None

    def policies(self, value_fn, z):
        return {"consumption": self.hjb().controls(value_fn, z)}

    @property
    def has_closed_form(self) -> bool:
        """Always: $c = \\kappa a$ (see above)."""
        return True

    def value_true(self, z):
        return self.kappa ** (-self.gamma) * crra(z[0], self.gamma)

    def policies_true(self, z):
        return {"consumption": self.kappa * z[0]}
