import abc
import math
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar


def _sigmoid(z):
    # Written out (not jax.nn.sigmoid) so that it is holomorphic for complex nudges.
    return 1 / (1 + jnp.exp(-z))


def _clip(s, low, high):
    # A saturated unit (sigmoid(20) == 1 in float32) would give an infinite inverse
    # and NaN derivatives; real states are kept a rounding error inside the range.
    if jnp.issubdtype(s.dtype, jnp.complexfloating):
        return s
    eps = jnp.finfo(s.dtype).eps
    return jnp.clip(s, low + eps, high - eps)


def _sigmoid_inverse(s):
    s = _clip(s, 0, 1)
    return jnp.log(s) - jnp.log1p(-s)


def _tanh_inverse(s):
    return jnp.arctanh(_clip(s, -1, 1))


def _sigmoid_potential(s):
    return s * jnp.log(s) + (1 - s) * jnp.log1p(-s)


def _tanh_potential(s):
    return 0.5 * ((1 + s) * jnp.log1p(s) + (1 - s) * jnp.log1p(-s))


# activation: (sigma, sigma^{-1}, G with G' = sigma^{-1}, value of sigma(0))
_ACTIVATIONS = {
    "sigmoid": (_sigmoid, _sigmoid_inverse, _sigmoid_potential, 0.5),
    "tanh": (jnp.tanh, _tanh_inverse, _tanh_potential, 0.0),
}


class AbstractEnergyNetwork(eqx.Module):
    r"""A network whose state relaxes to a fixed point, trainable by equilibrium
    propagation.

    The state $s$ (a pytree) follows the dynamics $\dot s = f(s; x) - \beta\,
    \nabla_s C$, where $f$ is the network's vector field, $C$ a cost on
    [`output`][jaxdeq.ep.AbstractEnergyNetwork.output] and $\beta$ the nudging
    strength. An energy-based network has $f = -\nabla_s E$ and implements
    [`energy`][jaxdeq.ep.AbstractEnergyNetwork.energy]; a network without that
    structure (e.g. asymmetric weights) implements only the vector field and is trained
    by generalised equilibrium propagation.

    Subclasses implement:

    - `init_state(x) -> s`: where relaxation starts.
    - `vector_field(s, x) -> ds/dt` at $\beta = 0$.
    - `relax(s, x, drive) -> s'`: a map whose fixed points are exactly the zeros of
        `vector_field(s, x) + drive`; the solvers iterate it. `drive` has the structure
        of `s` and is $-\beta \nabla_s C$ in the nudged phase.
    - `energy(s, x) -> E`, or `None` from `has_energy` if there is no energy.
    - `output(s)`: the part of the state the cost reads.

    Every method must accept a complex state (for holomorphic nudging): cast parameters
    to the state's dtype and use holomorphic functions.
    """

    @abc.abstractmethod
    def init_state(self, x: Array) -> PyTree[Array]:
        """The state relaxation starts from, for input `x`."""

    @abc.abstractmethod
    def vector_field(self, s: PyTree[Array], x: Array) -> PyTree[Array]:
        """The dynamics $f(s; x)$ of the free network (zero at a fixed point)."""

    @abc.abstractmethod
    def relax(self, s: PyTree[Array], x: Array, drive: PyTree[Array]) -> PyTree[Array]:
        """One relaxation step: a map whose fixed points solve $f(s; x) + d = 0$."""

    @abc.abstractmethod
    def energy(self, s: PyTree[Array], x: Array) -> Scalar:
        """The energy $E(s; x)$ with $f = -\\nabla_s E$. Only called when
        `has_energy` is true."""

    @property
    @abc.abstractmethod
    def has_energy(self) -> bool:
        """Whether the vector field is the negative gradient of `energy`."""

    @abc.abstractmethod
    def output(self, s: PyTree[Array]) -> Array:
        """The part of the state that the cost reads (the output layer)."""


def _uniform(key, shape, fan_in, dtype):
    bound = 1 / math.sqrt(fan_in)
    return jr.uniform(key, shape, dtype, -bound, bound)


