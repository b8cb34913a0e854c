"""Convolutional monotone operators, applied and inverted in the Fourier domain.

A circular convolution is diagonalised by the 2-d discrete Fourier transform: on the
spectrum it is one small `(out_channels, in_channels)` complex matrix per frequency.
So $W = (1 - m) I - A^\top A + B - B^\top$ is one $C \times C$ matrix per frequency
and its resolvent is one small inverse per frequency. A stride-2 convolution maps the
four frequencies of the fine grid that alias to one frequency of the coarse grid to
that frequency, so a multi-tier operator is block diagonal over groups of aliased
frequencies and its resolvent follows by block elimination across tiers.

Conventions: a "spectrum" is laid out as `(height, width, channels)` (channels last,
so that per-frequency matrices act with one `einsum`), and a "transfer" as
`(height, width, out_channels, in_channels)`.
"""

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Complex, Float, PRNGKeyArray, Scalar

from .._misc import check_margin
from .._solver._monotone_problem import AbstractMonotoneLinear, AbstractResolvent


# ----------------------------------------------------------------------------------
# Validation


def _check_positive_int(cls: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{cls}: `{name}` must be a positive int, got {value!r}.")


def _check_kernel_size(cls: str, kernel_size, height: int, width: int) -> None:
    _check_positive_int(cls, "kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"{cls}: `kernel_size` must be odd (the kernel is centred on a pixel), "
            f"got {kernel_size}. Use e.g. `kernel_size={kernel_size + 1}`."
        )
    if kernel_size > min(height, width):
        raise ValueError(
            f"{cls}: a {kernel_size}x{kernel_size} kernel does not fit the "
            f"{height}x{width} image (its coarsest tier for a multi-tier operator). "
            "Use a smaller `kernel_size` or a larger image."
        )


def _check_floating(cls: str, name: str, kernel) -> None:
    if not isinstance(kernel, jax.Array) or not jnp.issubdtype(
        kernel.dtype, jnp.floating
    ):
        raise TypeError(
            f"{cls}: `{name}` must be a real floating JAX array, got "
            f"{getattr(kernel, 'dtype', type(kernel).__name__)}."
        )


def _check_kernel(cls: str, name: str, kernel, shape: tuple[int, ...]) -> None:
    _check_floating(cls, name, kernel)
    if kernel.shape != shape:
        raise ValueError(
            f"{cls}: `{name}` has shape {kernel.shape}, expected {shape} "
            "(out_channels, in_channels, kernel_size, kernel_size)."
        )


def _check_conv_config(margin, channels, hidden_channels, height, width, k) -> None:
    cls = "MonotoneConv"
    check_margin(cls, margin)
    _check_positive_int(cls, "channels", channels)
    _check_positive_int(cls, "hidden_channels", hidden_channels)
    _check_positive_int(cls, "height", height)
    _check_positive_int(cls, "width", width)
    _check_kernel_size(cls, k, height, width)


def _check_multi_config(margin, channels, height, width, k) -> None:
    cls = "MonotoneMultiConv"
    check_margin(cls, margin)
    if not isinstance(channels, tuple) or len(channels) == 0:
        raise ValueError(
            f"{cls}: `channels` must be a tuple with one entry per tier, got "
            f"{channels!r}."
        )
    for c in channels:
        _check_positive_int(cls, "channels[i]", c)
    _check_positive_int(cls, "height", height)
    _check_positive_int(cls, "width", width)
    num = len(channels)
    factor = 2 ** (num - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"{cls}: with {num} tiers the image is halved {num - 1} times, so "
            f"`height` and `width` must be divisible by {factor}; got "
            f"{height}x{width}. Crop or pad the image, or use fewer tiers."
        )
    _check_kernel_size(cls, k, height // factor, width // factor)


def _check_scale(cls: str, name: str, scale, dtype) -> None:
    if not isinstance(scale, jax.Array) or scale.shape != () or scale.dtype != dtype:
        raise TypeError(
            f"{cls}: `{name}` must be a scalar array of the kernels' dtype {dtype}, "
            f"got {scale!r}."
        )


def _check_alpha(alpha) -> None:
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if not alpha > 0:
            raise ValueError(
                f"resolvent: the step size `alpha` must be positive, got {alpha}."
            )


# ----------------------------------------------------------------------------------
# Fourier-domain helpers


def _default_dtype():
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _complex_dtype(dtype) -> jnp.dtype:
    # Written out because `jnp.result_type` refuses float -> complex under strict
    # dtype promotion.
    return jnp.dtype("complex128" if jnp.finfo(dtype).bits == 64 else "complex64")


# Initialisation is one compiled program per configuration drawing one flat vector:
# run eagerly, or with one draw per kernel, it compiles a random-number generator
# per kernel shape, which takes seconds on a CPU.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _init_kernels(key, shapes: tuple[tuple[int, ...], ...], dtype) -> tuple[Array, ...]:
    """The usual convolution initialisation: uniform with bound 1 / sqrt(fan_in)."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = jr.uniform(key, (sum(sizes),), dtype, minval=-1, maxval=1)
    out = []
    start = 0
    for shape, size in zip(shapes, sizes):
        lim = 1 / math.sqrt(shape[1] * shape[2] * shape[3])
        out.append(lim * flat[start : start + size].reshape(shape))
        start += size
    return tuple(out)


def _frobenius(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(x)))


_frobenius_norms = jax.jit(lambda kernels: tuple(_frobenius(x) for x in kernels))


def _normalised(kernel: Array, scale: Array) -> Array:
    return scale * kernel / _frobenius(kernel)


def _phases(n: int, k: int, num: int) -> np.ndarray:
    """`exp(2 pi i a (p - r) / n)` for frequencies `a < num` and taps `p < k`."""
    return np.exp(2j * np.pi * np.outer(np.arange(num), np.arange(k) - k // 2) / n)


def _transfer(kernel: Array, height: int, width: int, *, real: bool) -> Array:
    """The per-frequency matrices of the circular cross-correlation
    `y[o, i, j] = sum_{c, p, q} kernel[o, c, p, q] x[c, i + p - r, j + q - r]`
    (indices mod the image size, `r = kernel_size // 2`), shape
    `(height, width or width // 2 + 1, out, in)`: at frequency `(a, b)`, the sum
    over taps of `kernel[:, :, p, q] exp(2 pi i (a (p - r) / h + b (q - r) / w))`.

    This is `conj(fft2(g))` for the kernel `g` zero-padded to the image size and
    rolled so that its centre tap sits at index `(0, 0)`, written as a direct sum
    over the `k * k` taps: cheaper than an FFT of the padded kernel for `k` much
    smaller than the image, and faster to compile.
    """
    k = kernel.shape[-1]
    dtype = _complex_dtype(kernel.dtype)
    phases_h = jnp.asarray(_phases(height, k, height), dtype)
    phases_w = jnp.asarray(_phases(width, k, width // 2 + 1 if real else width), dtype)
    return jnp.einsum("ap,bq,ocpq->aboc", phases_h, phases_w, kernel.astype(dtype))


def _hermitian(m: Array) -> Array:
    return jnp.conj(jnp.swapaxes(m, -1, -2))


def _apply(m: Array, x: Array) -> Array:
    """Per-frequency matrix-vector products: `(..., o, c) x (..., c) -> (..., o)`."""
    return jnp.einsum("...oc,...c->...o", m, x)


def _matmul(m1: Array, m2: Array) -> Array:
    return jnp.einsum("...ab,...bc->...ac", m1, m2)


def _eye_like(m: Array) -> Array:
    return jnp.broadcast_to(jnp.eye(m.shape[-1], dtype=m.dtype), m.shape)


def _max_singular_value(m: Array) -> Array:
    return jnp.max(jnp.linalg.svd(m, compute_uv=False))


# Multi-tier: the frequencies (a, b) of an h x w grid with a = qa h/2 + a',
# b = qb w/2 + b' alias to the frequency (a', b') of the h/2 x w/2 grid below. A
# "grouped" spectrum stacks the four aliases of each coarse frequency in the order
# (qa, qb, channel).


def _group(x: Array) -> Array:
    """`(h, w, c) -> (h/2, w/2, 4c)`."""
    h, w, c = x.shape
    x = x.reshape(2, h // 2, 2, w // 2, c).transpose(1, 3, 0, 2, 4)
    return x.reshape(h // 2, w // 2, 4 * c)


def _ungroup(x: Array) -> Array:
    """`(h/2, w/2, 4c) -> (h, w, c)`."""
    h2, w2, c4 = x.shape
    x = x.reshape(h2, w2, 2, 2, c4 // 4).transpose(2, 0, 3, 1, 4)
    return x.reshape(2 * h2, 2 * w2, c4 // 4)


def _group_transfer(m: Array) -> Array:
    """Per-frequency `(h, w, o, c)` -> block diagonal on groups `(h/2, w/2, 4o, 4c)`."""
    h, w, o, c = m.shape
    m = m.reshape(2, h // 2, 2, w // 2, o, c).transpose(1, 3, 0, 2, 4, 5)
    m = m.reshape(h // 2, w // 2, 4, o, c)
    eye = jnp.eye(4, dtype=m.dtype)
    return jnp.einsum("xygoc,gf->xygofc", m, eye).reshape(h // 2, w // 2, 4 * o, 4 * c)


def _downsample_transfer(m: Array) -> Array:
    """The transfer `(h, w, o, c)` of a full-resolution convolution -> that of the
    same convolution followed by keeping every second pixel, `(h/2, w/2, o, 4c)`
    acting on grouped (orthonormal) spectra: the output frequency is half the sum of
    its four aliases, times the factor 2 between the orthonormal scalings."""
    h, w, o, c = m.shape
    m = m.reshape(2, h // 2, 2, w // 2, o, c).transpose(1, 3, 4, 0, 2, 5)
    return 0.5 * m.reshape(h // 2, w // 2, o, 4 * c)


# ----------------------------------------------------------------------------------
# Single convolution


class _ConvResolvent(AbstractResolvent):
    alpha: Scalar
    inverse: Complex[Array, "height freqs channels channels"]
    height: int = eqx.field(static=True)
    width: int = eqx.field(static=True)

    def _apply(self, z: Array, inverse: Array) -> Array:
        x = jnp.moveaxis(jnp.fft.rfft2(z), 0, -1)
        y = _apply(inverse.astype(x.dtype), x)
        out = jnp.fft.irfft2(jnp.moveaxis(y, -1, 0), s=(self.height, self.width))
        return out.astype(z.dtype)

    def mv(self, z):
        return self._apply(z, self.inverse)

    def transpose_mv(self, z):
        # A real operator's transpose is the conjugate transpose at each frequency.
        return self._apply(z, _hermitian(self.inverse))


class MonotoneConv(AbstractMonotoneLinear):
    r"""A convolutional monotone operator
    $W = (1 - m) I - A^\top A + B - B^\top$ on images of shape
    `(channels, height, width)`.

    $A$ (`channels` to `hidden_channels`) and $B$ (`channels` to `channels`) are
    multi-channel circular (periodic) convolutions with `kernel_size` square kernels,
    normalised as $A = g_A \hat A / \|\hat A\|_F$ and $B = g_B \hat B / \|\hat B\|_F$
    with learnable scalars $g_A, g_B$. Then $\operatorname{sym}(I - W) = m I +
    A^\top A \succeq m I$ for every value of the parameters.

    A convolution here is a cross-correlation, as in `jax.lax.conv_general_dilated`
    and `equinox.nn.Conv2d`: $(A z)_{o,i,j} = \sum_{c,p,q} \hat A_{o,c,p,q}\,
    z_{c,\, i + p - r,\, j + q - r}$ with $r$ = `kernel_size // 2` and indices taken
    modulo the image size.

    Everything is computed in the Fourier domain, where each convolution is one small
    complex matrix per frequency: `mv` costs two FFTs, the resolvent is one
    `channels x channels` inverse per frequency, and `lipschitz` is exact.

    It acts on one sample (no batch axis); `jax.vmap` over a batch.

    **Fields:**

    - `kernel_a`: $\hat A$, shape `(hidden_channels, channels, k, k)`.
    - `kernel_b`: $\hat B$, shape `(channels, channels, k, k)`.
    - `scale_a`, `scale_b`: the scalars $g_A$, $g_B$.
    - `margin`, `channels`, `hidden_channels`, `height`, `width`, `kernel_size`:
      static hyperparameters.

    ??? cite "References"

        ```bibtex
        @inproceedings{winston2020monotone,
            author = {Winston, Ezra and Kolter, J. Zico},
            title = {Monotone Operator Equilibrium Networks},
            booktitle = {Advances in Neural Information Processing Systems},
            volume = {33},
            pages = {10718--10728},
            year = {2020},
        }
        ```
    """

    kernel_a: Float[Array, "hidden channels k k"]
    kernel_b: Float[Array, "channels channels k k"]
    scale_a: Float[Array, ""]
    scale_b: Float[Array, ""]
    margin: float = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    hidden_channels: int = eqx.field(static=True)
    height: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        *,
        margin: float = 0.5,
        kernel_size: int | None = None,
        hidden_channels: int | None = None,
        kernels: tuple[Float[Array, "hidden channels k k"], Float[Array, "c c k k"]]
        | None = None,
        dtype=None,
        key: PRNGKeyArray | None = None,
    ):
        self.margin = float(margin) if type(margin) is int else margin
        self.channels = channels
        self.height = height
        self.width = width
        if kernels is None:
            if key is None:
                raise ValueError(
                    "MonotoneConv: pass `key=` to initialise the kernels randomly, "
                    "or `kernels=(kernel_a, kernel_b)` to use given ones."
                )
            self.kernel_size = 3 if kernel_size is None else kernel_size
            self.hidden_channels = (
                channels if hidden_channels is None else hidden_channels
            )
            # Before drawing: a bad configuration fails fast, not after a compile.
            _check_conv_config(
                self.margin,
                channels,
                self.hidden_channels,
                height,
                width,
                self.kernel_size,
            )
            dtype = _default_dtype() if dtype is None else dtype
            k = self.kernel_size
            kernel_a, kernel_b = _init_kernels(
                key,
                ((self.hidden_channels, channels, k, k), (channels, channels, k, k)),
                jnp.dtype(dtype),
            )
        else:
            kernel_a, kernel_b = (jnp.asarray(x, dtype) for x in kernels)
            shape_a = jnp.shape(kernel_a)
            default_k = shape_a[-1] if len(shape_a) == 4 else 3
            default_hidden = shape_a[0] if len(shape_a) == 4 else channels
            self.kernel_size = default_k if kernel_size is None else kernel_size
            self.hidden_channels = (
                default_hidden if hidden_channels is None else hidden_channels
            )
            _check_floating("MonotoneConv", "kernel_a", kernel_a)
            _check_floating("MonotoneConv", "kernel_b", kernel_b)
        self.kernel_a = kernel_a
        self.kernel_b = kernel_b
        # Initialised so that A and B start out as the given (or drawn) kernels.
        self.scale_a, self.scale_b = _frobenius_norms((kernel_a, kernel_b))

    def __check_init__(self):
        cls = "MonotoneConv"
        _check_conv_config(
            self.margin,
            self.channels,
            self.hidden_channels,
            self.height,
            self.width,
            self.kernel_size,
        )
        k = self.kernel_size
        _check_kernel(
            cls, "kernel_a", self.kernel_a, (self.hidden_channels, self.channels, k, k)
        )
        _check_kernel(
            cls, "kernel_b", self.kernel_b, (self.channels, self.channels, k, k)
        )
        if self.kernel_b.dtype != self.kernel_a.dtype:
            raise TypeError(
                f"{cls}: `kernel_a` ({self.kernel_a.dtype}) and `kernel_b` "
                f"({self.kernel_b.dtype}) must have the same dtype."
            )
        _check_scale(cls, "scale_a", self.scale_a, self.kernel_a.dtype)
        _check_scale(cls, "scale_b", self.scale_b, self.kernel_a.dtype)

    def _transfers(self) -> tuple[Array, Array]:
        """$A$ and $B$ at the frequencies of `rfft2`."""
        a = _normalised(self.kernel_a, self.scale_a)
        b = _normalised(self.kernel_b, self.scale_b)
        return (
            _transfer(a, self.height, self.width, real=True),
            _transfer(b, self.height, self.width, real=True),
        )

    def _identity_minus_w(self) -> Array:
        """$I - \\hat W(\\omega)$ at the frequencies of `rfft2`."""
        a, b = self._transfers()
        ata = _matmul(_hermitian(a), a)
        return self.margin * _eye_like(ata) + ata - b + _hermitian(b)

    def _apply_w(self, z: Array, transpose: bool) -> Array:
        a, b = self._transfers()
        x = jnp.moveaxis(jnp.fft.rfft2(z), 0, -1)
        a = a.astype(x.dtype)
        b = b.astype(x.dtype)
        skew = _apply(b, x) - _apply(_hermitian(b), x)
        if transpose:
            skew = -skew
        y = (1 - self.margin) * x - _apply(_hermitian(a), _apply(a, x)) + skew
        out = jnp.fft.irfft2(jnp.moveaxis(y, -1, 0), s=(self.height, self.width))
        return out.astype(z.dtype)

    def in_structure(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(
            (self.channels, self.height, self.width), self.kernel_a.dtype
        )

    def mv(
        self, z: Float[Array, "channels height width"]
    ) -> Float[Array, "channels height width"]:
        r"""$W z$."""
        return self._apply_w(z, transpose=False)

    def transpose_mv(
        self, z: Float[Array, "channels height width"]
    ) -> Float[Array, "channels height width"]:
        r"""$W^\top z = (1 - m) z - A^\top A z - B z + B^\top z$."""
        return self._apply_w(z, transpose=True)

    def resolvent(self, alpha: float | Scalar) -> AbstractResolvent:
        r"""$(I + \alpha (I - W))^{-1}$, stored as one `channels x channels` inverse
        per frequency (of `rfft2`). Its `transpose_mv` applies the conjugate transpose
        of each inverse.

        **Raises:**

        `ValueError` if `alpha` is a Python number that is not positive.
        """
        _check_alpha(alpha)
        blocks = self._identity_minus_w()
        alpha = jnp.asarray(alpha, self.kernel_a.dtype)
        matrix = _eye_like(blocks) + alpha.astype(blocks.dtype) * blocks
        return _ConvResolvent(alpha, jnp.linalg.inv(matrix), self.height, self.width)

    def lipschitz(self) -> Scalar:
        r"""Exactly $\|I - W\|_2$: the largest singular value of
        $I - \hat W(\omega)$ over all frequencies $\omega$."""
        return _max_singular_value(self._identity_minus_w())

    def as_matrix(self) -> Float[Array, "n n"]:
        r"""$W$ as a dense matrix acting on `z.reshape(-1)`."""
        struct = self.in_structure()
        n = math.prod(struct.shape)
        basis = jnp.eye(n, dtype=struct.dtype).reshape((n,) + struct.shape)
        return jax.vmap(self.mv)(basis).reshape(n, n).T

    def prepare(self) -> AbstractMonotoneLinear:
        """$I - \\hat W(\\omega)$ formed once per frequency: each product is then one
        small matrix per frequency instead of four."""
        return _ConvSpectrum(
            blocks=self._identity_minus_w(),
            margin=self.margin,
            channels=self.channels,
            height=self.height,
            width=self.width,
            dtype=self.kernel_a.dtype,
        )


class _ConvSpectrum(AbstractMonotoneLinear):
    """A circular convolution operator stored as I - W per rfft2 frequency."""

    blocks: Complex[Array, "height freqs channels channels"]
    margin: float = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    height: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    dtype: Any = eqx.field(static=True)

    def in_structure(self):
        return jax.ShapeDtypeStruct(
            (self.channels, self.height, self.width), self.dtype
        )

    def _apply_w(self, z, blocks):
        x = jnp.moveaxis(jnp.fft.rfft2(z), 0, -1)
        y = x - _apply(blocks.astype(x.dtype), x)
        out = jnp.fft.irfft2(jnp.moveaxis(y, -1, 0), s=(self.height, self.width))
        return out.astype(z.dtype)

    def mv(self, z):
        return self._apply_w(z, self.blocks)

    def transpose_mv(self, z):
        return self._apply_w(z, _hermitian(self.blocks))

    def resolvent(self, alpha):
        _check_alpha(alpha)
        alpha = jnp.asarray(alpha, self.dtype)
        matrix = _eye_like(self.blocks) + alpha.astype(self.blocks.dtype) * self.blocks
        return _ConvResolvent(alpha, jnp.linalg.inv(matrix), self.height, self.width)

    def lipschitz(self):
        return _max_singular_value(self.blocks)

    def as_matrix(self):
        n = self.channels * self.height * self.width
        basis = jnp.eye(n, dtype=self.dtype).reshape((n,) + self.in_structure().shape)
        return jax.vmap(self.mv)(basis).reshape(n, n).T

    def prepare(self):
        return self


MonotoneConv.__init__.__doc__ = r"""**Arguments:**

- `channels`: $C$, the number of channels of the state.
- `height`, `width`: the image size of the state.
- `margin`: the monotonicity margin $m > 0$ (a Python float).
- `kernel_size`: the odd side $k$ of the square kernels; default 3, or read from
  `kernels`.
- `hidden_channels`: the output channels of $A$; default `channels`, or read from
  `kernels`.
- `kernels`: optional `(kernel_a, kernel_b)` of shapes
  `(hidden_channels, channels, k, k)` and `(channels, channels, k, k)`, used
  instead of a random initialisation. The scales are set to their Frobenius norms,
  so that $A$ and $B$ are exactly these kernels.
- `dtype`: the real floating dtype of the parameters; default float64 if enabled,
  else float32 (or the dtype of `kernels`).
- `key`: a PRNG key for the random initialisation (uniform with bound
  $1 / \sqrt{C k^2}$, like a convolution layer); needed unless `kernels` is given.

**Raises:**

- `ValueError` if `margin` is not positive, `kernel_size` is even or larger than
  the image, a size is not a positive int, `kernels` have the wrong shapes, or
  neither `key` nor `kernels` is given.
- `TypeError` if `margin` is not a Python number, or the kernels are not real
  floating arrays of one dtype.
"""


# ----------------------------------------------------------------------------------
# Multi-tier convolution


class _MultiConvResolvent(AbstractResolvent):
    alpha: Scalar
    # Per tier, the inverse Schur complement of the block elimination, on grouped
    # spectra for all tiers but the coarsest.
    inverses: tuple[Array, ...]
    # Per pair of consecutive tiers, the block R[i + 1, i] = alpha (A^T A)[i + 1, i]
    # of I + alpha (I - W); the block above the diagonal is its conjugate transpose.
    lower: tuple[Array, ...]

    def _native(self, i: int, x: Array) -> Array:
        return _group(x) if i < len(self.inverses) - 1 else x

    def _unnative(self, i: int, x: Array) -> Array:
        return _ungroup(x) if i < len(self.inverses) - 1 else x

    def _solve(self, zs, transpose: bool):
        zs = tuple(zs)
        num = len(self.inverses)
        bs = [
            self._native(i, jnp.moveaxis(jnp.fft.fft2(z, norm="ortho"), 0, -1))
            for i, z in enumerate(zs)
        ]
        dtype = bs[0].dtype
        inverses = [v.astype(dtype) for v in self.inverses]
        if transpose:
            inverses = [_hermitian(v) for v in inverses]
        lower = [v.astype(dtype) for v in self.lower]
        # Block LU of the block-tridiagonal R = L U, with diag(U) the Schur
        # complements S_i. Forward: solve L y = b (or U^H y = b, for R^H = U^H L^H).
        ys = [_apply(inverses[0], bs[0]) if transpose else bs[0]]
        for i in range(1, num):
            prev = ys[i - 1] if transpose else _apply(inverses[i - 1], ys[i - 1])
            y = bs[i] - self._native(i, _apply(lower[i - 1], prev))
            ys.append(_apply(inverses[i], y) if transpose else y)
        # Backward: solve U x = y (or L^H x = y).
        xs: list[Any] = [None] * num
        xs[-1] = ys[-1] if transpose else _apply(inverses[-1], ys[-1])
        for i in range(num - 2, -1, -1):
            coupling = _apply(_hermitian(lower[i]), self._unnative(i + 1, xs[i + 1]))
            if transpose:
                xs[i] = ys[i] - _apply(inverses[i], coupling)
            else:
                xs[i] = _apply(inverses[i], ys[i] - coupling)
        out = []
        for i, (x, z) in enumerate(zip(xs, zs)):
            x = jnp.moveaxis(self._unnative(i, x), -1, 0)
            out.append(jnp.fft.ifft2(x, norm="ortho").real.astype(z.dtype))
        return tuple(out)

    def mv(self, z):
        return self._solve(z, transpose=False)

    def transpose_mv(self, z):
        return self._solve(z, transpose=True)


class MonotoneMultiConv(AbstractMonotoneLinear):
    r"""A multi-tier convolutional monotone operator
    $W = (1 - m) I - A^\top A + B - B^\top$ on a tuple of images at decreasing
    resolutions.

    The state is a tuple $(z_1, \dots, z_T)$ with $z_i$ of shape
    `(channels[i], height / 2**i, width / 2**i)` (0-based $i$). $A$ is block lower
    bidiagonal across tiers: its diagonal blocks $A_{ii}$ are circular convolutions
    within tier $i$ and its blocks $A_{i+1,i}$ are stride-2 circular convolutions from
    tier $i$ down to tier $i+1$. $B$ is block diagonal (a circular convolution within
    each tier). Every kernel is normalised with its own learnable scalar, as in
    [`jaxdeq.monotone.MonotoneConv`][], and $\operatorname{sym}(I - W) = m I +
    A^\top A \succeq m I$ always. Convolutions are cross-correlations with circular
    padding, the stride-2 ones keeping the pixels with even indices (as
    `jax.lax.conv_general_dilated` with `window_strides=(2, 2)` on a wrap-padded
    input).

    The resolvent is exact. A stride-2 convolution sends the four frequencies of the
    finer grid that alias to one frequency of the coarser grid to that frequency,
    so, tier by tier, $I + \alpha (I - W)$ is block tridiagonal with blocks that are
    block diagonal over groups of aliased frequencies. `resolvent` eliminates the
    tiers from the finest to the coarsest (a block LU factorisation); every Schur
    complement stays block diagonal over these groups, so the factorisation is a
    batch of small dense inverses, of size `4 * channels[i]` (`channels[-1]` on the
    coarsest tier). No pivoting across tiers is needed: the symmetric part of
    $I + \alpha(I - W)$ is at least $(1 + \alpha m) I$, and so is that of each Schur
    complement.

    `lipschitz` is the spectral norm of the $T \times T$ matrix of the spectral norms
    of the tier blocks of $I - W$, an upper bound on $\|I - W\|_2$ (exact for one
    tier).

    It acts on one sample (no batch axis); `jax.vmap` over a batch.

    **Fields:**

    - `kernels_a`: the kernels of $A_{ii}$, shapes `(channels[i], channels[i], k, k)`.
    - `kernels_down`: the kernels of $A_{i+1,i}$, shapes
      `(channels[i + 1], channels[i], k, k)`.
    - `kernels_b`: the kernels of $B_{ii}$, shapes `(channels[i], channels[i], k, k)`.
    - `scales_a`, `scales_down`, `scales_b`: their scalars.
    - `margin`, `channels`, `height`, `width`, `kernel_size`: static
      hyperparameters (`height`, `width` of the finest tier).

    ??? cite "References"

        ```bibtex
        @inproceedings{winston2020monotone,
            author = {Winston, Ezra and Kolter, J. Zico},
            title = {Monotone Operator Equilibrium Networks},
            booktitle = {Advances in Neural Information Processing Systems},
            volume = {33},
            pages = {10718--10728},
            year = {2020},
        }
        ```
    """

    kernels_a: tuple[Float[Array, "c c k k"], ...]
    kernels_down: tuple[Float[Array, "c_out c_in k k"], ...]
    kernels_b: tuple[Float[Array, "c c k k"], ...]
    scales_a: tuple[Float[Array, ""], ...]
    scales_down: tuple[Float[Array, ""], ...]
    scales_b: tuple[Float[Array, ""], ...]
    margin: float = eqx.field(static=True)
    channels: tuple[int, ...] = eqx.field(static=True)
    height: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)

    def __init__(
        self,
        channels: tuple[int, ...],
        height: int,
        width: int,
        *,
        margin: float = 0.5,
        kernel_size: int | None = None,
        kernels: tuple[tuple[Array, ...], tuple[Array, ...], tuple[Array, ...]]
        | None = None,
        dtype=None,
        key: PRNGKeyArray | None = None,
    ):
        self.margin = float(margin) if type(margin) is int else margin
        self.channels = (
            tuple(channels) if isinstance(channels, (tuple, list)) else channels
        )
        self.height = height
        self.width = width
        if kernels is None:
            if key is None:
                raise ValueError(
                    "MonotoneMultiConv: pass `key=` to initialise the kernels "
                    "randomly, or `kernels=(kernels_a, kernels_down, kernels_b)`."
                )
            self.kernel_size = 3 if kernel_size is None else kernel_size
            # Before drawing: a bad configuration fails fast, not after a compile.
            _check_multi_config(
                self.margin, self.channels, height, width, self.kernel_size
            )
            dtype = _default_dtype() if dtype is None else dtype
            num = len(self.channels)
            k = self.kernel_size
            square = [(c, c, k, k) for c in self.channels]
            down = [
                (c_out, c_in, k, k)
                for c_in, c_out in zip(self.channels[:-1], self.channels[1:])
            ]
            drawn = _init_kernels(key, tuple(square + down + square), jnp.dtype(dtype))
            kernels_a = drawn[:num]
            kernels_down = drawn[num : 2 * num - 1]
            kernels_b = drawn[2 * num - 1 :]
        else:
            kernels_a, kernels_down, kernels_b = (
                tuple(jnp.asarray(x, dtype) for x in ks) for ks in kernels
            )
            shape = jnp.shape(kernels_a[0]) if kernels_a else ()
            default_k = shape[-1] if len(shape) == 4 else 3
            self.kernel_size = default_k if kernel_size is None else kernel_size
            for name, ks in zip(
                ("kernels_a", "kernels_down", "kernels_b"),
                (kernels_a, kernels_down, kernels_b),
            ):
                for i, kernel in enumerate(ks):
                    _check_floating("MonotoneMultiConv", f"{name}[{i}]", kernel)
        self.kernels_a = kernels_a
        self.kernels_down = kernels_down
        self.kernels_b = kernels_b
        self.scales_a = _frobenius_norms(kernels_a)
        self.scales_down = _frobenius_norms(kernels_down)
        self.scales_b = _frobenius_norms(kernels_b)

    def __check_init__(self):
        cls = "MonotoneMultiConv"
        _check_multi_config(
            self.margin, self.channels, self.height, self.width, self.kernel_size
        )
        num = len(self.channels)
        k = self.kernel_size
        expected = (
            ("kernels_a", self.kernels_a, [(c, c) for c in self.channels]),
            (
                "kernels_down",
                self.kernels_down,
                list(zip(self.channels[1:], self.channels[:-1])),
            ),
            ("kernels_b", self.kernels_b, [(c, c) for c in self.channels]),
        )
        dtype = None
        for name, ks, shapes in expected:
            if not isinstance(ks, tuple) or len(ks) != len(shapes):
                raise ValueError(
                    f"{cls}: `{name}` must be a tuple of {len(shapes)} kernels for "
                    f"{num} tiers, got {ks!r}."
                )
            for i, (kernel, shape) in enumerate(zip(ks, shapes)):
                _check_kernel(cls, f"{name}[{i}]", kernel, shape + (k, k))
                if dtype is None:
                    dtype = kernel.dtype
                elif kernel.dtype != dtype:
                    raise TypeError(
                        f"{cls}: all kernels must have one dtype; `{name}[{i}]` is "
                        f"{kernel.dtype}, not {dtype}."
                    )
        for name in ("scales_a", "scales_down", "scales_b"):
            for i, scale in enumerate(getattr(self, name)):
                _check_scale(cls, f"{name}[{i}]", scale, dtype)

    @property
    def _sizes(self) -> list[tuple[int, int]]:
        return [(self.height >> i, self.width >> i) for i in range(len(self.channels))]

    def _transfers(self) -> tuple[list[Array], list[Array], list[Array]]:
        """Per tier, $A_{ii}$ and $B_{ii}$ per frequency, and per pair of tiers the
        stride-2 $A_{i+1,i}$ from grouped spectra of tier $i$ to tier $i+1$."""
        sizes = self._sizes
        a = [
            _transfer(_normalised(k, g), h, w, real=False)
            for k, g, (h, w) in zip(self.kernels_a, self.scales_a, sizes)
        ]
        b = [
            _transfer(_normalised(k, g), h, w, real=False)
            for k, g, (h, w) in zip(self.kernels_b, self.scales_b, sizes)
        ]
        down = [
            _downsample_transfer(_transfer(_normalised(k, g), h, w, real=False))
            for k, g, (h, w) in zip(self.kernels_down, self.scales_down, sizes)
        ]
        return a, down, b

    def _blocks(self) -> tuple[list[Array], list[Array]]:
        """The tier blocks of $I - W$: the diagonal ones (grouped for all tiers but
        the coarsest) and $(A^\\top A)_{i+1,i}$ (from grouped tier $i$ to tier
        $i+1$, per frequency)."""
        a, down, b = self._transfers()
        num = len(self.channels)
        diag = []
        for i in range(num):
            ata = _matmul(_hermitian(a[i]), a[i])
            d = self.margin * _eye_like(ata) + ata - b[i] + _hermitian(b[i])
            if i < num - 1:
                d = _group_transfer(d) + _matmul(_hermitian(down[i]), down[i])
            diag.append(d)
        off = [_matmul(_hermitian(a[i + 1]), down[i]) for i in range(num - 1)]
        return diag, off

    def _apply_w(self, zs, transpose: bool):
        zs = tuple(zs)
        a, down, b = self._transfers()
        xs = [jnp.moveaxis(jnp.fft.fft2(z, norm="ortho"), 0, -1) for z in zs]
        dtype = xs[0].dtype
        a, down, b = ([m.astype(dtype) for m in ms] for ms in (a, down, b))
        num = len(xs)
        ax = [
            _apply(a[i], xs[i])
            + (_apply(down[i - 1], _group(xs[i - 1])) if i > 0 else 0)
            for i in range(num)
        ]
        out = []
        for i, (x, z) in enumerate(zip(xs, zs)):
            atax = _apply(_hermitian(a[i]), ax[i])
            if i < num - 1:
                atax = atax + _ungroup(_apply(_hermitian(down[i]), ax[i + 1]))
            skew = _apply(b[i], x) - _apply(_hermitian(b[i]), x)
            if transpose:
                skew = -skew
            y = (1 - self.margin) * x - atax + skew
            y = jnp.fft.ifft2(jnp.moveaxis(y, -1, 0), norm="ortho")
            out.append(y.real.astype(z.dtype))
        return tuple(out)

    def in_structure(self) -> tuple[jax.ShapeDtypeStruct, ...]:
        dtype = self.kernels_a[0].dtype
        return tuple(
            jax.ShapeDtypeStruct((c, h, w), dtype)
            for c, (h, w) in zip(self.channels, self._sizes)
        )

    def mv(
        self, z: tuple[Float[Array, "_c _h _w"], ...]
    ) -> tuple[Float[Array, "_c _h _w"], ...]:
        r"""$W z$."""
        return self._apply_w(z, transpose=False)

    def transpose_mv(
        self, z: tuple[Float[Array, "_c _h _w"], ...]
    ) -> tuple[Float[Array, "_c _h _w"], ...]:
        r"""$W^\top z = (1 - m) z - A^\top A z - B z + B^\top z$."""
        return self._apply_w(z, transpose=True)

    def resolvent(self, alpha: float | Scalar) -> AbstractResolvent:
        r"""$(I + \alpha (I - W))^{-1}$ by exact block elimination across tiers (see
        above), factorised once.

        **Raises:**

        `ValueError` if `alpha` is a Python number that is not positive.
        """
        _check_alpha(alpha)
        diag, off = self._blocks()
        alpha = jnp.asarray(alpha, self.kernels_a[0].dtype)
        calpha = alpha.astype(diag[0].dtype)
        num = len(diag)
        inverses = [jnp.linalg.inv(_eye_like(diag[0]) + calpha * diag[0])]
        for i in range(1, num):
            schur = _matmul(
                _matmul(off[i - 1], inverses[i - 1]), _hermitian(off[i - 1])
            )
            if i < num - 1:
                schur = _group_transfer(schur)
            sigma = _eye_like(diag[i]) + calpha * diag[i] - calpha**2 * schur
            inverses.append(jnp.linalg.inv(sigma))
        lower = tuple(calpha * o for o in off)
        return _MultiConvResolvent(alpha, tuple(inverses), lower)

    def lipschitz(self) -> Scalar:
        r"""An upper bound on $\|I - W\|_2$: $\|N\|_2$ where $N_{ij}$ is the spectral
        norm of the block $(i, j)$ of $I - W$ across tiers (each computed exactly in
        the Fourier domain). Exact for one tier."""
        diag, off = self._blocks()
        norms_diag = jnp.stack([_max_singular_value(d) for d in diag])
        num = len(diag)
        if num == 1:
            return norms_diag[0]
        norms_off = jnp.stack([_max_singular_value(o) for o in off])
        n = jnp.diag(norms_diag) + jnp.diag(norms_off, 1) + jnp.diag(norms_off, -1)
        return _max_singular_value(n)

    def as_matrix(self) -> Float[Array, "n n"]:
        r"""$W$ as a dense matrix acting on the flattened state
        (`jax.flatten_util.ravel_pytree` order)."""
        zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in self.in_structure())
        flat, unravel = jfu.ravel_pytree(zeros)

        def column(e):
            return jfu.ravel_pytree(self.mv(unravel(e)))[0]

        return jax.vmap(column)(jnp.eye(flat.size, dtype=flat.dtype)).T

    def prepare(self) -> AbstractMonotoneLinear:
        """`self`: its products are already per-frequency blocks."""
        return self


MonotoneMultiConv.__init__.__doc__ = r"""**Arguments:**

- `channels`: the number of channels of each tier, finest first; its length is the
  number of tiers $T$.
- `height`, `width`: the image size of the finest tier, divisible by $2^{T-1}$.
- `margin`: the monotonicity margin $m > 0$ (a Python float).
- `kernel_size`: the odd side $k$ of all square kernels, at most the coarsest tier's
  size; default 3, or read from `kernels`.
- `kernels`: optional `(kernels_a, kernels_down, kernels_b)`, tuples of $T$,
  $T - 1$ and $T$ kernels of the shapes listed above, used instead of a random
  initialisation; the scales are set to their Frobenius norms.
- `dtype`: the real floating dtype of the parameters; default float64 if enabled,
  else float32 (or the dtype of `kernels`).
- `key`: a PRNG key for the random initialisation; needed unless `kernels` is
  given.

**Raises:**

- `ValueError` if `margin` is not positive, `kernel_size` is even or larger than
  the coarsest tier, `height` or `width` is not divisible by $2^{T-1}$, or the
  kernels have the wrong number or shapes.
- `TypeError` if `margin` is not a Python number, or the kernels are not real
  floating arrays of one dtype.
"""
