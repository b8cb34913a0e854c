from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from .._adjoint_splitting import SplittingAdjoint
from .._misc import check_margin, check_positive_int
from .._solution import BackwardStats, Report
from .._solver._monotone_problem import AbstractMonotoneLinear, MonotoneProblem
from .._solver.splitting import PeacemanRachford
from ._categorical import _as_groups, _blocks, GroupSoftmax
from ._dense import _wide, DenseMatrix
from ._solve import solve


def one_hot_groups(
    categories: Int[Array, " num_groups"], groups: Any
) -> Float[Array, " n"]:
    """Encode one category per group as the concatenated one-hot state vector.

    **Arguments:**

    - `categories`: one integer per group; a negative entry (unknown) encodes as
        zeros.
    - `groups`: the group layout, `((count, size), ...)` as for
        [`jaxdeq.monotone.GroupSoftmax`][].

    **Returns:**

    A float vector of length $n = \\sum$ count × size.
    """
    groups = _as_groups(groups)
    pieces, offset = [], 0
    categories = jnp.asarray(categories)
    for _, count, size in _blocks(groups):
        block = categories[offset : offset + count]
        pieces.append(jax.nn.one_hot(block, size).reshape(-1))
        offset += count
    if offset != categories.shape[-1]:
        raise ValueError(
            f"one_hot_groups: {categories.shape[-1]} categories for {offset} groups."
        )
    return jnp.concatenate(pieces)


