"""The adjoint recurrence of a sequence solve: implicit gradients of DEER, quasi-DEER
and ELK by a reverse parallel scan."""

import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PyTree

from ._adjoint import _Linear, _stats, _upcast, AbstractDEQAdjoint, follow_rtol
from ._bidiagonal import BlockBidiagonalLinearOperator, ParallelScan
from ._misc import check_tolerances
from ._solution import BackwardStats


# A direct solve has no tolerance of its own; its residual is rounding, amplified
# by the conditioning of the recurrence. This many machine epsilons is the least
# residual the default test asks for.
_ROUNDING = 1e3


class ScanAdjoint(AbstractDEQAdjoint):
    r"""Implicit differentiation of a trajectory solve through the adjoint
    recurrence, solved by a reverse parallel scan.

    For the stacked residual $F(H)_t = h_t - f(h_{t-1}, x_t; \theta)$ of a
    recurrence (see [`jaxdeq.DEER`][]), the implicit function theorem at the
    solution $H^*$ gives $\partial L / \partial \theta = -w^\top \partial F /
    \partial \theta$ with $(\partial F / \partial H)^\top w = \partial L /
    \partial H^*$. That transposed system is block upper bidiagonal: the adjoint
    recurrence $w_t = J_{t+1}^\top w_{t+1} + \partial L / \partial h_t$ that
    backpropagation through the sequential loop computes step by step, here
    evaluated by a reverse associative scan ([`jaxdeq.ParallelScan`][] on the
    transposed [`jaxdeq.BlockBidiagonalLinearOperator`][]) in $O(\log T)$ depth.
    So the gradient equals backpropagation through `jax.lax.scan`, to rounding.
    Forward mode (`jax.jvp`) runs the same recurrence forwards in time.

    The dense blocks $J_t$ at $H^*$ are read from $n$ vector–Jacobian products
    (all time steps at once), whatever the forward solver used: quasi-DEER's
    diagonal approximation would give a wrong gradient. This costs $O(T n^2)$
    memory and $O(T n^3)$ work.

    As for every jaxdeq adjoint, the relative residual of the adjoint system at the
    returned $w$ is measured (one more vector–Jacobian product) and reported
    through a [`jaxdeq.BackwardStats`][] probe; a residual above `rtol` or a
    non-finite one (an unstable recurrence whose adjoint overflows) is a failed
    backward solve, raised when `throw=True`.

    ??? cite "References"

        ```bibtex
        @inproceedings{lim2024parallelizing,
            author = {Lim, Yi Heng and Zhu, Qi and Selfridge, Joshua and
                      Kasim, Muhammad Firmansyah},
            title = {Parallelizing non-linear sequential models over the sequence
                     length},
            booktitle = {International Conference on Learning Representations},
            year = {2024},
        }
        ```
    """

    rtol: float | None = None
    throw: bool = True

    def __check_init__(self):
        if self.rtol is not None:
            check_tolerances("ScanAdjoint", self.rtol, 0.0)

    def _solve(
        self, lin: _Linear, v: PyTree[Array], inputs: tuple
    ) -> tuple[PyTree[Array], BackwardStats]:
        if not isinstance(v, jax.Array) or jnp.ndim(v) < 1:
            raise ValueError(
                "ScanAdjoint differentiates a solve over one trajectory array of "
                "shape (T, ...); got a state of structure "
                f"{jax.tree_util.tree_structure(v)}."
            )
        shape = v.shape
        length = shape[0]
        size = v.size // max(length, 1)
        v2d = _upcast(v).reshape(length, size)
        dtype = v2d.dtype
        eye = jnp.eye(size, dtype=dtype)

        def probe(s):
            unit = jnp.broadcast_to(eye[s], (length, size))
            out = lin.r(unit.reshape(shape)).reshape(length, size)
            return unit - out

        # Row t of column s of the transposed product: J_{t+1}[s, :]; of the
        # product itself: J_t[:, s].
        columns = jax.vmap(probe)(jnp.arange(size))
        if lin.transpose:
            jac = jnp.transpose(columns, (1, 0, 2))[:-1]
        else:
            jac = jnp.transpose(columns, (1, 2, 0))[1:]
        operator = BlockBidiagonalLinearOperator(None, -jac, lin.transpose)
        # -(dF/dH)^(T) w = v.
        sol = lx.linear_solve(operator, -v2d, ParallelScan(), throw=False)
        w = sol.value.reshape(shape)
        residual = lin.residual(w, _upcast(v))
        if self.rtol is None:
            eps = float(jnp.finfo(lin.root.dtype).eps)
            rtol = max(follow_rtol(inputs[1], lin.root), _ROUNDING * eps)
        else:
            rtol = self.rtol
        success = jnp.isfinite(residual) & (residual <= rtol)
        return w, _stats(1, residual, success)


ScanAdjoint.__init__.__doc__ = r"""**Arguments:**

- `rtol`: the largest relative residual
    $\|(\partial F / \partial H)^\top w + v\| / \|v\|$ of the adjoint system that
    counts as success. `None` (default): the forward solver's `rtol` (its `atol`
    when `rtol` is zero), but at least a thousand machine epsilons of the state's
    dtype, the rounding of a direct solve.
- `throw`: raise if the backward solve fails or the forward solve it
    differentiates failed. [`jaxdeq.solve_recurrence`][] sets it from its own
    `throw`.
"""
