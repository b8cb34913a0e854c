"""The group softmax: the activation of a monotone deep Boltzmann machine."""

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Scalar

from .._solver._monotone_problem import AbstractProx


# Fixed iteration counts (no data-dependent loops, so jit/vmap stay cheap), each with
# margin for |v| <= 50 and alpha in [0.05, 10] (measured in float64 over groups of
# 2 to 1000 units):
# - Halley steps for the Wright omega function: cubic convergence from a start
#   within 8%, two steps reach float64 precision (then one Newton step on log p);
# - Newton steps on log p for alpha >= 1: monotone from the left of the root, four
#   reach float64 precision up to alpha = 1000;
# - Newton steps on each group's normaliser: 7 suffice for groups of up to 10
#   units, 8 up to 50, 10 up to 1000 (alpha = 100 needs one or two more).
_OMEGA_STEPS = 2
_LOG_NEWTON_STEPS = 5
_NORMALISER_STEPS = 10


def _as_groups(groups: Any) -> Any:
    """Normalise a sequence of `(count, size)` pairs to a tuple of int tuples;
    anything else is returned unchanged for `__check_init__` to reject."""
    try:
        return tuple(
            (operator.index(count), operator.index(size)) for count, size in groups
        )
    except (TypeError, ValueError):
        return groups


# Also used by `_dbm.py`.
@functools.cache
def _blocks(groups: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int, int], ...]:
    """`(start, count, size)` per run of consecutive groups of one size."""
    merged: list[list[int]] = []
    for count, size in groups:
        if merged and merged[-1][2] == size:
            merged[-1][1] += count
        else:
            merged.append([0, count, size])
    start = 0
    for block in merged:
        block[0] = start
        start += block[1] * block[2]
    return tuple((start, count, size) for start, count, size in merged)


class _Partition:
    """The static layout of the groups: per-group reductions of a state vector and
    their broadcast back to the units. Reshapes when every group has one size, and
    uses sorted segment operations otherwise; either way one code path (and one
    compilation) for every layout."""

    def __init__(self, groups: tuple[tuple[int, int], ...]):
        sizes = np.array([size for count, size in groups for _ in range(count)])
        self.num_groups = len(sizes)
        self.sizes = sizes
        self.ids = np.repeat(np.arange(self.num_groups), sizes)
        self.ids.setflags(write=False)
        self.uniform = int(sizes[0]) if np.all(sizes == sizes[0]) else None

    def sum(self, x: Float[Array, " n"]) -> Float[Array, " groups"]:
        if self.uniform is not None:
            return jnp.sum(x.reshape(self.num_groups, self.uniform), axis=-1)
        return jax.ops.segment_sum(
            x, self.ids, self.num_groups, indices_are_sorted=True
        )

    def max(self, x: Float[Array, " n"]) -> Float[Array, " groups"]:
        if self.uniform is not None:
            return jnp.max(x.reshape(self.num_groups, self.uniform), axis=-1)
        return jax.ops.segment_max(
            x, self.ids, self.num_groups, indices_are_sorted=True
        )

    def expand(self, g: Array) -> Array:
        """Per-group values to per-unit values."""
        if self.uniform is not None:
            shape = (self.num_groups, self.uniform)
            return jnp.broadcast_to(g[:, None], shape).reshape(-1)
        return g[self.ids]


@functools.cache
def _partition(groups: tuple[tuple[int, int], ...]) -> _Partition:
    # Cached, so one layout is one object: a hashable static argument.
    return _Partition(groups)


def _work_dtype(dtype: Any) -> Any:
    """At least float32: the iterations below are not meant for 16-bit floats."""
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else jnp.dtype(dtype)


