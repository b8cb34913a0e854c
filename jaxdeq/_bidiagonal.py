"""Block lower-bidiagonal linear operators and their parallel-scan solver, for lineax.

The Jacobian of the stacked residual $F(H)_t = h_t - f(h_{t-1}, x_t)$ of a
recurrence is block lower bidiagonal: identity blocks on the diagonal and
$-\\partial f / \\partial h$ below it. Solving with it is a linear recurrence
$x_t = A_t x_{t-1} + c_t$, which `jax.lax.associative_scan` evaluates in
$O(\\log T)$ depth; its transpose is the same recurrence run backwards in time.
"""

from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Inexact, PyTree


def _matmul(a, b):
    return jnp.einsum("...ij,...jk->...ik", a, b)


def _matvec(a, x):
    return jnp.einsum("...ij,...j->...i", a, x)


def _combine_dense(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return _matmul(a2, a1), _matvec(a2, b1) + b2


def _combine_diagonal(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def linear_recurrence(
    a: Inexact[Array, "T n ..."], b: Inexact[Array, "T n"], *, reverse: bool = False
) -> Inexact[Array, "T n"]:
    r"""Solve the linear recurrence $x_t = a_t x_{t-1} + b_t$ with $x_{-1} = 0$ (or,
    with `reverse=True`, $x_t = a_t x_{t+1} + b_t$ with $x_T = 0$) by a parallel
    associative scan: $O(\log T)$ depth, $O(T)$ combinations.

    `a` holds dense blocks, shape `(T, n, n)`, or the diagonals of diagonal blocks,
    shape `(T, n)`. `a[0]` (`a[T - 1]` when reversed) multiplies the zero boundary
    value and is not read.
    """
    dense = a.ndim == 3
    if reverse:
        a, b = jnp.flip(a, 0), jnp.flip(b, 0)
    # The first element has no predecessor: zero its coefficient so that the scan's
    # prefix products never see a value that is not part of the recurrence.
    a = a.at[0].set(0)
    combine = _combine_dense if dense else _combine_diagonal
    _, x = jax.lax.associative_scan(combine, (a, b))
    return jnp.flip(x, 0) if reverse else x


def _check_blocks(name, array, length, size):
    if array.ndim not in (2, 3) or array.shape[0] != length:
        raise ValueError(
            f"BlockBidiagonalLinearOperator: `{name}` must have shape "
            f"({length}, n) for diagonal blocks or ({length}, n, n) for dense blocks, "
            f"got {array.shape}."
        )
    if array.shape[1] != size or (array.ndim == 3 and array.shape[2] != size):
        raise ValueError(
            f"BlockBidiagonalLinearOperator: the blocks of `{name}` must be of size "
            f"{size}, got shape {array.shape}."
        )


class BlockBidiagonalLinearOperator(lx.AbstractLinearOperator):
    r"""A block lower-bidiagonal matrix acting on arrays of shape `(T, n)`.

    Row block $t$ of the product is $D_t x_t + L_t x_{t-1}$ (no second term for
    $t = 0$), where $x_t \in \mathbb{R}^n$ is row $t$ of the input. Each kind of
    block is stored in its own form: the diagonal blocks $D_t$ are the identity
    (`diagonal=None`), diagonal (shape `(T, n)`) or dense (`(T, n, n)`); the
    sub-diagonal blocks $L_t$ are diagonal (`(T - 1, n)`) or dense
    (`(T - 1, n, n)`). It is the Jacobian of the stacked residual
    $F(H)_t = h_t - f(h_{t-1}, x_t)$ of a recurrence (identity $D_t$,
    $L_t = -\partial f / \partial h$), and [`jaxdeq.ParallelScan`][] solves it.

    Its `transpose()` is the block upper-bidiagonal matrix with row block $t$ equal
    to $D_t^\top x_t + L_{t+1}^\top x_{t+1}$.
    """

    diagonal: Inexact[Array, "T n ..."] | None
    lower: Inexact[Array, "L n ..."]
    transposed: bool = eqx.field(static=True)

    def __init__(
        self,
        diagonal: Inexact[Array, "T n ..."] | None,
        lower: Inexact[Array, "L n ..."],
        transposed: bool = False,
    ):
        r"""**Arguments:**

        - `diagonal`: the diagonal blocks $D_t$: `None` for identity blocks, shape
            `(T, n)` for diagonal blocks, `(T, n, n)` for dense blocks.
        - `lower`: the sub-diagonal blocks $L_t$ (row $t$, column $t - 1$) for
            $t = 1, \dots, T - 1$: shape `(T - 1, n)` for diagonal blocks,
            `(T - 1, n, n)` for dense blocks.
        - `transposed`: represent the transpose of that matrix instead.

        **Raises:**

        `ValueError` for shapes that do not fit together.
        """
        lower = jnp.asarray(lower)
        if lower.ndim not in (2, 3):
            raise ValueError(
                "BlockBidiagonalLinearOperator: `lower` must have shape (T - 1, n) "
                f"or (T - 1, n, n), got {lower.shape}."
            )
        length, size = lower.shape[0] + 1, lower.shape[1]
        _check_blocks("lower", lower, length - 1, size)
        if diagonal is not None:
            diagonal = jnp.asarray(diagonal)
            _check_blocks("diagonal", diagonal, length, size)
            dtype = jnp.result_type(diagonal.dtype, lower.dtype)
            diagonal = diagonal.astype(dtype)
            lower = lower.astype(dtype)
        self.diagonal = diagonal
        self.lower = lower
        self.transposed = transposed

    @property
    def length(self) -> int:
        """The number of block rows $T$."""
        return self.lower.shape[0] + 1

    @property
    def size(self) -> int:
        """The size $n$ of each block."""
        return self.lower.shape[1]

    def _block_mv(self, blocks, x, transpose):
        if blocks.ndim == 2:
            return blocks * x
        if transpose:
            blocks = jnp.swapaxes(blocks, -1, -2)
        return _matvec(blocks, x)

    def mv(self, vector):
        x = jnp.asarray(vector)
        t = self.transposed
        out = x if self.diagonal is None else self._block_mv(self.diagonal, x, t)
        if t:
            # Row t: L_{t+1}^T x_{t+1}.
            return out.at[:-1].add(self._block_mv(self.lower, x[1:], True))
        return out.at[1:].add(self._block_mv(self.lower, x[:-1], False))

    def as_matrix(self):
        length, size = self.length, self.size
        basis = jnp.eye(length * size, dtype=self.lower.dtype)
        columns = jax.vmap(self.mv)(basis.reshape(length * size, length, size))
        return columns.reshape(length * size, length * size).T

    def transpose(self):
        return BlockBidiagonalLinearOperator(
            self.diagonal, self.lower, not self.transposed
        )

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.length, self.size), self.lower.dtype)

    def out_structure(self):
        return self.in_structure()


