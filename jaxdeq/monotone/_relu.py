import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from .._solver._monotone_problem import AbstractProx


class ReLU(AbstractProx):
    r"""The ReLU, $\max(v, 0)$: the proximal operator of the indicator of
    $\{z \ge 0\}$, the same for every step size $\alpha$.

    The activation of the monotone DEQ of Winston & Kolter (2020). Acts leafwise on
    any pytree state.
    """

    def __call__(self, v, alpha):
        del alpha
        return jtu.tree_map(jax.nn.relu, v)

    def linearise(self, v):
        return DiagonalProx(jtu.tree_map(lambda x: (x > 0).astype(x.dtype), v))


class DiagonalProx(AbstractProx):
    r"""The linear map $x \mapsto d \odot x$ with $0 \le d \le 1$ as a proximal
    operator.

    It is the prox of the convex quadratic $\sum_i \tfrac12 (1/d_i - 1) x_i^2$ (the
    indicator of $\{0\}$ where $d_i = 0$); with step $\alpha$ it is
    $x \mapsto d x / (d + \alpha (1 - d))$. The linearisation of an elementwise
    activation, used by the backward pass of a monotone DEQ.

    **Arguments:**

    - `d`: the slopes, a pytree of arrays with entries in $[0, 1]$.
    """

    d: PyTree[Array]

    def __call__(self, v, alpha):
        def one(d, x):
            a = jnp.asarray(alpha, x.dtype)
            d = d.astype(x.dtype)
            denom = d + a * (1 - d)
            return jnp.where(d > 0, d * x / jnp.where(d > 0, denom, 1), 0)

        return jtu.tree_map(one, self.d, v)

    def linearise(self, v):
        del v
        return self
