import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from .._misc import check_positive_int


def causal_mask(length: int) -> Bool[np.ndarray, "length length"]:
    """A causal attention mask: position $i$ attends to positions $j \\le i$.

    **Arguments:**

    - `length`: the sequence length.

    **Returns:**

    A boolean NumPy array of shape `(length, length)`, `True` where attention is
    allowed.
    """
    check_positive_int("causal_mask", "length", length)
    return np.tril(np.ones((length, length), bool))


class AttentionBlock(eqx.Module):
    """A pre-LayerNorm Transformer block whose attention is restricted by a mask.

    $h \\mapsto h + \\mathrm{MHA}(\\mathrm{LN}(h))$, then
    $h \\mapsto h + \\mathrm{MLP}(\\mathrm{LN}(h))$ with a GELU MLP, on a sequence of
    shape `(length, dim)`. The mask (`True` where position $i$ may attend to $j$) is
    fixed at construction: a causal mask for language
    ([`jaxdeq.attractor.causal_mask`][]), each cell's peers for Sudoku
    ([`jaxdeq.data.sudoku_peers`][]). It is a boolean array, so optimisers and
    `equinox.is_inexact_array` filters skip it.
    """

    norm1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    mask: Bool[Array, "length length"] | None

    def __init__(
        self,
        dim: int,
        heads: int,
        mask: Bool[ArrayLike, "length length"] | None = None,
        *,
        mlp_ratio: int = 2,
        dtype: DTypeLike | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `dim`: the feature size; must be divisible by `heads`.
        - `heads`: the number of attention heads.
        - `mask`: a boolean `(length, length)` mask, or `None` for full attention.
        - `mlp_ratio`: the MLP's hidden size as a multiple of `dim`.
        - `dtype`: parameter dtype (default: JAX's default float).
        - `key`: a PRNG key.
        """
        check_positive_int("AttentionBlock", "dim", dim)
        check_positive_int("AttentionBlock", "heads", heads)
        check_positive_int("AttentionBlock", "mlp_ratio", mlp_ratio)
        if dim % heads:
            raise ValueError(
                f"AttentionBlock: `dim` ({dim}) must be divisible by `heads` ({heads})."
            )
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.dtype != bool or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
                raise ValueError(
                    "AttentionBlock: `mask` must be a square boolean array, got "
                    f"{mask.dtype} of shape {mask.shape}."
                )
            if not bool(jnp.all(jnp.any(mask, axis=1))):
                raise ValueError(
                    "AttentionBlock: every row of `mask` must allow at least one "
                    "position (a position attending to nothing has no output)."
                )
        k1, k2, k3 = jr.split(key, 3)
        self.norm1 = eqx.nn.LayerNorm(dim, dtype=dtype)
        self.attention = eqx.nn.MultiheadAttention(heads, dim, dtype=dtype, key=k1)
        self.norm2 = eqx.nn.LayerNorm(dim, dtype=dtype)
        self.hidden = eqx.nn.Linear(dim, mlp_ratio * dim, dtype=dtype, key=k2)
        self.out = eqx.nn.Linear(mlp_ratio * dim, dim, dtype=dtype, key=k3)
        self.mask = mask

    def __call__(self, h: Float[Array, "length dim"]) -> Float[Array, "length dim"]:
        """Apply the block to a sequence of shape `(length, dim)`."""
        if self.mask is not None and self.mask.shape[0] != h.shape[0]:
            raise ValueError(
                f"AttentionBlock: the sequence has length {h.shape[0]} but the mask "
                f"is for length {self.mask.shape[0]}."
            )
        a = jax.vmap(self.norm1)(h)
        h = h + self.attention(a, a, a, mask=self.mask)
        m = jax.vmap(self.norm2)(h)
        return h + jax.vmap(self.out)(jax.nn.gelu(jax.vmap(self.hidden)(m)))


class GatedRefiner(eqx.Module):
    r"""Weight-tied refinement blocks with small gated residual branches.

    $R(u) = h_k - u$ where $h_0 = u$ and
    $h_{i+1} = h_i + g_i \odot (B_i(h_i) - h_i)$: each block's residual branch
    $B_i(h) - h$ (attention and MLP, for an [`jaxdeq.attractor.AttentionBlock`][])
    is scaled by a learned per-channel gate $g_i$, initialised small so the map
    $F(y; c) = c + R(y + c)$ starts as a contraction and the fixed point is easy
    to find; training may open the gates.
    """

    blocks: tuple
    gates: Float[Array, "blocks dim"]

    def __init__(self, blocks, dim: int, *, gate_init: float = 0.1, dtype=None):
        """**Arguments:**

        - `blocks`: a sequence of residual blocks `block(h) -> h` (e.g.
            [`jaxdeq.attractor.AttentionBlock`][]).
        - `dim`: the channel size (the last axis of the state).
        - `gate_init`: the gates' initial value.
        - `dtype`: the gates' dtype (default: JAX's default float).
        """
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("GatedRefiner: `blocks` must contain at least one block.")
        check_positive_int("GatedRefiner", "dim", dim)
        self.blocks = blocks
        self.gates = jnp.full((len(blocks), dim), gate_init, dtype)

    def __call__(self, u: Float[Array, "... dim"]) -> Float[Array, "... dim"]:
        """$R(u)$: the sum of the gated residual branches."""
        h = u
        for block, gate in zip(self.blocks, self.gates):
            gate = jnp.reshape(gate, (1,) * (jnp.ndim(h) - 1) + (-1,))
            h = h + gate * (block(h) - h)
        return h - u


class TokenBackbone(eqx.Module):
    """A token-sequence backbone: embeddings plus positions, then attention blocks.

    Maps integer tokens of shape `(length,)` to proposals of shape
    `(length, dim)`; with `depth=0` it is the embedding alone.
    """

    embedding: eqx.nn.Embedding
    position: Float[Array, "length dim"]
    blocks: tuple

    def __init__(
        self,
        vocab: int,
        length: int,
        dim: int,
        depth: int,
        heads: int,
        mask: Bool[ArrayLike, "length length"] | None = None,
        *,
        dtype=None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `vocab`: the number of token values.
        - `length`: the sequence length.
        - `dim`: the feature size.
        - `depth`: the number of [`jaxdeq.attractor.AttentionBlock`][]s ($\\ge 0$).
        - `heads`: attention heads per block.
        - `mask`: the blocks' attention mask.
        - `dtype`: parameter dtype.
        - `key`: a PRNG key.
        """
        check_positive_int("TokenBackbone", "vocab", vocab)
        check_positive_int("TokenBackbone", "length", length)
        check_positive_int("TokenBackbone", "depth", depth, minimum=0)
        k1, k2, k3 = jr.split(key, 3)
        self.embedding = eqx.nn.Embedding(vocab, dim, dtype=dtype, key=k1)
        scale = 0.02
        self.position = scale * jr.normal(k2, (length, dim), dtype or float)
        keys = jr.split(k3, max(depth, 1))
        self.blocks = tuple(
            AttentionBlock(dim, heads, mask, dtype=dtype, key=k) for k in keys[:depth]
        )

    def __call__(self, tokens: Int[Array, " length"]) -> Float[Array, "length dim"]:
        """The proposal for one token sequence."""
        if tokens.shape != (self.position.shape[0],):
            raise ValueError(
                f"TokenBackbone: expected tokens of shape ({self.position.shape[0]},), "
                f"got {tokens.shape}."
            )
        h = jax.vmap(self.embedding)(tokens) + self.position
        for block in self.blocks:
            h = block(h)
        return h


class TokenDecoder(eqx.Module):
    """LayerNorm then a linear read-out per position: `(length, dim)` to
    `(length, classes)` logits."""

    norm: eqx.nn.LayerNorm
    linear: eqx.nn.Linear

    def __init__(self, dim: int, classes: int, *, dtype=None, key: PRNGKeyArray):
        """**Arguments:**

        - `dim`: the feature size.
        - `classes`: the number of output classes per position.
        - `dtype`: parameter dtype.
        - `key`: a PRNG key.
        """
        self.norm = eqx.nn.LayerNorm(dim, dtype=dtype)
        self.linear = eqx.nn.Linear(dim, classes, dtype=dtype, key=key)

    def __call__(self, y: Float[Array, "length dim"]) -> Float[Array, "length classes"]:
        """Logits per position."""
        return jax.vmap(lambda v: self.linear(self.norm(v)))(y)