def recurrence_coefficients(
    operator: BlockBidiagonalLinearOperator, vector: Array
) -> tuple[Array, Array]:
    r"""The coefficients $(a_t, c_t)$ of the linear recurrence that solves
    `operator x = vector`: $x_t = a_t x_{t-1} + c_t$ (for a transposed operator,
    $x_t = a_t x_{t+1} + c_t$)."""
    lower, diagonal = operator.lower, operator.diagonal
    dense = lower.ndim == 3 or (diagonal is not None and diagonal.ndim == 3)
    if dense and lower.ndim == 2:
        lower = jax.vmap(jnp.diag)(lower)
    if dense and diagonal is not None and diagonal.ndim == 2:
        diagonal = jax.vmap(jnp.diag)(diagonal)
    if operator.transposed:
        lower = jnp.swapaxes(lower, -1, -2) if dense else lower
        diagonal = (
            jnp.swapaxes(diagonal, -1, -2)
            if dense and diagonal is not None
            else diagonal
        )
    zero = jnp.zeros((1,) + lower.shape[1:], lower.dtype)
    # Row t couples to t - 1 through L_t (forward) or to t + 1 through L_{t+1}^T.
    coupling = (
        jnp.concatenate([lower, zero])
        if operator.transposed
        else jnp.concatenate([zero, lower])
    )
    b = vector.astype(jnp.result_type(vector.dtype, lower.dtype))
    if diagonal is None:
        return -coupling, b
    if dense:
        solve = jax.vmap(jnp.linalg.solve)
        a = -solve(diagonal, coupling)
        c = solve(diagonal, b[..., None])[..., 0]
        return a, c
    return -coupling / diagonal, b / diagonal


