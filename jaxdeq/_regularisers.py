from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from equinox.internal import ω
from jaxtyping import Array, PRNGKeyArray, PyTree, Scalar

from ._misc import check_positive_int


def _normal_like(key, tree):
    leaves, treedef = jtu.tree_flatten(tree)
    keys = jr.split(key, len(leaves))
    return jtu.tree_unflatten(
        treedef,
        [jr.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)],
    )


def _sum_squares(tree) -> Scalar:
    return jnp.asarray(sum(jnp.sum(jnp.square(x)) for x in jtu.tree_leaves(tree)))


def jacobian_regulariser(
    fn: Callable[[PyTree, Any], PyTree],
    z: PyTree[Array],
    args: Any,
    key: PRNGKeyArray,
    num_samples: int = 1,
) -> Scalar:
    r"""Hutchinson estimate of $\|\partial f / \partial z\|_F^2$ at `z`.

    $\|J\|_F^2 = \mathbb{E}_\varepsilon \|\varepsilon^\top J\|^2$ for
    $\varepsilon \sim \mathcal{N}(0, I)$: one vector–Jacobian product per sample,
    differentiable with respect to the parameters in `fn` and `args` (add it to the
    loss, usually divided by the state dimension and scaled by a small weight).
    Unbiased; its variance falls as `1 / num_samples`.

    **Arguments:**

    - `fn`: the cell, `fn(z, args) -> z`.
    - `z`: where to evaluate, usually the (stop-gradient) fixed point.
    - `args`: passed to `fn`.
    - `key`: a PRNG key for the probe vectors.
    - `num_samples`: the number of probe vectors.

    **Returns:**

    A scalar estimate of $\|J\|_F^2$.

    ??? cite "References"

        ```bibtex
        @inproceedings{bai2021stabilizing,
            author = {Bai, Shaojie and Koltun, Vladlen and Kolter, J. Zico},
            title = {Stabilizing Equilibrium Models by Jacobian Regularization},
            booktitle = {International Conference on Machine Learning},
            year = {2021},
        }
        ```
    """
    check_positive_int("jacobian_regulariser", "num_samples", num_samples)
    _, vjp_fn = jax.vjp(lambda _z: fn(_z, args), z)

    def one(k):
        (row,) = vjp_fn(_normal_like(k, z))
        return _sum_squares(row)

    return jnp.mean(jax.vmap(one)(jr.split(key, num_samples)))


def spectral_radius(
    fn: Callable[[PyTree, Any], PyTree],
    z: PyTree[Array],
    args: Any,
    key: PRNGKeyArray,
    num_iters: int = 50,
) -> Scalar:
    r"""Power-iteration estimate of the spectral radius of $\partial f / \partial z$.

    Iterates $v \leftarrow Jv / \|Jv\|$ with Jacobian–vector products and returns the
    geometric mean of the growth factors $\|J v\|$ over the second half of the
    iterations, which tends to $\rho(J)$ also when the dominant eigenvalues are a
    complex pair. A monitor (evaluated under `stop_gradient`): a value near or above
    one warns that fixed-point solves will be slow or fail.

    **Arguments:**

    - `fn`: the cell, `fn(z, args) -> z`.
    - `z`: where to evaluate the Jacobian.
    - `args`: passed to `fn`.
    - `key`: a PRNG key for the start vector.
    - `num_iters`: power iterations (at least 2).

    **Returns:**

    A scalar estimate of $\rho(J)$.
    """
    check_positive_int("spectral_radius", "num_iters", num_iters, minimum=2)
    z = jax.lax.stop_gradient(z)
    args = jax.lax.stop_gradient(args)
    _, jvp_fn = jax.linearize(lambda _z: fn(_z, args), z)
    v = _normal_like(key, z)
    v = (v**ω / jnp.sqrt(_sum_squares(v))).ω

    def body(v, _):
        jv = jvp_fn(v)
        norm = jnp.sqrt(_sum_squares(jv))
        return (jv**ω / (norm + 1e-30)).ω, jnp.log(norm + 1e-30)

    _, logs = jax.lax.scan(body, v, None, length=num_iters)
    return jnp.exp(jnp.mean(logs[num_iters // 2 :]))


def fixed_point_correction(
    fn: Callable[[PyTree, Any], PyTree],
    iterates: PyTree[Array],
    args: Any,
    loss_fn: Callable[[PyTree], Scalar],
    gamma: float = 0.8,
) -> Scalar:
    r"""Fixed-point correction loss on intermediate iterates.

    For stored iterates $z_1, \dots, z_k$ (stacked along a leading axis, treated as
    constants) it applies one differentiable step $\hat z_i = f(z_i)$ and returns the
    weighted mean $\sum_i \gamma^{k-i} \ell(\hat z_i) / \sum_i \gamma^{k-i}$, so
    gradients reach the parameters from every stage of the solve, with later iterates
    weighted more. Iterates can come from a few stop-gradient Picard or solver steps.

    **Arguments:**

    - `fn`: the cell, `fn(z, args) -> z`.
    - `iterates`: a pytree whose leaves have a leading axis of length $k$.
    - `args`: passed to `fn`.
    - `loss_fn`: the task loss of a state, `loss_fn(z) -> scalar`.
    - `gamma`: the decay in $(0, 1]$.

    **Returns:**

    The scalar correction loss.

    ??? cite "References"

        ```bibtex
        @inproceedings{bai2022deep,
            author = {Bai, Shaojie and Geng, Zhengyang and Savani, Yash and Kolter,
                      J. Zico},
            title = {Deep Equilibrium Optical Flow Estimation},
            booktitle = {Conference on Computer Vision and Pattern Recognition},
            year = {2022},
        }
        ```
    """
    if not 0 < gamma <= 1:
        raise ValueError(
            f"fixed_point_correction: `gamma` must be in (0, 1], got {gamma}."
        )
    iterates = jax.lax.stop_gradient(iterates)
    k = jtu.tree_leaves(iterates)[0].shape[0]
    losses = jax.vmap(lambda z: loss_fn(fn(z, args)))(iterates)
    weights = gamma ** jnp.arange(k - 1, -1, -1, dtype=losses.dtype)
    return jnp.sum(weights * losses) / jnp.sum(weights)