def _wright_omega(s: Array) -> Array:
    r"""$\omega(s) = W(e^s)$, the solution of $\omega + \log \omega = s$, for real
    $s$, without forming $e^s$ for large $s$."""
    # Starts within 8% everywhere: e^s - e^2s + 3/2 e^3s below -2, the Taylor series
    # at s = 1 (where omega = 1) on [-2, 1], s - log s + log s / s above 1.
    e = jnp.exp(jnp.minimum(s, -2.0))
    low = e * (1 - e * (1 - 1.5 * e))
    z = jnp.clip(s, -2.0, 1.0) - 1
    mid = 1 + z * (
        1 / 2 + z * (1 / 16 + z * (-1 / 192 + z * (-1 / 3072 + z * 13 / 61440)))
    )
    big = jnp.maximum(s, 1.0)
    log_big = jnp.log(big)
    high = big - log_big + log_big / big
    w = jnp.where(s < -2, low, jnp.where(s < 1, mid, high))
    # Where e^s is below the smallest normal number, omega = e^s to working precision
    # (and log w would be -inf).
    exact = s < math.log(jnp.finfo(s.dtype).tiny) + 1
    safe_w = jnp.where(exact, 1.0, w)
    safe_s = jnp.where(exact, 0.0, s)
    for _ in range(_OMEGA_STEPS):
        r = safe_s - safe_w - jnp.log(safe_w)
        safe_w = safe_w + 2 * r * safe_w * (1 + safe_w) / (2 * (1 + safe_w) ** 2 - r)
    return jnp.where(exact, jnp.exp(s), safe_w)


def _log_prob_below(t: Array, alpha: Scalar) -> Array:
    r"""$x = \log p$ solving $(1 - \alpha) e^x + \alpha x = t$ for $\alpha < 1$.

    $p = c\, W(e^{t / \alpha} / c)$ with $c = \alpha / (1 - \alpha)$, so
    $\log p = t / \alpha - \omega(t / \alpha - \log c)$.
    """
    # The guard keeps the unused branch finite when a batched alpha turns the
    # `lax.cond` in `_solve` into a select.
    alpha = jnp.where(alpha < 1, alpha, 0.5)
    x = t / alpha - _wright_omega(t / alpha + jnp.log1p(-alpha) - jnp.log(alpha))
    # The difference above loses about log2(t / alpha) bits; one Newton step on the
    # equation itself restores them.
    ex = jnp.exp(x)
    return x + (t - (1 - alpha) * ex - alpha * x) / ((1 - alpha) * ex + alpha)


def _log_prob_above(t: Array, alpha: Scalar) -> Array:
    r"""$x = \log p$ solving $(1 - \alpha) e^x + \alpha x = t$ for $\alpha \ge 1$
    and $t \le 1 - \alpha$ (so that $p \le 1$)."""
    alpha = jnp.where(alpha >= 1, alpha, 2.0)
    # phi(x) = (1 - alpha) e^x + alpha x is concave and increasing with phi' >= 1 on
    # x <= 0, so Newton from a start left of the root climbs to it monotonically.
    # Two such starts: the root t / alpha of the linear part, and the root of phi's
    # quadratic Taylor model at x = 0 (which lies above phi); the larger is better.
    gap = jnp.minimum(t - (1 - alpha), 0)
    step = 2 * gap / (1 + jnp.sqrt(1 - 2 * alpha * gap))
    has_root = step > -1
    x_quadratic = jnp.log1p(jnp.where(has_root, step, 0.0))
    x = jnp.where(has_root, jnp.maximum(t / alpha, x_quadratic), t / alpha)
    for _ in range(_LOG_NEWTON_STEPS):
        ex = jnp.exp(x)
        x = x + (t - (1 - alpha) * ex - alpha * x) / ((1 - alpha) * ex + alpha)
    return x


def _normalise(
    partition: _Partition,
    log_prob: Callable[[Array, Scalar], Array],
    w: Float[Array, " n"],
    alpha: Scalar,
) -> tuple[Array, Array]:
    # The normaliser nu of each group, shifted by the group's max v: mu. With
    # t = w - alpha - mu, F(mu) = sum p - 1 is convex and decreasing. At mu = -1 the
    # largest p is 1 (F >= 0); at `hi` every p is at most 1 / size (F <= 0). From any
    # start a Newton step lands left of the root (the tangent lies below a convex F),
    # and from there Newton climbs to it monotonically; clipping to the bracket only
    # guards against rounding.
    sizes = jnp.asarray(partition.sizes, w.dtype)
    lo = -jnp.ones_like(sizes)
    hi = -alpha - (1 - alpha) / sizes + alpha * jnp.log(sizes)

    def mass(mu):
        x = log_prob(w - alpha - partition.expand(mu), alpha)
        p = jnp.exp(x)
        return x, p, p / ((1 - alpha) * p + alpha)

    def newton(_, carry):
        mu, _, _ = carry
        x, p, d = mass(mu)
        mu = jnp.clip(mu + (partition.sum(p) - 1) / partition.sum(d), lo, hi)
        return mu, x, p

    # Start from the exact normaliser for alpha = 1 (w <= 0 with max 0: no
    # overflow). The loop returns p at its last iterate but one: one copy of the
    # solve in the compiled program instead of two.
    mu = jnp.clip(jnp.log(partition.sum(jnp.exp(w))) - 1, lo, hi)
    init = (mu, jnp.zeros_like(w), jnp.zeros_like(w))
    _, x, p = jax.lax.fori_loop(0, _NORMALISER_STEPS + 1, newton, init)
    total = partition.expand(partition.sum(p))
    return p / total, x - jnp.log(total)


