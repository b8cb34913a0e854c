"""The linear–quadratic regulator in d dimensions: an HJB equation with an exact
solution in any dimension."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from ..pinn import HJB, QuasiRandomSampler, ValueNetwork
from ._checks import check_int, check_numbers
from ._hjb import AbstractClosedFormHJBModel, no_shape_violation


class LQR(AbstractClosedFormHJBModel):
    r"""A discounted linear–quadratic regulator in $d$ dimensions:

    $$\rho V(x) = \max_u \; -x^\top Q x - u^\top R u + \nabla V^\top (A x + B u)
        + \tfrac{s^2}{2} \Delta V,$$

    with dynamics $dx = (Ax + Bu)\,dt + s\,dW$. The first-order condition is
    $u = \tfrac12 R^{-1} B^\top \nabla V$. The value function is
    $V = -x^\top P x - s^2 \operatorname{tr}(P)/\rho$, where $P$ is the
    stabilising solution of the algebraic Riccati equation
    $Q + (A - \tfrac{\rho}{2} I)^\top P + P (A - \tfrac{\rho}{2} I)
    - P B R^{-1} B^\top P = 0$ (SciPy's `solve_continuous_are`), and
    $u^* = -R^{-1} B^\top P x$: an exact solution of the HJB equation in any
    dimension, for checking PINNs where grids cannot go.

    By default $Q = R = B = I$ and $A = 0.1\, G/\sqrt{d}$ with a seeded Gaussian
    $G$ (so some directions are unstable without control), $\rho = 0.05$,
    $s = 0$, on the box $[-1, 1]^d$. The network imposes what the economics
    says by construction: costs are non-negative, so $V \le 0$ with its maximum
    at the bliss point, through $V(x) = -\lVert N(x) - N(0)\rVert^2$ with a
    vector-valued network $N$ (an MLP with a linear skip connection) minus a
    learnt constant $e^{c}$ when $s > 0$.
    This excludes the spurious solutions of the HJB equation that come from the
    other, non-stabilising, solutions of the Riccati equation. The
    residual is divided by $\rho|V| + x^\top Q x$, which vanishes only at the
    bliss point.

    **Arguments:** `dim`; `A`, `B`, `Q`, `R` (nested tuples, or `None` for the
    defaults); `rho`; `noise` ($s$); `seed` (for the default $A$); `radius` (the
    box half-width).
    """

    dim: int = 20
    rho: float = 0.05
    noise: float = 0.0
    seed: int = 0
    radius: float = 1.0
    A: tuple | None = None
    B: tuple | None = None
    Q: tuple | None = None
    R: tuple | None = None

    def __check_init__(self):
        check_int("LQR", "dim", self.dim, 1, 20)
        check_int("LQR", "seed", self.seed, 0, 0)
        check_numbers("LQR", rho=self.rho, noise=self.noise, radius=self.radius)
        if self.rho <= 0 or self.noise < 0 or self.radius <= 0:
            raise ValueError(
                "LQR: need rho > 0, noise >= 0 and radius > 0; got "
                f"{self.rho}, {self.noise}, {self.radius}. Pass e.g. `rho=0.05, "
                "noise=0.0, radius=1.0`."
            )
        A, B, Q, R = self.matrices()
        d = self.dim
        if A.shape != (d, d) or B.shape[0] != d or Q.shape != (d, d):
            raise ValueError(
                f"LQR: A must be {d}x{d}, B {d}xm and Q {d}x{d}; got {A.shape}, "
                f"{B.shape}, {Q.shape}. Give matrices of dimension `dim`."
            )
        if R.shape != (B.shape[1], B.shape[1]) or np.any(
            np.linalg.eigvalsh(0.5 * (R + R.T)) <= 0
        ):
            raise ValueError(
                "LQR: R must be symmetric positive definite, m x m (m the columns "
                "of B). Pass e.g. the identity."
            )
        if np.any(np.linalg.eigvalsh(0.5 * (Q + Q.T)) < 0):
            raise ValueError(
                "LQR: Q must be symmetric positive semi-definite. Pass e.g. the "
                "identity."
            )

    def matrices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """$(A, B, Q, R)$ as NumPy arrays."""
        d = self.dim
        if self.A is None:
            G = np.random.default_rng(self.seed).standard_normal((d, d))
            A = 0.1 * G / np.sqrt(d)
        else:
            A = np.asarray(self.A, float)
        B = np.eye(d) if self.B is None else np.asarray(self.B, float)
        Q = np.eye(d) if self.Q is None else np.asarray(self.Q, float)
        R = np.eye(B.shape[1]) if self.R is None else np.asarray(self.R, float)
        return A, B, Q, R

    def riccati(self) -> np.ndarray:
        """The stabilising solution $P$ of the discounted Riccati equation."""
        from scipy.linalg import solve_continuous_are

        A, B, Q, R = self.matrices()
        return solve_continuous_are(A - 0.5 * self.rho * np.eye(self.dim), B, Q, R)

    def hjb(self) -> HJB:
        A, B, Q, R = (jnp.asarray(m) for m in self.matrices())
        gain = 0.5 * jnp.linalg.solve(R, B.T)
        s = self.noise
        return HJB(
            discount=self.rho,
            payoff=lambda x, u: -(x @ Q @ x) - (u @ R @ u),
            drift=lambda x, u: A @ x + B @ u,
            policy=lambda x, dV, _: gain @ dV,
            diffusion=None
            if s == 0
            else (lambda x, u: s * jnp.eye(x.size, dtype=x.dtype)),
        )

    def value_network(self, key, width, depth):
        d, h = self.dim, self.radius
        net = ValueNetwork(
            [-h] * d,
            [h] * d,
            width=width,
            depth=depth,
            out_size=d,
            transform=_negative_square,
            linear_skip=True,
            key=key,
        )
        offset = jnp.zeros((), net.mlp.layers[-1].weight.dtype)
        return _NegativeSquare(net, offset, self.noise > 0)

    def sample(self, key, num):
        d, h = self.dim, self.radius
        return QuasiRandomSampler([-h] * d, [h] * d, num)(key)

    def evaluation_points(self, num):
        d, h = self.dim, self.radius
        return jr.uniform(jr.PRNGKey(12345), (num, d), minval=-h, maxval=h)

    def residual_scale(self, z, terms):
        # V vanishes at the bliss point: scale by the state cost as well.
        _, _, Q, _ = self.matrices()
        return jnp.abs(terms["discount"]) + z @ jnp.asarray(Q) @ z

    def shape_violation(self, value_fn, z):
        return no_shape_violation(value_fn, z)

    def initial_guess(self, z):
        return None

    def policies(self, value_fn, z):
        return {"control": self.hjb().controls(value_fn, z)}

    @property
    def has_closed_form(self) -> bool:
        """Always: the Riccati solution."""
        return True

    def value_true(self, z):
        P = jnp.asarray(self.riccati())
        return -(z @ P @ z) - self.noise**2 * jnp.trace(P) / self.rho

    def policies_true(self, z):
        _, B, _, R = self.matrices()
        P = self.riccati()
        K = jnp.asarray(np.linalg.solve(R, B.T @ P))
        return {"control": -K @ z}


def _negative_square(x, n):
    del x
    return -jnp.sum(n**2)


class _NegativeSquare(eqx.Module):
    # V(x) = -|N(x) - N(0)|^2 - exp(offset): costs are non-negative, so V <= 0,
    # with its maximum at the bliss point x = 0 (V(0) = 0 without noise).
    net: ValueNetwork
    offset: jax.Array
    noisy: bool = eqx.field(static=True)

    def __call__(self, x):
        n = self.net.features(x) - self.net.features(jnp.zeros_like(x))
        value = -jnp.sum(n**2)
        return value - jnp.exp(self.offset) if self.noisy else value
