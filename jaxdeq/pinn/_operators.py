"""Residuals of Hamilton–Jacobi–Bellman and Kolmogorov forward equations."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree, Scalar


def value_and_derivatives(
    fn: Callable[[Float[Array, " d"]], Scalar],
    x: Float[Array, " d"],
    *,
    hessian: bool = True,
) -> tuple[Scalar, Float[Array, " d"], Float[Array, "d d"] | None]:
    r"""$V(x)$, $\nabla V(x)$ and (optionally) $\nabla^2 V(x)$ of a scalar function.

    The gradient is reverse mode and the Hessian is forward-over-reverse (one
    Jacobian-vector product of the gradient per input dimension), the cheapest
    way to get second derivatives of a network with a few inputs.

    **Arguments:**

    - `fn`: a scalar function of a vector.
    - `x`: the point, shape `(d,)`.
    - `hessian`: whether to compute the Hessian (`None` is returned otherwise).

    **Returns:**

    `(value, gradient, hessian)`.
    """
    value, gradient = jax.value_and_grad(fn)(x)
    hess = jax.jacfwd(jax.grad(fn))(x) if hessian else None
    return value, gradient, hess


def _trace_second_order(
    fn: Callable, x: Float[Array, " d"], sigma: Float[Array, "d m"]
) -> Scalar:
    r"""$\operatorname{tr}(\sigma\sigma^\top \nabla^2 V)$ as $\sum_k \sigma_k^\top
    \nabla^2 V \sigma_k$: one forward-over-reverse product per noise column, so a
    low-rank diffusion in many dimensions never forms the Hessian."""
    grad = jax.grad(fn)

    def column(s):
        return jnp.vdot(s, jax.jvp(grad, (x,), (s,))[1])

    return jnp.sum(jax.vmap(column, in_axes=1)(sigma))


class HJB(eqx.Module):
    r"""A Hamilton–Jacobi–Bellman equation whose maximum over controls is given by
    first-order conditions.

    Stationary (infinite horizon, discount rate $\rho$):

    $$\rho V(x) = \max_u \; r(x, u) + \nabla V(x)^\top \mu(x, u)
        + \tfrac12 \operatorname{tr}\big(\sigma(x, u)\sigma(x, u)^\top
        \nabla^2 V(x)\big),$$

    time-dependent (`time_dependent=True`, the state is $(t, x)$):

    $$\rho V = \partial_t V + \max_u \; r(t, x, u) + \nabla_x V^\top \mu
        + \tfrac12 \operatorname{tr}(\sigma\sigma^\top \nabla_x^2 V).$$

    The user writes the economics: the flow payoff $r$, the drift $\mu$, the
    diffusion $\sigma$, and the maximiser $u^*(x, \nabla V, \nabla^2 V)$ from the
    first-order conditions. jaxdeq differentiates the value function (reverse
    mode for $\nabla V$, forward-over-reverse for the second-order term) and
    builds the residual.

    Every callable takes the state as a 1-D array `x` (for a time-dependent
    equation, `x` excludes time and the callables take `(t, x, ...)`):

    - `payoff(x, u) -> scalar`;
    - `drift(x, u) -> (d,)`;
    - `policy(x, dV, d2V) -> u`, where `d2V` is the `(d, d)` Hessian when
        `policy_needs_hessian=True` and `None` otherwise; `u` may be any pytree;
    - `diffusion(x, u) -> (d, m)`, or `None` for a deterministic problem.
    """

    discount: float | Array
    payoff: Callable = eqx.field(static=True)
    drift: Callable = eqx.field(static=True)
    policy: Callable = eqx.field(static=True)
    diffusion: Callable | None = eqx.field(static=True, default=None)
    policy_needs_hessian: bool = eqx.field(static=True, default=False)
    time_dependent: bool = eqx.field(static=True, default=False)

    def _split(self, value_fn, z):
        # For a time-dependent equation the network takes z = (t, x).
        if self.time_dependent:
            return (
                z[0],
                z[1:],
                lambda x, t=z[0]: value_fn(jnp.concatenate([t[None], x])),
            )
        return None, z, value_fn

    def _args(self, t, *args):
        return args if t is None else (t, *args)

    def controls(self, value_fn: Callable, z: Float[Array, " n"]) -> PyTree:
        """The maximising controls $u^*$ at one point, from the first-order
        conditions. `z` is `x`, or `(t, x)` concatenated for a time-dependent
        equation."""
        t, x, fn = self._split(value_fn, z)
        _, dV, d2V = value_and_derivatives(fn, x, hessian=self.policy_needs_hessian)
        return self.policy(*self._args(t, x, dV, d2V))

    def terms(self, value_fn: Callable, z: Float[Array, " n"]) -> dict[str, Scalar]:
        """The parts of the equation at one point: `"value"` ($V$), `"discount"`
        ($\\rho V$), `"payoff"`, `"drift"` ($\\nabla V^\\top\\mu$), `"diffusion"`
        (the second-order term, 0 without diffusion), `"time"` ($\\partial_t V$,
        0 when stationary) and `"residual"` (left side minus right side)."""
        t, x, fn = self._split(value_fn, z)
        V, dV, d2V = value_and_derivatives(fn, x, hessian=self.policy_needs_hessian)
        u = self.policy(*self._args(t, x, dV, d2V))
        payoff = self.payoff(*self._args(t, x, u))
        drift = jnp.vdot(dV, self.drift(*self._args(t, x, u)))
        if self.diffusion is None:
            diffusion = jnp.zeros_like(V)
        else:
            sigma = self.diffusion(*self._args(t, x, u))
            if d2V is not None:
                diffusion = 0.5 * jnp.sum(sigma @ sigma.T * d2V)
            else:
                diffusion = 0.5 * _trace_second_order(fn, x, sigma)
        if self.time_dependent:
            time = jax.grad(lambda s: value_fn(jnp.concatenate([s[None], x])))(t)
        else:
            time = jnp.zeros_like(V)
        discount = self.discount * V
        residual = discount - (payoff + drift + diffusion + time)
        return dict(
            value=V,
            discount=discount,
            payoff=payoff,
            drift=drift,
            diffusion=diffusion,
            time=time,
            residual=residual,
        )

    def residual(
        self,
        value_fn: Callable,
        z: Float[Array, " n"],
        *,
        normalise: bool | Callable = True,
    ) -> Scalar:
        r"""The residual at one point (`vmap` it over a batch).

        With `normalise=True` it is divided by $|\rho V|$ (by $|V|$ when $\rho = 0$),
        so that it is a relative error of the equation's balance: unit-free and
        comparable across a domain where $V$ spans orders of magnitude. A
        callable `normalise(z, terms) -> scale` (with `terms` from
        [`jaxdeq.pinn.HJB.terms`][]) divides by a scale of your own, for value
        functions that cross zero; `False` returns the raw residual. Scaling cannot
        make a wrong function look right: the residual is zero only where the
        equation holds.
        """
        terms = self.terms(value_fn, z)
        if normalise is False:
            return terms["residual"]
        if callable(normalise):
            scale = normalise(z, terms)
        else:
            scale = jnp.abs(terms["value"]) * jnp.where(
                self.discount == 0, 1.0, jnp.abs(self.discount)
            )
        tiny = jnp.finfo(jnp.result_type(scale)).tiny
        return terms["residual"] / jnp.maximum(scale, tiny)


class KolmogorovForward(eqx.Module):
    r"""The Kolmogorov forward (Fokker–Planck) equation of a diffusion
    $dX = \mu(x)\,dt + \sigma(x)\,dW$:

    $$\partial_t g = -\sum_i \partial_i(\mu_i g)
        + \tfrac12 \sum_{ij} \partial_i\partial_j\big((\sigma\sigma^\top)_{ij}
        g\big),$$

    stationary ($\partial_t g = 0$) or time-dependent (`time_dependent=True`,
    the density takes $(t, x)$). `drift(x) -> (d,)` and `diffusion(x) -> (d, m)`
    (or `None`) are the dynamics under the policy, usually the optimal policy of
    an [`jaxdeq.pinn.HJB`][] (for example `lambda x: hjb.drift(x,
    hjb.controls(V, x))`). Derivatives of the products are taken by autodiff, so
    state-dependent diffusions are exact.
    """

    drift: Callable = eqx.field(static=True)
    diffusion: Callable | None = eqx.field(static=True, default=None)
    time_dependent: bool = eqx.field(static=True, default=False)

    def residual(self, density_fn: Callable, z: Float[Array, " n"]) -> Scalar:
        """$\\partial_t g - (\\text{right side})$ at one point; `z` is `x`, or
        `(t, x)` concatenated for a time-dependent equation."""
        if self.time_dependent:
            t, x = z[0], z[1:]
            fn = lambda x: density_fn(jnp.concatenate([t[None], x]))
            dt = jax.grad(lambda s: density_fn(jnp.concatenate([s[None], x])))(t)
        else:
            x, fn = z, density_fn
            dt = jnp.zeros((), jnp.result_type(z))

        def flux(x):
            return self.drift(x) * fn(x)

        advection = jnp.trace(jax.jacfwd(flux)(x))
        if self.diffusion is None:
            second = jnp.zeros_like(advection)
        else:
            diffusion = self.diffusion

            def m(x):
                sigma = diffusion(x)
                return sigma @ sigma.T * fn(x)

            # sum_ij d_i d_j M_ij(x) = trace of the Jacobian of the divergence rows.
            def div_rows(x):
                return jnp.einsum("iji->j", jax.jacfwd(m)(x))

            second = 0.5 * jnp.trace(jax.jacfwd(div_rows)(x))
        return dt - (-advection + second)


def shape_violation(
    value_fn: Callable[[Float[Array, " d"]], Scalar],
    x: Float[Array, " d"],
    *,
    increasing: bool = True,
    concave: bool = True,
) -> Scalar:
    r"""How far a function is from being increasing and/or concave at a point:

    $$\sum_i \max(0, -\partial_i V\, s)^2 + \max(0, \lambda_{\max}(\nabla^2 V)\,
        s^2)^2, \qquad s = \frac{\lVert x \rVert}{|V(x)|},$$

    zero exactly where the gradient is non-negative and the Hessian negative
    semi-definite. The factor $s$ makes it unit-free, so it can be added to a
    normalised residual. Economic value functions are increasing in wealth and
    concave; a penalty on this, on top of the residual, removes spurious
    solutions of the HJB equation that are neither (a convex "dissave
    everywhere" solution of the growth model is one) without restricting the
    network. For a guarantee by construction instead, use
    [`jaxdeq.pinn.ShapeConstrainedNetwork`][]. The factor $s$ is small where the
    state is small relative to the value, so a model whose shape matters near
    the origin (a borrowing limit with income, say) may need a larger weight on
    this term.
    """
    V, dV, d2V = value_and_derivatives(value_fn, x, hessian=concave)
    s = jnp.linalg.norm(x) / jnp.maximum(jnp.abs(V), jnp.finfo(V.dtype).tiny)
    out = jnp.zeros_like(V)
    if increasing:
        out = out + jnp.sum(jnp.maximum(-dV * s, 0) ** 2)
    if concave:
        top = jnp.linalg.eigvalsh(d2V)[-1]
        out = out + jnp.maximum(top * s**2, 0) ** 2
    return out


def accuracy_report(
    predicted: Float[Array, "n ..."],
    true: Float[Array, "n ..."],
) -> dict[str, float]:
    r"""Errors of a solution against a reference at the same points.

    **Returns:**

    A dict with `"rel_l2"` ($\lVert p - t\rVert_2 / \lVert t\rVert_2$),
    `"max_abs"`, `"max_rel"` (the largest $|p - t| / |t|$, pointwise) and
    `"mean_rel"`.

    **Raises:**

    `ValueError` if the shapes differ or the reference has non-finite values.
    """
    predicted = jnp.asarray(predicted)
    true = jnp.asarray(true)
    if predicted.shape != true.shape:
        raise ValueError(
            f"predicted has shape {predicted.shape} and the reference {true.shape}; "
            "evaluate both at the same points."
        )
    if not bool(jnp.all(jnp.isfinite(true))):
        raise ValueError("The reference has non-finite values at some points.")
    err = jnp.abs(predicted - true)
    rel = err / jnp.maximum(jnp.abs(true), jnp.finfo(err.dtype).tiny)
    out: dict[str, Any] = {
        "rel_l2": jnp.linalg.norm(err.ravel()) / jnp.linalg.norm(true.ravel()),
        "max_abs": jnp.max(err),
        "max_rel": jnp.max(rel),
        "mean_rel": jnp.mean(rel),
    }
    return {k: float(v) for k, v in out.items()}
