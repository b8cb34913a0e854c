r"""What an operator-splitting solver needs to know about a monotone fixed point.

A monotone fixed-point problem is $z = \operatorname{prox}_f(W z + b)$ where
$I - W \succeq m I$ (strongly monotone, margin $m > 0$) and $\operatorname{prox}_f$ is
the proximal operator of a convex function $f$. The solvers in `splitting.py` only
use the interfaces below, so every parameterisation of $W$ (dense, convolutional,
multi-tier) and every proximal operator (ReLU, group softmax) works with every
solver.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree, Scalar


class AbstractResolvent(eqx.Module):
    r"""The resolvent $V = (I + \alpha (I - W))^{-1}$ of a monotone linear operator,
    with its factorisation cached (an explicit inverse for a dense $W$, one small
    inverse per frequency for a convolutional one).

    Obtained from [`jaxdeq.monotone.AbstractMonotoneLinear.resolvent`][].
    """

    alpha: eqx.AbstractVar[Scalar]

    @abc.abstractmethod
    def mv(self, z: PyTree[Array]) -> PyTree[Array]:
        r"""$V z$."""

    @abc.abstractmethod
    def transpose_mv(self, z: PyTree[Array]) -> PyTree[Array]:
        r"""$V^\top z$."""


class AbstractMonotoneLinear(eqx.Module):
    r"""A linear operator $W$ with $I - W \succeq m I$: the weight of a monotone
    DEQ.

    The symmetric part of $I - W$ has every eigenvalue at least the `margin` $m > 0$,
    so $I - W$ is strongly monotone and $z = \operatorname{prox}_f(W z + b)$ has
    exactly one solution for every $b$ and every convex $f$.

    Concrete subclasses: [`jaxdeq.monotone.MonotoneLinear`][] (dense),
    [`jaxdeq.monotone.MonotoneConv`][] (convolutional, in the Fourier domain).
    They act on one sample (no batch axis); `vmap` for a batch.
    """

    margin: eqx.AbstractVar[float]

    @abc.abstractmethod
    def in_structure(self) -> PyTree[jax.ShapeDtypeStruct]:
        """The shape and dtype of the state $z$ (a pytree for multi-tier
        operators)."""

    @abc.abstractmethod
    def mv(self, z: PyTree[Array]) -> PyTree[Array]:
        r"""$W z$."""

    @abc.abstractmethod
    def transpose_mv(self, z: PyTree[Array]) -> PyTree[Array]:
        r"""$W^\top z$."""

    @abc.abstractmethod
    def resolvent(self, alpha: float | Scalar) -> AbstractResolvent:
        r"""$(I + \alpha (I - W))^{-1}$, factorised once for repeated use."""

    @abc.abstractmethod
    def lipschitz(self) -> Scalar:
        r"""An upper bound on $L = \|I - W\|_2$ (exact where that is cheap); the
        forward–backward step size must satisfy $\alpha \le 2 m / L^2$."""

    @abc.abstractmethod
    def as_matrix(self) -> Array:
        r"""$W$ as a dense $n \times n$ matrix acting on the flattened state
        (`jax.flatten_util.ravel_pytree` order). For tests and small problems."""

    @abc.abstractmethod
    def prepare(self) -> "AbstractMonotoneLinear":
        r"""The same operator in the form fastest for many products in one solve.

        For example $W$ materialised once as a matrix (dense) or as one matrix per
        frequency (convolutional), instead of being rebuilt from its parameters at
        every product. [`jaxdeq.monotone.solve`][] calls it once per solve, outside
        the loop, so gradients still reach the parameters. May return `self`.
        """


class AbstractProx(eqx.Module):
    r"""A proximal operator $\operatorname{prox}_{\alpha f}(v) = \arg\min_x
    \tfrac12 \|x - v\|^2 + \alpha f(x)$ of a convex function $f$: the activation
    of a monotone DEQ.

    `prox(v, 1.0)` is the activation in $z = \operatorname{prox}_f(Wz + b)$; the
    splitting solvers call it with their step size $\alpha$.
    """

    @abc.abstractmethod
    def __call__(self, v: PyTree[Array], alpha: float | Scalar) -> PyTree[Array]:
        r"""$\operatorname{prox}_{\alpha f}(v)$."""

    @abc.abstractmethod
    def linearise(self, v: PyTree[Array]) -> "AbstractProx":
        r"""The linear proximal operator of the Jacobian $J$ of
        $\operatorname{prox}_f$ at $v$.

        $J$ is symmetric with eigenvalues in $[0, 1]$ (the prox of a convex function
        is firmly nonexpansive), so $x \mapsto J x$ is itself the prox of a convex
        quadratic, whose prox with step $\alpha$ is
        $x \mapsto J (\alpha I + (1 - \alpha) J)^{-1} x$. The backward pass of a
        monotone DEQ is a monotone fixed point with this prox and $W^\top$.
        """


class _TransposedResolvent(AbstractResolvent):
    inner: AbstractResolvent

    @property
    def alpha(self):
        return self.inner.alpha

    def mv(self, z):
        return self.inner.transpose_mv(z)

    def transpose_mv(self, z):
        return self.inner.mv(z)


class Transposed(AbstractMonotoneLinear):
    r"""$W^\top$ of a monotone operator: monotone with the same margin, sharing
    the factorisation of its resolvent."""

    operator: AbstractMonotoneLinear

    @property
    def margin(self):
        return self.operator.margin

    def in_structure(self):
        return self.operator.in_structure()

    def mv(self, z):
        return self.operator.transpose_mv(z)

    def transpose_mv(self, z):
        return self.operator.mv(z)

    def resolvent(self, alpha):
        return _TransposedResolvent(self.operator.resolvent(alpha))  # pyright: ignore[reportCallIssue]

    def lipschitz(self):
        return self.operator.lipschitz()

    def as_matrix(self):
        return self.operator.as_matrix().T

    def prepare(self):
        return Transposed(self.operator.prepare())  # pyright: ignore[reportCallIssue]


class MonotoneProblem(eqx.Module):
    r"""The monotone fixed point $z = \operatorname{prox}_f(W z + b)$.

    Calling it, `problem(z, args)`, evaluates the fixed-point map (`args` is
    ignored), so it can be passed as `fn` to any fixed-point solver. The splitting
    solvers ([`jaxdeq.ForwardBackward`][], [`jaxdeq.PeacemanRachford`][]) also need
    it in `options={"problem": problem}`; [`jaxdeq.monotone.solve`][] does both.

    **Arguments:**

    - `operator`: $W$, an [`jaxdeq.monotone.AbstractMonotoneLinear`][].
    - `prox`: the activation, an [`jaxdeq.monotone.AbstractProx`][].
    - `bias`: $b$ (e.g. $U x + b$), with the structure of the state.

    **Raises:**

    `ValueError` if `bias` does not have the operator's state structure.
    """

    operator: AbstractMonotoneLinear
    prox: AbstractProx
    bias: PyTree[Array]

    def __check_init__(self):
        want = jtu.tree_map(lambda s: s.shape, self.operator.in_structure())
        got = jtu.tree_map(lambda b: jnp.shape(b), self.bias)
        if jtu.tree_structure(want) != jtu.tree_structure(got) or want != got:
            raise ValueError(
                f"MonotoneProblem: `bias` has shape {got} but the operator acts on "
                f"states of shape {want}. Make the injection output the operator's "
                "state shape (one sample, no batch axis; vmap over a batch)."
            )

    def pre_activation(self, z: PyTree[Array]) -> PyTree[Array]:
        r"""$W z + b$."""
        return jtu.tree_map(jnp.add, self.operator.mv(z), self.bias)

    def __call__(self, z: PyTree[Array], args: PyTree = None) -> PyTree[Array]:
        r"""The fixed-point map $\operatorname{prox}_f(W z + b)$ (`args` is
        ignored)."""
        del args
        return self.prox(self.pre_activation(z), 1.0)
