"""Collocation samplers: uniform, quasi-random (Sobol, Halton), residual-adaptive."""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree


def _check_box(lower, upper, num, log):
    lower = np.atleast_1d(np.asarray(lower, dtype=float))
    upper = np.atleast_1d(np.asarray(upper, dtype=float))
    if lower.shape != upper.shape or lower.ndim != 1:
        raise ValueError(
            f"lower {lower.shape} and upper {upper.shape} must be 1-D and of the "
            "same length (one entry per state dimension)."
        )
    if not np.all(np.isfinite(lower) & np.isfinite(upper)) or np.any(lower >= upper):
        raise ValueError(
            f"Need finite lower < upper in every dimension, got lower={lower}, "
            f"upper={upper}."
        )
    if int(num) < 1:
        raise ValueError(f"num={num} must be a positive number of points.")
    log = np.broadcast_to(np.asarray(log, dtype=bool), lower.shape).copy()
    if np.any(log & (lower <= 0)):
        raise ValueError(
            "Log spacing needs lower > 0 in the log-spaced dimensions; got "
            f"lower={lower} with log={log}."
        )
    return (
        tuple(float(v) for v in lower),
        tuple(float(v) for v in upper),
        tuple(bool(v) for v in log),
    )


def _from_unit(u, lower, upper, log):
    lower, upper, log = np.asarray(lower), np.asarray(upper), np.asarray(log)
    lin = lower + u * (upper - lower)
    logs = np.exp(
        np.log(np.where(log, lower, 1.0))
        + u * (np.log(np.where(log, upper, 1.0)) - np.log(np.where(log, lower, 1.0)))
    )
    return np.where(log, logs, lin)


class UniformSampler(eqx.Module):
    """`num` independent uniform points in the box `[lower, upper]`.

    `log=True` (or a per-dimension tuple) draws those coordinates log-uniformly,
    to put more points where a value function bends most, for example near a
    borrowing limit. Called as `sampler(key, params=None)`, so it can be passed
    to [`jaxdeq.pinn.fit`][] directly; it returns an array `(num, d)` in the
    default float dtype.
    """

    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    num: int = eqx.field(static=True)
    log: tuple[bool, ...] = eqx.field(static=True)

    def __init__(self, lower, upper, num: int, *, log: bool | tuple = False):
        self.lower, self.upper, self.log = _check_box(lower, upper, num, log)
        self.num = int(num)

    def __call__(self, key: PRNGKeyArray, params: PyTree = None) -> Float[Array, "n d"]:
        del params
        u = np.asarray(jr.uniform(key, (self.num, len(self.lower))))
        return jnp.asarray(_from_unit(u, self.lower, self.upper, self.log))


class QuasiRandomSampler(eqx.Module):
    """Low-discrepancy points in a box: scrambled Sobol or Halton sequences
    (`scipy.stats.qmc`), seeded from the PRNG key so that runs reproduce.

    They fill the box more evenly than independent uniform draws, which lowers
    the variance of the loss as an estimate of the mean squared residual. For
    Sobol, a power-of-two `num` keeps the balance properties. Arguments as for
    [`jaxdeq.pinn.UniformSampler`][], plus `kind` (`"sobol"` or `"halton"`).
    """

    lower: tuple[float, ...] = eqx.field(static=True)
    upper: tuple[float, ...] = eqx.field(static=True)
    num: int = eqx.field(static=True)
    log: tuple[bool, ...] = eqx.field(static=True)
    kind: str = eqx.field(static=True)

    def __init__(
        self,
        lower,
        upper,
        num: int,
        *,
        kind: Literal["sobol", "halton"] = "sobol",
        log: bool | tuple = False,
    ):
        if kind not in ("sobol", "halton"):
            raise ValueError(f"kind={kind!r}: use 'sobol' or 'halton'.")
        self.lower, self.upper, self.log = _check_box(lower, upper, num, log)
        self.num = int(num)
        self.kind = kind

    def __call__(self, key: PRNGKeyArray, params: PyTree = None) -> Float[Array, "n d"]:
        from scipy.stats import qmc

        del params
        seed = int(jr.randint(key, (), 0, np.iinfo(np.int32).max))
        d = len(self.lower)
        # `seed`, not `rng`: SciPy >= 1.15 still accepts it, and older ones need it.
        if self.kind == "sobol":
            engine = qmc.Sobol(d, scramble=True, seed=seed)  # pyright: ignore[reportCallIssue]
        else:
            engine = qmc.Halton(d, scramble=True, seed=seed)  # pyright: ignore[reportCallIssue]
        u = engine.random(self.num)
        return jnp.asarray(_from_unit(u, self.lower, self.upper, self.log))


class ResidualAdaptiveSampler(eqx.Module):
    r"""Residual-based adaptive sampling: points are drawn where the residual is
    large.

    From `candidates` points of a base sampler it keeps `num`, drawn without
    replacement with probability

    $$p(x) \propto \frac{|R(x)|^k}{\operatorname{mean}|R|^k} + c,$$

    the RAD rule of Wu et al. (2023): $k$ sharpens the focus on large residuals
    and $c > 0$ keeps a uniform share so no part of the domain is abandoned.

    **Arguments:**

    - `base`: a sampler `base(key, params) -> (n, d)` that draws the candidates
        (called with `num=candidates` points: build it with that many).
    - `residual`: `residual(params, points) -> (n,)`, the residuals at points.
    - `num`: points kept.
    - `k`, `c`: the exponent and the uniform share.

    ??? cite "References"

        ```bibtex
        @article{wu2023comprehensive,
            title={A comprehensive study of non-adaptive and residual-based
                adaptive sampling for physics-informed neural networks},
            author={Wu, Chenxi and Zhu, Min and Tan, Qinyang and Kartha, Yadhu
                and Lu, Lu},
            journal={Computer Methods in Applied Mechanics and Engineering},
            volume={403},
            pages={115671},
            year={2023}
        }
        ```
    """

    base: Callable
    residual: Callable = eqx.field(static=True)
    num: int = eqx.field(static=True)
    k: float = eqx.field(static=True, default=1.0)
    c: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        if self.num < 1:
            raise ValueError(f"num={self.num} must be a positive number of points.")
        if self.k < 0 or self.c < 0 or (self.k == 0 and self.c == 0):
            raise ValueError(
                f"k={self.k} and c={self.c} must be >= 0 and not both zero."
            )

    def __call__(self, key: PRNGKeyArray, params: PyTree = None) -> Float[Array, "n d"]:
        key_base, key_choice = jr.split(key)
        candidates = self.base(key_base, params)
        if candidates.shape[0] < self.num:
            raise ValueError(
                f"The base sampler drew {candidates.shape[0]} candidates but "
                f"num={self.num} points are to be kept; give the base sampler more."
            )
        r = jnp.abs(jnp.asarray(self.residual(params, candidates)))
        r = jnp.where(jnp.isfinite(r), r, jnp.max(jnp.where(jnp.isfinite(r), r, 0)))
        weight = r**self.k
        weight = weight / jnp.maximum(jnp.mean(weight), jnp.finfo(weight.dtype).tiny)
        prob = weight + self.c
        prob = prob / jnp.sum(prob)
        index = jr.choice(
            key_choice, candidates.shape[0], (self.num,), replace=False, p=prob
        )
        return jax.lax.stop_gradient(candidates[index])