class LayeredNetwork(AbstractEnergyNetwork):
    r"""A layered continuous Hopfield network, symmetric or not.

    Layers $s_1, \dots, s_L$ (the input $x = s_0$ is clamped) with activation
    $\sigma$; each layer's fixed-point condition is

    $$s_k = \sigma\big(W_{k-1} s_{k-1} + b_{k-1} + B_k s_{k+1}\big),$$

    the feedback $B_k = W_k^\top$ for a symmetric network and an independent weight
    otherwise. In the coordinates $s$ (post-activations) the vector field is
    $f_k(s) = -\sigma^{-1}(s_k) + W_{k-1} s_{k-1} + b_{k-1} + B_k s_{k+1}$. With
    symmetric weights $f = -\nabla_s E$ for the energy

    $$E(s; x) = \sum_k \sum_i G(s_{k,i}) - \sum_k \big(s_k^\top W_{k-1} s_{k-1}
    + b_{k-1}^\top s_k\big),\qquad G' = \sigma^{-1},$$

    convex in each $s_k$ (for the sigmoid $G$ is the negative binary entropy), so the
    free phase is the minimisation of $E$ that equilibrium propagation assumes. The
    state is the tuple $(s_1, \dots, s_L)$; the output is $s_L$.

    ??? cite "References"

        ```bibtex
        @article{scellier2017equilibrium,
            author = {Scellier, Benjamin and Bengio, Yoshua},
            title = {Equilibrium Propagation: Bridging the Gap between Energy-Based
                     Models and Backpropagation},
            journal = {Frontiers in Computational Neuroscience},
            volume = {11},
            year = {2017},
        }
        ```
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    feedback: tuple[Array, ...] | None
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        sizes: tuple[int, ...] | list[int],
        *,
        symmetric: bool = True,
        activation: Literal["sigmoid", "tanh"] = "sigmoid",
        gain: float = 1.0,
        dtype=None,
        key: PRNGKeyArray,
    ):
        r"""**Arguments:**

        - `sizes`: layer widths `(input, hidden..., output)`, at least two entries.
        - `symmetric`: tie the feedback weights to the transposed forward weights (an
            energy-based network). If `False`, feedback weights are independent and
            randomly initialised: train with generalised EP, ideally with
            [`jaxdeq.ep.homeostatic_loss`][].
        - `activation`: `"sigmoid"` (states in $(0, 1)$) or `"tanh"` (in $(-1, 1)$).
        - `gain`: scales the uniform $\pm 1/\sqrt{\text{fan-in}}$ initialisation.
            Large gains can make the relaxation non-contractive.
        - `dtype`: of the parameters (default: JAX's default float).
        - `key`: PRNG key for the initialisation.

        **Raises:**

        `ValueError` for fewer than two sizes, a non-positive size or gain, or an
        unknown activation.
        """
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(
                "LayeredNetwork: `sizes` needs at least an input and an output width, "
                f"e.g. (64, 128, 10); got {sizes!r}."
            )
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(
                f"LayeredNetwork: every size must be a positive int, got {sizes!r}."
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"LayeredNetwork: unknown activation {activation!r}; use one of "
                f"{sorted(_ACTIVATIONS)}."
            )
        if not float(gain) > 0:
            raise ValueError(f"LayeredNetwork: `gain` must be positive, got {gain!r}.")
        dtype = jnp.zeros((), dtype).dtype
        depth = len(sizes) - 1
        wkeys = jr.split(key, 2 * depth)
        self.weights = tuple(
            gain * _uniform(wkeys[k], (sizes[k + 1], sizes[k]), sizes[k], dtype)
            for k in range(depth)
        )
        self.biases = tuple(jnp.zeros((sizes[k + 1],), dtype) for k in range(depth))
        if symmetric:
            self.feedback = None
        else:
            self.feedback = tuple(
                gain
                * _uniform(
                    wkeys[depth + k], (sizes[k + 1], sizes[k + 2]), sizes[k + 2], dtype
                )
                for k in range(depth - 1)
            )
        self.activation = activation

    @property
    def sizes(self) -> tuple[int, ...]:
        """Layer widths `(input, hidden..., output)`."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def has_energy(self) -> bool:
        """`True` for a symmetric network."""
        return self.feedback is None

    def init_state(self, x: Float[Array, " input"]) -> tuple[Array, ...]:
        """Every unit at $\\sigma(0)$, in the parameters' dtype."""
        del x
        value = _ACTIVATIONS[self.activation][3]
        return tuple(jnp.full(w.shape[:1], value, w.dtype) for w in self.weights)

    def _preactivation(self, s, x):
        dtype = s[0].dtype
        cast = lambda a: a.astype(dtype)
        below = (cast(x),) + tuple(s[:-1])
        out = []
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            pre = cast(w) @ below[k] + cast(b)
            if k + 1 < len(s):
                back = (
                    cast(self.weights[k + 1]).T
                    if self.feedback is None
                    else cast(self.feedback[k])
                )
                pre = pre + back @ s[k + 1]
            out.append(pre)
        return tuple(out)

    def vector_field(self, s, x):
        """$f_k(s) = -\\sigma^{-1}(s_k) + W_{k-1} s_{k-1} + b_{k-1} + B_k s_{k+1}$."""
        inverse = _ACTIVATIONS[self.activation][1]
        return tuple(p - inverse(sk) for p, sk in zip(self._preactivation(s, x), s))

    def relax(self, s, x, drive):
        """$s_k \\leftarrow \\sigma(W_{k-1} s_{k-1} + b_{k-1} + B_k s_{k+1} + d_k)$:
        all layers updated at once from the current state."""
        sigma = _ACTIVATIONS[self.activation][0]
        pre = self._preactivation(s, x)
        return tuple(sigma(p + d) for p, d in zip(pre, drive))

    def energy(self, s, x):
        """The Hopfield energy above (symmetric networks only)."""
        if self.feedback is not None:
            raise ValueError(
                "LayeredNetwork.energy: an asymmetric network has no energy; its "
                "vector field is not a gradient. Use vector-field (generalised) EP, "
                "or build the network with symmetric=True."
            )
        potential = _ACTIVATIONS[self.activation][2]
        dtype = s[0].dtype
        below = (x.astype(dtype),) + tuple(s[:-1])
        value = jnp.asarray(sum(jnp.sum(potential(sk)) for sk in s))
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            value = value - s[k] @ (w.astype(dtype) @ below[k]) - b.astype(dtype) @ s[k]
        return value

    def output(self, s):
        """The last layer $s_L$."""
        return s[-1]
