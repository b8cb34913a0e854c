"""The Brock–Mirman growth model as a Deep Equilibrium Net, with its closed form."""

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._deqn import AbstractClosedFormDEQNModel, Expectation


class BrockMirman(AbstractClosedFormDEQNModel):
    r"""The stochastic growth model of Brock and Mirman (1972): log utility, full
    depreciation, AR(1) productivity.

    $$\max \mathbb{E}_0 \sum_t \beta^t \ln C_t \quad\text{s.t.}\quad
    C_t + K_{t+1} = z_t K_t^\alpha, \qquad
    \ln z_{t+1} = \varrho \ln z_t + \sigma \varepsilon_{t+1},\;
    \varepsilon \sim N(0, 1).$$

    **As a Deep Equilibrium Net.** The state is $x = (K, z)$ and the policy the
    savings share $s \in (0, 1)$ of output $Y = z K^\alpha$, a sigmoid of the
    network's output, so that $K' = sY$ and $C = (1 - s)Y$ are positive by
    construction. The equilibrium condition is the Euler equation
    $1/C = \beta\,\mathbb{E}[\alpha z' K'^{\alpha - 1}/C']$, written as the relative
    Euler error

    $$e = \frac{1}{\beta\,\mathbb{E}[\alpha z' K'^{\alpha-1}/C']\; C} - 1,$$

    which is both the residual (named `"euler"`) and the reported error.

    **Closed form.** $s = \alpha\beta$, i.e. $K' = \alpha\beta z K^\alpha$,
    $C = (1 - \alpha\beta) z K^\alpha$ ([`jaxdeq.econ.BrockMirman.policy_true`][]),
    and $V = V_0 + B \ln K + D \ln z$ ([`jaxdeq.econ.BrockMirman.value_true`][]).
    Under it, $e = 0$ for any shock distribution; under a constant share $s$,
    $e = s/(\alpha\beta) - 1$.

    **Arguments:**

    - `alpha`: the capital share $\alpha \in (0, 1)$ (default 0.36).
    - `beta`: the discount factor $\beta \in (0, 1)$ (default 0.96).
    - `rho`: the persistence $\varrho \in (-1, 1)$ of $\ln z$ (default 0.8).
    - `sigma`: the standard deviation $\sigma \ge 0$ of its innovations (default
        0.02).

    ??? cite "References"

        ```bibtex
        @article{brock1972optimal,
            title={Optimal economic growth and uncertainty: the discounted case},
            author={Brock, William A. and Mirman, Leonard J.},
            journal={Journal of Economic Theory},
            volume={4},
            number={3},
            pages={479--513},
            year={1972}
        }
        ```
    """

    alpha: float = 0.36
    beta: float = 0.96
    rho: float = 0.8
    sigma: float = 0.02

    state_names: ClassVar[tuple[str, ...]] = ("K", "z")
    policy_names: ClassVar[tuple[str, ...]] = ("s",)
    shock_dim: ClassVar[int] = 1

    def __check_init__(self):
        for label, value, low, high, default in (
            ("alpha", self.alpha, 0.0, 1.0, 0.36),
            ("beta", self.beta, 0.0, 1.0, 0.96),
            ("rho", self.rho, -1.0, 1.0, 0.8),
            ("sigma", self.sigma, 0.0, math.inf, 0.02),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"BrockMirman: `{label}` must be a number, got {value!r} "
                    f"({type(value).__name__}). Pass e.g. `{label}={default}`."
                )
            if label == "sigma":
                if not value >= 0 or not math.isfinite(value):
                    raise ValueError(
                        f"BrockMirman: `sigma` must be a number >= 0, got {value!r}. "
                        "Pass e.g. `sigma=0.02`."
                    )
            elif not low < value < high:
                raise ValueError(
                    f"BrockMirman: `{label}` must be a number in ({low}, {high}), "
                    f"got {value!r}. Pass e.g. `{label}={default}`."
                )

    @property
    def steady_state_capital(self) -> float:
        r"""The deterministic steady state $K^\star = (\alpha\beta)^{1/(1-\alpha)}$
        of the closed-form policy at $z = 1$."""
        return (self.alpha * self.beta) ** (1 / (1 - self.alpha))

    @property
    def log_z_std(self) -> float:
        r"""The ergodic standard deviation $\sigma/\sqrt{1 - \varrho^2}$ of $\ln z$."""
        return self.sigma / math.sqrt(1 - self.rho**2)

    def initial_states(self, key: PRNGKeyArray, num: int) -> Float[Array, "num 2"]:
        """Capital uniform on $[0.5, 1.5]\\,K^\\star$ and, independently, $\\ln z$
        uniform on four ergodic standard deviations either side of 0: a box that
        holds the ergodic set."""
        k_key, z_key = jr.split(key)
        capital = self.steady_state_capital * jr.uniform(
            k_key, (num,), minval=0.5, maxval=1.5
        )
        log_z = self.log_z_std * jr.uniform(z_key, (num,), minval=-4.0, maxval=4.0)
        return jnp.stack([capital, jnp.exp(log_z)], axis=-1)

    def policy(
        self, raw: Float[Array, "1"], state: Float[Array, "2"]
    ) -> Float[Array, "1"]:
        """The savings share $s = 1/(1 + e^{-\\text{raw}})$."""
        del state
        return jax.nn.sigmoid(raw)

    def transition(
        self,
        state: Float[Array, "2"],
        policy: Float[Array, "1"],
        shock: Float[Array, "1"],
    ) -> Float[Array, "2"]:
        """$K' = s z K^\\alpha$, $\\ln z' = \\varrho \\ln z + \\sigma\\varepsilon$."""
        capital, z = state[0], state[1]
        next_capital = policy[0] * z * capital**self.alpha
        next_z = jnp.exp(self.rho * jnp.log(z) + self.sigma * shock[0])
        return jnp.stack([next_capital, next_z])

    def _euler_error(self, state, policy, expect: Expectation):
        capital, z = state[0], state[1]
        share = policy[0]
        output = z * capital**self.alpha
        consumption = (1 - share) * output

        def return_over_consumption(next_state, next_policy):
            next_capital, next_z = next_state[0], next_state[1]
            next_output = next_z * next_capital**self.alpha
            next_consumption = (1 - next_policy[0]) * next_output
            return self.alpha * next_output / (next_capital * next_consumption)

        marginal = self.beta * expect(return_over_consumption)
        error = 1 / (marginal * consumption) - 1
        # A share outside (0, 1) has no meaning: report it, do not score it.
        valid = (share > 0) & (share < 1)
        return jnp.where(valid, error, jnp.nan)

    def residuals(
        self, state: Float[Array, "2"], policy: Float[Array, "1"], expect: Expectation
    ) -> dict[str, Float[Array, ""]]:
        """`{"euler": e}`, the relative Euler error."""
        return {"euler": self._euler_error(state, policy, expect)}

    def euler_errors(
        self, state: Float[Array, "2"], policy: Float[Array, "1"], expect: Expectation
    ) -> Float[Array, "1"]:
        """The relative Euler error $e$, shape `(1,)`."""
        return jnp.stack([self._euler_error(state, policy, expect)])

    def policy_true(self, state: Float[Array, "2"]) -> Float[Array, "1"]:
        r"""The closed-form policy, the savings share $s = \alpha\beta$ at one state
        (usable wherever a policy function is expected)."""
        return jnp.full((1,), self.alpha * self.beta, jnp.result_type(state))

    def capital_true(self, state: Float[Array, "2"]) -> Float[Array, ""]:
        r"""Next period's capital under the closed form, $K' = \alpha\beta z
        K^\alpha$, at one state."""
        return self.alpha * self.beta * state[1] * state[0] ** self.alpha

    def value_true(self, state: Float[Array, "2"]) -> Float[Array, ""]:
        r"""The closed-form value $V(K, z) = V_0 + B\ln K + D\ln z$ at one state,
        with $B = \alpha/(1 - \alpha\beta)$, $D = 1/((1 - \alpha\beta)(1 -
        \beta\varrho))$ and (derived by matching constants in the Bellman equation)

        $$V_0 = \frac{\ln(1 - \alpha\beta) + \frac{\alpha\beta}{1 - \alpha\beta}
        \ln(\alpha\beta)}{1 - \beta}.$$
        """
        a, b = self.alpha, self.beta
        big_b = a / (1 - a * b)
        big_d = 1 / ((1 - a * b) * (1 - b * self.rho))
        v0 = (math.log(1 - a * b) + a * b / (1 - a * b) * math.log(a * b)) / (1 - b)
        return v0 + big_b * jnp.log(state[0]) + big_d * jnp.log(state[1])