_State: TypeAlias = BlockBidiagonalLinearOperator


class ParallelScan(lx.AbstractLinearSolver[_State]):
    r"""Solve a [`jaxdeq.BlockBidiagonalLinearOperator`][] by a parallel scan.

    The system $D_t x_t + L_t x_{t-1} = b_t$ is the linear recurrence
    $x_t = -D_t^{-1} L_t x_{t-1} + D_t^{-1} b_t$, which `jax.lax.associative_scan`
    evaluates in $O(\log T)$ depth with $O(T)$ combinations of blocks: $O(n^3)$
    each for dense blocks, $O(n)$ for diagonal ones. The transposed system is the
    same recurrence run backwards in time (a reverse scan), so this solver also
    serves reverse-mode differentiation through `lineax.linear_solve`.

    The result is `lineax.RESULTS.singular` if the solution is not finite (a
    singular diagonal block, or a recurrence whose products overflow: an unstable,
    e.g. chaotic, system over a long horizon).
    """

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        del options
        if not isinstance(operator, BlockBidiagonalLinearOperator):
            raise TypeError(
                "ParallelScan solves a jaxdeq.BlockBidiagonalLinearOperator; got "
                f"{type(operator).__name__}. Build the operator from its blocks, or "
                "use a general lineax solver (e.g. lineax.GMRES) for other operators."
            )
        return operator

    def compute(
        self, state: _State, vector: PyTree[Array], options: dict[str, Any]
    ) -> tuple[PyTree[Array], lx.RESULTS, dict[str, Any]]:
        del options
        a, c = recurrence_coefficients(state, jnp.asarray(vector))
        x = linear_recurrence(a, c, reverse=state.transposed)
        result = lx.RESULTS.where(
            jnp.all(jnp.isfinite(x)), lx.RESULTS.successful, lx.RESULTS.singular
        )
        return x, result, {}

    def transpose(self, state: _State, options: dict[str, Any]):
        return state.transpose(), options

    def conj(self, state: _State, options: dict[str, Any]):
        diagonal = None if state.diagonal is None else state.diagonal.conj()
        conj = BlockBidiagonalLinearOperator(
            diagonal, state.lower.conj(), state.transposed
        )
        return conj, options

    def assume_full_rank(self):
        return True


ParallelScan.__init__.__doc__ = """**Arguments:**

Nothing.
"""


_B = BlockBidiagonalLinearOperator


@lx.linearise.register(_B)
@lx.materialise.register(_B)
def _(operator):
    return operator


@lx.diagonal.register(_B)
def _(operator):
    if operator.diagonal is None:
        return jnp.ones(operator.length * operator.size, operator.lower.dtype)
    if operator.diagonal.ndim == 2:
        return operator.diagonal.reshape(-1)
    return jnp.diagonal(operator.diagonal, axis1=1, axis2=2).reshape(-1)


@lx.tridiagonal.register(_B)
def _(operator):
    return lx.tridiagonal(lx.MatrixLinearOperator(operator.as_matrix()))


@lx.is_lower_triangular.register(_B)
def _(operator):
    return (not operator.transposed) and (
        operator.diagonal is None or operator.diagonal.ndim == 2
    )


@lx.is_upper_triangular.register(_B)
def _(operator):
    return operator.transposed and (
        operator.diagonal is None or operator.diagonal.ndim == 2
    )


@lx.has_unit_diagonal.register(_B)
def _(operator):
    return operator.diagonal is None


@lx.is_symmetric.register(_B)
@lx.is_diagonal.register(_B)
@lx.is_tridiagonal.register(_B)
@lx.is_positive_semidefinite.register(_B)
@lx.is_negative_semidefinite.register(_B)
def _(operator):
    return False


@lx.conj.register(_B)
def _(operator):
    diagonal = None if operator.diagonal is None else operator.diagonal.conj()
    return BlockBidiagonalLinearOperator(
        diagonal, operator.lower.conj(), operator.transposed
    )
