import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .._misc import check_margin
from .._solver._monotone_problem import AbstractMonotoneLinear, AbstractResolvent


class _DenseResolvent(AbstractResolvent):
    """(I + alpha (I - W))^-1 as an explicit matrix.

    The symmetric part of I + alpha (I - W) is at least (1 + alpha m) I, so its inverse
    has norm at most 1 / (1 + alpha m) and forming it is as accurate as an LU solve;
    a matrix product is much faster than triangular solves under vmap.
    """

    alpha: Scalar
    inverse: Array

    def mv(self, z):
        return self.inverse.astype(z.dtype) @ z

    def transpose_mv(self, z):
        return self.inverse.T.astype(z.dtype) @ z


def _wide(x: Array) -> Array:
    """`x` in at least float32: LAPACK has no bfloat16 or float16 kernels, and the
    factorisations are bookkeeping, which runs in at least float32."""
    return x.astype(jnp.float32) if jnp.finfo(x.dtype).bits < 32 else x


def dense_resolvent(alpha, i_minus_w: Array) -> _DenseResolvent:
    i_minus_w = _wide(i_minus_w)
    alpha = jnp.asarray(alpha, i_minus_w.dtype)
    eye = jnp.eye(i_minus_w.shape[0], dtype=i_minus_w.dtype)
    return _DenseResolvent(alpha, jnp.linalg.inv(eye + alpha * i_minus_w))


class MonotoneLinear(AbstractMonotoneLinear):
    r"""A dense monotone weight $W = (1 - m) I - A^\top A + B - B^\top$.

    Its symmetric part satisfies $\operatorname{sym}(I - W) = m I + A^\top A \succeq
    m I$ for every $A$ and $B$, so a monotone DEQ with this weight has exactly one
    fixed point for every input and every parameter value. The resolvent is formed once
    per solve.

    Fields `A` ($r \times n$) and `B` ($n \times n$) can be replaced with
    `equinox.tree_at` to set given weights.

    ??? cite "References"

        ```bibtex
        @inproceedings{winston2020monotone,
            author = {Winston, Ezra and Kolter, J. Zico},
            title = {Monotone operator equilibrium networks},
            booktitle = {Advances in Neural Information Processing Systems},
            year = {2020},
        }
        ```
    """

    A: Float[Array, "rank n"]
    B: Float[Array, "n n"]
    margin: float = eqx.field(static=True)

    def __init__(
        self,
        size: int,
        margin: float = 0.5,
        *,
        rank: int | None = None,
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_margin("MonotoneLinear", margin)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"MonotoneLinear: `size` must be an int >= 1, got {size}.")
        rank = size if rank is None else rank
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        akey, bkey = jr.split(key)
        # Small enough that W starts near (1 - m) I: a contraction with a margin.
        scale = 1.0 / jnp.sqrt(jnp.asarray(4 * size, dtype))
        self.A = jr.normal(akey, (rank, size), dtype) * scale
        self.B = jr.normal(bkey, (size, size), dtype) * scale
        self.margin = float(margin)

    def __check_init__(self):
        check_margin("MonotoneLinear", self.margin)
        if self.A.ndim != 2 or self.B.ndim != 2 or self.B.shape[0] != self.B.shape[1]:
            raise ValueError(
                "MonotoneLinear: `A` must be (rank, n) and `B` (n, n), got "
                f"{self.A.shape} and {self.B.shape}."
            )
        if self.A.shape[1] != self.B.shape[0]:
            raise ValueError(
                f"MonotoneLinear: `A` has {self.A.shape[1]} columns but `B` is "
                f"{self.B.shape}; both must act on the same state size."
            )

    def _i_minus_w(self) -> Float[Array, "n n"]:
        n = self.B.shape[0]
        eye = jnp.eye(n, dtype=self.B.dtype)
        return self.margin * eye + self.A.T @ self.A - self.B + self.B.T

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.B.shape[0],), self.B.dtype)

    def mv(self, z):
        bz = self.B.astype(z.dtype)
        az = self.A.astype(z.dtype)
        return (1 - self.margin) * z - az.T @ (az @ z) + (bz - bz.T) @ z

    def transpose_mv(self, z):
        bz = self.B.astype(z.dtype)
        az = self.A.astype(z.dtype)
        return (1 - self.margin) * z - az.T @ (az @ z) + (bz.T - bz) @ z

    def resolvent(self, alpha):
        return dense_resolvent(alpha, self._i_minus_w())

    def lipschitz(self):
        return jnp.linalg.norm(_wide(self._i_minus_w()), ord=2)

    def as_matrix(self):
        return jnp.eye(self.B.shape[0], dtype=self.B.dtype) - self._i_minus_w()

    def prepare(self):
        """$W$ formed once as a matrix: one product per application."""
        return DenseMatrix(matrix=self.as_matrix(), margin=self.margin)


MonotoneLinear.__init__.__doc__ = r"""**Arguments:**

- `size`: the state size $n$.
- `margin`: $m > 0$, the monotonicity margin (a Python float).
- `rank`: the number of rows of $A$ (default $n$).
- `key`: a JAX PRNG key for the initialisation ($A$ and $B$ start small, so $W$
    starts near $(1 - m) I$).
- `dtype`: the parameters' dtype (default float32, or float64 with x64 on).

**Raises:**

`ValueError`/`TypeError` for a non-positive margin or a bad size.
"""


class DenseMatrix(AbstractMonotoneLinear):
    """A monotone operator given as its matrix, whose margin its maker guarantees
    (the materialised form of the dense parameterisations)."""

    matrix: Float[Array, "n n"]
    margin: float = eqx.field(static=True)

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[0],), self.matrix.dtype)

    def mv(self, z):
        return self.matrix.astype(z.dtype) @ z

    def transpose_mv(self, z):
        return self.matrix.T.astype(z.dtype) @ z

    def _i_minus_w(self):
        return jnp.eye(self.matrix.shape[0], dtype=self.matrix.dtype) - self.matrix

    def resolvent(self, alpha):
        return dense_resolvent(alpha, self._i_minus_w())

    def lipschitz(self):
        return jnp.linalg.norm(_wide(self._i_minus_w()), ord=2)

    def as_matrix(self):
        return self.matrix

    def prepare(self):
        return self