def _solve(
    partition: _Partition, v: Float[Array, " n"], alpha: Scalar
) -> tuple[Array, Array]:
    """`(p, log p)`."""
    w = v - partition.expand(partition.max(v))
    return jax.lax.cond(
        alpha < 1,
        functools.partial(_normalise, partition, _log_prob_below),
        functools.partial(_normalise, partition, _log_prob_above),
        w,
        alpha,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _prox(partition: _Partition, v: Float[Array, " n"], alpha: Scalar) -> Array:
    return _solve(partition, v, alpha)[0]


@_prox.defjvp
def _prox_jvp(partition, primals, tangents):
    v, alpha = primals
    dv, dalpha = tangents
    p, x = _solve(partition, v, alpha)
    # Implicit differentiation of (1 - alpha) p + alpha log p = v - alpha - nu with
    # sum p = 1 fixed: dp = d * (e - dnu), e = dv - (1 + log p - p) dalpha.
    d = p / ((1 - alpha) * p + alpha)
    de = d * (dv - (1 + x - p) * dalpha)
    dnu = partition.sum(de) / partition.sum(d)
    return p, de - d * partition.expand(dnu)


def _softmax(partition: _Partition, v: Float[Array, " n"]) -> Array:
    if partition.uniform is not None:
        shape = (partition.num_groups, partition.uniform)
        return jax.nn.softmax(v.reshape(shape), axis=-1).reshape(-1)
    shift = jax.lax.stop_gradient(partition.expand(partition.max(v)))
    e = jnp.exp(v - shift)
    return e / partition.expand(partition.sum(e))


class GroupSoftmax(AbstractProx):
    r"""The group softmax of a monotone deep Boltzmann machine: the proximal operator
    of

    $$f(p) = \sum_k p_k \log p_k - \tfrac12 \|p\|^2$$

    restricted to the probability simplex of each group of units.

    The state is a vector of $n$ units, split into consecutive groups; each group is
    one categorical variable (its units are the one-hot indicators, its part of the
    state the probabilities). $f$ is convex on each simplex, and for a step
    $\alpha > 0$ the prox solves, in each group,

    $$(1 - \alpha)\, p_k + \alpha \log p_k = v_k - \alpha - \nu, \qquad
    \textstyle\sum_k p_k = 1,$$

    with $\nu$ the group's normaliser. For $\alpha = 1$ this is the softmax of the
    group, so the fixed point of $z = \operatorname{prox}_f(W z + b)$ is the
    mean-field solution of the pairwise model. For $\alpha < 1$ each $p_k$ has a
    closed form through the Lambert W function,
    $p_k = \tfrac{\alpha}{1 - \alpha} W\big(\tfrac{1 - \alpha}{\alpha} e^{t_k /
    \alpha}\big)$ with $t_k = v_k - \alpha - \nu$ (evaluated in log space, so
    nothing overflows); for $\alpha > 1$ it is found by Newton's method on
    $\log p_k$. The normaliser comes from a bracketed Newton iteration per group.
    All iteration counts are fixed, so the prox is cheap under `jit` and `vmap`;
    for $|v| \le 50$ and $\alpha \in [0.05, 10]$ the KKT residual is at rounding
    level in float64 and float32.

    The derivative is implicit (not unrolled): with
    $d_k = p_k / ((1 - \alpha) p_k + \alpha)$ the Jacobian of a group is
    $\operatorname{diag}(d) - d d^\top / \sum_k d_k$.

    Observed (clamped) groups always return their given one-hot values: the prox of
    the indicator of that point, for every $v$ and $\alpha$ (so the splitting solvers
    keep their convergence guarantees), with zero derivative.

    Acts on one state vector (no batch axis); `vmap` for a batch. Computes in the
    dtype of $v$, or float32 for 16-bit inputs.

    **Arguments:**

    - `groups`: the layout, as consecutive blocks of equal-size groups given by
        `(count, size)` pairs: `((64, 4), (32, 4), (1, 10))` is 64 groups of 4 units,
        then 32 more groups of 4, then one group of 10 ($n = 394$ units, 97 groups).
        Every size is at least 2.
    - `observed`: optional boolean mask of shape `(num_groups,)`, the groups clamped
        to `values`.
    - `values`: the clamped state, shape $(n,)$: one-hot in each observed group,
        ignored elsewhere. Given exactly when `observed` is.

    **Raises:**

    `TypeError` if `groups` is not a sequence of integer pairs; `ValueError` if a
    count is below 1 or a size below 2, or if `observed` and `values` do not come
    together with the shapes and dtypes above.

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

    groups: tuple[tuple[int, int], ...] = eqx.field(static=True, converter=_as_groups)
    observed: Bool[Array, " num_groups"] | None = None
    values: Float[Array, " n"] | None = None

    def __check_init__(self):
        ok = isinstance(self.groups, tuple) and len(self.groups) > 0
        ok = ok and all(
            isinstance(g, tuple)
            and len(g) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in g)
            for g in self.groups
        )
        if not ok:
            raise TypeError(
                f"GroupSoftmax: `groups` must be a non-empty sequence of "
                f"`(count, size)` pairs of ints, e.g. `((64, 4), (1, 10))` for 64 "
                f"groups of 4 units then one group of 10; got {self.groups!r}."
            )
        for count, size in self.groups:
            if count < 1 or size < 2:
                raise ValueError(
                    f"GroupSoftmax: each `(count, size)` in `groups` needs count >= 1 "
                    f"and size >= 2 (a categorical variable has at least two "
                    f"states); got {(count, size)}. Drop empty blocks and give a "
                    f"binary variable two units."
                )
        if (self.observed is None) != (self.values is None):
            raise ValueError(
                "GroupSoftmax: pass `observed` and `values` together (the mask of "
                "clamped groups and the one-hot values they are clamped to), or "
                "neither."
            )
        if self.observed is not None:
            if jnp.shape(self.observed) != (self.num_groups,) or (
                jnp.result_type(self.observed) != jnp.bool_
            ):
                raise ValueError(
                    f"GroupSoftmax: `observed` must be a boolean array of shape "
                    f"({self.num_groups},), one flag per group; got dtype "
                    f"{jnp.result_type(self.observed)} and shape "
                    f"{jnp.shape(self.observed)}."
                )
            # `values` may be None here: its shape () is rejected with the rest.
            if jnp.shape(self.values) != (self.size,) or not jnp.issubdtype(  # pyright: ignore[reportArgumentType]
                jnp.result_type(self.values), jnp.floating
            ):
                raise ValueError(
                    f"GroupSoftmax: `values` must be a floating array of shape "
                    f"({self.size},), the whole state with one-hot entries in the "
                    f"observed groups (anything elsewhere); got dtype "
                    f"{jnp.result_type(self.values)} and shape "
                    f"{jnp.shape(self.values)}."  # pyright: ignore[reportArgumentType]
                )

    @property
    def size(self) -> int:
        """The number $n$ of units."""
        return sum(count * size for count, size in self.groups)

    @property
    def num_groups(self) -> int:
        """The number of groups (categorical variables)."""
        return sum(count for count, _ in self.groups)

    @property
    def group_ids(self) -> np.ndarray:
        """The group of each unit: a read-only integer NumPy array of length $n$."""
        return _partition(self.groups).ids

    def _check_state(self, v: Any) -> None:
        if jnp.shape(v) != (self.size,) or not jnp.issubdtype(
            jnp.result_type(v), jnp.floating
        ):
            raise ValueError(
                f"GroupSoftmax: expected a floating state of shape ({self.size},) "
                f"(one sample; vmap over a batch); got dtype {jnp.result_type(v)} "
                f"and shape {jnp.shape(v)}."
            )

    def _clamp(self, out: Array) -> Array:
        if self.observed is None:
            return out
        mask = _partition(self.groups).expand(jnp.asarray(self.observed))
        return jnp.where(mask, jnp.asarray(self.values).astype(out.dtype), out)

    def __call__(
        self, v: Float[Array, " n"], alpha: float | Scalar
    ) -> Float[Array, " n"]:
        r"""$\operatorname{prox}_{\alpha f}(v)$.

        **Arguments:**

        - `v`: the state, shape $(n,)$.
        - `alpha`: the step $\alpha > 0$, a Python float or a scalar array. The
            Python float `1.0` takes an exact softmax path.

        **Returns:**

        The probabilities, shape $(n,)$, in the dtype of `v`.

        **Raises:**

        `ValueError` if `v` has the wrong shape or dtype, if `alpha` is not a
        scalar, or if a Python `alpha` is not positive.
        """
        self._check_state(v)
        dtype = jnp.result_type(v)
        work = _work_dtype(dtype)
        v = jnp.asarray(v).astype(work)
        exact_softmax = False
        if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            if not alpha > 0:
                raise ValueError(
                    f"GroupSoftmax: the step `alpha` must be positive; got {alpha}."
                )
            exact_softmax = alpha == 1
        elif jnp.ndim(alpha) != 0:
            raise ValueError(
                f"GroupSoftmax: the step `alpha` must be a scalar; got shape "
                f"{jnp.shape(alpha)}. vmap over a batch of steps."
            )
        partition = _partition(self.groups)
        if exact_softmax:
            out = _softmax(partition, v)
        else:
            out = _prox(partition, v, jnp.asarray(alpha).astype(work))
        return self._clamp(out).astype(dtype)

    def linearise(self, v: Float[Array, " n"]) -> AbstractProx:
        r"""The linearisation at $v$ of the group softmax $\operatorname{prox}_f$.

        Per group, $J = \operatorname{diag}(s) - s s^\top$ with $s$ the softmax of
        the group's part of $v$ ($J = 0$ for an observed group); the returned prox
        maps $x \mapsto J (\alpha I + (1 - \alpha) J)^{-1} x$, in closed form per
        group.

        **Arguments:**

        - `v`: the state at which to linearise, shape $(n,)$.

        **Returns:**

        A linear [`jaxdeq.monotone.AbstractProx`][] acting on states of shape
        $(n,)$.

        **Raises:**

        `ValueError` if `v` has the wrong shape or dtype.
        """
        self._check_state(v)
        partition = _partition(self.groups)
        v = jnp.asarray(v)
        s = _softmax(partition, v.astype(_work_dtype(v.dtype)))
        if self.observed is not None:
            s = jnp.where(partition.expand(jnp.asarray(self.observed)), 0, s)
        return _LinearisedGroupSoftmax(self.groups, s)


class _LinearisedGroupSoftmax(AbstractProx):
    """x -> J (alpha I + (1 - alpha) J)^{-1} x per group, J = diag(s) - s s^T (s = 0
    in clamped groups)."""

    groups: tuple[tuple[int, int], ...] = eqx.field(static=True)
    probs: Float[Array, " n"]

    def __call__(self, v, alpha):
        dtype = jnp.result_type(v)
        work = _work_dtype(dtype)
        x = jnp.asarray(v).astype(work)
        s = self.probs.astype(work)
        alpha = jnp.asarray(alpha).astype(work)
        part = _partition(self.groups)
        # J commutes with M = alpha I + (1 - alpha) J = diag(a) - (1 - alpha) s s^T,
        # so J M^{-1} x = M^{-1} (J x), by Sherman-Morrison. Its denominator
        # 1 - (1 - alpha) sum(s^2 / a) equals alpha sum(s / a) when sum s = 1: no
        # cancellation for small alpha.
        g = s * (x - part.expand(part.sum(s * x)))
        a = alpha + (1 - alpha) * s
        q = s / a
        denom = alpha * part.sum(q)
        scale = part.sum(q * g) / jnp.where(denom > 0, denom, 1)
        return (g / a + (1 - alpha) * q * part.expand(scale)).astype(dtype)

    def linearise(self, v):
        del v
        return self