class MonotoneDBM(eqx.Module):
    r"""A monotone deep Boltzmann machine: a pairwise model over categorical
    units whose mean-field inference has exactly one fixed point.

    Units come in groups, each group one categorical variable (a pixel's intensity
    bin, a hidden unit with several states, the class label), with the joint
    distribution $p(x) \propto \exp(\tfrac12 x^\top W x + b^\top x)$ over one-hot
    $x$. Any two groups may interact — within a "layer" as well as across layers —
    through the monotone parameterisation

    $$W = -s\,\big(A^\top A - \operatorname{blockdiag}(A^\top A)\big), \qquad
    s = \min\big(1, (1 - m) / \|\operatorname{blockdiag}(A^\top A)\|_2\big),$$

    symmetric, zero within each group, with $I - W \succeq m I$. Mean-field
    inference $q = \operatorname{softmax}_{\text{group}}(W q + b)$ is then the
    monotone fixed point $q = \operatorname{prox}_f(W q + b)$ with the
    [`jaxdeq.monotone.GroupSoftmax`][] prox — unique, and found by operator
    splitting where the naive parallel mean-field iteration may oscillate.
    Observed groups are clamped to their values (conditioning), which gives joint
    completion and classification from one model.

    Call it on one sample with the observed values and mask; `vmap` for a batch.

    ??? cite "References"

        ```bibtex
        @article{feng2023monotone,
            author = {Feng, Zhili and Winston, Ezra and Kolter, J. Zico},
            title = {Monotone Deep {B}oltzmann Machines},
            journal = {Transactions on Machine Learning Research},
            year = {2023},
        }
        ```
    """

    A: Float[Array, "rank n"]
    bias: Float[Array, " n"]
    groups: tuple[tuple[int, int], ...] = eqx.field(static=True)
    margin: float = eqx.field(static=True)
    solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder
    adjoint: optx.AbstractAdjoint
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)

    def __init__(
        self,
        groups: Any,
        *,
        rank: int | None = None,
        margin: float = 0.5,
        solver: optx.AbstractFixedPointSolver | optx.AbstractRootFinder = (
            PeacemanRachford(rtol=1e-4, atol=1e-6)
        ),
        adjoint: optx.AbstractAdjoint = SplittingAdjoint(),
        max_steps: int = 200,
        throw: bool = False,
        key: PRNGKeyArray,
        dtype=None,
    ):
        self.groups = _as_groups(groups)
        n = sum(count * size for count, size in self.groups)
        rank = n if rank is None else rank
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        self.A = jr.normal(key, (rank, n), dtype) / float(np.sqrt(n))
        self.bias = jnp.zeros((n,), dtype)
        self.margin = margin
        self.solver = solver
        self.adjoint = adjoint
        self.max_steps = max_steps
        self.throw = throw

    def __check_init__(self):
        check_margin("MonotoneDBM", self.margin)
        if not self.margin < 1:
            raise ValueError(
                f"MonotoneDBM: `margin` must be in (0, 1) (the couplings are scaled by "
                f"1 - margin), got {self.margin}."
            )
        check_positive_int("MonotoneDBM", "max_steps", self.max_steps)
        GroupSoftmax(self.groups)  # validates the layout
        if self.A.ndim != 2 or self.A.shape[1] != self.size:
            raise ValueError(
                f"MonotoneDBM: `A` must have shape (rank, {self.size}), got "
                f"{self.A.shape}."
            )

    @property
    def size(self) -> int:
        """The number of units $n$."""
        return GroupSoftmax(self.groups).size

    @property
    def num_groups(self) -> int:
        """The number of groups (categorical variables)."""
        return GroupSoftmax(self.groups).num_groups

    def coupling(self) -> Float[Array, "n n"]:
        """The coupling matrix $W$ (symmetric, zero within groups)."""
        gram = self.A.T @ self.A
        block_norm = jnp.zeros((), gram.dtype)
        for start, count, size in _blocks(self.groups):
            stop = start + count * size
            a = self.A[:, start:stop].reshape(self.A.shape[0], count, size)
            a = jnp.moveaxis(a, 1, 0)  # (count, rank, size)
            # The spectral norm is bookkeeping: at least float32 (no LAPACK bfloat16).
            spectral = jnp.linalg.norm(_wide(a), 2, (1, 2)).astype(gram.dtype)
            block_norm = jnp.maximum(block_norm, jnp.max(spectral))
        ids = GroupSoftmax(self.groups).group_ids
        mask = ids[:, None] == ids[None, :]
        s = jnp.minimum(1, (1 - self.margin) / jnp.maximum(block_norm**2, 1e-30))
        return -s * jnp.where(mask, 0, gram)

    def operator(self) -> AbstractMonotoneLinear:
        """$W$ as a monotone operator (margin $m$)."""
        return DenseMatrix(matrix=self.coupling(), margin=self.margin)

    def problem(
        self,
        values: Float[Array, " n"] | None = None,
        observed: Bool[Array, " num_groups"] | None = None,
    ) -> MonotoneProblem:
        """The mean-field fixed-point problem with the given groups clamped."""
        prox = GroupSoftmax(self.groups, observed, values)
        return MonotoneProblem(self.operator(), prox, self.bias)

    def __call__(
        self,
        values: Float[Array, " n"] | None = None,
        observed: Bool[Array, " num_groups"] | None = None,
        *,
        backward_stats: BackwardStats | None = None,
        key: Any = None,
    ) -> tuple[Float[Array, " n"], Report]:
        """Mean-field marginals of one sample, given the observed groups.

        **Arguments:**

        - `values`: the state with observed groups' one-hot values (see
            [`jaxdeq.monotone.one_hot_groups`][]); entries of unobserved groups are
            ignored. `None` for no observations.
        - `observed`: one boolean per group, `True` where clamped.
        - `backward_stats`: optional [`jaxdeq.BackwardStats`][] probe.
        - `key`: unused.

        **Returns:**

        `(q, report)`: the marginals (each group's part sums to one; observed
        groups equal their values) and the solve's [`jaxdeq.Report`][].
        """
        del key
        if (values is None) != (observed is None):
            raise ValueError(
                "MonotoneDBM: pass `values` and `observed` together, or neither."
            )
        problem = self.problem(values, observed)
        start = problem.prox(problem.bias, 1.0)
        sol = solve(
            problem,
            self.solver,
            start,
            max_steps=self.max_steps,
            adjoint=self.adjoint,
            throw=self.throw,
            backward_stats=backward_stats,
        )
        return sol.value, Report.from_solution(sol)

    def log_potential(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        r"""$\tfrac12 x^\top W x + b^\top x$ of a one-hot configuration $x$ (the
        negative energy; $p(x) \propto e^{\text{this}}$)."""
        return 0.5 * x @ (self.coupling() @ x) + self.bias @ x


MonotoneDBM.__init__.__doc__ = r"""**Arguments:**

- `groups`: the layout of the categorical variables, `((count, size), ...)`, e.g.
    `((64, 4), (32, 4), (1, 10))` for 64 pixels with 4 intensity bins, 32 hidden
    4-state variables and a 10-class label.
- `rank`: the number of rows of $A$ (default $n$).
- `margin`: $m \in (0, 1)$, the monotonicity margin.
- `solver`: the splitting (default `jaxdeq.PeacemanRachford(rtol=1e-4, atol=1e-6)`)
    or any fixed-point solver.
- `adjoint`: the backward mode (default [`jaxdeq.SplittingAdjoint`][]).
- `max_steps`: the step budget of mean-field inference.
- `throw`: whether a failed solve raises (default `False`, reported per sample).
- `key`: a JAX PRNG key for the initialisation of $A$ (the bias starts at zero).
- `dtype`: the parameters' dtype.
"""
